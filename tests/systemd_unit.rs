//! scripts/uiommufd.service: `systemd-analyze verify` accepts it without a warning, and it keeps
//! the properties the daemon depends on (readiness by sd_notify, no mount namespace that would
//! hide the FUSE mount from clients, the device nodes it opens allowed).

mod support;

use std::path::Path;
use std::process::Command;

fn unit_text() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/uiommufd.service");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// (key, value) of every assignment in the unit, comments and section headers left out.
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn values<'a>(s: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    s.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn unit_keeps_what_the_daemon_needs() {
    let s = settings(&unit_text());
    assert_eq!(values(&s, "Type"), ["notify"]);
    assert_eq!(values(&s, "ExecStart"), ["/usr/bin/uiommufd serve"]);
    assert_eq!(values(&s, "Restart"), ["on-failure"]);
    // Each of these makes systemd run the service in a mount namespace whose mounts no longer
    // propagate to the host (systemd.exec(5)): clients would never see the FUSE mount. Others
    // take away what the daemon needs to reach its clients (other users' /proc, capabilities).
    for key in [
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateMounts",
        "PrivateUsers",
        "ReadWritePaths",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
        "BindPaths",
        "BindReadOnlyPaths",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectProc",
        "ProcSubset",
        "MountFlags",
        "RootDirectory",
        "DynamicUser",
        "User",
    ] {
        assert!(values(&s, key).is_empty(), "{key}= in the unit");
    }
    assert_eq!(values(&s, "DevicePolicy"), ["closed"]);
    let allowed = values(&s, "DeviceAllow");
    for dev in [
        "/dev/fuse rw",
        "/dev/cuse rw",
        "/dev/vfio/vfio rw",
        "char-vfio rw",
    ] {
        assert!(allowed.contains(&dev), "DeviceAllow={dev} missing");
    }
    let caps = values(&s, "CapabilityBoundingSet").join(" ");
    for cap in ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_IPC_LOCK"] {
        assert!(caps.split_whitespace().any(|c| c == cap), "{cap} not kept");
    }
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Some(analyze) = support::require_program(
        "systemd-analyze",
        "scripts/ci-install.sh installs the systemd package",
    ) else {
        return;
    };
    // The unit as shipped, except that ExecStart names the binary built here: verify checks that
    // the command exists and is executable.
    let text = unit_text();
    let shipped = "ExecStart=/usr/bin/uiommufd ";
    assert!(text.contains(shipped));
    let text = text.replace(
        shipped,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_uiommufd")),
    );
    let dir = std::env::temp_dir().join(format!("uiommufd-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("uiommufd.service");
    std::fs::write(&unit, text).unwrap();
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("run systemd-analyze verify");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed: {err}");
    // Unknown keys and unparsable values are only warnings (exit 0): none may appear.
    assert!(err.trim().is_empty(), "systemd-analyze verify warns: {err}");
}
