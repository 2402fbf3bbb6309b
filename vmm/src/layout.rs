//! Guest physical memory layout and guest RAM allocation.
//!
//! ```text
//! 0x0000_0500  GDT                     0x0000_9000  PML4
//! 0x0000_0520  IDT (empty)             0x0000_a000  PDPT
//! 0x0000_6000  setup_data: RNG seed
//! 0x0000_7000  boot_params (zero page) 0x0000_b000  PD (1 GiB of 2 MiB pages)
//! 0x0000_8ff0  boot stack top          0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (EBDA)         0x0010_0000  RAM continues; kernel at 16 MiB
//! 0xc000_0000  MMIO hole: virtio-mmio devices, then IOAPIC/LAPIC, up to 4 GiB
//! 0x1_0000_0000 RAM above the hole (when the guest has more than 3 GiB)
//! ```

use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
/// `setup_data` list (the RNG seed) handed to the kernel through boot_params.
pub const SETUP_DATA_ADDR: u64 = 0x6000;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Largest command line the guest kernel accepts (x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX: usize = 2048;
/// Start of the Extended BIOS Data Area, where the MP table lives.
pub const EBDA_START: u64 = 0x9fc00;
pub const HIMEM_START: u64 = 0x10_0000;
/// The kernel's preferred load address (CONFIG_PHYSICAL_START).
pub const KERNEL_LOAD_ADDR: u64 = 0x100_0000;

/// The 32-bit MMIO hole: [3 GiB, 4 GiB).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// virtio-mmio devices are placed from here, one 4 KiB window each.
pub const VIRTIO_MMIO_START: u64 = MMIO_HOLE_START;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// Legacy IRQ lines: COM1 uses 4; virtio devices start at 5.
pub const SERIAL_IRQ: u32 = 4;
pub const VIRTIO_IRQ_START: u32 = 5;
/// IOAPIC pins usable for devices (KVM's IOAPIC has 24).
pub const IRQ_MAX: u32 = 23;

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("cannot map {mib} MiB of guest memory: {source}")]
    Map {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The RAM ranges of a guest with `size` bytes: below the MMIO hole, then above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START as usize),
            (
                GuestAddress(MMIO_HOLE_END),
                (size - MMIO_HOLE_START) as usize,
            ),
        ]
    }
}

/// Maps anonymous, lazily backed guest RAM of `size` bytes.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::from_ranges(&ram_ranges(size)).map_err(|source| MemoryError::Map {
        mib: size >> 20,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        let r = ram_ranges(128 << 20);
        assert_eq!(r, vec![(GuestAddress(0), 128 << 20)]);
    }

    #[test]
    fn large_guest_is_split_around_the_hole() {
        let r = ram_ranges(8 << 30);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START as usize));
        assert_eq!(r[1].0, GuestAddress(MMIO_HOLE_END));
        assert_eq!(r[0].1 + r[1].1, 8 << 30);
    }
}
