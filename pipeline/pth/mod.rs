//! PyTorch's legacy (non-zip) `.pth` serialisation of a state dict, read without torch or Python.
//!
//! The file is a sequence of pickles — magic number, protocol version, sys-info dict, the state
//! dict (an `OrderedDict` of name → tensor, each tensor
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)` over a
//! storage given as a persistent id `('storage', torch.FloatStorage, key, location, numel)`), the
//! list of storage keys — then each storage in that list's order: an int64 element count and the
//! raw little-endian elements. A small pickle machine runs exactly the opcodes these files use;
//! anything else is refused with the opcode and its offset.
//!
//! The file may be hostile, so everything the machine builds is paid for by the file's bytes:
//! memo values are shared (`Rc`), not copied, and a shared container is copied only when it is
//! changed; every value made, every slot copied and every value a container holds counted as a
//! tree are charged against [`EXPANSION`] × the file's size, and the work after the pickles
//! (names hashed, tensors gathered) against its own budget. Reading is linear in the file.

mod pickle;

use crate::error::{Error, Result};
use ndarray::{ArrayD, IxDyn};
use pickle::{Budget, Machine, TensorRef, Val, EXPANSION, V};
use std::collections::HashMap;
use std::ops::Deref;
use std::path::Path;
use std::rc::Rc;

/// Magic number of the legacy format (the first pickle).
const MAGIC: i128 = 0x1950a86a20f9469cfc6c;

/// The state dict of a `.pth` file: its float32 tensors in file order, and the names of the
/// entries left out because they hold integers (BatchNorm's `num_batches_tracked`), so that a
/// consumer missing one can say what it found instead.
#[derive(Clone, Debug, Default)]
pub struct StateDict {
    pub tensors: Vec<(String, ArrayD<f32>)>,
    /// (name, storage type such as `LongStorage`).
    pub integers: Vec<(String, String)>,
}

impl From<Vec<(String, ArrayD<f32>)>> for StateDict {
    fn from(tensors: Vec<(String, ArrayD<f32>)>) -> Self {
        StateDict { tensors, integers: vec![] }
    }
}

impl Deref for StateDict {
    type Target = [(String, ArrayD<f32>)];
    fn deref(&self) -> &Self::Target {
        &self.tensors
    }
}

/// The state dict of the `.pth` file at `path` (see [`StateDict`]).
pub fn read_state_dict(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).map_err(|err| Error::Io { path: path.into(), err })?;
    parse_state_dict(&bytes, path)
}

/// [`read_state_dict`] on the file's bytes; `path` names it in errors.
pub fn parse_state_dict(bytes: &[u8], path: &Path) -> Result<StateDict> {
    let bad = |reason: String| Error::BadData {
        path: path.into(),
        reason: format!("not a legacy .pth state dict: {reason}"),
    };
    if bytes.starts_with(b"PK\x03\x04") {
        return Err(Error::BadData {
            path: path.into(),
            reason: "a zip-format .pth (torch.save's default since PyTorch 1.6), which tlearn does not read; re-save \
                     it in the legacy format: `torch.save(torch.load(path), path, _use_new_zipfile_serialization=False)`"
                .into(),
        });
    }
    let mut budget = Budget::new(bytes.len());
    let mut pos = 0;
    let mut next = |what: &str| -> Result<Val> {
        let (v, end) = Machine::new(bytes, pos, &mut budget).run().map_err(|e| bad(format!("{what}: {e}")))?;
        pos = end;
        Ok(v)
    };
    match &*next("magic number")? {
        V::Int(m) if *m == MAGIC => {}
        V::Int(_) | V::Str(_) => return Err(bad("wrong magic number (not written by torch.save)".into())),
        v => return Err(bad(format!("magic number expected, got a {}", v.kind()))),
    }
    next("protocol version")?;
    next("sys info")?;
    let dict = next("state dict")?;
    let V::Dict(dict) = &*dict else { return Err(bad(format!("the state dict is a {}", dict.kind()))) };
    let keys = next("storage keys")?;
    let V::List(keys) = &*keys else { return Err(bad(format!("the storage keys are a {}", keys.kind()))) };
    let entries = entries(&dict.vals, &mut budget).map_err(bad)?;
    let storages = read_storages(bytes, pos, &keys.vals, &entries).map_err(bad)?;
    tensors(&entries, &storages).map_err(bad)
}

/// The state dict's (name, tensor) entries, in file order; names and storage keys hashed later
/// are charged by length (a crafted file could share one huge name among all its entries).
fn entries<'d>(dict: &'d [Val], budget: &mut Budget) -> std::result::Result<Vec<(&'d str, &'d TensorRef)>, String> {
    let mut out = Vec::with_capacity(dict.len() / 2);
    for pair in dict.chunks_exact(2) {
        let (V::Str(name), V::Tensor(t)) = (&*pair[0], &*pair[1]) else { continue };
        if !budget.take(name.len() + t.storage.len() + t.dtype.len()) {
            return Err(format!(
                "the names of the state dict expand beyond {EXPANSION}× the file's size (a corrupt or crafted file)"
            ));
        }
        out.push((&**name, &**t));
    }
    Ok(out)
}

/// Each storage after the pickles, by key: an int64 element count, then the raw elements.
fn read_storages<'b>(
    bytes: &'b [u8],
    mut pos: usize,
    keys: &[Val],
    entries: &[(&str, &TensorRef)],
) -> std::result::Result<HashMap<Rc<str>, &'b [u8]>, String> {
    let dtypes: HashMap<&str, &str> = entries.iter().map(|(_, t)| (&*t.storage, &*t.dtype)).collect();
    let mut storages = HashMap::new();
    for k in keys {
        let V::Str(k) = &**k else { return Err("a storage key that is not text".into()) };
        let n = bytes.get(pos..).and_then(|r| r.get(..8)).ok_or_else(|| format!("the file ends before storage {k}"))?;
        let n = i64::from_le_bytes(n.try_into().expect("8 bytes"));
        let dtype = dtypes.get(&**k).copied().unwrap_or("FloatStorage");
        let size =
            elem_size(dtype).ok_or_else(|| format!("storage {k} holds {dtype}, a type this reader does not know"))?;
        let len = usize::try_from(n).ok().and_then(|n| n.checked_mul(size));
        let data = len
            .and_then(|len| bytes.get(pos + 8..).and_then(|r| r.get(..len)))
            .ok_or_else(|| format!("the file ends inside storage {k} ({n} elements)"))?;
        storages.insert(k.clone(), data);
        pos += 8 + data.len();
    }
    Ok(storages)
}

/// The float32 tensors of the state dict (a later entry of the same name replaces an earlier one,
/// in the earlier one's place, as in Python); integer tensors are listed apart, other float types
/// refused, as are NaN and infinite weights. All of them together may not hold more elements than
/// twice the storages do (views of one storage repeated by a hostile file must not allocate
/// unbounded memory).
fn tensors(
    entries: &[(&str, &TensorRef)],
    storages: &HashMap<Rc<str>, &[u8]>,
) -> std::result::Result<StateDict, String> {
    let mut budget = storages.values().map(|d| d.len() / 4).sum::<usize>().saturating_mul(2).saturating_add(1 << 20);
    let mut sd = StateDict::default();
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
    for &(name, t) in entries {
        match &*t.dtype {
            "FloatStorage" => {}
            "LongStorage" | "IntStorage" | "ShortStorage" | "CharStorage" | "ByteStorage" | "BoolStorage" => {
                sd.integers.push((name.to_string(), t.dtype.to_string()));
                continue;
            }
            other => return Err(format!("{name} is stored as {other}; only float32 state dicts are read")),
        }
        let data = storages.get(&t.storage).ok_or_else(|| format!("{name}: storage {} missing", t.storage))?;
        let a = gather(data, t).ok_or_else(|| format!("{name}: view outside its storage"))?;
        budget = budget.checked_sub(a.len()).ok_or("the tensors hold far more elements than the storages")?;
        if let Some((i, x)) = a.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(format!("{name} holds {x} at element {i}: not usable as weights"));
        }
        match index.get(name) {
            Some(&i) => sd.tensors[i].1 = a,
            None => {
                index.insert(name, sd.tensors.len());
                sd.tensors.push((name.to_string(), a));
            }
        }
    }
    Ok(sd)
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
