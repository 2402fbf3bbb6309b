//! The image store: pulling an image (manifest, config, layers into the blob store),
//! remembering which tag names which manifest, and loading stored images.
//!
//! Layout under the state dir: `blobs/sha256/<hex>` (manifests, configs, layers),
//! `refs/<registry>/<repository>/<tag>` (a file holding the manifest digest),
//! `rootfs/<config hex>.erofs` (see `rootfs`), `gc.lock` (see `gc`).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tracing::{info, warn};

use super::blob_sources::BlobSources;
use super::blobs::{BlobStore, Ensured, Partial, StoreError};
use super::error::{transient, PullError};
use super::lock::writer_lock;
use crate::images::digest::Digest;
use crate::images::limits::Limits;
use crate::images::oci::config::ImageConfig;
use crate::images::oci::manifest::{Descriptor, ImageManifest, Manifest};
use crate::images::registry::{Reference, RegistryClient, ResumableWrite};
use crate::images::rootfs::{LayerFile, Rootfs, RootfsBuilder, RootfsFormat};

/// Layers fetched at once, as Docker's default `max-concurrent-downloads` is 3.
const PARALLEL_LAYERS: usize = 3;
/// Tries per layer when the connection fails (Docker's default `max-download-attempts` is 5).
const FETCH_ATTEMPTS: u32 = 5;

/// What a pull is doing, for a progress display per layer like `docker pull`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    Resolved {
        manifest: Digest,
        layers: usize,
    },
    LayerCached {
        digest: Digest,
        size: u64,
    },
    LayerProgress {
        digest: Digest,
        done: u64,
        total: u64,
    },
    LayerDone {
        digest: Digest,
        size: u64,
    },
    LayerRetry {
        digest: Digest,
        attempt: u32,
        error: String,
    },
}

/// A stored image: its manifest, config and where it came from.
#[derive(Debug, Clone)]
pub struct Image {
    pub reference: Reference,
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config: ImageConfig,
}

impl Image {
    /// Docker's image id: the config digest.
    pub fn id(&self) -> &Digest {
        &self.manifest.config.digest
    }

    /// Layer digests, bottom first.
    pub fn layers(&self) -> Vec<Digest> {
        self.manifest
            .layers
            .iter()
            .map(|l| l.digest.clone())
            .collect()
    }
}

/// The image store in one state dir; safe for concurrent use by several processes.
#[derive(Debug, Clone)]
pub struct ImageStore {
    state_dir: PathBuf,
    blobs: BlobStore,
    rootfs: RootfsBuilder,
    limits: Limits,
}

impl ImageStore {
    /// Opens the store in `state_dir` (created if missing); `format` None picks EROFS.
    pub fn open(state_dir: &Path, format: Option<RootfsFormat>) -> Result<Self, PullError> {
        Ok(ImageStore {
            state_dir: state_dir.to_path_buf(),
            blobs: BlobStore::open(state_dir)?,
            rootfs: RootfsBuilder::new(state_dir, format)?,
            limits: Limits::default(),
        })
    }

    /// Unpacks layers for root filesystem images under `dir` (e.g. a tmpfs).
    pub fn with_unpack_dir(mut self, dir: &Path) -> Result<Self, PullError> {
        self.rootfs = self.rootfs.with_unpack_dir(dir)?;
        Ok(self)
    }

    /// Pulls and unpacks within `limits` instead of the defaults (see `Limits`).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.rootfs = self.rootfs.with_limits(limits);
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Makes root filesystem images (of images, and of trees such as a build's).
    pub fn rootfs_builder(&self) -> &RootfsBuilder {
        &self.rootfs
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn ref_path(&self, r: &Reference) -> Option<PathBuf> {
        let tag = r.tag.as_deref()?;
        Some(
            self.state_dir
                .join("refs")
                .join(&r.registry)
                .join(&r.repository)
                .join(tag),
        )
    }

    /// Records that `r`'s tag names `manifest` (no-op for digest-only references).
    pub fn tag(&self, r: &Reference, manifest: &Digest) -> Result<(), PullError> {
        let Some(path) = self.ref_path(r) else {
            return Ok(());
        };
        let io = |source| PullError::Io {
            path: path.clone(),
            source,
        };
        let dir = path.parent().unwrap_or(&self.state_dir);
        fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        writeln!(tmp, "{manifest}").map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Finds `r` in the local store without any network access.
    pub fn lookup(&self, r: &Reference) -> Result<Option<Image>, PullError> {
        let digest = match (&r.digest, self.ref_path(r)) {
            (Some(d), _) => d.clone(),
            (None, Some(path)) => match fs::read_to_string(&path) {
                Ok(s) => s.trim().parse().map_err(|e| PullError::Io {
                    path: path.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidData, e),
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(PullError::Io { path, source }),
            },
            (None, None) => return Ok(None),
        };
        if !self.blobs.contains(&digest) {
            return Ok(None);
        }
        let image = self.load(r, &digest)?;
        Ok(image
            .manifest
            .layers
            .iter()
            .all(|l| self.blobs.contains(&l.digest))
            .then_some(image))
    }

    /// Loads a stored image by manifest digest.
    pub fn load(&self, r: &Reference, manifest_digest: &Digest) -> Result<Image, PullError> {
        let bytes = self.blobs.read(manifest_digest)?;
        let manifest = match Manifest::parse(&bytes, "")? {
            Manifest::Image(m) => m,
            Manifest::Index(_) => return Err(PullError::NestedIndex(manifest_digest.clone())),
        };
        let config = ImageConfig::parse(
            &self.blobs.read(&manifest.config.digest)?,
            manifest.layers.len(),
        )?;
        Ok(Image {
            reference: r.clone(),
            manifest_digest: manifest_digest.clone(),
            manifest,
            config,
        })
    }

    /// Pulls `r`: resolves its tag, fetches what the store lacks (each blob once, verified),
    /// and records the tag. Local-only references are looked up, never fetched.
    pub fn pull(
        &self,
        client: &RegistryClient,
        r: &Reference,
        progress: &(dyn Fn(PullEvent) + Sync),
    ) -> Result<Image, PullError> {
        if r.is_local() {
            return self
                .lookup(r)?
                .ok_or_else(|| PullError::NotFound(r.to_string()));
        }
        if r.digest.is_some() {
            // A digest names fixed content: if it is complete here, the registry has nothing new.
            if let Some(image) = self.lookup(r)? {
                return Ok(image);
            }
        }
        let _gc = writer_lock(&self.state_dir)?;
        let top = client.manifest(r, &r.manifest_ref(), self.limits.max_manifest_bytes)?;
        let (manifest, fetched) = match Manifest::parse(&top.bytes, &top.content_type)? {
            Manifest::Image(m) => (m, top),
            Manifest::Index(index) => {
                let entry = index.pick_linux_amd64()?;
                let inner = client.manifest(
                    r,
                    &entry.digest.to_string(),
                    self.limits.max_manifest_bytes,
                )?;
                self.blobs.put_bytes(&top.bytes)?;
                match Manifest::parse(&inner.bytes, &inner.content_type)? {
                    Manifest::Image(m) => (m, inner),
                    Manifest::Index(_) => return Err(PullError::NestedIndex(entry.digest.clone())),
                }
            }
        };
        progress(PullEvent::Resolved {
            manifest: fetched.digest.clone(),
            layers: manifest.layers.len(),
        });
        let cfg = &manifest.config;
        if cfg.size > self.limits.max_config_bytes {
            return Err(PullError::ConfigTooLarge {
                digest: cfg.digest.clone(),
                size: cfg.size,
                limit: self.limits.max_config_bytes,
            });
        }
        self.ensure_blob(client, r, &cfg.digest, cfg.size, &|_| {})?;
        let config = ImageConfig::parse(&self.blobs.read(&cfg.digest)?, manifest.layers.len())?;
        self.fetch_layers(client, r, &manifest.layers, progress)?;
        // The manifest goes in last: a stored manifest means a complete image.
        self.blobs.put_bytes(&fetched.bytes)?;
        self.tag(r, &fetched.digest)?;
        info!(image = %r, digest = %fetched.digest, "pulled");
        Ok(Image {
            reference: r.clone(),
            manifest_digest: fetched.digest,
            manifest,
            config,
        })
    }

    fn fetch_layers(
        &self,
        client: &RegistryClient,
        r: &Reference,
        layers: &[Descriptor],
        progress: &(dyn Fn(PullEvent) + Sync),
    ) -> Result<(), PullError> {
        let next = AtomicUsize::new(0);
        let first_error: Mutex<Option<PullError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..PARALLEL_LAYERS.min(layers.len()) {
                s.spawn(|| loop {
                    if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        return;
                    }
                    let Some(layer) = layers.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    if let Err(e) = self.fetch_layer(client, r, layer, progress) {
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                    }
                });
            }
        });
        match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn fetch_layer(
        &self,
        client: &RegistryClient,
        r: &Reference,
        layer: &Descriptor,
        progress: &(dyn Fn(PullEvent) + Sync),
    ) -> Result<(), PullError> {
        let (digest, total) = (&layer.digest, layer.size);
        let got = self.ensure_blob(client, r, digest, total, progress)?;
        progress(match got {
            Ensured::Present => PullEvent::LayerCached {
                digest: digest.clone(),
                size: total,
            },
            Ensured::Written => PullEvent::LayerDone {
                digest: digest.clone(),
                size: total,
            },
        });
        Ok(())
    }

    /// Fetches a blob into the store unless it is there, retrying broken connections; each
    /// retry (and the next pull, after a crash) resumes from what the last try got.
    fn ensure_blob(
        &self,
        client: &RegistryClient,
        r: &Reference,
        digest: &Digest,
        total: u64,
        progress: &(dyn Fn(PullEvent) + Sync),
    ) -> Result<Ensured, PullError> {
        let mut attempt = 1;
        loop {
            let result = self.blobs.ensure_resumable(digest, Some(total), |w| {
                let mut counting = Counting {
                    done: w.offset(),
                    reported: w.offset(),
                    inner: w,
                    total,
                    digest,
                    progress,
                };
                client.blob(r, digest, &mut counting).map(drop)
            });
            match result {
                Err(StoreError::Fetch { source, .. })
                    if attempt < FETCH_ATTEMPTS && transient(&*source) =>
                {
                    warn!(%digest, attempt, error = %source, "download failed; retrying");
                    progress(PullEvent::LayerRetry {
                        digest: digest.clone(),
                        attempt,
                        error: source.to_string(),
                    });
                    // A short, growing pause, as `docker pull` does between attempts.
                    std::thread::sleep(Duration::from_millis(250 * attempt as u64));
                    attempt += 1;
                }
                other => {
                    let got = other?;
                    BlobSources::new(&self.state_dir).record(digest, &r.registry, &r.repository);
                    return Ok(got);
                }
            }
        }
    }

    /// The read-only root filesystem image of `image`, built once and then reused.
    pub fn rootfs(&self, image: &Image) -> Result<Rootfs, PullError> {
        let _gc = writer_lock(&self.state_dir)?;
        Ok(self.rootfs.build(image.id(), &self.layer_files(image))?)
    }

    /// `image`'s layers, bottom first, with their blob files and diff_ids.
    fn layer_files(&self, image: &Image) -> Vec<LayerFile> {
        let diff_ids = image.config.rootfs.as_ref().map(|r| r.diff_ids.as_slice());
        image
            .layers()
            .into_iter()
            .enumerate()
            .map(|(i, digest)| LayerFile {
                path: self.blobs.path(&digest),
                diff_id: diff_ids.and_then(|ids| ids.get(i)).cloned(),
                digest,
            })
            .collect()
    }

    /// The built root filesystem image of image `id`, if there is one.
    pub fn rootfs_path(&self, id: &Digest) -> Option<PathBuf> {
        [RootfsFormat::Erofs, RootfsFormat::Ext4]
            .into_iter()
            .map(|f| self.rootfs.path(id, f))
            .find(|p| p.is_file())
    }
}

/// Reports download progress every MiB.
struct Counting<'a> {
    inner: &'a mut Partial,
    done: u64,
    reported: u64,
    total: u64,
    digest: &'a Digest,
    progress: &'a (dyn Fn(PullEvent) + Sync),
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.done += n as u64;
        if self.done - self.reported >= 1 << 20 {
            self.reported = self.done;
            (self.progress)(PullEvent::LayerProgress {
                digest: self.digest.clone(),
                done: self.done,
                total: self.total,
            });
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl ResumableWrite for Counting<'_> {
    fn offset(&self) -> u64 {
        self.inner.offset()
    }

    fn restart(&mut self) -> io::Result<()> {
        self.inner.restart()?;
        (self.done, self.reported) = (0, 0);
        Ok(())
    }
}
