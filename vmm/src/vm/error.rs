//! What can go wrong while a VM is built or run.

use thiserror::Error;

use crate::boot::BootError;
use crate::config::ConfigError;
use crate::cpu::vcpu::VcpuError;
use crate::devices::mmio_bus::MmioOverlap;
use crate::devices::pio::PioOverlap;
use crate::devices::virtio::block::BlockError;
use crate::devices::virtio::net::TapError;
use crate::devices::virtio::vsock::VsockError;
use crate::layout::MemoryError;
use crate::seccomp::SeccompError;

#[derive(Debug, Error)]
pub enum VmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM: cannot {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Pio(#[from] PioOverlap),
    #[error(transparent)]
    Mmio(#[from] MmioOverlap),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Net(#[from] TapError),
    #[error("cannot open serial output {path}: {source}")]
    SerialOut {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    ApiSocket {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("cannot set up {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub(super) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

pub(super) fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}
