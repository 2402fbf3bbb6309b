//! The Intel MultiProcessor Specification 1.4 table, so that a guest booted with `acpi=off`
//! finds every vCPU, the IOAPIC and how ISA IRQs are routed.
//!
//! Built byte by byte (no `repr(C)` structs, no unsafe): a floating pointer at the start of
//! the EBDA, then the configuration table with processor, bus, IOAPIC and interrupt entries.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{EBDA_START, HIMEM_START, IOAPIC_ADDR, IRQ_MAX, LAPIC_ADDR};

/// APIC IDs are 8 bits and the IOAPIC takes the ID after the last vCPU.
pub const MAX_MPTABLE_CPUS: u8 = 254;

const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const CPU_SIGNATURE: u32 = (6 << 8) | (1 << 4); // family 6, model 1
const CPU_FEATURES: u32 = 0x201; // FPU and APIC
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;

#[derive(Debug, Error)]
pub enum MpTableError {
    #[error("{0} vCPUs do not fit in an MP table (at most {MAX_MPTABLE_CPUS})")]
    TooManyCpus(u8),
    #[error("MP table does not fit below 1 MiB")]
    TooLarge,
    #[error("cannot write the MP table into guest memory: {0}")]
    Write(String),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// The MP table for `num_cpus` vCPUs (APIC IDs 0..n), as bytes to place at `base`.
pub fn mptable_bytes(num_cpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if num_cpus == 0 || num_cpus > MAX_MPTABLE_CPUS {
        return Err(MpTableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION]);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        // type, irq type, flags (2 bytes: conforming polarity/trigger), bus, bus irq, apic, pin
        entries.extend_from_slice(&[ENTRY_INTSRC, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LINTSRC, MP_IRQ_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    const FLOAT_LEN: usize = 16;
    const HEADER_LEN: usize = 44;
    let table_addr = base + FLOAT_LEN as u64;
    let table_len = HEADER_LEN + entries.len();

    let mut header = Vec::with_capacity(table_len);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.push(MPC_SPEC);
    header.push(0); // checksum, filled below
    header.extend_from_slice(b"SKIFF   ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    header.extend_from_slice(&entries);
    header[7] = checksum(&header);

    let mut float = Vec::with_capacity(FLOAT_LEN);
    float.extend_from_slice(b"_MP_");
    float.extend_from_slice(&(table_addr as u32).to_le_bytes());
    float.extend_from_slice(&[1, MPC_SPEC, 0, 0, 0, 0, 0, 0]);
    float[10] = checksum(&float);

    let mut out = float;
    out.extend_from_slice(&header);
    if base + out.len() as u64 > HIMEM_START {
        return Err(MpTableError::TooLarge);
    }
    Ok(out)
}

/// Writes the MP table for `num_cpus` vCPUs at the start of the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MpTableError> {
    let bytes = mptable_bytes(num_cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|e| MpTableError::Write(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts_hold() {
        for n in [1u8, 2, 64, MAX_MPTABLE_CPUS] {
            let t = mptable_bytes(n, EBDA_START).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            let len = u16::from_le_bytes([t[20], t[21]]) as usize;
            assert_eq!(&t[16..20], b"PCMP");
            assert_eq!(sum(&t[16..16 + len]), 0);
            let entries = u16::from_le_bytes([t[50], t[51]]);
            assert_eq!(entries as u32, n as u32 + 2 + (IRQ_MAX + 1) + 2);
        }
    }

    #[test]
    fn rejects_zero_and_too_many_cpus() {
        assert!(mptable_bytes(0, EBDA_START).is_err());
        assert!(mptable_bytes(255, EBDA_START).is_err());
    }
}
