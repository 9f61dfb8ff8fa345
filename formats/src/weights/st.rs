//! safetensors files checked by us before anything is read: the header length against
//! the file, the header JSON with duplicate keys refused (the `safetensors` crate keeps
//! the last of two equal keys silently), every tensor's dtype, shape and byte range, and
//! that the ranges tile the data section exactly. Errors name the file and the tensor.

use super::pth::RawTensor;
use super::raw::RawDtype;
use anyhow::{bail, ensure, Context, Result};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// Largest header we read (the `safetensors` crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor's entry in the header.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// The dtype name as written (`F32`, ...).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Byte range in the data section.
    pub begin: usize,
    /// End of the byte range (exclusive).
    pub end: usize,
}

/// A checked header.
#[derive(Debug, Clone)]
pub struct Header {
    /// Tensors in the order of their data.
    pub entries: Vec<Entry>,
    /// `__metadata__`.
    pub metadata: BTreeMap<String, String>,
    /// Offset of the data section in the file.
    pub data_start: usize,
}

/// A JSON value parsed with duplicate object keys refused, at any depth.
struct Strict(serde_json::Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Strict, E> {
        Ok(Strict(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Strict, E> {
        Ok(Strict(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Strict, E> {
        Ok(Strict(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Strict, E> {
        Ok(Strict(
            serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into),
        ))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Strict, E> {
        Ok(Strict(v.into()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Strict, E> {
        Ok(Strict(v.into()))
    }
    fn visit_unit<E>(self) -> std::result::Result<Strict, E> {
        Ok(Strict(serde_json::Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> std::result::Result<Strict, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = a.next_element()? {
            out.push(v);
        }
        Ok(Strict(serde_json::Value::Array(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> std::result::Result<Strict, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(k) = a.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate key {k:?}")));
            }
            let Strict(v) = a.next_value()?;
            out.insert(k, v);
        }
        Ok(Strict(serde_json::Value::Object(out)))
    }
}

/// Checks the header of the safetensors file `bytes`; `file` names it in errors.
pub fn check_header(bytes: &[u8], file: &str) -> Result<Header> {
    ensure!(
        bytes.len() >= 8,
        "{file}: {} bytes, too short for a safetensors file",
        bytes.len()
    );
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(n);
    let left = bytes.len() as u64 - 8;
    ensure!(
        n <= left && n <= MAX_HEADER,
        "{file}: the safetensors header declares {n} bytes but the file holds {left} after \
         the length (and a header holds at most {MAX_HEADER})"
    );
    let data_start = 8 + n as usize;
    let text = std::str::from_utf8(&bytes[8..data_start])
        .with_context(|| format!("{file}: the safetensors header is not UTF-8"))?;
    let Strict(json) = serde_json::from_str::<Strict>(text.trim_end_matches(' '))
        .with_context(|| format!("{file}: the safetensors header is not valid JSON"))?;
    let serde_json::Value::Object(map) = json else {
        bail!("{file}: the safetensors header is not a JSON object");
    };
    let data_len = bytes.len() - data_start;
    let mut metadata = BTreeMap::new();
    let mut entries = Vec::with_capacity(map.len());
    for (name, v) in map {
        if name == "__metadata__" {
            let serde_json::Value::Object(m) = v else {
                bail!("{file}: __metadata__ is not an object");
            };
            for (k, v) in m {
                let serde_json::Value::String(s) = v else {
                    bail!("{file}: __metadata__ entry {k:?} is not a string");
                };
                metadata.insert(k, s);
            }
            continue;
        }
        let bad = |what: &str| anyhow::anyhow!("{file}: tensor {name:?}: {what}");
        let serde_json::Value::Object(info) = v else {
            return Err(bad("its entry is not an object"));
        };
        let dtype = info
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("no dtype string"))?
            .to_string();
        let shape = info
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no shape array"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad("a shape entry is not a non-negative integer"))?;
        let offsets = info
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no data_offsets array"))?;
        let (begin, end) = match offsets.as_slice() {
            [b, e] => match (b.as_u64(), e.as_u64()) {
                (Some(b), Some(e)) => (b, e),
                _ => return Err(bad("data_offsets are not non-negative integers")),
            },
            _ => return Err(bad("data_offsets is not [begin, end]")),
        };
        ensure!(
            begin <= end && end <= data_len as u64,
            "{file}: tensor {name:?}: data_offsets [{begin}, {end}] outside the {data_len} \
             data bytes"
        );
        let (begin, end) = (begin as usize, end as usize);
        let width = RawDtype::from_safetensors(&dtype).map(RawDtype::size);
        if let Some(width) = width {
            let want = shape
                .iter()
                .try_fold(width, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(&format!("shape {shape:?} overflows")))?;
            ensure!(
                end - begin == want,
                "{file}: tensor {name:?}: shape {shape:?} of {dtype} needs {want} bytes but \
                 data_offsets [{begin}, {end}] hold {}",
                end - begin
            );
        }
        entries.push(Entry {
            name,
            dtype,
            shape,
            begin,
            end,
        });
    }
    entries.sort_by(|a, b| (a.begin, a.end, &a.name).cmp(&(b.begin, b.end, &b.name)));
    let mut at = 0usize;
    let mut prev: Option<&str> = None;
    for e in &entries {
        if e.begin != at {
            match prev {
                Some(p) if e.begin < at => bail!(
                    "{file}: tensor {:?} starts at data byte {} inside tensor {p:?}, which \
                     ends at {at}",
                    e.name,
                    e.begin
                ),
                Some(p) => bail!(
                    "{file}: tensor {:?} starts at data byte {} but tensor {p:?} ends at {at} \
                     (a gap)",
                    e.name,
                    e.begin
                ),
                None => bail!(
                    "{file}: tensor {:?} is the first in the data but starts at byte {}",
                    e.name,
                    e.begin
                ),
            }
        }
        at = e.end;
        prev = Some(&e.name);
    }
    ensure!(
        at == data_len,
        "{file}: the tensors end at data byte {at} but the file holds {data_len} data bytes"
    );
    Ok(Header {
        entries,
        metadata,
        data_start,
    })
}

/// Reads every tensor of the safetensors file `bytes` as f32; `file` names it in errors.
pub fn read(bytes: &[u8], file: &str) -> Result<Vec<RawTensor>> {
    let header = check_header(bytes, file)?;
    let data = &bytes[header.data_start..];
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(header.entries.len());
    for e in header.entries {
        ensure!(
            names.insert(e.name.clone()),
            "{file}: tensor {:?} twice",
            e.name
        );
        let dtype = RawDtype::from_safetensors(&e.dtype).with_context(|| {
            format!(
                "{file}: tensor {:?} has dtype {}, which is not read",
                e.name, e.dtype
            )
        })?;
        out.push(RawTensor {
            data: dtype.to_f32(&data[e.begin..e.end]),
            name: e.name,
            shape: e.shape,
        });
    }
    Ok(out)
}
