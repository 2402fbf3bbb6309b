//! Runs one task in its own microVM: starts `skiff-vmm` with the kernel, the agent's
//! initramfs, the image disk and a vsock, waits for the agent's hello (the readiness
//! signal: no polling), sends the run spec, streams output, and returns how the task ended.
//! The VM is always torn down: on exit, on error, on timeout, and when the caller drops it.

mod vm;

pub use vm::{
    build_agent_initramfs, run_task, LaunchConfig, LaunchError, Output, TaskEnd, TaskResult,
    Timings,
};
