//! [`Vm`]: one VM and everything it holds, from creation to its end.

use std::sync::Arc;

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use super::devices::Devices;
use crate::cpu::vcpu::Vcpu;
use crate::exit::ExitSignal;
use crate::snapshot::MachineInfo;

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
    /// What a system call outside a thread's seccomp filter does.
    pub seccomp: crate::seccomp::SeccompMode,
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

    /// Samples the guest's instruction pointer into `out` (per symbol of `symbols`).
    pub fn set_profile(
        &mut self,
        out: std::path::PathBuf,
        symbols: Option<std::path::PathBuf>,
        hz: Option<u32>,
    ) {
        self.options.profile_out = Some(out);
        self.options.profile_symbols = symbols;
        if let Some(hz) = hz {
            self.options.profile_hz = hz;
        }
    }

    /// What a system call outside a thread's seccomp filter does (default: kill).
    pub fn set_seccomp(&mut self, mode: crate::seccomp::SeccompMode) {
        self.options.seccomp = mode;
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
