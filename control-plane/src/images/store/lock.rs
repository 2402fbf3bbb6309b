//! `<state>/gc.lock`: pulls, imports and rootfs builds hold it shared while they write;
//! prune holds it exclusively (see `gc`).

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::FlockOperation;

use super::error::PullError;

/// A held `gc.lock`; released on drop.
#[derive(Debug)]
pub struct GcGuard(#[allow(dead_code)] File);

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> PullError + '_ {
    move |source| PullError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn lock(state_dir: &Path, op: FlockOperation) -> Result<GcGuard, PullError> {
    let path = state_dir.join("gc.lock");
    let file = File::create(&path).map_err(io_at(&path))?;
    rustix::fs::flock(&file, op).map_err(|e| PullError::Io {
        path,
        source: e.into(),
    })?;
    Ok(GcGuard(file))
}

/// Taken by every writer of the store (shared).
pub fn writer_lock(state_dir: &Path) -> Result<GcGuard, PullError> {
    lock(state_dir, FlockOperation::LockShared)
}
