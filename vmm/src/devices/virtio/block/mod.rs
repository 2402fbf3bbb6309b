//! virtio-blk: a disk backed by a host file, read-only or read-write.

mod defs;
mod device;
pub mod persist;
mod request;

pub use defs::*;
pub use device::{Block, BlockConfig, BlockError};
pub use request::{execute, RequestOutcome};
