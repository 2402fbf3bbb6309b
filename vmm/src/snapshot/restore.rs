//! Restoring a snapshot in a new process: check the state file, map the memory file
//! private, rebuild the VM, its devices and vCPUs from the saved state, and hand back a
//! [`Vm`] ready to run. Disks and the vsock socket are given anew by the caller.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::file::{self, FileError};
use super::vmstate::VmStateError;
use super::Snapshot;
use crate::cpu::vcpu::{Vcpu, VcpuError};
use crate::devices::mmio_bus::MmioBus;
use crate::devices::pio::PioBus;
use crate::devices::serial::{SerialPort, SerialRestoreError};
use crate::devices::virtio::block::persist::BlockRestoreError;
use crate::devices::virtio::block::{Block, BlockConfig};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::persist::{DeviceState, PersistError};
use crate::devices::virtio::vsock::{Vsock, VsockConfig, VsockError};
use crate::devices::virtio::VirtioDevice;
use crate::exit::ExitSignal;
use crate::layout;
use crate::vm::{self, AttachedVirtio, RunOptions, Vm, VmError};

/// What the caller gives at restore.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub state: PathBuf,
    pub memory: PathBuf,
    /// Replace the saved disks, same count and order.
    pub disks: Vec<BlockConfig>,
    /// The vsock socket for this VM (needed when the snapshot has vsock).
    pub vsock: Option<VsockConfig>,
    pub serial_out: Option<PathBuf>,
    pub api_sock: Option<PathBuf>,
    pub print_timings: bool,
    /// When the process started (for the timings).
    pub started: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("snapshot: {0}")]
    File(#[from] FileError),
    #[error("snapshot {path}: {why}")]
    Invalid { path: PathBuf, why: String },
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
                | Self::Invalid { .. }
                | Self::Mismatch(_)
                | Self::Persist { .. }
                | Self::Disk(_)
                | Self::Serial(_)
        )
    }
}

/// Checks a parsed snapshot for things no saved VM has, so that nothing later indexes
/// or sizes anything by a lie.
fn validate(snap: &Snapshot, path: &std::path::Path) -> Result<(), RestoreError> {
    let bad = |why: String| RestoreError::Invalid {
        path: path.to_owned(),
        why,
    };
    let m = &snap.machine;
    if m.vcpus == 0 || m.vcpus as u32 > crate::config::MAX_VCPUS {
        return Err(bad(format!("{} vCPUs", m.vcpus)));
    }
    if snap.vcpus.len() != m.vcpus as usize
        || snap
            .vcpus
            .iter()
            .enumerate()
            .any(|(i, v)| v.id as usize != i)
    {
        return Err(bad("vCPU states do not match the vCPU count".into()));
    }
    let mib = m.memory_bytes >> 20;
    if m.memory_bytes & ((1 << 20) - 1) != 0
        || !(crate::config::MIN_MEMORY_MIB..=crate::config::MAX_MEMORY_MIB).contains(&mib)
    {
        return Err(bad(format!("memory size {} bytes", m.memory_bytes)));
    }
    let expect: Vec<(u64, u64)> = layout::ram_ranges(m.memory_bytes)
        .iter()
        .map(|r| (r.0 .0, r.1 as u64))
        .collect();
    if m.regions != expect {
        return Err(bad("memory regions do not match the memory size".into()));
    }
    for (i, d) in snap.devices.iter().enumerate() {
        let irq = layout::VIRTIO_IRQ_START + d.slot;
        let base = layout::VIRTIO_MMIO_START + d.slot as u64 * layout::VIRTIO_MMIO_SIZE;
        if d.slot as usize != i || irq > layout::IRQ_MAX || d.irq != irq || d.mmio_base != base {
            return Err(bad(format!(
                "device {i} has slot {} / IRQ {} / base {:#x}",
                d.slot, d.irq, d.mmio_base
            )));
        }
    }
    Ok(())
}

/// What [`rebuild`] makes: the virtio devices, the MMIO bus, COM1, the PIO bus, the vCPUs
/// (registers written, MSRs and events not yet).
type Rebuilt = (
    Vec<AttachedVirtio>,
    MmioBus,
    Arc<Mutex<SerialPort>>,
    PioBus,
    Vec<Vcpu>,
);

/// Rebuilds the VM-wide state, the vCPUs' registers and the devices from a snapshot.
fn rebuild(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    snap: &Snapshot,
    cfg: &RestoreConfig,
    exit: &Arc<ExitSignal>,
    timings: &mut Vec<(&'static str, Duration)>,
    t0: Instant,
) -> Result<Rebuilt, RestoreError> {
    // vCPUs first: registering irqfds and ioeventfds waits for the memory slots (KVM's
    // slots lock), creating the irqchip and vCPUs does not.
    vm::create_irqchip_and_pit(vm)?;
    snap.vm.restore(vm)?;
    let mut vcpus = Vec::with_capacity(snap.vcpus.len());
    for s in &snap.vcpus {
        vcpus.push(Vcpu::restore_registers(vm, s)?);
    }
    timings.push(("irqchip + vCPU registers", t0.elapsed()));
    let mut mmio = MmioBus::default();
    let mut devices = Vec::with_capacity(snap.devices.len());
    let mut disks = cfg.disks.iter().enumerate();
    for d in &snap.devices {
        let dev: Box<dyn VirtioDevice> = match &d.device {
            DeviceState::Block(s) => {
                let (i, disk) = disks
                    .next()
                    .ok_or_else(|| RestoreError::Mismatch("fewer disks than saved".into()))?;
                Box::new(Block::restore(i, disk, s)?)
            }
            DeviceState::Vsock(s) => {
                let v = cfg.vsock.as_ref().ok_or_else(|| {
                    RestoreError::Mismatch("the snapshot has a vsock device".into())
                })?;
                Box::new(Vsock::restore(v, s)?)
            }
        };
        let attached = vm::attach_virtio(vm, &mut mmio, d.slot, |irq| {
            MmioTransport::restore(dev, mem.clone(), irq, &d.transport).map_err(|source| {
                RestoreError::Persist {
                    slot: d.slot,
                    source,
                }
            })
        })?;
        devices.push(attached);
    }
    let out = vm::console_out(cfg.serial_out.as_deref(), exit)?;
    let serial = Arc::new(Mutex::new(SerialPort::restore(
        &snap.serial,
        vm::serial_irq(vm)?,
        out,
    )?));
    let bus = vm::legacy_bus(serial.clone(), exit)?;
    timings.push(("devices", t0.elapsed()));

    Ok((devices, mmio, serial, bus, vcpus))
}

impl Vm {
    /// Rebuilds a VM from a snapshot. The guest does not run until [`Vm::run`].
    pub fn restore(cfg: RestoreConfig) -> Result<Self, RestoreError> {
        let t0 = cfg.started;
        let mut timings: Vec<(&'static str, Duration)> = Vec::new();
        let snap: Snapshot = file::read_state(&cfg.state)?;
        validate(&snap, &cfg.state)?;
        let saved_disks = snap
            .devices
            .iter()
            .filter(|d| matches!(d.device, DeviceState::Block(_)))
            .count();
        if saved_disks != cfg.disks.len() {
            return Err(RestoreError::Mismatch(format!(
                "the snapshot has {saved_disks} disk(s); {} given with --disk (same count and order needed)",
                cfg.disks.len()
            )));
        }
        let saved_vsock = snap
            .devices
            .iter()
            .any(|d| matches!(d.device, DeviceState::Vsock(_)));
        if saved_vsock != cfg.vsock.is_some() {
            return Err(RestoreError::Mismatch(if saved_vsock {
                "the snapshot has a vsock device: give --vsock cid=N,uds=PATH".into()
            } else {
                "the snapshot has no vsock device: --vsock cannot be added".into()
            }));
        }
        let ranges: Vec<(GuestAddress, usize)> = snap
            .machine
            .regions
            .iter()
            .map(|&(a, l)| (GuestAddress(a), l as usize))
            .collect();
        let mem = file::map_memory(&cfg.memory, &ranges)?;
        timings.push(("read state + map memory", t0.elapsed()));

        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let vm = vm::create_bare_vm(&kvm)?;
        timings.push(("KVM VM", t0.elapsed()));
        // KVM_SET_USER_MEMORY_REGION for 128 MiB takes ~4 ms on PVM hosts, mostly waiting
        // (perf sees almost no CPU time in it): it runs on its own thread while the
        // irqchip, VM state, vCPU registers and devices are rebuilt, none of which needs
        // the memory slots.
        let exit = Arc::new(ExitSignal::new().map_err(vm::io_err("exit event"))?);
        let (rest, registered) = std::thread::scope(|s| {
            let reg = s.spawn(|| vm::register_memory(&vm, &mem));
            let rest = rebuild(&vm, &mem, &snap, &cfg, &exit, &mut timings, t0);
            (rest, reg.join())
        });
        let (devices, mmio, serial, bus, vcpus) = rest?;
        registered.map_err(|_| VmError::Io {
            what: "guest memory",
            source: std::io::Error::other("memory registration thread panicked"),
        })??;
        timings.push(("memory registered", t0.elapsed()));
        for (v, s) in vcpus.iter().zip(&snap.vcpus) {
            v.restore_msrs_and_events(s)?;
        }
        // Devices act once (vsock's transport reset) now that interrupts can be delivered.
        for d in &devices {
            d.transport
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .after_restore();
        }
        timings.push(("MSRs + events", t0.elapsed()));

        Ok(Self {
            kvm,
            vm: Arc::new(vm),
            mem,
            exit,
            bus: Arc::new(bus),
            mmio: Arc::new(mmio),
            devices,
            serial,
            vcpus,
            machine: snap.machine,
            options: RunOptions {
                api_sock: cfg.api_sock,
                started: Some(t0),
                print_timings: cfg.print_timings,
                profile_hz: 1000,
                ..Default::default()
            },
            timings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::serial::SerialSnapshot;
    use crate::devices::virtio::persist::{TransportState, VirtioSnapshot};
    use crate::devices::virtio::vsock::persist::VsockState;
    use crate::snapshot::vcpu::VcpuState;
    use crate::snapshot::vmstate::VmState;
    use crate::snapshot::MachineInfo;

    fn snapshot() -> Snapshot {
        let vcpu = VcpuState {
            id: 0,
            cpuid: Vec::new(),
            mp_state: Default::default(),
            regs: Default::default(),
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: None,
            debugregs: Default::default(),
            lapic: Default::default(),
            msrs: Vec::new(),
            events: Default::default(),
        };
        Snapshot {
            machine: MachineInfo {
                vcpus: 1,
                memory_bytes: 128 << 20,
                regions: vec![(0, 128 << 20)],
                pvm: false,
                written_by: "test".into(),
            },
            vm: VmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: Default::default(),
            },
            vcpus: vec![vcpu],
            serial: SerialSnapshot {
                baud_divisor_low: 0,
                baud_divisor_high: 0,
                interrupt_enable: 0,
                interrupt_identification: 0,
                line_control: 0,
                line_status: 0,
                modem_control: 0,
                modem_status: 0,
                scratch: 0,
                in_buffer: Vec::new(),
            },
            devices: vec![VirtioSnapshot {
                slot: 0,
                mmio_base: layout::VIRTIO_MMIO_START,
                irq: layout::VIRTIO_IRQ_START,
                transport: TransportState {
                    device_type: 19,
                    status: 0,
                    acked_features: 0,
                    device_features_sel: 0,
                    driver_features_sel: 0,
                    queue_sel: 0,
                    config_generation: 0,
                    interrupt_status: 0,
                    queues: Vec::new(),
                },
                device: DeviceState::Vsock(VsockState { guest_cid: 3 }),
            }],
        }
    }

    fn check(s: &Snapshot) -> Result<(), RestoreError> {
        validate(s, std::path::Path::new("s"))
    }

    #[test]
    fn a_consistent_snapshot_passes_and_each_lie_is_named() {
        assert!(check(&snapshot()).is_ok());
        let mut s = snapshot();
        s.machine.vcpus = 2;
        assert!(check(&s).unwrap_err().to_string().contains("vCPU states"));
        let mut s = snapshot();
        s.machine.vcpus = 200;
        assert!(check(&s).unwrap_err().to_string().contains("200 vCPUs"));
        let mut s = snapshot();
        s.vcpus[0].id = 5;
        assert!(check(&s).is_err());
        let mut s = snapshot();
        s.machine.memory_bytes = (128 << 20) + 4096;
        assert!(check(&s).unwrap_err().to_string().contains("memory size"));
        let mut s = snapshot();
        s.machine.regions = vec![(0, 64 << 20)];
        assert!(check(&s).unwrap_err().to_string().contains("regions"));
        let mut s = snapshot();
        s.devices[0].irq = 9;
        assert!(check(&s).unwrap_err().to_string().contains("IRQ 9"));
        let mut s = snapshot();
        s.devices[0].slot = 40;
        assert!(check(&s).is_err());
        assert!(check(&s).unwrap_err().is_bad_input());
    }
}
