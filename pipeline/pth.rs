//! PyTorch's legacy (non-zip) `.pth` serialisation of a state dict, read without torch or Python.
//!
//! The file is a sequence of pickles — magic number, protocol version, sys-info dict, the state
//! dict (an `OrderedDict` of name → tensor, each tensor
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)` over a
//! storage given as a persistent id `('storage', torch.FloatStorage, key, location, numel)`), the
//! list of storage keys — then each storage in that list's order: an int64 element count and the
//! raw little-endian elements. A small pickle machine runs exactly the opcodes these files use;
//! anything else is refused with the opcode and its offset.

use crate::error::{Error, Result};
use ndarray::{ArrayD, IxDyn};
use std::collections::HashMap;
use std::path::Path;

/// Magic number of the legacy format (the first pickle).
const MAGIC: i128 = 0x1950a86a20f9469cfc6c;

/// A tensor of the state dict: a strided view of one storage.
#[derive(Clone, Debug)]
struct TensorRef {
    storage: String,
    /// The storage's element type (`FloatStorage`, `LongStorage`, …).
    dtype: String,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// A storage named by a persistent id: its key and element type.
#[derive(Clone, Debug)]
struct StorageRef {
    key: String,
    dtype: String,
}

#[derive(Clone, Debug)]
enum V {
    None,
    Bool,
    Int(i128),
    Str(String),
    Tuple(Vec<V>),
    List(Vec<V>),
    Dict(Vec<(V, V)>),
    Global(String),
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// The float32 tensors of the state dict in the `.pth` file at `path`, in file order (integer
/// entries such as BatchNorm's `num_batches_tracked` are left out).
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, ArrayD<f32>)>> {
    let bytes = std::fs::read(path).map_err(|err| Error::Io { path: path.into(), err })?;
    parse_state_dict(&bytes, path)
}

/// [`read_state_dict`] on the file's bytes; `path` names it in errors.
pub fn parse_state_dict(bytes: &[u8], path: &Path) -> Result<Vec<(String, ArrayD<f32>)>> {
    let bad = |reason: String| Error::BadModel {
        path: path.into(),
        reason: format!("not a legacy .pth state dict: {reason}"),
    };
    let mut pos = 0;
    let mut next = |what: &str| -> Result<V> {
        Machine::new(bytes, pos)
            .run()
            .map(|(v, end)| {
                pos = end;
                v
            })
            .map_err(|e| bad(format!("{what}: {e}")))
    };
    match next("magic number")? {
        V::Int(m) if m == MAGIC => {}
        V::Int(_) | V::Str(_) => return Err(bad("wrong magic number (a zip-format .pth needs another reader)".into())),
        v => return Err(bad(format!("magic number expected, got a {}", kind(&v)))),
    }
    next("protocol version")?;
    next("sys info")?;
    let dict = match next("state dict")? {
        V::Dict(d) => d,
        v => return Err(bad(format!("the state dict is a {}", kind(&v)))),
    };
    let keys = match next("storage keys")? {
        V::List(k) => k,
        v => return Err(bad(format!("the storage keys are a {}", kind(&v)))),
    };
    let storages = read_storages(bytes, pos, keys, &dict).map_err(bad)?;
    tensors(&dict, &storages).map_err(bad)
}

/// Each storage after the pickles, by key: an int64 element count, then the raw elements.
fn read_storages<'b>(
    bytes: &'b [u8],
    mut pos: usize,
    keys: Vec<V>,
    dict: &[(V, V)],
) -> std::result::Result<HashMap<String, &'b [u8]>, String> {
    let dtypes: HashMap<&str, &str> = dict
        .iter()
        .filter_map(|(_, v)| if let V::Tensor(t) = v { Some((t.storage.as_str(), t.dtype.as_str())) } else { None })
        .collect();
    let mut storages = HashMap::new();
    for k in keys {
        let V::Str(k) = k else { return Err("a storage key that is not text".into()) };
        let n = bytes.get(pos..).and_then(|r| r.get(..8)).ok_or_else(|| format!("the file ends before storage {k}"))?;
        let n = i64::from_le_bytes(n.try_into().expect("8 bytes"));
        let dtype = dtypes.get(k.as_str()).copied().unwrap_or("FloatStorage");
        let size =
            elem_size(dtype).ok_or_else(|| format!("storage {k} holds {dtype}, a type this reader does not know"))?;
        let len = usize::try_from(n).ok().and_then(|n| n.checked_mul(size));
        let data = len
            .and_then(|len| bytes.get(pos + 8..).and_then(|r| r.get(..len)))
            .ok_or_else(|| format!("the file ends inside storage {k} ({n} elements)"))?;
        storages.insert(k, data);
        pos += 8 + data.len();
    }
    Ok(storages)
}

/// The float32 tensors of the state dict (a later entry of the same name replaces an earlier one,
/// as in Python); integer tensors are left out, other float types refused. All of them together
/// may not hold more elements than twice the storages do (views of one storage repeated by a
/// hostile file must not allocate unbounded memory).
fn tensors(
    dict: &[(V, V)],
    storages: &HashMap<String, &[u8]>,
) -> std::result::Result<Vec<(String, ArrayD<f32>)>, String> {
    let mut budget = storages.values().map(|d| d.len() / 4).sum::<usize>().saturating_mul(2).saturating_add(1 << 20);
    let mut out: Vec<(String, ArrayD<f32>)> = vec![];
    for (name, v) in dict {
        let (V::Str(name), V::Tensor(t)) = (name, v) else { continue };
        match t.dtype.as_str() {
            "FloatStorage" => {}
            "LongStorage" | "IntStorage" | "ShortStorage" | "CharStorage" | "ByteStorage" | "BoolStorage" => continue,
            other => return Err(format!("{name} is stored as {other}; only float32 state dicts are read")),
        }
        let data = storages.get(&t.storage).ok_or_else(|| format!("{name}: storage {} missing", t.storage))?;
        let a = gather(data, t).ok_or_else(|| format!("{name}: view outside its storage"))?;
        budget = budget.checked_sub(a.len()).ok_or("the tensors hold far more elements than the storages")?;
        match out.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = a,
            None => out.push((name.clone(), a)),
        }
    }
    Ok(out)
}

fn kind(v: &V) -> &'static str {
    match v {
        V::None => "None",
        V::Bool => "bool",
        V::Int(_) => "int",
        V::Str(_) => "str",
        V::Tuple(_) => "tuple",
        V::List(_) => "list",
        V::Dict(_) => "dict",
        V::Global(_) => "global",
        V::Storage(_) => "storage",
        V::Tensor(_) => "tensor",
    }
}

fn elem_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "DoubleStorage" | "LongStorage" => 8,
        "FloatStorage" | "IntStorage" => 4,
        "HalfStorage" | "ShortStorage" | "BFloat16Storage" => 2,
        "ByteStorage" | "CharStorage" | "BoolStorage" => 1,
        _ => return None,
    })
}

/// The elements of the strided view `t` of the little-endian float32 `data`.
/// `None` when the view reaches outside the storage or holds more elements than the storage
/// (a state dict's tensors never do; a hostile file's sizes must not allocate unbounded memory).
fn gather(data: &[u8], t: &TensorRef) -> Option<ArrayD<f32>> {
    let elements = data.len() / 4;
    let n = t.size.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    if t.stride.len() != t.size.len() || n > elements {
        return None;
    }
    if n > 0 {
        let last =
            t.size.iter().zip(&t.stride).try_fold(t.offset, |a, (&d, &s)| a.checked_add((d - 1).checked_mul(s)?))?;
        if last >= elements {
            return None;
        }
    }
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; t.size.len()];
    for _ in 0..n {
        let at = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        let b = data.get(at * 4..at * 4 + 4)?;
        out.push(f32::from_le_bytes(b.try_into().expect("4 bytes")));
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    ArrayD::from_shape_vec(IxDyn(&t.size), out).ok()
}

/// A pickle machine for the opcodes of legacy `.pth` files (protocol 2).
struct Machine<'a> {
    b: &'a [u8],
    pos: usize,
    stack: Vec<V>,
    marks: Vec<usize>,
    memo: HashMap<u32, V>,
    /// Values a GET may still copy: the memo shares objects in Python, here it copies them, so a
    /// hostile file could double its values with every few bytes.
    budget: usize,
}

/// Containers nest at most this deep (a state dict nests 4 deep).
const MAX_DEPTH: usize = 32;

/// How many values `v` holds (counting stops once past `limit`).
fn weight(v: &V, limit: usize) -> usize {
    let mut n = 1;
    let mut add = |c: &V| {
        if n <= limit {
            n += weight(c, limit);
        }
    };
    match v {
        V::Tuple(t) | V::List(t) => t.iter().for_each(&mut add),
        V::Dict(d) => d.iter().for_each(|(k, v)| {
            add(k);
            add(v)
        }),
        _ => {}
    }
    n
}

/// How deeply containers nest in `v` (stops counting past [`MAX_DEPTH`]).
fn depth(v: &V) -> usize {
    let d = match v {
        V::Tuple(t) | V::List(t) => t.iter().map(depth).max().unwrap_or(0),
        V::Dict(d) => d.iter().map(|(k, v)| depth(k).max(depth(v))).max().unwrap_or(0),
        _ => return 0,
    };
    (d + 1).min(MAX_DEPTH + 1)
}

impl<'a> Machine<'a> {
    fn new(b: &'a [u8], pos: usize) -> Self {
        Machine { b, pos, stack: vec![], marks: vec![], memo: HashMap::new(), budget: 8 * b.len() + 4096 }
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let s = self.b.get(self.pos..self.pos + n).ok_or_else(|| format!("the data ends at byte {}", self.pos))?;
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn pop(&mut self) -> std::result::Result<V, String> {
        self.stack.pop().ok_or_else(|| format!("stack empty at byte {}", self.pos))
    }

    fn pop_mark(&mut self) -> std::result::Result<Vec<V>, String> {
        let m = self.marks.pop().ok_or_else(|| format!("no mark at byte {}", self.pos))?;
        if m > self.stack.len() {
            return Err(format!("mark beyond the stack at byte {}", self.pos));
        }
        Ok(self.stack.split_off(m))
    }

    fn line(&mut self) -> std::result::Result<String, String> {
        let end = self.b[self.pos..].iter().position(|&c| c == b'\n').ok_or("unterminated GLOBAL")?;
        let s = String::from_utf8_lossy(&self.b[self.pos..self.pos + end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }

    /// Run to STOP; returns the value and the offset after the pickle.
    fn run(mut self) -> std::result::Result<(V, usize), String> {
        loop {
            let at = self.pos;
            let op = *self.b.get(at).ok_or_else(|| format!("the data ends at byte {at} (no STOP)"))?;
            self.pos += 1;
            if op == b'.' {
                return Ok((self.pop()?, self.pos));
            }
            if !self.scalar(op, at)? && !self.compound(op, at)? {
                return Err(format!("unsupported pickle opcode 0x{op:02x} at byte {at}"));
            }
        }
    }

    /// Framing, memo and scalar opcodes; false when `op` is none of them.
    fn scalar(&mut self, op: u8, at: usize) -> std::result::Result<bool, String> {
        match op {
            0x80 => {
                self.take(1)?;
            }
            b'c' => {
                let (module, name) = (self.line()?, self.line()?);
                self.stack.push(V::Global(format!("{module}.{name}")));
            }
            b'q' => {
                let k = self.take(1)?[0] as u32;
                self.put(k)?;
            }
            b'r' => {
                let k = self.u32()?;
                self.put(k)?;
            }
            b'h' => {
                let k = self.take(1)?[0] as u32;
                self.get(k)?;
            }
            b'j' => {
                let k = self.u32()?;
                self.get(k)?;
            }
            b'(' => self.marks.push(self.stack.len()),
            b')' => self.stack.push(V::Tuple(vec![])),
            b't' => {
                let items = self.pop_mark()?;
                self.push_nested(V::Tuple(items), at)?;
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    return Err(format!("tuple of {n} on a shorter stack at byte {at}"));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push_nested(V::Tuple(items), at)?;
            }
            b'X' => {
                let n = self.u32()? as usize;
                let s = String::from_utf8(self.take(n)?.to_vec()).map_err(|_| format!("bad UTF-8 at byte {at}"))?;
                self.stack.push(V::Str(s));
            }
            b'J' => {
                let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
                self.stack.push(V::Int(v as i128));
            }
            b'K' => {
                let v = self.take(1)?[0];
                self.stack.push(V::Int(v as i128));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes"));
                self.stack.push(V::Int(v as i128));
            }
            0x8a => {
                let n = self.take(1)?[0] as usize;
                let b = self.take(n)?;
                if n > 16 {
                    return Err(format!("integer of {n} bytes at byte {at}"));
                }
                let mut v: i128 = 0;
                for (i, &x) in b.iter().enumerate() {
                    v |= (x as i128) << (8 * i);
                }
                if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
                    v -= 1i128 << (8 * n);
                }
                self.stack.push(V::Int(v));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Tuples, dicts, lists, persistent ids and calls; false when `op` is none of them.
    fn compound(&mut self, op: u8, at: usize) -> std::result::Result<bool, String> {
        match op {
            b'N' => self.stack.push(V::None),
            0x88 | 0x89 => self.stack.push(V::Bool),
            b'}' => self.stack.push(V::Dict(vec![])),
            b']' => self.stack.push(V::List(vec![])),
            b's' => {
                let (v, k) = (self.pop()?, self.pop()?);
                self.dict_insert(vec![(k, v)], at)?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let pairs = items.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].clone(), c[1].clone())).collect();
                self.dict_insert(pairs, at)?;
            }
            b'a' => {
                let v = self.pop()?;
                self.list_extend(vec![v], at)?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.list_extend(items, at)?;
            }
            b'Q' => {
                let pid = self.pop()?;
                self.stack.push(persistent(pid).map_err(|e| format!("{e} at byte {at}"))?);
            }
            b'R' => {
                let (args, f) = (self.pop()?, self.pop()?);
                self.stack.push(reduce(f, args).map_err(|e| format!("{e} at byte {at}"))?);
            }
            b'b' => {
                // BUILD sets an object's state (the OrderedDict's `_metadata`): not needed.
                self.pop()?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn put(&mut self, k: u32) -> std::result::Result<(), String> {
        let v = self.stack.last().cloned().ok_or("PUT on an empty stack")?;
        self.memo.insert(k, v);
        Ok(())
    }

    fn get(&mut self, k: u32) -> std::result::Result<(), String> {
        let v = self.memo.get(&k).ok_or_else(|| format!("memo {k} unset at byte {}", self.pos))?;
        let w = weight(v, self.budget);
        self.budget = self
            .budget
            .checked_sub(w)
            .ok_or_else(|| format!("values copied past any state dict's size at byte {}", self.pos))?;
        let v = v.clone();
        self.stack.push(v);
        Ok(())
    }

    /// Push a container, refusing nesting deeper than [`MAX_DEPTH`].
    fn push_nested(&mut self, v: V, at: usize) -> std::result::Result<(), String> {
        if depth(&v) > MAX_DEPTH {
            return Err(too_deep(at));
        }
        self.stack.push(v);
        Ok(())
    }

    fn dict_insert(&mut self, pairs: Vec<(V, V)>, at: usize) -> std::result::Result<(), String> {
        if pairs.iter().any(|(k, v)| depth(k).max(depth(v)) >= MAX_DEPTH) {
            return Err(too_deep(at));
        }
        match self.stack.last_mut() {
            Some(V::Dict(d)) => {
                d.extend(pairs);
                Ok(())
            }
            _ => Err(format!("SETITEM(S) on a non-dict at byte {at}")),
        }
    }

    fn list_extend(&mut self, items: Vec<V>, at: usize) -> std::result::Result<(), String> {
        if items.iter().any(|v| depth(v) >= MAX_DEPTH) {
            return Err(too_deep(at));
        }
        match self.stack.last_mut() {
            Some(V::List(l)) => {
                l.extend(items);
                Ok(())
            }
            _ => Err(format!("APPEND(S) on a non-list at byte {at}")),
        }
    }
}

/// A persistent id: `('storage', torch.<Type>Storage, key, location, numel)`.
fn persistent(pid: V) -> std::result::Result<V, String> {
    match pid {
        V::Tuple(t) => match t.as_slice() {
            [V::Str(tag), V::Global(ty), V::Str(key), ..] if tag == "storage" => {
                let dtype = ty.rsplit('.').next().unwrap_or_default().to_string();
                Ok(V::Storage(StorageRef { key: key.clone(), dtype }))
            }
            _ => Err("a persistent id that is not a storage".into()),
        },
        _ => Err("a persistent id that is not a tuple".into()),
    }
}

/// The calls a state dict makes: `OrderedDict()` and `_rebuild_tensor_v2(…)`.
fn reduce(f: V, args: V) -> std::result::Result<V, String> {
    let (V::Global(f), V::Tuple(a)) = (f, args) else { return Err("REDUCE of a non-global".into()) };
    match (f.as_str(), a.as_slice()) {
        ("collections.OrderedDict", []) => Ok(V::Dict(vec![])),
        ("torch._utils._rebuild_tensor_v2", [V::Storage(s), V::Int(offset), V::Tuple(size), V::Tuple(stride), ..]) => {
            let dims = |t: &[V]| -> Option<Vec<usize>> {
                t.iter().map(|v| if let V::Int(i) = v { usize::try_from(*i).ok() } else { None }).collect()
            };
            if size.len() > 16 {
                return Err(format!("a tensor of rank {}", size.len()));
            }
            Ok(V::Tensor(TensorRef {
                storage: s.key.clone(),
                dtype: s.dtype.clone(),
                offset: usize::try_from(*offset).map_err(|_| "negative offset")?,
                size: dims(size).ok_or("a tensor size that is not integers")?,
                stride: dims(stride).ok_or("a tensor stride that is not integers")?,
            }))
        }
        (f, _) => Err(format!("call of `{f}`, which a state dict does not make")),
    }
}

fn too_deep(at: usize) -> String {
    format!("containers nested deeper than {MAX_DEPTH} at byte {at}")
}
