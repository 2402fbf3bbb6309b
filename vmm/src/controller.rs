//! The running VM's controls: pause, resume, snapshot, shutdown. Serves the control API
//! ([`crate::api`]); one operation at a time.
//!
//! Pausing is Firecracker's scheme: set the pause flag, kick every vCPU thread with a
//! signal (its handler sets `immediate_exit`, see [`crate::cpu::kick`]), and wait for each
//! to report that it parked. A vCPU parks only after KVM_RUN returned EINTR, so any port
//! or MMIO access it was doing has been completed by KVM first.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::cpu::kick;
use crate::cpu::vcpu::{VcpuCommand, VcpuReply};
use crate::devices::serial::SerialPort;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::persist::VirtioSnapshot;
use crate::exit::{ExitReason, ExitSignal};
use crate::snapshot::file::{self, FileError};
use crate::snapshot::vcpu::{self, Caps, VcpuStateError};
use crate::snapshot::vmstate::{VmState, VmStateError};
use crate::snapshot::{MachineInfo, Snapshot};

/// How long vCPUs get to park or answer.
const VCPU_TIMEOUT: Duration = Duration::from_secs(10);

/// The controller's handle on one vCPU thread.
pub struct VcpuLink {
    pub thread: libc::pthread_t,
    pub commands: Sender<VcpuCommand>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("vCPUs did not {0} within {VCPU_TIMEOUT:?} (is the VM ending?)")]
    Timeout(&'static str),
    #[error("the VM is ending")]
    Gone,
    #[error(transparent)]
    VcpuState(#[from] VcpuStateError),
    #[error(transparent)]
    VmState(#[from] VmStateError),
    #[error("cannot write the snapshot: {0}")]
    File(#[from] FileError),
}

pub use vmm_api::SnapshotReport;

type TransportSlot = (u32, u64, u32, Arc<Mutex<MmioTransport>>);

struct Inner {
    paused: bool,
    replies: Receiver<VcpuReply>,
}

pub struct Controller {
    kvm: kvm_ioctls::Kvm,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    devices: Vec<TransportSlot>,
    serial: Arc<Mutex<SerialPort>>,
    vcpus: Vec<VcpuLink>,
    pause: Arc<AtomicBool>,
    inner: Mutex<Inner>,
    machine: MachineInfo,
    exit: Arc<ExitSignal>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Controller {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kvm: kvm_ioctls::Kvm,
        vm: Arc<VmFd>,
        mem: GuestMemoryMmap,
        devices: Vec<TransportSlot>,
        serial: Arc<Mutex<SerialPort>>,
        vcpus: Vec<VcpuLink>,
        pause: Arc<AtomicBool>,
        replies: Receiver<VcpuReply>,
        machine: MachineInfo,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Self {
            kvm,
            vm,
            mem,
            devices,
            serial,
            vcpus,
            pause,
            inner: Mutex::new(Inner {
                paused: false,
                replies,
            }),
            machine,
            exit,
        }
    }

    /// Waits for one reply from each vCPU that `want` accepts.
    fn collect<T>(
        &self,
        inner: &Inner,
        what: &'static str,
        mut want: impl FnMut(VcpuReply) -> Option<T>,
    ) -> Result<Vec<T>, ControlError> {
        let deadline = Instant::now() + VCPU_TIMEOUT;
        let mut out = Vec::with_capacity(self.vcpus.len());
        while out.len() < self.vcpus.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match inner.replies.recv_timeout(left) {
                Ok(r) => out.extend(want(r)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Err(ControlError::Timeout(what))
                }
                Err(_) => return Err(ControlError::Gone),
            }
        }
        Ok(out)
    }

    fn pause_locked(&self, inner: &mut Inner) -> Result<(), ControlError> {
        if inner.paused {
            return Ok(());
        }
        if self.exit.reason().is_some() {
            return Err(ControlError::Gone);
        }
        self.pause.store(true, Ordering::SeqCst);
        for v in &self.vcpus {
            kick::kick(v.thread);
        }
        self.collect(inner, "pause", |r| match r {
            VcpuReply::Paused(id) => Some(id),
            _ => None,
        })?;
        inner.paused = true;
        tracing::info!("VM paused");
        Ok(())
    }

    pub fn pause(&self) -> Result<(), ControlError> {
        self.pause_locked(&mut lock(&self.inner))
    }

    pub fn resume(&self) -> Result<(), ControlError> {
        let mut inner = lock(&self.inner);
        if !inner.paused {
            return Ok(());
        }
        self.pause.store(false, Ordering::SeqCst);
        for v in &self.vcpus {
            v.commands
                .send(VcpuCommand::Resume)
                .map_err(|_| ControlError::Gone)?;
        }
        self.collect(&inner, "resume", |r| match r {
            VcpuReply::Resumed(id) => Some(id),
            _ => None,
        })?;
        inner.paused = false;
        tracing::info!("VM resumed");
        Ok(())
    }

    /// Pauses the VM (if running) and writes a snapshot; the VM stays paused.
    pub fn snapshot(
        &self,
        state_path: &Path,
        memory_path: &Path,
    ) -> Result<SnapshotReport, ControlError> {
        let start = Instant::now();
        let mut inner = lock(&self.inner);
        self.pause_locked(&mut inner)?;
        // Devices are held still while their state and guest memory are written: the event
        // loop touches queues and guest memory only under these locks.
        let serial = lock(&self.serial);
        let transports: Vec<_> = self.devices.iter().map(|d| (d, lock(&d.3))).collect();
        let devices: Vec<VirtioSnapshot> = transports
            .iter()
            .map(|((slot, base, irq, _), t)| VirtioSnapshot {
                slot: *slot,
                mmio_base: *base,
                irq: *irq,
                transport: t.save_state(),
                device: t.save_device_state(),
            })
            .collect();
        let caps = Caps::probe(&self.kvm)?;
        let msrs = Arc::new(vcpu::msrs_to_save(&self.kvm)?);
        for v in &self.vcpus {
            v.commands
                .send(VcpuCommand::SaveState {
                    msrs: msrs.clone(),
                    caps,
                })
                .map_err(|_| ControlError::Gone)?;
        }
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for r in self.collect(&inner, "save their state", |r| match r {
            VcpuReply::State(s) => Some(*s),
            _ => None,
        })? {
            vcpus.push(r?);
        }
        vcpus.sort_by_key(|v| v.id);
        let pvm_msrs = vcpus
            .first()
            .map(|v| {
                v.msrs
                    .iter()
                    .filter(|m| {
                        (crate::host::PVM_MSR_FIRST..=crate::host::PVM_MSR_LAST).contains(&m.index)
                    })
                    .count()
            })
            .unwrap_or(0);
        let msr_count = vcpus.first().map_or(0, |v| v.msrs.len());
        tracing::info!(msrs = msr_count, pvm_msrs, "vCPU state saved");
        let snap = Snapshot {
            machine: self.machine.clone(),
            vm: VmState::save(&self.vm)?,
            vcpus,
            serial: serial.save_state(),
            devices,
        };
        let memory_data_bytes = file::write_memory(memory_path, &self.mem)?;
        drop(transports);
        drop(serial);
        let state_bytes = file::write_state(state_path, &snap)?;
        let report = SnapshotReport {
            state_bytes,
            memory_data_bytes,
            memory_file_bytes: self.machine.regions.iter().map(|r| r.1).sum(),
            millis: start.elapsed().as_secs_f64() * 1000.0,
            msrs: msr_count,
            pvm_msrs,
        };
        tracing::info!(?report, "snapshot written");
        Ok(report)
    }

    /// Ends the VM (exit code 0).
    pub fn shutdown(&self) {
        self.exit.signal(ExitReason::Shutdown);
    }
}
