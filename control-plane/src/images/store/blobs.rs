//! The content-addressed blob store: `<state>/blobs/sha256/<hex>`, shared by every image.
//!
//! A blob is written to its partial file, `<state>/partial/sha256/<hex>` (apart from the
//! store), while its sha256 is computed, checked against the expected digest, then renamed
//! into place: a reader never sees half a blob and a failed or mismatched download leaves
//! nothing in the store. Writers of one digest take an exclusive `flock` on `<hex>.lock`
//! first, so two concurrent pulls fetch a blob once. A download cut mid-way keeps its partial
//! file, and the next try resumes from its end (`ensure_resumable`).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use crate::images::digest::Digest;
use crate::images::registry::ResumableWrite;

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
    /// `<state>/partial/sha256`: unfinished downloads, kept apart from the store.
    partial_dir: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the store under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("blobs").join("sha256");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let partial_dir = state_dir.join("partial").join("sha256");
        fs::create_dir_all(&partial_dir).map_err(io_err(&partial_dir))?;
        Ok(BlobStore { dir, partial_dir })
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

    /// Where an unfinished download of `digest` is kept (outside the store).
    pub fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.partial_dir.join(digest.hex())
    }

    /// Makes sure the blob `digest` is stored: if it is missing, `fetch` writes its content
    /// from the start into a verifying writer. Only one writer per digest runs at a time
    /// (across processes); a waiting writer finds the blob present and does not fetch it
    /// again. A failed fetch leaves nothing behind.
    pub fn ensure<E>(
        &self,
        digest: &Digest,
        size: Option<u64>,
        fetch: impl FnOnce(&mut dyn Write) -> Result<(), E>,
    ) -> Result<Ensured, StoreError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut fetch = Some(fetch);
        self.ensure_with(
            digest,
            size,
            false,
            &mut |w: &mut Partial| match fetch.take() {
                Some(f) => f(w).map_err(Into::into),
                None => Err("fetched twice".into()),
            },
        )
    }

    /// Like `ensure`, but a fetch that fails keeps what it got in the partial file
    /// (`partial_path`), and the next call (in this process or another, after a crash too)
    /// hands `fetch` a writer that already holds those bytes: it sends the rest, or calls
    /// `restart` if its source can only send the whole blob. The digest is checked over
    /// the whole blob; a resumed blob that does not verify is fetched once more from the
    /// start. Only a verified blob enters the store.
    pub fn ensure_resumable<E>(
        &self,
        digest: &Digest,
        size: Option<u64>,
        mut fetch: impl FnMut(&mut Partial) -> Result<(), E>,
    ) -> Result<Ensured, StoreError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.ensure_with(digest, size, true, &mut |w: &mut Partial| {
            fetch(w).map_err(Into::into)
        })
    }

    fn ensure_with(
        &self,
        digest: &Digest,
        size: Option<u64>,
        resume: bool,
        fetch: &mut dyn FnMut(&mut Partial) -> Result<(), BoxError>,
    ) -> Result<Ensured, StoreError> {
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
        let part_path = self.partial_path(digest);
        let mut part = Partial::open(&part_path, size, resume).map_err(io_err(&part_path))?;
        let mut may_redo = true;
        loop {
            let resumed_from = part.written;
            if resumed_from > 0 {
                debug!(%digest, resumed_from, "resuming a partial download");
            }
            // A partial file already as long as the blob (a crash before the rename) is
            // only verified.
            let result = if resumed_from > 0 && size == Some(resumed_from) {
                Ok(())
            } else {
                fetch(&mut part)
            };
            match part.check(digest, size, result) {
                Err(StoreError::DigestMismatch { .. }) if resumed_from > 0 && may_redo => {
                    warn!(%digest, resumed_from, "resumed download does not verify; fetching it from the start");
                    may_redo = false;
                    part.restart().map_err(io_err(&part_path))?;
                }
                Err(e @ StoreError::Fetch { .. }) if resume => {
                    // Keep what came for the next try; an empty file is not worth keeping.
                    if part.file.flush().is_err() || part.written == 0 {
                        drop(part);
                        let _ = fs::remove_file(&part_path);
                    }
                    return Err(e);
                }
                Err(e) => {
                    drop(part);
                    let _ = fs::remove_file(&part_path);
                    return Err(e);
                }
                Ok(()) => break,
            }
        }
        let written = part.written;
        let file = part.file.into_inner().map_err(|e| StoreError::Io {
            path: part_path.clone(),
            source: e.into_error(),
        })?;
        file.sync_data().map_err(io_err(&part_path))?;
        fs::rename(&part_path, &path).map_err(io_err(&path))?;
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The partial file of one download: hashes and counts what passes through and refuses to
/// go past a declared size.
pub struct Partial {
    file: io::BufWriter<File>,
    hasher: Sha256,
    written: u64,
    limit: Option<u64>,
    overflow: bool,
}

impl Partial {
    /// Opens the partial file, keeping (and hashing) its bytes when `resume` is set and it is
    /// no longer than `limit`, else emptying it.
    fn open(path: &Path, limit: Option<u64>, resume: bool) -> io::Result<Partial> {
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        let keep = if resume && limit.is_none_or(|l| len <= l) {
            len
        } else {
            0
        };
        let mut hasher = Sha256::new();
        if keep > 0 {
            io::copy(&mut (&file).take(keep), &mut hasher)?;
        }
        file.set_len(keep)?;
        file.seek(SeekFrom::Start(keep))?;
        Ok(Partial {
            file: io::BufWriter::with_capacity(1 << 20, file),
            hasher,
            written: keep,
            limit,
            overflow: false,
        })
    }

    /// Turns the fetch result into the store's verdict on what is in the file.
    fn check(
        &mut self,
        digest: &Digest,
        size: Option<u64>,
        result: Result<(), BoxError>,
    ) -> Result<(), StoreError> {
        if self.overflow {
            return Err(StoreError::TooLarge {
                digest: digest.clone(),
                expected: size.unwrap_or(0),
            });
        }
        result.map_err(|source| StoreError::Fetch {
            digest: digest.clone(),
            source,
        })?;
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        match size {
            Some(expected) if expected != self.written => Err(StoreError::SizeMismatch {
                digest: digest.clone(),
                expected,
                actual: self.written,
            }),
            _ => Ok(()),
        }
    }
}

impl ResumableWrite for Partial {
    fn offset(&self) -> u64 {
        self.written
    }

    fn restart(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.hasher = Sha256::new();
        self.written = 0;
        self.overflow = false;
        Ok(())
    }
}

impl Write for Partial {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self
            .limit
            .is_some_and(|l| self.written + buf.len() as u64 > l)
        {
            self.overflow = true;
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
            .chain(fs::read_dir(&store.partial_dir).unwrap())
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

    #[test]
    fn a_resumed_fetch_sends_only_the_rest_and_a_bad_partial_is_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let digest = Digest::of(&data);
        let size = Some(data.len() as u64);
        let refused = store.ensure_resumable(&digest, size, |_| {
            Err(io::Error::new(io::ErrorKind::NotFound, "404"))
        });
        assert!(matches!(refused, Err(StoreError::Fetch { .. })));
        assert!(leftovers(&store).is_empty(), "nothing came, nothing kept");
        let err = store
            .ensure_resumable(&digest, size, |w| {
                w.write_all(&data[..30_000])?;
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "cut"))
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Fetch { .. }), "{err}");
        assert!(!store.contains(&digest));
        assert_eq!(
            fs::metadata(store.partial_path(&digest)).unwrap().len(),
            30_000
        );
        let mut offsets = Vec::new();
        store
            .ensure_resumable(&digest, size, |w| {
                offsets.push(w.offset());
                w.write_all(&data[w.offset() as usize..])
            })
            .unwrap();
        assert_eq!(offsets, [30_000]);
        assert_eq!(store.read(&digest).unwrap(), data);
        assert!(!store.partial_path(&digest).exists());

        // A partial file whose bytes are wrong: the resumed blob does not verify, so it is
        // fetched once more from the start.
        let other: Vec<u8> = data.iter().rev().copied().collect();
        let d2 = Digest::of(&other);
        fs::write(store.partial_path(&d2), vec![0u8; 40_000]).unwrap();
        let mut offsets = Vec::new();
        store
            .ensure_resumable(&d2, size, |w| {
                offsets.push(w.offset());
                w.write_all(&other[w.offset() as usize..])
            })
            .unwrap();
        assert_eq!(offsets, [40_000, 0]);
        assert_eq!(store.read(&d2).unwrap(), other);
    }

    #[test]
    fn a_complete_partial_file_is_only_verified_and_a_plain_ensure_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = Digest::of(b"0123456789");
        fs::write(store.partial_path(&digest), b"0123456789").unwrap();
        let got = store.ensure_resumable(&digest, Some(10), |_| -> Result<(), io::Error> {
            panic!("must not fetch")
        });
        assert_eq!(got.unwrap(), Ensured::Written);
        assert_eq!(store.read(&digest).unwrap(), b"0123456789");

        let d2 = Digest::of(b"abcdef");
        fs::write(store.partial_path(&d2), b"abc").unwrap();
        store
            .ensure(&d2, Some(6), |w| w.write_all(b"abcdef"))
            .unwrap();
        assert_eq!(store.read(&d2).unwrap(), b"abcdef");
    }
}
