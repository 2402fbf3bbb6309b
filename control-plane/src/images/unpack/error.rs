//! Why a layer could not be applied.

use std::io;
use std::path::{Path, PathBuf};

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {entry:?} escapes the root: {why}")]
    Escape { entry: String, why: &'static str },
    #[error("layer entry {entry:?}: {why}")]
    BadEntry { entry: String, why: String },
    #[error("the image is over {0}")]
    Limit(super::budget::Limit),
    #[error("reading layer: {0}")]
    Read(#[source] io::Error),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl UnpackError {
    /// True when the target file system ran out of space (or inodes).
    pub fn is_no_space(&self) -> bool {
        let source = match self {
            UnpackError::Read(e) | UnpackError::Io { source: e, .. } => e,
            _ => return false,
        };
        source.kind() == io::ErrorKind::StorageFull
            || source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
    }
}

pub(super) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_path_buf(),
        source,
    }
}
