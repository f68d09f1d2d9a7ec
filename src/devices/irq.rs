//! Interrupts of an emulated VFIO PCI device: the VFIO_DEVICE_SET_IRQS state machine of
//! vfio-pci (INTx with automasking, MSI, the error and request notifiers) over eventfds fetched
//! from the caller.

use nix::errno::Errno;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use uiommufd_uapi::vfio::*;

/// Which interrupt kind is enabled (vfio-pci's `irq_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    None,
    Intx,
    Msi,
}

/// The data of one SET_IRQS call.
pub enum Data {
    None,
    Bool(Vec<u8>),
    /// Eventfds already fetched from the caller (`None` for -1).
    Eventfd(Vec<Option<OwnedFd>>),
}

/// Number of MSI vectors of the device.
pub const MSI_VECTORS: u32 = 1;

#[derive(Default)]
pub struct Irqs {
    mode: Mode,
    intx_trigger: Option<OwnedFd>,
    intx_masked: bool,
    msi: Vec<Option<OwnedFd>>,
    req: Option<OwnedFd>,
}

/// Counts of the device's interrupts per index (GET_IRQ_INFO and SET_IRQS bounds).
pub fn count(index: u32) -> u32 {
    match index {
        VFIO_PCI_INTX_IRQ_INDEX => 1,
        VFIO_PCI_MSI_IRQ_INDEX => MSI_VECTORS,
        VFIO_PCI_MSIX_IRQ_INDEX => 0,
        // A conventional PCI device: no AER error notifier.
        VFIO_PCI_ERR_IRQ_INDEX => 0,
        VFIO_PCI_REQ_IRQ_INDEX => 1,
        _ => 0,
    }
}

/// GET_IRQ_INFO flags of an index, None where vfio-pci answers EINVAL.
pub fn info_flags(index: u32) -> Option<u32> {
    match index {
        VFIO_PCI_INTX_IRQ_INDEX => {
            Some(VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED)
        }
        VFIO_PCI_MSI_IRQ_INDEX | VFIO_PCI_REQ_IRQ_INDEX => {
            Some(VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE)
        }
        VFIO_PCI_MSIX_IRQ_INDEX => Some(VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE),
        _ => None,
    }
}

/// Checks that `fd` is an eventfd (EINVAL otherwise, as eventfd_ctx_fdget).
pub fn check_eventfd(fd: &OwnedFd) -> Result<(), Errno> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| Errno::EBADF)?;
    if link.as_os_str() == "anon_inode:[eventfd]" {
        Ok(())
    } else {
        Err(Errno::EINVAL)
    }
}

fn signal(fd: &OwnedFd) {
    if let Err(e) = rustix::io::write(fd.as_fd(), &1u64.to_ne_bytes()) {
        tracing::debug!(error = %e, "eventfd signal failed");
    }
}

fn first_bool(d: &Data) -> bool {
    match d {
        Data::Bool(b) => b.first().copied().unwrap_or(0) != 0,
        _ => true,
    }
}

impl Irqs {
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Drops every eventfd (unbind).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The device raises its interrupt (a command completed). `level` is whether the INTx line is
    /// still asserted; `intx_disabled` the command register's INTx disable bit.
    pub fn raise(&mut self, intx_disabled: bool) {
        match self.mode {
            Mode::Msi => {
                if let Some(Some(fd)) = self.msi.first() {
                    signal(fd);
                }
            }
            Mode::Intx if !self.intx_masked && !intx_disabled => {
                if let Some(fd) = &self.intx_trigger {
                    signal(fd);
                    self.intx_masked = true;
                }
            }
            _ => {}
        }
    }

    /// VFIO_DEVICE_SET_IRQS after the generic header validation; `asserted` is the INTx line level
    /// (an unmask while it is asserted fires again, as level-triggered INTx does).
    pub fn set(
        &mut self,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        data: Data,
        asserted: bool,
    ) -> Result<(), Errno> {
        let action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        match (index, action) {
            (VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_MASK) => {
                self.intx_single(start, count)?;
                match data {
                    Data::Eventfd(_) => return Err(Errno::ENOTTY),
                    d => self.intx_masked |= first_bool(&d),
                }
                Ok(())
            }
            (VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_UNMASK) => {
                self.intx_single(start, count)?;
                match data {
                    // Unmask eventfds (KVM resamplers) are not supported; -1 disables none.
                    Data::Eventfd(fds) => {
                        if fds.iter().any(Option::is_some) {
                            return Err(Errno::EOPNOTSUPP);
                        }
                    }
                    d => {
                        if first_bool(&d) {
                            self.intx_masked = false;
                            if asserted {
                                self.raise(false);
                            }
                        }
                    }
                }
                Ok(())
            }
            (VFIO_PCI_INTX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER) => {
                self.intx_trigger_action(start, count, data)
            }
            (VFIO_PCI_MSI_IRQ_INDEX | VFIO_PCI_MSIX_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER) => {
                self.msi_trigger(index, start, count, data)
            }
            (VFIO_PCI_REQ_IRQ_INDEX, VFIO_IRQ_SET_ACTION_TRIGGER) => {
                if start != 0 || count > 1 {
                    return Err(Errno::EINVAL);
                }
                single_trigger(&mut self.req, count, data)
            }
            _ => Err(Errno::ENOTTY),
        }
    }

    fn intx_single(&self, start: u32, count: u32) -> Result<(), Errno> {
        if self.mode != Mode::Intx || start != 0 || count != 1 {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    fn intx_trigger_action(&mut self, start: u32, count: u32, data: Data) -> Result<(), Errno> {
        if self.mode == Mode::Intx && count == 0 && matches!(data, Data::None) {
            self.mode = Mode::None;
            self.intx_trigger = None;
            self.intx_masked = false;
            return Ok(());
        }
        if !matches!(self.mode, Mode::Intx | Mode::None) || start != 0 || count != 1 {
            return Err(Errno::EINVAL);
        }
        match data {
            Data::Eventfd(mut fds) => {
                let fd = fds.pop().flatten();
                if self.mode == Mode::None {
                    self.mode = Mode::Intx;
                    self.intx_masked = false;
                }
                self.intx_trigger = fd;
                Ok(())
            }
            d => {
                if self.mode != Mode::Intx {
                    return Err(Errno::EINVAL);
                }
                if first_bool(&d) {
                    if let Some(fd) = &self.intx_trigger {
                        signal(fd);
                    }
                }
                Ok(())
            }
        }
    }

    fn msi_trigger(&mut self, index: u32, start: u32, count: u32, data: Data) -> Result<(), Errno> {
        let this = if index == VFIO_PCI_MSI_IRQ_INDEX {
            Mode::Msi
        } else {
            // No MSI-X: count(MSIX) is 0, so the generic validation only lets count 0 through.
            return Err(Errno::EINVAL);
        };
        if self.mode == this && count == 0 && matches!(data, Data::None) {
            self.mode = Mode::None;
            self.msi.clear();
            return Ok(());
        }
        if !(self.mode == this || self.mode == Mode::None) {
            return Err(Errno::EINVAL);
        }
        match data {
            Data::Eventfd(fds) => {
                if self.mode == Mode::None {
                    self.mode = this;
                    self.msi = (0..MSI_VECTORS).map(|_| None).collect();
                }
                for (i, fd) in fds.into_iter().enumerate() {
                    if let Some(slot) = self.msi.get_mut(start as usize + i) {
                        *slot = fd;
                    }
                }
                Ok(())
            }
            d => {
                if self.mode != this {
                    return Err(Errno::EINVAL);
                }
                for i in 0..count as usize {
                    let fire = match &d {
                        Data::Bool(b) => b.get(i).copied().unwrap_or(0) != 0,
                        _ => true,
                    };
                    if let (true, Some(Some(fd))) = (fire, self.msi.get(start as usize + i)) {
                        signal(fd);
                    }
                }
                Ok(())
            }
        }
    }
}

/// vfio-pci's single-eventfd notifiers (error, request).
fn single_trigger(slot: &mut Option<OwnedFd>, count: u32, data: Data) -> Result<(), Errno> {
    match data {
        Data::None => {
            let fd = slot.as_ref().ok_or(Errno::EINVAL)?;
            if count > 0 {
                signal(fd);
            } else {
                *slot = None;
            }
            Ok(())
        }
        Data::Bool(b) => {
            if count == 0 {
                return Err(Errno::EINVAL);
            }
            if b.first().copied().unwrap_or(0) != 0 {
                if let Some(fd) = slot.as_ref() {
                    signal(fd);
                }
            }
            Ok(())
        }
        Data::Eventfd(mut fds) => {
            if count == 0 {
                return Err(Errno::EINVAL);
            }
            *slot = fds.pop().flatten();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn efd() -> OwnedFd {
        use rustix::event::{eventfd, EventfdFlags};
        eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).unwrap()
    }

    fn count_of(fd: &OwnedFd) -> u64 {
        let mut b = [0u8; 8];
        match rustix::io::read(fd, &mut b) {
            Ok(8) => u64::from_ne_bytes(b),
            _ => 0,
        }
    }

    fn dup(fd: &OwnedFd) -> OwnedFd {
        fd.try_clone().unwrap()
    }

    const TRIGGER_FD: u32 = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD;

    #[test]
    fn intx_automask_and_unmask() {
        let mut irqs = Irqs::default();
        let e = efd();
        irqs.set(
            TRIGGER_FD,
            0,
            0,
            1,
            Data::Eventfd(vec![Some(dup(&e))]),
            false,
        )
        .unwrap();
        assert_eq!(irqs.mode(), Mode::Intx);
        irqs.raise(false);
        irqs.raise(false);
        assert_eq!(count_of(&e), 1, "second raise is masked");
        let unmask = VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_DATA_NONE;
        irqs.set(unmask, 0, 0, 1, Data::None, true).unwrap();
        assert_eq!(count_of(&e), 1, "unmask while asserted fires again");
        irqs.set(unmask, 0, 0, 1, Data::None, false).unwrap();
        irqs.raise(true);
        assert_eq!(count_of(&e), 0, "INTx disable in the command register");
        // MSI cannot be enabled while INTx is.
        let msi = irqs.set(TRIGGER_FD, 1, 0, 1, Data::Eventfd(vec![Some(efd())]), false);
        assert_eq!(msi, Err(Errno::EINVAL));
        let off = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_NONE;
        irqs.set(off, 0, 0, 0, Data::None, false).unwrap();
        assert_eq!(irqs.mode(), Mode::None);
        assert_eq!(
            irqs.set(unmask, 0, 0, 1, Data::None, false),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn msi_vector_signals() {
        let mut irqs = Irqs::default();
        let e = efd();
        irqs.set(
            TRIGGER_FD,
            1,
            0,
            1,
            Data::Eventfd(vec![Some(dup(&e))]),
            false,
        )
        .unwrap();
        irqs.raise(false);
        irqs.raise(false);
        assert_eq!(count_of(&e), 2);
        let loopback = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_BOOL;
        irqs.set(loopback, 1, 0, 1, Data::Bool(vec![1]), false)
            .unwrap();
        assert_eq!(count_of(&e), 1);
        let off = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_NONE;
        irqs.set(off, 1, 0, 0, Data::None, false).unwrap();
        assert_eq!(irqs.mode(), Mode::None);
    }

    #[test]
    fn req_notifier_and_unknown_actions() {
        let mut irqs = Irqs::default();
        let e = efd();
        irqs.set(
            TRIGGER_FD,
            4,
            0,
            1,
            Data::Eventfd(vec![Some(dup(&e))]),
            false,
        )
        .unwrap();
        let fire = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_NONE;
        irqs.set(fire, 4, 0, 1, Data::None, false).unwrap();
        assert_eq!(count_of(&e), 1);
        irqs.set(fire, 4, 0, 0, Data::None, false).unwrap();
        assert_eq!(
            irqs.set(fire, 4, 0, 0, Data::None, false),
            Err(Errno::EINVAL)
        );
        let mask = VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_DATA_NONE;
        assert_eq!(
            irqs.set(mask, 1, 0, 1, Data::None, false),
            Err(Errno::ENOTTY)
        );
        assert_eq!(
            irqs.set(fire, 3, 0, 1, Data::None, false),
            Err(Errno::ENOTTY)
        );
    }

    #[test]
    fn eventfd_check() {
        check_eventfd(&efd()).unwrap();
        let f: OwnedFd = std::fs::File::open("/proc/self/status").unwrap().into();
        assert_eq!(check_eventfd(&f), Err(Errno::EINVAL));
    }
}
