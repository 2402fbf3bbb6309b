//! Skiff's virtual machine monitor: boots a Linux guest in a KVM microVM.
//!
//! The boot sequence, step by step, is in docs/vmm.md. Modules, one concern each:
//! [`config`] (what to run), [`layout`] (guest physical memory), [`boot`] (kernel,
//! initramfs, boot_params, MP table, long-mode registers), [`cpu`] (CPUID, MSRs, LAPIC,
//! the vCPU loop), [`devices`] (serial, i8042), [`event_loop`], [`exit`] (why a VM
//! ended), [`host`] (PVM detection), [`profile`] (guest RIP sampling), [`initramfs`],
//! [`snapshot`] (state and memory files, restore), [`controller`] and [`api`] (pause,
//! resume, snapshot, shutdown over a control socket), [`seccomp`] (a filter per thread
//! kind).

pub mod api;
pub mod boot;
pub mod config;
pub mod controller;
pub mod cpu;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod host;
pub mod layout;
pub mod log_cap;
pub mod persist;
pub mod profile;
pub mod seccomp;
pub mod snapshot;
pub mod vm;

pub use config::VmConfig;
pub use exit::ExitReason;
/// The cpio writer, a crate of its own so that the control plane need not link the VMM.
pub use initramfs;
pub use vm::{Vm, VmError};
