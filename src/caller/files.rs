//! What kind of file backs a caller's memory or fd (shmem, hugetlbfs, anything else), judged
//! without any call a FUSE server could stall: what the kernel's memfd_pin_folios() could pin.
//! Here, beneath the io_pagetable that pins such files and the sharing checks that refuse others.

use nix::errno::Errno;
use std::os::fd::BorrowedFd;

const PAGE_SIZE: u64 = 4096;

/// What the kernel's memfd_pin_folios() can pin: shmem files (memfd, tmpfs) and hugetlbfs files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Shmem,
    /// hugetlbfs, with its huge page size (transient mappings are aligned to it).
    Hugetlb(u64),
    /// Anything else. The kernel accepts such a map and fails every pin of it with EINVAL; so
    /// does the daemon, without keeping the file open at all.
    Unsupported,
}

/// Identity of an open file for sharing one daemon fd: device, inode, and whether the fd may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    dev: (u32, u32),
    ino: u64,
    pub writable: bool,
}

/// What IOAS_MAP_FILE learns about a client's file, without any call a FUSE server could stall
/// (statx with AT_STATX_DONT_SYNC, fcntl, and /proc lookups only).
#[derive(Debug, Clone, Copy)]
pub struct FileInfo {
    pub kind: FileKind,
    pub key: FileKey,
    /// Opened for writing (the kernel's FMODE_WRITE).
    pub fd_writable: bool,
    /// A memfd sealed against writes (F_SEAL_WRITE): the kernel's mapping_map_writable() fails.
    pub write_sealed: bool,
}

const TMPFS_NAME: &str = "tmpfs";
const HUGETLBFS_NAME: &str = "hugetlbfs";

/// Classifies `fd`; EBADF for an O_PATH fd (the kernel's fget() refuses those).
pub fn inspect_file(fd: BorrowedFd<'_>, caller_pid: i32) -> Result<FileInfo, Errno> {
    let fl = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).map_err(|_| Errno::EBADF)?;
    if fl & libc::O_PATH != 0 {
        return Err(Errno::EBADF);
    }
    let acc = fl & libc::O_ACCMODE;
    let fd_writable = acc == libc::O_WRONLY || acc == libc::O_RDWR;
    let readable = acc == libc::O_RDONLY || acc == libc::O_RDWR;
    use rustix::fs::{AtFlags, StatxFlags};
    let st = rustix::fs::statx(
        fd,
        c"",
        AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC,
        StatxFlags::TYPE | StatxFlags::INO,
    )
    .map_err(|_| Errno::EBADF)?;
    let dev = (st.stx_dev_major, st.stx_dev_minor);
    let regular = u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFREG;
    // The daemon maps the file to reach it: an fd without read access is treated as unsupported.
    let kind = if regular && readable {
        kind_of_dev(dev, caller_pid, u64::from(st.stx_blksize))
    } else {
        FileKind::Unsupported
    };
    // F_GET_SEALS answers EINVAL for files that cannot be sealed.
    let seals = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GET_SEALS).unwrap_or(0);
    Ok(FileInfo {
        kind,
        key: FileKey {
            dev,
            ino: st.stx_ino,
            writable: fd_writable,
        },
        fd_writable,
        write_sealed: seals & libc::F_SEAL_WRITE != 0,
    })
}

impl FileInfo {
    /// Device (major, minor) of the file.
    pub fn dev(&self) -> (u32, u32) {
        self.key.dev
    }

    pub fn inode(&self) -> u64 {
        self.key.ino
    }
}

/// Whether files of device `dev` are shmem or hugetlbfs files, judged before opening any (an open
/// of a FUSE file would ask its server).
pub fn dev_is_pinnable(dev: (u32, u32), caller_pid: i32) -> bool {
    // Any power-of-two block size passes the hugetlbfs check; the open file decides the size.
    !matches!(
        kind_of_dev(dev, caller_pid, PAGE_SIZE),
        FileKind::Unsupported
    )
}

/// Devices of the kernel's internal memfd mounts (shmem, and hugetlbfs per huge page size), which
/// no mountinfo lists; learnt once by creating memfds of our own.
fn memfd_devices() -> &'static [((u32, u32), FileKind)] {
    static DEVS: std::sync::OnceLock<Vec<((u32, u32), FileKind)>> = std::sync::OnceLock::new();
    DEVS.get_or_init(|| {
        use nix::sys::memfd::{memfd_create, MFdFlags};
        let probes = [
            MFdFlags::MFD_CLOEXEC,
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_HUGETLB,
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_HUGETLB | MFdFlags::MFD_HUGE_2MB,
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_HUGETLB | MFdFlags::MFD_HUGE_1GB,
        ];
        let mut out = Vec::new();
        for flags in probes {
            let Ok(fd) = memfd_create(c"uiommufd-probe", flags) else {
                continue;
            };
            let Ok(st) = rustix::fs::statx(
                &fd,
                c"",
                rustix::fs::AtFlags::EMPTY_PATH,
                rustix::fs::StatxFlags::TYPE,
            ) else {
                continue;
            };
            let kind = if flags.contains(MFdFlags::MFD_HUGETLB) {
                FileKind::Hugetlb(u64::from(st.stx_blksize))
            } else {
                FileKind::Shmem
            };
            out.push(((st.stx_dev_major, st.stx_dev_minor), kind));
        }
        out
    })
}

/// The file system type of device `dev` as mounted in the daemon's or the caller's namespace.
fn kind_of_dev(dev: (u32, u32), caller_pid: i32, blksize: u64) -> FileKind {
    if let Some((_, kind)) = memfd_devices().iter().find(|(d, _)| *d == dev) {
        return *kind;
    }
    let want = format!("{}:{}", dev.0, dev.1);
    for who in ["self".to_string(), caller_pid.to_string()] {
        let Ok(info) = std::fs::read_to_string(format!("/proc/{who}/mountinfo")) else {
            continue;
        };
        for line in info.lines() {
            if line.split(' ').nth(2) != Some(want.as_str()) {
                continue;
            }
            let fstype = line
                .split_once(" - ")
                .and_then(|(_, rest)| rest.split(' ').next());
            return match fstype {
                Some(TMPFS_NAME) => FileKind::Shmem,
                Some(HUGETLBFS_NAME) if blksize.is_power_of_two() && blksize >= PAGE_SIZE => {
                    FileKind::Hugetlb(blksize)
                }
                _ => FileKind::Unsupported,
            };
        }
    }
    FileKind::Unsupported
}
