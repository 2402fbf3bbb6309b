//! What `skiff run --local` and `skiff build --local` start their VMs with: a work folder,
//! the agent's initramfs in it, the VMM, and the server's per-shape snapshots
//! ([`Snapshots`]) in `--snapshot-dir` (default `<state>/snapshots`, where `skiff serve`
//! keeps its own by default). A VM of a shape that has one restores it; the first of a
//! shape boots while the snapshot is made beside it, and the command waits for that at
//! its end so that the next one restores it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use control_plane::server::snapshots::Snapshots;

/// Longest a command waits at its end for a snapshot being made.
const FINISH_WAIT: Duration = Duration::from_secs(600);

/// A local command's VM parts.
pub struct LocalVm {
    /// `<state>/run/<pid>-N`, which the command removes at its end.
    pub work: PathBuf,
    pub initrd: PathBuf,
    pub vmm: PathBuf,
    /// None with `--no-snapshots`.
    pub snapshots: Option<Arc<Snapshots>>,
}

/// Makes the work folder and the agent's initramfs in it, and opens the snapshots in
/// `snapshot_dir` (default `<state>/snapshots`) for VMs of this VMM, kernel and agent
/// unless `no_snapshots`.
pub fn prepare(
    state_dir: &Path,
    kernel: &Path,
    agent: &Path,
    snapshot_dir: Option<&Path>,
    no_snapshots: bool,
) -> anyhow::Result<LocalVm> {
    let work = super::tempdir_in(&state_dir.join("run"))?;
    let initrd = work.join("agent.cpio");
    control_plane::launcher::build_agent_initramfs(agent, &initrd)
        .context("cannot build the agent initramfs")?;
    let vmm = control_plane::install::vmm().path;
    // Not opened at all without snapshots: opening with them off clears the directory.
    let snapshots = if no_snapshots {
        None
    } else {
        let root = snapshot_dir.map_or_else(|| state_dir.join("snapshots"), Path::to_path_buf);
        let s = Snapshots::open(&root, true, 0, &vmm, kernel, &initrd)
            .with_context(|| format!("cannot prepare the snapshot dir {}", root.display()))?;
        Some(Arc::new(s))
    };
    Ok(LocalVm {
        work,
        initrd,
        vmm,
        snapshots,
    })
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
