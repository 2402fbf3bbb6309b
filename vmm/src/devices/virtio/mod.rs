//! virtio 1.x devices over the MMIO transport. The transport ([`mmio`]) owns the queues and
//! the register state; a device implements [`VirtioDevice`] and is handed the queues when
//! the guest notifies one. Each device is a folder with the same files: `mod.rs`
//! (constants), `request.rs` (pure parsing of guest requests, unit-tested), `device.rs`,
//! `persist.rs` (its [`crate::persist::Persist`] impl). [`persist`] holds the saved
//! transport and queue types every device shares; it imports no device.

pub mod block;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Feature bit every modern device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Used-buffer notification suppression with event indices.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

pub const INTERRUPT_USED_RING: u32 = 1;
pub const INTERRUPT_CONFIG: u32 = 2;

/// The device's interrupt line: a status word the driver reads and an irqfd.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            irqfd: Arc::new(irqfd),
        }
    }

    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// Sets the status word as restored from a snapshot (no interrupt is raised).
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// Raises the interrupt for `reason` (used ring or config change).
    pub fn trigger(&self, reason: u32) {
        self.status.fetch_or(reason, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            tracing::warn!("virtio interrupt lost: {e}");
        }
    }
}

/// Copies `data.len()` bytes of a device's config space from `offset`; bytes past its end
/// read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| config.get(o.checked_add(i)?).copied())
            .unwrap_or(0);
    }
}

/// A queue whose available index runs more than its length ahead of what the device has
/// taken is a guest lie: the device must stop using it.
pub fn check_avail(q: &Queue, mem: &GuestMemoryMmap, device: &str) -> Result<(), DeviceBroken> {
    use virtio_queue::QueueT;
    let avail = q
        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        .map_err(|e| DeviceBroken(format!("{device} queue: {e}")))?;
    if (avail - std::num::Wrapping(q.next_avail())).0 > q.size() {
        return Err(DeviceBroken(format!(
            "{device} available index {} is more than {} ahead",
            avail.0,
            q.size()
        )));
    }
    Ok(())
}

/// What a device does when the guest misuses it: the transport marks the device as needing
/// a reset (status bit 0x40) and tells the driver through a config interrupt.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeviceBroken(pub String);

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// virtio device ID (1 = net, 2 = block, 19 = vsock).
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver (VIRTIO_F_VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (ignored by read-only configs).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK with these acknowledged features.
    fn activate(&mut self, acked_features: u64) -> Result<(), DeviceBroken>;
    /// Queue `index` was notified: process what the guest made available.
    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        irq: &Interrupt,
    ) -> Result<(), DeviceBroken>;
    /// A host-side fd (epoll) whose readiness means the device has backend work.
    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Whether the device wants its backend fd watched now (virtio-net does not while the
    /// guest has given it no receive buffer). The event loop asks after every event of the
    /// device and stops or resumes watching.
    fn backend_wanted(&self) -> bool {
        true
    }
    /// The backend fd is ready. `active` is false before DRIVER_OK or after a failure:
    /// the device may take host events but must not touch the queues.
    fn process_backend(
        &mut self,
        _queues: &mut [Queue],
        _mem: &GuestMemoryMmap,
        _irq: &Interrupt,
        _active: bool,
    ) -> Result<(), DeviceBroken> {
        Ok(())
    }
    /// The driver reset the device: forget everything negotiated.
    fn reset(&mut self);
    /// The device as its own type, for saving it (see `devices::persist`).
    fn as_any(&self) -> &dyn std::any::Any;
    /// Called once after a restore, before the vCPUs run: the device may use its queues
    /// (vsock sends its transport reset). Returns true when the config space changed (the
    /// transport then raises a config interrupt).
    fn after_restore(
        &mut self,
        _queues: &mut [Queue],
        _mem: &GuestMemoryMmap,
        _irq: &Interrupt,
    ) -> Result<bool, DeviceBroken> {
        Ok(false)
    }
}
