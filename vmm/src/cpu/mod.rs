//! vCPU set-up (CPUID, MSRs, LAPIC), the vCPU run loop, and how the controller drives the
//! vCPU threads ([`control`]: commands, kicks, the run state).

pub mod control;
pub mod cpuid;
pub mod kick;
pub mod lapic;
pub mod msrs;
pub mod vcpu;
