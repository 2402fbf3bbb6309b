//! The port I/O bus: maps x86 I/O ports to devices. Small enough to own: a sorted list of
//! ranges, looked up on every PIO exit.

use std::sync::{Arc, Mutex};

/// A device that answers port I/O. `offset` is relative to the device's base port.
pub trait PioDevice: Send {
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]);
}

#[derive(Debug, thiserror::Error)]
#[error("I/O ports {base:#x}+{len} overlap a device already on the bus")]
pub struct PioOverlap {
    pub base: u16,
    pub len: u16,
}

struct Range {
    base: u16,
    len: u16,
    dev: Arc<Mutex<dyn PioDevice>>,
}

#[derive(Default)]
pub struct PioBus {
    ranges: Vec<Range>,
}

impl PioBus {
    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        dev: Arc<Mutex<dyn PioDevice>>,
    ) -> Result<(), PioOverlap> {
        let end = base as u32 + len as u32;
        if self
            .ranges
            .iter()
            .any(|r| (base as u32) < r.base as u32 + r.len as u32 && (r.base as u32) < end)
        {
            return Err(PioOverlap { base, len });
        }
        self.ranges.push(Range { base, len, dev });
        self.ranges.sort_by_key(|r| r.base);
        Ok(())
    }

    fn find(&self, port: u16) -> Option<&Range> {
        self.ranges
            .iter()
            .find(|r| port >= r.base && (port as u32) < r.base as u32 + r.len as u32)
    }

    /// Reads from `port`; an unclaimed port reads as all ones, like an empty ISA bus.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some(r) => lock(&r.dev).read(port - r.base, data),
            None => data.fill(0xff),
        }
    }

    /// Writes to `port`; writes to unclaimed ports are dropped.
    pub fn write(&self, port: u16, data: &[u8]) {
        if let Some(r) = self.find(port) {
            lock(&r.dev).write(port - r.base, data);
        }
    }
}

/// Locks a device, carrying on if a previous holder panicked: device state is plain data,
/// and one bad access must not take the VM down.
fn lock(dev: &Mutex<dyn PioDevice>) -> std::sync::MutexGuard<'_, dyn PioDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u16, u8)>);
    impl PioDevice for Echo {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn routes_by_port_and_rejects_overlap() {
        let mut bus = PioBus::default();
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        assert!(bus.insert(0x3ff, 2, dev.clone()).is_err());
        let mut b = [0u8; 1];
        bus.read(0x3fa, &mut b);
        assert_eq!(b[0], 2);
        bus.read(0x2f8, &mut b);
        assert_eq!(b[0], 0xff);
        bus.write(0x3f9, &[7]);
        assert_eq!(dev.lock().unwrap().0, vec![(1, 7)]);
    }
}
