//! The devices' part of a snapshot, by kind: which virtio device sits in which slot and
//! what it saved. Each device saves and restores itself through
//! [`crate::persist::Persist`] in its own folder; this module only names them, so that no
//! device module needs to know the others.

use serde::{Deserialize, Serialize};

use super::virtio::block::persist::BlockState;
use super::virtio::block::Block;
use super::virtio::net::persist::NetState;
use super::virtio::net::Net;
use super::virtio::persist::TransportState;
use super::virtio::vsock::persist::VsockState;
use super::virtio::vsock::Vsock;
use super::virtio::VirtioDevice;
use crate::persist::Persist;

/// A device's own state, by kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    Block(BlockState),
    Vsock(VsockState),
    Net(NetState),
}

impl DeviceState {
    /// The saved state of `device`, or None for a kind of device snapshots do not know.
    pub fn of(device: &dyn VirtioDevice) -> Option<Self> {
        let any = device.as_any();
        if let Some(b) = any.downcast_ref::<Block>() {
            Some(Self::Block(b.save()))
        } else if let Some(v) = any.downcast_ref::<Vsock>() {
            Some(Self::Vsock(v.save()))
        } else {
            any.downcast_ref::<Net>().map(|n| Self::Net(n.save()))
        }
    }
}

/// One virtio device in a snapshot: where it sits and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioSnapshot {
    /// Slot on the MMIO bus: base = 0xc0000000 + slot * 4 KiB, IRQ = 5 + slot.
    pub slot: u32,
    pub mmio_base: u64,
    pub irq: u32,
    pub transport: TransportState,
    pub device: DeviceState,
}
