//! The VM snapshots of `skiff run --local` and `skiff build --local`: the server's
//! per-shape snapshots ([`Snapshots`]), in `--snapshot-dir` (default `<state>/snapshots`,
//! where `skiff serve` keeps its own by default). A VM of a shape that has one restores
//! it; the first of a shape boots while the snapshot is made beside it, and the command
//! waits for that at its end so that the next one restores it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use control_plane::server::snapshots::Snapshots;

/// Longest a command waits at its end for a snapshot being made.
const FINISH_WAIT: Duration = Duration::from_secs(600);

/// The snapshots in `dir` (default `<state>/snapshots`) for VMs of this VMM, kernel and
/// agent initramfs; None with `--no-snapshots`.
pub fn open(
    state_dir: &Path,
    dir: Option<&Path>,
    disabled: bool,
    vmm: &Path,
    kernel: &Path,
    initrd: &Path,
) -> anyhow::Result<Option<Arc<Snapshots>>> {
    if disabled {
        // Not opened at all: opening with snapshots off would clear the directory.
        return Ok(None);
    }
    let root = dir.map_or_else(|| state_dir.join("snapshots"), Path::to_path_buf);
    let s = Snapshots::open(&root, true, 0, vmm, kernel, initrd)
        .with_context(|| format!("cannot prepare the snapshot dir {}", root.display()))?;
    Ok(Some(Arc::new(s)))
}

/// Lets a snapshot still being made finish (at most [`FINISH_WAIT`]), saying so once;
/// ends it when `cancelled` says so, also while waiting (Ctrl-C).
pub fn finish(snapshots: &Snapshots, what: &str, cancelled: &dyn Fn() -> bool) {
    let deadline = Instant::now() + FINISH_WAIT;
    let mut told = false;
    while !cancelled() && Instant::now() < deadline {
        if snapshots.wait_for_builds(Duration::from_millis(250)) {
            return;
        }
        if !told {
            eprintln!("finishing the snapshot of this {what}'s VM shape, for the next ones");
            told = true;
        }
    }
    snapshots.stop_builders();
}
