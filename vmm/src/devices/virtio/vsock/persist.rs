//! virtio-vsock's part of a snapshot: the guest CID only. Connections are not saved (their
//! host ends belong to the old process); after a restore the device sends the guest a
//! VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue, so the guest drops every
//! connection and re-reads its CID, as Firecracker does.

use serde::{Deserialize, Serialize};

use super::device::{Vsock, VsockConfig, VsockError};
use crate::persist::Persist;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    pub guest_cid: u64,
}

impl<'a> Persist<'a> for Vsock {
    type State = VsockState;
    /// The socket to listen on in the new process.
    type ConstructorArgs = &'a VsockConfig;
    type Error = VsockError;

    fn save(&self) -> VsockState {
        VsockState {
            guest_cid: self.guest_cid(),
        }
    }

    /// A vsock device for a restored guest, listening on the socket given at restore.
    fn restore(config: &'a VsockConfig, state: &VsockState) -> Result<Self, VsockError> {
        if config.guest_cid != state.guest_cid {
            tracing::info!(
                saved = state.guest_cid,
                given = config.guest_cid,
                "vsock: the guest gets a new CID with the transport reset"
            );
        }
        Vsock::new(config)
    }
}
