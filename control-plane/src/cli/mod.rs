//! The `skiff` command line: one module per command group.

pub mod bench;
pub mod bench_chart;
pub mod bench_density;
pub mod image;
pub mod remote;
pub mod run;
pub mod run_local;
pub mod serve;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

/// A path from the environment, with a hint when it is missing.
pub fn env_path(var: &str, what: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os(var).map(PathBuf::from).ok_or_else(|| {
        anyhow!(
            "{var} is not set: point it at the {what} (scripts/setup.sh writes target/skiff.env)"
        )
    })
}

/// `skiff-vmm`: `SKIFF_VMM`, else next to this binary, else on PATH.
pub fn vmm_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_VMM") {
        return p.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("skiff-vmm")))
        .unwrap_or_else(|| "skiff-vmm".into())
}

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
