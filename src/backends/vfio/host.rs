//! Taking a PCI device from the host at daemon start (`serve --vfio BDF`): its IOMMU group, the
//! group's kernel type1 v2 container, and the device fd.
//!
//! One container per group, for the daemon's lifetime: the kernel refuses to take a group out
//! of its container while a device fd of it is open, and a group file can be open only once
//! system-wide. Devices of one group share the group and its container (and so must share a
//! page table, as under a kernel iommufd). Every failure is one line saying what to do.

use super::container::{container_info, KernelContainer, Type1Info};
use super::domain::Geometry;
use crate::sys::vfio;
use nix::errno::Errno;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use uiommufd_uapi::iommufd::*;
use uiommufd_uapi::vfio::*;

/// A group opened by the daemon, in its own container.
#[derive(Debug)]
pub struct Group {
    pub number: u32,
    _file: OwnedFd,
    pub container: Arc<KernelContainer>,
    pub geometry: Geometry,
    /// Domains the group's devices are attached to (by address), with how many devices each:
    /// the devices of a group share its container, so they must share one page table.
    pub attached: std::sync::Mutex<HashMap<usize, usize>>,
    /// The context the group's devices are bound to, with how many are: a group's devices
    /// share its container, so they belong to one context at a time (as the kernel's group
    /// ownership at bind).
    owner: std::sync::Mutex<Option<(u64, usize)>>,
}

/// A device's share in its group's ownership; released when dropped.
#[derive(Debug)]
pub struct GroupClaim {
    group: Arc<Group>,
}

impl Group {
    /// Claims the group for context `ctx`: EPERM while devices of it are bound to another.
    pub fn claim(self: &Arc<Self>, ctx: u64) -> Result<GroupClaim, Errno> {
        let mut owner = self.owner.lock().unwrap();
        match owner.as_mut() {
            Some((id, n)) if *id == ctx => *n += 1,
            Some(_) => return Err(Errno::EPERM),
            None => *owner = Some((ctx, 1)),
        }
        Ok(GroupClaim {
            group: self.clone(),
        })
    }
}

impl Drop for GroupClaim {
    fn drop(&mut self) {
        let mut owner = self.group.owner.lock().unwrap();
        if let Some((_, n)) = owner.as_mut() {
            *n -= 1;
            if *n == 0 {
                *owner = None;
            }
        }
    }
}

/// What IOMMU_GET_HW_INFO reports for the device's IOMMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IommuKind {
    /// Intel VT-d, with its capability and extended capability registers.
    IntelVtd { cap: u64, ecap: u64 },
    /// Another IOMMU: reported as IOMMU_HW_INFO_TYPE_NONE.
    Other,
}

/// A PCI device the daemon holds (through its group; a device fd is opened per binding, so that
/// the kernel's own cleanup of a closed device runs between users).
#[derive(Debug)]
pub struct HostDevice {
    /// PCI address, as given (e.g. `0000:00:04.0`).
    pub bdf: String,
    pub group: Arc<Group>,
    pub info: vfio_device_info,
    pub iommu: IommuKind,
    /// The device has an ATS capability in its extended config space.
    pub ats: bool,
}

impl HostDevice {
    /// A new device fd (VFIO_GROUP_GET_DEVICE_FD). When the last one closes the kernel disables
    /// and resets the device and restores its saved state.
    pub fn open(&self) -> Result<OwnedFd, Errno> {
        vfio::group_device_fd(group_fd(&self.group), &self.bdf)
    }
}

/// Checks the shape of a PCI address (`DDDD:BB:DD.F`).
pub fn parse_bdf(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    let ok = b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11]);
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "bad PCI address {s:?}: expected DDDD:BB:DD.F (e.g. 0000:00:04.0)"
        ))
    }
}

fn link_name(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// Members of IOMMU group `n` that are not bound to vfio-pci, with their drivers.
fn unbound_members(sysfs: &Path, n: u32) -> Vec<String> {
    let dir = sysfs.join(format!("kernel/iommu_groups/{n}/devices"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            match link_name(&e.path().join("driver")).as_deref() {
                Some("vfio-pci") => None,
                Some(d) => Some(format!("{name} (bound to {d})")),
                None => Some(format!("{name} (no driver)")),
            }
        })
        .collect();
    out.sort();
    out
}

fn read_hex(path: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// The IOMMU in front of the device, from sysfs.
fn iommu_kind(sysfs: &Path, bdf: &str) -> IommuKind {
    let iommu = sysfs.join(format!("bus/pci/devices/{bdf}/iommu"));
    let cap = read_hex(&iommu.join("intel-iommu/cap"));
    let ecap = read_hex(&iommu.join("intel-iommu/ecap"));
    match (cap, ecap) {
        (Some(cap), Some(ecap)) => IommuKind::IntelVtd { cap, ecap },
        _ => IommuKind::Other,
    }
}

/// Whether the device's extended config space lists an ATS capability (ID 0x0f).
fn has_ats(config: &[u8]) -> bool {
    let mut off = 0x100usize;
    for _ in 0..64 {
        let Some(h) = config.get(off..off + 4) else {
            return false;
        };
        let hdr = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        if hdr == 0 || hdr == u32::MAX {
            return false;
        }
        if hdr & 0xffff == 0x0f {
            return true;
        }
        let next = (hdr >> 20) as usize & 0xffc;
        if next < 0x100 || next <= off {
            return false;
        }
        off = next;
    }
    false
}

/// Opens every device of `bdfs` (already checked by [`parse_bdf`]). `sysfs` is normally `/sys`.
pub fn open_devices(sysfs: &Path, bdfs: &[String]) -> Result<Vec<Arc<HostDevice>>, String> {
    if bdfs.is_empty() {
        return Ok(Vec::new());
    }
    if !Path::new("/dev/vfio/vfio").exists() {
        return Err(
            "no /dev/vfio/vfio: load the VFIO modules (modprobe vfio-pci) and bind the device to vfio-pci"
                .into(),
        );
    }
    let mut groups: HashMap<u32, Arc<Group>> = HashMap::new();
    let mut out = Vec::new();
    for bdf in bdfs {
        if out.iter().any(|d: &Arc<HostDevice>| &d.bdf == bdf) {
            return Err(format!("--vfio {bdf} given twice"));
        }
        let dev = sysfs.join(format!("bus/pci/devices/{bdf}"));
        if !dev.exists() {
            return Err(format!("--vfio {bdf}: no such PCI device (see lspci -D)"));
        }
        match link_name(&dev.join("driver")).as_deref() {
            Some("vfio-pci") => {}
            other => {
                return Err(format!(
                    "--vfio {bdf}: bound to {}, not vfio-pci: echo vfio-pci > {p}/driver_override; \
                     echo {bdf} > {p}/driver/unbind; echo {bdf} > /sys/bus/pci/drivers_probe",
                    other.unwrap_or("no driver"),
                    p = dev.display()
                ))
            }
        }
        let number: u32 = link_name(&dev.join("iommu_group"))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                format!(
                    "--vfio {bdf}: the device has no IOMMU group: enable the IOMMU \
                     (intel_iommu=on or amd_iommu=on on the kernel command line)"
                )
            })?;
        let group = match groups.get(&number) {
            Some(g) => g.clone(),
            None => {
                let g = Arc::new(open_group(sysfs, bdf, number)?);
                groups.insert(number, g.clone());
                g
            }
        };
        let fd = vfio::group_device_fd(group_fd(&group), bdf)
            .map_err(|e| format!("--vfio {bdf}: VFIO_GROUP_GET_DEVICE_FD failed: {e}"))?;
        let info = vfio::device_info(fd.as_fd())
            .map_err(|e| format!("--vfio {bdf}: VFIO_DEVICE_GET_INFO failed: {e}"))?;
        if info.flags & VFIO_DEVICE_FLAGS_PCI == 0 {
            return Err(format!("--vfio {bdf}: not a vfio-pci device"));
        }
        let config = std::fs::read(dev.join("config")).unwrap_or_default();
        out.push(Arc::new(HostDevice {
            bdf: bdf.clone(),
            iommu: iommu_kind(sysfs, bdf),
            ats: has_ats(&config),
            group,
            info,
        }));
        // Closed again: the device is opened per binding.
        drop(fd);
    }
    Ok(out)
}

fn group_fd(g: &Group) -> BorrowedFd<'_> {
    g._file.as_fd()
}

fn open_group(sysfs: &Path, bdf: &str, n: u32) -> Result<Group, String> {
    let path = format!("/dev/vfio/{n}");
    let file = vfio::open_path(&path).map_err(|e| match e {
        Errno::EBUSY => format!(
            "--vfio {bdf}: {path} is already open (another VFIO user holds IOMMU group {n})"
        ),
        Errno::ENOENT => format!("--vfio {bdf}: no {path}: is the device bound to vfio-pci?"),
        e => format!("--vfio {bdf}: cannot open {path}: {e}"),
    })?;
    let flags = vfio::group_status(file.as_fd())
        .map_err(|e| format!("--vfio {bdf}: VFIO_GROUP_GET_STATUS on {path}: {e}"))?;
    if flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
        let others = unbound_members(sysfs, n);
        return Err(format!(
            "--vfio {bdf}: IOMMU group {n} is not viable: bind every member to vfio-pci too: {}",
            if others.is_empty() {
                "(members unknown)".to_string()
            } else {
                others.join(", ")
            }
        ));
    }
    let (container, info) = contain(file.as_fd()).map_err(|(step, e)| match step {
        ContainStep::Open => format!("--vfio {bdf}: /dev/vfio/vfio has no type1 v2 IOMMU ({e})"),
        step => format!("--vfio {bdf}: {}: {e}", step.ioctl()),
    })?;
    tracing::info!(
        bdf,
        group = n,
        pgsizes = format_args!("{:#x}", info.pgsizes),
        ranges = ?info.ranges,
        dma_avail = ?info.dma_avail,
        "IOMMU group in a type1 v2 container"
    );
    Ok(Group::new(n, file, container, &info))
}

/// The step of [`contain`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContainStep {
    Open,
    SetContainer,
    SetIommu,
    GetInfo,
}

impl ContainStep {
    fn ioctl(self) -> &'static str {
        match self {
            Self::Open => "open(/dev/vfio/vfio)",
            Self::SetContainer => "VFIO_GROUP_SET_CONTAINER",
            Self::SetIommu => "VFIO_SET_IOMMU(type1 v2)",
            Self::GetInfo => "VFIO_IOMMU_GET_INFO",
        }
    }
}

/// Puts `group` in a new kernel container set to type1 v2; the container and its info. On
/// failure the group is left out of any container.
fn contain(group: BorrowedFd<'_>) -> Result<(OwnedFd, Type1Info), (ContainStep, Errno)> {
    let container = vfio::open_container().map_err(|e| (ContainStep::Open, e))?;
    vfio::group_set_container(group, container.as_fd())
        .map_err(|e| (ContainStep::SetContainer, e))?;
    let ready = vfio::set_type1v2(container.as_fd())
        .map_err(|e| (ContainStep::SetIommu, e))
        .and_then(|()| container_info(container.as_fd()).map_err(|e| (ContainStep::GetInfo, e)));
    match ready {
        Ok(info) => Ok((container, info)),
        Err(e) => {
            let _ = vfio::group_unset_container(group);
            Err(e)
        }
    }
}

impl Group {
    fn new(number: u32, file: OwnedFd, container: OwnedFd, info: &Type1Info) -> Self {
        Group {
            number,
            _file: file,
            container: Arc::new(KernelContainer::new(container)),
            geometry: Geometry::from_info(info),
            attached: Default::default(),
            owner: Default::default(),
        }
    }

    /// A group file a program opened itself (the legacy container path under `uiommufd
    /// launch`), put in a container of the daemon's: the kernel's errno when it refuses (EINVAL
    /// when the group is already in a container, EPERM when it is not viable, ...).
    pub fn adopt(file: OwnedFd) -> Result<Group, Errno> {
        let number = group_number(file.as_fd())?;
        let (container, info) = contain(file.as_fd()).map_err(|(step, e)| {
            tracing::debug!(group = number, step = step.ioctl(), %e, "cannot take a program's group");
            e
        })?;
        tracing::info!(
            group = number,
            pgsizes = format_args!("{:#x}", info.pgsizes),
            ranges = ?info.ranges,
            "a program's IOMMU group in a type1 v2 container"
        );
        Ok(Group::new(number, file, container, &info))
    }

    /// Takes the group out of its container (VFIO_GROUP_UNSET_CONTAINER): EBUSY while a device
    /// fd of it is open. The kernel then drops the container's IOMMU and every mapping in it.
    pub fn unset_container(&self) -> Result<(), Errno> {
        vfio::group_unset_container(group_fd(self))
    }

    /// The group file, to compare with a program's.
    pub fn file(&self) -> BorrowedFd<'_> {
        group_fd(self)
    }
}

/// The number of the VFIO group `file` is open on (a character device of the kernel's `vfio`
/// class, whose device name is the group number); EBADF for any other file. Asked of the device
/// number, not the path: a program in a chroot opened it under another name.
pub fn group_number(file: BorrowedFd<'_>) -> Result<u32, Errno> {
    let st = nix::sys::stat::fstat(file)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR {
        return Err(Errno::EBADF);
    }
    let (major, minor) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
    let class_dev =
        std::fs::read_link(format!("/sys/dev/char/{major}:{minor}")).map_err(|_| Errno::EBADF)?;
    group_of_class_device(&class_dev).ok_or(Errno::EBADF)
}

/// `.../vfio/<n>` → n (a `noiommu-<n>` group, or any other class, is not one of ours).
fn group_of_class_device(path: &Path) -> Option<u32> {
    let class = path.parent()?.file_name()?;
    if class != "vfio" {
        return None;
    }
    path.file_name()?.to_str()?.parse().ok()
}

/// IOMMU_GET_HW_INFO's answer for a device: the data type, its bytes and the capabilities.
pub fn hw_info(dev: &HostDevice) -> (u32, Vec<u8>, u64) {
    let caps = if dev.ats {
        0
    } else {
        uiommufd_uapi::iommufd::IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED
    };
    match dev.iommu {
        IommuKind::IntelVtd { cap, ecap } => {
            let info = iommu_hw_info_vtd {
                flags: 0,
                reserved: 0,
                cap_reg: cap,
                ecap_reg: ecap,
            };
            (
                IOMMU_HW_INFO_TYPE_INTEL_VTD,
                zerocopy::IntoBytes::as_bytes(&info).to_vec(),
                caps,
            )
        }
        IommuKind::Other => (IOMMU_HW_INFO_TYPE_NONE, Vec::new(), caps),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        assert_eq!(parse_bdf("0000:00:04.0").unwrap(), "0000:00:04.0");
        assert_eq!(parse_bdf("0000:AF:1f.7").unwrap(), "0000:af:1f.7");
        for bad in [
            "00:04.0",
            "0000:00:04.8",
            "0000:00:04",
            "0000-00:04.0",
            "../../x/yz",
        ] {
            assert!(parse_bdf(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn group_numbers_come_from_the_vfio_class() {
        let g = |p: &str| group_of_class_device(Path::new(p));
        assert_eq!(g("../../devices/virtual/vfio/12"), Some(12));
        assert_eq!(g("../../devices/virtual/vfio/noiommu-3"), None);
        assert_eq!(g("../../devices/virtual/misc/vfio"), None);
        assert_eq!(g("../../devices/virtual/mem/null"), None);
        // Not a character device of that class at all.
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(group_number(null.as_fd()), Err(Errno::EBADF));
        let dir = std::fs::File::open("/").unwrap();
        assert_eq!(group_number(dir.as_fd()), Err(Errno::EBADF));
    }

    #[test]
    fn ats_capability_walk() {
        let mut cfg = vec![0u8; 4096];
        assert!(!has_ats(&cfg));
        // 0x100: AER (id 1) → 0x150: ATS (id 0x0f).
        cfg[0x100..0x104].copy_from_slice(&(0x0001u32 | (1 << 16) | (0x150 << 20)).to_le_bytes());
        cfg[0x150..0x154].copy_from_slice(&(0x000fu32 | (1 << 16)).to_le_bytes());
        assert!(has_ats(&cfg));
        // A loop back to itself ends the walk.
        cfg[0x150..0x154].copy_from_slice(&(0x0002u32 | (0x100 << 20)).to_le_bytes());
        assert!(!has_ats(&cfg));
        // Only 256 bytes readable (no extended space).
        assert!(!has_ats(&cfg[..256]));
    }

    #[test]
    fn a_group_belongs_to_one_context_at_a_time() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let g = Arc::new(Group {
            number: 7,
            _file: r,
            container: Arc::new(KernelContainer::new(
                std::fs::File::open("/dev/null").unwrap().into(),
            )),
            geometry: Geometry::from_info(&Default::default()),
            attached: Default::default(),
            owner: Default::default(),
        });
        let a1 = g.claim(1).unwrap();
        let a2 = g.claim(1).unwrap();
        assert_eq!(g.claim(2).unwrap_err(), Errno::EPERM);
        drop(a1);
        assert_eq!(g.claim(2).unwrap_err(), Errno::EPERM);
        drop(a2);
        let _b = g.claim(2).unwrap();
        assert_eq!(g.claim(1).unwrap_err(), Errno::EPERM);
    }

    #[test]
    fn group_members_not_on_vfio_pci_are_named() {
        let dir = std::env::temp_dir().join(format!("uiommufd-sysfs-{}", std::process::id()));
        let devs = dir.join("kernel/iommu_groups/7/devices");
        std::fs::create_dir_all(&devs).unwrap();
        for (name, driver) in [("0000:00:1f.0", Some("lpc_ich")), ("0000:00:1f.2", None)] {
            let d = dir.join("pci").join(name);
            std::fs::create_dir_all(&d).unwrap();
            if let Some(drv) = driver {
                std::os::unix::fs::symlink(format!("../../drivers/{drv}"), d.join("driver"))
                    .unwrap();
            }
            std::os::unix::fs::symlink(&d, devs.join(name)).unwrap();
        }
        assert_eq!(
            unbound_members(&dir, 7),
            vec![
                "0000:00:1f.0 (bound to lpc_ich)".to_string(),
                "0000:00:1f.2 (no driver)".to_string()
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
