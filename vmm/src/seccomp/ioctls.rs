//! The ioctl requests each thread kind makes, by number. KVM's are declared here the way
//! kvm-ioctls declares them (its own table is private), from kvm-bindings' `KVMIO` and
//! structure sizes.

#![allow(non_snake_case)]

use std::os::raw::c_ulong;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_list, kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, KVMIO,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iowr_nr};

use super::ThreadKind;

// /dev/kvm
ioctl_iowr_nr!(KVM_GET_MSR_INDEX_LIST, KVMIO, 0x02, kvm_msr_list);
ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
// VM
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
// vCPU
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);

/// A request's name and number.
pub type Ioctl = (&'static str, c_ulong);

/// The ioctls of `kind`.
pub fn for_kind(kind: ThreadKind) -> Vec<Ioctl> {
    match kind {
        // KVM_RUN; the profiler's and a failure report's KVM_GET_REGS; the rest is what a
        // paused vCPU reads for a snapshot (snapshot/vcpu.rs).
        ThreadKind::Vcpu => vec![
            ("KVM_RUN", KVM_RUN()),
            ("KVM_GET_REGS", KVM_GET_REGS()),
            ("KVM_GET_SREGS", KVM_GET_SREGS()),
            ("KVM_GET_MSRS", KVM_GET_MSRS()),
            ("KVM_GET_LAPIC", KVM_GET_LAPIC()),
            ("KVM_GET_CPUID2", KVM_GET_CPUID2()),
            ("KVM_GET_MP_STATE", KVM_GET_MP_STATE()),
            ("KVM_GET_VCPU_EVENTS", KVM_GET_VCPU_EVENTS()),
            ("KVM_GET_DEBUGREGS", KVM_GET_DEBUGREGS()),
            ("KVM_GET_XSAVE", KVM_GET_XSAVE()),
            ("KVM_GET_XCRS", KVM_GET_XCRS()),
        ],
        // A snapshot's VM-wide state (snapshot/vmstate.rs) and what the host can save
        // (snapshot/vcpu.rs: Caps, the MSR list).
        ThreadKind::Api => vec![
            ("KVM_CHECK_EXTENSION", KVM_CHECK_EXTENSION()),
            ("KVM_GET_MSR_INDEX_LIST", KVM_GET_MSR_INDEX_LIST()),
            ("KVM_GET_IRQCHIP", KVM_GET_IRQCHIP()),
            ("KVM_GET_PIT2", KVM_GET_PIT2()),
            ("KVM_GET_CLOCK", KVM_GET_CLOCK()),
        ],
        // vsock's sockets are made non-blocking with FIONBIO (`set_nonblocking`).
        ThreadKind::EventLoop => vec![("FIONBIO", libc::FIONBIO as c_ulong)],
        ThreadKind::Main | ThreadKind::Profiler => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_kernel_headers() {
        // From <linux/kvm.h> on x86_64.
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_GET_MSRS(), 0xc008_ae88);
        assert_eq!(KVM_GET_XSAVE(), 0x9000_aea4);
        assert_eq!(KVM_GET_MSR_INDEX_LIST(), 0xc004_ae02);
        assert_eq!(KVM_CHECK_EXTENSION(), 0xae03);
    }
}
