//! One VM, whether booted or restored: [`Vm::boot`] builds it from a
//! [`crate::config::VmConfig`], [`Vm::restore`] from snapshot files; both end in the same
//! [`Vm`], which [`Vm::run`] runs to the end (vCPU threads, the event loop, the control
//! socket).
//!
//! Files: `instance.rs` (the [`Vm`] struct), `error.rs`, `kvm.rs` (the KVM VM and its
//! memory slots), `devices.rs` (the device set), `boot.rs`, `restore.rs`, `run.rs`. This
//! file only re-exports; no file here imports it.

mod boot;
mod devices;
mod error;
mod instance;
mod kvm;
mod restore;
mod run;

pub use devices::{AttachedVirtio, Devices};
pub use error::VmError;
pub use instance::{RunOptions, Vm};
pub use restore::{RestoreError, RestoreOverrides, SnapshotFiles};
