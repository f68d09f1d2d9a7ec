//! The FUSE transport end to end over /dev/fuse (root only): the scenarios of
//! `common/fuse_scenarios.rs`, one test each.

#[path = "common/fuse_harness.rs"]
mod harness;
#[path = "common/fuse_scenarios.rs"]
mod scenarios;

use harness::*;
use scenarios::{finish, open_rw, ENTRY};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

/// Entry point of the child roles ([`spawn_role`] runs it by name), never a test of its own.
#[test]
#[ignore = "the child roles' entry point: run by the tests through spawn_role"]
fn child_entry() {
    scenarios::child_entry();
}

#[test]
fn fuse_client_round_trip() {
    scenarios::fuse_client_round_trip();
}

#[test]
fn concurrent_clients_both_progress() {
    scenarios::concurrent_clients_both_progress();
}

#[test]
fn sigkill_mid_ioctl_still_releases() {
    scenarios::sigkill_mid_ioctl_still_releases();
}

#[test]
fn shutdown_releases_open_files_and_unmounts() {
    scenarios::shutdown_releases_open_files_and_unmounts();
}

#[test]
fn stale_mount_of_killed_server_is_cleaned() {
    scenarios::stale_mount_of_killed_server_is_cleaned();
}

/// Touches the machine's /dev, so only on request: `cargo test -- --ignored bind_dev`.
#[test]
#[ignore]
fn bind_dev_covers_dev_nodes_and_is_undone() {
    let _serial = serial();
    init_logging();
    let dir = temp_dir("binddev");
    let had_iommu = Path::new("/dev/iommu").exists();
    let had_vfio_dir = Path::new("/dev/vfio").exists();
    let st = Arc::new(State::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut opts = fuse_options(&dir);
    opts.bind_dev = true;
    let t = rt
        .block_on(uiommufd::transport::Transport::start(
            &opts,
            Arc::new(TestService(st.clone())),
        ))
        .unwrap();
    assert!(is_mounted(Path::new("/dev/iommu")));
    assert!(is_mounted(Path::new("/dev/vfio/vfio")));
    finish(spawn_role(
        ENTRY,
        "inc",
        Path::new("/dev"),
        "",
        Stdio::null(),
    ));
    let f = open_rw(Path::new("/dev/vfio/vfio"));
    assert_eq!(ioctl(&f, NOP, 0), Ok(0));
    drop(f);
    rt.block_on(t.shutdown()).unwrap();
    assert!(!is_mounted(Path::new("/dev/iommu")));
    assert_eq!(Path::new("/dev/iommu").exists(), had_iommu);
    assert_eq!(Path::new("/dev/vfio").exists(), had_vfio_dir);
    std::fs::remove_dir(&dir).unwrap();
}
