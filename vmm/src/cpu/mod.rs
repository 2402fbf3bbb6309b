//! vCPU set-up (CPUID, MSRs, LAPIC) and the vCPU run loop.

pub mod cpuid;
pub mod kick;
pub mod lapic;
pub mod msrs;
pub mod vcpu;
