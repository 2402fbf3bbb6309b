//! What a launch needs: where the VM's pieces are, its shape, its disk and directory, its
//! time limits, and optionally a snapshot to restore instead of booting.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the pieces of a microVM are and how big it is.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// A static `skiff-vmm` (it runs in a jail with no libraries).
    pub vmm: PathBuf,
    /// How the VMM is jailed.
    pub jail: super::jail::JailConfig,
    pub kernel: PathBuf,
    /// The agent's initramfs (see [`super::build_agent_initramfs`]).
    pub initrd: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Read-only root filesystem image (EROFS or ext4).
    pub rootfs: PathBuf,
    /// A writable second disk ([`super::scratch_disk`]; the guest's
    /// [`super::scratch_disk::GUEST_DEVICE`]), handed to the VM's uid: a build step's upper.
    /// Snapshots of a shape with one hold one of that size mounted (their template).
    pub scratch: Option<super::scratch_disk::ScratchDisk>,
    /// Scratch directory for this task's sockets and console log.
    pub work_dir: PathBuf,
    pub timeout: Option<Duration>,
    /// After a timeout's SIGTERM, how long the process has before its VM is ended.
    pub stop_timeout: Duration,
    /// Longest wait for the agent's hello (a full boot on an emulating host is slow).
    pub boot_timeout: Duration,
    /// Start from this snapshot (of a booted VM of the same shape whose agent waits for
    /// work) instead of booting; a restore that fails falls back to a boot.
    pub snapshot: Option<Snapshot>,
    /// The task's network ([`crate::network`]): the VMM joins its namespace and gets a
    /// virtio-net device on its TAP (made here, owned by the VM's uid). None: no device.
    pub net: Option<crate::network::TaskNetwork>,
}

/// A snapshot's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub state: PathBuf,
    pub memory: PathBuf,
    /// A per-image warm snapshot (its agent has one image's root ready), not a shape's base.
    pub warm: bool,
    /// The scratch disk the VM had mounted (a build shape's): a VM restored from the
    /// snapshot must get a copy of it as its scratch disk.
    pub scratch: Option<PathBuf>,
}

/// The scratch disk template's file in a snapshot's directory.
pub(crate) const SCRATCH_TEMPLATE_FILE: &str = "scratch.img";

impl Snapshot {
    /// The files in `dir`, if the state and memory are there.
    pub fn in_dir(dir: &Path) -> Option<Snapshot> {
        let template = dir.join(SCRATCH_TEMPLATE_FILE);
        let s = Snapshot {
            state: dir.join("vm.state"),
            memory: dir.join("vm.mem"),
            warm: false,
            scratch: template.is_file().then_some(template),
        };
        (s.state.is_file() && s.memory.is_file()).then_some(s)
    }
}
