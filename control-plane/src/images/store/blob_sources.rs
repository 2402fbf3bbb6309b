//! Where each stored blob is known to exist in a registry: `<state>/blob-sources/<hex>`,
//! a few `registry/repository` lines, newest first. A pull records the repository it
//! read a blob from, a push the one it wrote to; a later push to another repository of
//! the same registry asks for a cross-repository mount instead of sending the bytes
//! (Docker keeps the same in its `v2metadata`). The file is a hint: a wrong or stale line
//! costs one refused mount, never a wrong blob, as the registry checks the digest.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::images::digest::Digest;

/// Repositories kept per blob.
const MAX_SOURCES: usize = 8;
/// A source file larger than this is not read (it was not written by us).
const MAX_FILE_BYTES: u64 = 4096;

#[derive(Debug, Clone)]
pub struct BlobSources {
    dir: PathBuf,
}

impl BlobSources {
    pub fn new(state_dir: &Path) -> Self {
        BlobSources {
            dir: state_dir.join("blob-sources"),
        }
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// The `registry/repository` names recorded for `digest`, newest first.
    pub fn get(&self, digest: &Digest) -> Vec<(String, String)> {
        let path = self.path(digest);
        let Ok(meta) = fs::metadata(&path) else {
            return Vec::new();
        };
        if meta.len() > MAX_FILE_BYTES {
            return Vec::new();
        }
        fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(reg, repo)| (reg.to_owned(), repo.to_owned()))
            .take(MAX_SOURCES)
            .collect()
    }

    /// A repository of `registry` other than `repository` that holds `digest`, if any.
    pub fn mount_source(
        &self,
        digest: &Digest,
        registry: &str,
        repository: &str,
    ) -> Option<String> {
        self.get(digest)
            .into_iter()
            .find(|(reg, repo)| reg == registry && repo != repository)
            .map(|(_, repo)| repo)
    }

    /// Records that `registry`'s `repository` holds `digest`. Best effort: a failure
    /// loses a hint, nothing else.
    pub fn record(&self, digest: &Digest, registry: &str, repository: &str) {
        if registry.contains([' ', '\n']) || repository.contains([' ', '\n']) {
            return;
        }
        let mut list = self.get(digest);
        if list
            .first()
            .is_some_and(|(g, p)| g == registry && p == repository)
        {
            return;
        }
        list.retain(|(g, p)| !(g == registry && p == repository));
        list.insert(0, (registry.to_owned(), repository.to_owned()));
        list.truncate(MAX_SOURCES);
        let text: String = list.iter().map(|(g, p)| format!("{g} {p}\n")).collect();
        if let Err(e) = self.write(digest, &text) {
            tracing::debug!(%digest, error = %e, "blob source not recorded");
        }
    }

    fn write(&self, digest: &Digest, text: &str) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let tmp = self
            .dir
            .join(format!(".{}.{}", digest.hex(), std::process::id()));
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.path(digest))
    }

    /// Forgets the blobs not in `keep` (hex digests); returns how many were forgotten.
    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) -> usize {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep(&name) && fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_newest_first_bounded_and_found_in_the_same_registry_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobSources::new(dir.path());
        let d = Digest::of(b"layer");
        assert!(s.get(&d).is_empty());
        s.record(&d, "r:5000", "team/a");
        s.record(&d, "r:5000", "team/b");
        s.record(&d, "other:5000", "team/c");
        assert_eq!(s.get(&d)[0], ("other:5000".into(), "team/c".into()));
        assert_eq!(
            s.mount_source(&d, "r:5000", "team/a").as_deref(),
            Some("team/b")
        );
        assert_eq!(
            s.mount_source(&d, "r:5000", "team/b").as_deref(),
            Some("team/a")
        );
        assert_eq!(s.mount_source(&d, "nowhere:1", "x"), None);
        for i in 0..20 {
            s.record(&d, "r:5000", &format!("many/{i}"));
        }
        let all = s.get(&d);
        assert_eq!(all.len(), MAX_SOURCES);
        assert_eq!(all[0].1, "many/19");
        s.record(&d, "r:5000", "bad name");
        assert_eq!(s.get(&d)[0].1, "many/19");
        assert_eq!(s.retain(&|_| false), 1);
        assert!(s.get(&d).is_empty());
    }
}
