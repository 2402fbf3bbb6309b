//! Runs one task in its own microVM: starts `skiff-vmm` with the kernel, the agent's
//! initramfs, the image disk and a vsock, waits for the agent's hello (the readiness
//! signal: no polling), sends the run spec, streams output, and returns how the task ended.
//! The VM is always torn down: on exit, on error, on timeout, and when the caller drops it.
//!
//! A [`TaskControl`] lets other threads act on a running task: deliver signals, feed its
//! stdin, or end its VM.

mod control;
mod result;
mod session;
mod snapshot;
mod vmm_process;

pub use control::{ControlError, TaskControl};
pub use result::{Output, TaskEnd, TaskEvent, TaskResult, Timings};
pub use session::{run_task, LaunchConfig, LaunchError};
pub use snapshot::{build_snapshot, Snapshot, SnapshotError};
pub use vmm_process::build_agent_initramfs;
