//! Remembered file hashes, so unchanged files are not hashed on every build.
//!
//! A hash is reused only when the file's device, inode, size, modification
//! time, change time and mode are all the same as when it was hashed. The
//! change time (ctime) cannot be set by users, so rewriting a file and
//! restoring its mtime still forces a new hash.

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};

/// The stat fields a cached hash is tied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatKey {
    /// Device holding the file (`st_dev`).
    pub dev: u64,
    /// Inode number (`st_ino`).
    pub ino: u64,
    /// Size in bytes (`st_size`).
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Inode change time, nanoseconds since the Unix epoch.
    pub ctime_ns: i64,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
}

impl StatKey {
    /// The key of a file from its (`fstat`) metadata.
    pub fn from_metadata(meta: &Metadata) -> Self {
        StatKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
            mode: meta.mode(),
        }
    }
}

fn nanos(secs: i64, nsecs: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsecs)
}

/// One remembered hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedHash {
    /// The stat fields the file had when it was hashed.
    #[serde(flatten)]
    pub stat: StatKey,
    /// SHA-256 of the contents, lowercase hex.
    pub sha256: String,
}

/// Context-relative path → the hash of that file and the stat fields it had.
/// A walk replaces the contents with exactly the files it saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatCache {
    /// The remembered hashes, by path.
    entries: BTreeMap<String, CachedHash>,
}

impl StatCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of remembered files.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The remembered hash of `path` if its stat fields are exactly `stat`.
    pub fn lookup(&self, path: &str, stat: &StatKey) -> Option<&str> {
        self.entries
            .get(path)
            .filter(|cached| cached.stat == *stat)
            .map(|cached| cached.sha256.as_str())
    }

    /// The remembered entry of `path`, whatever its stat fields.
    pub fn get(&self, path: &str) -> Option<&CachedHash> {
        self.entries.get(path)
    }

    /// Remembers `sha256` for `path` with `stat`.
    pub fn insert(&mut self, path: String, stat: StatKey, sha256: String) {
        self.entries.insert(path, CachedHash { stat, sha256 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(size: u64) -> StatKey {
        StatKey {
            dev: 1,
            ino: 2,
            size,
            mtime_ns: 3,
            ctime_ns: 4,
            mode: 0o100644,
        }
    }

    #[test]
    fn lookup_needs_every_field_equal() {
        let mut cache = StatCache::new();
        assert!(cache.is_empty());
        cache.insert("a".into(), key(5), "ab".into());
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.lookup("a", &key(5)), Some("ab"));
        assert_eq!(cache.lookup("a", &key(6)), None);
        assert_eq!(cache.lookup("b", &key(5)), None);
        let changed = StatKey {
            ctime_ns: 5,
            ..key(5)
        };
        assert_eq!(cache.lookup("a", &changed), None);
    }

    #[test]
    fn round_trips_through_json() {
        let mut cache = StatCache::new();
        cache.insert("dir/f".into(), key(9), "00ff".into());
        let json = serde_json::to_string(&cache).expect("serialise");
        assert!(json.contains("\"mtimeNs\":3"), "{json}");
        let back: StatCache = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, cache);
    }
}
