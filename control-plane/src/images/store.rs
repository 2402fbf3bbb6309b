//! The content-addressed blob store: `<state>/blobs/sha256/<hex>`, shared by every image.
//!
//! A blob is written to a temp file in the same folder while its sha256 is computed, checked
//! against the expected digest, then renamed into place: a reader never sees half a blob and
//! a failed or mismatched download leaves nothing behind. Writers of one digest take an
//! exclusive `flock` on `<hex>.lock` first, so two concurrent pulls fetch a blob once.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tracing::debug;

use super::digest::Digest;

/// A blob store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("digest mismatch for blob {expected}: content has {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("size mismatch for blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} is larger than its declared {expected} bytes")]
    TooLarge { digest: Digest, expected: u64 },
    #[error("blob {0} is not in the store")]
    Missing(Digest),
    #[error("store I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("fetching blob {digest}: {source}")]
    Fetch {
        digest: Digest,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `ensure` found the blob or wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Present,
    Written,
}

/// The blob store rooted at `<state>/blobs/sha256`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the store under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("blobs").join("sha256");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(BlobStore { dir })
    }

    /// Where the blob lives (whether or not it is there yet).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// True if the blob is stored.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Opens a stored blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File, StoreError> {
        let path = self.path(digest);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::Missing(digest.clone()),
            _ => StoreError::Io { path, source: e },
        })
    }

    /// Reads a small stored blob (a manifest or config) into memory.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let mut buf = Vec::new();
        self.open_blob(digest)?
            .read_to_end(&mut buf)
            .map_err(io_err(&self.path(digest)))?;
        Ok(buf)
    }

    /// Stores `bytes`, returning their digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        self.ensure(&digest, Some(bytes.len() as u64), |w| w.write_all(bytes))?;
        Ok(digest)
    }

    /// Makes sure the blob `digest` is stored: if it is missing, `fetch` writes its content
    /// into a verifying writer. Only one writer per digest runs at a time (across processes);
    /// a waiting writer finds the blob present and does not fetch it again.
    pub fn ensure<E>(
        &self,
        digest: &Digest,
        size: Option<u64>,
        fetch: impl FnOnce(&mut dyn Write) -> Result<(), E>,
    ) -> Result<Ensured, StoreError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = self.path(digest);
        if path.is_file() {
            return Ok(Ensured::Present);
        }
        let lock_path = self.dir.join(format!("{}.lock", digest.hex()));
        let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            StoreError::Io {
                path: lock_path.clone(),
                source: e.into(),
            }
        })?;
        if path.is_file() {
            debug!(%digest, "blob written by another puller while we waited");
            return Ok(Ensured::Present);
        }
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".tmp-{}-", digest.short()))
            .tempfile_in(&self.dir)
            .map_err(io_err(&self.dir))?;
        let mut writer = VerifyingWriter {
            file: io::BufWriter::with_capacity(1 << 20, tmp),
            hasher: Sha256::new(),
            written: 0,
            limit: size,
        };
        let result = fetch(&mut writer);
        if writer.limit.is_some_and(|l| writer.written > l) {
            return Err(StoreError::TooLarge {
                digest: digest.clone(),
                expected: size.unwrap_or(0),
            });
        }
        result.map_err(|e| StoreError::Fetch {
            digest: digest.clone(),
            source: e.into(),
        })?;
        let VerifyingWriter {
            file,
            hasher,
            written,
            ..
        } = writer;
        let actual = Digest::from_hasher(hasher);
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        if let Some(expected) = size.filter(|&s| s != written) {
            return Err(StoreError::SizeMismatch {
                digest: digest.clone(),
                expected,
                actual: written,
            });
        }
        let tmp = file.into_inner().map_err(|e| StoreError::Io {
            path: path.clone(),
            source: e.into_error(),
        })?;
        tmp.as_file().sync_data().map_err(io_err(&path))?;
        tmp.persist(&path).map_err(|e| StoreError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        debug!(%digest, bytes = written, "blob stored");
        Ok(Ensured::Written)
    }

    /// Removes a blob (for prune). Missing blobs are not an error.
    pub fn remove(&self, digest: &Digest) -> Result<(), StoreError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }
}

/// Hashes and counts what passes through; refuses to go past a declared size.
struct VerifyingWriter {
    file: io::BufWriter<tempfile::NamedTempFile>,
    hasher: Sha256,
    written: u64,
    limit: Option<u64>,
}

impl Write for VerifyingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self
            .limit
            .is_some_and(|l| self.written + buf.len() as u64 > l)
        {
            self.written += buf.len() as u64;
            return Err(io::Error::other("blob is larger than its declared size"));
        }
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn leftovers(store: &BlobStore) -> Vec<String> {
        fs::read_dir(&store.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect()
    }

    #[test]
    fn stores_and_reads_back_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = store.put_bytes(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert!(store.contains(&d));
        assert_eq!(store.read(&d).unwrap(), b"hello");
        let again = store.ensure(&d, None, |_| -> Result<(), io::Error> {
            panic!("must not fetch")
        });
        assert_eq!(again.unwrap(), Ensured::Present);
    }

    #[test]
    fn mismatched_content_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let want = Digest::of(b"good");
        let err = store
            .ensure(&want, None, |w| w.write_all(b"evil"))
            .unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("digest mismatch for blob sha256:"),
            "{err}"
        );
        assert!(!store.contains(&want));
        assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
    }

    #[test]
    fn oversized_and_failed_fetches_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let want = Digest::of(b"0123456789");
        let err = store
            .ensure(&want, Some(4), |w| w.write_all(b"0123456789"))
            .unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
        let err = store
            .ensure(&want, None, |w| {
                w.write_all(b"01234")?;
                Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "peer went away",
                ))
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Fetch { .. }), "{err}");
        let err = store
            .ensure(&want, Some(20), |w| w.write_all(b"0123456789"))
            .unwrap_err();
        assert!(matches!(err, StoreError::SizeMismatch { .. }), "{err}");
        assert!(leftovers(&store).is_empty());
    }

    #[test]
    fn concurrent_writers_of_one_digest_fetch_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&data);
        let fetches = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (store, data, digest, fetches) = (&store, &data, &digest, fetches.clone());
                s.spawn(move || {
                    store
                        .ensure(digest, Some(data.len() as u64), |w| {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            for chunk in data.chunks(65536) {
                                w.write_all(chunk)?;
                            }
                            Ok::<_, io::Error>(())
                        })
                        .unwrap();
                });
            }
        });
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(store.read(&digest).unwrap(), data);
    }
}
