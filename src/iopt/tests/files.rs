//! File-backed sources (IOAS_MAP_FILE): a client's file is never touched through a mapping, so a
//! truncation turns into an errno, never a SIGBUS; one daemon fd per distinct file.

use super::super::source::{held_files, inspect_file, FileKind, FileSource, SharedFile};
use super::*;
use std::os::fd::{AsFd, OwnedFd};

fn memfd(len: u64) -> OwnedFd {
    let fd = nix::sys::memfd::memfd_create(c"files-test", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .unwrap();
    nix::unistd::ftruncate(&fd, len as i64).unwrap();
    fd
}

fn shared(fd: &OwnedFd) -> Arc<SharedFile> {
    let info = inspect_file(fd.as_fd(), std::process::id() as i32).unwrap();
    assert_eq!(info.kind, FileKind::Shmem);
    SharedFile::share(fd.try_clone().unwrap(), &info).unwrap()
}

#[test]
fn truncated_file_gives_einval_not_sigbus() {
    let fd = memfd(4 * PG);
    let src = FileSource::new(Some(shared(&fd)), 0, 4 * PG, None);
    src.write(PG + 3, b"hello").unwrap();
    let mut buf = [0u8; 5];
    src.read(PG + 3, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    let paddrs = src.pin(0, 4, true).unwrap();
    assert!(paddrs.iter().all(|&p| p != 0 && p % PG == 0));

    nix::unistd::ftruncate(&fd, 0).unwrap();
    assert_eq!(src.pin(0, 4, false), Err(Errno::EINVAL));
    assert_eq!(src.read(0, &mut buf), Err(Errno::EINVAL));
    assert_eq!(src.write(0, b"x"), Err(Errno::EINVAL));
    // A write did not grow the file back.
    assert_eq!(nix::sys::stat::fstat(&fd).unwrap().st_size, 0);

    // Partly truncated: the pages still inside work, the rest is refused.
    nix::unistd::ftruncate(&fd, (2 * PG) as i64).unwrap();
    src.pin(0, 2, false).unwrap();
    assert_eq!(src.pin(1, 2, false), Err(Errno::EINVAL));
    src.read(2 * PG - 1, &mut buf[..1]).unwrap();
    assert_eq!(src.read(2 * PG - 1, &mut buf[..2]), Err(Errno::EINVAL));
}

#[test]
fn out_of_window_is_efault_and_unsupported_is_einval() {
    let fd = memfd(2 * PG);
    let src = FileSource::new(Some(shared(&fd)), PG, PG, None);
    let mut buf = [0u8; 2];
    assert_eq!(src.read(PG - 1, &mut buf), Err(Errno::EFAULT));
    let none = FileSource::new(None, 0, PG, None);
    assert_eq!(none.pin(0, 1, false), Err(Errno::EINVAL));
    assert_eq!(none.read(0, &mut buf), Err(Errno::EINVAL));
    assert_eq!(none.write(0, &buf), Err(Errno::EINVAL));
}

#[test]
fn regular_files_and_o_path_are_told_apart() {
    let dir = std::env::temp_dir().join(format!("uiommufd-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plain");
    std::fs::write(&path, [0u8; 4096]).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let info = inspect_file(f.as_fd(), std::process::id() as i32).unwrap();
    let tmp_is_tmpfs = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(" /tmp ") && l.contains(" - tmpfs "));
    if !tmp_is_tmpfs {
        assert_eq!(info.kind, FileKind::Unsupported);
    }
    assert!(!info.fd_writable);
    let p = nix::fcntl::open(
        &path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    assert_eq!(
        inspect_file(p.as_fd(), std::process::id() as i32).unwrap_err(),
        Errno::EBADF
    );
    // A directory on any file system is not a mappable file.
    let d = std::fs::File::open("/dev/shm").unwrap();
    assert_eq!(
        inspect_file(d.as_fd(), std::process::id() as i32)
            .unwrap()
            .kind,
        FileKind::Unsupported
    );
    // A regular file on a tmpfs mount is shmem.
    let shm =
        std::path::Path::new("/dev/shm").join(format!("uiommufd-files-{}", std::process::id()));
    std::fs::write(&shm, [0u8; 4096]).unwrap();
    let f = std::fs::File::open(&shm).unwrap();
    let kind = inspect_file(f.as_fd(), std::process::id() as i32)
        .unwrap()
        .kind;
    let _ = std::fs::remove_file(&shm);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(kind, FileKind::Shmem);
}

#[test]
fn one_daemon_fd_per_distinct_file() {
    let fd = memfd(PG);
    let a = shared(&fd);
    let held = held_files();
    let b = shared(&fd);
    assert!(Arc::ptr_eq(&a, &b), "the same file is shared");
    // Another memfd is another file.
    let other = memfd(PG);
    let c = shared(&other);
    assert!(!Arc::ptr_eq(&a, &c));
    assert!(held_files() >= held);
    assert_eq!(Arc::strong_count(&a), 2);
    drop((a, b, c));
    // Nothing stale is left registered: the next share holds a fresh file.
    let again = shared(&fd);
    assert_eq!(Arc::strong_count(&again), 1);
}

#[test]
fn write_sealed_memfd_is_reported() {
    let fd = nix::sys::memfd::memfd_create(
        c"files-sealed",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
    )
    .unwrap();
    nix::unistd::ftruncate(&fd, PG as i64).unwrap();
    let me = std::process::id() as i32;
    assert!(!inspect_file(fd.as_fd(), me).unwrap().write_sealed);
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_ADD_SEALS(nix::fcntl::SealFlag::F_SEAL_WRITE),
    )
    .unwrap();
    let info = inspect_file(fd.as_fd(), me).unwrap();
    assert!(info.write_sealed && info.fd_writable);
    assert_eq!(info.kind, FileKind::Shmem);
}

#[test]
fn hugetlb_memfd_without_huge_pages_fails_without_a_signal() {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let Ok(fd) = memfd_create(c"files-huge", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_HUGETLB) else {
        return; // no hugetlbfs in this kernel
    };
    let me = std::process::id() as i32;
    let info = inspect_file(fd.as_fd(), me).unwrap();
    let FileKind::Hugetlb(size) = info.kind else {
        panic!("hugetlb memfd seen as {:?}", info.kind);
    };
    assert!(size >= 2 << 20);
    nix::unistd::ftruncate(&fd, size as i64).unwrap();
    let src = FileSource::new(
        Some(SharedFile::share(fd.try_clone().unwrap(), &info).unwrap()),
        0,
        size,
        None,
    );
    let free: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let r = src.pin(1, 2, true);
    if free == 0 {
        assert_eq!(r, Err(Errno::ENOMEM));
    } else {
        r.unwrap();
    }
    // Past the end of the file: EINVAL, as for shmem.
    nix::unistd::ftruncate(&fd, 0).unwrap();
    assert_eq!(src.pin(0, 1, false), Err(Errno::EINVAL));
}

#[test]
fn a_pin_over_the_limit_allocates_nothing_in_the_file() {
    use super::super::accounting::{Account, AccountMode};
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
        .unwrap()
        .0;
    if limit == nix::sys::resource::RLIM_INFINITY || limit > (1 << 30) {
        return; // nothing to exceed
    }
    let len = (limit + 16 * PG).next_multiple_of(PG);
    let fd = memfd(len);
    let account = Account::fixed(AccountMode::User, 0xfff0_0002, 0xfff0_0002, limit);
    let src = Arc::new(FileSource::new(Some(shared(&fd)), 0, len, None));
    let pages = Pages::new(&Ledger::new(), src, 0, len, true, account).unwrap();
    assert_eq!(pages.pin(0, len / PG - 1, true), Err(Errno::ENOMEM));
    let st = nix::sys::stat::fstat(&fd).unwrap();
    assert_eq!(st.st_blocks, 0, "no page of the file was populated");
    assert_eq!(pages.npinned(), 0);
}

#[test]
fn the_daemon_view_of_a_file_is_bounded_by_the_area() {
    let fd = memfd(PG);
    let src = FileSource::new(Some(shared(&fd)), 0, 1 << 40, None);
    let runs = src.daemon_view(PG, PG, true).unwrap();
    let m = runs[0]
        .keep
        .downcast_ref::<crate::caller::shared::DaemonMapping>()
        .unwrap();
    assert_eq!(m.len(), PG);
    // A second view inside the kept one reuses it.
    let again = src.daemon_view(PG, PG, false).unwrap();
    assert_eq!(again[0].va, runs[0].va);
}
