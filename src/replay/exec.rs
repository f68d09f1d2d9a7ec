//! Runs parsed scripts: builds each ioctl's struct in the client's memory, issues it, and checks
//! the outcome and the output fields.

use super::client::{Client, Handle, Mode, SCRATCH};
use super::layout::{self, ArgKind, Field, Role, RANGE_SIZE};
use super::script::{self, Action, Expect, Expr, FdIo, IoctlStep, Step, Term, Value2};
use super::trace::{self, Normalizer, Region};
use crate::narrow::usize_from;
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsRawFd;

/// Why a script failed: the line of the step and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub line: usize,
    pub msg: String,
}

const MAIN: &str = "main";

/// Runs every step in order; stops at the first mismatch.
pub fn run(mode: &Mode, steps: &[Step]) -> Result<(), Failure> {
    run_traced(mode, steps, None)
}

/// Where `--trace` lines go: the script's name as printed, and the sink.
pub struct TraceSink<'t> {
    pub script: String,
    pub out: &'t mut dyn Write,
}

/// [`run`], printing a [`trace`] line for every ioctl step that ran (the failing one included).
pub fn run_traced(
    mode: &Mode,
    steps: &[Step],
    trace: Option<TraceSink<'_>>,
) -> Result<(), Failure> {
    let mut r = Runner {
        mode,
        clients: HashMap::new(),
        vars: HashMap::new(),
        trace,
        step_no: 0,
    };
    let main = Client::local().map_err(|msg| Failure { line: 0, msg })?;
    r.clients.insert(MAIN.to_string(), main);
    let result = steps.iter().enumerate().try_for_each(|(i, s)| {
        r.step_no = i + 1;
        r.step(s).map_err(|msg| Failure {
            line: s.line,
            msg: format!("step {}: {msg}", i + 1),
        })
    });
    // Children first: they hold copies of the main client's descriptors.
    let children: Vec<String> = r.clients.keys().filter(|k| *k != MAIN).cloned().collect();
    for c in children {
        r.clients.remove(&c);
    }
    result
}

struct Runner<'m, 't> {
    mode: &'m Mode,
    clients: HashMap<String, Client>,
    vars: HashMap<String, u64>,
    trace: Option<TraceSink<'t>>,
    /// 1-based number of the step running (as in failure messages).
    step_no: usize,
}

type R<T> = Result<T, String>;

impl Runner<'_, '_> {
    fn step(&mut self, s: &Step) -> R<()> {
        let cname = s.client.as_deref().unwrap_or(MAIN).to_string();
        if !self.clients.contains_key(&cname) {
            return Err(format!("no client \"{cname}\" (create it with fork)"));
        }
        let mode = self.mode;
        match &s.action {
            Action::Fork { name } => {
                if cname != MAIN {
                    return Err("only the main client can fork".into());
                }
                if self.clients.contains_key(name) {
                    return Err(format!("client \"{name}\" exists"));
                }
                let child = self.clients[MAIN].fork()?;
                self.clients.insert(name.clone(), child);
                Ok(())
            }
            Action::Exit { name } => {
                if name == MAIN || self.clients.remove(name).is_none() {
                    return Err(format!("no forked client \"{name}\""));
                }
                Ok(())
            }
            Action::Set(vars) => {
                for (k, e) in vars {
                    let v = self.eval(&cname, e)?;
                    self.vars.insert(k.clone(), v);
                }
                Ok(())
            }
            Action::Open { node, name } => {
                let c = self.client(&cname);
                if c.handles.contains_key(name) {
                    return Err(format!("\"{name}\" is already open"));
                }
                let h = c
                    .open(mode, node)?
                    .map_err(|e| format!("open {node:?}: {}", layout::errno_name(e)))?;
                c.handles.insert(name.clone(), h);
                Ok(())
            }
            Action::Close { name } => {
                let c = self.client(&cname);
                let h = c
                    .handles
                    .remove(name)
                    .ok_or_else(|| format!("nothing open as \"{name}\""))?;
                c.close(h)
            }
            Action::Buffer(spec) => {
                let c = self.client(&cname);
                if c.buffers.contains_key(&spec.name) {
                    return Err(format!("buffer \"{}\" exists", spec.name));
                }
                let b = c.alloc(spec)?;
                c.buffers.insert(spec.name.clone(), b);
                Ok(())
            }
            Action::Free { name } => {
                let c = self.client(&cname);
                let b = c
                    .buffers
                    .remove(name)
                    .ok_or_else(|| format!("no buffer \"{name}\""))?;
                c.free(b)
            }
            Action::Write { at, bytes } => {
                let addr = self.eval(&cname, at)?;
                self.clients[&cname].write(addr, bytes)
            }
            Action::Protect { at, size, prot } => {
                let addr = self.eval(&cname, at)?;
                self.client(&cname).protect(addr, *size, *prot)
            }
            Action::Ioctl(io) => self.ioctl(&cname, io),
            Action::FdRead(io) => self.fd_io(&cname, io, false),
            Action::FdWrite(io) => self.fd_io(&cname, io, true),
        }
    }

    /// An `fd_read` or `fd_write` step: the call, its result and, for a read, the bytes.
    fn fd_io(&mut self, cname: &str, io: &FdIo, write: bool) -> R<()> {
        let label = if write { "write" } else { "read" };
        let h = self.clients[cname]
            .handles
            .get(&io.fd)
            .cloned()
            .ok_or_else(|| format!("{label}: nothing open as \"{}\"", io.fd))?;
        let c = self.client(cname);
        let (result, got) = if write {
            let bytes = io.hex.as_deref().unwrap_or(&[]);
            (c.write_fd(&h, bytes)?, None)
        } else {
            match c.read_fd(&h, io.size)? {
                Ok(b) => (Ok(b.len() as i64), Some(b)),
                Err(e) => (Err(e), None),
            }
        };
        if let Some(t) = &mut self.trace {
            let shown = match result {
                Ok(r) => r.to_string(),
                Err(e) => layout::errno_name(e),
            };
            // No fd name: a recording names its fds otherwise, and traces are compared.
            let mut line = format!("TRACE {} {} {label} result={shown}", t.script, self.step_no);
            if let Some(b) = &got {
                line.push_str(&format!(" bytes={}", script::to_hex(b)));
            }
            let _ = writeln!(t.out, "{line}");
        }
        self.check_result(label, io.expect, result)?;
        self.check_ret(cname, label, io.ret.as_ref(), result)?;
        if let (Some(want), Some(got)) = (io.hex.as_ref().filter(|_| !write), &got) {
            if want != got {
                return Err(format!(
                    "{label}: expected bytes {}, got {}",
                    script::to_hex(want),
                    script::to_hex(got)
                ));
            }
        }
        Ok(())
    }

    /// Checks a call's outcome against `expect`.
    fn check_result(
        &self,
        label: &str,
        expect: Expect,
        result: Result<i64, nix::errno::Errno>,
    ) -> R<()> {
        let got = match result {
            Ok(r) => format!("ok (returned {r})"),
            Err(e) => layout::errno_name(e),
        };
        match (expect, result) {
            (Expect::Any, _) | (Expect::Ok, Ok(_)) => Ok(()),
            (Expect::Err(want), Err(e)) if want == e => Ok(()),
            (Expect::Ok, _) => Err(format!("{label}: expected ok, got {got}")),
            (Expect::Err(want), _) => {
                let want = layout::errno_name(want);
                Err(format!("{label}: expected {want}, got {got}"))
            }
        }
    }

    /// Checks a successful call's return value against `ret`, when given.
    fn check_ret(
        &self,
        cname: &str,
        label: &str,
        ret: Option<&Expr>,
        result: Result<i64, nix::errno::Errno>,
    ) -> R<()> {
        if let (Some(e), Ok(r)) = (ret, result) {
            let want = self.eval(cname, e)?;
            if want as i64 != r {
                return Err(format!("{label}: expected return value {want}, got {r}"));
            }
        }
        Ok(())
    }

    fn client(&mut self, name: &str) -> &mut Client {
        self.clients.get_mut(name).expect("checked by step()")
    }

    fn eval(&self, cname: &str, e: &Expr) -> R<u64> {
        let c = &self.clients[cname];
        script::eval(e, &|t| match t {
            Term::Var(v) => self
                .vars
                .get(v)
                .copied()
                .ok_or_else(|| format!("variable ${v} is not set")),
            Term::BufAddr(b) => c
                .buffers
                .get(b)
                .map(|b| b.addr)
                .ok_or_else(|| format!("no buffer \"{b}\"")),
            Term::BufFd(b) => match c.buffers.get(b) {
                Some(buf) => buf
                    .fd
                    .map(|fd| fd as u64)
                    .ok_or_else(|| format!("buffer \"{b}\" is not a memfd")),
                None => Err(format!("no buffer \"{b}\"")),
            },
            Term::HandleFd(h) => match c.handles.get(h) {
                Some(Handle::Fd(fd)) => Ok(fd.as_raw_fd() as u64),
                Some(Handle::ChildFd(fd)) => Ok(*fd as u64),
                Some(Handle::InProc(_)) => Err(format!(
                    "%{h}: an in-process open has no descriptor (run against a node)"
                )),
                None => Err(format!("no open node \"{h}\"")),
            },
            Term::Num(n) => Ok(*n),
        })
    }

    fn ioctl(&mut self, cname: &str, io: &IoctlStep) -> R<()> {
        let label = &io.label;
        let h: Handle = self.clients[cname]
            .handles
            .get(&io.fd)
            .cloned()
            .ok_or_else(|| format!("{label}: nothing open as \"{}\"", io.fd))?;
        let built = self.build(cname, io).map_err(|e| format!("{label}: {e}"))?;
        let arg = match (&io.arg, &built) {
            (Some(e), _) => self.eval(cname, e)?,
            (None, Some(b)) => b.addr,
            (None, None) => 0,
        };
        // With an "arg" pointing at a struct, the trace shows that struct: as long as its size
        // word says (what the callee may write back), read before the call.
        let arg_struct = match (&self.trace, &io.arg, io.def) {
            (Some(_), Some(_), Some(d)) if d.kind == ArgKind::Value => None,
            (Some(_), Some(_), _) if self.region_of(cname, arg) => {
                let c = &self.clients[cname];
                let size = c.read_prefix(arg, 4);
                let sent = match <[u8; 4]>::try_from(size.as_slice()) {
                    Ok(w) => (u32::from_ne_bytes(w) as usize).clamp(4, (SCRATCH / 2) as usize),
                    Err(_) => 4,
                };
                Some((c.read_prefix(arg, sent), sent))
            }
            _ => None,
        };
        if !io.fds.is_empty() && matches!(h, Handle::InProc(_)) {
            return Err(format!(
                "{label}: an in-process daemon returns no fds (\"as\"): run against a node"
            ));
        }
        let result = self.client(cname).ioctl(&h, io.cmd, arg)?;
        if self.trace.is_some() {
            self.trace_line(cname, io, arg, &built, arg_struct, result);
        }
        self.check_result(label, io.expect, result).map_err(|e| {
            if io.fds.is_empty() || result != Err(nix::errno::Errno::EOPNOTSUPP) {
                return e;
            }
            // A uiommufd node cannot install an fd in its caller: `uiommufd launch` does.
            format!("{e} (on a uiommufd node, run the replay under `uiommufd launch`)")
        })?;
        self.check_ret(cname, label, io.ret.as_ref(), result)?;
        let wants_after = !io.out.is_empty()
            || io.save.iter().any(|(_, f)| f != "ret")
            || io.fds.iter().any(|(_, f)| f != "ret");
        let after = match &built {
            Some(b) if wants_after => Some(self.clients[cname].read(b.addr, b.bytes.len())?),
            _ => None,
        };
        if let (Some(b), Some(after)) = (&built, &after) {
            self.check_out(cname, io, b, after)
                .map_err(|e| format!("{label}: {e}"))?;
        }
        for (var, field) in &io.save {
            let v = match (field.as_str(), &built, &after) {
                ("ret", _, _) => match result {
                    Ok(r) => r as u64,
                    Err(_) => return Err(format!("{label}: cannot save ret of a failed call")),
                },
                (f, Some(b), Some(after)) => get(after, b.field(f)?),
                _ => return Err(format!("{label}: no struct to save \"{field}\" from")),
            };
            self.vars.insert(var.clone(), v);
        }
        self.take_returned_fds(cname, io, &built, &after, result)
    }

    /// Names the fds a successful call returned (`"as"`), as opens of the client.
    fn take_returned_fds(
        &mut self,
        cname: &str,
        io: &IoctlStep,
        built: &Option<Built>,
        after: &Option<Vec<u8>>,
        result: Result<i64, nix::errno::Errno>,
    ) -> R<()> {
        let label = &io.label;
        if io.fds.is_empty() || result.is_err() {
            return Ok(());
        }
        for (name, field) in &io.fds {
            let fd = match (field.as_str(), built, after) {
                ("ret", _, _) => result.map_or(0, |r| r as u64),
                (f, Some(b), Some(after)) => get(after, b.field(f)?),
                _ => return Err(format!("{label}: no struct to take fd \"{field}\" from")),
            };
            let c = &self.clients[cname];
            if c.handles.contains_key(name) {
                return Err(format!("{label}: \"{name}\" is already open"));
            }
            let h = c
                .returned_fd(self.mode, fd)
                .map_err(|e| format!("{label}: as.{name}: {e}"))?;
            self.client(cname).handles.insert(name.clone(), h);
        }
        Ok(())
    }

    /// The client's buffers and scratch area, for printing addresses symbolically.
    fn regions(&self, cname: &str) -> Vec<Region> {
        let c = &self.clients[cname];
        let mut r: Vec<Region> = c
            .buffers
            .iter()
            .map(|(name, b)| Region {
                name: name.clone(),
                addr: b.addr,
                // The guard page after each buffer: "&b+size" must print the same in both runs.
                len: b.len.next_multiple_of(4096) + 4096,
                fd: b.fd,
            })
            .collect();
        r.push(Region {
            name: "scratch".into(),
            addr: c.scratch,
            len: SCRATCH,
            fd: None,
        });
        r.sort_by_key(|r| r.addr);
        r
    }

    fn region_of(&self, cname: &str, addr: u64) -> bool {
        self.regions(cname)
            .iter()
            .any(|r| addr >= r.addr && addr - r.addr < r.len)
    }

    /// Prints the step's trace line (see [`trace`]); `arg_struct` is the struct an "arg" pointed
    /// at (bytes read before the call, length sent).
    fn trace_line(
        &mut self,
        cname: &str,
        io: &IoctlStep,
        arg: u64,
        built: &Option<Built>,
        arg_struct: Option<(Vec<u8>, usize)>,
        result: Result<i64, nix::errno::Errno>,
    ) {
        let regions = self.regions(cname);
        let norm = Normalizer { regions: &regions };
        let c = &self.clients[cname];
        let script = self.trace.as_ref().map_or("", |t| t.script.as_str());
        let mut line = format!("TRACE {script} {} {}", self.step_no, io.label);
        match result {
            Ok(r) => line.push_str(&format!(" result={r}")),
            Err(e) => line.push_str(&format!(" result={}", layout::errno_name(e))),
        }
        if io.arg.is_some() {
            line.push_str(&format!(" arg={}", norm.addr(arg)));
        }
        let fields: &[Field] = io.def.map_or(&[], |d| &d.fields);
        let (addr, sent) = match (built, &arg_struct) {
            (Some(b), _) => (b.addr, Some((b.before.clone(), b.bytes.len()))),
            (None, Some((before, len))) => (arg, Some((before.clone(), *len))),
            _ => (0, None),
        };
        if let Some((before, sent_len)) = sent {
            let after = c.read_prefix(addr, sent_len);
            let tokens = trace::struct_tokens(&after, sent_len, fields, &norm, result.is_ok());
            for t in tokens {
                line.push(' ');
                line.push_str(&t);
            }
            for (name, ptr, len) in trace::pointees(&before, fields) {
                let want = usize_from(len.min(trace::READ_CAP as u64));
                let got = c.read_prefix(ptr, want);
                if got.len() < want && got.is_empty() {
                    line.push_str(&format!(" *{name}=unmapped"));
                } else {
                    line.push_str(&format!(" *{name}={}", trace::show_bytes(&got)));
                    if got.len() < want {
                        line.push_str("+unmapped");
                    }
                }
            }
        }
        if let Some(t) = &mut self.trace {
            let _ = writeln!(t.out, "{line}");
        }
    }

    /// Builds the struct (and its arrays) in the client's memory.
    fn build(&mut self, cname: &str, io: &IoctlStep) -> R<Option<Built>> {
        let def = match io.def {
            Some(d) if d.kind == ArgKind::Value => return Ok(None),
            _ if io.arg.is_some() => return Ok(None),
            d => d,
        };
        // "raw" bytes go out exactly as written (their size word included); otherwise the struct
        // is the uAPI's, sized to what is sent.
        let mut bytes = io.raw.clone().unwrap_or_default();
        let fields: &[Field] = def.map_or(&[], |d| &d.fields);
        match (def, &io.raw) {
            (_, Some(_)) => {}
            (Some(d), None) => bytes.resize(d.size, 0),
            (None, None) => return Err("an unknown ioctl needs \"raw\" bytes or an \"arg\"".into()),
        }
        let total = bytes.len() + io.trailing.len();
        if io.raw.is_none() {
            if let Some(size) = fields.iter().find(|f| f.role == Role::Size) {
                put(&mut bytes, size, total as u64)?;
            }
        }
        let scratch = self.clients[cname].scratch;
        let mut array_at = scratch + SCRATCH / 2;
        let mut arrays: Vec<(u64, Vec<u8>)> = Vec::new();
        for (name, value) in &io.args {
            let f = *fields
                .iter()
                .find(|f| f.name == name)
                .ok_or_else(|| format!("no field {name}"))?;
            match value {
                Value2::Int(e) => put(&mut bytes, &f, self.eval(cname, e)?)?,
                Value2::Ranges(rs) => {
                    let mut arr = Vec::with_capacity(rs.len() * RANGE_SIZE);
                    for (s, l) in rs {
                        arr.extend_from_slice(&self.eval(cname, s)?.to_ne_bytes());
                        arr.extend_from_slice(&self.eval(cname, l)?.to_ne_bytes());
                    }
                    if array_at + arr.len() as u64 > scratch + SCRATCH {
                        return Err("inline arrays too large".into());
                    }
                    put(&mut bytes, &f, array_at)?;
                    if let Role::Ranges { count, .. } = f.role {
                        if !io.args.iter().any(|(n, _)| n == count) {
                            let cf = fields.iter().find(|f| f.name == count).expect("layout");
                            put(&mut bytes, cf, rs.len() as u64)?;
                        }
                    }
                    let len = arr.len() as u64;
                    arrays.push((array_at, arr));
                    array_at += len;
                }
                Value2::Bytes(_) => return Err(format!("{name}: bytes are only for out.trailing")),
            }
        }
        bytes.extend_from_slice(&io.trailing);
        let addr = match &io.at {
            Some(e) => self.eval(cname, e)?,
            None => {
                if bytes.len() as u64 > SCRATCH / 2 {
                    return Err("struct and trailing bytes exceed 32 KiB".into());
                }
                self.clients[cname].write(scratch, &vec![0u8; (SCRATCH / 2) as usize])?;
                scratch
            }
        };
        let c = &self.clients[cname];
        for (at, arr) in &arrays {
            c.write(*at, arr)?;
        }
        if io.at.is_some() {
            // The struct may deliberately run into unmapped memory: place what fits.
            if c.write(addr, &bytes).is_err() {
                for (i, b) in bytes.iter().enumerate() {
                    if c.write(addr.wrapping_add(i as u64), &[*b]).is_err() {
                        break;
                    }
                }
            }
        } else {
            c.write(addr, &bytes)?;
        }
        Ok(Some(Built {
            addr,
            before: bytes.clone(),
            bytes,
            fields: fields.to_vec(),
            size: def.map_or(0, |d| d.size),
        }))
    }

    fn check_out(&self, cname: &str, io: &IoctlStep, b: &Built, after: &[u8]) -> R<()> {
        for (name, want) in &io.out {
            match want {
                Value2::Bytes(w) => {
                    let got = after.get(b.size..b.size + w.len()).unwrap_or(&[]);
                    if got != w.as_slice() {
                        return Err(format!(
                            "out.trailing expected {}, got {}",
                            script::to_hex(w),
                            script::to_hex(got)
                        ));
                    }
                }
                Value2::Int(e) => {
                    let f = b.field(name)?;
                    let want = truncate(self.eval(cname, e)?, f.width);
                    let got = get(after, f);
                    if want != got {
                        return Err(format!("out.{name} expected {want:#x}, got {got:#x}"));
                    }
                }
                Value2::Ranges(rs) => {
                    let f = b.field(name)?;
                    let Role::Ranges { count, .. } = f.role else {
                        return Err(format!("{name} is not an array"));
                    };
                    let cf = b.field(count)?;
                    let n = get(&b.before, cf).min(get(after, cf)).min(4096) as usize;
                    let ptr = get(&b.before, f);
                    let raw = self.clients[cname].read(ptr, n * RANGE_SIZE)?;
                    let got: Vec<(u64, u64)> = raw
                        .chunks_exact(RANGE_SIZE)
                        .map(|c| (ne64(&c[..8]), ne64(&c[8..])))
                        .collect();
                    let mut wanted = Vec::new();
                    for (s, l) in rs {
                        wanted.push((self.eval(cname, s)?, self.eval(cname, l)?));
                    }
                    if wanted != got {
                        return Err(format!(
                            "out.{name} expected {}, got {}",
                            show_ranges(&wanted),
                            show_ranges(&got)
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A struct placed in a client's memory.
struct Built {
    addr: u64,
    before: Vec<u8>,
    bytes: Vec<u8>,
    fields: Vec<Field>,
    /// Size of the uAPI struct (trailing bytes follow it).
    size: usize,
}

impl Built {
    fn field(&self, name: &str) -> R<Field> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .copied()
            .ok_or_else(|| format!("no field {name}"))
    }
}

fn ne64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_ne_bytes(a)
}

fn show_ranges(r: &[(u64, u64)]) -> String {
    let items: Vec<String> = r.iter().map(|(s, l)| format!("[{s:#x}, {l:#x}]")).collect();
    format!("[{}]", items.join(", "))
}

fn truncate(v: u64, width: usize) -> u64 {
    if width >= 8 {
        v
    } else {
        v & ((1u64 << (8 * width)) - 1)
    }
}

/// Reads a field (native endian, zero-extended).
pub fn get(bytes: &[u8], f: Field) -> u64 {
    let mut a = [0u8; 8];
    if let Some(src) = bytes.get(f.off..f.off + f.width) {
        if cfg!(target_endian = "little") {
            a[..f.width].copy_from_slice(src);
        } else {
            a[8 - f.width..].copy_from_slice(src);
        }
    }
    u64::from_ne_bytes(a)
}

/// Writes a field; the value must fit its width (negative numbers as two's complement).
pub(crate) fn put(bytes: &mut [u8], f: &Field, v: u64) -> R<()> {
    let w = f.width;
    if w < 8 {
        let bits = 8 * w;
        let fits_unsigned = v >> bits == 0;
        let fits_signed = (v as i64) < 0 && (v as i64) >= -(1i64 << (bits - 1));
        if !fits_unsigned && !fits_signed {
            return Err(format!("{}: {v:#x} does not fit in {w} bytes", f.name));
        }
    }
    let src = v.to_ne_bytes();
    let dst = &mut bytes[f.off..f.off + w];
    if cfg!(target_endian = "little") {
        dst.copy_from_slice(&src[..w]);
    } else {
        dst.copy_from_slice(&src[8 - w..]);
    }
    Ok(())
}
