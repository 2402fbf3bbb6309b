//! Facts about the host that change how a VM is set up: is `/dev/kvm` the software-nested
//! PVM hypervisor, and how much memory is there.

use kvm_ioctls::Kvm;

/// The MSR indices that PVM adds to KVM's MSR index list.
pub const PVM_MSR_FIRST: u32 = 0x4b56_4df0;
pub const PVM_MSR_LAST: u32 = 0x4b56_4df7;

/// Host-specific workarounds, all off on hardware KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostQuirks {
    /// `/dev/kvm` is PVM: guest kernel code is emulated, and CPUID must hide features
    /// (XSAVE, CX16, POPCNT, …) that the emulator cannot execute.
    pub pvm: bool,
}

/// How the user asked for quirks to be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuirksMode {
    /// Detect the host at run time.
    #[default]
    Auto,
    /// Force the PVM workarounds on.
    Pvm,
    /// Force every workaround off (hardware KVM behaviour).
    None,
}

impl std::str::FromStr for QuirksMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "pvm" => Ok(Self::Pvm),
            "none" => Ok(Self::None),
            other => Err(format!("unknown quirks mode '{other}' (auto, pvm, none)")),
        }
    }
}

/// Kernel parameters for guests on PVM hosts. Measured: on PVM the guest's standard CPUID
/// leaves are the hardware's, not the table the VMM sets with KVM_SET_CPUID2 (only the
/// hypervisor leaves 0x4000_00xx come from that table), so features PVM's emulator cannot
/// execute must be switched off in the guest kernel itself.
/// `skiff.pvm=1` tells the guest agent (the kernel ignores dotted parameters it does not
/// know, and does not pass them to init).
pub const PVM_KERNEL_PARAMS: &str = "noxsave clearcpuid=cx16,popcnt,movbe,bmi1,bmi2,abm,\
rdrand,rdseed,smap,smep,fsgsbase,rdpid,erms,fsrm,clflushopt,clwb,invpcid,pcid skiff.pvm=1";

impl HostQuirks {
    /// Kernel parameters these quirks need, added to the guest's command line.
    pub fn kernel_params(&self) -> Vec<String> {
        if self.pvm {
            vec![PVM_KERNEL_PARAMS.to_owned()]
        } else {
            Vec::new()
        }
    }

    pub fn resolve(mode: QuirksMode, kvm: &Kvm) -> Self {
        match mode {
            QuirksMode::Auto => Self::detect(kvm),
            QuirksMode::Pvm => Self { pvm: true },
            QuirksMode::None => Self { pvm: false },
        }
    }

    /// PVM shows itself as a loaded `kvm_pvm` module and as its own MSRs in KVM's list.
    pub fn detect(kvm: &Kvm) -> Self {
        let module = std::path::Path::new("/sys/module/kvm_pvm").exists();
        let msrs = kvm
            .get_msr_index_list()
            .map(|l| {
                l.as_slice()
                    .iter()
                    .any(|m| (PVM_MSR_FIRST..=PVM_MSR_LAST).contains(m))
            })
            .unwrap_or(false);
        Self {
            pvm: module || msrs,
        }
    }
}

/// Total host RAM in bytes, from /proc/meminfo.
pub fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_kib(&text, "MemTotal:").map(|kib| kib * 1024)
}

fn parse_meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memtotal() {
        let t = "MemTotal:       24567890 kB\nMemFree: 1 kB\n";
        assert_eq!(parse_meminfo_kib(t, "MemTotal:"), Some(24567890));
        assert_eq!(parse_meminfo_kib(t, "Nope:"), None);
    }

    #[test]
    fn quirks_mode_parses() {
        assert_eq!("pvm".parse::<QuirksMode>().unwrap(), QuirksMode::Pvm);
        assert!("bogus".parse::<QuirksMode>().is_err());
    }
}
