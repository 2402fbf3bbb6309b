//! One vCPU: its KVM set-up and the thread that runs it, dispatching port I/O to the bus
//! and turning fatal exits into an [`ExitReason`].

use std::sync::Arc;

use kvm_bindings::KVM_SYSTEM_EVENT_CRASH;
use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use thiserror::Error;
use vm_memory::GuestMemoryMmap;

use super::control::{RunState, VcpuChannel, VcpuCommand, VcpuReply};
use super::{cpuid, kick, lapic, msrs};
use crate::boot;
use crate::devices::mmio_bus::MmioBus;
use crate::devices::pio::PioBus;
use crate::exit::{ExitReason, ExitSignal};
use crate::host::HostQuirks;
use crate::profile::Sampler;
use crate::snapshot::vcpu::{VcpuState, VcpuStateError};

/// What a vCPU thread dispatches the guest's exits to, and reports the VM's end through.
pub struct VcpuIo {
    pub bus: Arc<PioBus>,
    pub mmio: Arc<MmioBus>,
    pub exit: Arc<ExitSignal>,
    pub sampler: Option<Arc<Sampler>>,
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

    /// Runs the guest on this thread until the VM ends. Never returns an error: a fatal
    /// exit is reported through `io.exit`.
    pub fn run(mut self, io: VcpuIo, channel: VcpuChannel) {
        let published = kick::publish(self.fd.get_kvm_run());
        let mut pending = None;
        let mut state = RunState::Running;
        while state != RunState::Exiting {
            state = match state {
                RunState::Running => self.run_once(&io, &channel, &mut pending),
                RunState::Paused => match channel.commands.recv() {
                    Ok(command) => self.on_command(state, command, &channel),
                    Err(_) => state.controller_gone(),
                },
                RunState::Exiting => RunState::Exiting,
            };
        }
        drop(published);
    }

    /// Takes `command` in `state`: answers it and returns the next state (see
    /// [`RunState::next`]). A controller that no longer listens ends the thread.
    fn on_command(
        &mut self,
        state: RunState,
        command: VcpuCommand,
        channel: &VcpuChannel,
    ) -> RunState {
        let next = state.next(&command);
        if next == RunState::Exiting {
            return next;
        }
        let reply = match command {
            VcpuCommand::Pause => VcpuReply::Paused(self.id),
            VcpuCommand::Resume => VcpuReply::Resumed(self.id),
            VcpuCommand::SaveState { msrs, caps } => {
                VcpuReply::State(Box::new(VcpuState::save(&self.fd, self.id, &msrs, caps)))
            }
        };
        if channel.replies.send(reply).is_err() {
            return RunState::Exiting;
        }
        next
    }

    /// One `KVM_RUN` and the exit it ends with. A command is taken only once `KVM_RUN`
    /// returned `EINTR`: one seen before it is kept in `pending` and `immediate_exit` set,
    /// so that KVM first completes any port or MMIO access in flight.
    fn run_once(
        &mut self,
        io: &VcpuIo,
        channel: &VcpuChannel,
        pending: &mut Option<VcpuCommand>,
    ) -> RunState {
        if io.exit.reason().is_some() {
            return RunState::Exiting;
        }
        if pending.is_none() {
            *pending = channel.commands.try_recv().ok();
        }
        if pending.is_some() {
            self.fd.set_kvm_immediate_exit(1);
        }
        let outcome = match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                io.bus.write(port, data);
                None
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                io.bus.read(port, data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                io.mmio.read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                io.mmio.write(addr, data);
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
                // Cleared before the channel is read: a kick landing after this line
                // interrupts the next KVM_RUN, and its command is already in the channel.
                self.fd.set_kvm_immediate_exit(0);
                let command = match pending.take() {
                    Some(c) => Some(c),
                    None => channel.commands.try_recv().ok(),
                };
                match command {
                    Some(c) => return self.on_command(RunState::Running, c, channel),
                    None => {
                        // A kick with no command is the profiler's.
                        if let Some(s) = &io.sampler {
                            if let Ok(regs) = self.fd.get_regs() {
                                s.record(regs.rip);
                            }
                        }
                    }
                }
                None
            }
            Err(e) => Some(ExitReason::VcpuFailed(format!("KVM_RUN failed: {e}"))),
        };
        match outcome {
            Some(reason) => {
                io.exit.signal(reason);
                RunState::Exiting
            }
            None => RunState::Running,
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
