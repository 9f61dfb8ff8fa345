//! A bounded reader for MATLAB's level-5 MAT files, enough to read the ImageNet devkit's
//! `data/meta.mat` (a struct array `synsets` with the fields `ILSVRC2012_ID` and `WNID`).
//!
//! Format (MathWorks, "MAT-File Format", level 5): a 128-byte header (text, subsystem
//! offset, version 0x0100, endian indicator `IM` for little-endian), then data elements,
//! each an 8-byte tag (type, byte count) or a "small" 4+4-byte element, padded to 8 bytes.
//! `miCOMPRESSED` (15) elements hold one zlib-compressed element; `miMATRIX` (14) elements
//! hold array flags, dimensions, a name and the class's data (numeric real part, char
//! data, cell elements, or struct field names followed by every element's fields in
//! column-major order).
//!
//! Bounds: every byte count is checked against the bytes that remain, nesting is limited
//! to [`MAX_DEPTH`] levels, inflated data to [`MAX_INFLATED`] bytes and the values of one
//! file to [`MAX_VALUES`] numbers or characters, so a hostile file yields an error, never
//! a panic or an unbounded allocation. Big-endian files, sparse arrays, objects and
//! MAT v7.3 (HDF5) files are refused by name.

use std::io::Read;

/// Deepest nesting of arrays (struct in cell in struct ...) read.
pub const MAX_DEPTH: usize = 16;
/// Most bytes one compressed element may inflate to (the devkit's meta.mat: ~0.4 MB).
pub const MAX_INFLATED: usize = 256 << 20;
/// Most numbers and characters one file may hold in all.
pub const MAX_VALUES: usize = 64 << 20;

/// One MATLAB array, as far as this reader needs.
#[derive(Clone, Debug, PartialEq)]
pub enum MatValue {
    /// A numeric or logical array (any class), as f64 in column-major order.
    Num(Vec<f64>),
    /// A char array as one string (column-major characters; rows of a 2-D char matrix
    /// are interleaved as MATLAB stores them).
    Char(String),
    /// A cell array's elements, column-major.
    Cell(Vec<MatValue>),
    /// A struct array: field names and, per element (column-major), one value per field.
    Struct {
        /// Field names in file order.
        fields: Vec<String>,
        /// Per element, the values of its fields in `fields` order.
        elems: Vec<Vec<MatValue>>,
    },
}

/// Read every top-level variable of a MAT v5 file: (name, value) in file order.
pub fn read_variables(bytes: &[u8]) -> Result<Vec<(String, MatValue)>, String> {
    if bytes.len() >= 8 && &bytes[..8] == b"\x89HDF\r\n\x1a\n" {
        return Err("a MAT v7.3 (HDF5) file; only MAT v5 is read".into());
    }
    if bytes.len() < 128 {
        return Err(format!(
            "{} bytes: too short for a MAT v5 header (128 bytes)",
            bytes.len()
        ));
    }
    if !bytes.starts_with(b"MATLAB 5.0 MAT-file") {
        return Err("not a MAT v5 file (its header does not start \"MATLAB 5.0 MAT-file\")".into());
    }
    match &bytes[126..128] {
        b"IM" => {}
        b"MI" => return Err("a big-endian MAT file; only little-endian files are read".into()),
        other => return Err(format!("bad endian indicator {other:?} in the MAT header")),
    }
    let mut r = Reader { budget: MAX_VALUES };
    let mut out = Vec::new();
    let mut pos = 128;
    while pos < bytes.len() {
        if bytes.len() - pos < 8 {
            break; // trailing padding
        }
        let (ty, data, next) = element(bytes, pos)?;
        pos = next;
        match ty {
            MI_COMPRESSED => {
                let inner = inflate(data)?;
                let (ty, data, _) = element(&inner, 0)?;
                if ty == MI_MATRIX {
                    out.push(r.matrix(data, 0)?);
                }
            }
            MI_MATRIX => out.push(r.matrix(data, 0)?),
            _ => {} // other top-level elements carry no variable
        }
    }
    Ok(out)
}

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;
const MI_UTF16: u32 = 17;

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("truncated at byte {at}"))
}

/// The element at `pos`: (type, data, position of the next element).
fn element(b: &[u8], pos: usize) -> Result<(u32, &[u8], usize), String> {
    let first = u32_at(b, pos)?;
    if first >> 16 != 0 {
        // Small data element: 2 bytes count, 2 bytes type, up to 4 bytes of data.
        let n = (first >> 16) as usize;
        if n > 4 {
            return Err(format!(
                "small element at byte {pos} claims {n} bytes (at most 4)"
            ));
        }
        let data = b
            .get(pos + 4..pos + 4 + n)
            .ok_or_else(|| format!("truncated small element at byte {pos}"))?;
        return Ok((first & 0xffff, data, pos + 8));
    }
    let n = u32_at(b, pos + 4)? as usize;
    let start = pos + 8;
    if n > b.len() - start.min(b.len()) {
        return Err(format!(
            "element at byte {pos} claims {n} bytes but {} remain",
            b.len().saturating_sub(start)
        ));
    }
    let data = &b[start..start + n];
    let next = if first == MI_COMPRESSED {
        start + n
    } else {
        start + n.div_ceil(8) * 8
    };
    Ok((first, data, next))
}

fn inflate(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(data)
        .take(MAX_INFLATED as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("bad compressed element: {e}"))?;
    if out.len() > MAX_INFLATED {
        return Err(format!(
            "a compressed element inflates past {MAX_INFLATED} bytes"
        ));
    }
    Ok(out)
}

struct Reader {
    /// Numbers and characters still allowed.
    budget: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<(), String> {
        self.budget = self
            .budget
            .checked_sub(n)
            .ok_or_else(|| format!("more than {MAX_VALUES} values in one file"))?;
        Ok(())
    }

    /// A miMATRIX element's contents: (name, value).
    fn matrix(&mut self, b: &[u8], depth: usize) -> Result<(String, MatValue), String> {
        if depth > MAX_DEPTH {
            return Err(format!("arrays nested deeper than {MAX_DEPTH} levels"));
        }
        if b.is_empty() {
            return Ok((String::new(), MatValue::Num(Vec::new()))); // an empty array
        }
        let (ty, flags, pos) = element(b, 0)?;
        if ty != MI_UINT32 || flags.len() < 4 {
            return Err("array without its flags".into());
        }
        let class = flags[0];
        let (ty, dims, pos) = element(b, pos)?;
        if ty != MI_INT32 || dims.len() % 4 != 0 || dims.is_empty() {
            return Err("array without its dimensions".into());
        }
        let mut count: usize = 1;
        for d in dims.chunks_exact(4) {
            let d = i32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            let d = usize::try_from(d).map_err(|_| format!("negative dimension {d}"))?;
            count = count
                .checked_mul(d)
                .filter(|&c| c <= MAX_VALUES)
                .ok_or_else(|| "array dimensions too large".to_string())?;
        }
        let (ty, name, mut pos) = element(b, pos)?;
        if ty != MI_INT8 {
            return Err("array without its name".into());
        }
        let name = String::from_utf8_lossy(name).into_owned();
        let value = match class {
            1 => {
                // cell
                let mut v = Vec::with_capacity(count.min(1 << 16));
                for _ in 0..count {
                    let (ty, data, next) = element(b, pos)?;
                    pos = next;
                    if ty != MI_MATRIX {
                        return Err(format!("cell {name:?}: element of type {ty}"));
                    }
                    v.push(self.matrix(data, depth + 1)?.1);
                }
                MatValue::Cell(v)
            }
            2 => {
                // struct
                let (ty, len, next) = element(b, pos)?;
                if ty != MI_INT32 || len.len() != 4 {
                    return Err(format!("struct {name:?} without its field name length"));
                }
                let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                let (ty, names, next) = element(b, next)?;
                pos = next;
                if ty != MI_INT8 || len == 0 || names.len() % len != 0 {
                    return Err(format!("struct {name:?} with bad field names"));
                }
                let fields: Vec<String> = names
                    .chunks(len)
                    .map(|c| {
                        let end = c.iter().position(|&x| x == 0).unwrap_or(c.len());
                        String::from_utf8_lossy(&c[..end]).into_owned()
                    })
                    .collect();
                self.take(count.saturating_mul(fields.len()))?;
                let mut elems = Vec::with_capacity(count.min(1 << 16));
                for _ in 0..count {
                    let mut e = Vec::with_capacity(fields.len());
                    for f in &fields {
                        let (ty, data, next) = element(b, pos)?;
                        pos = next;
                        if ty != MI_MATRIX {
                            return Err(format!("struct {name:?}, field {f:?}: type {ty}"));
                        }
                        e.push(self.matrix(data, depth + 1)?.1);
                    }
                    elems.push(e);
                }
                MatValue::Struct { fields, elems }
            }
            4 => {
                // char
                let (ty, data, _) = element(b, pos)?;
                self.take(data.len())?;
                let s = match ty {
                    MI_UTF8 | MI_UINT8 | MI_INT8 => String::from_utf8_lossy(data).into_owned(),
                    MI_UINT16 | MI_UTF16 => {
                        let units: Vec<u16> = data
                            .chunks_exact(2)
                            .map(|c| u16::from_le_bytes([c[0], c[1]]))
                            .collect();
                        String::from_utf16_lossy(&units)
                    }
                    _ => return Err(format!("char array {name:?} stored as type {ty}")),
                };
                MatValue::Char(s)
            }
            6..=15 => {
                // numeric classes (double .. uint64) and logical
                let (ty, data, _) = element(b, pos)?;
                let v = self.numbers(ty, data)?;
                if v.len() != count {
                    return Err(format!(
                        "array {name:?} holds {} numbers for {count} elements",
                        v.len()
                    ));
                }
                MatValue::Num(v)
            }
            5 => return Err(format!("array {name:?} is sparse, which is not read")),
            c => return Err(format!("array {name:?} of class {c}, which is not read")),
        };
        Ok((name, value))
    }

    fn numbers(&mut self, ty: u32, d: &[u8]) -> Result<Vec<f64>, String> {
        let width = match ty {
            MI_INT8 | MI_UINT8 => 1,
            MI_INT16 | MI_UINT16 => 2,
            MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
            MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
            _ => return Err(format!("numeric data of type {ty}")),
        };
        self.take(d.len() / width)?;
        let v = d
            .chunks_exact(width)
            .map(|c| {
                let mut a = [0u8; 8];
                a[..width].copy_from_slice(c);
                match ty {
                    MI_INT8 => c[0] as i8 as f64,
                    MI_UINT8 => c[0] as f64,
                    MI_INT16 => i16::from_le_bytes([c[0], c[1]]) as f64,
                    MI_UINT16 => u16::from_le_bytes([c[0], c[1]]) as f64,
                    MI_INT32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                    MI_UINT32 => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                    MI_SINGLE => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                    MI_INT64 => i64::from_le_bytes(a) as f64,
                    MI_UINT64 => u64::from_le_bytes(a) as f64,
                    _ => f64::from_le_bytes(a),
                }
            })
            .collect();
        Ok(v)
    }
}

/// The ImageNet devkit's `synsets`: (ILSVRC2012_ID, WNID) of every entry, in file order.
pub fn read_synsets(bytes: &[u8]) -> Result<Vec<(u32, String)>, String> {
    let vars = read_variables(bytes)?;
    let Some((_, value)) = vars.into_iter().find(|(n, _)| n == "synsets") else {
        return Err("no variable `synsets` (the devkit's data/meta.mat has one)".into());
    };
    let MatValue::Struct { fields, elems } = value else {
        return Err("`synsets` is not a struct array".into());
    };
    let field = |name: &str| {
        fields
            .iter()
            .position(|f| f == name)
            .ok_or_else(|| format!("`synsets` has no field {name}"))
    };
    let (id_at, wnid_at) = (field("ILSVRC2012_ID")?, field("WNID")?);
    let mut out = Vec::with_capacity(elems.len());
    for (i, e) in elems.iter().enumerate() {
        let id = match &e[id_at] {
            MatValue::Num(v) if v.len() == 1 && v[0] >= 0.0 && v[0] <= u32::MAX as f64 => {
                v[0] as u32
            }
            other => return Err(format!("synsets({}).ILSVRC2012_ID is {other:?}", i + 1)),
        };
        let wnid = match &e[wnid_at] {
            MatValue::Char(s) => s.trim_end_matches('\0').trim().to_string(),
            other => return Err(format!("synsets({}).WNID is {other:?}", i + 1)),
        };
        out.push((id, wnid));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/val_labels")
            .join(name);
        std::fs::read(&p).unwrap()
    }

    /// The fixtures (tools/make_val_label_fixtures.py, scipy.io.savemat) read back as
    /// scipy's loadmat reads them.
    #[test]
    fn reads_scipy_synsets_compressed_and_not() {
        let want: Vec<(u32, String)> = [
            (1, "n01751748"),
            (2, "n01440764"),
            (3, "n01484850"),
            (4, "n01443537"),
            (5, "n01439121"),
        ]
        .into_iter()
        .map(|(i, w)| (i, w.to_string()))
        .collect();
        for name in ["meta.mat", "meta_uncompressed.mat"] {
            assert_eq!(read_synsets(&fixture(name)).unwrap(), want, "{name}");
        }
        let vars = read_variables(&fixture("meta.mat")).unwrap();
        let MatValue::Struct { fields, elems } = &vars[0].1 else {
            panic!("struct expected")
        };
        let children = fields.iter().position(|f| f == "children").unwrap();
        assert_eq!(elems[4][children], MatValue::Num(vec![2.0, 4.0]));
        let words = fields.iter().position(|f| f == "words").unwrap();
        assert_eq!(elems[1][words], MatValue::Char("tench, Tinca tinca".into()));
    }

    /// Truncations and corruptions of a real file give errors, never panics.
    #[test]
    fn damaged_files_are_errors() {
        for name in ["meta.mat", "meta_uncompressed.mat"] {
            let good = fixture(name);
            for cut in (0..good.len()).step_by(7) {
                let _ = read_synsets(&good[..cut]);
            }
            for at in 128..good.len() {
                let mut bad = good.clone();
                bad[at] ^= 0xff;
                let _ = read_synsets(&bad);
            }
            assert!(read_synsets(&good[..200]).is_err());
        }
        let mut be = fixture("meta_uncompressed.mat");
        be[126..128].copy_from_slice(b"MI");
        assert!(read_synsets(&be).unwrap_err().contains("big-endian"));
        let e = read_synsets(b"\x89HDF\r\n\x1a\n0000").unwrap_err();
        assert!(e.contains("v7.3"), "{e}");
        // A byte count past the end of the file.
        let mut big = fixture("meta_uncompressed.mat");
        big[132..136].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_synsets(&big).unwrap_err().contains("claims"));
    }
}
