//! The VM's configuration, from flags or a JSON file, and its validation: every bad value
//! becomes one clear error before any guest memory is mapped.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::boot;
use crate::devices::virtio::block::BlockConfig;
use crate::devices::virtio::net::NetConfig;
use crate::devices::virtio::vsock::VsockConfig;
use crate::host::{self, QuirksMode};
use crate::seccomp::SeccompMode;

pub const DEFAULT_VCPUS: u32 = 1;
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Our guest kernel is built with NR_CPUS=64.
pub const MAX_VCPUS: u32 = 64;
pub const MIN_MEMORY_MIB: u64 = 64;
/// 1 TiB: beyond what the identity map and e820 handling here are meant for.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// virtio devices take IOAPIC pins 5..=23; disks may use 16 of them.
pub const MAX_DISKS: usize = 16;
/// The guest can fill its console: beyond this many bytes its output is dropped.
pub const DEFAULT_SERIAL_MAX_BYTES: u64 = 64 << 20;

/// Kernel parameters every Skiff guest gets. Why each: docs/vmm.md.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 no_timer_check noreplace-smp";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: an uncompressed ELF vmlinux or a bzImage.
    pub kernel: PathBuf,
    /// Initramfs (newc cpio, uncompressed or compressed as the kernel supports).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Extra kernel parameters; `-- args` at the end go to init.
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Where the guest console goes; stdout when unset.
    #[serde(default)]
    pub serial_out: Option<PathBuf>,
    /// At most this many bytes of console output are written; the rest is dropped.
    #[serde(default = "default_serial_max_bytes")]
    pub serial_max_bytes: u64,
    /// Disks, in order: /dev/vda, /dev/vdb, …
    #[serde(default)]
    pub disks: Vec<BlockConfig>,
    /// virtio-vsock with a hybrid Unix-socket backend.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-net on an existing TAP device.
    #[serde(default)]
    pub net: Option<NetConfig>,
    #[serde(default)]
    pub quirks: QuirksMode,
    /// Sample guest RIPs and write a per-symbol profile here at exit.
    #[serde(default)]
    pub profile_out: Option<PathBuf>,
    /// System.map for the profile; defaults to System.map beside the kernel.
    #[serde(default)]
    pub profile_symbols: Option<PathBuf>,
    #[serde(default = "default_profile_hz")]
    pub profile_hz: u32,
    /// What a system call outside a thread's seccomp filter does.
    #[serde(default)]
    pub seccomp: SeccompMode,
}

fn default_vcpus() -> u32 {
    DEFAULT_VCPUS
}
fn default_memory_mib() -> u64 {
    DEFAULT_MEMORY_MIB
}
fn default_profile_hz() -> u32 {
    1000
}
fn default_serial_max_bytes() -> u64 {
    DEFAULT_SERIAL_MAX_BYTES
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("--vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u32),
    #[error("--memory-mib must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}, got {0}")]
    Memory(u64),
    #[error("--memory-mib {asked} is more than this host has ({host} MiB)")]
    MemoryOverHost { asked: u64, host: u64 },
    #[error("--kernel: {0}")]
    Kernel(#[source] boot::BootError),
    #[error("--initrd {path}: {source}")]
    Initrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--initrd {0} is a directory, not an initramfs file")]
    InitrdIsDir(PathBuf),
    #[error("at most {MAX_DISKS} disks, got {0}")]
    TooManyDisks(usize),
    #[error("--disk {path}: {source}")]
    Disk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--disk {0}: not a regular file or block device")]
    DiskNotFile(PathBuf),
    #[error("--disk {0}: smaller than one 512-byte sector")]
    DiskTooSmall(PathBuf),
    #[error("--vsock uds={0}: its directory does not exist")]
    VsockDir(PathBuf),
    #[error("--net: {0}")]
    NetName(String),
    #[error("--net tap={0}: no such network interface here (create it first, e.g. `ip tuntap add {0} mode tap`)")]
    NoSuchTap(String),
    #[error("--profile-hz must be between 1 and 10000, got {0}")]
    ProfileHz(u32),
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl VmConfig {
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: None,
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            serial_out: None,
            serial_max_bytes: DEFAULT_SERIAL_MAX_BYTES,
            disks: Vec::new(),
            vsock: None,
            net: None,
            quirks: QuirksMode::Auto,
            profile_out: None,
            profile_symbols: None,
            profile_hz: default_profile_hz(),
            seccomp: SeccompMode::Kill,
        }
    }

    pub fn from_json_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Checks every field against its limits and the host; opens the files it names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        if let Some(host) = host::host_memory_bytes() {
            if self.memory_mib > host >> 20 {
                return Err(ConfigError::MemoryOverHost {
                    asked: self.memory_mib,
                    host: host >> 20,
                });
            }
        }
        boot::detect_kernel_format(&self.kernel).map_err(ConfigError::Kernel)?;
        if let Some(rd) = &self.initrd {
            let meta = std::fs::metadata(rd).map_err(|source| ConfigError::Initrd {
                path: rd.clone(),
                source,
            })?;
            if meta.is_dir() {
                return Err(ConfigError::InitrdIsDir(rd.clone()));
            }
            std::fs::File::open(rd).map_err(|source| ConfigError::Initrd {
                path: rd.clone(),
                source,
            })?;
        }
        if self.disks.len() > MAX_DISKS {
            return Err(ConfigError::TooManyDisks(self.disks.len()));
        }
        for d in &self.disks {
            let err = |source| ConfigError::Disk {
                path: d.path.clone(),
                source,
            };
            let meta = std::fs::metadata(&d.path).map_err(err)?;
            use std::os::unix::fs::FileTypeExt;
            if !(meta.is_file() || meta.file_type().is_block_device()) {
                return Err(ConfigError::DiskNotFile(d.path.clone()));
            }
            if meta.is_file() && meta.len() < 512 {
                return Err(ConfigError::DiskTooSmall(d.path.clone()));
            }
            std::fs::OpenOptions::new()
                .read(true)
                .write(!d.read_only)
                .open(&d.path)
                .map_err(err)?;
        }
        if let Some(v) = &self.vsock {
            let dir = v.uds_path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir {
                if !dir.is_dir() {
                    return Err(ConfigError::VsockDir(v.uds_path.clone()));
                }
            }
        }
        if let Some(n) = &self.net {
            crate::devices::virtio::net::check_ifname(&n.tap).map_err(ConfigError::NetName)?;
            if !crate::devices::virtio::net::interface_exists(&n.tap) {
                return Err(ConfigError::NoSuchTap(n.tap.clone()));
            }
        }
        if !(1..=10_000).contains(&self.profile_hz) {
            return Err(ConfigError::ProfileHz(self.profile_hz));
        }
        Ok(())
    }

    /// Our defaults, the user's parameters, the device entries, then `-- init args`.
    pub fn kernel_cmdline(&self, device_entries: &[String]) -> String {
        let user = self.cmdline.as_deref().unwrap_or("").trim();
        let (params, init_args) = match user.split_once(" -- ") {
            Some((p, a)) => (p.trim(), Some(a.trim())),
            None if user.starts_with("-- ") || user == "--" => ("", Some(user[2..].trim())),
            None => (user, None),
        };
        let mut parts = vec![DEFAULT_CMDLINE.to_owned()];
        if !params.is_empty() {
            parts.push(params.to_owned());
        }
        parts.extend(device_entries.iter().cloned());
        if let Some(a) = init_args {
            parts.push("--".to_owned());
            if !a.is_empty() {
                parts.push(a.to_owned());
            }
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_puts_devices_before_init_args() {
        let mut c = VmConfig::new("k".into());
        c.cmdline = Some("quiet -- hello world".into());
        let s = c.kernel_cmdline(&["virtio_mmio.device=4K@0xc0000000:5".into()]);
        assert!(s.starts_with(DEFAULT_CMDLINE));
        assert!(
            s.ends_with("quiet virtio_mmio.device=4K@0xc0000000:5 -- hello world"),
            "{s}"
        );
    }

    #[test]
    fn rejects_zero_and_absurd_sizes() {
        let mut c = VmConfig::new("/nonexistent".into());
        c.vcpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Vcpus(0))));
        c.vcpus = 1;
        c.memory_mib = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Memory(0))));
        c.memory_mib = MAX_MEMORY_MIB + 1;
        assert!(matches!(c.validate(), Err(ConfigError::Memory(_))));
        c.memory_mib = 128;
        assert!(matches!(c.validate(), Err(ConfigError::Kernel(_))));
    }

    #[test]
    fn json_rejects_unknown_fields() {
        let e = serde_json::from_str::<VmConfig>(r#"{"kernel":"k","vcpu":2}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let c: VmConfig = serde_json::from_str(r#"{"kernel":"k","vcpus":2}"#).unwrap();
        assert_eq!((c.vcpus, c.memory_mib), (2, DEFAULT_MEMORY_MIB));
        assert_eq!(c.seccomp, SeccompMode::Kill);
        assert_eq!(c.serial_max_bytes, DEFAULT_SERIAL_MAX_BYTES);
        let c: VmConfig =
            serde_json::from_str(r#"{"kernel":"k","seccomp":"trap","serial_max_bytes":10}"#)
                .unwrap();
        assert_eq!((c.seccomp, c.serial_max_bytes), (SeccompMode::Trap, 10));
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"k","seccomp":"no"}"#).is_err());
    }
}
