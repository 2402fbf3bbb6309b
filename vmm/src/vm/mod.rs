//! One VM, whether booted or restored: [`Vm::boot`] builds it from a
//! [`crate::config::VmConfig`],
//! [`Vm::restore`] from snapshot files; both end in the same [`Vm`], which [`Vm::run`]
//! runs to the end (vCPU threads, the event loop, the control socket).
//!
//! Files: `kvm.rs` (the KVM VM and its memory slots), `devices.rs` (the device set),
//! `boot.rs`, `restore.rs`, `run.rs`.

mod boot;
mod devices;
mod kvm;
mod restore;
mod run;

use kvm_ioctls::{Kvm, VmFd};
use thiserror::Error;
use vm_memory::GuestMemoryMmap;

use std::sync::Arc;

pub use devices::{AttachedVirtio, Devices};
pub use restore::{RestoreError, RestoreOverrides, SnapshotFiles};

use crate::boot::BootError;
use crate::config::ConfigError;
use crate::cpu::vcpu::{Vcpu, VcpuError};
use crate::devices::mmio_bus::MmioOverlap;
use crate::devices::pio::PioOverlap;
use crate::devices::virtio::block::BlockError;
use crate::devices::virtio::vsock::VsockError;
use crate::exit::ExitSignal;
use crate::layout::MemoryError;
use crate::snapshot::MachineInfo;

#[derive(Debug, Error)]
pub enum VmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM: cannot {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Pio(#[from] PioOverlap),
    #[error(transparent)]
    Mmio(#[from] MmioOverlap),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error("cannot open serial output {path}: {source}")]
    SerialOut {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    ApiSocket {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

/// How a VM runs, apart from the guest: profiling, the control socket, timings.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub profile_out: Option<std::path::PathBuf>,
    /// System.map for the profile.
    pub profile_symbols: Option<std::path::PathBuf>,
    pub profile_hz: u32,
    /// Serve the control API (pause, resume, snapshot, shutdown) on this Unix socket.
    pub api_sock: Option<std::path::PathBuf>,
    /// When the process started, and whether to print the restore timings on stderr.
    pub started: Option<std::time::Instant>,
    pub print_timings: bool,
}

/// One VM and everything it holds, from creation to its end. Built by [`Vm::boot`] or
/// [`Vm::restore`]; once [`Vm::run`] starts the vCPUs, the VM moves into the
/// [`crate::controller::Controller`], which serves pause, resume and snapshot.
pub struct Vm {
    pub(crate) kvm: Kvm,
    pub(crate) fd: VmFd,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) exit: Arc<ExitSignal>,
    pub(crate) devices: Devices,
    /// Created and set up, not yet running; empty once they run on their threads.
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) machine: MachineInfo,
    pub(crate) options: RunOptions,
    /// Restore phases (name, time since start), printed once the vCPUs run.
    pub(crate) timings: Vec<(&'static str, std::time::Duration)>,
}

impl Vm {
    /// Sets the control socket (pause, resume, snapshot, shutdown) the VM serves.
    pub fn set_api_sock(&mut self, path: Option<std::path::PathBuf>) {
        self.options.api_sock = path;
    }

    /// Whether [`Vm::run`] prints the restore timings on stderr.
    pub fn set_print_timings(&mut self, print: bool) {
        self.options.print_timings = print;
    }

    /// The VM's shape, as a snapshot records it.
    pub fn machine(&self) -> &MachineInfo {
        &self.machine
    }

    /// The device set.
    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The KVM VM.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The signal the VM's end is reported through.
    pub fn exit(&self) -> &Arc<ExitSignal> {
        &self.exit
    }
}
