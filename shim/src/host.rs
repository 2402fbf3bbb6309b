//! What every container's launch shares: the installed Skiff pieces (VMM, jailer, kernel,
//! agent), the root filesystem builder, the VM snapshots, found once per shim.
//!
//! Snapshots are `skiff serve`'s, in `<state>/snapshots`: a container whose VM shape
//! (vCPUs × MiB) has one restores it instead of booting; the first container of a shape
//! boots, and the shim builds the shape's snapshot beside it (waiting for that build
//! before it exits), so the next one restores.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use control_plane::images::rootfs::RootfsBuilder;
use control_plane::install;
use control_plane::launcher::{self, JailConfig};
use control_plane::server::snapshots::Snapshots;

pub struct Host {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    /// The agent's initramfs, built for this shim (in `dir`).
    pub initrd: PathBuf,
    pub jail: JailConfig,
    pub rootfs: RootfsBuilder,
    pub snapshots: Arc<Snapshots>,
    /// `<state>/containerd/shim-<pid>`: this shim's own files, removed when it exits.
    pub dir: PathBuf,
}

/// Whether the shims build and use snapshots (`SKIFF_SHIM_SNAPSHOTS=0` turns them off).
fn snapshots_enabled() -> bool {
    std::env::var("SKIFF_SHIM_SNAPSHOTS").as_deref() != Ok("0")
}

impl Host {
    /// Finds the installation (as `skiff` does: `SKIFF_KERNEL`, `SKIFF_AGENT`,
    /// `SKIFF_VMM`, or the installed files) and the state directory (`SKIFF_STATE_DIR`,
    /// else `/var/lib/skiff`).
    pub fn find() -> Result<Self, String> {
        let kernel = install::kernel(None).map_err(|e| e.to_string())?.path;
        let agent = install::agent(None).map_err(|e| e.to_string())?.path;
        let vmm = install::vmm().path;
        let state = control_plane::state_dir::resolve(None);
        let rootfs = RootfsBuilder::new(&state, None).map_err(|e| e.to_string())?;
        let shims = state.join("containerd");
        sweep_dead_shims(&shims);
        let dir = shims.join(format!("shim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let initrd = dir.join("agent.cpio");
        launcher::build_agent_initramfs(&agent, &initrd)
            .map_err(|e| format!("building the agent's initramfs: {e}"))?;
        let snapshots = Snapshots::open(
            &state.join("snapshots"),
            snapshots_enabled(),
            0,
            &vmm,
            &kernel,
            &initrd,
        )
        .map_err(|e| format!("{}: {e}", state.join("snapshots").display()))?;
        Ok(Self {
            vmm,
            kernel,
            initrd,
            jail: JailConfig::installed(),
            rootfs,
            snapshots: Arc::new(snapshots),
            dir,
        })
    }

    /// At the shim's exit: lets a snapshot build finish (bounded), then removes the
    /// shim's files.
    pub fn close(&self) {
        if !self
            .snapshots
            .wait_for_builds(std::time::Duration::from_secs(600))
        {
            self.snapshots.stop_builders();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the directories of shims that are gone (killed before they could).
fn sweep_dead_shims(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shim-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
