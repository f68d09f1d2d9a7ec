//! Every VFIO ioctl the type1 backend and the real devices issue: the container
//! (`/dev/vfio/vfio`), group (`/dev/vfio/<n>`) and device fd calls.

use super::ioctl::ioctl_int;
use nix::errno::Errno;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use uiommufd_uapi::vfio::*;
use zerocopy::{FromBytes, IntoBytes};

/// An ioctl on a buffer that starts with its `argsz` (the buffer is the whole argument); EINVAL
/// before the kernel when argsz claims more than the buffer holds.
pub fn ioctl_buf(fd: BorrowedFd<'_>, cmd: u32, buf: &mut [u8]) -> Result<libc::c_int, Errno> {
    if buf.len() < 4 || u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize > buf.len() {
        return Err(Errno::EINVAL);
    }
    // SAFETY: the kernel reads and writes at most `argsz` bytes of the argument, and argsz (its
    // first word) was just checked not to exceed the buffer's length.
    Errno::result(unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::c_ulong::from(cmd), buf.as_mut_ptr())
    })
}

/// An ioctl on one argsz struct of the uAPI.
pub fn ioctl_struct<T: IntoBytes + FromBytes>(
    fd: BorrowedFd<'_>,
    cmd: u32,
    v: &mut T,
) -> Result<libc::c_int, Errno> {
    ioctl_buf(fd, cmd, v.as_mut_bytes())
}

/// Opens `/dev/vfio/vfio` and checks it speaks the VFIO API with type1 v2.
pub fn open_container() -> Result<OwnedFd, Errno> {
    let fd = open_path("/dev/vfio/vfio")?;
    let version = ioctl_int(fd.as_fd(), VFIO_GET_API_VERSION, 0)?;
    if version != VFIO_API_VERSION as i32 {
        return Err(Errno::EPROTO);
    }
    if ioctl_int(
        fd.as_fd(),
        VFIO_CHECK_EXTENSION,
        libc::c_ulong::from(VFIO_TYPE1v2_IOMMU),
    )? != 1
    {
        return Err(Errno::EOPNOTSUPP);
    }
    Ok(fd)
}

/// Opens `path` read-write, close-on-exec.
pub fn open_path(path: &str) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

/// VFIO_GROUP_GET_STATUS: the group's flags (VFIO_GROUP_FLAGS_VIABLE, ..._CONTAINER_SET).
pub fn group_status(group: BorrowedFd<'_>) -> Result<u32, Errno> {
    let mut st = vfio_group_status {
        argsz: crate::narrow::struct_size::<vfio_group_status>(),
        flags: 0,
    };
    ioctl_struct(group, VFIO_GROUP_GET_STATUS, &mut st)?;
    Ok(st.flags)
}

/// VFIO_GROUP_SET_CONTAINER.
pub fn group_set_container(group: BorrowedFd<'_>, container: BorrowedFd<'_>) -> Result<(), Errno> {
    let raw: libc::c_int = container.as_raw_fd();
    // SAFETY: the command reads one int through the pointer, which points at `raw` on our stack.
    Errno::result(unsafe {
        libc::ioctl(
            group.as_raw_fd(),
            libc::c_ulong::from(VFIO_GROUP_SET_CONTAINER),
            &raw as *const libc::c_int,
        )
    })?;
    Ok(())
}

/// VFIO_GROUP_UNSET_CONTAINER: EBUSY while a device fd of the group is open.
pub fn group_unset_container(group: BorrowedFd<'_>) -> Result<(), Errno> {
    ioctl_int(group, VFIO_GROUP_UNSET_CONTAINER, 0)?;
    Ok(())
}

/// VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU), once a group is in the container.
pub fn set_type1v2(container: BorrowedFd<'_>) -> Result<(), Errno> {
    ioctl_int(
        container,
        VFIO_SET_IOMMU,
        libc::c_ulong::from(VFIO_TYPE1v2_IOMMU),
    )?;
    Ok(())
}

/// VFIO_GROUP_GET_DEVICE_FD for the device named `name` (its PCI address).
pub fn group_device_fd(group: BorrowedFd<'_>, name: &str) -> Result<OwnedFd, Errno> {
    let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: the command reads a NUL-terminated string, which `name` is, and returns a new fd.
    let fd = Errno::result(unsafe {
        libc::ioctl(
            group.as_raw_fd(),
            libc::c_ulong::from(VFIO_GROUP_GET_DEVICE_FD),
            name.as_ptr(),
        )
    })?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// VFIO_DEVICE_RESET.
pub fn device_reset(device: BorrowedFd<'_>) -> Result<(), Errno> {
    ioctl_int(device, VFIO_DEVICE_RESET, 0)?;
    Ok(())
}

/// VFIO_DEVICE_GET_INFO.
pub fn device_info(device: BorrowedFd<'_>) -> Result<vfio_device_info, Errno> {
    let mut info = vfio_device_info {
        argsz: crate::narrow::struct_size::<vfio_device_info>(),
        ..Default::default()
    };
    ioctl_struct(device, VFIO_DEVICE_GET_INFO, &mut info)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argsz_beyond_the_buffer_is_refused_before_the_kernel() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let mut buf = vec![0u8; 8];
        buf[..4].copy_from_slice(&64u32.to_ne_bytes());
        assert_eq!(
            ioctl_buf(f.as_fd(), VFIO_DEVICE_GET_INFO, &mut buf),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            ioctl_buf(f.as_fd(), VFIO_DEVICE_GET_INFO, &mut buf[..3]),
            Err(Errno::EINVAL)
        );
        // Within the buffer, the kernel answers: /dev/null is no VFIO device.
        buf[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(
            ioctl_buf(f.as_fd(), VFIO_DEVICE_GET_INFO, &mut buf),
            Err(Errno::ENOTTY)
        );
        assert_eq!(device_reset(f.as_fd()), Err(Errno::ENOTTY));
        assert_eq!(group_status(f.as_fd()), Err(Errno::ENOTTY));
        assert_eq!(
            group_device_fd(f.as_fd(), "0000:00:00.0").unwrap_err(),
            Errno::ENOTTY
        );
        assert_eq!(
            group_device_fd(f.as_fd(), "a\0b").unwrap_err(),
            Errno::EINVAL
        );
    }
}
