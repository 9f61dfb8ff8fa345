//! A bounded unpickler that never executes anything, for PyTorch checkpoints.
//!
//! Why our own and not candle's `candle_core::pickle`: that reader trusts the file (a
//! short rebuild tuple indexes out of range, declared sizes are allocated as given,
//! nesting recurses on the native stack, memo reads deep-copy values so a list doubled
//! through the memo grows exponentially) and knows no protocol-4 framing. Patching the
//! vendored candle copy would widen a patch that exists for one backprop change; a
//! small reader of our own keeps every bound in one place we test and fuzz.
//!
//! The machine reads the pickle opcodes that `torch.save` emits under protocols 2 to 5
//! (frames, `MEMOIZE`, `STACK_GLOBAL`, 8-byte lengths...) and builds a graph of
//! [`Obj`]s in one arena: containers are referenced by id, so the memo shares objects
//! as Python does (and a list "doubled" forty times costs forty entries, not 2^40).
//! Globals are only recorded, calls (`REDUCE`, `NEWOBJ`) only described: the torch
//! layer (`pth.rs`) interprets the few tensor-rebuild calls it knows and nothing else
//! ever runs. The one call evaluated here is `collections.OrderedDict()` with no
//! arguments, because the items of a state dict are set on its result.
//!
//! Bounds: every length is checked against the bytes left before anything is
//! allocated; objects, memo entries and marks are limited (see [`Limits`]); the
//! machine is a loop over opcodes (no recursion), and the arena drops flat, so a pickle
//! nested a million deep costs memory linear in its size and no stack.

use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;

/// Index of an object in [`Pickle::objs`].
pub type ObjId = u32;

/// A value on the machine's stack: scalars inline, everything else by reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// Python `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// An object of the arena.
    Obj(ObjId),
}

/// An object built by the machine. Nothing here was executed: calls are descriptions.
#[derive(Debug)]
pub enum Obj {
    /// A text string (`str`; Python 2 byte strings decoded as UTF-8 or Latin-1).
    Str(String),
    /// A `bytes` object.
    Bytes(Vec<u8>),
    /// An integer wider than 64 bits, as little-endian two's complement bytes.
    BigInt(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A list.
    List(Vec<Value>),
    /// A dict (or an `OrderedDict`), items in insertion order, duplicates kept.
    Dict(Vec<(Value, Value)>),
    /// A set or frozenset.
    Set(Vec<Value>),
    /// A reference to `module.name` (never imported).
    Global {
        /// The module path.
        module: String,
        /// The attribute name.
        name: String,
    },
    /// `func(*args)` as `REDUCE` describes it (never called).
    Call {
        /// What would be called.
        func: Value,
        /// The argument tuple.
        args: Value,
    },
    /// `cls.__new__(cls, *args, **kwargs)` as `NEWOBJ`/`NEWOBJ_EX` describe it.
    Instance {
        /// The class (the arguments are not kept: nothing is ever created).
        cls: Value,
    },
    /// A persistent id (`BINPERSID`): torch's reference to a storage.
    PersistentId(Value),
}

impl Obj {
    /// A short name of the object's kind for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Obj::Str(_) => "str",
            Obj::Bytes(_) => "bytes",
            Obj::BigInt(_) => "int",
            Obj::Tuple(_) => "tuple",
            Obj::List(_) => "list",
            Obj::Dict(_) => "dict",
            Obj::Set(_) => "set",
            Obj::Global { .. } => "global",
            Obj::Call { .. } => "call",
            Obj::Instance { .. } => "object",
            Obj::PersistentId(_) => "persistent id",
        }
    }
}

/// Resource limits of one unpickling.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most objects in the arena.
    pub max_objects: usize,
    /// Most memo entries.
    pub max_memo: usize,
    /// Most open marks (nesting of `MARK ... TUPLE/LIST/DICT`).
    pub max_marks: usize,
    /// Most values on the stack.
    pub max_stack: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_objects: 1 << 26,
            max_memo: 1 << 24,
            max_marks: 1_000,
            max_stack: 1 << 24,
        }
    }
}

/// The result of unpickling: the arena, the root value, and every global referenced.
#[derive(Debug, Default)]
pub struct Pickle {
    /// All objects; [`Value::Obj`] indexes here.
    pub objs: Vec<Obj>,
    /// What `STOP` returned.
    pub root: Option<Value>,
    /// Every distinct global the pickle names, `(module, name)`, in first-seen order.
    pub globals: Vec<(String, String)>,
}

impl Pickle {
    /// The object `v` refers to, if it is one.
    pub fn obj(&self, v: Value) -> Option<&Obj> {
        match v {
            Value::Obj(id) => self.objs.get(id as usize),
            _ => None,
        }
    }

    /// The text of a `str` (or ASCII `bytes`, as Python 2 pickles hold them).
    pub fn str(&self, v: Value) -> Option<&str> {
        match self.obj(v)? {
            Obj::Str(s) => Some(s),
            Obj::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// `(module, name)` of a global.
    pub fn global(&self, v: Value) -> Option<(&str, &str)> {
        match self.obj(v)? {
            Obj::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }

    /// The items of a tuple (or list).
    pub fn seq(&self, v: Value) -> Option<&[Value]> {
        match self.obj(v)? {
            Obj::Tuple(items) | Obj::List(items) => Some(items),
            _ => None,
        }
    }

    /// A short description of `v` for messages (no recursion into containers).
    pub fn describe(&self, v: Value) -> String {
        match v {
            Value::None => "None".into(),
            Value::Bool(b) => format!("{b}"),
            Value::Int(i) => format!("int {i}"),
            Value::Float(f) => format!("float {f}"),
            Value::Obj(_) => match self.obj(v) {
                Some(Obj::Str(s)) => format!("str {:?}", truncate(s, 60)),
                Some(Obj::Global { module, name }) => format!("global {module}.{name}"),
                Some(Obj::Call { func, .. }) => match self.global(*func) {
                    Some((m, n)) => format!("call of {m}.{n}"),
                    None => "call".into(),
                },
                Some(Obj::Instance { cls, .. }) => match self.global(*cls) {
                    Some((m, n)) => format!("instance of {m}.{n}"),
                    None => "object".into(),
                },
                Some(o) => o.kind().into(),
                None => "dangling reference".into(),
            },
        }
    }
}

/// Shortens `s` to at most `n` characters for messages.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push_str("...");
        t
    }
}

/// Unpickles one pickle starting at `start` in `data`; returns it and the offset just
/// past its `STOP`. Offsets in errors are from the start of `data`.
pub fn unpickle(data: &[u8], start: usize, limits: &Limits) -> Result<(Pickle, usize)> {
    let mut m = Machine {
        data,
        pos: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        out: Pickle::default(),
        limits: *limits,
    };
    loop {
        let at = m.pos;
        let op = m.u8().context("the pickle ends before its STOP opcode")?;
        let done = m
            .step(op)
            .with_context(|| format!("pickle opcode 0x{op:02x} at byte {at}"))?;
        if done {
            break;
        }
    }
    Ok((m.out, m.pos))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    out: Pickle,
    limits: Limits,
}

impl Machine<'_> {
    fn take(&mut self, n: u64) -> Result<&[u8]> {
        let left = (self.data.len() - self.pos) as u64;
        ensure!(
            n <= left,
            "needs {n} bytes but only {left} are left in the file"
        );
        let n = n as usize;
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(self.u32()? as i32)
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn line(&mut self) -> Result<String> {
        const MAX: usize = 1024;
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .take(MAX)
            .position(|&b| b == b'\n')
            .with_context(|| format!("no end of line within {MAX} bytes"))?;
        let s = std::str::from_utf8(&rest[..end])
            .context("a global name is not UTF-8")?
            .to_string();
        self.pos += end + 1;
        Ok(s)
    }

    fn push(&mut self, v: Value) -> Result<()> {
        ensure!(
            self.stack.len() < self.limits.max_stack,
            "more than {} values on the stack",
            self.limits.max_stack
        );
        self.stack.push(v);
        Ok(())
    }
    fn alloc(&mut self, o: Obj) -> Result<Value> {
        ensure!(
            self.out.objs.len() < self.limits.max_objects,
            "more than {} objects",
            self.limits.max_objects
        );
        self.out.objs.push(o);
        Ok(Value::Obj((self.out.objs.len() - 1) as ObjId))
    }
    fn push_obj(&mut self, o: Obj) -> Result<()> {
        let v = self.alloc(o)?;
        self.push(v)
    }
    fn pop(&mut self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        ensure!(self.stack.len() > floor, "pops an empty stack");
        Ok(self.stack.pop().unwrap_or(Value::None))
    }
    fn top(&self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        ensure!(self.stack.len() > floor, "reads the top of an empty stack");
        Ok(self.stack[self.stack.len() - 1])
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self.marks.pop().context("no MARK to pop to")?;
        Ok(self.stack.split_off(mark))
    }
    fn memo_put(&mut self, idx: u32) -> Result<()> {
        let v = self.top()?;
        if !self.memo.contains_key(&idx) {
            ensure!(
                self.memo.len() < self.limits.max_memo,
                "more than {} memo entries",
                self.limits.max_memo
            );
        }
        self.memo.insert(idx, v);
        Ok(())
    }
    fn memo_get(&mut self, idx: u32) -> Result<()> {
        let v = *self
            .memo
            .get(&idx)
            .with_context(|| format!("memo entry {idx} was never stored"))?;
        self.push(v)
    }
    fn string(&mut self, n: u64) -> Result<()> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b)
            .context("a string is not valid UTF-8")?
            .to_string();
        self.push_obj(Obj::Str(s))
    }
    fn py2_string(&mut self, n: u64) -> Result<()> {
        let b = self.take(n)?;
        // Python 2 `str`: bytes; torch 0.x checkpoints hold ASCII names here.
        let s = match std::str::from_utf8(b) {
            Ok(s) => s.to_string(),
            Err(_) => b.iter().map(|&c| c as char).collect(),
        };
        self.push_obj(Obj::Str(s))
    }
    fn bytes(&mut self, n: u64) -> Result<()> {
        let b = self.take(n)?.to_vec();
        self.push_obj(Obj::Bytes(b))
    }
    fn long(&mut self, n: u64) -> Result<()> {
        let b = self.take(n)?;
        let v = if b.len() <= 8 {
            let mut a = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                [0xffu8; 8]
            } else {
                [0u8; 8]
            };
            a[..b.len()].copy_from_slice(b);
            Value::Int(i64::from_le_bytes(a))
        } else {
            let b = b.to_vec();
            self.alloc(Obj::BigInt(b))?
        };
        self.push(v)
    }
    fn global(&mut self, module: String, name: String) -> Result<()> {
        let key = (module, name);
        if !self.out.globals.contains(&key) {
            ensure!(
                self.out.globals.len() < 10_000,
                "names more than 10000 distinct globals"
            );
            self.out.globals.push(key.clone());
        }
        self.push_obj(Obj::Global {
            module: key.0,
            name: key.1,
        })
    }
    fn container_mut(&mut self, v: Value) -> Result<&mut Obj> {
        match v {
            Value::Obj(id) => self
                .out
                .objs
                .get_mut(id as usize)
                .context("dangling object reference"),
            other => bail!("expects a container, found {other:?}"),
        }
    }
    fn is_empty_dict_call(&self, func: Value, args: Value) -> bool {
        let ordered = matches!(
            self.out.global(func),
            Some(("collections", "OrderedDict"))
                | Some(("builtins", "dict"))
                | Some(("__builtin__", "dict"))
        );
        ordered && self.out.seq(args).is_some_and(|a| a.is_empty())
    }

    /// Runs one opcode; true at `STOP`.
    fn step(&mut self, op: u8) -> Result<bool> {
        match op {
            0x80 => {
                let v = self.u8()?;
                ensure!(v <= 5, "pickle protocol {v} is newer than 5");
            }
            0x95 => {
                // FRAME: a length prefix for the opcodes that follow; we hold the whole
                // pickle in memory, so only check that the frame fits.
                let n = self.u64()?;
                let left = (self.data.len() - self.pos) as u64;
                ensure!(n <= left, "a frame of {n} bytes but {left} are left");
            }
            b'.' => {
                let v = self.pop()?;
                self.out.root = Some(v);
                return Ok(true);
            }
            b'(' => {
                ensure!(
                    self.marks.len() < self.limits.max_marks,
                    "nests more than {} marks",
                    self.limits.max_marks
                );
                self.marks.push(self.stack.len());
            }
            b'0' => {
                let floor = self.marks.last().copied();
                if floor == Some(self.stack.len()) {
                    self.marks.pop();
                } else {
                    self.pop()?;
                }
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.top()?;
                self.push(v)?;
            }
            b'N' => self.push(Value::None)?,
            0x88 => self.push(Value::Bool(true))?,
            0x89 => self.push(Value::Bool(false))?,
            b'J' => {
                let v = self.i32()?;
                self.push(Value::Int(v as i64))?
            }
            b'K' => {
                let v = self.u8()?;
                self.push(Value::Int(v as i64))?
            }
            b'M' => {
                let v = self.u16()?;
                self.push(Value::Int(v as i64))?
            }
            0x8a => {
                let n = self.u8()?;
                self.long(n as u64)?
            }
            0x8b => {
                let n = self.i32()?;
                ensure!(n >= 0, "LONG4 with a negative length {n}");
                self.long(n as u64)?
            }
            b'G' => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                self.push(Value::Float(f64::from_be_bytes(a)))?
            }
            b'X' => {
                let n = self.u32()?;
                self.string(n as u64)?
            }
            0x8c => {
                let n = self.u8()?;
                self.string(n as u64)?
            }
            0x8d => {
                let n = self.u64()?;
                self.string(n)?
            }
            b'T' => {
                let n = self.i32()?;
                ensure!(n >= 0, "BINSTRING with a negative length {n}");
                self.py2_string(n as u64)?
            }
            b'U' => {
                let n = self.u8()?;
                self.py2_string(n as u64)?
            }
            b'B' => {
                let n = self.u32()?;
                self.bytes(n as u64)?
            }
            b'C' => {
                let n = self.u8()?;
                self.bytes(n as u64)?
            }
            0x8e => {
                let n = self.u64()?;
                self.bytes(n)?
            }
            b')' => self.push_obj(Obj::Tuple(Vec::new()))?,
            b't' => {
                let items = self.pop_mark()?;
                self.push_obj(Obj::Tuple(items))?
            }
            0x85 => {
                let a = self.pop()?;
                self.push_obj(Obj::Tuple(vec![a]))?
            }
            0x86 => {
                let b = self.pop()?;
                let a = self.pop()?;
                self.push_obj(Obj::Tuple(vec![a, b]))?
            }
            0x87 => {
                let c = self.pop()?;
                let b = self.pop()?;
                let a = self.pop()?;
                self.push_obj(Obj::Tuple(vec![a, b, c]))?
            }
            b']' => self.push_obj(Obj::List(Vec::new()))?,
            b'l' => {
                let items = self.pop_mark()?;
                self.push_obj(Obj::List(items))?
            }
            b'a' => {
                let v = self.pop()?;
                let list = self.top()?;
                match self.container_mut(list)? {
                    Obj::List(items) => items.push(v),
                    o => bail!("APPEND to a {}", o.kind()),
                }
            }
            b'e' => {
                let items = self.pop_mark()?;
                let list = self.top()?;
                match self.container_mut(list)? {
                    Obj::List(l) => l.extend(items),
                    o => bail!("APPENDS to a {}", o.kind()),
                }
            }
            b'}' => self.push_obj(Obj::Dict(Vec::new()))?,
            b'd' => {
                let items = self.pop_mark()?;
                ensure!(items.len() % 2 == 0, "DICT with an odd number of items");
                let pairs = items.chunks_exact(2).map(|p| (p[0], p[1])).collect();
                self.push_obj(Obj::Dict(pairs))?
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                let d = self.top()?;
                match self.container_mut(d)? {
                    Obj::Dict(items) => items.push((k, v)),
                    o => bail!("SETITEM on a {}", o.kind()),
                }
            }
            b'u' => {
                let items = self.pop_mark()?;
                ensure!(items.len() % 2 == 0, "SETITEMS with an odd number of items");
                let d = self.top()?;
                match self.container_mut(d)? {
                    Obj::Dict(dict) => dict.extend(items.chunks_exact(2).map(|p| (p[0], p[1]))),
                    o => bail!("SETITEMS on a {}", o.kind()),
                }
            }
            0x8f => self.push_obj(Obj::Set(Vec::new()))?,
            0x90 => {
                let items = self.pop_mark()?;
                let s = self.top()?;
                match self.container_mut(s)? {
                    Obj::Set(set) => set.extend(items),
                    o => bail!("ADDITEMS to a {}", o.kind()),
                }
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.push_obj(Obj::Set(items))?
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.global(module, name)?
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Some(module), Some(name)) = (self.out.str(module), self.out.str(name)) else {
                    bail!("STACK_GLOBAL needs two strings");
                };
                let (module, name) = (module.to_string(), name.to_string());
                self.global(module, name)?
            }
            b'R' => {
                let args = self.pop()?;
                let func = self.pop()?;
                if self.is_empty_dict_call(func, args) {
                    self.push_obj(Obj::Dict(Vec::new()))?
                } else {
                    self.push_obj(Obj::Call { func, args })?
                }
            }
            0x81 => {
                let args = self.pop()?;
                let cls = self.pop()?;
                if self.is_empty_dict_call(cls, args) {
                    self.push_obj(Obj::Dict(Vec::new()))?
                } else {
                    self.push_obj(Obj::Instance { cls })?
                }
            }
            0x92 => {
                let _kwargs = self.pop()?;
                let _args = self.pop()?;
                let cls = self.pop()?;
                self.push_obj(Obj::Instance { cls })?
            }
            b'b' => {
                // BUILD: `obj.__setstate__(state)`. Nothing we read needs the state
                // (an OrderedDict's `_metadata`), so it is dropped, never applied.
                let _state = self.pop()?;
                self.top()?;
            }
            b'Q' => {
                let pid = self.pop()?;
                self.push_obj(Obj::PersistentId(pid))?
            }
            b'h' => {
                let i = self.u8()?;
                self.memo_get(i as u32)?
            }
            b'j' => {
                let i = self.u32()?;
                self.memo_get(i)?
            }
            b'q' => {
                let i = self.u8()?;
                self.memo_put(i as u32)?
            }
            b'r' => {
                let i = self.u32()?;
                self.memo_put(i)?
            }
            0x94 => {
                let i = u32::try_from(self.memo.len()).context("memo index overflows")?;
                self.memo_put(i)?
            }
            other => bail!(
                "unsupported pickle opcode 0x{other:02x} ({:?}): torch.save never writes it",
                other as char
            ),
        }
        Ok(false)
    }
}
