//! `serve --config FILE`: the TOML file's keys are serve flags; the command line wins.

mod support;

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_file_sets_the_mount_and_the_context_cap() {
    let dir = std::env::temp_dir().join(format!("uiommufd-cfgtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mount = dir.join("mnt");
    let cfg = dir.join("uiommufd.toml");
    std::fs::write(
        &cfg,
        format!(
            "transport = \"fuse\"\nmount = \"{}\"\nmax-contexts-per-user = 1\nmemlock-mode = \"process\"\nmax-mappings-per-context = 2\ncontrol = \"{}\"\n",
            mount.display(),
            dir.join("control.sock").display()
        ),
    )
    .unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_uiommufd"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let node = mount.join("iommu");
    wait_for(&node);
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&node)
    };
    let first = open().expect("the first context");
    let second = open().expect_err("a second context over the cap of 1");
    assert_eq!(second.raw_os_error(), Some(libc::ENOMEM));
    // memlock-mode = "process" from the file: a new context reports RLIMIT_MODE 1.
    use std::os::fd::AsRawFd;
    use uiommufd_uapi::iommufd::*;
    let mut opt = iommu_option {
        size: size_of::<iommu_option>() as u32,
        option_id: IOMMU_OPTION_RLIMIT_MODE,
        op: IOMMU_OPTION_OP_GET,
        ..Default::default()
    };
    // SAFETY: IOMMU_OPTION reads and writes exactly `opt`, which lives across the call.
    let rc = unsafe {
        libc::ioctl(
            first.as_raw_fd(),
            libc::c_ulong::from(IOMMU_OPTION),
            &mut opt as *mut iommu_option,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(opt.val64, 1);
    // max-mappings-per-context = 2: the third mapping is ENOSPC (type1's dma_entry_limit errno).
    let ioas = support::ioas_alloc(&first);
    let mem = support::AnonPages::new(3);
    for k in 0..2u64 {
        support::ioas_map_at(
            &first,
            ioas,
            mem.addr() + k * 4096,
            4096,
            0x10_0000 + k * 0x1000,
            true,
        )
        .expect("a mapping under the limit");
    }
    assert_eq!(
        support::ioas_map_at(&first, ioas, mem.addr() + 2 * 4096, 4096, 0x20_0000, true),
        Err(libc::ENOSPC)
    );
    drop(first);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
    // An unknown key is refused like an unknown flag.
    std::fs::write(&cfg, "no-such-flag = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_uiommufd"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    let _ = std::fs::remove_dir_all(&dir);
}
