//! A real PCI device (`serve --vfio BDF`) behind a VFIO cdev node of the daemon.
//!
//! The daemon holds the kernel's device fd ([`HostDevice`]). The node answers the iommufd part
//! itself — VFIO_DEVICE_BIND_IOMMUFD, ATTACH/DETACH_IOMMUFD_PT, which a kernel without
//! CONFIG_IOMMUFD does not have — and forwards the rest of the device API to the kernel device:
//! GET_INFO, GET_REGION_INFO, GET_IRQ_INFO, SET_IRQS (the caller's eventfds are fetched and
//! handed to the kernel, so interrupts reach the caller directly), RESET, hot-reset info, and
//! pread/pwrite of regions (config space, BARs). No mmap: FUSE and CUSE cannot map device memory,
//! so region infos lose VFIO_REGION_INFO_FLAG_MMAP and programs use pread/pwrite.
//!
//! Attaching makes the device's kernel container mirror the page table ([`VfioDomain`]). When the
//! binding ends (close, client killed, daemon stopping) the device is quiesced before its DMA
//! mappings go: bus mastering off, interrupts torn down, and a reset where the device has one.

use super::cdev::{read_min, CdevBinding};
use super::context::ContextResolver;
use crate::backends::vfio::container::Container;
use crate::backends::vfio::host::{hw_info, HostDevice};
use crate::backends::vfio::VfioDomain;
use crate::backends::Domain;
use crate::caller::context_query::ClientDup;
use crate::caller::CallerMemory;
use crate::narrow::struct_size;
use crate::objects::{Context, Device, DeviceBackend};
use crate::service::OpenFile;
use crate::sys::vfio;
use nix::errno::Errno;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use uiommufd_uapi::vfio::*;

/// Largest argsz forwarded to the kernel (region info capability chains are far smaller).
const MAX_ARGSZ: usize = 64 * 1024;
/// Largest single pread/pwrite forwarded.
const MAX_RW: usize = 1 << 20;
/// PCI command register and its bus-master bit.
const PCI_COMMAND: u64 = 4;
const PCI_COMMAND_MASTER: u16 = 1 << 2;

/// One real device served as `vfio/devices/<BDF>`.
pub struct VfioPci {
    host: Arc<HostDevice>,
    cdev: CdevBinding,
    /// The domain the device's container mirrors now.
    domain: Mutex<Option<Arc<dyn Domain>>>,
    /// The kernel device fd of the current binding (owned by its [`Port`]: closed when the
    /// device object goes).
    fd: Mutex<std::sync::Weak<OwnedFd>>,
    /// The user a kernel device fd was handed to ([`super::handout`]): the device stays theirs.
    handed_to: Mutex<Option<u32>>,
    next_file: AtomicU64,
}

impl VfioPci {
    pub fn new(host: Arc<HostDevice>, resolver: Arc<dyn ContextResolver>) -> Arc<Self> {
        Arc::new(Self {
            cdev: CdevBinding::new(&host.bdf, resolver),
            host,
            domain: Mutex::new(None),
            fd: Mutex::new(std::sync::Weak::new()),
            handed_to: Mutex::new(None),
            next_file: AtomicU64::new(1),
        })
    }

    pub fn name(&self) -> &str {
        &self.host.bdf
    }

    /// The context id and device object id of the current binding.
    pub fn bound_to(&self) -> Option<(u64, u32)> {
        self.cdev.bound_to()
    }

    pub fn open(self: &Arc<Self>) -> Arc<dyn OpenFile> {
        Arc::new(VfioPciFile {
            dev: self.clone(),
            id: self.next_file.fetch_add(1, Ordering::Relaxed),
        })
    }

    fn container(&self) -> Arc<dyn Container> {
        self.host.group.container.clone()
    }

    fn bound(&self, file: u64) -> Result<(Arc<Context>, Arc<Device>), Errno> {
        self.cdev.bound(file)
    }

    fn bind(self: &Arc<Self>, file: u64, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        // A device whose kernel fd was handed out stays with that user (the fd cannot be
        // taken back).
        if let Some(owner) = *self.handed_to.lock().unwrap() {
            if mem.credentials()?.uid != owner {
                return Err(Errno::EPERM);
            }
        }
        let port = |ctx: &Arc<Context>| -> Result<Arc<dyn DeviceBackend>, Errno> {
            // The group's devices share its container: one context at a time.
            let claim = self.host.group.claim(ctx.id)?;
            let fd = Arc::new(self.host.open().inspect_err(|e| {
                crate::warn_limited!(device = self.name(), %e, "VFIO_GROUP_GET_DEVICE_FD failed at bind");
            })?);
            *self.fd.lock().unwrap() = Arc::downgrade(&fd);
            Ok(Arc::new(Port {
                dev: Arc::downgrade(self),
                _fd: fd,
                _claim: claim,
            }))
        };
        // A clean device for the new owner.
        self.cdev.bind(file, arg, mem, port, || self.quiesce())
    }

    /// Stops the device's DMA and interrupts: bus mastering off, every interrupt disabled, and a
    /// reset where the device has one.
    /// A duplicate of the kernel device fd for the program bound through open file `file`
    /// ([`super::handout`]); EINVAL when `file` is not the bound one, EPERM when the device was
    /// handed to another user before.
    pub fn hand_out(&self, file: u64, uid: u32) -> Result<OwnedFd, Errno> {
        self.bound(file)?;
        let mut owner = self.handed_to.lock().unwrap();
        if owner.is_some_and(|o| o != uid) {
            return Err(Errno::EPERM);
        }
        let fd = self.dev_fd()?;
        let dup = crate::sys::fd::dup_cloexec(fd.as_fd())?;
        *owner = Some(uid);
        tracing::info!(device = self.name(), uid, "kernel device fd handed out");
        Ok(dup)
    }

    /// The kernel device fd of the current binding.
    fn dev_fd(&self) -> Result<Arc<OwnedFd>, Errno> {
        self.fd.lock().unwrap().upgrade().ok_or(Errno::EINVAL)
    }

    fn quiesce(&self) {
        let Ok(fd) = self.dev_fd() else {
            return;
        };
        let fd = fd.as_fd();
        let at = region_offset(VFIO_PCI_CONFIG_REGION_INDEX) + PCI_COMMAND;
        let mut cmd = [0u8; 2];
        if nix::sys::uio::pread(fd, &mut cmd, at as i64) == Ok(2) {
            let v = u16::from_le_bytes(cmd) & !PCI_COMMAND_MASTER;
            let _ = nix::sys::uio::pwrite(fd, &v.to_le_bytes(), at as i64);
        }
        for index in 0..self.host.info.num_irqs.min(VFIO_PCI_NUM_IRQS) {
            let mut set = vfio_irq_set {
                argsz: struct_size::<vfio_irq_set>(),
                flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                index,
                start: 0,
                count: 0,
            };
            // EINVAL for interrupt types the device does not have.
            let _ = vfio::ioctl_buf(
                fd,
                VFIO_DEVICE_SET_IRQS,
                zerocopy::IntoBytes::as_mut_bytes(&mut set),
            );
        }
        if self.host.info.flags & VFIO_DEVICE_FLAGS_RESET != 0 {
            if let Err(e) = vfio::device_reset(fd) {
                crate::warn_limited!(device = self.name(), %e, "VFIO_DEVICE_RESET failed");
            }
        }
    }

    /// Ends the binding held by `file` (its release): quiesce while the DMA mappings still
    /// stand, then detach (which empties the container).
    fn unbind(&self, file: u64) {
        self.cdev.unbind(file, || self.quiesce(), || {});
    }

    /// The driver's domain switch: leave the old domain's mirror, join the new one. EINVAL when
    /// another device of the same IOMMU group is attached to a different page table.
    fn switch_domain(&self, new: Option<&Arc<dyn Domain>>) -> Result<(), Errno> {
        let mut cur = self.domain.lock().unwrap();
        if let (Some(c), Some(n)) = (cur.as_ref(), new) {
            if Arc::ptr_eq(c, n) {
                return Ok(());
            }
        }
        let key = |d: &Arc<dyn Domain>| Arc::as_ptr(d) as *const () as usize;
        let (cur_key, new_key) = (cur.as_ref().map(key), new.map(key));
        let mut attached = self.host.group.attached.lock().unwrap();
        let others = attached
            .iter()
            .any(|(&k, &n)| Some(k) != new_key && !(Some(k) == cur_key && n <= 1));
        if new.is_some() && others {
            return Err(Errno::EINVAL);
        }
        let container = self.container();
        let new_vfio = match new {
            Some(d) => Some(as_vfio(d).ok_or(Errno::EINVAL)?),
            None => None,
        };
        if let Some(old) = cur.as_ref().and_then(as_vfio) {
            old.leave(&container);
        }
        if let Some(n) = new_vfio {
            if let Err(e) = n.join(container.clone()) {
                // Back onto the old domain so the device keeps its mappings.
                if let Some(old) = cur.as_ref().and_then(as_vfio) {
                    if let Err(e2) = old.join(container) {
                        crate::error_limited!(device = self.name(), %e2, "cannot restore the old domain");
                        if let Some(k) = cur_key {
                            release(&mut attached, k);
                        }
                        *cur = None;
                    }
                }
                return Err(e);
            }
        }
        if let Some(k) = cur_key {
            release(&mut attached, k);
        }
        if let Some(k) = new_key {
            *attached.entry(k).or_insert(0) += 1;
        }
        *cur = new.cloned();
        Ok(())
    }
}

/// One device of a group less on domain `k`.
fn release(attached: &mut std::collections::HashMap<usize, usize>, k: usize) {
    if let Some(n) = attached.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            attached.remove(&k);
        }
    }
}

fn as_vfio(d: &Arc<dyn Domain>) -> Option<&VfioDomain> {
    d.as_any()?.downcast_ref::<VfioDomain>()
}

/// vfio-pci's region offsets: the index in bits 40 and up.
fn region_offset(index: u32) -> u64 {
    u64::from(index) << 40
}

/// The device as the objects layer sees it: its IOMMU driver.
struct Port {
    dev: std::sync::Weak<VfioPci>,
    /// The kernel device fd of this binding.
    _fd: Arc<OwnedFd>,
    /// The device's share of its group while bound.
    _claim: crate::backends::vfio::host::GroupClaim,
}

impl Port {
    fn dev(&self) -> Result<Arc<VfioPci>, Errno> {
        self.dev.upgrade().ok_or(Errno::ENODEV)
    }
}

impl DeviceBackend for Port {
    fn alloc_domain(&self, flags: u32) -> Result<Arc<dyn Domain>, Errno> {
        // Type1 has no nesting, dirty tracking, fault reporting or PASID attachment.
        if flags != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let dev = self.dev()?;
        Ok(Arc::new(VfioDomain::new(dev.host.group.geometry.clone())))
    }

    fn domain_compatible(&self, domain: &Arc<dyn Domain>) -> bool {
        let Ok(dev) = self.dev() else {
            return false;
        };
        as_vfio(domain).is_some_and(|v| *v.geometry() == dev.host.group.geometry)
    }

    fn set_domain(&self, domain: Option<&Arc<dyn Domain>>) -> Result<(), Errno> {
        self.dev()?.switch_domain(domain)
    }

    fn hw_info(&self) -> Option<(u32, Vec<u8>, u64, u8)> {
        let dev = self.dev().ok()?;
        let (ty, data, caps) = hw_info(&dev.host);
        Some((ty, data, caps, 0))
    }

    fn name(&self) -> String {
        self.dev
            .upgrade()
            .map_or_else(|| "vfio:gone".into(), |d| format!("vfio:{}", d.name()))
    }
}

/// One open of the node.
struct VfioPciFile {
    dev: Arc<VfioPci>,
    id: u64,
}

impl VfioPciFile {
    /// Forwards an argsz-framed ioctl to the kernel device: the caller's bytes in, the kernel's
    /// answer back. `fix` may adjust the answer first.
    fn forward(
        &self,
        cmd: u32,
        arg: u64,
        mem: &dyn CallerMemory,
        fix: impl FnOnce(&mut [u8]),
    ) -> Result<i64, Errno> {
        let mut w = [0u8; 4];
        mem.read(arg, &mut w)?;
        let argsz = (u32::from_ne_bytes(w) as usize).clamp(4, MAX_ARGSZ);
        let mut buf = vec![0u8; argsz];
        mem.read(arg, &mut buf)?;
        // Clamped to MAX_ARGSZ just above: it fits.
        let argsz_word = u32::try_from(argsz)
            .map_err(|_| Errno::EINVAL)?
            .to_ne_bytes();
        buf[..4].copy_from_slice(&argsz_word);
        let rc = vfio::ioctl_buf(self.dev.dev_fd()?.as_fd(), cmd, &mut buf);
        // ENOSPC still carries an answer (GET_PCI_HOT_RESET_INFO's count).
        if let Err(e) = rc {
            if e != Errno::ENOSPC {
                return Err(e);
            }
        }
        fix(&mut buf);
        // The kernel's argsz stands when it asks for more room; where it left the word alone,
        // the caller gets its own (clamped only when too big to be a real struct) back.
        if buf[..4] == argsz_word {
            buf[..4].copy_from_slice(&w);
        }
        mem.write(arg, &buf)?;
        let rc = rc?;
        Ok(i64::from(rc))
    }

    fn set_irqs(&self, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        const MINSZ: usize = size_of::<vfio_irq_set>();
        let mut hdr = vfio_irq_set::default();
        read_min(mem, arg, MINSZ, zerocopy::IntoBytes::as_mut_bytes(&mut hdr))?;
        let fd = self.dev.dev_fd()?;
        // The kernel's checks, before anything of the caller's is fetched: the interrupt type
        // exists and the range fits its count.
        if hdr.index >= self.dev.host.info.num_irqs {
            return Err(Errno::EINVAL);
        }
        let mut info = vfio_irq_info {
            argsz: struct_size::<vfio_irq_info>(),
            index: hdr.index,
            ..Default::default()
        };
        vfio::ioctl_buf(
            fd.as_fd(),
            VFIO_DEVICE_GET_IRQ_INFO,
            zerocopy::IntoBytes::as_mut_bytes(&mut info),
        )?;
        if hdr.start >= info.count.max(1)
            || hdr.count >= u32::MAX - hdr.start
            || hdr.start + hdr.count > info.count
        {
            return Err(Errno::EINVAL);
        }
        let item = match hdr.flags & VFIO_IRQ_SET_DATA_TYPE_MASK {
            VFIO_IRQ_SET_DATA_NONE => 0usize,
            VFIO_IRQ_SET_DATA_BOOL => 1,
            VFIO_IRQ_SET_DATA_EVENTFD => 4,
            _ => return Err(Errno::EINVAL),
        };
        let data_size = item * hdr.count as usize;
        if item > 0 && (hdr.argsz as usize) < MINSZ + data_size {
            return Err(Errno::EINVAL);
        }
        let mut data = vec![0u8; data_size];
        mem.read(arg + MINSZ as u64, &mut data)?;
        // The caller's eventfds, duplicated into the daemon for the call (the kernel keeps its
        // own references). Each is checked to be an eventfd before it is fetched (no file of a
        // client's file system is ever duplicated), and again after; the copies close through
        // `ClientDup`.
        let mut held = Vec::new();
        if item == 4 {
            for c in data.chunks_exact_mut(4) {
                let n = i32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                if n < 0 {
                    continue;
                }
                let link = std::fs::read_link(format!("/proc/{}/fd/{n}", mem.tid()))
                    .map_err(|_| Errno::EBADF)?;
                if link.as_os_str() != "anon_inode:[eventfd]" {
                    return Err(Errno::EINVAL);
                }
                let mine = ClientDup::new(mem.get_fd(n)?);
                let raw = mine.as_fd().as_raw_fd();
                let link =
                    std::fs::read_link(format!("/proc/self/fd/{raw}")).map_err(|_| Errno::EBADF)?;
                if link.as_os_str() != "anon_inode:[eventfd]" {
                    return Err(Errno::EINVAL);
                }
                c.copy_from_slice(&raw.to_ne_bytes());
                held.push(mine);
            }
        }
        let mut buf = Vec::with_capacity(MINSZ + data_size);
        // No larger than the caller's argsz (checked above) when there is data.
        hdr.argsz = u32::try_from(MINSZ + data_size).map_err(|_| Errno::EINVAL)?;
        buf.extend_from_slice(zerocopy::IntoBytes::as_bytes(&hdr));
        buf.extend_from_slice(&data);
        let rc = vfio::ioctl_buf(fd.as_fd(), VFIO_DEVICE_SET_IRQS, &mut buf)?;
        drop(held);
        Ok(i64::from(rc))
    }
}

/// `_IO(';', 0xfb)`: the daemon asking one of its own device files which open it is.
pub const FILE_QUERY: u32 = uiommufd_uapi::iommufd::io(b';', 0xfb);

#[repr(C)]
#[derive(Debug, Default, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
struct FileQuery {
    key: u64,
    file: u64,
}

/// A per-daemon secret: only the daemon itself gets answers.
fn query_key() -> u64 {
    static KEY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KEY.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        h.finish() | 1
    })
}

/// Which open of a real device's node `node` (a file of the daemon's own mount) is.
pub fn query_file_id(node: std::os::fd::BorrowedFd<'_>) -> Result<u64, Errno> {
    let mut q = FileQuery {
        key: query_key(),
        file: 0,
    };
    // The answering side is this daemon's own node, which writes the 16 bytes of `q`.
    crate::sys::ioctl::ioctl_struct(node, FILE_QUERY, &mut q)?;
    Ok(q.file)
}

impl OpenFile for VfioPciFile {
    fn inline_ioctl(&self, cmd: u32) -> bool {
        // Asked by the daemon's own hand-out thread, which waits: answered on the reader.
        cmd == FILE_QUERY
    }

    fn ioctl(&self, cmd: u32, arg: u64, mem: &dyn CallerMemory) -> Result<i64, Errno> {
        if cmd == FILE_QUERY {
            if mem.pid() != std::process::id() as i32 {
                return Err(Errno::ENOTTY);
            }
            let mut q: FileQuery = crate::caller::read_struct(mem, arg)?;
            if q.key != query_key() {
                return Err(Errno::ENOTTY);
            }
            q.file = self.id;
            crate::caller::write_struct(mem, arg, &q)?;
            return Ok(0);
        }
        if let Some(v) = self
            .dev
            .cdev
            .ioctl(self.id, cmd, arg, mem, || self.dev.bind(self.id, arg, mem))?
        {
            return Ok(v);
        }
        match cmd {
            VFIO_DEVICE_GET_INFO
            | VFIO_DEVICE_GET_IRQ_INFO
            | VFIO_DEVICE_GET_PCI_HOT_RESET_INFO => self.forward(cmd, arg, mem, |_| {}),
            VFIO_DEVICE_GET_REGION_INFO => self.forward(cmd, arg, mem, |buf| {
                // No mmap through the daemon's node.
                if buf.len() >= 8 {
                    let flags = u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]])
                        & !VFIO_REGION_INFO_FLAG_MMAP;
                    buf[4..8].copy_from_slice(&flags.to_ne_bytes());
                }
            }),
            VFIO_DEVICE_SET_IRQS => self.set_irqs(arg, mem),
            VFIO_DEVICE_RESET => vfio::device_reset(self.dev.dev_fd()?.as_fd()).map(|()| 0),
            // Needs the group fds of every affected device, which the daemon does not hand out.
            VFIO_DEVICE_PCI_HOT_RESET => Err(Errno::EPERM),
            _ => Err(Errno::ENOTTY),
        }
    }

    fn read(&self, offset: u64, size: u32, _mem: &dyn CallerMemory) -> Result<Vec<u8>, Errno> {
        self.dev.bound(self.id)?;
        let mut out = vec![0u8; (size as usize).min(MAX_RW)];
        let off = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let n = nix::sys::uio::pread(self.dev.dev_fd()?.as_fd(), &mut out, off)?;
        out.truncate(n);
        Ok(out)
    }

    fn write(&self, offset: u64, data: &[u8], _mem: &dyn CallerMemory) -> Result<u32, Errno> {
        self.dev.bound(self.id)?;
        let off = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let n = nix::sys::uio::pwrite(
            self.dev.dev_fd()?.as_fd(),
            &data[..data.len().min(MAX_RW)],
            off,
        )?;
        u32::try_from(n).map_err(|_| Errno::EOVERFLOW)
    }

    fn release(&self) {
        self.dev.unbind(self.id);
    }
}
