//! Where Skiff's installed pieces are: `skiff-vmm`, the guest kernel and the static guest
//! agent. `scripts/install.sh` puts the binaries on PATH (`/usr/local/bin`) and the kernel
//! and agent in the data directory (`/usr/local/lib/skiff`), so `skiff` needs no
//! environment once installed, as Docker and Podman need none. A flag overrides a
//! variable, which overrides the search:
//!
//! | piece  | variable       | then                                                        |
//! |--------|----------------|-------------------------------------------------------------|
//! | VMM    | `SKIFF_VMM`    | beside `skiff`, then `skiff-vmm` on PATH (a static build)   |
//! | jailer | `SKIFF_JAILER` | beside `skiff`, then `skiff-jailer` on PATH                 |
//! | kernel | `SKIFF_KERNEL` | `vmlinux` in the data directory                             |
//! | agent  | `SKIFF_AGENT`  | `skiff-agent` in the data directory                         |
//!
//! The data directory is `SKIFF_DATA_DIR`, else `../lib/skiff` beside the `skiff` binary
//! (so `/usr/local/bin/skiff` finds `/usr/local/lib/skiff`), else `/usr/local/lib/skiff`,
//! else `/usr/lib/skiff`: the first that exists.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where the installation puts the kernel and the agent.
pub const DEFAULT_DATA_DIR: &str = "/usr/local/lib/skiff";
pub const KERNEL_FILE: &str = "vmlinux";
pub const AGENT_FILE: &str = "skiff-agent";

/// How a piece was found, for `skiff info` and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env(&'static str),
    Installed,
    BesideSkiff,
    Path,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag => f.write_str("flag"),
            Origin::Env(v) => write!(f, "${v}"),
            Origin::Installed => f.write_str("installed"),
            Origin::BesideSkiff => f.write_str("beside skiff"),
            Origin::Path => f.write_str("PATH"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub origin: Origin,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("no {what} found: give {flag}, set {var}, or install Skiff (bash scripts/setup.sh puts it in {DEFAULT_DATA_DIR})")]
    Missing {
        what: &'static str,
        flag: &'static str,
        var: &'static str,
    },
    #[error("{what} {path} ({origin}) does not exist")]
    NotThere {
        what: &'static str,
        path: PathBuf,
        origin: Origin,
    },
}

/// The data directories to search, in order.
pub fn data_dirs() -> Vec<PathBuf> {
    data_dirs_from(
        std::env::var_os("SKIFF_DATA_DIR").map(PathBuf::from),
        std::env::current_exe().ok(),
    )
}

fn data_dirs_from(var: Option<PathBuf>, exe: Option<PathBuf>) -> Vec<PathBuf> {
    if let Some(d) = var.filter(|d| !d.as_os_str().is_empty()) {
        return vec![d];
    }
    let mut dirs = Vec::new();
    if let Some(bin) = exe.as_deref().and_then(Path::parent) {
        if let Some(prefix) = bin.parent() {
            dirs.push(prefix.join("lib/skiff"));
        }
    }
    for d in [DEFAULT_DATA_DIR, "/usr/lib/skiff"] {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(PathBuf::from(d));
        }
    }
    dirs
}

/// A piece from its flag, its variable, or the data directories.
fn find_data_file(
    flag: Option<&Path>,
    var: &'static str,
    file: &str,
    what: &'static str,
    flag_name: &'static str,
) -> Result<Found, InstallError> {
    let given = match (flag, std::env::var_os(var).filter(|v| !v.is_empty())) {
        (Some(p), _) => Some((p.to_path_buf(), Origin::Flag)),
        (None, Some(v)) => Some((PathBuf::from(v), Origin::Env(var))),
        (None, None) => None,
    };
    if let Some((path, origin)) = given {
        if !path.is_file() {
            return Err(InstallError::NotThere { what, path, origin });
        }
        return Ok(Found { path, origin });
    }
    data_dirs()
        .into_iter()
        .map(|d| d.join(file))
        .find(|p| p.is_file())
        .map(|path| Found {
            path,
            origin: Origin::Installed,
        })
        .ok_or(InstallError::Missing {
            what,
            flag: flag_name,
            var,
        })
}

/// The guest kernel.
pub fn kernel(flag: Option<&Path>) -> Result<Found, InstallError> {
    find_data_file(
        flag,
        "SKIFF_KERNEL",
        KERNEL_FILE,
        "guest kernel",
        "--kernel",
    )
}

/// The static guest agent.
pub fn agent(flag: Option<&Path>) -> Result<Found, InstallError> {
    find_data_file(flag, "SKIFF_AGENT", AGENT_FILE, "guest agent", "--agent")
}

/// `skiff-vmm`: `SKIFF_VMM`, else beside this binary, else on PATH.
pub fn vmm() -> Found {
    find_binary("SKIFF_VMM", "skiff-vmm")
}

/// `skiff-jailer`: `SKIFF_JAILER`, else beside this binary, else on PATH.
pub fn jailer() -> Found {
    find_binary("SKIFF_JAILER", "skiff-jailer")
}

fn find_binary(var: &'static str, name: &str) -> Found {
    if let Some(p) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        return Found {
            path: p.into(),
            origin: Origin::Env(var),
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file());
    match beside {
        Some(path) => Found {
            path,
            origin: Origin::BesideSkiff,
        },
        None => Found {
            path: on_path(name).unwrap_or_else(|| name.into()),
            origin: Origin::Path,
        },
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_dir_follows_the_binary_then_the_standard_places() {
        assert_eq!(
            data_dirs_from(None, Some("/opt/skiff/bin/skiff".into())),
            [
                PathBuf::from("/opt/skiff/lib/skiff"),
                PathBuf::from(DEFAULT_DATA_DIR),
                PathBuf::from("/usr/lib/skiff")
            ]
        );
        assert_eq!(
            data_dirs_from(None, Some("/usr/local/bin/skiff".into())),
            [
                PathBuf::from(DEFAULT_DATA_DIR),
                PathBuf::from("/usr/lib/skiff")
            ]
        );
        assert_eq!(
            data_dirs_from(Some("/d".into()), Some("/usr/local/bin/skiff".into())),
            [PathBuf::from("/d")]
        );
    }

    #[test]
    fn a_flag_that_names_no_file_says_so() {
        let e = kernel(Some(Path::new("/nonexistent/vmlinux"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "guest kernel /nonexistent/vmlinux (flag) does not exist"
        );
    }
}
