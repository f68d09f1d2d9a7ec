//! The dmacopy VFIO device through the real path: a daemon process in FUSE mode with
//! `--device dmacopy`, this test process as the client (iommufd node + device node, BIND with the
//! iommufd fd number, IOAS map of its own buffer, registers programmed by pwrite at BAR0's region
//! offset), checking the copy in its own memory and that closing leaves nothing behind.

mod support;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use support::{ioas_alloc, ioas_map_at, ioctl, ioctl_raw, open_node, AnonPages, DaemonProcess};
use uiommufd_uapi::vfio::*;

const BAR0: u64 = 0;
const CONFIG: u64 = 7 << 40;
const ID_VALUE: u32 = 0x7569_6f6d;
const STATUS_ERROR: u32 = 2;
const STATUS_DONE: u32 = 4;
const IOVA: u64 = 0x10_0000;

fn start() -> DaemonProcess {
    DaemonProcess::start(&["--device", "dmacopy", "--device", "dmacopy:second"])
}

fn open_dev(d: &DaemonProcess, name: &str) -> File {
    open_node(&d.node(&format!("vfio/devices/{name}")))
}

fn bind(dev: &File, iommufd: i32) -> Result<u32, i32> {
    let mut b = vfio_device_bind_iommufd {
        argsz: std::mem::size_of::<vfio_device_bind_iommufd>() as u32,
        iommufd,
        ..Default::default()
    };
    ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &mut b).map(|_| b.out_devid)
}

fn attach(dev: &File, pt_id: u32) -> Result<u32, i32> {
    let mut a = vfio_device_attach_iommufd_pt {
        argsz: std::mem::size_of::<vfio_device_attach_iommufd_pt>() as u32,
        pt_id,
        ..Default::default()
    };
    ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut a).map(|_| a.pt_id)
}

fn rd32(dev: &File, off: u64) -> u32 {
    let mut b = [0u8; 4];
    assert_eq!(dev.read_at(&mut b, off).expect("pread"), 4);
    u32::from_le_bytes(b)
}

fn wr32(dev: &File, off: u64, v: u32) {
    assert_eq!(dev.write_at(&v.to_le_bytes(), off).expect("pwrite"), 4);
}

fn copy(dev: &File, src: u64, dst: u64, len: u32) -> u32 {
    wr32(dev, BAR0 + 0x04, 0xffff_ffff);
    wr32(dev, BAR0 + 0x08, src as u32);
    wr32(dev, BAR0 + 0x0c, (src >> 32) as u32);
    wr32(dev, BAR0 + 0x10, dst as u32);
    wr32(dev, BAR0 + 0x14, (dst >> 32) as u32);
    wr32(dev, BAR0 + 0x18, len);
    wr32(dev, BAR0 + 0x1c, 1);
    rd32(dev, BAR0 + 0x04)
}

fn set_irq_eventfd(dev: &File, index: u32, fd: i32) -> Result<i32, i32> {
    #[repr(C)]
    struct SetIrqs {
        hdr: vfio_irq_set,
        fd: i32,
    }
    let mut s = SetIrqs {
        hdr: vfio_irq_set {
            argsz: std::mem::size_of::<SetIrqs>() as u32,
            flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start: 0,
            count: 1,
        },
        fd,
    };
    ioctl(dev, VFIO_DEVICE_SET_IRQS, &mut s)
}

fn new_eventfd() -> OwnedFd {
    // SAFETY: eventfd() takes no pointers; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd");
    // SAFETY: `fd` was just returned by eventfd() and is owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn eventfd_count(fd: &OwnedFd) -> u64 {
    let mut b = [0u8; 8];
    match rustix::io::read(fd, &mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => 0,
    }
}

#[test]
fn device_api_before_and_at_bind() {
    let d = start();
    let iommu = d.open_iommu();
    let dev = open_dev(&d, "dmacopy0");
    // Nothing works before BIND.
    let mut info = vfio_device_info {
        argsz: 24,
        ..Default::default()
    };
    assert_eq!(
        ioctl(&dev, VFIO_DEVICE_GET_INFO, &mut info),
        Err(libc::EINVAL)
    );
    let mut b = [0u8; 4];
    assert_eq!(
        dev.read_at(&mut b, CONFIG).unwrap_err().raw_os_error(),
        Some(libc::EINVAL)
    );
    // Bad iommufd numbers: negative, not open, not an iommufd.
    assert_eq!(bind(&dev, -1), Err(libc::EINVAL));
    assert_eq!(bind(&dev, 100_000), Err(libc::EBADF));
    let other = File::open("/proc/self/status").unwrap();
    assert_eq!(bind(&dev, other.as_raw_fd()), Err(libc::EBADFD));
    assert_eq!(bind(&dev, dev.as_raw_fd()), Err(libc::EBADFD));
    let mut short = vfio_device_bind_iommufd {
        argsz: 8,
        iommufd: iommu.as_raw_fd(),
        ..Default::default()
    };
    assert_eq!(
        ioctl(&dev, VFIO_DEVICE_BIND_IOMMUFD, &mut short),
        Err(libc::EINVAL)
    );

    let dev_id = bind(&dev, iommu.as_raw_fd()).expect("BIND");
    assert_eq!(dev_id, 1);
    // A bound device's object goes with its binding only (the kernel: EBUSY).
    let mut destroy = uiommufd_uapi::iommufd::iommu_destroy {
        size: size_of::<uiommufd_uapi::iommufd::iommu_destroy>() as u32,
        id: dev_id,
    };
    assert_eq!(
        ioctl(&iommu, uiommufd_uapi::iommufd::IOMMU_DESTROY, &mut destroy),
        Err(libc::EBUSY)
    );
    assert_eq!(
        bind(&dev, iommu.as_raw_fd()),
        Err(libc::EINVAL),
        "bound twice"
    );
    let dev2 = open_dev(&d, "dmacopy0");
    assert_eq!(
        bind(&dev2, iommu.as_raw_fd()),
        Err(libc::EINVAL),
        "one binding per device"
    );
    assert_eq!(
        ioctl(&dev2, VFIO_DEVICE_GET_INFO, &mut info),
        Err(libc::EINVAL)
    );

    ioctl(&dev, VFIO_DEVICE_GET_INFO, &mut info).expect("GET_INFO");
    assert_eq!(info.flags, VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET);
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));
    for (index, size, offset) in [
        (0u32, 32u64, 0u64),
        (1, 0, 1 << 40),
        (6, 0, 6 << 40),
        (7, 256, CONFIG),
    ] {
        let mut r = vfio_region_info {
            argsz: std::mem::size_of::<vfio_region_info>() as u32,
            index,
            ..Default::default()
        };
        ioctl(&dev, VFIO_DEVICE_GET_REGION_INFO, &mut r).expect("REGION_INFO");
        assert_eq!((r.size, r.offset), (size, offset), "region {index}");
    }
    let mut vga = vfio_region_info {
        argsz: 32,
        index: 8,
        ..Default::default()
    };
    assert_eq!(
        ioctl(&dev, VFIO_DEVICE_GET_REGION_INFO, &mut vga),
        Err(libc::EINVAL)
    );
    for (index, count) in [(0u32, 1u32), (1, 1), (2, 0), (4, 1)] {
        let mut i = vfio_irq_info {
            argsz: 16,
            index,
            ..Default::default()
        };
        ioctl(&dev, VFIO_DEVICE_GET_IRQ_INFO, &mut i).expect("IRQ_INFO");
        assert_eq!(i.count, count, "irq index {index}");
    }
    let mut feature = vfio_device_feature {
        argsz: 8,
        flags: VFIO_DEVICE_FEATURE_PROBE,
    };
    assert_eq!(
        ioctl(&dev, VFIO_DEVICE_FEATURE, &mut feature),
        Err(libc::ENOTTY)
    );
    let mut hot = [16u32, 0, 0, 0];
    assert!(ioctl(&dev, VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, &mut hot).is_err());
    assert_eq!(ioctl_raw(&dev, VFIO_DEVICE_RESET, 0), Ok(0));

    // Config space: IDs, pin, BAR0 sizing; reads past the regions fail.
    assert_eq!(rd32(&dev, CONFIG), 0xdc01_1234);
    assert_eq!(rd32(&dev, CONFIG + 0x3c) >> 8 & 0xff, 1, "INTA#");
    wr32(&dev, CONFIG + 0x10, u32::MAX);
    assert_eq!(rd32(&dev, CONFIG + 0x10), 0xffff_ffe1);
    let mut whole = [0u8; 256];
    assert_eq!(dev.read_at(&mut whole, CONFIG).unwrap(), 256);
    assert_eq!(
        dev.read_at(&mut b, CONFIG + 256)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        dev.read_at(&mut b, 3 << 40).unwrap_err().raw_os_error(),
        Some(libc::EINVAL)
    );
    assert_eq!(rd32(&dev, BAR0), ID_VALUE);
    let st = d.status();
    assert_eq!(st["objects"], 1, "{st}");
    drop((dev, dev2, iommu));
    let st = d.wait_idle();
    assert_eq!(
        (st["objects"].as_u64(), st["contexts"].as_u64()),
        (Some(0), Some(0)),
        "{st}"
    );
}

#[test]
fn copies_through_the_ioas_into_the_clients_memory() {
    let d = start();
    let iommu = d.open_iommu();
    let dev = open_dev(&d, "dmacopy0");
    bind(&dev, iommu.as_raw_fd()).expect("BIND");
    let ioas = ioas_alloc(&iommu);
    let hwpt = attach(&dev, ioas).expect("ATTACH");
    assert_ne!(hwpt, ioas, "the automatic HWPT's id comes back");

    let buf = AnonPages::new(16);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    buf.fill(0, &pattern);
    ioas_map_at(&iommu, ioas, buf.addr(), 8 * 4096, IOVA, true).expect("MAP rw");
    // The upper half is mapped read-only.
    ioas_map_at(
        &iommu,
        ioas,
        buf.addr() + 8 * 4096,
        8 * 4096,
        IOVA + 8 * 4096,
        false,
    )
    .expect("MAP ro");

    let e = new_eventfd();
    set_irq_eventfd(&dev, VFIO_PCI_INTX_IRQ_INDEX, e.as_raw_fd()).expect("SET_IRQS INTx");
    let other = File::open("/proc/self/status").unwrap();
    assert_eq!(
        set_irq_eventfd(&dev, VFIO_PCI_MSI_IRQ_INDEX, other.as_raw_fd()),
        Err(libc::EINVAL)
    );

    // Without bus mastering the device does not DMA.
    assert_eq!(
        copy(&dev, IOVA, IOVA + 0x4000, 4096),
        STATUS_ERROR | STATUS_DONE
    );
    assert_eq!(eventfd_count(&e), 1, "completion raised INTx");
    wr32(&dev, CONFIG + 0x04, 0x5); // I/O space + bus master
                                    // Still masked (automask) until unmasked.
    let mut unmask = vfio_irq_set {
        argsz: 20,
        flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
        index: 0,
        start: 0,
        count: 1,
    };
    wr32(&dev, BAR0 + 0x04, STATUS_DONE | STATUS_ERROR);
    ioctl(&dev, VFIO_DEVICE_SET_IRQS, &mut unmask).expect("UNMASK");

    assert_eq!(copy(&dev, IOVA, IOVA + 0x4000 + 3, 4096), STATUS_DONE);
    let mem = buf.bytes();
    assert_eq!(
        &mem[0x4003..0x4003 + 4096],
        &pattern[..],
        "copied into our memory"
    );
    assert_eq!(eventfd_count(&e), 1);

    // Unmapped source, unmapped or read-only destination: error, nothing written.
    let before = buf.bytes();
    assert_eq!(
        copy(&dev, IOVA + 64 * 4096, IOVA, 16),
        STATUS_ERROR | STATUS_DONE
    );
    assert_eq!(
        copy(&dev, IOVA, IOVA + 7 * 4096, 2 * 4096),
        STATUS_ERROR | STATUS_DONE
    );
    assert_eq!(
        copy(&dev, IOVA, IOVA + 9 * 4096, 16),
        STATUS_ERROR | STATUS_DONE
    );
    assert_eq!(copy(&dev, IOVA, 0, 16), STATUS_ERROR | STATUS_DONE);
    assert_eq!(buf.bytes(), before);
    // A read-only source is fine.
    assert_eq!(copy(&dev, IOVA + 8 * 4096, IOVA + 0x6000, 64), STATUS_DONE);

    let st = d.status();
    assert_eq!(st["objects"], 3, "ioas, hwpt, device: {st}");
    assert!(st["pinned_pages"].as_u64().unwrap() >= 16, "{st}");
    // Detach: no more DMA.
    let mut det = vfio_device_detach_iommufd_pt {
        argsz: 12,
        ..Default::default()
    };
    ioctl(&dev, VFIO_DEVICE_DETACH_IOMMUFD_PT, &mut det).expect("DETACH");
    assert_eq!(
        copy(&dev, IOVA, IOVA + 0x4000, 16),
        STATUS_ERROR | STATUS_DONE
    );
    attach(&dev, ioas).expect("re-ATTACH");

    drop(dev);
    drop(iommu);
    let st = d.wait_idle();
    assert_eq!(st["objects"], 0, "{st}");
    assert_eq!(st["pinned_pages"], 0, "{st}");
    assert_eq!(st["contexts"], 0, "{st}");
}

#[test]
fn close_in_any_order_and_rebind_elsewhere() {
    let d = start();
    let buf = AnonPages::new(4);
    buf.fill(0, b"hello, dmacopy!!");
    // 1: the iommufd closes first; the bound device keeps its context open.
    let iommu = d.open_iommu();
    let dev = open_dev(&d, "second");
    bind(&dev, iommu.as_raw_fd()).expect("BIND");
    let ioas = ioas_alloc(&iommu);
    attach(&dev, ioas).expect("ATTACH");
    ioas_map_at(&iommu, ioas, buf.addr(), 4 * 4096, IOVA, true).unwrap();
    drop(iommu);
    // The daemon has the release of the iommufd (FUSE sends it after close returns); the context
    // stays for the device.
    let st = d.wait_status(|st| st["context_detail"][0]["file_open"] == false);
    assert_eq!(st["contexts"], 1, "{st}");
    wr32(&dev, CONFIG + 0x04, 0x5);
    assert_eq!(copy(&dev, IOVA, IOVA + 0x1000, 16), STATUS_DONE);
    assert_eq!(&buf.bytes()[0x1000..0x1010], b"hello, dmacopy!!");
    drop(dev);
    let st = d.wait_idle();
    assert_eq!(
        (st["objects"].as_u64(), st["pinned_pages"].as_u64()),
        (Some(0), Some(0)),
        "{st}"
    );

    // 2: the same device bound to a new context; the device closes first.
    let iommu = d.open_iommu();
    let dev = open_dev(&d, "second");
    assert_eq!(bind(&dev, iommu.as_raw_fd()), Ok(1));
    let ioas = ioas_alloc(&iommu);
    ioas_map_at(&iommu, ioas, buf.addr(), 4 * 4096, IOVA, true).unwrap();
    attach(&dev, ioas).expect("ATTACH after MAP");
    wr32(&dev, CONFIG + 0x04, 0x5);
    assert_eq!(copy(&dev, IOVA, IOVA + 0x2000, 16), STATUS_DONE);
    assert_eq!(&buf.bytes()[0x2000..0x2010], b"hello, dmacopy!!");
    drop(dev);
    // The device's release unbinds it: its object and the automatic HWPT go, the IOAS stays.
    let st = d.wait_status(|st| st["objects"] == 1);
    assert_eq!(st["objects"], 1, "only the IOAS is left: {st}");
    assert_eq!(st["context_detail"][0]["file_open"], true, "{st}");
    drop(iommu);
    let st = d.wait_idle();
    assert_eq!(
        (st["objects"].as_u64(), st["pinned_pages"].as_u64()),
        (Some(0), Some(0)),
        "{st}"
    );
    assert!(d.stop().success());
}
