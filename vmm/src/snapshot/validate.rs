//! Checking a parsed snapshot before anything is rebuilt from it.

use std::path::{Path, PathBuf};

use super::Snapshot;
use crate::layout;

/// A state file that parsed but describes no VM Skiff saved.
#[derive(Debug, thiserror::Error)]
#[error("snapshot {path}: {why}")]
pub struct InvalidSnapshot {
    pub path: PathBuf,
    pub why: String,
}

impl Snapshot {
    /// Checks a parsed snapshot for things no saved VM has, so that nothing later indexes
    /// or sizes anything by a lie.
    pub fn validate(&self, path: &Path) -> Result<(), InvalidSnapshot> {
        let snap = self;
        let bad = |why: String| InvalidSnapshot {
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
            if d.slot as usize != i || irq > layout::IRQ_MAX || d.irq != irq || d.mmio_base != base
            {
                return Err(bad(format!(
                    "device {i} has slot {} / IRQ {} / base {:#x}",
                    d.slot, d.irq, d.mmio_base
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::persist::{DeviceState, VirtioSnapshot};
    use crate::devices::serial::SerialSnapshot;
    use crate::devices::virtio::persist::TransportState;
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

    fn check(s: &Snapshot) -> Result<(), InvalidSnapshot> {
        s.validate(Path::new("s"))
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
    }
}
