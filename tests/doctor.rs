//! `uiommufd doctor` on this machine, as the real binary. What it must say is derived from the
//! host's own files (on CI: FUSE, no CUSE, no IOMMU, no VFIO), so the test checks the report
//! against the machine rather than against a fixed text.

use std::path::Path;
use std::process::Command;

struct Report {
    code: i32,
    lines: Vec<String>,
}

impl Report {
    /// The lines of `level` on `topic` (`LEVEL  TOPIC: text`).
    fn lines(&self, level: &str, topic: &str) -> Vec<&str> {
        let prefix = format!("{level:<4}  {topic}: ");
        self.lines
            .iter()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| &l[prefix.len()..])
            .collect()
    }

    fn has(&self, level: &str, topic: &str, text: &str) -> bool {
        self.lines(level, topic).iter().any(|l| l.contains(text))
    }
}

fn doctor(args: &[&str]) -> Report {
    let out = Command::new(env!("CARGO_BIN_EXE_uiommufd"))
        .arg("doctor")
        .args(args)
        .output()
        .expect("run uiommufd doctor");
    let text = String::from_utf8(out.stdout).expect("utf-8 report");
    println!("{text}");
    Report {
        code: out.status.code().expect("doctor exits normally"),
        lines: text.lines().map(str::to_string).collect(),
    }
}

fn iommu_enabled() -> bool {
    std::fs::read_dir("/sys/class/iommu").is_ok_and(|mut d| d.next().is_some())
}

#[test]
fn fuse_mode_on_this_machine_can_serve() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "the tests need /dev/fuse (and root)"
    );
    let r = doctor(&["--transport", "fuse"]);
    assert_eq!(r.code, 0, "{:#?}", r.lines);
    assert_eq!(
        r.lines.last().map(String::as_str),
        Some("result: serve can work with these options")
    );
    assert!(r.has("ok", "fuse", "/dev/fuse opens"));
    assert!(r.has("ok", "privileges", "CAP_SYS_ADMIN"));
    if Path::new("/dev/cuse").exists() {
        assert!(r.has("ok", "cuse", "/dev/cuse opens"));
    } else {
        assert!(
            r.has("note", "cuse", "no /dev/cuse")
                && r.has("note", "cuse", "serve uses FUSE files /run/uiommufd/iommu"),
            "{:#?}",
            r.lines
        );
    }
    if iommu_enabled() {
        assert!(r.has("ok", "iommu", "enabled"));
    } else {
        assert!(
            r.has(
                "warn",
                "iommu",
                "no IOMMU enabled (/sys/class/iommu is empty)"
            ),
            "{:#?}",
            r.lines
        );
    }
    if !Path::new("/sys/module/vfio").exists() {
        let vfio = r.lines("warn", "vfio");
        assert_eq!(
            vfio.len(),
            1,
            "one line says VFIO is missing: {:#?}",
            r.lines
        );
        assert!(
            vfio[0].starts_with("the kernel has no vfio") || vfio[0].contains("modprobe -a vfio "),
            "{}",
            vfio[0]
        );
    }
    assert_eq!(r.lines("note", "memlock").len(), 1);
    assert!(r.lines.iter().any(|l| l.contains("  qemu: ")));
    assert!(!r.lines.iter().any(|l| l.starts_with("FAIL")));
}

#[test]
fn a_device_that_is_not_on_vfio_pci_fails_with_the_reason() {
    let bdf = "0000:00:04.0";
    let dev = Path::new("/sys/bus/pci/devices").join(bdf);
    let r = doctor(&["--transport", "fuse", "--vfio", bdf]);
    assert_eq!(r.code, 1, "{:#?}", r.lines);
    assert_eq!(
        r.lines
            .last()
            .map(String::as_str)
            .unwrap_or("")
            .split(" (")
            .next(),
        Some("result: serve cannot work with these options")
    );
    let topic = format!("--vfio {bdf}");
    let fails = r.lines("FAIL", &topic);
    assert!(!fails.is_empty(), "{:#?}", r.lines);
    match std::fs::read_link(dev.join("driver")) {
        _ if !dev.exists() => assert!(r.has("FAIL", &topic, "no such PCI device")),
        Ok(d) => {
            let d = d.file_name().unwrap().to_string_lossy().into_owned();
            assert_ne!(
                d, "vfio-pci",
                "this test expects {bdf} not to be on vfio-pci"
            );
            assert!(
                r.has(
                    "FAIL",
                    &topic,
                    &format!("bound to {d}, not vfio-pci: modprobe vfio-pci;")
                ),
                "{:#?}",
                r.lines
            );
        }
        Err(_) => assert!(r.has("FAIL", &topic, "bound to no driver, not vfio-pci")),
    }
    if dev.exists() && !iommu_enabled() {
        assert!(r.has("FAIL", &topic, "no IOMMU group"));
        assert!(r.has("FAIL", "iommu", "no IOMMU enabled"));
    }
}

#[test]
fn cuse_asked_for_without_cuse_fails() {
    let r = doctor(&["--transport", "cuse"]);
    let cuse = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/cuse")
        .is_ok();
    if cuse {
        assert!(r.has("ok", "cuse", "/dev/cuse opens"));
    } else {
        assert_eq!(r.code, 1, "{:#?}", r.lines);
        assert!(r.has("FAIL", "cuse", "--transport cuse needs /dev/cuse"));
    }
}

#[test]
fn bad_addresses_are_refused_by_the_parser() {
    let out = Command::new(env!("CARGO_BIN_EXE_uiommufd"))
        .args(["doctor", "--vfio", "00:04.0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad PCI address"));
}
