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
//!   outside which the mock's domain reserves the IOVA space): the IOVA windows the session uses
//!   (maps and unmaps at fixed IOVAs, merged where they overlap or touch) are laid out one after the
//!   other from the aperture's start, each keeping its offset within 2 MiB, so maps stay as
//!   contiguous and as aligned as they were. A session whose windows do not fit keeps its IOVAs.

use serde_json::{Map, Value};
use std::fmt::Write as _;

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
                let handle = s.get("as").and_then(Value::as_str).unwrap_or("fd");
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
            device_step(&mut out, &h, &name, &s).map_err(|m| err(&m))?;
            continue;
        }
        if DEVICE_ANSWERS.contains(&name.as_str()) {
            s.remove("out");
        }
        let span = fixed_span(&s);
        if let (Some(r), Some((iova, _)), Some(Value::Object(args))) =
            (&reloc, span, s.get_mut("args"))
        {
            if let Some(to) = r.map(iova) {
                args.insert("iova".into(), hex(to));
            }
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

/// The IOVA span `[start, end)` a step maps or unmaps at a fixed IOVA (an absent `iova` is 0);
/// None for other steps, IOVAs through variables, and spans larger than the aperture (unmap all).
fn fixed_span(s: &Map<String, Value>) -> Option<(u64, u64)> {
    let args = s.get("args")?.as_object()?;
    let fixed = match s.get("ioctl")?.as_str()? {
        "IOMMU_IOAS_MAP" | "IOMMU_IOAS_MAP_FILE" => args
            .get("flags")
            .and_then(Value::as_str)
            .is_some_and(|f| f.contains("IOMMU_IOAS_MAP_FIXED_IOVA")),
        "IOMMU_IOAS_UNMAP" => true,
        _ => false,
    };
    let iova = args.get("iova").map_or(Some(0), number)?;
    let len = args.get("length").and_then(number)?;
    (fixed && len > 0 && len <= APERTURE_LAST - APERTURE_START + 1)
        .then(|| Some((iova, iova.checked_add(len)?)))
        .flatten()
}

/// Where the session's fixed IOVA windows go: (original start, length, new start).
struct Relocation {
    windows: Vec<(u64, u64, u64)>,
}

impl Relocation {
    /// None when the session uses no fixed IOVA, or its windows do not fit the aperture.
    fn of<'a>(steps: impl Iterator<Item = &'a Map<String, Value>>) -> Option<Self> {
        let merged = super::merge_spans(steps.filter_map(fixed_span).collect());
        let mut cursor = APERTURE_START;
        let mut windows = Vec::new();
        for (s, e) in merged {
            // The first address from the cursor on with the window's offset within KEEP_ALIGN.
            let mut base = cursor - cursor % KEEP_ALIGN + s % KEEP_ALIGN;
            if base < cursor {
                base += KEEP_ALIGN;
            }
            let end = base.checked_add(e - s)?;
            if end - 1 > APERTURE_LAST {
                return None;
            }
            windows.push((s, e - s, base));
            cursor = end;
        }
        (!windows.is_empty()).then_some(Self { windows })
    }

    fn map(&self, iova: u64) -> Option<u64> {
        self.windows
            .iter()
            .find(|(s, l, _)| iova >= *s && iova - s < *l)
            .map(|(s, _, to)| to + (iova - s))
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
        // Windows [0, 4K) and [0xfffc0000, +8K): 16 MiB, then the next 2 MiB step + 0x1c0000.
        has(r#""iova":"0x1000000""#);
        has(r#""iova":"0x11c0000""#);
        assert_eq!(steps.len(), 13);
    }

    #[test]
    fn runs_on_the_in_process_selftest_daemon() {
        let steps = crate::replay::script::parse(&to_mock(SESSION).unwrap()).unwrap();
        let daemon = crate::dispatch::Daemon::new(crate::dispatch::extensions::daemon_extensions());
        let mode = crate::replay::Mode::InProcess(std::sync::Arc::new(
            crate::dispatch::DaemonService(daemon),
        ));
        crate::replay::exec::run_traced(&mode, &steps, None)
            .unwrap_or_else(|f| panic!("{}: {}", f.line, f.msg));
    }

    #[test]
    fn other_device_ioctls_are_refused() {
        let s = "{\"open\": \"device:d\", \"as\": \"d\"}\n{\"ioctl\": \"0x3b6e\", \"fd\": \"d\"}\n";
        assert!(to_mock(s).unwrap_err().starts_with("line 2:"));
    }
}
