//! The dmacopy device's PCI configuration space: a type-0 header with one I/O BAR, an interrupt
//! pin and an MSI capability.
//!
//! Every byte has a write mask; bytes outside the mask keep their value, so reads never fail and
//! writes to read-only fields are ignored, as on hardware. BAR0 decodes 32 bytes: writing all-ones
//! reads back `0xffff_ffe1` (size probing), bit 0 stays set (I/O space indicator).

/// PCI vendor ID: 0x1234, the unassigned ID QEMU uses for its own test devices (e.g. edu, 1234:11e8).
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device ID of dmacopy ("dc" = DMA copy, revision of the register layout 01).
pub const DEVICE_ID: u16 = 0xdc01;
/// Subsystem vendor and device IDs.
pub const SUBSYSTEM_VENDOR_ID: u16 = VENDOR_ID;
pub const SUBSYSTEM_ID: u16 = 0x0001;
/// Class code 0xff0000: "device does not fit any defined class".
pub const CLASS_CODE: u32 = 0xff_0000;
pub const REVISION: u8 = 1;
/// Size of conventional PCI configuration space (the VFIO config region).
pub const CONFIG_SIZE: usize = 256;
/// Size of the I/O BAR0.
pub const BAR0_SIZE: u32 = 32;

pub const PCI_COMMAND: usize = 0x04;
pub const PCI_STATUS: usize = 0x06;
pub const PCI_BAR0: usize = 0x10;
pub const PCI_CAP_PTR: usize = 0x34;
pub const PCI_INTERRUPT_LINE: usize = 0x3c;
pub const PCI_INTERRUPT_PIN: usize = 0x3d;
/// Offset of the MSI capability (the capability pointer is a byte).
const MSI_CAP_PTR: u8 = 0x50;
pub const MSI_CAP: usize = MSI_CAP_PTR as usize;

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
pub const STATUS_INTERRUPT: u16 = 1 << 3;
pub const STATUS_CAP_LIST: u16 = 1 << 4;
const CAP_ID_MSI: u8 = 0x05;
/// MSI message control: 64-bit address capable, one vector.
const MSI_FLAGS_64BIT: u16 = 1 << 7;

/// The configuration space of one device.
#[derive(Clone)]
pub struct Config {
    data: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl Config {
    /// The power-on state.
    pub fn new() -> Self {
        let mut c = Self {
            data: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
        };
        c.set16(0x00, VENDOR_ID);
        c.set16(0x02, DEVICE_ID);
        let cmd_mask = COMMAND_IO | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        c.wmask[PCI_COMMAND..PCI_COMMAND + 2].copy_from_slice(&cmd_mask.to_le_bytes());
        c.set16(PCI_STATUS, STATUS_CAP_LIST);
        c.data[0x08] = REVISION;
        c.data[0x09..0x0c].copy_from_slice(&CLASS_CODE.to_le_bytes()[..3]);
        c.wmask[0x0c] = 0xff; // cache line size
        c.wmask[0x0d] = 0xff; // latency timer
        c.data[0x0e] = 0x00; // header type 0, single function
        c.data[PCI_BAR0] = 0x01; // I/O space
        let bar_mask = !(BAR0_SIZE - 1) & !0x3;
        c.wmask[PCI_BAR0..PCI_BAR0 + 4].copy_from_slice(&bar_mask.to_le_bytes());
        c.set16(0x2c, SUBSYSTEM_VENDOR_ID);
        c.set16(0x2e, SUBSYSTEM_ID);
        c.data[PCI_CAP_PTR] = MSI_CAP_PTR;
        c.wmask[PCI_INTERRUPT_LINE] = 0xff;
        c.data[PCI_INTERRUPT_PIN] = 1; // INTA#
        c.data[MSI_CAP] = CAP_ID_MSI;
        c.data[MSI_CAP + 1] = 0; // last capability
        c.set16(MSI_CAP + 2, MSI_FLAGS_64BIT);
        c.wmask[MSI_CAP + 2] = 0x71; // enable, multiple message enable
        c.wmask[MSI_CAP + 4..MSI_CAP + 8].copy_from_slice(&0xffff_fffcu32.to_le_bytes());
        c.wmask[MSI_CAP + 8..MSI_CAP + 12].fill(0xff);
        c.wmask[MSI_CAP + 12..MSI_CAP + 14].fill(0xff);
        c
    }

    fn set16(&mut self, off: usize, v: u16) {
        self.data[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn get16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.data[off], self.data[off + 1]])
    }

    /// Reads `out.len()` bytes at `off` (clipped by the caller to the space). `intx_asserted`
    /// feeds the status register's interrupt bit.
    pub fn read(&self, off: usize, out: &mut [u8], intx_asserted: bool) {
        for (i, b) in out.iter_mut().enumerate() {
            let pos = off + i;
            *b = self.data.get(pos).copied().unwrap_or(0);
            if pos == PCI_STATUS && intx_asserted {
                // The bit sits in the register's low byte (PCI config space is little-endian).
                *b |= STATUS_INTERRUPT.to_le_bytes()[0];
            }
        }
    }

    /// Writes `data` at `off`; read-only bits keep their value.
    pub fn write(&mut self, off: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let pos = off + i;
            if pos >= CONFIG_SIZE {
                break;
            }
            let m = self.wmask[pos];
            self.data[pos] = (self.data[pos] & !m) | (v & m);
        }
    }

    pub fn command(&self) -> u16 {
        self.get16(PCI_COMMAND)
    }

    pub fn bus_master(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    pub fn intx_disabled(&self) -> bool {
        self.command() & COMMAND_INTX_DISABLE != 0
    }

    /// The I/O port BAR0 is programmed to.
    pub fn bar0(&self) -> u32 {
        u32::from_le_bytes([
            self.data[PCI_BAR0],
            self.data[PCI_BAR0 + 1],
            self.data[PCI_BAR0 + 2],
            self.data[PCI_BAR0 + 3],
        ]) & !0x3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd32(c: &Config, off: usize) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b, false);
        u32::from_le_bytes(b)
    }

    #[test]
    fn header_ids_and_pin() {
        let c = Config::new();
        assert_eq!(rd32(&c, 0), (DEVICE_ID as u32) << 16 | VENDOR_ID as u32);
        assert_eq!(rd32(&c, 0x08) >> 8, CLASS_CODE);
        assert_eq!(c.data[PCI_INTERRUPT_PIN], 1);
        assert_eq!(c.data[0x0e], 0);
        assert_eq!(c.data[PCI_CAP_PTR] as usize, MSI_CAP);
    }

    #[test]
    fn bar0_size_probe() {
        let mut c = Config::new();
        assert_eq!(rd32(&c, PCI_BAR0), 1);
        c.write(PCI_BAR0, &u32::MAX.to_le_bytes());
        let v = rd32(&c, PCI_BAR0);
        assert_eq!(v, 0xffff_ffe1);
        assert_eq!((!(v & !0x3)).wrapping_add(1), BAR0_SIZE);
        c.write(PCI_BAR0, &0xc040u32.to_le_bytes());
        assert_eq!(c.bar0(), 0xc040);
        // Other BARs and the ROM BAR are not implemented: all-ones reads back 0.
        c.write(0x14, &u32::MAX.to_le_bytes());
        c.write(0x30, &u32::MAX.to_le_bytes());
        assert_eq!(rd32(&c, 0x14), 0);
        assert_eq!(rd32(&c, 0x30), 0);
    }

    #[test]
    fn command_bits() {
        let mut c = Config::new();
        c.write(PCI_COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(
            c.command(),
            COMMAND_IO | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE
        );
        assert!(c.bus_master() && c.intx_disabled());
        let mut s = [0u8; 2];
        c.read(PCI_STATUS, &mut s, true);
        assert_eq!(u16::from_le_bytes(s), STATUS_CAP_LIST | STATUS_INTERRUPT);
        // Read-only IDs.
        c.write(0, &[0, 0, 0, 0]);
        assert_eq!(rd32(&c, 0) & 0xffff, VENDOR_ID as u32);
    }

    #[test]
    fn reads_past_the_end_are_zero() {
        let c = Config::new();
        let mut b = [0xaau8; 8];
        c.read(252, &mut b, false);
        assert_eq!(&b[4..], &[0, 0, 0, 0]);
    }
}
