//! The e820 memory map handed to the guest in `boot_params`.

use crate::layout::{EBDA_START, HIMEM_START, MMIO_HOLE_END, MMIO_HOLE_START};

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// RAM below the EBDA, the legacy BIOS area reserved, RAM from 1 MiB up to the MMIO hole,
/// and whatever is left above 4 GiB.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    let low_end = mem_size.min(MMIO_HOLE_START);
    map.push(E820Entry {
        addr: HIMEM_START,
        size: low_end - HIMEM_START,
        kind: E820_RAM,
    });
    if mem_size > MMIO_HOLE_START {
        map.push(E820Entry {
            addr: MMIO_HOLE_END,
            size: mem_size - MMIO_HOLE_START,
            kind: E820_RAM,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_adds_up_to_the_guest_size() {
        for mib in [128u64, 3072, 4096, 8192] {
            let size = mib << 20;
            let ram: u64 = e820_map(size)
                .iter()
                .filter(|e| e.kind == E820_RAM)
                .map(|e| e.size)
                .sum();
            // Only the 384 KiB legacy hole below 1 MiB is not RAM.
            assert_eq!(ram, size - (HIMEM_START - EBDA_START), "{mib} MiB");
        }
    }

    #[test]
    fn nothing_is_mapped_in_the_mmio_hole() {
        for e in e820_map(8 << 30) {
            let end = e.addr + e.size;
            assert!(end <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END, "{e:?}");
        }
    }
}
