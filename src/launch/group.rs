//! The legacy VFIO container path: the program's own IOMMU group joins the daemon's compat node.
//!
//! VFIO_GROUP_SET_CONTAINER on a kernel group file, naming a file of a uiommufd mount
//! (`<mount>/vfio/vfio`, which the program got for `/dev/vfio/vfio` from [`super::open`], or
//! `<mount>/iommu`), cannot work in the kernel: the container is not the kernel's. The supervisor
//! hands both files to the daemon ([`crate::devices::legacy_group`]), which puts the group in a
//! kernel container of its own mirroring the context's compat IOAS, and relays the daemon's
//! answer. VFIO_GROUP_UNSET_CONTAINER of such a group goes to the same daemon. Every other group
//! call (GET_STATUS, GET_DEVICE_FD) and every group the daemon did not take runs in the kernel
//! unchanged.

use super::device::{ask_daemon, FUSE_SUPER_MAGIC};
use super::notification::target_fd;
use super::notification::{Notification, Reply};
use crate::backends::vfio::host::group_number;
use crate::caller::{CallerMemory, ProcessMemory};
use crate::devices::handout::{REQUEST_SET_CONTAINER, REQUEST_UNSET_CONTAINER};
use nix::errno::Errno;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;

/// A group the daemon took for the program (by number: a group can be open only once, so the
/// number names the program's very file; keeping a duplicate would keep the group busy), and the
/// mount of that daemon.
struct Joined {
    group: u32,
    mount: PathBuf,
}

/// The groups joined through this supervisor (the launcher is its own process).
static JOINED: Mutex<Vec<Joined>> = Mutex::new(Vec::new());

/// The mount of a uiommufd container or iommufd node file: `<mount>/vfio/vfio` or
/// `<mount>/iommu` on FUSE.
fn container_mount(file: BorrowedFd<'_>) -> Option<PathBuf> {
    let fs = nix::sys::statfs::fstatfs(file).ok()?;
    if fs.filesystem_type().0 as i64 != FUSE_SUPER_MAGIC {
        return None;
    }
    let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    if path.ends_with("vfio/vfio") {
        Some(path.parent()?.parent()?.to_path_buf())
    } else if path.file_name()? == "iommu" {
        Some(path.parent()?.to_path_buf())
    } else {
        None
    }
}

/// The program's group file and its number, if `n`'s fd is one.
fn program_group(n: &Notification<'_>) -> Option<(OwnedFd, u32)> {
    let group = target_fd(n, n.fd()).ok()?;
    let number = group_number(group.as_fd()).ok()?;
    Some((group, number))
}

/// VFIO_GROUP_SET_CONTAINER: see the module documentation.
pub fn set_container(n: &Notification<'_>) -> Reply {
    let Some((group, number)) = program_group(n) else {
        return Reply::Continue;
    };
    let Ok(mem) = ProcessMemory::new(n.tid) else {
        return Reply::Continue;
    };
    let mut raw = [0u8; 4];
    if mem.read(n.args[2], &mut raw).is_err() {
        return Reply::Continue;
    }
    // A bad fd: the kernel's own EBADF.
    let Ok(container) = target_fd(n, i32::from_ne_bytes(raw)) else {
        return Reply::Continue;
    };
    let Some(mount) = container_mount(container.as_fd()) else {
        return Reply::Continue;
    };
    if !n.valid() {
        return Reply::Gone;
    }
    match ask_daemon(
        &mount,
        REQUEST_SET_CONTAINER,
        &[container.as_fd(), group.as_fd()],
    ) {
        Ok(_) => {
            tracing::debug!(tid = n.tid, mount = %mount.display(), "group joined the daemon's container");
            JOINED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Joined {
                    group: number,
                    mount,
                });
            Reply::Value(0)
        }
        Err(e) => {
            tracing::debug!(tid = n.tid, %e, "the daemon did not take the group");
            Reply::Error(e)
        }
    }
}

/// VFIO_GROUP_UNSET_CONTAINER of a group the daemon took: the daemon's answer.
pub fn unset_container(n: &Notification<'_>) -> Reply {
    let Some((group, number)) = program_group(n) else {
        return Reply::Continue;
    };
    let mount = {
        let joined = JOINED.lock().unwrap_or_else(|p| p.into_inner());
        match joined.iter().find(|j| j.group == number) {
            Some(j) => j.mount.clone(),
            None => return Reply::Continue,
        }
    };
    let answer = ask_daemon(&mount, REQUEST_UNSET_CONTAINER, &[group.as_fd()]);
    if !matches!(answer, Err(Errno::EBUSY)) {
        JOINED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|j| j.group != number);
    }
    match answer {
        Ok(_) => Reply::Value(0),
        // The daemon let go of it already (its context closed): the kernel answers.
        Err(Errno::ENOENT) => Reply::Continue,
        Err(e) => Reply::Error(e),
    }
}
