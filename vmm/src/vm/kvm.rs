//! The KVM VM itself, as boot and restore both make it: the VM with its TSS region, the
//! in-kernel irqchip and PIT, guest RAM registered as memory slots.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::error::{kvm_err, VmError};

/// KVM needs three pages for the real-mode TSS just below 4 GiB.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// A KVM VM with only its TSS region (restore adds the irqchip itself, in its own order).
pub(super) fn create_bare_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("set the TSS address"))?;
    Ok(vm)
}

/// The in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT; before any vCPU exists.
pub(super) fn create_irqchip_and_pit(vm: &VmFd) -> Result<(), VmError> {
    vm.create_irq_chip()
        .map_err(kvm_err("create the irqchip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("create the PIT"))?;
    Ok(())
}

/// Registers every guest RAM region with KVM.
pub(super) fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmError::Io {
                what: "guest memory",
                source: std::io::Error::other(e.to_string()),
            })?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM: it is
        // kept until the process exits, and KVM only accesses it while vCPUs run.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("register guest memory"))?;
    }
    Ok(())
}
