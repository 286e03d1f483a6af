//! The pickle machine of the legacy `.pth` reader: the opcodes of protocol 2 that `torch.save`
//! writes for a state dict, over values that the memo shares instead of copying (a container is
//! copied only when it is changed while shared, copy on write), every value made charged to a
//! [`Budget`] from the file's size.

use std::collections::HashMap;
use std::rc::Rc;

/// Values the pickle machine may make per byte of the file (a real state dict makes about one per
/// six bytes of pickle, and its storages are most of the file).
pub(super) const EXPANSION: usize = 4;

/// Containers nest at most this deep (a state dict nests 4 deep).
const MAX_DEPTH: usize = 32;

/// A tensor of the state dict: a strided view of one storage.
#[derive(Clone, Debug)]
pub(super) struct TensorRef {
    pub storage: Rc<str>,
    /// The storage's element type (`FloatStorage`, `LongStorage`, …).
    pub dtype: Rc<str>,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A container's items (a dict's keys and values alternate), how deeply it nests and how many
/// values it holds counted as a tree (a shared value once per place it appears), kept as items
/// come so that neither is ever walked.
#[derive(Clone, Debug)]
pub(super) struct Items {
    pub vals: Vec<Val>,
    depth: usize,
    tree: usize,
}

impl Items {
    fn new(vals: Vec<Val>) -> Self {
        let mut items = Items { vals: Vec::with_capacity(vals.len()), depth: 1, tree: 1 };
        items.extend(vals);
        items
    }

    fn extend(&mut self, vals: Vec<Val>) {
        for v in &vals {
            self.depth = self.depth.max(v.depth() + 1);
            self.tree = self.tree.saturating_add(v.tree());
        }
        self.vals.extend(vals);
    }
}

#[derive(Clone, Debug)]
pub(super) enum V {
    None,
    Bool,
    Int(i128),
    Str(Rc<str>),
    Tuple(Items),
    List(Items),
    Dict(Items),
    Global(Rc<str>),
    /// A storage named by a persistent id: its key and element type.
    Storage(Rc<str>, Rc<str>),
    Tensor(Box<TensorRef>),
}

pub(super) type Val = Rc<V>;

impl V {
    fn depth(&self) -> usize {
        match self {
            V::Tuple(i) | V::List(i) | V::Dict(i) => i.depth,
            _ => 0,
        }
    }

    fn tree(&self) -> usize {
        match self {
            V::Tuple(i) | V::List(i) | V::Dict(i) => i.tree,
            _ => 1,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            V::None => "None",
            V::Bool => "bool",
            V::Int(_) => "int",
            V::Str(_) => "str",
            V::Tuple(_) => "tuple",
            V::List(_) => "list",
            V::Dict(_) => "dict",
            V::Global(_) => "global",
            V::Storage(..) => "storage",
            V::Tensor(_) => "tensor",
        }
    }
}

/// What a hostile file may make the reader do, from the file's size: values made, slots copied,
/// bytes of names hashed. One budget for all the pickles of a file and the work after them.
pub(super) struct Budget {
    /// The most values one value may hold counted as a tree.
    limit: usize,
    left: usize,
}

impl Budget {
    pub fn new(file: usize) -> Self {
        let limit = file.saturating_mul(EXPANSION).saturating_add(4096);
        Budget { limit, left: limit }
    }

    /// Take `n` from the budget; false when it is spent.
    pub fn take(&mut self, n: usize) -> bool {
        self.left.checked_sub(n).map(|l| self.left = l).is_some()
    }
}

fn expands(at: usize) -> String {
    format!("the pickle expands beyond {EXPANSION}× the file's size at byte {at} (a corrupt or crafted file)")
}

fn too_deep(at: usize) -> String {
    format!("containers nested deeper than {MAX_DEPTH} at byte {at}")
}

type Step = std::result::Result<bool, String>;

/// A pickle machine for the opcodes of legacy `.pth` files (protocol 2).
pub(super) struct Machine<'a, 'b> {
    b: &'a [u8],
    pos: usize,
    stack: Vec<Val>,
    marks: Vec<usize>,
    memo: HashMap<u32, Val>,
    budget: &'b mut Budget,
}

impl<'a, 'b> Machine<'a, 'b> {
    pub fn new(b: &'a [u8], pos: usize, budget: &'b mut Budget) -> Self {
        Machine { b, pos, stack: vec![], marks: vec![], memo: HashMap::new(), budget }
    }

    /// Run to STOP; returns the value and the offset after the pickle.
    pub fn run(mut self) -> std::result::Result<(Val, usize), String> {
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

    fn charge(&mut self, n: usize, at: usize) -> std::result::Result<(), String> {
        if self.budget.take(n) {
            Ok(())
        } else {
            Err(expands(at))
        }
    }

    /// Push a value the machine made: charged, and a container checked for depth and size.
    fn push(&mut self, v: V, at: usize) -> std::result::Result<(), String> {
        self.charge(1, at)?;
        self.check(&v, at)?;
        self.stack.push(Rc::new(v));
        Ok(())
    }

    fn check(&self, v: &V, at: usize) -> std::result::Result<(), String> {
        if v.depth() > MAX_DEPTH {
            return Err(too_deep(at));
        }
        if v.tree() > self.budget.limit {
            return Err(expands(at));
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let s = self.b.get(self.pos..).and_then(|r| r.get(..n));
        let s = s.ok_or_else(|| format!("the data ends at byte {}", self.pos))?;
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn pop(&mut self) -> std::result::Result<Val, String> {
        self.stack.pop().ok_or_else(|| format!("stack empty at byte {}", self.pos))
    }

    fn pop_mark(&mut self) -> std::result::Result<Vec<Val>, String> {
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

    /// Framing, memo and scalar opcodes; false when `op` is none of them.
    fn scalar(&mut self, op: u8, at: usize) -> Step {
        match op {
            0x80 => {
                self.take(1)?;
            }
            b'c' => {
                let (module, name) = (self.line()?, self.line()?);
                self.push(V::Global(format!("{module}.{name}").into()), at)?;
            }
            b'q' => {
                let k = self.take(1)?[0] as u32;
                self.put(k, at)?;
            }
            b'r' => {
                let k = self.u32()?;
                self.put(k, at)?;
            }
            b'h' => {
                let k = self.take(1)?[0] as u32;
                self.get(k, at)?;
            }
            b'j' => {
                let k = self.u32()?;
                self.get(k, at)?;
            }
            b'(' => {
                self.charge(1, at)?;
                self.marks.push(self.stack.len());
            }
            b'X' => {
                let n = self.u32()? as usize;
                let s = std::str::from_utf8(self.take(n)?).map_err(|_| format!("bad UTF-8 at byte {at}"))?;
                self.push(V::Str(s.into()), at)?;
            }
            b'J' => {
                let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
                self.push(V::Int(v as i128), at)?;
            }
            b'K' => {
                let v = self.take(1)?[0];
                self.push(V::Int(v as i128), at)?;
            }
            b'M' => {
                let v = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes"));
                self.push(V::Int(v as i128), at)?;
            }
            0x8a => {
                let n = self.take(1)?[0] as usize;
                let v = long(self.take(n)?).ok_or_else(|| format!("integer of {n} bytes at byte {at}"))?;
                self.push(V::Int(v), at)?;
            }
            b'N' => self.push(V::None, at)?,
            0x88 | 0x89 => self.push(V::Bool, at)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Tuples, dicts, lists, persistent ids and calls; false when `op` is none of them.
    fn compound(&mut self, op: u8, at: usize) -> Step {
        match op {
            b')' => self.push(V::Tuple(Items::new(vec![])), at)?,
            b'}' => self.push(V::Dict(Items::new(vec![])), at)?,
            b']' => self.push(V::List(Items::new(vec![])), at)?,
            b't' => {
                let items = self.pop_mark()?;
                self.push(V::Tuple(Items::new(items)), at)?;
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    return Err(format!("tuple of {n} on a shorter stack at byte {at}"));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push(V::Tuple(Items::new(items)), at)?;
            }
            b's' => {
                let (v, k) = (self.pop()?, self.pop()?);
                self.extend_top(vec![k, v], true, at)?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                if items.len() % 2 == 1 {
                    return Err(format!("SETITEMS with a key and no value at byte {at}"));
                }
                self.extend_top(items, true, at)?;
            }
            b'a' => {
                let v = self.pop()?;
                self.extend_top(vec![v], false, at)?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.extend_top(items, false, at)?;
            }
            b'Q' => {
                let pid = self.pop()?;
                self.push(persistent(&pid).map_err(|e| format!("{e} at byte {at}"))?, at)?;
            }
            b'R' => {
                let (args, f) = (self.pop()?, self.pop()?);
                self.push(reduce(&f, &args).map_err(|e| format!("{e} at byte {at}"))?, at)?;
            }
            b'b' => {
                // BUILD sets an object's state (the OrderedDict's `_metadata`): not needed.
                self.pop()?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The memo shares the value, as Python's does: nothing is copied.
    fn put(&mut self, k: u32, at: usize) -> std::result::Result<(), String> {
        self.charge(1, at)?;
        let v = self.stack.last().cloned().ok_or_else(|| format!("PUT on an empty stack at byte {at}"))?;
        self.memo.insert(k, v);
        Ok(())
    }

    fn get(&mut self, k: u32, at: usize) -> std::result::Result<(), String> {
        self.charge(1, at)?;
        let v = self.memo.get(&k).ok_or_else(|| format!("memo {k} unset at byte {at}"))?.clone();
        self.stack.push(v);
        Ok(())
    }

    /// SETITEM(S) (`dict`) or APPEND(S) on the container at the top of the stack. One that is
    /// shared (memo, another container) is copied first, its slots charged: what the others hold
    /// does not change, and a file that grows a shared container over and over pays for it.
    fn extend_top(&mut self, items: Vec<Val>, dict: bool, at: usize) -> std::result::Result<(), String> {
        let what = if dict { "SETITEM(S) on a non-dict" } else { "APPEND(S) on a non-list" };
        let top = self.stack.last().ok_or_else(|| format!("{what} at byte {at}"))?;
        let len = match (&**top, dict) {
            (V::Dict(i), true) | (V::List(i), false) => i.vals.len(),
            _ => return Err(format!("{what} at byte {at}")),
        };
        if Rc::strong_count(top) > 1 {
            self.charge(len, at)?;
        }
        let top = self.stack.last_mut().expect("checked above");
        if let V::Dict(i) | V::List(i) = Rc::make_mut(top) {
            i.extend(items);
        }
        let top = self.stack.last().expect("checked above").clone();
        self.check(&top, at)
    }
}

/// A LONG1 integer: little-endian two's complement of up to 16 bytes.
fn long(b: &[u8]) -> Option<i128> {
    let n = b.len();
    if n > 16 {
        return None;
    }
    let mut v: i128 = 0;
    for (i, &x) in b.iter().enumerate() {
        v |= (x as i128) << (8 * i);
    }
    if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
        v -= 1i128 << (8 * n);
    }
    Some(v)
}

/// A persistent id: `('storage', torch.<Type>Storage, key, location, numel)`.
fn persistent(pid: &V) -> std::result::Result<V, String> {
    let V::Tuple(t) = pid else { return Err("a persistent id that is not a tuple".into()) };
    // Only the first items are looked at: a shared tuple may be long, and be given many times.
    match t.vals.iter().take(3).map(|v| &**v).collect::<Vec<_>>().as_slice() {
        [V::Str(tag), V::Global(ty), V::Str(key), ..] if &**tag == "storage" => {
            let dtype = ty.rsplit('.').next().unwrap_or_default();
            Ok(V::Storage(key.clone(), dtype.into()))
        }
        _ => Err("a persistent id that is not a storage".into()),
    }
}

/// The calls a state dict makes: `OrderedDict()` and `_rebuild_tensor_v2(…)`.
fn reduce(f: &V, args: &V) -> std::result::Result<V, String> {
    let (V::Global(f), V::Tuple(a)) = (f, args) else { return Err("REDUCE of a non-global".into()) };
    let a: Vec<&V> = a.vals.iter().take(4).map(|v| &**v).collect();
    match (&**f, a.as_slice()) {
        ("collections.OrderedDict", []) => Ok(V::Dict(Items::new(vec![]))),
        (
            "torch._utils._rebuild_tensor_v2",
            [V::Storage(key, dtype), V::Int(offset), V::Tuple(size), V::Tuple(stride), ..],
        ) => {
            let dims = |t: &Items| -> Option<Vec<usize>> {
                t.vals.iter().map(|v| if let V::Int(i) = **v { usize::try_from(i).ok() } else { None }).collect()
            };
            if let Some(rank) = [size, stride].iter().map(|t| t.vals.len()).find(|&r| r > 16) {
                return Err(format!("a tensor of rank {rank}"));
            }
            Ok(V::Tensor(Box::new(TensorRef {
                storage: key.clone(),
                dtype: dtype.clone(),
                offset: usize::try_from(*offset).map_err(|_| "negative offset")?,
                size: dims(size).ok_or("a tensor size that is not integers")?,
                stride: dims(stride).ok_or("a tensor stride that is not integers")?,
            })))
        }
        (f, _) => Err(format!("call of `{f}`, which a state dict does not make")),
    }
}
