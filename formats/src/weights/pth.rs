//! PyTorch checkpoints (`torch.save`): the zip archive of torch >= 1.6 and the legacy
//! pickle stream of older versions (`_use_new_zipfile_serialization=False`), read
//! through the bounded unpickler of [`super::pickle`]. Nothing in the file is executed:
//! the tensor-rebuild calls torch writes (`torch._utils._rebuild_tensor_v2`,
//! `_rebuild_parameter`, `torch._tensor._rebuild_from_type_v2`...) are recognised by
//! name and interpreted here; any other call is reported and ignored.
//!
//! Every size the pickle declares (storage element counts, shapes, strides, offsets) is
//! checked against the bytes the file really holds before anything is allocated, and
//! the elements all tensors of a file may expand to are capped at 8 times the elements
//! its storages hold (plus 2^20), so views over one storage cannot multiply memory.

use super::pickle::{self, Limits, Obj, Pickle, Value};
use super::raw::RawDtype;
use anyhow::{bail, ensure, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;

/// A tensor read from a weights file, as f32, row-major.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// Its key in the state dict.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its elements.
    pub data: Vec<f32>,
}

/// What a checkpoint held: its tensors, and the entries we ignored (with why).
#[derive(Debug, Default)]
pub struct Extracted {
    /// The tensors of the state dict, in file order.
    pub tensors: Vec<RawTensor>,
    /// One line per ignored entry or foreign global, for warnings.
    pub ignored: Vec<String>,
}

/// The magic number `torch.save` writes first in the legacy format.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// The legacy format's protocol version.
const LEGACY_PROTOCOL: i64 = 1001;
/// Deepest chain of rebuild calls around one tensor (`_rebuild_from_type_v2` of
/// `_rebuild_parameter` of `_rebuild_tensor_v2` is 3).
const MAX_REBUILD_DEPTH: usize = 8;
/// Most dimensions of a tensor.
const MAX_RANK: usize = 16;

/// Globals we interpret or that torch checkpoints hold as plain data types.
fn allowed_global(module: &str, name: &str) -> bool {
    matches!(
        (module, name),
        ("collections", "OrderedDict")
            | ("builtins" | "__builtin__", "dict")
            | (
                "torch._utils",
                "_rebuild_tensor_v2"
                    | "_rebuild_tensor"
                    | "_rebuild_parameter"
                    | "_rebuild_parameter_with_state"
                    | "_rebuild_from_type_v2"
            )
            | ("torch._tensor", "_rebuild_from_type_v2" | "Tensor")
            | ("torch", "Tensor")
            | ("torch.nn.parameter", "Parameter")
    ) || (module == "torch" && RawDtype::from_torch_storage(name).is_some())
}

/// A checkpoint's object pickle with its storages read and checked against what the
/// pickle declares, for readers that need more of a checkpoint than its state dict (a
/// DeiT `main.py` checkpoint's optimizer state and EMA weights). Nothing in it was
/// executed; [`Checkpoint::tensor`] and [`Checkpoint::state_dict_at`] read tensors out
/// of it with every index checked.
pub struct Checkpoint {
    /// The object pickle.
    pub pickle: Pickle,
    declared: BTreeMap<String, (RawDtype, u64)>,
    data: HashMap<String, Vec<u8>>,
    file: String,
}

/// Which storages to read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Storages {
    /// Those of the state dict's tensors.
    StateDict,
    /// Every storage the pickle declares.
    All,
}

impl Checkpoint {
    /// Reads a PyTorch checkpoint (zip archive or legacy stream) with all its storages.
    pub fn read(bytes: &[u8], file: &str) -> Result<Checkpoint> {
        if bytes.starts_with(super::ZIP_MAGIC) {
            open_zip(bytes, file, Storages::All)
        } else if bytes.first() == Some(&0x80) {
            open_legacy(bytes, file, Storages::All)
        } else {
            bail!("{file} is not a PyTorch checkpoint (a zip archive or a legacy pickle stream)")
        }
    }

    /// The tensor that value `v` of the pickle rebuilds; `name` names it in errors.
    pub fn tensor(&self, v: Value, name: &str) -> Result<RawTensor> {
        match entry(&self.pickle, v, name, 0, &self.file)? {
            Entry::Tensor(t) => {
                let plan = Plan {
                    tensors: vec![t],
                    ignored: Vec::new(),
                };
                let mut e = materialize(plan, &self.declared, &self.data, &self.file)?;
                e.tensors
                    .pop()
                    .with_context(|| format!("{}: {name} holds no tensor", self.file))
            }
            Entry::Ignored(why) => bail!("{}: {name} is not a tensor: {why}", self.file),
        }
    }

    /// The tensors of the state dict that value `v` of the pickle is.
    pub fn state_dict_at(&self, v: Value) -> Result<Extracted> {
        let plan = plan_dict(&self.pickle, v, &self.file)?;
        materialize(plan, &self.declared, &self.data, &self.file)
    }
}

/// Reads a zip-format checkpoint (torch >= 1.6) held in `bytes`; `file` names it in
/// errors.
pub fn read_zip(bytes: &[u8], file: &str) -> Result<Extracted> {
    let ck = open_zip(bytes, file, Storages::StateDict)?;
    let plan = plan(&ck.pickle, file)?;
    materialize(plan, &ck.declared, &ck.data, file)
}

fn open_zip(bytes: &[u8], file: &str, storages: Storages) -> Result<Checkpoint> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .with_context(|| format!("{file}: not a readable zip archive"))?;
    // torch reads the first record of a name and we would read the last: two readers, two
    // models from one file. Refused instead.
    if zip.has_duplicate_names() {
        bail!(
            "{file}: the zip archive holds two records of one name (torch would read the \
             first, another reader the last): refused"
        );
    }
    let names: Vec<String> = zip
        .file_names_raw()
        .filter_map(|n| std::str::from_utf8(n).ok().map(str::to_string))
        .collect();
    let pkls: Vec<&String> = names
        .iter()
        .filter(|n| n.matches('/').count() == 1 && n.ends_with("/data.pkl"))
        .collect();
    let pkl_name = match pkls.as_slice() {
        [one] => (*one).clone(),
        [] if names.iter().any(|n| n.ends_with("/constants.pkl")) => bail!(
            "{file} is a TorchScript archive (torch.jit.save), not a state dict: save \
             model.state_dict() with torch.save"
        ),
        [] => bail!("{file}: a zip archive without the data.pkl record of torch.save"),
        _ => bail!(
            "{file}: the zip archive holds {} data.pkl records",
            pkls.len()
        ),
    };
    let mut budget = crate::open::WEIGHTS.bytes;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    let order_name = format!("{prefix}byteorder");
    if names.contains(&order_name) {
        let order = read_entry(&mut zip, &order_name, 16, &mut budget, file)?;
        ensure!(
            order.as_slice() == b"little",
            "{file}: byte order {:?} (only little-endian checkpoints are read)",
            String::from_utf8_lossy(&order)
        );
    }
    let pkl = read_entry(&mut zip, &pkl_name, MAX_PICKLE, &mut budget, file)?;
    let (p, _) = pickle::unpickle(&pkl, 0, &Limits::default())
        .with_context(|| format!("{file}: record {pkl_name}"))?;
    let mut declared = declared_storages(&p, file)?;
    let keys: Vec<String> = match storages {
        Storages::StateDict => plan(&p, file)?
            .storage_keys()
            .into_iter()
            .cloned()
            .collect(),
        Storages::All => declared.keys().cloned().collect(),
    };
    let mut data: HashMap<String, Vec<u8>> = HashMap::new();
    for key in &keys {
        let &(dtype, numel) = declared
            .get(key)
            .with_context(|| format!("{file}: storage {key:?} is not declared"))?;
        let want = storage_bytes(key, dtype, numel, file)?;
        let name = format!("{prefix}data/{key}");
        let idx = zip.index_for_name(&name).with_context(|| {
            format!("{file}: storage {key:?} has no record {name} in the archive")
        })?;
        let got = zip
            .by_index_raw(idx)
            .with_context(|| format!("{file}: record {name}"))?
            .size();
        ensure!(
            got == want,
            "{file}: storage {key:?} declares {numel} elements of {dtype:?} ({want} bytes) \
             but its record {name} holds {got} bytes"
        );
        let b = read_entry(&mut zip, &name, want, &mut budget, file)?;
        data.insert(key.clone(), b);
    }
    declared.retain(|k, _| data.contains_key(k));
    Ok(Checkpoint {
        pickle: p,
        declared,
        data,
        file: file.to_string(),
    })
}

/// Reads a legacy checkpoint (torch < 1.6, or `_use_new_zipfile_serialization=False`):
/// magic number, protocol version and system info pickles, the object pickle, the
/// sorted list of storage keys, then each storage as an int64 element count followed by
/// its raw little-endian elements.
pub fn read_legacy(bytes: &[u8], file: &str) -> Result<Extracted> {
    let ck = open_legacy(bytes, file, Storages::StateDict)?;
    let plan = plan(&ck.pickle, file)?;
    materialize(plan, &ck.declared, &ck.data, file)
}

fn open_legacy(bytes: &[u8], file: &str, storages: Storages) -> Result<Checkpoint> {
    let limits = Limits::default();
    let (magic, pos) = pickle::unpickle(bytes, 0, &limits)
        .with_context(|| format!("{file}: the legacy format's magic number"))?;
    let is_magic = match magic.root.and_then(|v| magic.obj(v)) {
        Some(Obj::BigInt(b)) => b.as_slice() == LEGACY_MAGIC,
        _ => false,
    };
    ensure!(
        is_magic,
        "{file}: a pickle, but not a torch.save checkpoint (its first object is {}, not \
         torch's magic number)",
        magic.root.map(|v| magic.describe(v)).unwrap_or_default()
    );
    let (proto, pos) = pickle::unpickle(bytes, pos, &limits)
        .with_context(|| format!("{file}: the legacy format's protocol version"))?;
    ensure!(
        proto.root == Some(Value::Int(LEGACY_PROTOCOL)),
        "{file}: legacy protocol version {} (only {LEGACY_PROTOCOL} is read)",
        proto.root.map(|v| proto.describe(v)).unwrap_or_default()
    );
    let (info, pos) = pickle::unpickle(bytes, pos, &limits)
        .with_context(|| format!("{file}: the legacy format's system info"))?;
    let little = info
        .root
        .and_then(|v| match info.obj(v) {
            Some(Obj::Dict(items)) => items
                .iter()
                .find(|(k, _)| info.str(*k) == Some("little_endian"))
                .map(|(_, v)| *v),
            _ => None,
        })
        .with_context(|| format!("{file}: the system info has no little_endian entry"))?;
    ensure!(
        little == Value::Bool(true),
        "{file}: written on a big-endian machine (only little-endian checkpoints are read)"
    );
    let (p, pos) = pickle::unpickle(bytes, pos, &limits)
        .with_context(|| format!("{file}: the checkpoint's object pickle"))?;
    let (keys, mut pos) = pickle::unpickle(bytes, pos, &limits)
        .with_context(|| format!("{file}: the list of storage keys"))?;
    let key_list: Vec<String> = match keys.root.and_then(|v| keys.seq(v)) {
        Some(items) => items
            .iter()
            .map(|k| {
                keys.str(*k)
                    .map(str::to_string)
                    .with_context(|| format!("{file}: a storage key is a {}", keys.describe(*k)))
            })
            .collect::<Result<_>>()?,
        None => bail!("{file}: the storage key list is not a list"),
    };
    let declared = declared_storages(&p, file)?;
    let needed: Option<Vec<String>> = match storages {
        Storages::StateDict => Some(
            plan(&p, file)?
                .storage_keys()
                .into_iter()
                .cloned()
                .collect(),
        ),
        Storages::All => None,
    };
    let needs = |key: &str| needed.as_ref().is_none_or(|n| n.iter().any(|k| k == key));
    let mut data: HashMap<String, Vec<u8>> = HashMap::new();
    for key in &key_list {
        let &(dtype, numel) = declared.get(key).with_context(|| {
            format!("{file}: storage {key:?} is listed but no tensor refers to it")
        })?;
        ensure!(
            pos + 8 <= bytes.len(),
            "{file}: the file ends before storage {key:?}"
        );
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[pos..pos + 8]);
        let n = i64::from_le_bytes(n);
        pos += 8;
        ensure!(
            u64::try_from(n).ok() == Some(numel),
            "{file}: storage {key:?} holds {n} elements but its tensors declare {numel}"
        );
        let want = storage_bytes(key, dtype, numel, file)?;
        let left = (bytes.len() - pos) as u64;
        ensure!(
            want <= left,
            "{file}: storage {key:?} declares {numel} elements of {dtype:?} ({want} bytes) \
             but only {left} bytes are left in the file"
        );
        let end = pos + want as usize;
        if needs(key) {
            data.insert(key.clone(), bytes[pos..end].to_vec());
        }
        pos = end;
    }
    for key in needed.iter().flatten() {
        ensure!(
            data.contains_key(key),
            "{file}: storage {key:?} of the state dict is missing from the storage list"
        );
    }
    Ok(Checkpoint {
        pickle: p,
        declared,
        data,
        file: file.to_string(),
    })
}

/// Bytes of `numel` elements of `dtype`, or an error if that overflows.
fn storage_bytes(key: &str, dtype: RawDtype, numel: u64, file: &str) -> Result<u64> {
    numel
        .checked_mul(dtype.size() as u64)
        .with_context(|| format!("{file}: storage {key:?} declares {numel} elements"))
}

/// Most bytes of a checkpoint's `data.pkl` record: a ViT-g state dict's pickle is under
/// 1 MiB, so 1 GiB is a bound on a forged size, not on a real file.
const MAX_PICKLE: u64 = 1 << 30;

/// Reads a zip record of at most `max` bytes, stored or deflate-compressed (what
/// `torch.save` writes, and zip tools re-packing a checkpoint), without trusting its
/// declared size: a stored record must hold exactly its declared size; a deflated one must
/// inflate to exactly its declared size, and inflation stops one byte past it. Every
/// record's bytes also come out of `budget` (the weights-file limit,
/// [`crate::open::WEIGHTS`]), so a deflate bomb cannot exceed what a stored file of the
/// largest allowed size could hold.
fn read_entry(
    zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    name: &str,
    max: u64,
    budget: &mut u64,
    file: &str,
) -> Result<Vec<u8>> {
    let idx = zip
        .index_for_name(name)
        .with_context(|| format!("{file}: no record {name}"))?;
    let f = zip
        .by_index_raw(idx)
        .with_context(|| format!("{file}: record {name}"))?;
    let size = f.size();
    let method = f.compression();
    ensure!(
        size <= max,
        "{file}: record {name} declares {size} bytes (at most {max} expected)"
    );
    ensure!(
        size <= *budget,
        "{file}: record {name} declares {size} bytes, past the {} bytes all records of a \
         checkpoint may inflate to (the weights-file limit)",
        crate::open::WEIGHTS.bytes
    );
    *budget -= size;
    let mut out = Vec::new();
    let got = match method {
        zip::CompressionMethod::Stored => f.take(size).read_to_end(&mut out),
        zip::CompressionMethod::Deflated => flate2::read::DeflateDecoder::new(f)
            .take(size + 1)
            .read_to_end(&mut out),
        other => bail!(
            "{file}: record {name} is compressed with {other} (stored and deflated records \
             are read, as torch.load reads them)"
        ),
    };
    got.with_context(|| format!("{file}: reading record {name} ({method})"))?;
    ensure!(
        out.len() as u64 == size,
        "{file}: record {name} holds {}{} bytes, not the {size} it declares",
        if out.len() as u64 > size {
            "more than "
        } else {
            ""
        },
        out.len().min(size as usize)
    );
    Ok(out)
}

/// A storage as a persistent id declares it.
struct StorageRef {
    key: String,
    dtype: RawDtype,
    numel: u64,
}

/// Parses torch's persistent id `('storage', storage_type, key, location, numel[,
/// view_metadata])`.
fn storage_ref(p: &Pickle, pid: Value, file: &str) -> Result<StorageRef> {
    let items = p
        .seq(pid)
        .with_context(|| format!("{file}: a persistent id is a {}", p.describe(pid)))?;
    ensure!(
        items.len() == 5 || items.len() == 6,
        "{file}: a storage persistent id has {} fields, torch writes 5 (zip) or 6 (legacy)",
        items.len()
    );
    let kind = p.str(items[0]).unwrap_or("");
    ensure!(
        kind == "storage",
        "{file}: persistent id of kind {} (only 'storage' is read)",
        p.describe(items[0])
    );
    let key = p
        .str(items[2])
        .with_context(|| format!("{file}: a storage key is a {}", p.describe(items[2])))?
        .to_string();
    let (module, class) = p.global(items[1]).with_context(|| {
        format!(
            "{file}: storage {key:?} has type {}, not a torch storage class",
            p.describe(items[1])
        )
    })?;
    let dtype = match (module, RawDtype::from_torch_storage(class)) {
        ("torch", Some(d)) => d,
        _ => bail!("unknown storage type {module}.{class} in file {file} (storage {key:?})"),
    };
    let numel = match items[4] {
        Value::Int(n) if n >= 0 => n as u64,
        v => bail!(
            "{file}: storage {key:?} declares {} elements",
            p.describe(v)
        ),
    };
    if let Some(&view) = items.get(5) {
        ensure!(
            view == Value::None,
            "{file}: storage {key:?} is a view (torch < 1.0 storage views are not read)"
        );
    }
    Ok(StorageRef { key, dtype, numel })
}

/// Every storage the pickle's persistent ids declare: key -> (type, elements). One key
/// declared twice with different types or sizes is an error.
fn declared_storages(p: &Pickle, file: &str) -> Result<BTreeMap<String, (RawDtype, u64)>> {
    let mut out: BTreeMap<String, (RawDtype, u64)> = BTreeMap::new();
    for o in &p.objs {
        if let Obj::PersistentId(pid) = o {
            let s = storage_ref(p, *pid, file)?;
            match out.get(&s.key) {
                Some(&(d, n)) if (d, n) != (s.dtype, s.numel) => bail!(
                    "{file}: storage {:?} is declared as {n} x {d:?} and as {} x {:?}",
                    s.key,
                    s.numel,
                    s.dtype
                ),
                _ => {
                    out.insert(s.key, (s.dtype, s.numel));
                }
            }
        }
    }
    Ok(out)
}

/// A tensor of the state dict before its data is read.
struct TensorPlan {
    name: String,
    storage: String,
    offset: u64,
    size: Vec<u64>,
    stride: Vec<u64>,
}

/// The state dict's tensors and ignored entries.
struct Plan {
    tensors: Vec<TensorPlan>,
    ignored: Vec<String>,
}

impl Plan {
    fn storage_keys(&self) -> Vec<&String> {
        let mut keys: Vec<&String> = self.tensors.iter().map(|t| &t.storage).collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

/// What one state-dict entry is.
enum Entry {
    Tensor(TensorPlan),
    /// Not a tensor; the reason (and the foreign global it calls, if any).
    Ignored(String),
}

/// Finds the state dict (`{'model': sd}`, `{'state_dict': sd}` or the root dict) and
/// plans every tensor of it.
fn plan(p: &Pickle, file: &str) -> Result<Plan> {
    let root = p
        .root
        .with_context(|| format!("{file}: the pickle holds no object"))?;
    let Some(Obj::Dict(items)) = p.obj(root) else {
        bail!(
            "{file}: the checkpoint holds a {}, not a dict (a state dict or {{'model': \
             state_dict}})",
            p.describe(root)
        );
    };
    let holds_tensors = |v: Value| match p.obj(v) {
        Some(Obj::Dict(items)) => items.iter().any(|(_, v)| is_torch_call(p, *v)),
        _ => false,
    };
    let mut sd = root;
    for key in ["model", "state_dict"] {
        if let Some((_, v)) = items.iter().find(|(k, _)| p.str(*k) == Some(key)) {
            if holds_tensors(*v) {
                sd = *v;
                break;
            }
        }
    }
    plan_dict(p, sd, file)
}

/// Plans every tensor of the state dict `sd` (a dict of tensors).
fn plan_dict(p: &Pickle, sd: Value, file: &str) -> Result<Plan> {
    let Some(Obj::Dict(items)) = p.obj(sd) else {
        bail!("{file}: the state dict is a {}, not a dict", p.describe(sd));
    };
    let mut plan = Plan {
        tensors: Vec::new(),
        ignored: Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    for (k, v) in items {
        let Some(name) = p.str(*k) else {
            plan.ignored.push(format!(
                "an entry of {file} with a {} key ignored",
                p.describe(*k)
            ));
            continue;
        };
        ensure!(
            seen.insert(name),
            "{file}: the state dict holds entry {name:?} twice"
        );
        match entry(p, *v, name, 0, file)? {
            Entry::Tensor(t) => plan.tensors.push(t),
            Entry::Ignored(why) => plan
                .ignored
                .push(format!("entry {name:?} of {file} ignored: {why}")),
        }
    }
    // Foreign globals anywhere in the file (an `args` Namespace next to the weights, or
    // a planted `posix.system`): never imported or called; said once each.
    for (module, name) in &p.globals {
        if !allowed_global(module, name) {
            plan.ignored.push(format!(
                "{file} names the global {module}.{name}: never imported or called"
            ));
        }
    }
    Ok(plan)
}

/// Whether `v` is a call of a torch function (how tensors are pickled).
fn is_torch_call(p: &Pickle, v: Value) -> bool {
    match p.obj(v) {
        Some(Obj::Call { func, .. }) => p
            .global(*func)
            .is_some_and(|(m, _)| m == "torch" || m.starts_with("torch.")),
        _ => false,
    }
}

/// Interprets one state-dict value.
fn entry(p: &Pickle, v: Value, name: &str, depth: usize, file: &str) -> Result<Entry> {
    ensure!(
        depth <= MAX_REBUILD_DEPTH,
        "{file}: tensor {name:?} is nested in more than {MAX_REBUILD_DEPTH} rebuild calls"
    );
    let (func, args) = match p.obj(v) {
        Some(Obj::Call { func, args }) => (*func, *args),
        Some(Obj::Instance { cls, .. }) => {
            return Ok(Entry::Ignored(match p.global(*cls) {
                Some((m, n)) => format!("an instance of {m}.{n}, never created"),
                None => "an object, not a tensor".into(),
            }))
        }
        _ => return Ok(Entry::Ignored(format!("a {}, not a tensor", p.describe(v)))),
    };
    let Some((module, fname)) = p.global(func) else {
        return Ok(Entry::Ignored(format!(
            "a call of a {}, never executed",
            p.describe(func)
        )));
    };
    let args_of = |want: &[usize]| -> Result<&[Value]> {
        let a = p.seq(args).with_context(|| {
            format!(
                "{file}: tensor {name:?}: the arguments of {module}.{fname} are a {}",
                p.describe(args)
            )
        })?;
        ensure!(
            want.contains(&a.len()),
            "{file}: tensor {name:?}: {module}.{fname} takes {} arguments, the file gives {}",
            want.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" or "),
            a.len()
        );
        Ok(a)
    };
    match (module, fname) {
        ("torch._utils", "_rebuild_tensor_v2") => {
            rebuild_tensor(p, args_of(&[6, 7])?, name, file).map(Entry::Tensor)
        }
        ("torch._utils", "_rebuild_tensor") => {
            rebuild_tensor(p, args_of(&[4])?, name, file).map(Entry::Tensor)
        }
        ("torch._utils", "_rebuild_parameter") => {
            let a = args_of(&[3])?;
            entry(p, a[0], name, depth + 1, file)
        }
        ("torch._utils", "_rebuild_parameter_with_state") => {
            let a = args_of(&[4])?;
            entry(p, a[0], name, depth + 1, file)
        }
        ("torch._tensor" | "torch._utils", "_rebuild_from_type_v2") => {
            // _rebuild_from_type_v2(func, new_type, args, state) = func(*args) as new_type
            let a = args_of(&[4])?;
            match p.global(a[1]) {
                Some((m, _)) if m == "torch" || m.starts_with("torch.") => {}
                _ => {
                    return Ok(Entry::Ignored(format!(
                        "a tensor of type {}, never created",
                        p.describe(a[1])
                    )))
                }
            }
            // the inner call, as if the file held `func(*args)` itself
            let inner = InnerCall {
                func: a[0],
                args: a[2],
            };
            inner.entry(p, name, depth + 1, file)
        }
        (m, f) if m == "torch" || m.starts_with("torch.") => {
            bail!("{file}: tensor {name:?} is rebuilt by {m}.{f}, which is not read (quantized, sparse or nested tensors are not supported)")
        }
        (m, f) => Ok(Entry::Ignored(format!("calls {m}.{f}, never executed"))),
    }
}

/// A `(func, args)` pair held as arguments rather than as a `REDUCE`.
struct InnerCall {
    func: Value,
    args: Value,
}

impl InnerCall {
    fn entry(&self, p: &Pickle, name: &str, depth: usize, file: &str) -> Result<Entry> {
        ensure!(
            depth <= MAX_REBUILD_DEPTH,
            "{file}: tensor {name:?} is nested in more than {MAX_REBUILD_DEPTH} rebuild calls"
        );
        let Some((module, fname)) = p.global(self.func) else {
            return Ok(Entry::Ignored(format!(
                "_rebuild_from_type_v2 of a {}, never executed",
                p.describe(self.func)
            )));
        };
        let a = p.seq(self.args).with_context(|| {
            format!(
                "{file}: tensor {name:?}: the arguments of {module}.{fname} are a {}",
                p.describe(self.args)
            )
        })?;
        let want: &[usize] = match (module, fname) {
            ("torch._utils", "_rebuild_tensor_v2") => &[6, 7],
            ("torch._utils", "_rebuild_tensor") => &[4],
            ("torch._utils", "_rebuild_parameter") => &[3],
            ("torch._utils", "_rebuild_parameter_with_state") => &[4],
            (m, f) if m == "torch" || m.starts_with("torch.") => {
                bail!("{file}: tensor {name:?} is rebuilt by {m}.{f}, which is not read")
            }
            (m, f) => return Ok(Entry::Ignored(format!("calls {m}.{f}, never executed"))),
        };
        ensure!(
            want.contains(&a.len()),
            "{file}: tensor {name:?}: {module}.{fname} takes {} arguments, the file gives {}",
            want.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" or "),
            a.len()
        );
        match fname {
            "_rebuild_tensor_v2" | "_rebuild_tensor" => {
                rebuild_tensor(p, a, name, file).map(Entry::Tensor)
            }
            _ => entry(p, a[0], name, depth + 1, file),
        }
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
fn rebuild_tensor(p: &Pickle, a: &[Value], name: &str, file: &str) -> Result<TensorPlan> {
    let storage = match p.obj(a[0]) {
        Some(Obj::PersistentId(pid)) => storage_ref(p, *pid, file)
            .with_context(|| format!("{file}: the storage of tensor {name:?}"))?,
        _ => bail!(
            "{file}: tensor {name:?}: its storage is a {}, not a persistent id",
            p.describe(a[0])
        ),
    };
    let int = |v: Value, what: &str| -> Result<u64> {
        match v {
            Value::Int(n) if n >= 0 => Ok(n as u64),
            v => bail!("{file}: tensor {name:?}: {what} is {}", p.describe(v)),
        }
    };
    let offset = int(a[1], "the storage offset")?;
    let ints = |v: Value, what: &str| -> Result<Vec<u64>> {
        let items = p
            .seq(v)
            .with_context(|| format!("{file}: tensor {name:?}: {what} is a {}", p.describe(v)))?;
        ensure!(
            items.len() <= MAX_RANK,
            "{file}: tensor {name:?}: {what} has {} dimensions (at most {MAX_RANK})",
            items.len()
        );
        items.iter().map(|&x| int(x, what)).collect()
    };
    let size = ints(a[2], "the shape")?;
    let stride = ints(a[3], "the stride")?;
    ensure!(
        size.len() == stride.len(),
        "{file}: tensor {name:?}: shape {size:?} and stride {stride:?} differ in rank"
    );
    Ok(TensorPlan {
        name: name.to_string(),
        storage: storage.key,
        offset,
        size,
        stride,
    })
}

/// Reads every planned tensor out of its storage, checking every index against the
/// storage's real length first.
fn materialize(
    plan: Plan,
    declared: &BTreeMap<String, (RawDtype, u64)>,
    data: &HashMap<String, Vec<u8>>,
    file: &str,
) -> Result<Extracted> {
    let stored: u64 = declared.values().map(|&(_, n)| n).sum();
    let mut budget = stored.saturating_mul(8).saturating_add(1 << 20);
    let mut out = Extracted {
        tensors: Vec::with_capacity(plan.tensors.len()),
        ignored: plan.ignored,
    };
    for t in plan.tensors {
        let name = &t.name;
        let (Some(&(dtype, numel)), Some(bytes)) = (declared.get(&t.storage), data.get(&t.storage))
        else {
            bail!(
                "{file}: tensor {name:?}: storage {:?} was not read",
                t.storage
            );
        };
        let count = t
            .size
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .with_context(|| format!("{file}: tensor {name:?}: shape {:?} overflows", t.size))?;
        if count > 0 {
            let mut last = t.offset;
            for (&d, &s) in t.size.iter().zip(&t.stride) {
                last = (d - 1)
                    .checked_mul(s)
                    .and_then(|x| x.checked_add(last))
                    .with_context(|| {
                        format!("{file}: tensor {name:?}: shape and stride overflow")
                    })?;
            }
            ensure!(
                last < numel,
                "{file}: tensor {name:?} (shape {:?}, stride {:?}, offset {}) reaches element \
                 {last} of storage {:?}, which holds {numel}",
                t.size,
                t.stride,
                t.offset,
                t.storage
            );
        }
        ensure!(
            count <= budget,
            "{file}: tensor {name:?} has {count} elements: the file's tensors expand to more \
             than 8 times the {stored} elements its storages hold"
        );
        budget -= count;
        let shape: Vec<usize> = t.size.iter().map(|&d| d as usize).collect();
        let values = gather(bytes, dtype, t.offset, &t.size, &t.stride, count as usize);
        out.tensors.push(RawTensor {
            name: t.name,
            shape,
            data: values,
        });
    }
    Ok(out)
}

/// The elements of a strided view, row-major (every index checked by the caller).
fn gather(
    bytes: &[u8],
    dtype: RawDtype,
    offset: u64,
    size: &[u64],
    stride: &[u64],
    count: usize,
) -> Vec<f32> {
    if count == 0 {
        return Vec::new();
    }
    let mut contiguous = true;
    let mut expect = 1u64;
    for (&d, &s) in size.iter().zip(stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
        }
        expect *= d;
    }
    let esize = dtype.size();
    if contiguous {
        let start = offset as usize * esize;
        return dtype.to_f32(&bytes[start..start + count * esize]);
    }
    let mut out = Vec::with_capacity(count);
    let mut idx = vec![0u64; size.len()];
    for _ in 0..count {
        let at = offset + idx.iter().zip(stride).map(|(i, s)| i * s).sum::<u64>();
        out.push(dtype.get(bytes, at as usize));
        for d in (0..size.len()).rev() {
            idx[d] += 1;
            if idx[d] < size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}
