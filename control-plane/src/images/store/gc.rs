//! Listing, untagging and pruning stored images (`skiff image ls / rm / prune`).
//!
//! Prune also deletes unfinished downloads (`<state>/partial/`).
//! Pulls, imports and rootfs builds hold a shared `flock` on `<state>/gc.lock` while they
//! write; prune holds it exclusively, so it never deletes blobs of an image being pulled.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use tracing::info;

use super::blob_sources::BlobSources;
use super::error::PullError;
use super::image_store::ImageStore;
use super::lock::{lock, writer_lock};
use crate::build::cache_store::{BuildCache, CacheStoreError};
use crate::images::digest::Digest;
use crate::images::registry::Reference;

/// One tagged image, as `image ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    pub reference: Reference,
    pub manifest_digest: Digest,
    /// The config digest, Docker's image id.
    pub id: Digest,
    /// Sum of the stored layer sizes.
    pub size: u64,
    /// The root filesystem image, when built.
    pub rootfs: Option<PathBuf>,
}

/// What prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub blobs: usize,
    pub rootfs: usize,
    /// Unfinished downloads (`<state>/partial/`).
    pub partial: usize,
    pub bytes: u64,
}

impl std::fmt::Display for PruneReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        write!(
            f,
            "deleted {}, {} and {}: {:.1} MB freed",
            plural(self.blobs, "blob", "blobs"),
            plural(self.rootfs, "root filesystem", "root filesystems"),
            plural(self.partial, "partial download", "partial downloads"),
            self.bytes as f64 / 1e6
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Blob,
    Rootfs,
    Partial,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> PullError + '_ {
    move |source| PullError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn walk_refs(
    dir: &Path,
    parts: &mut Vec<String>,
    out: &mut Vec<(Reference, PathBuf)>,
) -> Result<(), PullError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(PullError::Io {
                path: dir.to_path_buf(),
                source: e,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp") {
            continue;
        }
        let path = entry.path();
        if entry.file_type().map_err(io_at(&path))?.is_dir() {
            parts.push(name);
            walk_refs(&path, parts, out)?;
            parts.pop();
        } else if parts.len() >= 2 {
            let text = format!("{}/{}:{name}", parts[0], parts[1..].join("/"));
            if let Ok(r) = text.parse::<Reference>() {
                out.push((r, path));
            }
        }
    }
    Ok(())
}

impl ImageStore {
    fn tags(&self) -> Result<Vec<(Reference, PathBuf)>, PullError> {
        let mut out = Vec::new();
        walk_refs(&self.state_dir().join("refs"), &mut Vec::new(), &mut out)?;
        out.sort_by_key(|(r, _)| r.to_string());
        Ok(out)
    }

    /// Every tagged, complete image.
    pub fn list(&self) -> Result<Vec<ImageSummary>, PullError> {
        let mut out = Vec::new();
        for (r, _) in self.tags()? {
            let Some(image) = self.lookup(&r)? else {
                continue;
            };
            let rootfs = self.rootfs_path(image.id());
            out.push(ImageSummary {
                size: image.manifest.layers.iter().map(|l| l.size).sum(),
                id: image.id().clone(),
                manifest_digest: image.manifest_digest.clone(),
                reference: r,
                rootfs,
            });
        }
        Ok(out)
    }

    /// Removes a tag (`image rm`); the blobs go at the next prune if nothing else uses them.
    pub fn remove(&self, r: &Reference) -> Result<(), PullError> {
        let _guard = writer_lock(self.state_dir())?;
        let found = self.tags()?.into_iter().find(|(t, _)| t == r);
        let Some((_, path)) = found else {
            return Err(PullError::NotFound(r.to_string()));
        };
        fs::remove_file(&path).map_err(io_at(&path))?;
        info!(image = %r, "untagged");
        Ok(())
    }

    /// Deletes every blob and root filesystem image no tag reaches (`image prune`), except
    /// the layers the build cache's records pin (`skiff builder prune` lets them go).
    pub fn prune(&self) -> Result<PruneReport, PullError> {
        let _guard = lock(self.state_dir(), FlockOperation::LockExclusive)?;
        let mut keep_blobs: HashSet<String> = BuildCache::new(self.state_dir())
            .pinned_blobs()
            .map_err(|CacheStoreError::Io { path, source }| PullError::Io { path, source })?
            .iter()
            .map(|d| d.hex().to_string())
            .collect();
        let mut keep_ids: HashSet<String> = HashSet::new();
        for (r, _) in self.tags()? {
            if let Some(image) = self.lookup(&r)? {
                keep_blobs.insert(image.manifest_digest.hex().to_string());
                keep_blobs.insert(image.id().hex().to_string());
                keep_ids.insert(image.id().hex().to_string());
                keep_blobs.extend(
                    image
                        .manifest
                        .layers
                        .iter()
                        .map(|l| l.digest.hex().to_string()),
                );
            }
        }
        let mut report = PruneReport::default();
        let blob_dir = self
            .blobs()
            .path(&Digest::of(b""))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let partial_dir = self
            .blobs()
            .partial_path(&Digest::of(b""))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for (dir, kind) in [
            (blob_dir, Kind::Blob),
            (self.state_dir().join("rootfs"), Kind::Rootfs),
            (partial_dir, Kind::Partial),
        ] {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(PullError::Io {
                        path: dir,
                        source: e,
                    })
                }
            };
            for entry in entries {
                let entry = entry.map_err(io_at(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let stem = name.split('.').next().unwrap_or("");
                let keep = match kind {
                    Kind::Rootfs => keep_ids.contains(stem),
                    Kind::Blob => keep_blobs.contains(stem),
                    // No download runs while prune holds gc.lock exclusively.
                    Kind::Partial => false,
                };
                if keep || name.starts_with('.') {
                    continue;
                }
                let path = entry.path();
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&path).map_err(io_at(&path))?;
                if !name.ends_with(".lock") {
                    report.bytes += size;
                    match kind {
                        Kind::Blob => report.blobs += 1,
                        Kind::Rootfs => report.rootfs += 1,
                        Kind::Partial => report.partial += 1,
                    }
                }
            }
        }
        let blobs = self.blobs().clone();
        BlobSources::new(self.state_dir()).retain(&|hex| {
            format!("sha256:{hex}")
                .parse::<Digest>()
                .is_ok_and(|d| blobs.contains(&d))
        });
        info!(?report, "pruned");
        Ok(report)
    }
}
