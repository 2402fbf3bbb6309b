//! [`Vm::restore`]: a VM rebuilt in a new process from a snapshot: check the state file,
//! map the memory file private, rebuild the VM, its devices and vCPUs from the saved state.
//! Disks and the vsock socket are given anew by the caller ([`RestoreOverrides`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::devices::{Devices, SerialWiring, VirtioBus};
use super::error::{io_err, VmError};
use super::instance::{RunOptions, Vm};
use super::kvm;
use crate::cpu::vcpu::{Vcpu, VcpuError};
use crate::devices::persist::DeviceState;
use crate::devices::serial::{SerialConstructorArgs, SerialPort, SerialRestoreError};
use crate::devices::virtio::block::persist::{BlockConstructorArgs, BlockRestoreError};
use crate::devices::virtio::block::{Block, BlockConfig};
use crate::devices::virtio::mmio::{MmioConstructorArgs, MmioTransport};
use crate::devices::virtio::net::persist::NetRestoreError;
use crate::devices::virtio::net::{Net, NetConfig};
use crate::devices::virtio::persist::PersistError;
use crate::devices::virtio::vsock::{Vsock, VsockConfig, VsockError};
use crate::devices::virtio::VirtioDevice;
use crate::exit::ExitSignal;
use crate::persist::Persist;
use crate::snapshot::file::{self, FileError};
use crate::snapshot::validate::InvalidSnapshot;
use crate::snapshot::vmstate::VmStateError;
use crate::snapshot::Snapshot;

/// The two files of a snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    /// The state file (versioned, checksummed).
    pub state: PathBuf,
    /// Guest memory, mapped private.
    pub memory: PathBuf,
}

/// What the restoring process gives anew, in place of what the snapshot cannot hold.
#[derive(Debug, Clone, Default)]
pub struct RestoreOverrides {
    /// Replace the saved disks, same count and order.
    pub disks: Vec<BlockConfig>,
    /// The vsock socket for this VM (needed when the snapshot has vsock).
    pub vsock: Option<VsockConfig>,
    /// The TAP for this VM (needed when the snapshot has a network card).
    pub net: Option<NetConfig>,
    pub serial_out: Option<PathBuf>,
    /// The console output cap (default [`crate::config::DEFAULT_SERIAL_MAX_BYTES`]).
    pub serial_max_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("snapshot: {0}")]
    File(#[from] FileError),
    #[error(transparent)]
    Invalid(#[from] InvalidSnapshot),
    #[error("restore: {0}")]
    Mismatch(String),
    #[error("restore: device in slot {slot}: {source}")]
    Persist {
        slot: u32,
        #[source]
        source: PersistError,
    },
    #[error("restore: {0}")]
    Disk(#[from] BlockRestoreError),
    #[error("restore: {0}")]
    Vsock(#[from] VsockError),
    #[error("restore: {0}")]
    Net(#[from] NetRestoreError),
    #[error("restore: {0}")]
    Serial(#[from] SerialRestoreError),
    #[error("restore: {0}")]
    VmState(#[from] VmStateError),
    #[error("restore: {0}")]
    Vcpu(#[from] VcpuError),
    #[error("restore: {0}")]
    Vm(#[from] VmError),
}

impl RestoreError {
    /// Bad input (exit code 2): the files or the flags, found before any VM runs.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::File(_)
                | Self::Invalid(_)
                | Self::Mismatch(_)
                | Self::Persist { .. }
                | Self::Disk(_)
                | Self::Net(_)
                | Self::Serial(_)
        )
    }
}

/// What [`rebuild`] makes: the devices, and the vCPUs (registers written, MSRs and events
/// not yet).
struct Rebuilt {
    devices: Devices,
    vcpus: Vec<Vcpu>,
}

/// A virtio device for saved state `state`, made from what the caller gave.
fn restore_device<'a>(
    state: &DeviceState,
    disks: &mut impl Iterator<Item = (usize, &'a BlockConfig)>,
    vsock: Option<&VsockConfig>,
    net: Option<&NetConfig>,
) -> Result<Box<dyn VirtioDevice>, RestoreError> {
    Ok(match state {
        DeviceState::Block(s) => {
            let (index, config) = disks
                .next()
                .ok_or_else(|| RestoreError::Mismatch("fewer disks than saved".into()))?;
            Box::new(Block::restore(BlockConstructorArgs { index, config }, s)?)
        }
        DeviceState::Vsock(s) => {
            let v = vsock
                .ok_or_else(|| RestoreError::Mismatch("the snapshot has a vsock device".into()))?;
            Box::new(Vsock::restore(v, s)?)
        }
        DeviceState::Net(s) => {
            let n = net.ok_or_else(|| {
                RestoreError::Mismatch(
                    "the snapshot has a network card: give --net tap=NAME".into(),
                )
            })?;
            Box::new(Net::restore(n, s)?)
        }
    })
}

/// Rebuilds the VM-wide state, the vCPUs' registers and the devices from a snapshot.
fn rebuild(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    snap: &Snapshot,
    given: &RestoreOverrides,
    exit: &Arc<ExitSignal>,
    timings: &mut Vec<(&'static str, Duration)>,
    t0: Instant,
) -> Result<Rebuilt, RestoreError> {
    // vCPUs first: registering irqfds and ioeventfds waits for the memory slots (KVM's
    // slots lock), creating the irqchip and vCPUs does not.
    kvm::create_irqchip_and_pit(vm)?;
    snap.vm.restore(vm)?;
    let mut vcpus = Vec::with_capacity(snap.vcpus.len());
    for s in &snap.vcpus {
        vcpus.push(Vcpu::restore_registers(vm, s)?);
    }
    timings.push(("irqchip + vCPU registers", t0.elapsed()));
    let mut virtio = VirtioBus::default();
    let mut disks = given.disks.iter().enumerate();
    for d in &snap.devices {
        let device = restore_device(
            &d.device,
            &mut disks,
            given.vsock.as_ref(),
            given.net.as_ref(),
        )?;
        virtio.attach(vm, d.slot, |irq| {
            let args = MmioConstructorArgs {
                device,
                mem: mem.clone(),
                irq,
            };
            MmioTransport::restore(args, &d.transport).map_err(|source| RestoreError::Persist {
                slot: d.slot,
                source,
            })
        })?;
    }
    let max_bytes = given
        .serial_max_bytes
        .unwrap_or(crate::config::DEFAULT_SERIAL_MAX_BYTES);
    let SerialWiring { irq, out } =
        SerialWiring::new(vm, given.serial_out.as_deref(), max_bytes, exit)?;
    let serial = SerialPort::restore(SerialConstructorArgs { irq, out }, &snap.serial)?;
    let devices = Devices::new(virtio, serial, exit)?;
    timings.push(("devices", t0.elapsed()));
    Ok(Rebuilt { devices, vcpus })
}

impl Vm {
    /// Rebuilds a VM from a snapshot's `files`, with the disks, vsock socket and console
    /// the caller gives; `started` is when the process started (for the timings). The
    /// guest does not run until [`Vm::run`].
    pub fn restore(
        files: &SnapshotFiles,
        given: &RestoreOverrides,
        started: Instant,
    ) -> Result<Self, RestoreError> {
        let t0 = started;
        let mut timings: Vec<(&'static str, Duration)> = Vec::new();
        let snap: Snapshot = file::read_state(&files.state)?;
        snap.validate(&files.state)?;
        let saved_disks = snap
            .devices
            .iter()
            .filter(|d| matches!(d.device, DeviceState::Block(_)))
            .count();
        if saved_disks != given.disks.len() {
            return Err(RestoreError::Mismatch(format!(
                "the snapshot has {saved_disks} disk(s); {} given with --disk (same count and order needed)",
                given.disks.len()
            )));
        }
        let saved_vsock = snap
            .devices
            .iter()
            .any(|d| matches!(d.device, DeviceState::Vsock(_)));
        if saved_vsock != given.vsock.is_some() {
            return Err(RestoreError::Mismatch(if saved_vsock {
                "the snapshot has a vsock device: give --vsock cid=N,uds=PATH".into()
            } else {
                "the snapshot has no vsock device: --vsock cannot be added".into()
            }));
        }
        let saved_net = snap
            .devices
            .iter()
            .any(|d| matches!(d.device, DeviceState::Net(_)));
        if saved_net != given.net.is_some() {
            return Err(RestoreError::Mismatch(if saved_net {
                "the snapshot has a network card: give --net tap=NAME".into()
            } else {
                "the snapshot has no network card: --net cannot be added".into()
            }));
        }
        let ranges: Vec<(GuestAddress, usize)> = snap
            .machine
            .regions
            .iter()
            .map(|&(a, l)| (GuestAddress(a), l as usize))
            .collect();
        let mem = file::map_memory(&files.memory, &ranges)?;
        timings.push(("read state + map memory", t0.elapsed()));

        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let vm = kvm::create_bare_vm(&kvm)?;
        timings.push(("KVM VM", t0.elapsed()));
        // KVM_SET_USER_MEMORY_REGION for 128 MiB takes ~4 ms on PVM hosts, mostly waiting
        // (perf sees almost no CPU time in it): it runs on its own thread while the
        // irqchip, VM state, vCPU registers and devices are rebuilt, none of which needs
        // the memory slots.
        let exit = Arc::new(ExitSignal::new().map_err(io_err("exit event"))?);
        let (rest, registered) = std::thread::scope(|s| {
            let reg = s.spawn(|| kvm::register_memory(&vm, &mem));
            let rest = rebuild(&vm, &mem, &snap, given, &exit, &mut timings, t0);
            (rest, reg.join())
        });
        let Rebuilt { devices, vcpus } = rest?;
        registered.map_err(|_| VmError::Io {
            what: "guest memory",
            source: std::io::Error::other("memory registration thread panicked"),
        })??;
        timings.push(("memory registered", t0.elapsed()));
        for (v, s) in vcpus.iter().zip(&snap.vcpus) {
            v.restore_msrs_and_events(s)?;
        }
        // Devices act once (vsock's transport reset) now that interrupts can be delivered.
        for d in &devices.virtio {
            d.transport
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .after_restore();
        }
        timings.push(("MSRs + events", t0.elapsed()));

        Ok(Self {
            kvm,
            fd: vm,
            mem,
            exit,
            devices,
            vcpus,
            machine: snap.machine,
            options: RunOptions {
                started: Some(t0),
                profile_hz: 1000,
                ..Default::default()
            },
            timings,
        })
    }
}
