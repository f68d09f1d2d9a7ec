//! mount(2) of the FUSE filesystem, stale-mount cleanup and the `--bind-dev` bind mounts.

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

/// The mount source we use; mountinfo lists it, which is how we recognise our own (stale) mounts.
pub const SOURCE: &str = "uiommufd";

/// One line of /proc/self/mountinfo, the fields we need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space and so on).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            // \400 and above are no byte: kept as written.
            let Ok(byte) = u8::try_from(v) else {
                out.push(b[i]);
                i += 1;
                continue;
            };
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next()?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype: fstype.to_string(),
                source: unescape(source),
            })
        })
        .collect()
}

fn mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// An absolute form of `p` that does not touch the filesystem (a dead mount cannot be canonicalized).
pub fn absolute(p: &Path) -> io::Result<PathBuf> {
    std::path::absolute(p)
}

fn is_ours(e: &MountEntry) -> bool {
    e.source == SOURCE && (e.fstype == "fuse" || e.fstype.starts_with("fuse."))
}

/// Detaches whatever of ours (or whatever dead FUSE mount) sits at `target`, stacked ones included.
pub fn cleanup_stale(target: &Path) -> io::Result<()> {
    for _ in 0..16 {
        // ECONNABORTED: a request that was waiting on the dead server's io_uring queue.
        let dead = matches!(std::fs::metadata(target),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)));
        let ours = mounts()
            .iter()
            .any(|e| e.mount_point == target && is_ours(e));
        if !dead && !ours {
            return Ok(());
        }
        tracing::warn!(path = %target.display(), dead, "detaching a stale mount");
        umount2(target, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
    }
    Err(io::Error::other(format!(
        "{}: too many stacked mounts",
        target.display()
    )))
}

/// Mounts the FUSE filesystem served on `fd` at `target` (which must exist).
pub fn mount_fuse(fd: RawFd, target: &Path) -> io::Result<()> {
    // default_permissions: the kernel checks opens against the files' mode and owner.
    let data =
        format!("fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions");
    mount(
        Some(SOURCE),
        target,
        Some("fuse"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("mount fuse at {}: {e}", target.display()),
        )
    })
}

/// Lazily unmounts `target`; a target that is no longer mounted is fine.
pub fn unmount(target: &Path) -> io::Result<()> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// A bind mount of a node file over a /dev path, and what was created to make room for it.
#[derive(Debug)]
pub struct BindMount {
    target: PathBuf,
    created_file: bool,
    created_dirs: Vec<PathBuf>,
}

impl BindMount {
    /// Bind-mounts `source` over `target`, creating an empty file and missing parents first.
    pub fn new(source: &Path, target: &Path) -> io::Result<Self> {
        let mut created_dirs = Vec::new();
        if let Some(parent) = target.parent() {
            let mut missing = Vec::new();
            let mut p = parent;
            while !p.exists() {
                missing.push(p.to_path_buf());
                match p.parent() {
                    Some(q) => p = q,
                    None => break,
                }
            }
            for d in missing.into_iter().rev() {
                std::fs::create_dir(&d)?;
                created_dirs.push(d);
            }
        }
        let mut bind = BindMount {
            target: target.to_path_buf(),
            created_file: false,
            created_dirs,
        };
        if std::fs::symlink_metadata(target).is_err() {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(target)?;
            bind.created_file = true;
        }
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("bind {} over {}: {e}", source.display(), target.display()),
            )
        })?;
        tracing::info!(source = %source.display(), target = %target.display(), "bind-mounted");
        Ok(bind)
    }

    /// Unmounts and removes what [`BindMount::new`] created (also done on drop).
    pub fn undo(mut self) -> io::Result<()> {
        self.undo_inner()
    }

    fn undo_inner(&mut self) -> io::Result<()> {
        if self.target.as_os_str().is_empty() {
            return Ok(());
        }
        let r = unmount(&self.target);
        if self.created_file {
            let _ = std::fs::remove_file(&self.target);
        }
        for d in self.created_dirs.drain(..).rev() {
            let _ = std::fs::remove_dir(&d);
        }
        self.target = PathBuf::new();
        r
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        if let Err(e) = self.undo_inner() {
            tracing::warn!(error = %e, "undoing a bind mount");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let text =
            "36 35 98:0 /mnt1 /mnt\\040dir rw,noatime master:1 - fuse uiommufd rw,user_id=0\n\
                    garbage line\n\
                    37 35 0:5 / /dev rw - devtmpfs udev rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt dir"));
        assert!(is_ours(&m[0]));
        assert!(!is_ours(&m[1]));
        assert_eq!(unescape("a\\04"), "a\\04");
    }
}
