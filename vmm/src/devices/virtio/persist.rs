//! Saved state every virtio-mmio device shares: the transport's registers and queues (the
//! device's own part is in its folder's `persist.rs`, and the list of devices by kind in
//! `devices::persist`). Restoring rebuilds the queues with virtio-queue's checks, so a
//! state file that lies about a queue is refused, not trusted. Imports no device.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

/// One virtqueue: its guest addresses and where device and driver are in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        Self {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl QueueSnapshot {
    pub fn to_queue(&self) -> Result<Queue, PersistError> {
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
        .map_err(|e| PersistError::Queue(e.to_string()))
    }
}

/// The virtio-mmio transport's registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub acked_features: u64,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub queues: Vec<QueueSnapshot>,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("saved virtqueue is not valid: {0}")]
    Queue(String),
    #[error("saved device type {saved} does not match the device ({device})")]
    DeviceType { saved: u32, device: u32 },
    #[error("saved device has {saved} queues, the device has {device}")]
    QueueCount { saved: usize, device: usize },
}
