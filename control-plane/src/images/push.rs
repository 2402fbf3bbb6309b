//! Pushing a stored image to a registry: each blob the registry lacks is mounted from
//! another repository of that registry when the store knows one holding it, else
//! uploaded (three at once, as Docker's `max-concurrent-uploads` is 5 and a registry on
//! the same host gains little from more). Blobs up to [`CHUNK_BYTES`] go in one request;
//! larger ones in chunks of that size, so that a cut connection costs at most one chunk:
//! the registry is asked how much it kept and the upload goes on from there (or starts
//! again in a new session when the registry will not resume it). The manifest goes last,
//! as it is stored, byte for byte, so that its digest stays the same.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Url;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::digest::Digest;
use super::registry::push::UploadStart;
use super::registry::{Reference, RegistryClient, RegistryError};
use super::store::{BlobSources, ImageStore, PullError};

/// Blobs uploaded at once.
const PARALLEL_BLOBS: usize = 3;
/// Blobs larger than this go in `PATCH` chunks of this size.
pub const CHUNK_BYTES: u64 = 8 << 20;
/// Tries per blob (the first included) before a push gives up.
const ATTEMPTS: u32 = 5;

/// What a push is doing, one blob at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushEvent {
    /// The registry has it already.
    Exists {
        digest: Digest,
        size: u64,
    },
    /// The registry mounted it from another of its repositories.
    Mounted {
        digest: Digest,
        size: u64,
        from: String,
    },
    Uploading {
        digest: Digest,
        size: u64,
    },
    /// `bytes` of the blob are in the registry (after each chunk).
    Progress {
        digest: Digest,
        bytes: u64,
    },
    /// A request failed; the upload goes on from byte `offset`.
    Retry {
        digest: Digest,
        attempt: u32,
        offset: u64,
        error: String,
    },
    Pushed {
        digest: Digest,
        size: u64,
    },
}

impl PushEvent {
    /// The event as the API's NDJSON line shows it.
    pub fn to_json(&self) -> Value {
        match self {
            PushEvent::Exists { digest, size } => {
                json!({"status": "exists", "digest": digest.to_string(), "size": size, "bytes": 0})
            }
            PushEvent::Mounted { digest, size, from } => json!({"status": "mounted",
                "digest": digest.to_string(), "size": size, "from": from, "bytes": 0}),
            PushEvent::Uploading { digest, size } => json!({"status": "uploading",
                "digest": digest.to_string(), "size": size, "bytes": 0}),
            PushEvent::Progress { digest, bytes } => {
                json!({"status": "uploading", "digest": digest.to_string(), "bytes": bytes})
            }
            PushEvent::Retry {
                digest,
                attempt,
                offset,
                error,
            } => json!({"status": "retry", "digest": digest.to_string(), "attempt": attempt,
                "bytes": offset, "error": error}),
            PushEvent::Pushed { digest, size } => json!({"status": "pushed",
                "digest": digest.to_string(), "size": size, "bytes": size}),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("image {0} not found in the local store")]
    NotFound(String),
    #[error("{reference} names a digest: push to a tag (--dest REPO:TAG)")]
    NoTag { reference: String },
    #[error("{0} is a local-only name: push to a registry (--dest REGISTRY/REPO:TAG)")]
    LocalDestination(String),
    #[error("reading blob {digest} from the store: {source}")]
    ReadBlob {
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
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
    if dest.is_local() {
        return Err(PushError::LocalDestination(dest.to_string()));
    }
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

/// A failure worth another request: a broken connection, a registry error, or a chunk
/// the registry did not expect where it was sent (it tells where on the next ask).
fn retryable(e: &RegistryError) -> bool {
    match e {
        RegistryError::Transfer { .. } | RegistryError::Unreachable { .. } => true,
        RegistryError::Status { status, .. } => *status >= 500 || *status == 416,
        _ => false,
    }
}

fn push_blob(
    store: &ImageStore,
    client: &RegistryClient,
    dest: &Reference,
    digest: &Digest,
    size: u64,
    progress: &(dyn Fn(PushEvent) + Sync),
) -> Result<(), PushError> {
    let sources = BlobSources::new(store.state_dir());
    if client.blob_exists(dest, digest)? {
        sources.record(digest, &dest.registry, &dest.repository);
        progress(PushEvent::Exists {
            digest: digest.clone(),
            size,
        });
        return Ok(());
    }
    let from = sources.mount_source(digest, &dest.registry, &dest.repository);
    let session = match client.start_upload(dest, from.as_deref().map(|f| (digest, f)))? {
        UploadStart::Mounted => {
            sources.record(digest, &dest.registry, &dest.repository);
            progress(PushEvent::Mounted {
                digest: digest.clone(),
                size,
                from: from.unwrap_or_default(),
            });
            return Ok(());
        }
        UploadStart::Session(url) => url,
    };
    progress(PushEvent::Uploading {
        digest: digest.clone(),
        size,
    });
    let file = store.blobs().open_blob(digest).map_err(PullError::Store)?;
    Upload {
        client,
        dest,
        digest,
        size,
        file: &file,
        progress,
    }
    .run(session)?;
    sources.record(digest, &dest.registry, &dest.repository);
    progress(PushEvent::Pushed {
        digest: digest.clone(),
        size,
    });
    Ok(())
}

/// One blob's upload, from its session to the final `PUT`.
struct Upload<'a> {
    client: &'a RegistryClient,
    dest: &'a Reference,
    digest: &'a Digest,
    size: u64,
    file: &'a File,
    progress: &'a (dyn Fn(PushEvent) + Sync),
}

enum Step {
    Done,
    Sent { next: Url, offset: u64 },
}

impl Upload<'_> {
    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, PushError> {
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| PushError::ReadBlob {
                digest: self.digest.clone(),
                source,
            })?;
        Ok(buf)
    }

    /// Sends what comes next from `offset` in `session`.
    fn step(&self, session: &Url, offset: u64) -> Result<Step, PushError> {
        let (c, dest, digest) = (self.client, self.dest, self.digest);
        if self.size <= CHUNK_BYTES {
            c.put_blob(dest, session, digest, &self.read(0, self.size)?)?;
            return Ok(Step::Done);
        }
        if offset >= self.size {
            c.finish_upload(dest, session, digest)?;
            return Ok(Step::Done);
        }
        let len = CHUNK_BYTES.min(self.size - offset);
        let next = c.patch_chunk(dest, session, offset, &self.read(offset, len)?)?;
        Ok(Step::Sent {
            next,
            offset: offset + len,
        })
    }

    /// Where to go on after a failed request: the registry's own count in the same
    /// session when it will resume it, else a new session from byte 0.
    fn recover(&self, session: &Url) -> Result<(Url, u64), RegistryError> {
        if self.size > CHUNK_BYTES {
            if let Some(st) = self.client.upload_status(self.dest, session)? {
                if st.offset <= self.size {
                    return Ok((st.url, st.offset));
                }
            }
        }
        match self.client.start_upload(self.dest, None)? {
            UploadStart::Session(url) => Ok((url, 0)),
            // Not asked for; a registry answering so has the blob.
            UploadStart::Mounted => Ok((session.clone(), self.size)),
        }
    }

    fn run(&self, mut session: Url) -> Result<(), PushError> {
        let mut offset = 0;
        let mut attempt = 1;
        let mut broken: Option<String> = None;
        loop {
            if let Some(error) = broken.take() {
                match self.recover(&session) {
                    Ok((url, at)) => {
                        (session, offset) = (url, at);
                        (self.progress)(PushEvent::Retry {
                            digest: self.digest.clone(),
                            attempt,
                            offset,
                            error,
                        });
                    }
                    Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                        broken = Some(self.pause(&mut attempt, e.to_string()));
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            match self.step(&session, offset) {
                Ok(Step::Done) => return Ok(()),
                Ok(Step::Sent { next, offset: at }) => {
                    (session, offset) = (next, at);
                    (self.progress)(PushEvent::Progress {
                        digest: self.digest.clone(),
                        bytes: offset,
                    });
                }
                Err(PushError::Registry(e)) if attempt < ATTEMPTS && retryable(&e) => {
                    broken = Some(self.pause(&mut attempt, e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Logs a failed request and waits a little longer each time, as pulls do.
    fn pause(&self, attempt: &mut u32, error: String) -> String {
        warn!(digest = %self.digest, attempt = *attempt, %error, "upload failed; retrying");
        std::thread::sleep(Duration::from_millis(250 * u64::from(*attempt)));
        *attempt += 1;
        error
    }
}
