//! Interrupts through the daemon's node: the client's own eventfd, handed over with
//! VFIO_DEVICE_SET_IRQS, is signalled by the kernel when edu raises its interrupt (INTx, then
//! MSI); the daemon only forwards the setup.

use crate::edu::Device;
use crate::iommufd::{Bound, Iommufd};
use crate::report::Report;
use crate::sys::{wait_readable, Res};
use crate::Nodes;
use nix::errno::Errno;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Duration;
use uiommufd_uapi::vfio::*;

/// How long an interrupt may take to reach the eventfd.
const IRQ_DEADLINE: Duration = Duration::from_secs(2);

/// A new non-blocking eventfd with count 0.
fn eventfd() -> Res<File> {
    // SAFETY: a plain syscall creating a new descriptor.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(format!("eventfd: {}", Errno::last()));
    }
    // SAFETY: the kernel just returned this new fd to us; nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The eventfd's count (reading resets it); EAGAIN when it is 0.
fn count(efd: &File) -> Result<u64, std::io::Error> {
    let mut b = [0u8; 8];
    (&*efd).read_exact(&mut b)?;
    Ok(u64::from_ne_bytes(b))
}

/// GET_IRQ_INFO of `index`: one vector, signalled by an eventfd.
fn info(dev: &Device, index: u32) -> Res<()> {
    let i = dev.irq_info(index)?;
    println!("irq: index {index} flags {:#x} count {}", i.flags, i.count);
    if i.count == 1 && i.flags & VFIO_IRQ_INFO_EVENTFD != 0 {
        Ok(())
    } else {
        Err(format!(
            "index {index}: count {} flags {:#x}, expected count 1 with EVENTFD",
            i.count, i.flags
        ))
    }
}

/// With `efd` set as the trigger of `index`: quiet before, then edu raises `bits` and the
/// eventfd counts at least one interrupt within the deadline; edu's status shows the bits.
fn fire(dev: &Device, efd: &File, bits: u32) -> Res<()> {
    match count(efd) {
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
        Ok(n) => return Err(format!("eventfd counted {n} before edu raised anything")),
        Err(e) => return Err(format!("eventfd read: {e}")),
    }
    dev.raise_irq(bits)?;
    let status = dev.irq_status()?;
    if status & bits != bits {
        return Err(format!("edu status {status:#x} after raising {bits:#x}"));
    }
    wait_readable(efd, IRQ_DEADLINE).map_err(|e| format!("eventfd: {e}"))?;
    let n = count(efd).map_err(|e| format!("eventfd read: {e}"))?;
    println!("irq: eventfd counted {n} after raising {bits:#x}");
    if n >= 1 {
        Ok(())
    } else {
        Err(format!("eventfd count {n}"))
    }
}

pub fn interrupts(r: &mut Report, n: &Nodes) {
    let fd = step!(r, "irq-open", Iommufd::open(&n.iommu));
    let ioas = step!(r, "irq-ioas", fd.ioas_alloc());
    let b = step!(r, "irq-bind", Bound::open(&n.dev, &fd, None));
    step!(r, "irq-attach", b.attach(ioas));
    // Bus mastering on (edu's MSI is a memory write of the device).
    let dev = step!(r, "irq-regions", b.edu());
    for (index, name, bits) in [
        (VFIO_PCI_INTX_IRQ_INDEX, "intx", 0x1u32),
        (VFIO_PCI_MSI_IRQ_INDEX, "msi", 0x100),
    ] {
        step!(r, &format!("irq-info-{name}"), info(&dev, index));
        let efd = step!(r, &format!("irq-{name}-eventfd"), eventfd());
        step!(
            r,
            &format!("irq-{name}-enable"),
            dev.set_irq_trigger(index, Some(efd.as_raw_fd()))
        );
        let fired = fire(&dev, &efd, bits);
        // Acked and torn down whatever happened, so the next index starts clean.
        let ack = dev.ack_irq(bits).and_then(|()| match dev.irq_status()? {
            0 => Ok(()),
            s => Err(format!("edu status {s:#x} after the ack")),
        });
        let off = dev.set_irq_trigger(index, None);
        step!(r, &format!("irq-{name}-reaches-eventfd"), fired);
        step!(r, &format!("irq-{name}-ack"), ack);
        step!(r, &format!("irq-{name}-disable"), off);
    }
}
