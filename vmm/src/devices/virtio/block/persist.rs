//! virtio-blk's part of a snapshot. The backing file is not in it: the caller names the
//! disks again at restore (same count and order), which is how a restored task gets its
//! own image disk.

use serde::{Deserialize, Serialize};

use super::defs::VIRTIO_BLK_ID_BYTES;
use super::device::{Block, BlockConfig, BlockError};
use crate::persist::Persist;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub read_only: bool,
    /// The GET_ID answer (the guest's /sys/block/vdX/serial), kept across restores.
    pub serial: String,
    /// Capacity when saved; a restored disk of another size raises a config interrupt.
    pub capacity_sectors: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockRestoreError {
    #[error("disk {index} ({path}) was saved {saved} and is given {given}: the guest negotiated {saved}")]
    ReadOnlyMismatch {
        index: usize,
        path: std::path::PathBuf,
        saved: &'static str,
        given: &'static str,
    },
    #[error(transparent)]
    Open(#[from] BlockError),
}

fn mode(ro: bool) -> &'static str {
    if ro {
        "read-only"
    } else {
        "read-write"
    }
}

/// What a restored disk gets from the new process: the file given for saved disk `index`.
pub struct BlockConstructorArgs<'a> {
    pub index: usize,
    pub config: &'a BlockConfig,
}

impl<'a> Persist<'a> for Block {
    type State = BlockState;
    type ConstructorArgs = BlockConstructorArgs<'a>;
    type Error = BlockRestoreError;

    fn save(&self) -> BlockState {
        let end = self
            .id
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(VIRTIO_BLK_ID_BYTES);
        BlockState {
            read_only: self.read_only,
            serial: String::from_utf8_lossy(&self.id[..end]).into_owned(),
            capacity_sectors: self.capacity_sectors,
        }
    }

    /// Opens the disk given at restore for device `index` saved as `state`.
    fn restore(
        args: BlockConstructorArgs<'a>,
        state: &BlockState,
    ) -> Result<Self, BlockRestoreError> {
        let BlockConstructorArgs { index, config } = args;
        if config.read_only != state.read_only {
            return Err(BlockRestoreError::ReadOnlyMismatch {
                index,
                path: config.path.clone(),
                saved: mode(state.read_only),
                given: mode(config.read_only),
            });
        }
        let mut b = Block::open(config, &state.serial)?;
        b.saved_capacity = Some(state.capacity_sectors);
        Ok(b)
    }
}
