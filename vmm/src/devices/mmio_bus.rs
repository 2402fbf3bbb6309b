//! The MMIO bus: guest-physical address ranges in the MMIO hole mapped to devices.

use std::sync::{Arc, Mutex};

/// A device that answers MMIO. `offset` is relative to the device's base address.
pub trait MmioDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error)]
#[error("MMIO range {base:#x}+{len:#x} overlaps a device already on the bus")]
pub struct MmioOverlap {
    pub base: u64,
    pub len: u64,
}

struct Range {
    base: u64,
    len: u64,
    dev: Arc<Mutex<dyn MmioDevice>>,
}

#[derive(Default)]
pub struct MmioBus {
    ranges: Vec<Range>,
}

impl MmioBus {
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<Mutex<dyn MmioDevice>>,
    ) -> Result<(), MmioOverlap> {
        let end = base.checked_add(len).ok_or(MmioOverlap { base, len })?;
        if self
            .ranges
            .iter()
            .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(MmioOverlap { base, len });
        }
        self.ranges.push(Range { base, len, dev });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<&Range> {
        self.ranges
            .iter()
            .find(|r| addr >= r.base && addr - r.base < r.len)
    }

    /// Reads from `addr`; unclaimed addresses read as all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some(r) => lock(&r.dev).read(addr - r.base, data),
            None => data.fill(0xff),
        }
    }

    /// Writes to `addr`; writes to unclaimed addresses are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some(r) = self.find(addr) {
            lock(&r.dev).write(addr - r.base, data);
        }
    }
}

fn lock(dev: &Mutex<dyn MmioDevice>) -> std::sync::MutexGuard<'_, dyn MmioDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}
