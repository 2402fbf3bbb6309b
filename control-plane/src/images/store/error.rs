//! Why a pull, lookup or store operation failed.

use std::io;
use std::path::PathBuf;

use crate::images::digest::Digest;
use crate::images::oci::config::ConfigError;
use crate::images::oci::manifest::ManifestError;
use crate::images::registry::RegistryError;
use crate::images::rootfs::RootfsError;

use super::blobs::StoreError;

/// A broken connection is worth another try; a wrong answer is not.
pub(super) fn transient(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    matches!(
        e.downcast_ref::<RegistryError>(),
        Some(RegistryError::Transfer { .. } | RegistryError::Unreachable { .. })
    )
}

/// A pull or lookup failure.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(
        "index entry {0} for linux/amd64 is itself an index; nested indexes are not supported"
    )]
    NestedIndex(Digest),
    #[error("image config {digest} is {size} bytes, over the limit of {limit} bytes")]
    ConfigTooLarge {
        digest: Digest,
        size: u64,
        limit: u64,
    },
    #[error("image {0} is not in the local store")]
    NotFound(String),
    #[error("state dir I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
