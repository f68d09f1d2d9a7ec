//! A VFIO PCI device file driven with pread/pwrite at region offsets (the kernel's device fd and
//! uiommufd's FUSE device node alike: no mmap), and QEMU's `edu` device on top of it.
//!
//! edu (QEMU docs/specs/edu.rst): BAR0 0x00 identification 0x010000ed, 0x04 liveness (reads back
//! inverted), 0x80 DMA source, 0x88 DMA destination, 0x90 count, 0x98 command (bit 0 run, bit 1
//! edu→RAM); its DMA buffer sits at 0x40000 in the device's address space and holds 4 KiB. A
//! transfer runs about 100 ms after the command, register writes are ignored while it runs, and
//! addresses are masked to 28 bits. Interrupts: a write to 0x60 ORs the value into the status at
//! 0x24 and raises the interrupt (MSI when enabled, INTx otherwise); a write to 0x64 clears those
//! bits (INTx drops when none is left).

use crate::sys::{ctx, ioctl_ptr, Res};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use uiommufd_uapi::vfio::*;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// VFIO_DEVICE_SET_IRQS with one eventfd.
#[repr(C)]
#[derive(Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct IrqSetOne {
    hdr: vfio_irq_set,
    fd: i32,
}

pub const EDU_ID: u32 = 0x0100_00ed;
/// Where edu's internal DMA buffer sits in its DMA address space.
pub const EDU_BUF: u64 = 0x40000;
pub const EDU_BUF_LEN: usize = 4096;
const REG_ID: u64 = 0x00;
const REG_LIVENESS: u64 = 0x04;
const REG_DMA_SRC: u64 = 0x80;
const REG_DMA_DST: u64 = 0x88;
const REG_DMA_COUNT: u64 = 0x90;
const REG_DMA_CMD: u64 = 0x98;
const REG_IRQ_STATUS: u64 = 0x24;
const REG_IRQ_RAISE: u64 = 0x60;
const REG_IRQ_ACK: u64 = 0x64;
const DMA_RUN: u32 = 1 << 0;
const DMA_TO_RAM: u32 = 1 << 1;
/// How long one transfer may take before the test gives up (edu needs ~100 ms).
const DMA_DEADLINE: Duration = Duration::from_secs(2);

const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;

/// An open VFIO PCI device with the file offsets of BAR0 and config space.
pub struct Device {
    pub file: File,
    pub name: String,
    bar0: u64,
    config: u64,
}

impl Device {
    /// Checks VFIO_DEVICE_GET_INFO (a PCI device with the fixed regions) and takes the BAR0 and
    /// config offsets from VFIO_DEVICE_GET_REGION_INFO.
    pub fn new(file: File, name: &str) -> Res<Self> {
        let mut info = vfio_device_info {
            argsz: size_of::<vfio_device_info>() as u32,
            ..Default::default()
        };
        ioctl_ptr(&file, VFIO_DEVICE_GET_INFO, &mut info).map_err(ctx("VFIO_DEVICE_GET_INFO"))?;
        if info.flags & VFIO_DEVICE_FLAGS_PCI == 0
            || info.num_regions <= VFIO_PCI_CONFIG_REGION_INDEX
        {
            return Err(format!(
                "VFIO_DEVICE_GET_INFO: flags {:#x}, {} regions: not a PCI device",
                info.flags, info.num_regions
            ));
        }
        let bar0 = region(&file, VFIO_PCI_BAR0_REGION_INDEX)?;
        let config = region(&file, VFIO_PCI_CONFIG_REGION_INDEX)?;
        if bar0.size < 0x100 || config.size < 0x100 {
            return Err(format!(
                "region sizes: BAR0 {:#x}, config {:#x}",
                bar0.size, config.size
            ));
        }
        let rw = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
        if bar0.flags & rw != rw || config.flags & rw != rw {
            return Err(format!(
                "region flags: BAR0 {:#x}, config {:#x}",
                bar0.flags, config.flags
            ));
        }
        Ok(Self {
            file,
            name: name.to_string(),
            bar0: bar0.offset,
            config: config.offset,
        })
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Res<()> {
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| format!("{}: pread {} at {off:#x}: {e}", self.name, buf.len()))
    }

    fn write(&self, off: u64, buf: &[u8]) -> Res<()> {
        self.file
            .write_all_at(buf, off)
            .map_err(|e| format!("{}: pwrite {} at {off:#x}: {e}", self.name, buf.len()))
    }

    pub fn read32(&self, reg: u64) -> Res<u32> {
        let mut b = [0; 4];
        self.read(self.bar0 + reg, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn write32(&self, reg: u64, v: u32) -> Res<()> {
        self.write(self.bar0 + reg, &v.to_le_bytes())
    }

    /// Checks the edu identification and liveness registers, then sets memory decoding and bus
    /// mastering in the command register (edu's DMA needs the latter).
    pub fn enable_edu(&self) -> Res<()> {
        let id = self.read32(REG_ID)?;
        if id != EDU_ID {
            return Err(format!(
                "{}: identification {id:#x}, expected {EDU_ID:#x}",
                self.name
            ));
        }
        self.write32(REG_LIVENESS, 0x1234_5678)?;
        let live = self.read32(REG_LIVENESS)?;
        if live != !0x1234_5678 {
            return Err(format!(
                "{}: liveness reads {live:#x}, expected {:#x}",
                self.name, !0x1234_5678u32
            ));
        }
        let mut cmd = [0; 2];
        self.read(self.config + PCI_COMMAND, &mut cmd)?;
        let want = u16::from_le_bytes(cmd) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        self.write(self.config + PCI_COMMAND, &want.to_le_bytes())?;
        self.read(self.config + PCI_COMMAND, &mut cmd)?;
        if u16::from_le_bytes(cmd) & PCI_COMMAND_MASTER == 0 {
            return Err(format!(
                "{}: bus master bit does not stick ({:#x})",
                self.name,
                u16::from_le_bytes(cmd)
            ));
        }
        Ok(())
    }

    /// edu raises its interrupt with `bits` in the status register.
    pub fn raise_irq(&self, bits: u32) -> Res<()> {
        self.write32(REG_IRQ_RAISE, bits)
    }

    /// edu's interrupt status register.
    pub fn irq_status(&self) -> Res<u32> {
        self.read32(REG_IRQ_STATUS)
    }

    /// Clears `bits` of edu's interrupt status.
    pub fn ack_irq(&self, bits: u32) -> Res<()> {
        self.write32(REG_IRQ_ACK, bits)
    }

    /// VFIO_DEVICE_GET_IRQ_INFO of one interrupt index.
    pub fn irq_info(&self, index: u32) -> Res<vfio_irq_info> {
        let mut i = vfio_irq_info {
            argsz: size_of::<vfio_irq_info>() as u32,
            index,
            ..Default::default()
        };
        ioctl_ptr(&self.file, VFIO_DEVICE_GET_IRQ_INFO, &mut i)
            .map_err(|e| format!("VFIO_DEVICE_GET_IRQ_INFO {index}: {e}"))?;
        Ok(i)
    }

    /// VFIO_DEVICE_SET_IRQS ACTION_TRIGGER of vector 0 of `index`: the eventfd `fd` signals it
    /// (DATA_EVENTFD, count 1), or with `None` every vector of the index is torn down (DATA_NONE,
    /// count 0).
    pub fn set_irq_trigger(&self, index: u32, fd: Option<i32>) -> Res<()> {
        let hdr = vfio_irq_set {
            argsz: size_of::<vfio_irq_set>() as u32,
            flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            start: 0,
            count: 0,
        };
        let what = |e| format!("VFIO_DEVICE_SET_IRQS {index} {fd:?}: {e}");
        match fd {
            None => {
                let mut h = hdr;
                ioctl_ptr(&self.file, VFIO_DEVICE_SET_IRQS, &mut h).map_err(what)?;
            }
            Some(fd) => {
                let mut s = IrqSetOne {
                    hdr: vfio_irq_set {
                        argsz: size_of::<IrqSetOne>() as u32,
                        flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                        count: 1,
                        ..hdr
                    },
                    fd,
                };
                ioctl_ptr(&self.file, VFIO_DEVICE_SET_IRQS, &mut s).map_err(what)?;
            }
        }
        Ok(())
    }

    /// Waits for the run bit to clear, within the deadline.
    fn wait_idle(&self) -> Res<()> {
        let start = Instant::now();
        loop {
            let cmd = self.read32(REG_DMA_CMD)?;
            if cmd & DMA_RUN == 0 {
                return Ok(());
            }
            if start.elapsed() > DMA_DEADLINE {
                return Err(format!(
                    "{}: DMA still running after {DMA_DEADLINE:?} (cmd {cmd:#x})",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// One edu transfer of `len` bytes and its completion: RAM (`iova`) → edu buffer, or the
    /// reverse with `to_ram`.
    pub fn dma(&self, iova: u64, len: usize, to_ram: bool) -> Res<()> {
        assert!(len <= EDU_BUF_LEN);
        self.wait_idle()?;
        let (src, dst) = if to_ram {
            (EDU_BUF, iova)
        } else {
            (iova, EDU_BUF)
        };
        self.write32(REG_DMA_SRC, src as u32)?;
        self.write32(REG_DMA_DST, dst as u32)?;
        self.write32(REG_DMA_COUNT, len as u32)?;
        self.write32(REG_DMA_CMD, DMA_RUN | if to_ram { DMA_TO_RAM } else { 0 })?;
        self.wait_idle()
    }
}

pub fn region(file: &File, index: u32) -> Res<vfio_region_info> {
    let mut r = vfio_region_info {
        argsz: size_of::<vfio_region_info>() as u32,
        index,
        ..Default::default()
    };
    ioctl_ptr(file, VFIO_DEVICE_GET_REGION_INFO, &mut r)
        .map_err(|e| format!("VFIO_DEVICE_GET_REGION_INFO {index}: {e}"))?;
    Ok(r)
}
