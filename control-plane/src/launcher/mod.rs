//! Runs one task in its own microVM: starts `skiff-vmm` with the kernel, the agent's
//! initramfs, the image disk and a vsock, waits for the agent's hello (the readiness
//! signal: no polling), sends the run spec, streams output, and returns how the task ended.
//! The VM is always torn down: on exit, on error, on timeout, and when the caller drops it.
//!
//! Modules, each depending only on those listed before it: [`config`] (what a launch
//! needs), [`result`] (what it reports), `error`, [`control`] (a handle other threads hold: signals,
//! stdin, kill), [`jail`] (the VM's uid, cgroup and directories for `skiff-jailer`),
//! `vmm_process` (the jailed VMM's command line and exit status), `start` (a VM up
//! to the agent's hello), `session` (the task's state machine), `snapshot` (building the
//! fast path's snapshots), `agent_initramfs`, [`scratch_disk`] (a writable ext4 disk the
//! host makes and never mounts).

mod agent_initramfs;
mod config;
mod control;
mod error;
pub mod jail;
mod result;
pub mod scratch_disk;
mod session;
mod snapshot;
mod socket_path;
mod start;
mod vmm_process;

pub use agent_initramfs::build_agent_initramfs;
pub use config::{LaunchConfig, Snapshot};
pub use control::{ControlError, ExecOutcome, TaskControl};
pub use error::LaunchError;
pub use jail::JailConfig;
pub use result::{Output, TaskEnd, TaskEvent, TaskResult, Timings};
pub use session::run_task;
pub use snapshot::{build_snapshot, build_warm_snapshot, SnapshotError, WarmBuilt};
pub use vmm_process::guest_cmdline;
