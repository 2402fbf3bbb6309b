//! The running VM's controls: pause, resume, snapshot, shutdown. Serves the control API
//! ([`crate::api`]); one operation at a time.
//!
//! The controller owns the [`Vm`] once its vCPUs run, and drives the vCPU threads through
//! their [`VcpuHandles`] (Firecracker's scheme: a command on each thread's channel and a
//! kick out of `KVM_RUN`; see [`crate::cpu::control`]).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::cpu::control::{VcpuControlError, VcpuHandles};
use crate::devices::persist::{DeviceState, VirtioSnapshot};
use crate::exit::ExitReason;
use crate::persist::Persist;
use crate::snapshot::file::{self, FileError};
use crate::snapshot::vcpu::{self, Caps, VcpuStateError};
use crate::snapshot::vmstate::{VmState, VmStateError};
use crate::snapshot::Snapshot;
use crate::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Vcpus(#[from] VcpuControlError),
    #[error("the VM is ending")]
    Gone,
    #[error(transparent)]
    VcpuState(#[from] VcpuStateError),
    #[error(transparent)]
    VmState(#[from] VmStateError),
    #[error("cannot write the snapshot: {0}")]
    File(#[from] FileError),
    #[error("device in slot {0} is of a kind snapshots do not know (type {1})")]
    UnknownDevice(u32, u32),
}

pub use vmm_api::SnapshotReport;

pub struct Controller {
    vm: Vm,
    /// Held for the whole of each operation: one at a time.
    vcpus: Mutex<VcpuHandles>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Controller {
    /// The controls of `vm`, whose vCPUs run on the threads behind `vcpus`.
    pub fn new(vm: Vm, vcpus: VcpuHandles) -> Self {
        Self {
            vm,
            vcpus: Mutex::new(vcpus),
        }
    }

    /// The VM being controlled.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    fn pause_locked(&self, vcpus: &mut VcpuHandles) -> Result<(), ControlError> {
        if vcpus.paused() {
            return Ok(());
        }
        if self.vm.exit.reason().is_some() {
            return Err(ControlError::Gone);
        }
        vcpus.pause()?;
        tracing::info!("VM paused");
        Ok(())
    }

    pub fn pause(&self) -> Result<(), ControlError> {
        self.pause_locked(&mut lock(&self.vcpus))
    }

    pub fn resume(&self) -> Result<(), ControlError> {
        let mut vcpus = lock(&self.vcpus);
        if !vcpus.paused() {
            return Ok(());
        }
        vcpus.resume()?;
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
        let mut vcpu_handles = lock(&self.vcpus);
        self.pause_locked(&mut vcpu_handles)?;
        let vm = &self.vm;
        // Devices are held still while their state and guest memory are written: the event
        // loop touches queues and guest memory only under these locks.
        let serial = lock(&vm.devices.serial);
        let transports: Vec<_> = vm
            .devices
            .virtio
            .iter()
            .map(|d| (d, lock(&d.transport)))
            .collect();
        let mut devices = Vec::with_capacity(transports.len());
        for (d, t) in &transports {
            let device = DeviceState::of(t.device()).ok_or(ControlError::UnknownDevice(
                d.slot,
                t.device().device_type(),
            ))?;
            devices.push(VirtioSnapshot {
                slot: d.slot,
                mmio_base: d.base,
                irq: d.irq,
                transport: t.save(),
                device,
            });
        }
        let caps = Caps::probe(&vm.kvm)?;
        let msrs = Arc::new(vcpu::msrs_to_save(&vm.kvm, vm.machine.pvm)?);
        let mut vcpus = Vec::new();
        for r in vcpu_handles.save_states(msrs, caps)? {
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
            machine: vm.machine.clone(),
            vm: VmState::save(&vm.fd)?,
            vcpus,
            serial: serial.save(),
            devices,
        };
        let memory_data_bytes = file::write_memory(memory_path, &vm.mem)?;
        drop(transports);
        drop(serial);
        let state_bytes = file::write_state(state_path, &snap)?;
        let report = SnapshotReport {
            state_bytes,
            memory_data_bytes,
            memory_file_bytes: vm.machine.regions.iter().map(|r| r.1).sum(),
            millis: start.elapsed().as_secs_f64() * 1000.0,
            msrs: msr_count,
            pvm_msrs,
        };
        tracing::info!(?report, "snapshot written");
        Ok(report)
    }

    /// Ends the VM (exit code 0).
    pub fn shutdown(&self) {
        self.vm.exit.signal(ExitReason::Shutdown);
    }
}
