//! Under `uiommufd launch`: the device node's BIND is taken over by the supervisor, which puts the
//! kernel's own device fd in place of the node file. Checks that the program then holds a real VFIO
//! device file, that ATTACH still reaches uiommufd, that BAR0 maps (no FUSE in the way) and that
//! DMA lands in the program's memory.

use crate::edu::{region, EDU_ID};
use crate::iommufd::Bound;
use crate::report::Report;
use crate::sys::Res;
use crate::{mapped, roundtrip, Nodes, IOVA};
use std::os::fd::AsRawFd;
use uiommufd_uapi::vfio::*;

pub fn native(r: &mut Report, n: &Nodes) {
    let (fd, ioas, buf) = step!(r, "native-map", mapped(n));
    let b = step!(r, "native-bind", Bound::open(&n.dev, &fd, None));
    step!(r, "native-kernel-file", {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", b.file.as_raw_fd()));
        match link {
            Ok(l) if l.as_os_str() == "anon_inode:[vfio-device]" => Ok(()),
            Ok(l) => Err(format!(
                "the bound fd is {}, not the kernel's device",
                l.display()
            )),
            Err(e) => Err(format!("readlink: {e}")),
        }
    });
    step!(r, "native-attach", b.attach(ioas).map(drop));
    let bar0 = step!(
        r,
        "native-region",
        region(&b.file, VFIO_PCI_BAR0_REGION_INDEX)
    );
    step!(r, "native-bar0-mmap-flag", {
        if bar0.flags & VFIO_REGION_INFO_FLAG_MMAP != 0 {
            Ok(())
        } else {
            Err(format!("BAR0 flags {:#x}: no MMAP", bar0.flags))
        }
    });
    step!(
        r,
        "native-bar0-mmap",
        mmap_id(&b.file, bar0.offset, bar0.size)
    );
    let dev = step!(r, "native-regions", b.edu());
    step!(
        r,
        "native-dma",
        roundtrip(&dev, &buf, IOVA, 0, 0x10000, 0x71)
    );
}

/// Maps BAR0 and reads edu's identification register through the mapping.
fn mmap_id(file: &std::fs::File, offset: u64, size: u64) -> Res<()> {
    use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
    let len = std::num::NonZeroUsize::new(size as usize).ok_or("BAR0 of size 0")?;
    // SAFETY: a fresh shared mapping of the device's BAR0, read once below and unmapped here.
    let p = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            file,
            offset as i64,
        )
    }
    .map_err(|e| format!("mmap BAR0: {e}"))?;
    // SAFETY: the mapping is at least 4 bytes long (BAR0 is 1 MiB) and aligned; MMIO is read
    // with a volatile load.
    let id = unsafe { p.as_ptr().cast::<u32>().read_volatile() };
    // The register read latency through the mapping (the bench compares the node's pread).
    let times: Vec<std::time::Duration> = (0..200)
        .map(|_| {
            let t = std::time::Instant::now();
            // SAFETY: as above.
            let _ = unsafe { p.as_ptr().cast::<u32>().read_volatile() };
            t.elapsed()
        })
        .collect();
    println!(
        "BENCH bar0-read mmap median {:.9} s",
        crate::sys::median(times)
    );
    // SAFETY: unmapping our own mapping of `size` bytes.
    unsafe { munmap(p, size as usize) }.map_err(|e| format!("munmap: {e}"))?;
    if id == EDU_ID {
        Ok(())
    } else {
        Err(format!(
            "edu ID through the mapping {id:#x}, expected {EDU_ID:#x}"
        ))
    }
}
