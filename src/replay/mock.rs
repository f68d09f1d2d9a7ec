//! `uiommufd replay --to-mock DIR`: turns a recorded session that used a VFIO device node (e.g.
//! unmodified QEMU driving uiommufd's `dmacopy`) into a script for the selftest's mock device
//! (`IOMMUFD_TEST` kernels, `uiommufd serve --selftest`), so that the same session runs on the real
//! kernel and on uiommufd and the two can be compared step by step.
//!
//! What changes (everything else is kept as recorded):
//! * `{"open": "device:NAME", "as": D}` goes: the mock device lives in the iommufd itself.
//! * D's `VFIO_DEVICE_BIND_IOMMUFD` becomes an `IOMMU_IOAS_ALLOC` (the mock needs an IOAS to attach
//!   to at creation) and `IOMMU_TEST_OP_MOCK_DOMAIN` on it, whose `out_idev_id` is saved in the
//!   variable the recording saved `out_devid` in: later steps naming the device (GET_HW_INFO,
//!   HWPT_ALLOC `dev_id`) use it as before. The mock makes more objects (its IOAS, stdev, HWPT),
//!   so every later ID shifts; they are variables in a recording, so nothing else changes.
//! * `VFIO_DEVICE_ATTACH_IOMMUFD_PT` becomes `IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE` of D's stdev to
//!   the same `pt_id`; `VFIO_DEVICE_DETACH_IOMMUFD_PT` a replace back to D's own IOAS (the mock
//!   cannot be detached without being destroyed); `{"close": D}` an `IOMMU_DESTROY` of its stdev
//!   (which unbinds the mock device, as closing a device file does).
//! * Answers that describe the device rather than the calls are not expected any more (`out` of
//!   `IOMMU_GET_HW_INFO` and `IOMMU_IOAS_IOVA_RANGES`): the mock answers with its own type, data
//!   and aperture, on the kernel and on uiommufd alike.
//! * Fixed IOVAs move into the mock's aperture (`MOCK_APERTURE_START`..`MOCK_APERTURE_LAST`,
//!   outside which the mock's domain reserves the IOVA space): the IOVA windows the session names
//!   (every plain-number IOVA field with its length: fixed maps, unmaps, copies, dirty bitmaps,
//!   VFIO type1 maps and unmaps, allowed ranges; merged where they overlap or touch) are packed
//!   one below the other from the aperture's top (automatic IOVAs are allocated from its bottom),
//!   each keeping its offset within 2 MiB, so maps stay as contiguous and as aligned as they were.
//!   Every IOVA field moves through that one mapping; one that does not lie in a window whole
//!   (an unmap of everything) is kept, with a note in its step. A session whose windows do not
//!   fit keeps its IOVAs.
//! * A device step the device refused (a second BIND, an ATTACH to a bad ID) becomes a comment:
//!   its mock equivalent would not fail alike, and a BIND's would make new mock objects.
//! * A device open needs its own name (`"as"`, not `"fd"`): otherwise its steps could not be told
//!   from those on the context's own open.

use crate::replay::layout::{self, Role};
use serde_json::{Map, Value};
use std::fmt::Write as _;
use uiommufd_uapi::iommufd::IOMMU_IOAS_MAP_FIXED_IOVA;

/// The selftest mock's IOVA aperture (`iommufd_test.h`).
const APERTURE_START: u64 = 1 << 24;
const APERTURE_LAST: u64 = (1 << 31) - 1;
/// Windows keep their start's offset within this (huge-page alignment).
const KEEP_ALIGN: u64 = 2 << 20;

/// Ioctls whose outputs describe the device (or its domain's aperture).
const DEVICE_ANSWERS: &[&str] = &["IOMMU_GET_HW_INFO", "IOMMU_IOAS_IOVA_RANGES"];

/// One step of a script, as JSON.
type Step = Map<String, Value>;

/// Transforms one recorded script (its text); Err names the line that cannot be transformed.
pub fn to_mock(text: &str) -> Result<String, String> {
    // (line number, the step or None for a comment, the line as written)
    let mut steps: Vec<(usize, Option<Step>, &str)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with("//") {
            steps.push((i + 1, None, raw));
            continue;
        }
        match serde_json::from_str::<Value>(t) {
            Ok(Value::Object(m)) => steps.push((i + 1, Some(m), raw)),
            _ => return Err(format!("line {}: not a JSON object", i + 1)),
        }
    }
    let reloc = Relocation::of(steps.iter().filter_map(|(_, s, _)| s.as_ref()));
    let mut devices: Vec<String> = Vec::new();
    let mut out = String::from(
        "# Transformed for the selftest's mock device by `uiommufd replay --to-mock` \
         (src/replay/mock.rs); needs IOMMUFD_TEST / `uiommufd serve --selftest`.\n",
    );
    if let Some(r) = &reloc {
        for (from, len, to) in &r.windows {
            let _ = writeln!(
                out,
                "# IOVA window {from:#x}+{len:#x} moved to {to:#x} (the mock's aperture)"
            );
        }
    }
    for (line, step, raw) in steps {
        let Some(mut s) = step else {
            out.push_str(raw);
            out.push('\n');
            continue;
        };
        let err = |m: &str| format!("line {line}: {m}");
        if let Some(node) = s.get("open").and_then(Value::as_str) {
            if let Some(name) = node.strip_prefix("device:") {
                // Without its own name the device's steps would be those on the context's
                // open ("fd"), which the transform could not tell apart.
                let handle = match s.get("as").and_then(Value::as_str) {
                    Some(h) if h != "fd" => h,
                    _ => {
                        return Err(err(&format!(
                            "the device open of {name} needs its own name (\"as\", not \"fd\")"
                        )))
                    }
                };
                let _ = writeln!(
                    out,
                    "# device {name} (\"{handle}\"): the selftest's mock device"
                );
                devices.push(handle.to_string());
                continue;
            }
        }
        if let Some(h) = s.get("close").and_then(Value::as_str) {
            if devices.iter().any(|d| d == h) {
                let v = Vars::new(h);
                let mut m = Map::new();
                m.insert("ioctl".into(), "IOMMU_DESTROY".into());
                m.insert("args".into(), obj([("id", v.stdev())]));
                push(&mut out, m);
                continue;
            }
        }
        let on_device = s
            .get("fd")
            .and_then(Value::as_str)
            .filter(|h| devices.iter().any(|d| d == h))
            .map(str::to_string);
        let name = s
            .get("ioctl")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(h) = on_device {
            let expect = s.get("expect").and_then(Value::as_str).unwrap_or("ok");
            if expect != "ok" && expect != "any" {
                // The device refused it; its mock equivalent would not fail alike (and a BIND's
                // would make new mock objects in the device's variables): kept as a comment.
                let _ = writeln!(
                    out,
                    "# {h}: {name} failed with {expect} on the device; not replayed on the mock"
                );
                continue;
            }
            device_step(&mut out, &h, &name, &s).map_err(|m| err(&m))?;
            continue;
        }
        if DEVICE_ANSWERS.contains(&name.as_str()) {
            s.remove("out");
        }
        if let Some(r) = &reloc {
            r.apply(&mut s);
        }
        push(&mut out, s);
    }
    Ok(out)
}

/// The variables a device's mock objects are saved in.
struct Vars(String);

impl Vars {
    fn new(handle: &str) -> Self {
        Self(format!("mock_{handle}"))
    }
    fn ioas(&self) -> Value {
        format!("${}_ioas", self.0).into()
    }
    fn stdev(&self) -> Value {
        format!("${}_stdev", self.0).into()
    }
}

/// One of the device's own steps, as its mock equivalent.
fn device_step(
    out: &mut String,
    h: &str,
    name: &str,
    s: &Map<String, Value>,
) -> Result<(), String> {
    let v = Vars::new(h);
    let args = s.get("args").and_then(Value::as_object);
    let arg = |k: &str| args.and_then(|a| a.get(k)).cloned();
    let expect = s.get("expect").cloned().unwrap_or_else(|| "ok".into());
    let fd = match arg("iommufd").as_ref().and_then(Value::as_str) {
        Some(e) => e.strip_prefix('%').unwrap_or("fd").to_string(),
        None => "fd".into(),
    };
    let mut m = Map::new();
    match name {
        "VFIO_DEVICE_BIND_IOMMUFD" => {
            let mut ioas = Map::new();
            ioas.insert("ioctl".into(), "IOMMU_IOAS_ALLOC".into());
            ioas.insert("fd".into(), fd.clone().into());
            ioas.insert(
                "save".into(),
                obj([(&*format!("{}_ioas", v.0), "out_ioas_id".into())]),
            );
            ioas.insert(
                "note".into(),
                format!("{h}: the IOAS its mock is created in").into(),
            );
            push(out, ioas);
            let mut save = Map::new();
            save.insert(format!("{}_stdev", v.0), "out_stdev_id".into());
            save.insert(format!("{}_hwpt", v.0), "out_hwpt_id".into());
            if let Some(Value::Object(rec)) = s.get("save") {
                for (var, field) in rec {
                    if field == "out_devid" {
                        save.insert(var.clone(), "out_idev_id".into());
                    }
                }
            }
            m.insert("ioctl".into(), "IOMMU_TEST_OP_MOCK_DOMAIN".into());
            m.insert("fd".into(), fd.into());
            m.insert("args".into(), obj([("id", v.ioas())]));
            m.insert("expect".into(), expect);
            m.insert("save".into(), Value::Object(save));
            m.insert(
                "note".into(),
                format!("{h}: VFIO_DEVICE_BIND_IOMMUFD").into(),
            );
        }
        "VFIO_DEVICE_ATTACH_IOMMUFD_PT" | "VFIO_DEVICE_DETACH_IOMMUFD_PT" => {
            let attach = name == "VFIO_DEVICE_ATTACH_IOMMUFD_PT";
            let pt = if attach {
                arg("pt_id").unwrap_or(0.into())
            } else {
                v.ioas()
            };
            m.insert("ioctl".into(), "IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE".into());
            m.insert("args".into(), obj([("id", v.stdev()), ("pt_id", pt)]));
            m.insert("expect".into(), expect);
            for k in ["out", "save"] {
                if let Some(x) = s.get(k).filter(|_| attach) {
                    m.insert(k.into(), x.clone());
                }
            }
            let what = if attach {
                name.to_string()
            } else {
                format!("{name} (a replace to its own IOAS: the mock cannot just detach)")
            };
            m.insert("note".into(), format!("{h}: {what}").into());
        }
        other => return Err(format!("{other} on device \"{h}\" has no mock equivalent")),
    }
    push(out, m);
    Ok(())
}

fn obj<'a>(items: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::Object(items.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// Writes a step with its kind first, as the recorder does (a JSON map sorts its keys).
fn push(out: &mut String, mut m: Map<String, Value>) {
    const FIRST: &[&str] = &["open", "close", "buffer", "write", "ioctl", "fd", "args"];
    let mut items: Vec<String> = Vec::new();
    for k in FIRST {
        if let Some(v) = m.remove(*k) {
            items.push(format!("{}: {v}", Value::from(*k)));
        }
    }
    items.extend(
        m.iter()
            .map(|(k, v)| format!("{}: {v}", Value::from(k.as_str()))),
    );
    let _ = writeln!(out, "{{{}}}", items.join(", "));
}

fn hex(n: u64) -> Value {
    if n < 0x10000 {
        n.into()
    } else {
        format!("{n:#x}").into()
    }
}

/// A plain number (JSON, or a string holding only one): IOVAs given through variables are
/// automatic ones, which the daemon places inside the aperture itself.
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        },
        _ => None,
    }
}

/// Where a step names IOVAs: the `args` fields holding one (with the field holding the length
/// of what starts there, if any) and the input range arrays (`{start, last}` items).
struct IovaFields {
    scalars: Vec<(&'static str, Option<&'static str>)>,
    ranges: Vec<&'static str>,
}

/// The IOVA fields of a step's ioctl (the descriptor's `Iova` and input `Ranges` fields), less
/// those that are outputs: the IOVA of a map, or a copy's destination, without FIXED_IOVA.
fn iova_fields(s: &Map<String, Value>) -> Option<IovaFields> {
    let name = s.get("ioctl")?.as_str()?;
    let def = layout::by_name(name)?;
    let fixed = s
        .get("args")
        .and_then(|a| a.get("flags"))
        .is_some_and(|f| match f {
            Value::String(t) if number(f).is_none() => t.contains("IOMMU_IOAS_MAP_FIXED_IOVA"),
            _ => number(f).is_some_and(|n| n & u64::from(IOMMU_IOAS_MAP_FIXED_IOVA) != 0),
        });
    let output = |field: &str| {
        !fixed
            && matches!(
                (name, field),
                ("IOMMU_IOAS_MAP" | "IOMMU_IOAS_MAP_FILE", "iova")
                    | ("IOMMU_IOAS_COPY", "dst_iova")
            )
    };
    // The length: `length`, or VFIO's `size` (iommufd structs' `size` is the struct's).
    let len = ["length", "size"]
        .into_iter()
        .find(|l| def.field(l).is_some_and(|f| matches!(f.role, Role::Int)));
    let mut fields = IovaFields {
        scalars: Vec::new(),
        ranges: Vec::new(),
    };
    for f in &def.fields {
        match f.role {
            Role::Iova if !output(f.name) => fields.scalars.push((f.name, len)),
            Role::Ranges { input: true, .. } => fields.ranges.push(f.name),
            _ => {}
        }
    }
    Some(fields)
}

/// A range item's (start, last).
fn range_ends(item: &Value) -> Option<(u64, u64)> {
    match item {
        Value::Object(m) => Some((number(m.get("start")?)?, number(m.get("last")?)?)),
        Value::Array(p) if p.len() == 2 => Some((number(&p[0])?, number(&p[1])?)),
        _ => None,
    }
}

/// The IOVA spans `[start, end)` a step names at plain-number IOVAs (an absent field is 0);
/// not IOVAs through variables (automatic ones, placed in the aperture by the daemon), empty
/// spans, or spans larger than the aperture (an unmap of everything, an allow-all).
fn spans(s: &Map<String, Value>) -> Vec<(u64, u64)> {
    let (Some(f), Some(args)) = (iova_fields(s), s.get("args").and_then(Value::as_object)) else {
        return Vec::new();
    };
    let field = |k: &str| args.get(k).map_or(Some(0), number);
    let mut out: Vec<(u64, Option<u64>)> = Vec::new();
    for (iova, len) in &f.scalars {
        if let (Some(start), Some(len)) = (field(iova), len.and_then(field)) {
            out.push((start, start.checked_add(len)));
        }
    }
    for k in &f.ranges {
        let items = args.get(*k).and_then(Value::as_array).into_iter().flatten();
        out.extend(
            items
                .filter_map(range_ends)
                .map(|(s, l)| (s, l.checked_add(1))),
        );
    }
    let fits = |(s, e): (u64, u64)| e > s && e - s <= APERTURE_LAST - APERTURE_START + 1;
    out.into_iter()
        .filter_map(|(s, e)| Some((s, e?)))
        .filter(|&span| fits(span))
        .collect()
}

/// Where the session's IOVA windows go: (original start, length, new start).
struct Relocation {
    windows: Vec<(u64, u64, u64)>,
}

impl Relocation {
    /// None when the session names no IOVA, or its windows do not fit the aperture. The windows
    /// are packed down from the aperture's top, in their order: the daemon allocates automatic
    /// IOVAs from the bottom (lowest fit), so they meet the session's fixed ones no sooner than
    /// they did where the session ran.
    fn of<'a>(steps: impl Iterator<Item = &'a Map<String, Value>>) -> Option<Self> {
        let merged = super::merge_spans(steps.flat_map(spans).collect());
        let mut cursor = APERTURE_LAST + 1;
        let mut windows = Vec::new();
        for (s, e) in merged.into_iter().rev() {
            // The last address that ends at or below the cursor and keeps the start's offset
            // within KEEP_ALIGN.
            let top = cursor.checked_sub(e - s)?;
            let base = top.checked_sub((top.checked_sub(s % KEEP_ALIGN)?) % KEEP_ALIGN)?;
            if base < APERTURE_START {
                return None;
            }
            windows.push((s, e - s, base));
            cursor = base;
        }
        windows.reverse();
        (!windows.is_empty()).then_some(Self { windows })
    }

    fn window_of(&self, iova: u64) -> Option<usize> {
        self.windows
            .iter()
            .position(|(s, l, _)| iova >= *s && iova - s < *l)
    }

    fn map(&self, iova: u64) -> Option<u64> {
        let (s, _, to) = self.windows[self.window_of(iova)?];
        Some(to + (iova - s))
    }

    /// Moves every plain-number IOVA of the step into its window's new place. One outside every
    /// window (an unmap of everything, a range larger than the aperture) is kept, and the step
    /// says so in a note.
    fn apply(&self, s: &mut Map<String, Value>) {
        let Some(f) = iova_fields(s) else {
            return;
        };
        let Some(Value::Object(args)) = s.get_mut("args") else {
            return;
        };
        let mut kept: Vec<String> = Vec::new();
        for (k, len) in &f.scalars {
            let field = |k: &str| args.get(k).map_or(Some(0), number);
            let Some(iova) = field(k) else {
                continue;
            };
            // What starts there moves only when it lies in the window whole (not an unmap of
            // everything from a window's start).
            let last = len
                .and_then(field)
                .map_or(Some(iova), |l| iova.checked_add(l.max(1) - 1));
            let whole = last.is_some_and(|l| self.window_of(l) == self.window_of(iova));
            match self.map(iova).filter(|_| whole) {
                Some(to) => {
                    args.insert((*k).into(), hex(to));
                }
                None => kept.push(format!("{k} {iova:#x}")),
            }
        }
        for k in &f.ranges {
            let Some(Value::Array(items)) = args.get_mut(*k) else {
                continue;
            };
            for item in items.iter_mut() {
                let Some((start, last)) = range_ends(item) else {
                    continue;
                };
                // A range moves whole or not at all.
                match (self.window_of(start), self.window_of(last)) {
                    (Some(a), Some(b)) if a == b => {
                        let (s, _, to) = self.windows[a];
                        *item = Value::Array(vec![hex(to + (start - s)), hex(to + (last - s))]);
                    }
                    _ => kept.push(format!("{k} [{start:#x}, {last:#x}]")),
                }
            }
        }
        if !kept.is_empty() {
            let why = format!(
                "IOVA outside the session's moved windows, kept as recorded: {}",
                kept.join(", ")
            );
            let note = match s.get("note").and_then(Value::as_str) {
                Some(n) => format!("{n}; {why}"),
                None => why,
            };
            s.insert("note".into(), note.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: &str = r#"{"open": "iommu"}
{"buffer": "b1", "size": 8192}
{"open": "device:dmacopy0", "as": "dmacopy0"}
{"ioctl": "VFIO_DEVICE_BIND_IOMMUFD", "fd": "dmacopy0", "args": {"argsz": 16, "iommufd": "%fd"}, "expect": "ok", "save": {"id1": "out_devid"}}
{"ioctl": "IOMMU_GET_HW_INFO", "args": {"dev_id": "$id1"}, "expect": "ok", "out": {"out_capabilities": 8}}
{"ioctl": "IOMMU_IOAS_ALLOC", "expect": "ok", "save": {"id2": "out_ioas_id"}}
{"ioctl": "VFIO_DEVICE_ATTACH_IOMMUFD_PT", "fd": "dmacopy0", "args": {"argsz": 12, "pt_id": "$id2"}, "expect": "ok", "save": {"id3": "pt_id"}}
{"ioctl": "IOMMU_IOAS_MAP", "args": {"flags": "IOMMU_IOAS_MAP_FIXED_IOVA|IOMMU_IOAS_MAP_READABLE", "ioas_id": "$id2", "user_va": "&b1", "length": 8192, "iova": "0xfffc0000"}, "expect": "ok"}
{"ioctl": "IOMMU_IOAS_MAP", "args": {"flags": "IOMMU_IOAS_MAP_FIXED_IOVA|IOMMU_IOAS_MAP_READABLE", "ioas_id": "$id2", "user_va": "&b1", "length": 4096}, "expect": "ok"}
{"ioctl": "IOMMU_IOAS_UNMAP", "args": {"ioas_id": "$id2", "length": 4096}, "expect": "ok"}
{"ioctl": "VFIO_DEVICE_DETACH_IOMMUFD_PT", "fd": "dmacopy0", "args": {"argsz": 8}, "expect": "ok"}
{"close": "dmacopy0"}
{"close": "fd"}
"#;

    #[test]
    fn device_steps_become_mock_steps() {
        let t = to_mock(SESSION).unwrap();
        let steps = crate::replay::script::parse(&t).expect("the result parses");
        assert!(!t.contains("device:"), "{t}");
        assert!(!t.contains(r#""ioctl": "VFIO_DEVICE_"#), "{t}");
        let has = |s: &str| assert!(t.contains(s), "{s} not in:\n{t}");
        has(r#"{"ioctl": "IOMMU_IOAS_ALLOC", "fd": "fd", "note""#);
        has(
            r#"{"ioctl": "IOMMU_TEST_OP_MOCK_DOMAIN", "fd": "fd", "args": {"id":"$mock_dmacopy0_ioas"}"#,
        );
        has(
            r#""save": {"id1":"out_idev_id","mock_dmacopy0_hwpt":"out_hwpt_id","mock_dmacopy0_stdev":"out_stdev_id"}"#,
        );
        has(
            r#"{"ioctl": "IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE", "args": {"id":"$mock_dmacopy0_stdev","pt_id":"$id2"}"#,
        );
        has(r#""save": {"id3":"pt_id"}"#);
        has(r#""pt_id":"$mock_dmacopy0_ioas""#);
        has(r#"{"ioctl": "IOMMU_DESTROY", "args": {"id":"$mock_dmacopy0_stdev"}}"#);
        assert!(!t.contains("out_capabilities"), "{t}");
        // Windows [0, 4K) and [0xfffc0000, +8K), packed down from the aperture's top (2 GiB),
        // each keeping its offset within 2 MiB.
        has(r#""iova":"0x7fe00000""#);
        has(r#""iova":"0x7ffc0000""#);
        assert_eq!(steps.len(), 13);
    }

    fn run_on_selftest_daemon(session: &str) {
        let steps = crate::replay::script::parse(&to_mock(session).unwrap()).unwrap();
        let daemon = crate::dispatch::Daemon::new(crate::dispatch::extensions::daemon_extensions());
        let mode = crate::replay::Mode::InProcess(std::sync::Arc::new(
            crate::dispatch::DaemonService(daemon),
        ));
        crate::replay::exec::run_traced(&mode, &steps, None)
            .unwrap_or_else(|f| panic!("{}: {}", f.line, f.msg));
    }

    #[test]
    fn runs_on_the_in_process_selftest_daemon() {
        run_on_selftest_daemon(SESSION);
    }

    /// An automatic map before a fixed one, a refused second BIND, a copy between fixed IOVAs,
    /// an allowed range on a second IOAS and an unmap of everything.
    const SESSION2: &str = r#"{"open": "iommu"}
{"buffer": "b1", "size": 8192}
{"open": "device:dmacopy0", "as": "dmacopy0"}
{"ioctl": "VFIO_DEVICE_BIND_IOMMUFD", "fd": "dmacopy0", "args": {"argsz": 16, "iommufd": "%fd"}, "expect": "ok", "save": {"id1": "out_devid"}}
{"ioctl": "IOMMU_IOAS_ALLOC", "expect": "ok", "save": {"id2": "out_ioas_id"}}
{"ioctl": "VFIO_DEVICE_ATTACH_IOMMUFD_PT", "fd": "dmacopy0", "args": {"argsz": 12, "pt_id": "$id2"}, "expect": "ok", "save": {"id3": "pt_id"}}
{"ioctl": "VFIO_DEVICE_BIND_IOMMUFD", "fd": "dmacopy0", "args": {"argsz": 16, "iommufd": "%fd"}, "expect": "EBUSY"}
{"ioctl": "VFIO_DEVICE_ATTACH_IOMMUFD_PT", "fd": "dmacopy0", "args": {"argsz": 12, "pt_id": 999}, "expect": "ENOENT"}
{"ioctl": "IOMMU_IOAS_MAP", "args": {"flags": "IOMMU_IOAS_MAP_READABLE", "ioas_id": "$id2", "user_va": "&b1", "length": 4096}, "expect": "ok", "save": {"iova1": "iova"}}
{"ioctl": "IOMMU_IOAS_MAP", "args": {"flags": "IOMMU_IOAS_MAP_FIXED_IOVA|IOMMU_IOAS_MAP_READABLE", "ioas_id": "$id2", "user_va": "&b1", "length": 4096}, "expect": "ok"}
{"ioctl": "IOMMU_IOAS_COPY", "args": {"flags": "IOMMU_IOAS_MAP_FIXED_IOVA|IOMMU_IOAS_MAP_READABLE", "dst_ioas_id": "$id2", "src_ioas_id": "$id2", "length": 4096, "dst_iova": "0x10000"}, "expect": "ok"}
{"ioctl": "IOMMU_IOAS_ALLOC", "expect": "ok", "save": {"id4": "out_ioas_id"}}
{"ioctl": "IOMMU_IOAS_ALLOW_IOVAS", "args": {"ioas_id": "$id4", "allowed_iovas": [["0x100000", "0x1fffff"]]}, "expect": "ok"}
{"ioctl": "IOMMU_IOAS_UNMAP", "args": {"ioas_id": "$id2", "length": "0xffffffffffffffff"}, "expect": "ok"}
{"ioctl": "VFIO_DEVICE_DETACH_IOMMUFD_PT", "fd": "dmacopy0", "args": {"argsz": 8}, "expect": "ok"}
{"close": "dmacopy0"}
{"close": "fd"}
"#;

    #[test]
    fn every_iova_moves_and_fixed_windows_stay_clear_of_automatic_iovas() {
        let t = to_mock(SESSION2).unwrap();
        let has = |s: &str| assert!(t.contains(s), "{s} not in:\n{t}");
        // Windows [0, 4K), [64K, +4K), [1M, 2M) packed down from 2 GiB.
        has(
            r#""args": {"flags":"IOMMU_IOAS_MAP_FIXED_IOVA|IOMMU_IOAS_MAP_READABLE","ioas_id":"$id2","iova":"0x7fe00000","length""#,
        );
        has(r#""dst_iova":"0x7fe10000","#);
        has(r#""src_iova":"0x7fe00000""#);
        has(r#""allowed_iovas":[["0x7ff00000","0x7fffffff"]]"#);
        has(r#""note": "IOVA outside the session's moved windows, kept as recorded: iova 0x0""#);
        // The automatic map keeps no IOVA of its own.
        has(
            r#"{"ioctl": "IOMMU_IOAS_MAP", "args": {"flags":"IOMMU_IOAS_MAP_READABLE","ioas_id":"$id2","length":4096,"user_va":"&b1"}"#,
        );
        // The refused device calls are comments, not mock calls.
        has("# dmacopy0: VFIO_DEVICE_BIND_IOMMUFD failed with EBUSY on the device");
        has("# dmacopy0: VFIO_DEVICE_ATTACH_IOMMUFD_PT failed with ENOENT on the device");
        assert_eq!(t.matches("IOMMU_TEST_OP_MOCK_DOMAIN\"").count(), 1, "{t}");
        assert_eq!(
            t.matches("IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE").count(),
            2,
            "{t}"
        );
        // The automatic map takes the aperture's bottom; the fixed map's window is clear of it.
        run_on_selftest_daemon(SESSION2);
    }

    #[test]
    fn vfio_and_dirty_bitmap_iovas_move_with_their_window() {
        let s = r#"{"open": "iommu"}
{"ioctl": "VFIO_IOMMU_MAP_DMA", "args": {"argsz": 32, "flags": 3, "vaddr": "&b", "iova": "0x200000", "size": 8192}}
{"ioctl": "IOMMU_HWPT_GET_DIRTY_BITMAP", "args": {"hwpt_id": "$h", "iova": "0x201000", "length": 4096, "page_size": 4096, "data": "&out"}}
{"ioctl": "VFIO_IOMMU_UNMAP_DMA", "args": {"argsz": 24, "iova": "0x200000", "size": 8192}}
"#;
        let t = to_mock(s).unwrap();
        assert_eq!(t.matches(r#""iova":"0x7fe00000""#).count(), 2, "{t}");
        assert_eq!(t.matches(r#""iova":"0x7fe01000""#).count(), 1, "{t}");
    }

    #[test]
    fn a_device_open_needs_its_own_name() {
        for open in [
            r#"{"open": "device:d"}"#,
            r#"{"open": "device:d", "as": "fd"}"#,
        ] {
            let e = to_mock(&format!("{{\"open\": \"iommu\"}}\n{open}\n")).unwrap_err();
            assert!(e.starts_with("line 2:") && e.contains("\"as\""), "{e}");
        }
    }

    #[test]
    fn other_device_ioctls_are_refused() {
        let s = "{\"open\": \"device:d\", \"as\": \"d\"}\n{\"ioctl\": \"0x3b6e\", \"fd\": \"d\"}\n";
        assert!(to_mock(s).unwrap_err().starts_with("line 2:"));
    }
}
