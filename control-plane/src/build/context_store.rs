//! Build contexts uploaded to the server: a client sends the manifest of its context
//! (paths, types, modes, sizes, content hashes, link targets), the server answers with
//! the files it lacks, and the client sends those as one tar. File contents are kept by
//! hash in `<state>/build-contexts/files/<sha256>`, shared by every context, so a rebuild
//! after editing one file uploads one file. Manifests are `<state>/build-contexts/<id>.json`.
//!
//! Everything a client sends is checked: clean relative paths whose folders are listed,
//! no duplicates, well-formed hashes, the size and file-count limits before anything is
//! uploaded, and each uploaded file's size and sha256 against its manifest entry.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::context::{Entry, EntryKind, IgnoreMatcher, Manifest};
use super::request::{BuildContext, ContextFiles};

/// Bounds on one context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextLimits {
    pub max_bytes: u64,
    pub max_files: usize,
}

impl Default for ContextLimits {
    fn default() -> Self {
        ContextLimits {
            max_bytes: 4 << 30,
            max_files: 1_000_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContextStoreError {
    #[error("context too large: {} > {}; exclude paths in .dockerignore", gb(*.bytes), gb(*.limit))]
    TooLarge { bytes: u64, limit: u64 },
    #[error("context too large: {files} entries > {limit}; exclude paths in .dockerignore")]
    TooManyFiles { files: usize, limit: usize },
    #[error("files[{index}] ({path:?}): {why}")]
    BadEntry {
        index: usize,
        path: String,
        why: String,
    },
    #[error("build context {0} not found")]
    NotFound(String),
    #[error("the upload holds {0:?}, which the context does not list as a missing file")]
    Unexpected(String),
    #[error("the upload's {path:?} does not match its manifest entry ({why})")]
    Mismatch { path: String, why: String },
    #[error("the upload is not a readable tar: {0}")]
    BadTar(String),
    #[error("build context {id} still lacks {missing} files")]
    Incomplete { id: String, missing: usize },
    #[error("build contexts: {0}")]
    Io(#[from] io::Error),
}

fn gb(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{:.1} GB", bytes as f64 / 1e9)
    }
}

impl ContextStoreError {
    /// Whether the client is at fault (a 4xx), not the server.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, ContextStoreError::Io(_))
    }
}

/// The uploaded contexts of one state dir.
#[derive(Debug, Clone)]
pub struct ContextStore {
    dir: PathBuf,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

const ONLY_SENDABLE: &str = "a build context holds only files, folders and symlinks";

/// Checks one entry of a client's manifest; the reason when it is not acceptable.
fn check_entry(e: &Entry) -> Result<(), String> {
    let p = &e.path;
    if p.is_empty() || p.len() > 4096 {
        return Err("the path must have 1 to 4096 bytes".into());
    }
    if p.starts_with('/') || p.ends_with('/') || p.contains('\0') {
        return Err("the path must be relative, without a trailing / or NUL".into());
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("the path must be clean (no empty, . or .. parts)".into());
    }
    if !e.kind.is_sendable() || e.device.is_some() {
        return Err(ONLY_SENDABLE.into());
    }
    if e.mode > 0o7777 {
        return Err("mode must be permission bits (at most 0o7777)".into());
    }
    match e.kind {
        EntryKind::File => match (&e.size, &e.sha256) {
            (Some(_), Some(h)) if is_hex64(h) => Ok(()),
            _ => Err("a file needs size and sha256 (64 lowercase hex digits)".into()),
        },
        EntryKind::Dir if e.size.is_none() && e.sha256.is_none() => Ok(()),
        EntryKind::Symlink if e.link_target.as_ref().is_some_and(|t| !t.is_empty()) => Ok(()),
        EntryKind::Dir => Err("a folder has no size or sha256".into()),
        EntryKind::Symlink => Err("a symlink needs linkTarget".into()),
        EntryKind::Char | EntryKind::Block | EntryKind::Fifo => Err(ONLY_SENDABLE.into()),
    }
}

impl ContextStore {
    pub fn new(state_dir: &Path) -> Self {
        ContextStore {
            dir: state_dir.join("build-contexts"),
        }
    }

    fn files_dir(&self) -> PathBuf {
        self.dir.join("files")
    }

    fn manifest_path(&self, id: &str) -> Option<PathBuf> {
        is_hex64(id).then(|| self.dir.join(format!("{id}.json")))
    }

    /// Stores a client's manifest; returns its id and the paths of the files to upload.
    pub fn create(
        &self,
        mut entries: Vec<Entry>,
        limits: ContextLimits,
    ) -> Result<(String, Vec<String>), ContextStoreError> {
        if entries.len() > limits.max_files {
            return Err(ContextStoreError::TooManyFiles {
                files: entries.len(),
                limit: limits.max_files,
            });
        }
        let total: u64 = entries
            .iter()
            .filter_map(|e| e.size)
            .fold(0u64, u64::saturating_add);
        if total > limits.max_bytes {
            return Err(ContextStoreError::TooLarge {
                bytes: total,
                limit: limits.max_bytes,
            });
        }
        for (index, e) in entries.iter().enumerate() {
            check_entry(e).map_err(|why| ContextStoreError::BadEntry {
                index,
                path: e.path.clone(),
                why,
            })?;
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let dirs: BTreeSet<&str> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::Dir)
            .map(|e| e.path.as_str())
            .collect();
        for (index, w) in entries.windows(2).enumerate() {
            if w[0].path == w[1].path {
                return Err(ContextStoreError::BadEntry {
                    index,
                    path: w[0].path.clone(),
                    why: "listed twice".into(),
                });
            }
        }
        for (index, e) in entries.iter().enumerate() {
            if let Some((parent, _)) = e.path.rsplit_once('/') {
                if !dirs.contains(parent) {
                    return Err(ContextStoreError::BadEntry {
                        index,
                        path: e.path.clone(),
                        why: format!("its folder {parent:?} is not listed"),
                    });
                }
            }
        }
        let manifest = Manifest {
            entries,
            total_bytes: total,
        };
        let bytes = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
        let id = hex::encode(Sha256::digest(&bytes));
        fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&bytes)?;
        tmp.persist(self.dir.join(format!("{id}.json")))
            .map_err(|e| e.error)?;
        let missing = self.missing_of(&manifest);
        Ok((id, missing))
    }

    fn load(&self, id: &str) -> Result<Manifest, ContextStoreError> {
        let path = self
            .manifest_path(id)
            .ok_or_else(|| ContextStoreError::NotFound(id.to_owned()))?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ContextStoreError::NotFound(id.to_owned()))
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&bytes).map_err(|e| io::Error::other(e).into())
    }

    /// Paths of the files of `m` whose contents are not here yet (one per content).
    fn missing_of(&self, m: &Manifest) -> Vec<String> {
        let mut seen = BTreeSet::new();
        m.entries
            .iter()
            .filter_map(|e| Some((e, e.sha256.as_deref()?)))
            .filter(|(_, h)| seen.insert(*h) && !self.files_dir().join(h).is_file())
            .map(|(e, _)| e.path.clone())
            .collect()
    }

    pub fn missing(&self, id: &str) -> Result<Vec<String>, ContextStoreError> {
        Ok(self.missing_of(&self.load(id)?))
    }

    /// Takes a tar of missing files of context `id`; returns what is still missing. Each
    /// file must be one the context lists, with its size and sha256; nothing else is
    /// accepted, and a file is kept only once its hash is checked.
    pub fn receive(&self, id: &str, tar: impl Read) -> Result<Vec<String>, ContextStoreError> {
        let m = self.load(id)?;
        let by_path: HashMap<&str, &Entry> = m
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| (e.path.as_str(), e))
            .collect();
        let files = self.files_dir();
        fs::create_dir_all(&files)?;
        let mut archive = tar::Archive::new(tar);
        let bad = |e: io::Error| ContextStoreError::BadTar(e.to_string());
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let name = name.trim_start_matches("./").to_owned();
            if entry.header().entry_type().is_dir() {
                continue;
            }
            let Some(want) = by_path.get(name.as_str()) else {
                return Err(ContextStoreError::Unexpected(name));
            };
            let (size, sha) = (
                want.size.unwrap_or(0),
                want.sha256.clone().unwrap_or_default(),
            );
            if entry.size() != size {
                return Err(ContextStoreError::Mismatch {
                    path: name,
                    why: format!("{} bytes, expected {size}", entry.size()),
                });
            }
            let dest = files.join(&sha);
            if dest.is_file() {
                continue;
            }
            let mut tmp = tempfile::NamedTempFile::new_in(&files)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 << 10];
            let mut got = 0u64;
            loop {
                let n = entry.read(&mut buf).map_err(bad)?;
                if n == 0 {
                    break;
                }
                got += n as u64;
                hasher.update(&buf[..n]);
                tmp.write_all(&buf[..n])?;
            }
            let actual = hex::encode(hasher.finalize());
            if got != size || actual != sha {
                return Err(ContextStoreError::Mismatch {
                    path: name,
                    why: format!("sha256 {actual}, expected {sha}"),
                });
            }
            tmp.as_file().sync_all()?;
            tmp.persist(&dest).map_err(|e| e.error)?;
        }
        Ok(self.missing_of(&m))
    }

    /// The context `id` for a build, once every file is here. `dockerignore` is the
    /// client's ignore file, for the messages that name its lines.
    pub fn context(
        &self,
        id: &str,
        dockerignore: Option<&str>,
    ) -> Result<BuildContext, ContextStoreError> {
        let manifest = self.load(id)?;
        let missing = self.missing_of(&manifest).len();
        if missing > 0 {
            return Err(ContextStoreError::Incomplete {
                id: id.to_owned(),
                missing,
            });
        }
        let ignore = match dockerignore {
            Some(text) => IgnoreMatcher::parse(".dockerignore", text.as_bytes()).map_err(|e| {
                ContextStoreError::BadEntry {
                    index: 0,
                    path: ".dockerignore".into(),
                    why: e.to_string(),
                }
            })?,
            None => IgnoreMatcher::empty(),
        };
        Ok(BuildContext {
            manifest,
            ignore,
            files: ContextFiles::ByHash(self.files_dir()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::context::manifest::DeviceNumbers;

    fn file(path: &str, content: &[u8]) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o644,
            size: Some(content.len() as u64),
            sha256: Some(hex::encode(Sha256::digest(content))),
            link_target: None,
            device: None,
            excluded: false,
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir,
            mode: 0o755,
            size: None,
            sha256: None,
            link_target: None,
            device: None,
            excluded: false,
        }
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn only_missing_files_are_asked_for_and_checked_on_arrival() {
        let state = tempfile::tempdir().unwrap();
        let store = ContextStore::new(state.path());
        let entries = vec![
            dir("src"),
            file("src/a", b"a"),
            file("b", b"b"),
            file("c", b"a"),
        ];
        let (id, missing) = store
            .create(entries.clone(), ContextLimits::default())
            .unwrap();
        assert_eq!(
            missing,
            ["b", "c"],
            "one upload per content (c and src/a are alike)"
        );
        let e = store.receive(&id, &tar_of(&[("b", b"X")])[..]).unwrap_err();
        assert!(e.to_string().contains("sha256"), "{e}");
        let e = store
            .receive(&id, &tar_of(&[("zzz", b"b")])[..])
            .unwrap_err();
        assert!(matches!(e, ContextStoreError::Unexpected(_)), "{e}");
        assert_eq!(
            store.receive(&id, &tar_of(&[("b", b"b")])[..]).unwrap(),
            ["c"]
        );
        assert!(matches!(
            store.context(&id, None),
            Err(ContextStoreError::Incomplete { missing: 1, .. })
        ));
        assert!(store
            .receive(&id, &tar_of(&[("src/a", b"a")])[..])
            .unwrap()
            .is_empty());
        let ctx = store.context(&id, Some("*.log\n")).unwrap();
        assert_eq!(ctx.manifest.entries.len(), 4);
        // A second context with one changed file needs only that one.
        let mut changed = entries;
        changed[2] = file("b", b"new b");
        let (_, missing) = store.create(changed, ContextLimits::default()).unwrap();
        assert_eq!(missing, ["b"]);
    }

    #[test]
    fn hostile_manifests_are_refused_before_any_upload() {
        let state = tempfile::tempdir().unwrap();
        let store = ContextStore::new(state.path());
        let limits = ContextLimits {
            max_bytes: 10,
            max_files: 3,
        };
        let big = vec![file("a", b"0123456789abc")];
        let e = store.create(big, limits).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("context too large: 0.0 GB > 0.0 GB"),
            "{e}"
        );
        let e = store
            .create(vec![dir("a"), dir("b"), dir("c"), dir("d")], limits)
            .unwrap_err();
        assert!(matches!(e, ContextStoreError::TooManyFiles { .. }), "{e}");
        for (bad, why) in [
            (file("../x", b""), "clean"),
            (file("/etc/x", b""), "relative"),
            (file("a//b", b""), "clean"),
            (file("nodir/x", b""), "not listed"),
        ] {
            let e = store
                .create(vec![bad], ContextLimits::default())
                .unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
        // Device nodes and FIFOs come only from other stages' trees, never from a client.
        let mut device = dir("null");
        device.kind = EntryKind::Char;
        device.device = Some(DeviceNumbers { major: 1, minor: 3 });
        let mut numbered = file("x", b"");
        numbered.device = Some(DeviceNumbers { major: 8, minor: 0 });
        for bad in [device, numbered] {
            let e = store
                .create(vec![bad], ContextLimits::default())
                .unwrap_err();
            assert!(
                e.to_string().contains("only files, folders and symlinks"),
                "{e}"
            );
        }
        let mut no_hash = file("x", b"");
        no_hash.sha256 = Some("../../etc/passwd".into());
        let e = store
            .create(vec![no_hash], ContextLimits::default())
            .unwrap_err();
        assert!(e.to_string().contains("64 lowercase hex"), "{e}");
        let e = store
            .create(
                vec![file("x", b""), file("x", b"")],
                ContextLimits::default(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        assert!(matches!(
            store.missing("../../x"),
            Err(ContextStoreError::NotFound(_))
        ));
        assert_eq!(
            ContextStoreError::TooLarge {
                bytes: 6_200_000_000,
                limit: 4 << 30
            }
            .to_string(),
            "context too large: 6.2 GB > 4 GiB; exclude paths in .dockerignore"
        );
    }
}
