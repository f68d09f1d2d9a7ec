//! The legacy VFIO path's plumbing on a host without VFIO hardware: under `uiommufd launch
//! --mount M`, a program's open of `/dev/vfio/vfio` gets the daemon's compat node `M/vfio/vfio`
//! (the kernel's own container is never touched), other opens are untouched, and group ioctls on
//! files that are not VFIO groups keep the kernel's answers. The daemon's hand-out socket refuses
//! join requests whose files are not what they claim. (The real group joining a container is
//! shown in the VFIO guest, `scripts/vfio-guest.sh`, with QEMU's `host=BDF`.)

mod support;

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd};
use std::os::linux::fs::MetadataExt;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use support::{ioctl_raw, launch_role, DaemonProcess};
use uiommufd_uapi::vfio::*;

const ROLE_ENV: &str = "UIOMMUFD_REDIRECT_ROLE_MOUNT_DEV";

/// Under the launcher: returns 0 or the number of the step that went wrong.
fn program(mount_dev: u64) -> i32 {
    let Ok(c) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vfio/vfio")
    else {
        return 1;
    };
    if c.metadata().map(|m| m.st_dev()).ok() != Some(mount_dev) {
        return 2;
    }
    // The daemon's compat node answers the VFIO container API.
    if ioctl_raw(&c, VFIO_GET_API_VERSION, 0) != Ok(VFIO_API_VERSION as i32) {
        return 3;
    }
    if ioctl_raw(&c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU.into()) != Ok(1) {
        return 4;
    }
    // SAFETY: fcntl(F_GETFD) on our own fd only reads its flags.
    if unsafe { libc::fcntl(c.as_raw_fd(), libc::F_GETFD) } != libc::FD_CLOEXEC {
        return 5;
    }
    // Without O_CLOEXEC (std's open always adds it).
    // SAFETY: open(2) of a NUL-terminated literal path; the new fd is owned by `keep` below.
    let fd = unsafe { libc::open(c"/dev/vfio/vfio".as_ptr(), libc::O_RDWR) };
    if fd < 0 {
        return 6;
    }
    // SAFETY: `fd` was just returned by open and nothing else owns it.
    let keep = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: as above.
    if unsafe { libc::fcntl(keep.as_raw_fd(), libc::F_GETFD) } != 0
        || keep.metadata().map(|m| m.st_dev()).ok() != Some(mount_dev)
    {
        return 7;
    }
    // Any other open is the kernel's.
    let Ok(null) = File::open("/dev/null") else {
        return 8;
    };
    if null.metadata().map(|m| m.st_dev()).ok() == Some(mount_dev) {
        return 9;
    }
    if File::open("/dev/vfio/vfio-no-such")
        .err()
        .and_then(|e| e.raw_os_error())
        != Some(libc::ENOENT)
    {
        return 10;
    }
    // A group ioctl on a file that is no group: the kernel's answer, even naming our container.
    let raw = c.as_raw_fd();
    if ioctl_raw(&null, VFIO_GROUP_SET_CONTAINER, &raw as *const i32 as u64) != Err(libc::ENOTTY) {
        return 11;
    }
    if ioctl_raw(&null, VFIO_GROUP_UNSET_CONTAINER, 0) != Err(libc::ENOTTY) {
        return 12;
    }
    0
}

#[test]
#[ignore = "a role: run under the launcher by opens_of_the_vfio_container_get_the_compat_node"]
fn role_program() {
    let dev: u64 = std::env::var(ROLE_ENV)
        .expect("run by the parent test")
        .parse()
        .unwrap();
    std::process::exit(program(dev));
}

#[test]
fn opens_of_the_vfio_container_get_the_compat_node() {
    let d = DaemonProcess::start_plain(&[]);
    let dev = std::fs::metadata(d.node("vfio/vfio")).unwrap().st_dev();
    let dev = dev.to_string();
    let out = launch_role(
        &["--mount".as_ref(), d.mount.as_os_str()],
        "role_program",
        &[(ROLE_ENV, dev.as_ref())],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "program step failed; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = d.wait_idle();
    assert_eq!(s["contexts"].as_u64(), Some(0), "{s}");
}

/// One request on the daemon's hand-out socket: its errno word.
fn ask(mount: &std::path::Path, req: u8, fds: &[i32]) -> i32 {
    let name = format!("uiommufd-devices:{}", mount.display());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let conn = UnixStream::connect_addr(&addr).unwrap();
    nix::sys::socket::sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(&[req])],
        &[nix::sys::socket::ControlMessage::ScmRights(fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .unwrap();
    let mut word = [0u8; 4];
    assert_eq!(
        nix::sys::socket::recv(
            conn.as_raw_fd(),
            &mut word,
            nix::sys::socket::MsgFlags::empty()
        )
        .unwrap(),
        4
    );
    i32::from_ne_bytes(word)
}

#[test]
fn join_requests_with_the_wrong_files_are_refused() {
    let d = DaemonProcess::start_plain(&[]);
    let node = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.node("vfio/vfio"))
        .unwrap();
    let null = File::open("/dev/null").unwrap();
    let (n, z) = (node.as_fd().as_raw_fd(), null.as_fd().as_raw_fd());
    // Not a VFIO group (a character device of another class, the node itself).
    assert_eq!(ask(&d.mount, b'G', &[n, z]), libc::EBADF);
    assert_eq!(ask(&d.mount, b'G', &[n, n]), libc::EBADF);
    assert_eq!(ask(&d.mount, b'U', &[z]), libc::EBADF);
    // Wrong shapes: no fds, too many, an unknown request.
    assert_eq!(ask(&d.mount, b'G', &[n]), libc::EINVAL);
    assert_eq!(ask(&d.mount, b'U', &[]), libc::EINVAL);
    assert_eq!(ask(&d.mount, b'X', &[n]), libc::EINVAL);
    // The daemon is unharmed and its context unchanged by all of it.
    assert_eq!(
        ioctl_raw(&node, VFIO_GET_API_VERSION, 0),
        Ok(VFIO_API_VERSION as i32)
    );
    drop(node);
    let s = d.wait_idle();
    assert_eq!(s["objects"].as_u64(), Some(0), "{s}");
}
