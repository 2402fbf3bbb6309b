//! How a launch can fail before the task could run.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot set up the task directory {path}: {source}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VM's scratch disk: {0}")]
    ScratchDisk(#[from] super::scratch_disk::ScratchDiskError),
    #[error("cannot jail the VMM: {0}")]
    Jail(#[from] super::jail::JailSetupError),
    #[error("the VM ended before its agent said hello ({status}); console ends with:\n{console}")]
    NoHello {
        status: String,
        /// The VMM refused its input (for a restore: the snapshot files).
        vmm_refused_input: bool,
        console: String,
    },
    #[error("the agent did not say hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("the agent speaks protocol {agent}, we speak {ours}")]
    Protocol { agent: u32, ours: u32 },
    #[error("agent connection: {0}")]
    Connection(String),
    #[error("cannot plug the VM into its network: {0}")]
    Network(#[from] crate::network::NetError),
}
