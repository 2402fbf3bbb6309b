//! CPUID as the guest sees it: KVM's supported set, with per-vCPU topology, and on PVM
//! hosts without the features that PVM's instruction emulator cannot execute.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

use crate::host::HostQuirks;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_FEATURES: u32 = 0x7;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_XSAVE: u32 = 0xd;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_FEATURES: u32 = 0x8000_0001;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;

/// Leaf 1 ECX bits hidden on PVM: PCID, CX16, MOVBE, POPCNT, XSAVE, OSXSAVE, AVX, F16C,
/// RDRAND, FMA.
const PVM_LEAF1_ECX: u32 = (1 << 17)
    | (1 << 13)
    | (1 << 22)
    | (1 << 23)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28)
    | (1 << 29)
    | (1 << 30)
    | (1 << 12);
/// Leaf 7.0 EBX bits hidden on PVM: FSGSBASE, BMI1, AVX2, SMEP, BMI2, ERMS, INVPCID,
/// AVX-512 (F, DQ, IFMA, PF, ER, CD, BW, VL), RDSEED, ADX, SMAP, CLFLUSHOPT, CLWB, SHA.
const PVM_LEAF7_EBX: u32 = (1 << 0)
    | (1 << 3)
    | (1 << 5)
    | (1 << 7)
    | (1 << 8)
    | (1 << 9)
    | (1 << 10)
    | (1 << 16)
    | (1 << 17)
    | (1 << 18)
    | (1 << 19)
    | (1 << 20)
    | (1 << 21)
    | (1 << 23)
    | (1 << 24)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28)
    | (1 << 29)
    | (1 << 30)
    | (1 << 31);
/// Leaf 7.0 ECX: AVX512_VBMI, PKU, OSPKE, AVX512_VBMI2, GFNI, VAES, VPCLMULQDQ,
/// AVX512_VNNI, AVX512_BITALG, AVX512_VPOPCNTDQ, RDPID.
const PVM_LEAF7_ECX: u32 = (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 6)
    | (1 << 8)
    | (1 << 9)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 14)
    | (1 << 22);
/// Leaf 7.0 EDX: AVX512_4VNNIW, AVX512_4FMAPS, FSRM, AVX512_VP2INTERSECT.
const PVM_LEAF7_EDX: u32 = (1 << 2) | (1 << 3) | (1 << 4) | (1 << 8);
/// Leaf 7.1 EAX: AVX_VNNI, AVX512_BF16.
const PVM_LEAF7_1_EAX: u32 = (1 << 4) | (1 << 5);
/// KVM paravirt features hidden on PVM: PV_SEND_IPI (11) and PV_SCHED_YIELD (13); with
/// them a second vCPU never comes online (the boot CPU spins in __send_ipi_mask).
const PVM_KVM_FEATURES_EAX: u32 = (1 << 11) | (1 << 13);
/// Leaf 0x8000_0001 ECX: ABM (LZCNT), XOP, FMA4, TBM.
const PVM_AMD_ECX: u32 = (1 << 5) | (1 << 11) | (1 << 16) | (1 << 21);

/// KVM's supported CPUID, adjusted for vCPU `id` of `count`.
pub fn vcpu_cpuid(
    kvm: &Kvm,
    id: u8,
    count: u8,
    quirks: HostQuirks,
) -> Result<CpuId, kvm_ioctls::Error> {
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    adjust_entries(cpuid.as_mut_slice(), id, count, quirks);
    for e in cpuid.as_slice() {
        tracing::trace!(
            "cpuid {:#x}.{}: eax={:#x} ebx={:#x} ecx={:#x} edx={:#x} flags={}",
            e.function,
            e.index,
            e.eax,
            e.ebx,
            e.ecx,
            e.edx,
            e.flags
        );
    }
    Ok(cpuid)
}

/// Bits needed to number `n` items (ceil(log2 n)).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Topology (one package, `count` cores, one thread each) and PVM filtering, in place.
pub fn adjust_entries(entries: &mut [kvm_cpuid_entry2], id: u8, count: u8, quirks: HostQuirks) {
    let n = count as u32;
    let apic_id = id as u32;
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (n << 16);
                e.ecx |= 1 << 31; // running under a hypervisor
                if n > 1 {
                    e.edx |= 1 << 28; // HTT: more than one logical processor
                }
                if quirks.pvm {
                    e.ecx &= !PVM_LEAF1_ECX;
                }
            }
            LEAF_CACHE_PARAMS if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((n - 1) << 26) | (sharing << 14);
            }
            LEAF_EXT_FEATURES if quirks.pvm => match e.index {
                0 => {
                    e.ebx &= !PVM_LEAF7_EBX;
                    e.ecx &= !PVM_LEAF7_ECX;
                    e.edx &= !PVM_LEAF7_EDX;
                }
                1 => e.eax &= !PVM_LEAF7_1_EAX,
                _ => {}
            },
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8; // SMT level
                    }
                    1 => {
                        e.eax = bits_for(n);
                        e.ebx = n;
                        e.ecx = (2 << 8) | 1; // core level
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_KVM_FEATURES if quirks.pvm => {
                e.eax &= !PVM_KVM_FEATURES_EAX;
            }
            LEAF_XSAVE if quirks.pvm => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_AMD_FEATURES => {
                if n > 1 {
                    e.ecx |= 1 << 1; // CmpLegacy
                }
                if quirks.pvm {
                    e.ecx &= !PVM_AMD_ECX;
                }
            }
            LEAF_AMD_SIZES => {
                e.ecx = (e.ecx & !0xf0ff) | (bits_for(n) << 12) | (n - 1);
            }
            LEAF_AMD_EXT_APIC => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff; // core id; one thread per core
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: !0,
            ebx: !0,
            ecx: !0,
            edx: !0,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_and_count() {
        let mut e = [entry(1, 0)];
        adjust_entries(&mut e, 3, 4, HostQuirks::default());
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        // Without quirks nothing is hidden.
        assert_ne!(e[0].ecx & (1 << 26), 0);
    }

    #[test]
    fn pvm_hides_xsave_and_friends() {
        let mut e = [
            entry(1, 0),
            entry(7, 0),
            entry(0xd, 1),
            entry(0x8000_0001, 0),
        ];
        adjust_entries(&mut e, 0, 1, HostQuirks { pvm: true });
        assert_eq!(e[0].ecx & PVM_LEAF1_ECX, 0);
        assert_eq!(e[1].ebx & PVM_LEAF7_EBX, 0);
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx, e[2].edx), (0, 0, 0, 0));
        assert_eq!(e[3].ecx & PVM_AMD_ECX, 0);
    }

    #[test]
    fn topology_leaf_counts_cores() {
        let mut e = [entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        adjust_entries(&mut e, 1, 3, HostQuirks::default());
        assert_eq!((e[1].eax, e[1].ebx), (2, 3));
        assert!(e.iter().all(|x| x.edx == 1));
        assert_eq!(e[2].ebx, 0);
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!([1, 2, 3, 4, 5, 64].map(bits_for), [0, 1, 2, 2, 3, 6]);
    }
}
