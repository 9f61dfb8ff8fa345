//! Writers of weight files byte by byte for the hostile-input and fuzz tests: pickle
//! opcodes as `torch.save` emits them (protocol 2 and 4), torch's zip archive and its
//! legacy stream format, and safetensors files with any header.
#![allow(dead_code)]

use std::io::{Cursor, Write};

/// A pickle being written, opcode by opcode.
#[derive(Default, Clone)]
pub struct Pickle(pub Vec<u8>);

impl Pickle {
    /// A pickle starting with `PROTO proto`.
    pub fn new(proto: u8) -> Pickle {
        Pickle(vec![0x80, proto])
    }
    /// Raw opcode bytes.
    pub fn op(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    /// `MARK`.
    pub fn mark(&mut self) -> &mut Self {
        self.op(b"(")
    }
    /// A str (`BINUNICODE`).
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    /// A str as protocol 4 writes short ones (`SHORT_BINUNICODE`).
    pub fn short_str(&mut self, s: &str) -> &mut Self {
        self.0.push(0x8c);
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    /// An int: `BININT` when it fits 32 bits, else `LONG1`.
    pub fn int(&mut self, v: i64) -> &mut Self {
        if let Ok(v) = i32::try_from(v) {
            self.0.push(b'J');
            self.0.extend_from_slice(&v.to_le_bytes());
        } else {
            self.0.extend_from_slice(&[0x8a, 8]);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        self
    }
    /// `GLOBAL module name`.
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(b'c');
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }
    /// A tuple of ints (`MARK ... TUPLE`).
    pub fn int_tuple(&mut self, v: &[i64]) -> &mut Self {
        self.mark();
        for &x in v {
            self.int(x);
        }
        self.op(b"t")
    }
    /// `collections.OrderedDict()` (an empty dict to set items on).
    pub fn ordered_dict(&mut self) -> &mut Self {
        self.global("collections", "OrderedDict").op(b")R")
    }
    /// The persistent id of a storage: 5 fields (zip) or 6 (legacy, view_metadata None).
    pub fn storage(&mut self, class: &str, key: &str, numel: i64, legacy: bool) -> &mut Self {
        self.mark()
            .str("storage")
            .global("torch", class)
            .str(key)
            .str("cpu")
            .int(numel);
        if legacy {
            self.op(b"N");
        }
        self.op(b"tQ")
    }
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False,
    /// OrderedDict())` exactly as torch writes it.
    pub fn tensor(&mut self, t: &TensorSpec, legacy: bool) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").mark();
        self.storage(&t.class, &t.key, t.numel, legacy)
            .int(t.offset)
            .int_tuple(&t.size)
            .int_tuple(&t.stride)
            .op(&[0x89]);
        self.ordered_dict().op(b"tR")
    }
    /// A state dict `OrderedDict` with `entries` written by the closure between its
    /// `MARK` and `SETITEMS`.
    pub fn state_dict(&mut self, entries: impl FnOnce(&mut Pickle)) -> &mut Self {
        self.ordered_dict().mark();
        entries(self);
        self.op(b"u")
    }
    /// `STOP`, returning the bytes.
    pub fn stop(&mut self) -> Vec<u8> {
        self.0.push(b'.');
        self.0.clone()
    }
}

/// A tensor as `_rebuild_tensor_v2` describes it.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    /// torch storage class (`FloatStorage`...).
    pub class: String,
    /// storage key.
    pub key: String,
    /// declared storage elements.
    pub numel: i64,
    /// storage offset.
    pub offset: i64,
    /// shape.
    pub size: Vec<i64>,
    /// strides.
    pub stride: Vec<i64>,
}

impl TensorSpec {
    /// A contiguous f32 tensor of `size` over its own storage `key`.
    pub fn f32(key: &str, size: &[i64]) -> TensorSpec {
        let mut stride = vec![1i64; size.len()];
        for i in (0..size.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * size[i + 1];
        }
        TensorSpec {
            class: "FloatStorage".into(),
            key: key.into(),
            numel: size.iter().product(),
            offset: 0,
            size: size.to_vec(),
            stride,
        }
    }
}

/// A state dict pickle (protocol 2) of named tensors.
pub fn state_dict_pickle(tensors: &[(&str, TensorSpec)], legacy: bool) -> Vec<u8> {
    let mut p = Pickle::new(2);
    p.state_dict(|p| {
        for (name, t) in tensors {
            p.str(name).tensor(t, legacy);
        }
    });
    p.stop()
}

/// f32 values as little-endian bytes.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// torch's zip archive: `prefix/data.pkl`, `prefix/byteorder`, `prefix/data/KEY`...,
/// `prefix/version`, stored (uncompressed) as torch writes them.
pub fn zip_checkpoint(prefix: &str, pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    zip_checkpoint_with(zip::CompressionMethod::Stored, prefix, pkl, storages)
}

/// [`zip_checkpoint`] with every record written with `method` (deflate: what zip tools
/// write when they re-pack a checkpoint).
pub fn zip_checkpoint_with(
    method: zip::CompressionMethod,
    prefix: &str,
    pkl: &[u8],
    storages: &[(&str, Vec<u8>)],
) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    let mut add = |name: String, data: &[u8]| {
        z.start_file(name, opts).unwrap();
        z.write_all(data).unwrap();
    };
    add(format!("{prefix}/data.pkl"), pkl);
    add(format!("{prefix}/byteorder"), b"little");
    for (key, data) in storages {
        add(format!("{prefix}/data/{key}"), data);
    }
    add(format!("{prefix}/version"), b"3\n");
    z.finish().unwrap().into_inner()
}

/// torch's legacy stream: magic number, protocol 1001, system info, `obj`, the storage
/// keys, then each storage as int64 element count + raw bytes.
pub fn legacy_checkpoint(obj: &[u8], storages: &[(&str, i64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    // 0x1950a86a20f9469cfc6c as LONG1
    out.extend_from_slice(&[0x80, 2, 0x8a, 10]);
    out.extend_from_slice(&[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]);
    out.push(b'.');
    out.extend_from_slice(&[0x80, 2, b'M', 0xe9, 0x03, b'.']);
    let mut info = Pickle::new(2);
    info.op(b"}")
        .mark()
        .str("protocol_version")
        .int(1001)
        .str("little_endian")
        .op(&[0x88])
        .str("type_sizes")
        .op(b"}")
        .mark()
        .str("short")
        .int(2)
        .str("int")
        .int(4)
        .str("long")
        .int(4)
        .op(b"uu");
    out.extend_from_slice(&info.stop());
    out.extend_from_slice(obj);
    let mut keys = Pickle::new(2);
    keys.op(b"]").mark();
    for (k, _, _) in storages {
        keys.str(k);
    }
    keys.op(b"e");
    out.extend_from_slice(&keys.stop());
    for (_, numel, data) in storages {
        out.extend_from_slice(&numel.to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

/// A safetensors file with this exact header text and data section.
pub fn safetensors_raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}
