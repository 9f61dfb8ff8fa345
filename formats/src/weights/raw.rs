//! Element types of weight files and their conversion to f32 (the trainer's type).

use half::{bf16, f16};

/// An element type as weight files store it (little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawDtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary64.
    F64,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// Signed integers.
    I64,
    /// Signed 32-bit integers.
    I32,
    /// Signed 16-bit integers.
    I16,
    /// Signed 8-bit integers.
    I8,
    /// Unsigned 8-bit integers.
    U8,
    /// Unsigned 16-bit integers.
    U16,
    /// Unsigned 32-bit integers.
    U32,
    /// Unsigned 64-bit integers.
    U64,
    /// Booleans, one byte each.
    Bool,
}

impl RawDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            RawDtype::F64 | RawDtype::I64 | RawDtype::U64 => 8,
            RawDtype::F32 | RawDtype::I32 | RawDtype::U32 => 4,
            RawDtype::F16 | RawDtype::BF16 | RawDtype::I16 | RawDtype::U16 => 2,
            RawDtype::I8 | RawDtype::U8 | RawDtype::Bool => 1,
        }
    }

    /// The type of a torch storage class (`torch.FloatStorage`...), if we read it.
    pub fn from_torch_storage(class: &str) -> Option<RawDtype> {
        Some(match class {
            "FloatStorage" => RawDtype::F32,
            "DoubleStorage" => RawDtype::F64,
            "HalfStorage" => RawDtype::F16,
            "BFloat16Storage" => RawDtype::BF16,
            "LongStorage" => RawDtype::I64,
            "IntStorage" => RawDtype::I32,
            "ShortStorage" => RawDtype::I16,
            "CharStorage" => RawDtype::I8,
            "ByteStorage" => RawDtype::U8,
            "BoolStorage" => RawDtype::Bool,
            _ => return None,
        })
    }

    /// The type of a safetensors dtype name, if we read it.
    pub fn from_safetensors(name: &str) -> Option<RawDtype> {
        Some(match name {
            "F32" => RawDtype::F32,
            "F64" => RawDtype::F64,
            "F16" => RawDtype::F16,
            "BF16" => RawDtype::BF16,
            "I64" => RawDtype::I64,
            "I32" => RawDtype::I32,
            "I16" => RawDtype::I16,
            "I8" => RawDtype::I8,
            "U8" => RawDtype::U8,
            "U16" => RawDtype::U16,
            "U32" => RawDtype::U32,
            "U64" => RawDtype::U64,
            "BOOL" => RawDtype::Bool,
            _ => return None,
        })
    }

    /// Element `i` of `bytes` (which holds whole elements of this type) as f32.
    #[inline]
    pub fn get(self, bytes: &[u8], i: usize) -> f32 {
        let n = self.size();
        let b = &bytes[i * n..(i + 1) * n];
        let mut a = [0u8; 8];
        a[..n].copy_from_slice(b);
        match self {
            RawDtype::F32 => f32::from_le_bytes([a[0], a[1], a[2], a[3]]),
            RawDtype::F64 => f64::from_le_bytes(a) as f32,
            RawDtype::F16 => f16::from_le_bytes([a[0], a[1]]).to_f32(),
            RawDtype::BF16 => bf16::from_le_bytes([a[0], a[1]]).to_f32(),
            RawDtype::I64 => i64::from_le_bytes(a) as f32,
            RawDtype::I32 => i32::from_le_bytes([a[0], a[1], a[2], a[3]]) as f32,
            RawDtype::I16 => i16::from_le_bytes([a[0], a[1]]) as f32,
            RawDtype::I8 => a[0] as i8 as f32,
            RawDtype::U8 | RawDtype::Bool => a[0] as f32,
            RawDtype::U16 => u16::from_le_bytes([a[0], a[1]]) as f32,
            RawDtype::U32 => u32::from_le_bytes([a[0], a[1], a[2], a[3]]) as f32,
            RawDtype::U64 => u64::from_le_bytes(a) as f32,
        }
    }

    /// Every element of `bytes` as f32 (`bytes.len()` a multiple of [`size`](Self::size)).
    pub fn to_f32(self, bytes: &[u8]) -> Vec<f32> {
        if self == RawDtype::F32 {
            return bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
        }
        (0..bytes.len() / self.size())
            .map(|i| self.get(bytes, i))
            .collect()
    }
}
