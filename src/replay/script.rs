//! The script format: JSON lines, one step per line.
//!
//! Blank lines and lines starting with `#` or `//` are comments. Every other line is one JSON
//! object whose key set decides the step (see the crate's `tests/replay/README.md` for the full
//! reference). Parsing never panics: every problem comes back as a [`ParseError`] naming the line.
//!
//! Integer values are JSON numbers (negative ones are two's complement) or expression strings:
//! terms joined by `+`, `-` and `|`, evaluated left to right. A term is a number (`4096`,
//! `0x1000`), a constant (`IOMMU_IOAS_MAP_READABLE`, `U64_MAX`), a variable (`$ioas`), the address
//! of a buffer (`&buf`) or the file descriptor of a memfd buffer (`#buf`).

use super::layout::{self, ArgKind, IoctlDef, Role};
use crate::narrow::usize_from;
use nix::errno::Errno;
use serde_json::{Map, Value};
use std::fmt;

/// A problem with a script, at a line (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.msg)
    }
}

/// One term of an expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    Num(u64),
    Var(String),
    BufAddr(String),
    BufFd(String),
    /// `%name`: the descriptor number of the open node `name` in the client's process (a
    /// device's VFIO_DEVICE_BIND_IOMMUFD names its iommufd by it).
    HandleFd(String),
}

/// An integer expression, evaluated when its step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr(pub Vec<(char, Term)>);

impl Expr {
    pub fn num(v: u64) -> Self {
        Expr(vec![('+', Term::Num(v))])
    }
}

/// A field value: an integer, or an inline array of IOVA ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value2 {
    Int(Expr),
    Ranges(Vec<(Expr, Expr)>),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Fill {
    Zero,
    Byte(u8),
    Seq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BufProt {
    ReadWrite,
    ReadOnly,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferSpec {
    pub name: String,
    pub size: u64,
    pub memfd: bool,
    pub fill: Fill,
    pub prot: BufProt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Iommu,
    Vfio,
    /// `"device:NAME"`: the VFIO device node `vfio/devices/NAME` next to the iommufd node.
    Device(String),
}

/// Expected outcome of an ioctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Ok,
    Err(Errno),
    /// `"expect": "any"`: the outcome is not checked.
    Any,
}

#[derive(Debug, Clone)]
pub struct IoctlStep {
    pub def: Option<&'static IoctlDef>,
    pub cmd: u32,
    pub label: String,
    pub fd: String,
    pub args: Vec<(String, Value2)>,
    pub trailing: Vec<u8>,
    pub raw: Option<Vec<u8>>,
    pub arg: Option<Expr>,
    pub at: Option<Expr>,
    pub expect: Expect,
    pub ret: Option<Expr>,
    pub out: Vec<(String, Value2)>,
    pub save: Vec<(String, String)>,
    /// `"as": {"q": "out_fault_fd"}`: the fds the call returns (an `OutFd` field or `"ret"`),
    /// named as opens are, for later steps' `"fd"`, `%q` and `close`.
    pub fds: Vec<(String, String)>,
}

/// A `read` or `write` on an open (an object fd: a fault or vEVENT queue).
#[derive(Debug, Clone)]
pub struct FdIo {
    /// The open's name.
    pub fd: String,
    /// Bytes to read (`fd_read`'s `size`; the length of `hex` when absent).
    pub size: u64,
    /// `fd_read`: the bytes expected (checked when given); `fd_write`: the bytes written.
    pub hex: Option<Vec<u8>>,
    pub expect: Expect,
    /// The expected return value (bytes read or written).
    pub ret: Option<Expr>,
}

#[derive(Debug, Clone)]
pub enum Action {
    Open {
        node: Node,
        name: String,
    },
    Close {
        name: String,
    },
    Buffer(BufferSpec),
    Free {
        name: String,
    },
    Ioctl(Box<IoctlStep>),
    Fork {
        name: String,
    },
    Exit {
        name: String,
    },
    Set(Vec<(String, Expr)>),
    /// Writes bytes into the client's memory.
    Write {
        at: Expr,
        bytes: Vec<u8>,
    },
    /// `{"fd_read": "q", "size": N, "hex": "…"}`: read(2) on an open.
    FdRead(FdIo),
    /// `{"fd_write": "q", "hex": "…"}`: write(2) on an open.
    FdWrite(FdIo),
    /// Changes the protection of whole pages of one buffer.
    Protect {
        at: Expr,
        size: u64,
        prot: BufProt,
    },
}

#[derive(Debug, Clone)]
pub struct Step {
    pub line: usize,
    /// The client (forked process) running the step; `None` is the main one.
    pub client: Option<String>,
    pub action: Action,
}

/// Parses a whole script.
pub fn parse(text: &str) -> Result<Vec<Step>, ParseError> {
    let mut steps = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with("//") {
            continue;
        }
        let err = |msg: String| ParseError { line, msg };
        let v: Value = serde_json::from_str(t).map_err(|e| err(format!("not JSON: {e}")))?;
        let Value::Object(obj) = v else {
            return Err(err("a step must be a JSON object".into()));
        };
        steps.push(parse_step(&obj).map_err(err)?.with_line(line));
    }
    Ok(steps)
}

impl Step {
    fn with_line(mut self, line: usize) -> Self {
        self.line = line;
        self
    }
}

type R<T> = Result<T, String>;

fn parse_step(obj: &Map<String, Value>) -> R<Step> {
    let kinds = [
        "open", "close", "buffer", "free", "ioctl", "fork", "exit", "set", "write", "protect",
        "fd_read", "fd_write",
    ];
    let present: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|k| obj.contains_key(*k))
        .collect();
    let kind = match present.as_slice() {
        [k] => *k,
        [] => {
            return Err(format!(
                "no step kind: expected one of {}",
                kinds.join(", ")
            ))
        }
        many => return Err(format!("ambiguous step: keys {} together", many.join(", "))),
    };
    let client = opt_str(obj, "client")?;
    let common = ["client", "note"];
    let allowed: &[&str] = match kind {
        "open" => &["open", "as"],
        "close" | "free" | "fork" | "exit" => &[kind],
        "buffer" => &["buffer", "size", "memfd", "fill", "prot"],
        "set" => &["set"],
        "write" => &["write", "hex"],
        "protect" => &["protect", "size", "prot"],
        "fd_read" => &["fd_read", "size", "hex", "expect", "ret"],
        "fd_write" => &["fd_write", "hex", "expect", "ret"],
        _ => &[
            "ioctl", "fd", "args", "trailing", "raw", "arg", "at", "expect", "ret", "out", "save",
            "as",
        ],
    };
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) && !common.contains(&k.as_str()) {
            return Err(format!("unknown key \"{k}\" in a {kind} step"));
        }
    }
    let action = match kind {
        "open" => Action::Open {
            node: match req_str(obj, "open")?.as_str() {
                "iommu" => Node::Iommu,
                "vfio" => Node::Vfio,
                other => match other.strip_prefix("device:") {
                    Some(name) if !name.is_empty() && !name.contains('/') => {
                        Node::Device(name.to_string())
                    }
                    _ => {
                        return Err(format!(
                            "open: unknown node \"{other}\" (iommu, vfio or device:NAME)"
                        ))
                    }
                },
            },
            name: opt_str(obj, "as")?.unwrap_or_else(|| "fd".into()),
        },
        "close" => Action::Close {
            name: req_str(obj, "close")?,
        },
        "free" => Action::Free {
            name: req_str(obj, "free")?,
        },
        "fork" => Action::Fork {
            name: req_str(obj, "fork")?,
        },
        "exit" => Action::Exit {
            name: req_str(obj, "exit")?,
        },
        "buffer" => Action::Buffer(parse_buffer(obj)?),
        "write" => Action::Write {
            at: expr_of(&obj["write"]).map_err(|e| format!("write: {e}"))?,
            bytes: from_hex(&req_str(obj, "hex")?).map_err(|e| format!("hex: {e}"))?,
        },
        "protect" => Action::Protect {
            at: expr_of(&obj["protect"]).map_err(|e| format!("protect: {e}"))?,
            size: match obj.get("size") {
                Some(v) => const_of(v).map_err(|e| format!("protect size: {e}"))?,
                None => return Err("protect: missing \"size\"".into()),
            },
            prot: match obj.get("prot") {
                Some(v) => prot_of(v)?,
                None => return Err("protect: missing \"prot\"".into()),
            },
        },
        "set" => {
            let Some(Value::Object(m)) = obj.get("set") else {
                return Err("set: expected an object of variable: value".into());
            };
            let mut vars = Vec::new();
            for (k, v) in m {
                vars.push((k.clone(), expr_of(v).map_err(|e| format!("set.{k}: {e}"))?));
            }
            Action::Set(vars)
        }
        "fd_read" => Action::FdRead(parse_fd_io(obj, "fd_read")?),
        "fd_write" => Action::FdWrite(parse_fd_io(obj, "fd_write")?),
        _ => Action::Ioctl(Box::new(parse_ioctl(obj)?)),
    };
    Ok(Step {
        line: 0,
        client,
        action,
    })
}

fn parse_fd_io(obj: &Map<String, Value>, kind: &str) -> R<FdIo> {
    let ctx = |e: String| format!("{kind}: {e}");
    let hex = match obj.get("hex") {
        Some(v) => Some(bytes_of(v).map_err(|e| ctx(format!("hex: {e}")))?),
        None if kind == "fd_write" => return Err(ctx("missing \"hex\"".into())),
        None => None,
    };
    let size = match (obj.get("size"), &hex) {
        (Some(v), _) => const_of(v).map_err(|e| ctx(format!("size: {e}")))?,
        (None, Some(h)) => h.len() as u64,
        (None, None) => return Err(ctx("missing \"size\" (or the expected \"hex\")".into())),
    };
    // The most one read of a FUSE file carries (the daemon's max_write, 128 KiB): a recording
    // of any read the daemon answered parses.
    if size > 1 << 17 {
        return Err(ctx(format!("size {size} above 128 KiB")));
    }
    Ok(FdIo {
        fd: req_str(obj, kind)?,
        size,
        hex,
        expect: expect_of(obj).map_err(ctx)?,
        ret: obj
            .get("ret")
            .map(|v| expr_of(v).map_err(|e| ctx(format!("ret: {e}"))))
            .transpose()?,
    })
}

/// `"expect"`: `"ok"` (the default), `"any"` or an errno name.
fn expect_of(obj: &Map<String, Value>) -> R<Expect> {
    Ok(match obj.get("expect") {
        None => Expect::Ok,
        Some(Value::String(s)) if s == "ok" => Expect::Ok,
        Some(Value::String(s)) if s == "any" => Expect::Any,
        Some(Value::String(s)) => Expect::Err(
            layout::errno_by_name(s)
                .ok_or_else(|| format!("expect: unknown errno name \"{s}\""))?,
        ),
        Some(_) => return Err("expect: \"ok\", \"any\" or an errno name".into()),
    })
}

fn req_str(obj: &Map<String, Value>, key: &str) -> R<String> {
    opt_str(obj, key)?.ok_or_else(|| format!("missing \"{key}\""))
}

fn opt_str(obj: &Map<String, Value>, key: &str) -> R<Option<String>> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(format!("\"{key}\" must be a non-empty string")),
    }
}

fn parse_buffer(obj: &Map<String, Value>) -> R<BufferSpec> {
    let name = req_str(obj, "buffer")?;
    let size = match obj.get("size") {
        Some(v) => const_of(v).map_err(|e| format!("buffer size: {e}"))?,
        None => return Err("buffer: missing \"size\"".into()),
    };
    if size == 0 || size > 1 << 32 {
        return Err(format!("buffer size {size} out of range (1 byte to 4 GiB)"));
    }
    let memfd = match obj.get("memfd") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("\"memfd\" must be true or false".into()),
    };
    let fill = match obj.get("fill") {
        None => Fill::Zero,
        Some(Value::String(s)) if s == "seq" => Fill::Seq,
        Some(Value::String(s)) if s == "zero" => Fill::Zero,
        Some(v) => match const_of(v).map(u8::try_from) {
            Ok(Ok(b)) => Fill::Byte(b),
            _ => return Err("\"fill\" must be a byte value, \"seq\" or \"zero\"".into()),
        },
    };
    let prot = match obj.get("prot") {
        None => BufProt::ReadWrite,
        Some(v) => prot_of(v)?,
    };
    Ok(BufferSpec {
        name,
        size,
        memfd,
        fill,
        prot,
    })
}

fn prot_of(v: &Value) -> R<BufProt> {
    match v.as_str() {
        Some("rw") => Ok(BufProt::ReadWrite),
        Some("r") => Ok(BufProt::ReadOnly),
        Some("none") => Ok(BufProt::None),
        _ => Err("\"prot\" must be \"rw\", \"r\" or \"none\"".into()),
    }
}

fn parse_ioctl(obj: &Map<String, Value>) -> R<IoctlStep> {
    let (def, cmd, label) = match obj.get("ioctl") {
        Some(Value::String(s)) if layout::by_name(s).is_some() => {
            let d = layout::by_name(s).expect("checked");
            (Some(d), d.cmd, d.name.to_string())
        }
        Some(v) => match const_of(v).map(u32::try_from) {
            Ok(Ok(n)) => {
                let d = layout::by_cmd(n);
                let label = d.map_or_else(|| format!("ioctl {n:#x}"), |d| d.name.to_string());
                (d, n, label)
            }
            _ => {
                let names: Vec<&str> = layout::ioctls().iter().map(|d| d.name).collect();
                return Err(format!(
                    "unknown ioctl {v}: expected a number or one of {}",
                    names.join(", ")
                ));
            }
        },
        None => return Err("missing \"ioctl\"".into()),
    };
    let ctx = |e: String| format!("{label}: {e}");
    let mut step = IoctlStep {
        def,
        cmd,
        label: label.clone(),
        fd: opt_str(obj, "fd")?.unwrap_or_else(|| "fd".into()),
        args: Vec::new(),
        trailing: Vec::new(),
        raw: None,
        arg: None,
        at: None,
        expect: Expect::Ok,
        ret: None,
        out: Vec::new(),
        save: Vec::new(),
        fds: Vec::new(),
    };
    if let Some(v) = obj.get("args") {
        step.args = fields_of(def, v, false).map_err(|e| ctx(format!("args.{e}")))?;
    }
    if let Some(d) = def.filter(|d| layout::test_op_of(d) != 0) {
        // An IOMMU_TEST_CMD op alias presets its op (a script may still override it).
        if !step.args.iter().any(|(n, _)| n == "op") {
            let op = Value2::Int(Expr::num(layout::test_op_of(d)));
            step.args.insert(0, ("op".into(), op));
        }
    }
    if let Some(v) = obj.get("out") {
        step.out = fields_of(def, v, true).map_err(|e| ctx(format!("out.{e}")))?;
    }
    if let Some(v) = obj.get("trailing") {
        step.trailing = bytes_of(v).map_err(|e| ctx(format!("trailing: {e}")))?;
    }
    if let Some(v) = obj.get("raw") {
        step.raw = Some(bytes_of(v).map_err(|e| ctx(format!("raw: {e}")))?);
    }
    for (key, slot) in [
        ("arg", &mut step.arg),
        ("at", &mut step.at),
        ("ret", &mut step.ret),
    ] {
        if let Some(v) = obj.get(key) {
            *slot = Some(expr_of(v).map_err(|e| ctx(format!("{key}: {e}")))?);
        }
    }
    let is_struct = def.is_none_or(|d| d.kind == ArgKind::Struct);
    if !is_struct && (!step.args.is_empty() || step.raw.is_some() || step.at.is_some()) {
        return Err(ctx("takes an integer \"arg\", not a struct".into()));
    }
    if def.is_none() && !step.args.is_empty() {
        return Err(ctx("fields need a known ioctl; use \"raw\" bytes".into()));
    }
    step.expect = expect_of(obj).map_err(ctx)?;
    if let Some(v) = obj.get("save") {
        let Value::Object(m) = v else {
            return Err(ctx("save: expected an object of variable: field".into()));
        };
        for (var, field) in m {
            let Some(field) = field.as_str() else {
                return Err(ctx(format!("save.{var}: expected a field name")));
            };
            let known = field == "ret" || def.is_some_and(|d| d.field(field).is_some());
            if !known {
                return Err(ctx(format!("save.{var}: no field \"{field}\"")));
            }
            step.save.push((var.clone(), field.to_string()));
        }
    }
    if let Some(v) = obj.get("as") {
        let Value::Object(m) = v else {
            return Err(ctx("as: expected an object of name: fd field".into()));
        };
        for (name, field) in m {
            let fd_field = |f: &str| def.and_then(|d| d.field(f)).map(|f| f.role);
            match field.as_str() {
                Some(f) if f == "ret" || fd_field(f) == Some(Role::OutFd) => {
                    step.fds.push((name.clone(), f.to_string()));
                }
                _ => {
                    return Err(ctx(format!(
                        "as.{name}: expected \"ret\" or a returned fd field"
                    )))
                }
            }
        }
    }
    Ok(step)
}

/// The fields of `args` or `out`.
fn fields_of(def: Option<&IoctlDef>, v: &Value, out: bool) -> R<Vec<(String, Value2)>> {
    let Value::Object(m) = v else {
        return Err(" expected an object of field: value".into());
    };
    let mut fields = Vec::new();
    for (k, v) in m {
        if out && k == "trailing" {
            fields.push((
                k.clone(),
                Value2::Bytes(bytes_of(v).map_err(|e| format!("{k}: {e}"))?),
            ));
            continue;
        }
        let Some(f) = def.and_then(|d| d.field(k)) else {
            let names: Vec<&str> = def
                .map(|d| d.fields.iter().map(|f| f.name).collect())
                .unwrap_or_default();
            return Err(format!("{k}: no such field (fields: {})", names.join(", ")));
        };
        let value = match (f.role, v) {
            (Role::Ranges { .. }, Value::Array(items)) => {
                Value2::Ranges(ranges_of(items).map_err(|e| format!("{k}: {e}"))?)
            }
            _ => Value2::Int(expr_of(v).map_err(|e| format!("{k}: {e}"))?),
        };
        fields.push((k.clone(), value));
    }
    Ok(fields)
}

fn ranges_of(items: &[Value]) -> R<Vec<(Expr, Expr)>> {
    items
        .iter()
        .map(|it| match it {
            Value::Object(m) if m.len() == 2 => match (m.get("start"), m.get("last")) {
                (Some(s), Some(l)) => Ok((expr_of(s)?, expr_of(l)?)),
                _ => Err("a range is {\"start\": …, \"last\": …}".to_string()),
            },
            Value::Array(pair) if pair.len() == 2 => Ok((expr_of(&pair[0])?, expr_of(&pair[1])?)),
            _ => Err("a range is {\"start\": …, \"last\": …} or [start, last]".to_string()),
        })
        .collect()
}

/// Bytes: a hex string ("00ff…", spaces allowed) or a number of zero bytes.
fn bytes_of(v: &Value) -> R<Vec<u8>> {
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(n) if n <= 1 << 16 => Ok(vec![0; usize_from(n)]),
            _ => Err("a byte count from 0 to 65536".into()),
        },
        Value::String(s) => from_hex(s),
        _ => Err("a hex string or a byte count".into()),
    }
}

pub fn from_hex(s: &str) -> R<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .ok_or_else(|| format!("bad hex byte \"{}\"", String::from_utf8_lossy(p)))
        })
        .collect()
}

pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An expression that may not reference anything (buffer sizes).
fn const_of(v: &Value) -> R<u64> {
    let e = expr_of(v)?;
    match e.0.as_slice() {
        _ if e.0.iter().all(|(_, t)| matches!(t, Term::Num(_))) => {
            Ok(eval(&e, &|_| Err("unused".into())).expect("numbers only"))
        }
        _ => Err("must be a constant".into()),
    }
}

pub fn expr_of(v: &Value) -> R<Expr> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_i64().map(|i| i as u64))
            .map(Expr::num)
            .ok_or_else(|| format!("{n} is not a 64-bit integer")),
        Value::String(s) => parse_expr(s),
        Value::Bool(b) => Ok(Expr::num(*b as u64)),
        _ => Err(format!(
            "expected a number or an expression string, got {v}"
        )),
    }
}

pub fn parse_expr(s: &str) -> R<Expr> {
    let mut terms = Vec::new();
    let mut op = '+';
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty expression".into());
    }
    if let Some(r) = rest.strip_prefix('-') {
        // A leading minus: 0 - term.
        terms.push(('+', Term::Num(0)));
        op = '-';
        rest = r.trim_start();
    }
    loop {
        let end = rest.find(['+', '-', '|']).unwrap_or(rest.len());
        let tok = rest[..end].trim();
        terms.push((op, term_of(tok).map_err(|e| format!("in \"{s}\": {e}"))?));
        if end == rest.len() {
            return Ok(Expr(terms));
        }
        op = rest.as_bytes()[end] as char;
        rest = &rest[end + 1..];
    }
}

fn term_of(tok: &str) -> R<Term> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    if let Some(n) = tok.strip_prefix('$') {
        return name_ok(n)
            .then(|| Term::Var(n.into()))
            .ok_or_else(|| format!("bad variable \"{tok}\""));
    }
    if let Some(n) = tok.strip_prefix('&') {
        return name_ok(n)
            .then(|| Term::BufAddr(n.into()))
            .ok_or_else(|| format!("bad buffer \"{tok}\""));
    }
    if let Some(n) = tok.strip_prefix('#') {
        return name_ok(n)
            .then(|| Term::BufFd(n.into()))
            .ok_or_else(|| format!("bad buffer \"{tok}\""));
    }
    if let Some(n) = tok.strip_prefix('%') {
        return name_ok(n)
            .then(|| Term::HandleFd(n.into()))
            .ok_or_else(|| format!("bad open node \"{tok}\""));
    }
    let num = if let Some(h) = tok.strip_prefix("0x").or_else(|| tok.strip_prefix("0X")) {
        u64::from_str_radix(&h.replace('_', ""), 16).ok()
    } else if tok.starts_with(|c: char| c.is_ascii_digit()) {
        tok.replace('_', "").parse().ok()
    } else {
        layout::constant(tok)
    };
    num.map(Term::Num).ok_or_else(|| {
        if tok.is_empty() {
            "missing term".to_string()
        } else {
            format!("unknown constant or bad number \"{tok}\"")
        }
    })
}

/// Evaluates `e`, resolving names through `lookup` (wrapping arithmetic, like C on u64).
pub fn eval(e: &Expr, lookup: &dyn Fn(&Term) -> R<u64>) -> R<u64> {
    let mut acc = 0u64;
    for (op, t) in &e.0 {
        let v = match t {
            Term::Num(n) => *n,
            other => lookup(other)?,
        };
        acc = match op {
            '+' => acc.wrapping_add(v),
            '-' => acc.wrapping_sub(v),
            _ => acc | v,
        };
    }
    Ok(acc)
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (op, t)) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, "{op}")?;
            }
            match t {
                Term::Num(n) if *n > 9 => write!(f, "{n:#x}")?,
                Term::Num(n) => write!(f, "{n}")?,
                Term::Var(v) => write!(f, "${v}")?,
                Term::BufAddr(b) => write!(f, "&{b}")?,
                Term::BufFd(b) => write!(f, "#{b}")?,
                Term::HandleFd(h) => write!(f, "%{h}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
