//! Snapshots: a paused VM written out as a state file (versioned, checksummed; see
//! [`file`]) and a guest-memory file, checked by [`validate`] and rebuilt in a new
//! process by [`crate::vm::Vm::restore`]. What is saved: the machine's shape
//! ([`MachineInfo`]), the VM-wide KVM state ([`vmstate`]), every vCPU ([`vcpu`]), COM1, and
//! each virtio device (transport registers, queues, the device's own part; see
//! [`crate::devices::persist`]). What is not: vsock connections (the guest
//! gets a transport reset) and disk contents (disks are given again at restore).

pub mod file;
pub mod validate;
pub mod vcpu;
pub mod vmstate;

use serde::{Deserialize, Serialize};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::devices::persist::VirtioSnapshot;
use crate::devices::serial::SerialSnapshot;

/// The shape of the machine: enough to rebuild it without the boot config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    pub vcpus: u8,
    pub memory_bytes: u64,
    /// Guest RAM regions in the memory file's order: (guest address, size).
    pub regions: Vec<(u64, u64)>,
    /// Saved on a PVM host (its MSRs are in the vCPU state).
    pub pvm: bool,
    /// The skiff-vmm that wrote it, for people reading the file.
    pub written_by: String,
}

impl MachineInfo {
    pub fn new(vcpus: u8, memory_bytes: u64, mem: &GuestMemoryMmap, pvm: bool) -> Self {
        Self {
            vcpus,
            memory_bytes,
            regions: mem
                .iter()
                .map(|r| (r.start_addr().raw_value(), r.len()))
                .collect(),
            pvm,
            written_by: format!("skiff-vmm {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Everything in a state file.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    pub machine: MachineInfo,
    pub vm: vmstate::VmState,
    pub vcpus: Vec<vcpu::VcpuState>,
    pub serial: SerialSnapshot,
    pub devices: Vec<VirtioSnapshot>,
}
