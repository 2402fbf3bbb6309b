//! One vCPU: its KVM set-up and the thread that runs it, dispatching port I/O to the bus
//! and turning fatal exits into an [`ExitReason`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use kvm_bindings::KVM_SYSTEM_EVENT_CRASH;
use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use thiserror::Error;
use vm_memory::GuestMemoryMmap;

use super::{cpuid, kick, lapic, msrs};
use crate::boot;
use crate::devices::mmio_bus::MmioBus;
use crate::devices::pio::PioBus;
use crate::exit::{ExitReason, ExitSignal};
use crate::host::HostQuirks;
use crate::profile::Sampler;
use crate::snapshot::vcpu::{Caps, VcpuState, VcpuStateError};

/// What the VM's controller asks of a paused vCPU thread.
pub enum VcpuCommand {
    Resume,
    /// Save the state, with these MSRs (what KVM lists, and PVM's own on PVM hosts).
    SaveState {
        msrs: Arc<Vec<u32>>,
        caps: Caps,
    },
}

/// What a vCPU thread tells the controller.
pub enum VcpuReply {
    Paused(u8),
    Resumed(u8),
    State(Box<Result<VcpuState, VcpuStateError>>),
}

/// The controller's side of a vCPU thread: how to pause it and talk to it while paused.
pub struct VcpuControl {
    /// Set by the controller before kicking the thread; the thread parks at its next exit.
    pub pause: Arc<AtomicBool>,
    pub commands: Receiver<VcpuCommand>,
    pub replies: Sender<VcpuReply>,
}

#[derive(Debug, Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {id}: {source}")]
    Create {
        id: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: KVM refused {what}: {source}")]
    Kvm {
        id: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: KVM accepted {set} of {total} boot MSRs (first refused: {first:#x})")]
    Msrs {
        id: u8,
        set: usize,
        total: usize,
        first: u32,
    },
    #[error(transparent)]
    State(#[from] VcpuStateError),
    #[error("vCPU {id}: {source}")]
    Regs {
        id: u8,
        #[source]
        source: boot::RegsError,
    },
}

pub struct Vcpu {
    pub id: u8,
    fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `id` of `count` with CPUID, MSRs and LAPIC set; the boot vCPU (0) also
    /// gets long-mode registers pointing at `entry`.
    pub fn new(
        kvm: &Kvm,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        id: u8,
        count: u8,
        entry: u64,
        quirks: HostQuirks,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(id as u64)
            .map_err(|source| VcpuError::Create { id, source })?;
        let kvm_err = |what| move |source| VcpuError::Kvm { id, what, source };
        let cpuid = cpuid::vcpu_cpuid(kvm, id, count, quirks).map_err(kvm_err("CPUID"))?;
        fd.set_cpuid2(&cpuid).map_err(kvm_err("CPUID"))?;

        let boot_msrs = msrs::boot_msrs();
        let set = fd.set_msrs(&boot_msrs).map_err(kvm_err("MSRs"))?;
        let total = boot_msrs.as_slice().len();
        if set != total {
            return Err(VcpuError::Msrs {
                id,
                set,
                total,
                first: boot_msrs.as_slice()[set].index,
            });
        }

        let mut lapic_state = fd.get_lapic().map_err(kvm_err("LAPIC state"))?;
        lapic::configure_lints(&mut lapic_state);
        fd.set_lapic(&lapic_state).map_err(kvm_err("LAPIC state"))?;

        if id == 0 {
            let regs_err = |source| VcpuError::Regs { id, source };
            boot::setup_fpu(&fd).map_err(regs_err)?;
            boot::setup_long_mode_regs(&fd, entry).map_err(regs_err)?;
            boot::setup_page_tables_and_sregs(mem, &fd).map_err(regs_err)?;
        }
        Ok(Self { id, fd })
    }

    /// Creates vCPU `id` and writes the saved registers into it (not yet its MSRs and
    /// events: [`Vcpu::restore_msrs_and_events`], once guest memory is registered).
    pub fn restore_registers(vm: &VmFd, state: &VcpuState) -> Result<Self, VcpuError> {
        let id = state.id;
        let fd = vm
            .create_vcpu(id as u64)
            .map_err(|source| VcpuError::Create { id, source })?;
        state.restore_registers(&fd)?;
        Ok(Self { id, fd })
    }

    pub fn restore_msrs_and_events(&self, state: &VcpuState) -> Result<(), VcpuError> {
        Ok(state.restore_msrs_and_events(&self.fd)?)
    }

    /// Parks the thread until the controller resumes it; serves state requests meanwhile.
    /// Returns false when the controller is gone (the VM is ending).
    fn park(&mut self, ctl: &VcpuControl) -> bool {
        if ctl.replies.send(VcpuReply::Paused(self.id)).is_err() {
            return false;
        }
        loop {
            match ctl.commands.recv() {
                Ok(VcpuCommand::SaveState { msrs, caps }) => {
                    let r = VcpuState::save(&self.fd, self.id, &msrs, caps);
                    if ctl.replies.send(VcpuReply::State(Box::new(r))).is_err() {
                        return false;
                    }
                }
                Ok(VcpuCommand::Resume) => {
                    return ctl.replies.send(VcpuReply::Resumed(self.id)).is_ok();
                }
                Err(_) => return false,
            }
        }
    }

    /// Runs the guest on this thread until the VM ends. Never returns an error: a fatal
    /// exit is reported through `exit`.
    pub fn run(
        mut self,
        bus: Arc<PioBus>,
        mmio: Arc<MmioBus>,
        exit: Arc<ExitSignal>,
        sampler: Option<Arc<Sampler>>,
        ctl: VcpuControl,
    ) {
        let published = kick::publish(self.fd.get_kvm_run());
        self.run_loop(&bus, &mmio, &exit, sampler.as_deref(), &ctl);
        drop(published);
    }

    fn run_loop(
        &mut self,
        bus: &PioBus,
        mmio: &MmioBus,
        exit: &ExitSignal,
        sampler: Option<&Sampler>,
        ctl: &VcpuControl,
    ) {
        loop {
            if exit.reason().is_some() {
                return;
            }
            if ctl.pause.load(Ordering::SeqCst) {
                // KVM finishes a pending port/MMIO access, then returns EINTR at once: the
                // state we park with is complete.
                self.fd.set_kvm_immediate_exit(1);
            }
            let outcome = match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    bus.write(port, data);
                    None
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    bus.read(port, data);
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    mmio.read(addr, data);
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    mmio.write(addr, data);
                    None
                }
                Ok(VcpuExit::Hlt) => Some(ExitReason::PowerOff),
                Ok(VcpuExit::Shutdown) => Some(ExitReason::TripleFault),
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => Some(ExitReason::PowerOff),
                    KVM_SYSTEM_EVENT_RESET => Some(ExitReason::Reset),
                    KVM_SYSTEM_EVENT_CRASH => Some(ExitReason::GuestPanic),
                    other => Some(ExitReason::VcpuFailed(format!(
                        "unknown system event {other}"
                    ))),
                },
                Ok(VcpuExit::InternalError) => Some(ExitReason::VcpuFailed(format!(
                    "KVM internal error (suberror {}) at {}",
                    self.internal_suberror(),
                    self.where_am_i()
                ))),
                Ok(VcpuExit::FailEntry(reason, cpu)) => Some(ExitReason::VcpuFailed(format!(
                    "VM entry failed (reason {reason:#x}, host cpu {cpu})"
                ))),
                Ok(VcpuExit::Intr) => None,
                Ok(other) => {
                    tracing::warn!(vcpu = self.id, "unhandled exit: {other:?}");
                    None
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    if ctl.pause.load(Ordering::SeqCst) {
                        if !self.park(ctl) {
                            return;
                        }
                    } else if let Some(s) = sampler {
                        if let Ok(regs) = self.fd.get_regs() {
                            s.record(regs.rip);
                        }
                    }
                    None
                }
                Err(e) => Some(ExitReason::VcpuFailed(format!("KVM_RUN failed: {e}"))),
            };
            if let Some(reason) = outcome {
                exit.signal(reason);
                return;
            }
        }
    }

    fn internal_suberror(&mut self) -> u32 {
        let run = self.fd.get_kvm_run();
        // SAFETY: this is only called right after KVM_RUN returned KVM_EXIT_INTERNAL_ERROR,
        // for which KVM fills the `internal` member of the exit union.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }

    fn where_am_i(&self) -> String {
        match self.fd.get_regs() {
            Ok(r) => format!("rip {:#x} (rsp {:#x})", r.rip, r.rsp),
            Err(e) => format!("unknown rip ({e})"),
        }
    }
}
