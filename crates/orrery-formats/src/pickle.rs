//! A restricted unpickler: it turns a pickle stream into a tree of plain values and never
//! imports, looks up or calls anything.
//!
//! Python's `pickle` executes code by design: `GLOBAL` imports an arbitrary callable and
//! `REDUCE` calls it (the classic `posix.system` exploit). Here `GLOBAL`/`STACK_GLOBAL` only
//! produce a [`Node::Global`] naming `module.name`, and `REDUCE`/`NEWOBJ`/`INST`/`OBJ` only
//! produce a [`Node::Call`] recording the callable and its arguments. Interpreting the few
//! callables that `torch.save` uses (tensor rebuild functions, `OrderedDict`, storage types) is
//! the job of the caller (`torch.rs`), which looks at the recorded tree structurally.
//!
//! Values live in an arena (`Vec<Node>`) and refer to each other by index, because pickles
//! share and mutate objects through the memo (a dict is memoized, then filled by `SETITEMS`),
//! and may even contain cycles. Every opcode adds at most one node and one stack slot, and every
//! length is checked against the remaining input before anything is allocated, so memory use is
//! linear in the input size. Protocols 0–5 are handled except out-of-band buffers and the
//! extension registry, which torch never uses.

use std::collections::HashMap;

use crate::reader::Reader;

/// Index of a node in [`Pickle::nodes`].
pub type Id = usize;

/// The most values the stack may hold at once; deeper means a hostile or broken pickle.
pub const MAX_STACK: usize = 1 << 24;
/// The most nested `MARK`s open at once.
pub const MAX_MARKS: usize = 1 << 16;

/// A recorded (never performed) call: `REDUCE`, `NEWOBJ`, `NEWOBJ_EX`, `INST` or `OBJ`, plus
/// whatever `BUILD`, `SETITEM(S)` and `APPEND(S)` later did to the resulting object.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub func: Id,
    /// Normally a [`Node::Tuple`].
    pub args: Id,
    pub kwargs: Option<Id>,
    /// Argument of a later `BUILD` (`__setstate__`), if any.
    pub state: Option<Id>,
    /// Key/value pairs added by `SETITEM(S)` (dict subclasses such as `OrderedDict`).
    pub items: Vec<(Id, Id)>,
    /// Values added by `APPEND(S)` (list subclasses).
    pub appended: Vec<Id>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in i64, kept as text for messages.
    BigInt(String),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    /// Insertion-ordered; a repeated key means the later value wins, as in Python.
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    /// A reference to a Python global (`module.name`); it is never imported.
    Global {
        module: String,
        name: String,
    },
    Call(Box<Call>),
    /// The argument of `PERSID`/`BINPERSID` (torch: the storage descriptor tuple).
    PersistentId(Id),
}

/// A decoded pickle: the node arena and the root value.
#[derive(Clone, Debug, Default)]
pub struct Pickle {
    pub nodes: Vec<Node>,
    pub root: Id,
}

impl Pickle {
    pub fn get(&self, id: Id) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// `module.name` if `id` is a global.
    pub fn global_name(&self, id: Id) -> Option<String> {
        match self.get(id)? {
            Node::Global { module, name } => Some(format!("{module}.{name}")),
            _ => None,
        }
    }

    /// Items of a tuple or list.
    pub fn seq(&self, id: Id) -> Option<&[Id]> {
        match self.get(id)? {
            Node::Tuple(v) | Node::List(v) => Some(v),
            _ => None,
        }
    }

    pub fn int(&self, id: Id) -> Option<i64> {
        match self.get(id)? {
            Node::Int(i) => Some(*i),
            Node::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub fn str(&self, id: Id) -> Option<&str> {
        match self.get(id)? {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Why a pickle could not be decoded (the caller adds the file and entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickleError {
    /// Byte offset of the offending opcode.
    pub offset: usize,
    pub detail: String,
}

struct Machine<'a> {
    r: Reader<'a>,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    op_pos: usize,
    /// Shared nodes for None, False, True and 0..=255: scalars are immutable, so a list of a
    /// million `BININT1`s costs one stack slot each rather than one node each.
    scalars: [Option<Id>; 259],
}

/// Decodes `data` (a complete pickle ending in `STOP`).
pub fn unpickle(data: &[u8]) -> Result<Pickle, PickleError> {
    let mut m = Machine {
        r: Reader::new(data),
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        op_pos: 0,
        scalars: [None; 259],
    };
    m.run()
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Little-endian two's-complement integer of any length (LONG1/LONG4).
fn decode_long(b: &[u8]) -> Node {
    if b.is_empty() {
        return Node::Int(0);
    }
    if b.len() <= 8 {
        let neg = b[b.len() - 1] & 0x80 != 0;
        let mut buf = if neg { [0xFFu8; 8] } else { [0u8; 8] };
        buf[..b.len()].copy_from_slice(b);
        return Node::Int(i64::from_le_bytes(buf));
    }
    // Too wide for i64 unless the extra bytes are pure sign extension.
    let (low, high) = b.split_at(8);
    let v = i64::from_le_bytes([low[0], low[1], low[2], low[3], low[4], low[5], low[6], low[7]]);
    let ext = if v < 0 { 0xFF } else { 0 };
    if high.iter().all(|&x| x == ext) {
        return Node::Int(v);
    }
    let hex: String = b.iter().rev().take(16).map(|x| format!("{x:02x}")).collect();
    Node::BigInt(format!("0x{hex}… ({} bytes)", b.len()))
}

/// Decodes Python's raw-unicode-escape (`UNICODE` opcode): `\uXXXX`, `\UXXXXXXXX`, else latin-1.
fn raw_unicode_escape(b: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() && (b[i + 1] == b'u' || b[i + 1] == b'U') {
            let n = if b[i + 1] == b'u' { 4 } else { 8 };
            if let Some(hex) = b.get(i + 2..i + 2 + n) {
                if let Some(c) =
                    std::str::from_utf8(hex).ok().and_then(|h| u32::from_str_radix(h, 16).ok()).and_then(char::from_u32)
                {
                    out.push(c);
                    i += 2 + n;
                    continue;
                }
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

impl Machine<'_> {
    fn err<T>(&self, detail: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError { offset: self.op_pos, detail: detail.into() })
    }

    fn truncated<T>(&self) -> Result<T, PickleError> {
        self.err("pickle data ends in the middle of an opcode (truncated file?)")
    }

    fn add(&mut self, n: Node) -> Id {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn push(&mut self, id: Id) -> Result<(), PickleError> {
        if self.stack.len() >= MAX_STACK {
            return self.err(format!("stack exceeds {MAX_STACK} values"));
        }
        self.stack.push(id);
        Ok(())
    }

    /// Pushes a shared scalar node (slot 0: None, 1: False, 2: True, 3 + v: small int v).
    fn push_scalar(&mut self, slot: usize) -> Result<(), PickleError> {
        let id = match self.scalars.get(slot).copied().flatten() {
            Some(id) => id,
            None => {
                let node = match slot {
                    0 => Node::None,
                    1 => Node::Bool(false),
                    2 => Node::Bool(true),
                    v => Node::Int(v as i64 - 3),
                };
                let id = self.add(node);
                if let Some(s) = self.scalars.get_mut(slot) {
                    *s = Some(id);
                }
                id
            }
        };
        self.push(id)
    }

    fn push_new(&mut self, n: Node) -> Result<(), PickleError> {
        let id = self.add(n);
        self.push(id)
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Id, PickleError> {
        if self.stack.len() <= self.floor() {
            return self.err("stack underflow (malformed pickle)");
        }
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => self.err("stack underflow (malformed pickle)"),
        }
    }

    fn top(&self) -> Result<Id, PickleError> {
        if self.stack.len() <= self.floor() {
            return self.err("stack is empty where a value is needed (malformed pickle)");
        }
        match self.stack.last() {
            Some(&v) => Ok(v),
            None => self.err("stack is empty (malformed pickle)"),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, PickleError> {
        let Some(m) = self.marks.pop() else {
            return self.err("opcode needs a MARK but none is open (malformed pickle)");
        };
        if m > self.stack.len() {
            return self.err("MARK lies above the stack top (malformed pickle)");
        }
        Ok(self.stack.split_off(m))
    }

    fn bytes(&mut self, n: u64) -> Result<&[u8], PickleError> {
        let remaining = self.r.remaining();
        match usize::try_from(n).ok().filter(|&n| n <= remaining) {
            Some(n) => match self.r.bytes(n) {
                Some(b) => Ok(b),
                None => self.truncated(),
            },
            None => self.err(format!("length {n} exceeds the {remaining} bytes left (corrupt or truncated pickle)")),
        }
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        match self.r.u8() {
            Some(v) => Ok(v),
            None => self.truncated(),
        }
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        match self.r.u16() {
            Some(v) => Ok(v),
            None => self.truncated(),
        }
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        match self.r.u32() {
            Some(v) => Ok(v),
            None => self.truncated(),
        }
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        match self.r.u64() {
            Some(v) => Ok(v),
            None => self.truncated(),
        }
    }
    fn line(&mut self) -> Result<&[u8], PickleError> {
        match self.r.line() {
            Some(v) => Ok(v),
            None => self.truncated(),
        }
    }
    fn line_u64(&mut self) -> Result<u64, PickleError> {
        let l = self.line()?;
        match std::str::from_utf8(l).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(v) => Ok(v),
            None => self.err("expected a decimal index"),
        }
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        match self.memo.get(&key) {
            Some(&id) => self.push(id),
            None => self.err(format!("memo index {key} was never stored (malformed pickle)")),
        }
    }

    fn memo_put(&mut self, key: u64) -> Result<(), PickleError> {
        let top = self.top()?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn call(&mut self, func: Id, args: Id, kwargs: Option<Id>) -> Result<(), PickleError> {
        self.push_new(Node::Call(Box::new(Call {
            func,
            args,
            kwargs,
            state: None,
            items: Vec::new(),
            appended: Vec::new(),
        })))
    }

    fn set_items(&mut self, target: Id, kv: Vec<Id>) -> Result<(), PickleError> {
        if !kv.len().is_multiple_of(2) {
            return self.err("SETITEMS with an odd number of values (malformed pickle)");
        }
        let pairs: Vec<(Id, Id)> = kv.chunks_exact(2).map(|c| (c[0], c[1])).collect();
        match self.nodes.get_mut(target) {
            Some(Node::Dict(items)) => items.extend(pairs),
            Some(Node::Call(c)) => c.items.extend(pairs),
            _ => return self.err("SETITEM(S) on a value that is not a dict (malformed pickle)"),
        }
        Ok(())
    }

    fn append(&mut self, target: Id, vals: Vec<Id>) -> Result<(), PickleError> {
        match self.nodes.get_mut(target) {
            Some(Node::List(items)) => items.extend(vals),
            Some(Node::Call(c)) => c.appended.extend(vals),
            _ => return self.err("APPEND(S) on a value that is not a list (malformed pickle)"),
        }
        Ok(())
    }

    fn global(&mut self, module: String, name: String) -> Result<(), PickleError> {
        self.push_new(Node::Global { module, name })
    }

    fn run(&mut self) -> Result<Pickle, PickleError> {
        loop {
            self.op_pos = self.r.pos();
            let Some(op) = self.r.u8() else {
                return self.err("pickle ends without a STOP opcode (truncated file?)");
            };
            match op {
                // PROTO
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return self.err(format!("unsupported pickle protocol {v}"));
                    }
                }
                // FRAME: a framing hint; the content follows inline.
                0x95 => {
                    self.u64()?;
                }
                // STOP
                b'.' => {
                    let root = self.pop()?;
                    let nodes = std::mem::take(&mut self.nodes);
                    return Ok(Pickle { nodes, root });
                }
                // MARK
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        return self.err(format!("more than {MAX_MARKS} nested MARKs"));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    // POP
                    self.pop()?;
                }
                b'1' => {
                    // POP_MARK
                    self.pop_mark()?;
                }
                b'2' => {
                    // DUP
                    let t = self.top()?;
                    self.push(t)?;
                }
                b'N' => self.push_scalar(0)?,
                0x88 => self.push_scalar(2)?,
                0x89 => self.push_scalar(1)?,
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push_new(Node::Int(v as i64))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push_scalar(3 + v as usize)?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push_new(Node::Int(v as i64))?
                }
                // LONG1, LONG4
                0x8a => {
                    let n = self.u8()? as u64;
                    let n = decode_long(self.bytes(n)?);
                    self.push_new(n)?
                }
                0x8b => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return self.err("LONG4 with a negative length");
                    }
                    let n = decode_long(self.bytes(n as u64)?);
                    self.push_new(n)?
                }
                // INT, LONG (text)
                b'I' | b'L' => {
                    let l = utf8(self.line()?);
                    let t = l.trim().trim_end_matches('L');
                    let node = match (op, t) {
                        (b'I', "00") => Node::Bool(false),
                        (b'I', "01") => Node::Bool(true),
                        _ => match t.parse::<i64>() {
                            Ok(v) => Node::Int(v),
                            Err(_)
                                if !t.is_empty() && t.trim_start_matches('-').bytes().all(|c| c.is_ascii_digit()) =>
                            {
                                Node::BigInt(t.to_string())
                            }
                            Err(_) => return self.err(format!("bad integer literal '{t}'")),
                        },
                    };
                    self.push_new(node)?
                }
                // BINFLOAT (big-endian), FLOAT (text)
                b'G' => {
                    let b = match self.r.array::<8>() {
                        Some(b) => b,
                        None => return self.truncated(),
                    };
                    self.push_new(Node::Float(f64::from_be_bytes(b)))?
                }
                b'F' => {
                    let l = utf8(self.line()?);
                    match l.trim().parse::<f64>() {
                        Ok(v) => self.push_new(Node::Float(v))?,
                        Err(_) => return self.err(format!("bad float literal '{l}'")),
                    }
                }
                // Strings: SHORT_BINUNICODE, BINUNICODE, BINUNICODE8, UNICODE (text)
                0x8c => {
                    let n = self.u8()? as u64;
                    let s = utf8(self.bytes(n)?);
                    self.push_new(Node::Str(s))?
                }
                b'X' => {
                    let n = self.u32()? as u64;
                    let s = utf8(self.bytes(n)?);
                    self.push_new(Node::Str(s))?
                }
                0x8d => {
                    let n = self.u64()?;
                    let s = utf8(self.bytes(n)?);
                    self.push_new(Node::Str(s))?
                }
                b'V' => {
                    let s = raw_unicode_escape(self.line()?);
                    self.push_new(Node::Str(s))?
                }
                // Python 2 strings: SHORT_BINSTRING, BINSTRING, STRING (text, quoted)
                b'U' => {
                    let n = self.u8()? as u64;
                    let s = utf8(self.bytes(n)?);
                    self.push_new(Node::Str(s))?
                }
                b'T' => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return self.err("BINSTRING with a negative length");
                    }
                    let s = utf8(self.bytes(n as u64)?);
                    self.push_new(Node::Str(s))?
                }
                b'S' => {
                    let l = utf8(self.line()?);
                    let t = l.trim_end();
                    let q = t.chars().next();
                    let s = match q {
                        Some(c @ ('\'' | '"')) if t.len() >= 2 && t.ends_with(c) => t[1..t.len() - 1].to_string(),
                        _ => return self.err("STRING literal is not quoted"),
                    };
                    self.push_new(Node::Str(s))?
                }
                // Bytes: SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                b'C' => {
                    let n = self.u8()? as u64;
                    let b = self.bytes(n)?.to_vec();
                    self.push_new(Node::Bytes(b))?
                }
                b'B' => {
                    let n = self.u32()? as u64;
                    let b = self.bytes(n)?.to_vec();
                    self.push_new(Node::Bytes(b))?
                }
                0x8e | 0x96 => {
                    let n = self.u64()?;
                    let b = self.bytes(n)?.to_vec();
                    self.push_new(Node::Bytes(b))?
                }
                // Containers
                b')' => self.push_new(Node::Tuple(Vec::new()))?,
                b']' => self.push_new(Node::List(Vec::new()))?,
                b'}' => self.push_new(Node::Dict(Vec::new()))?,
                0x8f => self.push_new(Node::Set(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_new(Node::Tuple(items))?
                }
                0x85 => {
                    let a = self.pop()?;
                    self.push_new(Node::Tuple(vec![a]))?
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push_new(Node::Tuple(vec![a, b]))?
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push_new(Node::Tuple(vec![a, b, c]))?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_new(Node::List(items))?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if !items.len().is_multiple_of(2) {
                        return self.err("DICT with an odd number of values (malformed pickle)");
                    }
                    let pairs = items.chunks_exact(2).map(|c| (c[0], c[1])).collect();
                    self.push_new(Node::Dict(pairs))?
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push_new(Node::Set(items))?
                }
                b'a' => {
                    let v = self.pop()?;
                    let target = self.top()?;
                    self.append(target, vec![v])?
                }
                b'e' => {
                    let vals = self.pop_mark()?;
                    let target = self.top()?;
                    self.append(target, vals)?
                }
                0x90 => {
                    // ADDITEMS
                    let vals = self.pop_mark()?;
                    let target = self.top()?;
                    match self.nodes.get_mut(target) {
                        Some(Node::Set(items)) => items.extend(vals),
                        Some(Node::Call(c)) => c.appended.extend(vals),
                        _ => return self.err("ADDITEMS on a value that is not a set (malformed pickle)"),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.top()?;
                    self.set_items(target, vec![k, v])?
                }
                b'u' => {
                    let kv = self.pop_mark()?;
                    let target = self.top()?;
                    self.set_items(target, kv)?
                }
                // Memo: PUT (text), BINPUT, LONG_BINPUT, MEMOIZE; GET (text), BINGET, LONG_BINGET
                b'p' => {
                    let k = self.line_u64()?;
                    self.memo_put(k)?
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = self.u32()? as u64;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?
                }
                b'g' => {
                    let k = self.line_u64()?;
                    self.memo_get(k)?
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    self.memo_get(k)?
                }
                b'j' => {
                    let k = self.u32()? as u64;
                    self.memo_get(k)?
                }
                // Globals: recorded by name, never imported.
                b'c' => {
                    let module = utf8(self.line()?);
                    let name = utf8(self.line()?);
                    self.global(module, name)?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (self.nodes.get(module), self.nodes.get(name)) {
                        (Some(Node::Str(m)), Some(Node::Str(n))) => {
                            let (m, n) = (m.clone(), n.clone());
                            self.global(m, n)?
                        }
                        _ => return self.err("STACK_GLOBAL needs two strings (malformed pickle)"),
                    }
                }
                // Calls: recorded, never performed.
                b'R' | 0x81 => {
                    // REDUCE: func args; NEWOBJ: cls args
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.call(func, args, None)?
                }
                0x92 => {
                    // NEWOBJ_EX: cls args kwargs
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.call(cls, args, Some(kwargs))?
                }
                b'i' => {
                    // INST: module\nname\n, args from MARK
                    let module = utf8(self.line()?);
                    let name = utf8(self.line()?);
                    let args = self.pop_mark()?;
                    let func = self.add(Node::Global { module, name });
                    let args = self.add(Node::Tuple(args));
                    self.call(func, args, None)?
                }
                b'o' => {
                    // OBJ: MARK cls args...
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return self.err("OBJ without a class (malformed pickle)");
                    }
                    let cls = items.remove(0);
                    let args = self.add(Node::Tuple(items));
                    self.call(cls, args, None)?
                }
                b'b' => {
                    // BUILD: obj.__setstate__(state) — recorded on Call nodes only.
                    let state = self.pop()?;
                    let target = self.top()?;
                    if let Some(Node::Call(c)) = self.nodes.get_mut(target) {
                        c.state = Some(state);
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push_new(Node::PersistentId(pid))?
                }
                b'P' => {
                    let s = utf8(self.line()?);
                    let pid = self.add(Node::Str(s));
                    self.push_new(Node::PersistentId(pid))?
                }
                0x98 => {
                    // READONLY_BUFFER: no-op for our purposes.
                    self.top()?;
                }
                0x97 => return self.err("out-of-band buffers (NEXT_BUFFER) are not supported"),
                0x82..=0x84 => return self.err("the copyreg extension registry (EXT1/EXT2/EXT4) is not supported"),
                other => return self.err(format!("unknown pickle opcode 0x{other:02x} (corrupt data?)")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_torch_style_dict() {
        // {'a': 1, 'b': [True, None, 2.5, -3, 'x']}, protocol 2.
        let p: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00b]q\x01(\x88NG@\x04\x00\x00\x00\x00\x00\x00J\xfd\xff\xff\xffX\x01\x00\x00\x00xeu.";
        let pk = unpickle(p).unwrap();
        let Node::Dict(items) = &pk.nodes[pk.root] else { panic!() };
        assert_eq!(items.len(), 2);
        assert_eq!(pk.str(items[0].0), Some("a"));
        assert_eq!(pk.int(items[0].1), Some(1));
        let l = pk.seq(items[1].1).unwrap();
        assert_eq!(pk.get(l[0]), Some(&Node::Bool(true)));
        assert_eq!(pk.get(l[1]), Some(&Node::None));
        assert_eq!(pk.get(l[2]), Some(&Node::Float(2.5)));
        assert_eq!(pk.int(l[3]), Some(-3));
        assert_eq!(pk.str(l[4]), Some("x"));
    }

    #[test]
    fn globals_and_reduce_are_only_recorded() {
        let p: &[u8] = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00echo\x85R.";
        let pk = unpickle(p).unwrap();
        let Node::Call(c) = &pk.nodes[pk.root] else { panic!() };
        assert_eq!(pk.global_name(c.func).as_deref(), Some("posix.system"));
        assert_eq!(pk.str(pk.seq(c.args).unwrap()[0]), Some("echo"));
    }

    #[test]
    fn stack_global_memoize_and_longs() {
        // protocol 4: STACK_GLOBAL, MEMOIZE, LONG1 with 9 bytes of sign extension, BINGET.
        let p: &[u8] = b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x05torch\x94\x8c\x04Size\x94\x93\x94\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\xff\x85\x94R\x94h\x04\x86.";
        let pk = unpickle(p).unwrap();
        let t = pk.seq(pk.root).unwrap();
        let Node::Call(c) = pk.get(t[0]).unwrap() else { panic!() };
        assert_eq!(pk.global_name(c.func).as_deref(), Some("torch.Size"));
        assert_eq!(pk.int(pk.seq(c.args).unwrap()[0]), Some(-1));
        assert_eq!(pk.get(t[1]), pk.get(t[0]));
    }

    #[test]
    fn malformed_inputs_error() {
        for (bad, want) in [
            (&b"\x80\x02h\x05."[..], "memo index 5"),
            (b"\x80\x02", "without a STOP"),
            (b"\x80\x02X\xff\xff\xff\x7f", "exceeds"),
            (b".", "underflow"),
            (b"(0t.", "underflow"),
            (b"N\x82\x01.", "extension"),
            (b"\xff", "unknown pickle opcode"),
            (b"K\x00K\x01K\x02s.", "not a dict"),
            (b"\x80\x09.", "protocol 9"),
        ] {
            let e = unpickle(bad).unwrap_err();
            assert!(e.detail.contains(want), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn self_referencing_list_is_fine() {
        // l = []; l.append(l)
        let pk = unpickle(b"]q\x00h\x00a.").unwrap();
        assert_eq!(pk.seq(pk.root), Some(&[pk.root][..]));
    }
}
