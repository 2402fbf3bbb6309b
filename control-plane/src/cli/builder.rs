//! `skiff builder du` and `skiff builder prune`: the build cache's records, the layers
//! they keep from `skiff image prune`, and the root filesystem images `RUN` steps ran on.

use std::path::Path;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use control_plane::build::cache_store::BuildCache;
use control_plane::build::miss_reason::InputsLog;

use super::image::store;
use super::limits::parse_size;

#[derive(Subcommand)]
pub enum BuilderCmd {
    /// Show what the build cache holds.
    Du,
    /// Remove build cache records, least recently used first, then delete the layers and
    /// root filesystems that neither a tag nor a remaining record keeps (with --all, also
    /// the contexts clients uploaded; do it while no build runs).
    Prune {
        /// Remove every record.
        #[arg(long)]
        all: bool,
        /// Keep the most recently used records whose layers fit in this size (e.g. 10G).
        #[arg(long)]
        keep_storage: Option<String>,
    },
}

/// Files under `dir`, and their bytes (one level, as the context store keeps them).
fn files_in(dir: &Path) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok().filter(|m| m.is_file()))
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}

/// `rootfs/build-*` images: the trees `RUN` steps ran on. Count and bytes.
fn step_roots(state_dir: &Path) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(state_dir.join("rootfs")) else {
        return (0, 0);
    };
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("build-") && !n.ends_with(".lock")
        })
        .fold((0, 0), |(n, b), e| {
            (n + 1, b + e.metadata().map(|m| m.len()).unwrap_or(0))
        })
}

fn records(n: usize) -> String {
    format!("{n} record{}", if n == 1 { "" } else { "s" })
}

pub fn builder(state_dir: &Path, c: BuilderCmd) -> anyhow::Result<i32> {
    let cache = BuildCache::new(state_dir);
    match c {
        BuilderCmd::Du => {
            let u = cache.usage().context("cannot read the build cache")?;
            let (roots, root_bytes) = step_roots(state_dir);
            let (files, file_bytes) = files_in(&state_dir.join("build-contexts/files"));
            println!(
                "{}, layers {:.1} MB; {} step root filesystems, {:.1} MB; {} uploaded context files, {:.1} MB",
                records(u.records),
                u.layer_bytes as f64 / 1e6,
                roots,
                root_bytes as f64 / 1e6,
                files,
                file_bytes as f64 / 1e6
            );
        }
        BuilderCmd::Prune { all, keep_storage } => {
            if !all && keep_storage.is_none() {
                return Err(anyhow!("say what to remove: --all or --keep-storage SIZE"));
            }
            let keep = keep_storage
                .as_deref()
                .map(|s| parse_size(s).map_err(|e| anyhow!("--keep-storage {e}")))
                .transpose()?;
            let removed = cache
                .prune(all, keep)
                .context("cannot prune the build cache")?;
            if all {
                InputsLog::new(state_dir)
                    .clear()
                    .context("cannot prune the build cache's inputs")?;
                // Uploaded contexts and the stat caches of local ones: sent again as needed.
                let contexts = state_dir.join("build-contexts");
                match std::fs::remove_dir_all(&contexts) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(anyhow!("cannot remove {}: {e}", contexts.display()))
                    }
                    _ => {}
                }
            }
            let report = store(state_dir)?.prune()?;
            println!(
                "removed {} ({:.1} MB of layers); {report}",
                records(removed.records),
                removed.layer_bytes as f64 / 1e6
            );
        }
    }
    Ok(0)
}
