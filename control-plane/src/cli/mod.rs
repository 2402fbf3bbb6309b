//! The `skiff` command line: one module per command group.

pub mod apply;
pub mod bench;
pub mod bench_chart;
pub mod bench_density;
pub mod bench_python;
pub mod build;
pub mod build_remote;
pub mod builder;
pub mod image;
pub mod info;
pub mod limits;
pub mod local_vm;
pub mod network;
pub mod remote;
pub mod run;
pub mod run_local;
pub mod serve;
pub mod service;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The first 12 hex digits of a digest, as Docker shows image ids.
pub fn short(d: &str) -> &str {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    &hex[..hex.len().min(12)]
}

/// A new, empty directory under `parent`.
pub fn tempdir_in(parent: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    for i in 0..1000u32 {
        let p = parent.join(format!("{}-{i}", std::process::id()));
        if std::fs::create_dir(&p).is_ok() {
            return Ok(p);
        }
    }
    bail!("cannot make a task directory under {}", parent.display())
}

/// Writes a line to stdout; a closed pipe (`skiff ps | head`) ends the program quietly
/// instead of panicking as `println!` would.
pub fn out_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// `println!` that survives a closed stdout (see [`out_line`]).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out_line(format_args!($($arg)*))
    };
}
