//! virtio-net's part of a snapshot: the MAC address and the config space's status (the
//! queues and the negotiated features are the transport's). The TAP is not in it: the
//! restoring process names one with `--net tap=NAME`, as it names disks anew, so a
//! restored guest can sit in another network namespace than the one it was saved in.
//! Nothing in flight is lost: the device never holds a frame between events.

use serde::{Deserialize, Serialize};

use super::config::{MacAddr, NetConfig};
use super::device::Net;
use super::tap::{Tap, TapError};
use crate::persist::Persist;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The address the guest read from the config space at boot.
    pub mac: MacAddr,
    /// The config space's status field (link up).
    pub status: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum NetRestoreError {
    #[error("--net mac={given}: the snapshot's card has MAC {saved}, which the guest keeps (give no mac= or the same)")]
    MacMismatch { saved: MacAddr, given: MacAddr },
    #[error(transparent)]
    Tap(#[from] TapError),
}

impl<'a> Persist<'a> for Net {
    type State = NetState;
    /// The TAP to attach to in the new process.
    type ConstructorArgs = &'a NetConfig;
    type Error = NetRestoreError;

    fn save(&self) -> NetState {
        NetState {
            mac: self.mac,
            status: self.status,
        }
    }

    fn restore(config: &'a NetConfig, state: &NetState) -> Result<Self, NetRestoreError> {
        if let Some(given) = config.mac {
            if given != state.mac {
                return Err(NetRestoreError::MacMismatch {
                    saved: state.mac,
                    given,
                });
            }
        }
        let mut net = Net::with_tap(Tap::open(&config.tap)?, state.mac);
        net.status = state.status;
        Ok(net)
    }
}
