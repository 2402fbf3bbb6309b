//! The build cache's records, one JSON file per cache key in `<state>/build-cache/`: what
//! a step made (its layer, or none for a config-only step) and when it was last used.
//! A record pins its layer blob: `skiff image prune` keeps every blob a record names, and
//! `skiff builder prune` removes records (least recently used first) so that prune can
//! free their blobs. A record is written whole to a temporary file and renamed, so a
//! crash never leaves half of one; a record that cannot be read is a miss.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cache_key::CacheKey;
use crate::images::digest::Digest;

/// Largest record file read (real ones are a few hundred bytes).
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// The layer a cached step made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedLayer {
    /// The gzip blob in the image store.
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
}

/// One step's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheRecord {
    pub key: CacheKey,
    /// None for a step that made no layer.
    pub layer: Option<CachedLayer>,
    /// The step's history text (`RUN make`, `COPY src/ /app/`).
    pub created_by: String,
    pub created_ms: u64,
    pub last_used_ms: u64,
}

/// Why the build cache could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CacheStoreError {
    #[error("build cache {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CacheStoreError + '_ {
    move |source| CacheStoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What the build cache holds (`skiff builder du`) or what a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUsage {
    pub records: usize,
    /// Sum of the sizes of the layers the records name.
    pub layer_bytes: u64,
}

/// The records under one state directory.
#[derive(Debug, Clone)]
pub struct BuildCache {
    dir: PathBuf,
}

impl BuildCache {
    /// The build cache of `state_dir` (its folder is made on the first write).
    pub fn new(state_dir: &Path) -> Self {
        BuildCache {
            dir: state_dir.join("build-cache"),
        }
    }

    fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{}.json", key.digest().hex()))
    }

    /// The record of `key`, if there is a readable one.
    pub fn get(&self, key: &CacheKey) -> Option<CacheRecord> {
        read_record(&self.path(key)).filter(|r| &r.key == key)
    }

    /// Writes `record` (replacing one of the same key).
    pub fn put(&self, record: &CacheRecord) -> Result<(), CacheStoreError> {
        fs::create_dir_all(&self.dir).map_err(io_at(&self.dir))?;
        let path = self.path(&record.key);
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io_at(&self.dir))?;
        serde_json::to_writer(&mut tmp, record).map_err(|e| io_at(&path)(io::Error::other(e)))?;
        tmp.persist(&path).map_err(|e| io_at(&path)(e.error))?;
        Ok(())
    }

    /// Every readable record.
    pub fn list(&self) -> Result<Vec<CacheRecord>, CacheStoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_at(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_at(&self.dir))?.path();
            if path.extension().is_some_and(|x| x == "json") {
                out.extend(read_record(&path));
            }
        }
        Ok(out)
    }

    /// The blobs the records keep from `skiff image prune`.
    pub fn pinned_blobs(&self) -> Result<HashSet<Digest>, CacheStoreError> {
        Ok(self
            .list()?
            .into_iter()
            .filter_map(|r| r.layer.map(|l| l.digest))
            .collect())
    }

    pub fn usage(&self) -> Result<CacheUsage, CacheStoreError> {
        Ok(usage_of(&self.list()?))
    }

    /// Removes records, least recently used first: all of them with `all`, else until
    /// their layers take at most `keep_bytes` (nothing without a limit). Unreadable
    /// record files go too. Returns what was removed.
    pub fn prune(&self, all: bool, keep_bytes: Option<u64>) -> Result<CacheUsage, CacheStoreError> {
        let mut records = self.list()?;
        records.sort_by_key(|r| (r.last_used_ms, r.created_ms));
        let mut total = usage_of(&records).layer_bytes;
        let mut removed = Vec::new();
        for r in records {
            let over = keep_bytes.is_some_and(|k| total > k);
            if !(all || over) {
                break;
            }
            let path = self.path(&r.key);
            fs::remove_file(&path).map_err(io_at(&path))?;
            total -= r.layer.as_ref().map_or(0, |l| l.size);
            removed.push(r);
        }
        // Files that are not records (torn by hand, foreign) are not kept either.
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let is_record = path.extension().is_some_and(|x| x == "json");
                if is_record && read_record(&path).is_none() {
                    fs::remove_file(&path).map_err(io_at(&path))?;
                }
            }
        }
        Ok(usage_of(&removed))
    }
}

fn usage_of(records: &[CacheRecord]) -> CacheUsage {
    CacheUsage {
        records: records.len(),
        layer_bytes: records
            .iter()
            .map(|r| r.layer.as_ref().map_or(0, |l| l.size))
            .sum(),
    }
}

/// A record file, bounded; None when it is missing, too large or not a record.
fn read_record(path: &Path) -> Option<CacheRecord> {
    let f = fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    f.take(MAX_RECORD_BYTES + 1).read_to_end(&mut bytes).ok()?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8, size: Option<u64>, used: u64) -> CacheRecord {
        CacheRecord {
            key: CacheKey::base(Some(&Digest::of(&[n]))),
            layer: size.map(|size| CachedLayer {
                digest: Digest::of(&[n, 1]),
                diff_id: Digest::of(&[n, 2]),
                size,
            }),
            created_by: format!("RUN step {n}"),
            created_ms: 1,
            last_used_ms: used,
        }
    }

    #[test]
    fn records_round_trip_pin_their_blobs_and_prune_least_recently_used_first() {
        let state = tempfile::tempdir().unwrap();
        let cache = BuildCache::new(state.path());
        assert!(cache.list().unwrap().is_empty(), "no folder yet: empty");
        let (a, b, c) = (
            record(1, Some(100), 10),
            record(2, Some(50), 30),
            record(3, None, 20),
        );
        for r in [&a, &b, &c] {
            cache.put(r).unwrap();
        }
        assert_eq!(cache.get(&a.key), Some(a.clone()));
        assert_eq!(cache.get(&record(9, None, 0).key), None);
        let pinned = cache.pinned_blobs().unwrap();
        assert_eq!(pinned.len(), 2);
        assert!(pinned.contains(&Digest::of(&[1, 1])));
        assert_eq!(
            cache.usage().unwrap(),
            CacheUsage {
                records: 3,
                layer_bytes: 150
            }
        );
        // Keep 60 bytes: `a` (used at 10) goes first; then the layers fit.
        let removed = cache.prune(false, Some(60)).unwrap();
        assert_eq!(
            removed,
            CacheUsage {
                records: 1,
                layer_bytes: 100
            }
        );
        assert!(cache.get(&a.key).is_none() && cache.get(&b.key).is_some());
        assert_eq!(
            cache.prune(false, None).unwrap().records,
            0,
            "no limit: nothing"
        );
        assert_eq!(cache.prune(true, None).unwrap().records, 2);
        assert!(cache.list().unwrap().is_empty());
    }

    #[test]
    fn a_damaged_or_foreign_record_is_a_miss_and_prune_removes_it() {
        let state = tempfile::tempdir().unwrap();
        let cache = BuildCache::new(state.path());
        let a = record(1, Some(1), 1);
        cache.put(&a).unwrap();
        let path = cache.path(&a.key);
        fs::write(&path, b"{\"key\":").unwrap();
        assert_eq!(cache.get(&a.key), None);
        // A record stored under another key's name does not answer for it.
        let b = record(2, None, 1);
        fs::write(&path, serde_json::to_vec(&b).unwrap()).unwrap();
        assert_eq!(cache.get(&a.key), None);
        fs::write(cache.dir.join("big.json"), vec![b' '; 100_000]).unwrap();
        cache.prune(false, None).unwrap();
        assert!(!cache.dir.join("big.json").exists());
        assert!(path.exists(), "a readable record stays");
    }
}
