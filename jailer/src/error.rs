//! The jailer's errors: each names the step and the file it was working on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("bad jail spec: {0}")]
    Spec(String),
    #[error("{what} {path}: {source}")]
    Path {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is dynamically linked; a jailed program must be static (scripts/setup.sh builds skiff-vmm with crt-static)")]
    NotStatic(PathBuf),
    #[error("cgroups: {0}")]
    Cgroup(String),
}

impl JailError {
    /// `what` failed with the calling thread's errno.
    pub fn last_os(what: &'static str) -> Self {
        JailError::Sys {
            what,
            source: std::io::Error::last_os_error(),
        }
    }

    pub fn path(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| JailError::Path { what, path, source }
    }
}
