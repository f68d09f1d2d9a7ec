//! Under `uiommufd launch`: the legacy container flow of a VFIO program (the baseline's, unchanged)
//! with `/dev/vfio/vfio` answered by the daemon's compat node, and the program's own group joined
//! to it by the daemon. DMA lands in the program's memfd; the group cannot leave while a device of
//! it is open (EBUSY, as the kernel), leaves when none is, has no device then, and joins again.

use crate::edu::Device;
use crate::report::Report;
use crate::sys::{Buffer, Res};
use crate::type1::Container;
use crate::{roundtrip, BUF_LEN, IOVA};
use nix::errno::Errno;
use std::os::fd::AsRawFd;

#[derive(clap::Args)]
pub struct LegacyArgs {
    /// The group file, /dev/vfio/N.
    group: String,
    /// The device in that group.
    #[arg(long)]
    bdf: String,
    /// The daemon's compat node the program's /dev/vfio/vfio must be.
    #[arg(long)]
    compat: String,
}

pub fn legacy(r: &mut Report, a: &LegacyArgs) {
    let c = step!(r, "legacy-container", Container::open(&a.group));
    step!(r, "legacy-container-is-the-daemons", {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", c.file().as_raw_fd()));
        match link {
            Ok(l) if l.as_os_str() == a.compat.as_str() => Ok(()),
            Ok(l) => Err(format!("/dev/vfio/vfio opened as {}", l.display())),
            Err(e) => Err(format!("readlink: {e}")),
        }
    });
    let buf = step!(r, "legacy-buffer", Buffer::shared(BUF_LEN));
    step!(r, "legacy-map", c.map(buf.addr(), IOVA, BUF_LEN as u64));
    let dev = step!(r, "legacy-device", open_edu(&c, &a.bdf));
    step!(
        r,
        "legacy-dma",
        roundtrip(&dev, &buf, IOVA, 0, 0x10000, 0x5a)
    );
    step!(
        r,
        "legacy-unset-busy",
        want_errno(
            "UNSET_CONTAINER with a device open",
            c.unset(),
            Errno::EBUSY
        )
    );
    drop(dev);
    step!(
        r,
        "legacy-unset",
        c.unset()
            .map(drop)
            .map_err(|e| format!("UNSET_CONTAINER: {e}"))
    );
    step!(r, "legacy-no-device-unset", {
        match c.device(&a.bdf) {
            Ok(_) => Err("VFIO_GROUP_GET_DEVICE_FD worked without a container".to_string()),
            Err(_) => Ok(()),
        }
    });
    step!(
        r,
        "legacy-set-again",
        c.set().map_err(|e| format!("SET_CONTAINER: {e}"))
    );
    // The IOAS kept its mapping: the group's new container mirrors it at once.
    let dev = step!(r, "legacy-device-again", open_edu(&c, &a.bdf));
    step!(
        r,
        "legacy-dma-again",
        roundtrip(&dev, &buf, IOVA, 0x20000, 0x30000, 0x6b)
    );
    // Done: the group leaves (and the daemon lets go of its file) before the program exits, so
    // the next program can open it at once.
    drop(dev);
    step!(
        r,
        "legacy-unset-at-end",
        c.unset()
            .map(drop)
            .map_err(|e| format!("UNSET_CONTAINER: {e}"))
    );
}

fn open_edu(c: &Container, bdf: &str) -> Res<Device> {
    let dev = Device::new(c.device(bdf)?, bdf)?;
    dev.enable_edu()?;
    Ok(dev)
}

fn want_errno(what: &str, got: Result<i32, Errno>, want: Errno) -> Res<()> {
    match got {
        Err(e) if e == want => Ok(()),
        other => Err(format!("{what}: {other:?}, expected {want}")),
    }
}
