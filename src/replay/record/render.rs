//! Rendering a recorded session as a script: the buffers its pointers fell into, then one step per
//! call, with IDs and automatic IOVAs as variables (see the parent module).

use super::*;
use crate::replay::exec;

/// A buffer the recorded script declares.
struct Buffer {
    name: String,
    start: u64,
    end: u64,
    prot_none: bool,
}

/// Renders a session as a script.
pub(super) fn render(ctx: u64, s: &Session) -> String {
    let node = match s.node {
        NodeKind::VfioContainer => "vfio",
        _ => "iommu",
    };
    let fds = s.calls.iter().filter(|c| c.object_fd.is_some()).count();
    let ioctls = s
        .calls
        .iter()
        .filter(|c| c.object_fd.is_none() && c.device_closed.is_none() && c.fd_op.is_none())
        .count();
    let mut out =
        format!("# Recorded by `uiommufd serve --record`: context {ctx} ({ioctls} ioctls).\n");
    if fds > 0 {
        let _ = writeln!(
            out,
            "# INCOMPLETE: {fds} object fd(s) from `uiommufd launch` (lines NOT RECORDED below)."
        );
    }
    let _ = writeln!(out, "{{\"open\": \"{node}\"}}");
    let buffers = infer_buffers(s);
    for b in &buffers {
        let prot = if b.prot_none {
            ", \"prot\": \"none\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{{\"buffer\": \"{}\", \"size\": {}{prot}}}",
            b.name,
            b.end - b.start
        );
    }
    let mut r = Renderer {
        buffers,
        ids: HashMap::new(),
        iovas: Vec::new(),
        files: 0,
        vars: 0,
        devices: Vec::new(),
        out,
    };
    for c in &s.calls {
        r.call(c);
    }
    if s.cut {
        let _ = writeln!(
            r.out,
            "# INCOMPLETE: the session passed {} MiB of recorded data; later ioctls NOT RECORDED.",
            MAX_SESSION_BYTES >> 20
        );
    }
    r.out.push_str("{\"close\": \"fd\"}\n");
    r.out
}

fn infer_buffers(s: &Session) -> Vec<Buffer> {
    let mut good: Vec<(u64, u64)> = Vec::new();
    let mut bad: Vec<u64> = Vec::new();
    for c in &s.calls {
        for &(page, prot) in &c.faults {
            if prot == PageProt::ReadOnly {
                good.push((page, page + PAGE));
            }
        }
        if let Some(len) = struct_write_faulted(c) {
            good.push((
                c.arg / PAGE * PAGE,
                c.arg.saturating_add(len).next_multiple_of(PAGE),
            ));
        }
        for (_, p) in &c.ptrs {
            if p.readable > 0 {
                let start = p.addr / PAGE * PAGE;
                let end = p.addr.saturating_add(p.readable).next_multiple_of(PAGE);
                good.push((start, end));
            } else if p.addr >= LOW {
                bad.push(p.addr / PAGE * PAGE);
            }
        }
    }
    let merged = crate::replay::merge_spans(good);
    bad.sort();
    bad.dedup();
    let mut out: Vec<Buffer> = merged
        .into_iter()
        .enumerate()
        .map(|(i, (start, end))| Buffer {
            name: format!("b{}", i + 1),
            start,
            end,
            prot_none: false,
        })
        .collect();
    out.extend(bad.into_iter().enumerate().map(|(i, start)| Buffer {
        name: format!("bad{}", i + 1),
        start,
        end: start + PAGE,
        prot_none: true,
    }));
    out
}

/// The length of the call's struct when the call failed writing into it (the struct sits in
/// read-only memory): the replay must put it there too.
fn struct_write_faulted(c: &Call) -> Option<u64> {
    let len = c.before.as_ref()?.len() as u64;
    let (start, end) = (c.arg / PAGE * PAGE, c.arg.saturating_add(len));
    c.faults
        .iter()
        .any(|&(page, prot)| prot == PageProt::ReadOnly && page >= start && page < end)
        .then_some(len)
}

struct Renderer {
    buffers: Vec<Buffer>,
    /// Object ID → variable holding it.
    ids: HashMap<u64, String>,
    /// Automatically allocated IOVA areas: (IOAS ID, start, length, variable).
    iovas: Vec<(u64, u64, u64, String)>,
    files: usize,
    vars: usize,
    /// Device nodes opened so far (by their name in the script).
    devices: Vec<String>,
    out: String,
}

fn json(v: &str) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn num(v: u64) -> String {
    if v < 0x10000 {
        v.to_string()
    } else {
        json(&format!("{v:#x}"))
    }
}

impl Renderer {
    fn ptr(&self, addr: u64, p: Option<&PtrUse>) -> String {
        let unreadable = p.is_some_and(|p| p.readable == 0);
        let found = self
            .buffers
            .iter()
            .find(|b| b.prot_none == unreadable && (b.start..b.end).contains(&addr));
        match found {
            Some(b) if addr == b.start => json(&format!("&{}", b.name)),
            Some(b) => json(&format!("&{}+{:#x}", b.name, addr - b.start)),
            None => num(addr),
        }
    }

    fn id(&self, v: u64) -> String {
        match self.ids.get(&v) {
            Some(var) => json(&format!("${var}")),
            None => num(v),
        }
    }

    /// An IOVA of the IOAS `ioas` (None: the compat IOAS, unknown here).
    fn iova(&self, ioas: Option<u64>, v: u64) -> String {
        let hit = self.iovas.iter().rev().find(|(id, s, l, _)| {
            ioas.is_some_and(|i| i == *id) && v >= *s && v - *s < (*l).max(1)
        });
        match hit {
            Some((_, s, _, var)) if v == *s => json(&format!("${var}")),
            Some((_, s, _, var)) => json(&format!("${var}+{:#x}", v - s)),
            None => num(v),
        }
    }

    /// The pages of `c`'s faults that lie inside a mapped buffer: the replay protects them for
    /// the call (a fault outside the buffers lands in a guard page or a `prot: none` buffer).
    fn holes(&self, c: &Call) -> Vec<(String, PageProt)> {
        c.faults
            .iter()
            .filter_map(|&(page, prot)| {
                let b = self
                    .buffers
                    .iter()
                    .find(|b| !b.prot_none && (b.start..b.end).contains(&page))?;
                Some((json(&format!("&{}+{:#x}", b.name, page - b.start)), prot))
            })
            .collect()
    }

    fn call(&mut self, c: &Call) {
        if let Some((id, what)) = &c.object_fd {
            // A comment, so the script still runs: the step cannot be replayed by a script (the
            // fd came from the launcher), and later steps naming the object may replay otherwise.
            let _ = writeln!(
                self.out,
                "# NOT RECORDED: object {id}, a {what} with an fd made through `uiommufd launch`; \
                 the fd's own steps (read, write, close) are not recorded either"
            );
            return;
        }
        if let Some((name, op)) = &c.fd_op {
            self.fd_op(name, op);
            return;
        }
        if let Some(name) = &c.device_closed {
            let _ = writeln!(self.out, "{{\"close\": {}}}", json(name));
            // A later bind of the device in this session opens it again.
            self.devices.retain(|h| h != name);
            return;
        }
        if let Some(d) = c
            .device
            .as_ref()
            .filter(|d| !self.devices.contains(&d.handle))
        {
            // Opened where it is first used: the device's open itself is no context's.
            let _ = writeln!(
                self.out,
                "{{\"open\": {}, \"as\": {}}}",
                json(&format!("device:{}", d.node)),
                json(&d.handle)
            );
            self.devices.push(d.handle.clone());
        }
        // Memory is written before any page is protected.
        for (addr, bytes) in &c.data {
            let at = self.ptr(
                *addr,
                Some(&PtrUse {
                    addr: *addr,
                    readable: 1,
                }),
            );
            let _ = writeln!(
                self.out,
                "{{\"write\": {at}, \"hex\": {}}}",
                json(&to_hex(bytes))
            );
        }
        if let (Some(here), Some(b)) = (self.struct_home(c), &c.before) {
            let _ = writeln!(
                self.out,
                "{{\"write\": {here}, \"hex\": {}}}",
                json(&to_hex(b))
            );
        }
        let holes = self.holes(c);
        for (at, prot) in &holes {
            let prot = match prot {
                PageProt::None => "none",
                PageProt::ReadOnly => "r",
            };
            let _ = writeln!(
                self.out,
                "{{\"protect\": {at}, \"size\": {PAGE}, \"prot\": \"{prot}\"}}"
            );
        }
        self.call_step(c);
        for (at, _) in &holes {
            let _ = writeln!(
                self.out,
                "{{\"protect\": {at}, \"size\": {PAGE}, \"prot\": \"rw\"}}"
            );
        }
    }

    /// A read, write or close of an object fd the script made (`"as"` of its ioctl).
    fn fd_op(&mut self, name: &str, op: &FdOp) {
        let name = json(name);
        let outcome = |r: Result<u64, Errno>| match r {
            Ok(n) => format!("\"ret\": {n}"),
            Err(e) => format!("\"expect\": {}", json(&layout::errno_name(e))),
        };
        let line = match op {
            FdOp::Read { size, result } => {
                let hex = match result {
                    Ok(b) => format!(", \"hex\": {}", json(&to_hex(b))),
                    Err(_) => String::new(),
                };
                let r = result.as_ref().map(|b| b.len() as u64).map_err(|e| *e);
                format!(
                    "{{\"fd_read\": {name}, \"size\": {size}{hex}, {}}}",
                    outcome(r)
                )
            }
            FdOp::Write { data, result } => format!(
                "{{\"fd_write\": {name}, \"hex\": {}, {}}}",
                json(&to_hex(data)),
                outcome(result.map(u64::from))
            ),
            FdOp::Close => format!("{{\"close\": {name}}}"),
        };
        let _ = writeln!(self.out, "{line}");
    }

    /// Where a call whose struct sits in read-only memory has it (see [`struct_write_faulted`]).
    fn struct_home(&self, c: &Call) -> Option<String> {
        struct_write_faulted(c)?;
        Some(self.ptr(
            c.arg,
            Some(&PtrUse {
                addr: c.arg,
                readable: 1,
            }),
        ))
    }

    fn call_step(&mut self, c: &Call) {
        // IOMMU_TEST_CMD is written as its op's alias, so that the payload's fields replay.
        let def = match c.device {
            Some(_) => layout::device_op(c.cmd),
            None => {
                layout::by_cmd(c.cmd).map(|d| layout::refine(d, c.before.as_deref().unwrap_or(&[])))
            }
        };
        let label = match def {
            Some(d) => json(d.name),
            None => json(&format!("{:#x}", c.cmd)),
        };
        let mut line = format!("{{\"ioctl\": {label}");
        if let Some(d) = &c.device {
            let _ = write!(line, ", \"fd\": {}", json(&d.handle));
        }
        let expect = match c.result {
            Ok(_) => "ok".to_string(),
            Err(e) => layout::errno_name(e),
        };
        if let Some(here) = self.struct_home(c) {
            let _ = writeln!(
                self.out,
                "{{\"ioctl\": {label}, \"arg\": {here}, \"expect\": {}}}",
                json(&expect)
            );
            return;
        }
        match (def, &c.before) {
            (Some(d), _) if d.kind == ArgKind::Value => {
                let _ = write!(line, ", \"arg\": {}", num(c.arg));
            }
            (_, None) => {
                let p = c.ptrs.iter().find(|(n, _)| n.is_empty()).map(|(_, p)| p);
                let _ = write!(line, ", \"arg\": {}", self.ptr(c.arg, p));
            }
            (None, Some(b)) => {
                if let Some((_, p)) = c.ptrs.iter().find(|(n, _)| *n == "@") {
                    let _ = write!(line, ", \"at\": {}", self.ptr(c.arg, Some(p)));
                }
                let _ = write!(line, ", \"raw\": {}", json(&to_hex(b)));
            }
            (Some(d), Some(b)) => {
                if let Some((_, p)) = c.ptrs.iter().find(|(n, _)| *n == "@") {
                    let _ = write!(line, ", \"at\": {}", self.ptr(c.arg, Some(p)));
                }
                let saves = self.struct_args(&mut line, d, b, c);
                let _ = write!(line, ", \"expect\": {}", json(&expect));
                self.struct_out(&mut line, d, b, c, &saves);
                if !saves.is_empty() {
                    let items: Vec<String> = saves
                        .iter()
                        .map(|(var, f)| format!("{}: {}", json(var), json(f)))
                        .collect();
                    let _ = write!(line, ", \"save\": {{{}}}", items.join(", "));
                }
                let out_fd = d.fields.iter().find(|f| f.role == Role::OutFd);
                if let (Some(name), Some(f)) = (&c.fd_as, out_fd) {
                    let _ = write!(line, ", \"as\": {{{}: {}}}", json(name), json(f.name));
                }
                line.push_str("}\n");
                self.out.push_str(&line);
                return;
            }
        }
        let _ = write!(line, ", \"expect\": {}", json(&expect));
        if let Ok(r) = c.result {
            if r != 0 {
                let _ = write!(line, ", \"ret\": {r}");
            }
        }
        line.push_str("}\n");
        self.out.push_str(&line);
    }

    /// Writes `args` (and `trailing`); returns the variables to save.
    fn struct_args(
        &mut self,
        line: &mut String,
        d: &IoctlDef,
        b: &[u8],
        c: &Call,
    ) -> Vec<(String, &'static str)> {
        let get = |name: &str| d.field(name).map_or(0, |f| exec::get(b, *f));
        let mut args: Vec<String> = Vec::new();
        let user = usize_from(get(d.fields[0].name));
        let trailing = b.get(d.size..user.min(b.len())).unwrap_or(&[]);
        if user != d.size + trailing.len() {
            args.push(format!("\"{}\": {}", d.fields[0].name, num(user as u64)));
        }
        if c.file_size.is_some() {
            self.files += 1;
        }
        for f in d.fields.iter().skip(1) {
            let v = exec::get(b, *f);
            let ptr = c.ptrs.iter().find(|(n, _)| *n == f.name).map(|(_, p)| p);
            let rendered = match f.role {
                Role::Ranges { input: true, .. }
                    if c.ranges_in.is_some() && get("num_iovas") > 0 =>
                {
                    let rs = c.ranges_in.as_deref().unwrap_or(&[]);
                    Some(show_ranges(rs))
                }
                Role::Ptr { .. } | Role::Ranges { .. } if v >= LOW => Some(self.ptr(v, ptr)),
                // A device's BIND names the context's own open (the script's "fd").
                Role::Fd if c.device.is_some() => Some(json("%fd")),
                Role::Fd if c.file_size.is_some() => {
                    let size = c.file_size.unwrap_or(PAGE).max(1).next_multiple_of(PAGE);
                    let _ = writeln!(
                        self.out,
                        "{{\"buffer\": \"f{}\", \"size\": {size}, \"memfd\": true}}",
                        self.files
                    );
                    Some(json(&format!("#f{}", self.files)))
                }
                Role::Fd => Some(low_u32(v).cast_signed().to_string()),
                Role::Int if v >= LOW && c.points_outside_struct(v) => Some(self.ptr(v, None)),
                _ if v == 0 => None,
                Role::Id => Some(self.id(v)),
                Role::Iova => Some(self.iova(ioas_of(d, f.name).map(get), v)),
                _ if f.name == "flags" => Some(flags(d, v)),
                _ => Some(num(v)),
            };
            if let Some(r) = rendered {
                args.push(format!("\"{}\": {r}", f.name));
            }
        }
        if !args.is_empty() {
            let _ = write!(line, ", \"args\": {{{}}}", args.join(", "));
        }
        if !trailing.is_empty() {
            if trailing.iter().all(|&x| x == 0) {
                let _ = write!(line, ", \"trailing\": {}", trailing.len());
            } else {
                let _ = write!(line, ", \"trailing\": {}", json(&to_hex(trailing)));
            }
        }
        // What the call returns into variables.
        let mut saves = Vec::new();
        let (Ok(_), Some(after)) = (c.result, &c.after) else {
            return saves;
        };
        let aget = |name: &str| d.field(name).map_or(0, |f| exec::get(after, *f));
        for f in &d.fields {
            // A device attached to an IOAS gets the ID of the HWPT made for it back in pt_id.
            let attached_anew = c.device.is_some()
                && f.role == Role::Id
                && exec::get(after, *f) != exec::get(b, *f);
            if f.role == Role::OutId || attached_anew {
                self.vars += 1;
                let var = format!("id{}", self.vars);
                self.ids.insert(exec::get(after, *f), var.clone());
                saves.push((var, f.name));
            }
        }
        let auto = low_u32(get("flags")) & IOMMU_IOAS_MAP_FIXED_IOVA == 0;
        let out_iova = match d.cmd {
            IOMMU_IOAS_MAP | IOMMU_IOAS_MAP_FILE if auto => Some("iova"),
            IOMMU_IOAS_COPY if auto => Some("dst_iova"),
            _ => None,
        };
        if let Some(field) = out_iova {
            self.vars += 1;
            let var = format!("iova{}", self.vars);
            let ioas = ioas_of(d, field).map_or(0, get);
            self.iovas
                .push((ioas, aget(field), aget("length"), var.clone()));
            saves.push((var, field));
        }
        saves
    }

    fn struct_out(
        &self,
        line: &mut String,
        d: &IoctlDef,
        b: &[u8],
        c: &Call,
        saves: &[(String, &str)],
    ) {
        let Some(after) = &c.after else { return };
        let mut outs: Vec<String> = Vec::new();
        for f in &d.fields {
            let (old, new) = (exec::get(b, *f), exec::get(after, *f));
            if old == new || saves.iter().any(|(_, s)| *s == f.name) {
                continue;
            }
            let v = match f.role {
                Role::Id | Role::OutId => self.id(new),
                Role::Iova => {
                    let ioas =
                        ioas_of(d, f.name).map(|n| d.field(n).map_or(0, |x| exec::get(b, *x)));
                    self.iova(ioas, new)
                }
                _ => num(new),
            };
            outs.push(format!("\"{}\": {v}", f.name));
        }
        if let Some(rs) = &c.ranges_out {
            if let Some(f) = d
                .fields
                .iter()
                .find(|f| matches!(f.role, Role::Ranges { .. }))
            {
                outs.push(format!("\"{}\": {}", f.name, show_ranges(rs)));
            }
        }
        let (tb, ta) = (
            b.get(d.size..).unwrap_or(&[]),
            after.get(d.size..).unwrap_or(&[]),
        );
        if tb != ta {
            outs.push(format!("\"trailing\": {}", json(&to_hex(ta))));
        }
        if !outs.is_empty() {
            let _ = write!(line, ", \"out\": {{{}}}", outs.join(", "));
        }
    }
}

fn show_ranges(rs: &[(u64, u64)]) -> String {
    let items: Vec<String> = rs
        .iter()
        .map(|(s, l)| format!("[{}, {}]", num(*s), num(*l)))
        .collect();
    format!("[{}]", items.join(", "))
}

/// The field naming the IOAS an IOVA field belongs to.
fn ioas_of(d: &IoctlDef, iova_field: &str) -> Option<&'static str> {
    let name = match iova_field {
        "src_iova" => "src_ioas_id",
        "dst_iova" => "dst_ioas_id",
        _ => "ioas_id",
    };
    d.field(name).map(|f| f.name)
}

/// A flags value with its known bits by name.
fn flags(d: &IoctlDef, v: u64) -> String {
    let prefix = match d.name {
        "VFIO_IOMMU_MAP_DMA" => "VFIO_DMA_MAP_FLAG_",
        "VFIO_IOMMU_UNMAP_DMA" => "VFIO_DMA_UNMAP_FLAG_",
        n if n.starts_with("IOMMU_IOAS_") => "IOMMU_IOAS_MAP_",
        _ => return num(v),
    };
    let mut names = Vec::new();
    let mut rest = v;
    for (name, bit) in layout::CONSTANTS {
        if name.starts_with(prefix) && bit.is_power_of_two() && rest & bit != 0 {
            names.push(name.to_string());
            rest &= !bit;
        }
    }
    if rest != 0 || names.is_empty() {
        names.push(format!("{rest:#x}"));
    }
    json(&names.join("|"))
}
