//! Pushing a stored image to a registry: each blob the registry lacks uploaded (three at
//! once, as Docker's `max-concurrent-uploads` is 5 and a registry on the same host gains
//! little from more), then the manifest as it is stored, byte for byte, so that its digest
//! stays the same.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tracing::info;

use super::digest::Digest;
use super::registry::{Reference, RegistryClient, RegistryError};
use super::store::{ImageStore, PullError};

/// Blobs uploaded at once.
const PARALLEL_BLOBS: usize = 3;

/// What a push is doing, one blob at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushEvent {
    /// The registry has it already.
    Exists {
        digest: Digest,
        size: u64,
    },
    Uploading {
        digest: Digest,
        size: u64,
    },
    Pushed {
        digest: Digest,
        size: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("image {0} not found in the local store")]
    NotFound(String),
    #[error("{reference} names a digest: push to a tag (--dest REPO:TAG)")]
    NoTag { reference: String },
    #[error(transparent)]
    Store(#[from] PullError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Pushes the stored image `src` to `dest` (a tag in a registry). Returns the manifest
/// digest, the same as in the store.
pub fn push_image(
    store: &ImageStore,
    client: &RegistryClient,
    src: &Reference,
    dest: &Reference,
    progress: &(dyn Fn(PushEvent) + Sync),
) -> Result<Digest, PushError> {
    let tag = dest.tag.clone().ok_or_else(|| PushError::NoTag {
        reference: dest.to_string(),
    })?;
    let image = store
        .lookup(src)?
        .ok_or_else(|| PushError::NotFound(src.to_string()))?;
    let manifest_bytes = store
        .blobs()
        .read(&image.manifest_digest)
        .map_err(PullError::from)?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&manifest_bytes)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
    let mut blobs: Vec<(Digest, u64)> = image
        .manifest
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.size))
        .collect();
    blobs.push((
        image.manifest.config.digest.clone(),
        image.manifest.config.size,
    ));
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<PushError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..PARALLEL_BLOBS.min(blobs.len()) {
            s.spawn(|| loop {
                if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                    return;
                }
                let Some((digest, size)) = blobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return;
                };
                let result = push_blob(store, client, dest, digest, *size, progress);
                if let Err(e) = result {
                    if let Ok(mut slot) = first_error.lock() {
                        slot.get_or_insert(e);
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let digest = client.put_manifest(dest, &tag, &media_type, &manifest_bytes)?;
    info!(from = %src, to = %dest, %digest, "pushed");
    Ok(digest)
}

fn push_blob(
    store: &ImageStore,
    client: &RegistryClient,
    dest: &Reference,
    digest: &Digest,
    size: u64,
    progress: &(dyn Fn(PushEvent) + Sync),
) -> Result<(), PushError> {
    if client.blob_exists(dest, digest)? {
        progress(PushEvent::Exists {
            digest: digest.clone(),
            size,
        });
        return Ok(());
    }
    progress(PushEvent::Uploading {
        digest: digest.clone(),
        size,
    });
    client.upload_blob(dest, digest, size, &store.blobs().path(digest))?;
    progress(PushEvent::Pushed {
        digest: digest.clone(),
        size,
    });
    Ok(())
}
