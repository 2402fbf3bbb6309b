//! A vCPU's saved state and how it is read from and written back to KVM.
//!
//! Order matters (as KVM's API notes and Firecracker found): MP state first when saving
//! (reading it may accept pending INIT/SIPI into the LAPIC), vCPU events after the LAPIC;
//! when restoring, CPUID before everything, MSRs after the LAPIC, events last.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use crate::cpu::msrs::MSR_IA32_TSC;

/// The TSC deadline timer MSR: written after the TSC, and fixed up when zero.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// Everything KVM holds for one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// FPU, SSE and extended state in the 4 KiB KVM_GET_XSAVE layout.
    pub xsave: kvm_xsave,
    /// XCR0 (absent when the host lacks KVM_CAP_XCRS).
    pub xcrs: Option<kvm_xcrs>,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// Every MSR of KVM's index list that could be read, PVM's own included.
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("vCPU {id}: cannot {what}: {source}")]
    Kvm {
        id: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: KVM accepted {set} of {total} MSRs (first refused: {first:#x})")]
    Msrs {
        id: u8,
        set: usize,
        total: usize,
        first: u32,
    },
    #[error("this host's XSAVE state is {0} bytes; snapshots support at most 4096 (no AMX)")]
    XsaveTooLarge(i32),
    #[error("vCPU {0}: the saved state has {1} CPUID entries, more than KVM takes")]
    Cpuid(u8, usize),
}

/// What the host can save and restore, checked once per VM.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub xcrs: bool,
}

impl Caps {
    pub fn probe(kvm: &Kvm) -> Result<Self, VcpuStateError> {
        let xsave2 = kvm.check_extension_int(Cap::Xsave2);
        if xsave2 > 4096 {
            return Err(VcpuStateError::XsaveTooLarge(xsave2));
        }
        Ok(Self {
            xcrs: kvm.check_extension(Cap::Xcrs),
        })
    }
}

/// The MSRs to save: KVM's MSR index list, and on PVM hosts (`pvm`, as the VM was set up:
/// no look at /sys once the VM runs) PVM's own MSRs (0x4b564df0–0x4b564df7) where the list
/// lacks them (measured: this host's list has KVM's paravirt MSRs 0x4b564d00–07 but not
/// PVM's). Those that do not read are dropped later.
pub fn msrs_to_save(kvm: &Kvm, pvm: bool) -> Result<Vec<u32>, VcpuStateError> {
    let mut list = kvm
        .get_msr_index_list()
        .map_err(|source| VcpuStateError::Kvm {
            id: 0,
            what: "read KVM's MSR index list",
            source,
        })?
        .as_slice()
        .to_vec();
    if pvm {
        for m in crate::host::PVM_MSR_FIRST..=crate::host::PVM_MSR_LAST {
            if !list.contains(&m) {
                list.push(m);
            }
        }
    }
    Ok(list)
}

/// The MSRs of KVM's index list that this vCPU can read, with their values. KVM reads a
/// batch up to the first MSR it refuses; that one is dropped and the rest retried.
fn readable_msrs(
    fd: &VcpuFd,
    indices: &[u32],
    id: u8,
) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest: &[u32] = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(kvm_bindings::KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuStateError::Msrs {
            id,
            set: 0,
            total: entries.len(),
            first: chunk[0],
        })?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(|source| VcpuStateError::Kvm {
                id,
                what: "read MSRs",
                source,
            })?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        if n < chunk.len() {
            tracing::debug!(
                vcpu = id,
                msr = format_args!("{:#x}", chunk[n]),
                "MSR not readable; not saved"
            );
            rest = &rest[n + 1..];
        } else {
            rest = &rest[chunk.len()..];
        }
    }
    Ok(out)
}

/// Puts the TSC first and the TSC deadline last, so that the deadline is relative to the
/// restored TSC.
fn order_msrs(msrs: &mut [kvm_msr_entry]) {
    msrs.sort_by_key(|m| match m.index {
        MSR_IA32_TSC => 0,
        MSR_IA32_TSC_DEADLINE => 2,
        _ => 1,
    });
}

impl VcpuState {
    /// Reads the state of a vCPU that is out of KVM_RUN (paused).
    pub fn save(
        fd: &VcpuFd,
        id: u8,
        msr_indices: &[u32],
        caps: Caps,
    ) -> Result<Self, VcpuStateError> {
        let e = |what| move |source| VcpuStateError::Kvm { id, what, source };
        let mp_state = fd.get_mp_state().map_err(e("read MP state"))?;
        let regs = fd.get_regs().map_err(e("read registers"))?;
        let sregs = fd.get_sregs().map_err(e("read special registers"))?;
        let xsave = fd.get_xsave().map_err(e("read XSAVE state"))?;
        let xcrs = if caps.xcrs {
            Some(fd.get_xcrs().map_err(e("read XCRs"))?)
        } else {
            None
        };
        let debugregs = fd.get_debug_regs().map_err(e("read debug registers"))?;
        let lapic = fd.get_lapic().map_err(e("read the LAPIC"))?;
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(e("read CPUID"))?
            .as_slice()
            .to_vec();
        let mut msrs = readable_msrs(fd, msr_indices, id)?;
        order_msrs(&mut msrs);
        let events = fd.get_vcpu_events().map_err(e("read vCPU events"))?;
        Ok(Self {
            id,
            cpuid,
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            msrs,
            events,
        })
    }

    /// Writes this state into a fresh vCPU: [`Self::restore_registers`], then
    /// [`Self::restore_msrs_and_events`].
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), VcpuStateError> {
        self.restore_registers(fd)?;
        self.restore_msrs_and_events(fd)
    }

    /// CPUID, MP state, registers, FPU/XSAVE, XCRs, debug registers, LAPIC: none of these
    /// touch guest memory, so they may be written while the memory slots are registered.
    pub fn restore_registers(&self, fd: &VcpuFd) -> Result<(), VcpuStateError> {
        let id = self.id;
        let e = |what| move |source| VcpuStateError::Kvm { id, what, source };
        let cpuid = CpuId::from_entries(&self.cpuid)
            .map_err(|_| VcpuStateError::Cpuid(id, self.cpuid.len()))?;
        fd.set_cpuid2(&cpuid).map_err(e("set CPUID"))?;
        fd.set_mp_state(self.mp_state).map_err(e("set MP state"))?;
        fd.set_regs(&self.regs).map_err(e("set registers"))?;
        fd.set_sregs(&self.sregs)
            .map_err(e("set special registers"))?;
        // SAFETY: `Caps::probe` refused hosts whose XSAVE state is larger than the 4 KiB
        // kvm_xsave, so KVM reads no more than the struct holds.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(e("set XSAVE state"))?;
        if let Some(x) = &self.xcrs {
            fd.set_xcrs(x).map_err(e("set XCRs"))?;
        }
        fd.set_debug_regs(&self.debugregs)
            .map_err(e("set debug registers"))?;
        fd.set_lapic(&self.lapic).map_err(e("set the LAPIC"))?;
        Ok(())
    }

    /// MSRs, then vCPU events. Needs guest memory registered: paravirt MSRs (kvmclock,
    /// async page faults, steal time) name guest pages that KVM looks up when they are set.
    pub fn restore_msrs_and_events(&self, fd: &VcpuFd) -> Result<(), VcpuStateError> {
        let id = self.id;
        let e = |what| move |source| VcpuStateError::Kvm { id, what, source };
        let mut entries = self.msrs.clone();
        fix_zero_tsc_deadline(&mut entries);
        for chunk in entries.chunks(kvm_bindings::KVM_MAX_MSR_ENTRIES) {
            let msrs = Msrs::from_entries(chunk).map_err(|_| VcpuStateError::Msrs {
                id,
                set: 0,
                total: chunk.len(),
                first: chunk[0].index,
            })?;
            let set = fd.set_msrs(&msrs).map_err(e("set MSRs"))?;
            if set != chunk.len() {
                return Err(VcpuStateError::Msrs {
                    id,
                    set,
                    total: chunk.len(),
                    first: chunk[set].index,
                });
            }
        }
        fd.set_vcpu_events(&self.events)
            .map_err(e("set vCPU events"))?;
        Ok(())
    }
}

/// KVM reads a TSC deadline of 0 once the timer has fired or was never armed; written back
/// as 0 it disarms the timer, and a guest waiting for its next tick would sleep until some
/// other interrupt comes. Arming it at the saved TSC makes it fire once, at once (what
/// Firecracker does too); the guest's handler re-arms it as it needs.
fn fix_zero_tsc_deadline(entries: &mut [kvm_msr_entry]) {
    let tsc = entries
        .iter()
        .find(|m| m.index == MSR_IA32_TSC)
        .map(|m| m.data);
    if let (Some(tsc), Some(d)) = (
        tsc,
        entries
            .iter_mut()
            .find(|m| m.index == MSR_IA32_TSC_DEADLINE && m.data == 0),
    ) {
        d.data = tsc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msr(index: u32, data: u64) -> kvm_msr_entry {
        kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }
    }

    #[test]
    fn tsc_goes_first_and_deadline_last_and_zero_deadline_is_armed() {
        let mut m = vec![
            msr(MSR_IA32_TSC_DEADLINE, 0),
            msr(0x174, 1),
            msr(MSR_IA32_TSC, 99),
        ];
        order_msrs(&mut m);
        let order: Vec<u32> = m.iter().map(|e| e.index).collect();
        assert_eq!(order, vec![MSR_IA32_TSC, 0x174, MSR_IA32_TSC_DEADLINE]);
        fix_zero_tsc_deadline(&mut m);
        assert_eq!(m[2].data, 99);
        let mut armed = vec![msr(MSR_IA32_TSC, 99), msr(MSR_IA32_TSC_DEADLINE, 5)];
        fix_zero_tsc_deadline(&mut armed);
        assert_eq!(armed[1].data, 5);
    }
}
