//! Walking the context directory into a [`Manifest`].
//!
//! Symbolic links are never followed: a link is recorded with its target,
//! and files are opened with `O_NOFOLLOW`. Paths excluded by the ignore rules
//! are left out and excluded directories are not entered, unless a later `!`
//! line could re-include something below them (Docker's "exclusions with
//! exceptions"), or an always-included path (the Dockerfile, the ignore file)
//! lies below them. An excluded directory that was entered appears in the
//! manifest, marked `excluded`, only when something below it is present.
//!
//! The walk reads directories by path, so it assumes nobody untrusted renames
//! directories inside the context while it runs.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::clean::clean;
use super::dockerignore::{Decision, IgnoreMatcher};
use super::statcache::{StatCache, StatKey};

pub use super::entry::{DeviceNumbers, Entry, EntryKind, Manifest};

/// Why the context could not be walked.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("context: {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("context: {path} is {kind}; only files, directories and symbolic links can be sent")]
    SpecialFile { path: String, kind: &'static str },
    #[error("context: the name of {path} is not valid UTF-8")]
    NonUtf8Name { path: String },
    #[error("context: the target of symbolic link {path} is not valid UTF-8")]
    NonUtf8Target { path: String },
    #[error("context: more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("context: a path is longer than {limit} bytes: {prefix}...")]
    PathTooLong { prefix: String, limit: usize },
    #[error("context: {path} is nested more than {limit} directories deep")]
    TooDeep { path: String, limit: usize },
    #[error("context: {path} changed while it was being read")]
    Changed { path: String },
    #[error("context: reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Bounds and tuning of a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkOptions {
    /// Most entries in the manifest (excluded directories entered count too).
    pub max_entries: usize,
    /// Longest context-relative path, in bytes.
    pub max_path_bytes: usize,
    /// Deepest nesting, in path components.
    pub max_depth: usize,
    /// A hash is remembered only for files whose ctime is at least this much
    /// older than the start of the walk: a file changed again within the
    /// same timestamp tick would otherwise keep its stat fields.
    pub racy_margin: Duration,
    /// Device nodes and FIFOs become entries (`char`, `block`, `fifo`) and sockets are
    /// left out, as Docker leaves them out: for the trees of other stages and images
    /// (`COPY --from`). A client's context refuses all three.
    pub special_files: bool,
}

impl Default for WalkOptions {
    fn default() -> Self {
        WalkOptions {
            max_entries: 1_000_000,
            max_path_bytes: 4096,
            max_depth: 256,
            racy_margin: Duration::from_secs(2),
            special_files: false,
        }
    }
}

/// Walks `root` into a manifest.
///
/// `always_include` lists context-relative paths present even when excluded
/// (the Dockerfile and the ignore file); missing ones are not an error.
/// `cache` supplies remembered hashes and, on success, is replaced by the
/// hashes of the files seen now.
pub fn walk_context(
    root: &Path,
    ignore: &IgnoreMatcher,
    always_include: &[String],
    cache: &mut StatCache,
    options: &WalkOptions,
) -> Result<Manifest, WalkError> {
    let meta = fs::metadata(root).map_err(|source| WalkError::Io {
        path: root.display().to_string(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(WalkError::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let margin_ns = i64::try_from(options.racy_margin.as_nanos()).unwrap_or(i64::MAX);
    let always = always_include
        .iter()
        .map(|p| clean(p).trim_start_matches('/').to_owned())
        .filter(|p| !p.is_empty() && p != "." && p != ".." && !p.starts_with("../"))
        .collect();
    let mut walker = Walker {
        root,
        ignore,
        always,
        old_cache: cache,
        new_cache: StatCache::new(),
        options,
        cache_before_ns: now_ns.saturating_sub(margin_ns),
        entries: Vec::new(),
        pending: HashMap::new(),
        count: 0,
    };
    walker.walk()?;
    let Walker {
        mut entries,
        mut pending,
        new_cache,
        ..
    } = walker;
    // Bring in the excluded directories above the entries that are present.
    let mut parents = Vec::new();
    for entry in &entries {
        let mut path = entry.path.as_str();
        while let Some((parent, _)) = path.rsplit_once('/') {
            if let Some(dir) = pending.remove(parent) {
                parents.push(dir);
            }
            path = parent;
        }
    }
    entries.extend(parents);
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let total_bytes = entries
        .iter()
        .filter_map(|e| e.size)
        .fold(0u64, u64::saturating_add);
    *cache = new_cache;
    Ok(Manifest {
        entries,
        total_bytes,
    })
}

/// State of one walk.
struct Walker<'a> {
    root: &'a Path,
    ignore: &'a IgnoreMatcher,
    always: BTreeSet<String>,
    old_cache: &'a StatCache,
    new_cache: StatCache,
    options: &'a WalkOptions,
    /// Files whose ctime is before this may have their hash remembered.
    cache_before_ns: i64,
    /// Entries present in the manifest.
    entries: Vec<Entry>,
    /// Excluded directories entered, kept only if something below is present.
    pending: HashMap<String, Entry>,
    /// Entries and pending directories so far.
    count: usize,
}

/// A directory still to be read.
struct Dir {
    rel: String,
    decision: Decision,
    depth: usize,
}

impl Walker<'_> {
    fn walk(&mut self) -> Result<(), WalkError> {
        let mut stack = vec![Dir {
            rel: String::new(),
            decision: Decision::UNMATCHED,
            depth: 0,
        }];
        while let Some(dir) = stack.pop() {
            let abs = self.root.join(&dir.rel);
            let shown = if dir.rel.is_empty() { "." } else { &dir.rel };
            let io_err = |source| WalkError::Io {
                path: shown.to_owned(),
                source,
            };
            let mut names = Vec::new();
            for item in fs::read_dir(&abs).map_err(io_err)? {
                names.push(item.map_err(io_err)?.file_name());
            }
            names.sort();
            for name in names {
                let Some(name) = name.to_str() else {
                    // The API is JSON, so such a name cannot be sent; it is
                    // only tolerated when the rules (matched against the
                    // lossy name) exclude it for good.
                    let lossy = join(&dir.rel, &name.to_string_lossy());
                    let decision = self.ignore.decide_below(&lossy, dir.decision);
                    if decision.excluded && !self.ignore.may_reinclude_below(&lossy, decision) {
                        continue;
                    }
                    return Err(WalkError::NonUtf8Name { path: lossy });
                };
                if let Some(sub) = self.visit(&dir, join(&dir.rel, name))? {
                    stack.push(sub);
                }
            }
        }
        Ok(())
    }

    /// Records one directory entry; returns the directory to enter, if any.
    fn visit(&mut self, parent: &Dir, rel: String) -> Result<Option<Dir>, WalkError> {
        if rel.len() > self.options.max_path_bytes {
            let mut cut = self.options.max_path_bytes.min(200);
            while !rel.is_char_boundary(cut) {
                cut -= 1;
            }
            return Err(WalkError::PathTooLong {
                prefix: rel[..cut].to_owned(),
                limit: self.options.max_path_bytes,
            });
        }
        let depth = parent.depth + 1;
        if depth > self.options.max_depth {
            return Err(WalkError::TooDeep {
                path: rel,
                limit: self.options.max_depth,
            });
        }
        let abs = self.root.join(&rel);
        let meta = match fs::symlink_metadata(&abs) {
            Ok(meta) => meta,
            // Deleted since the directory was read: it is simply not there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(WalkError::Io {
                    path: rel.clone(),
                    source,
                })
            }
        };
        let decision = self.ignore.decide_below(&rel, parent.decision);
        let excluded = decision.excluded;
        let forced = self.always.contains(&rel);
        let file_type = meta.file_type();
        let mode = meta.mode() & 0o7777;
        if file_type.is_dir() {
            let enter = !excluded
                || self.ignore.may_reinclude_below(&rel, decision)
                || self.leads_to_always_included(&rel);
            let entry = Entry {
                path: rel.clone(),
                kind: EntryKind::Dir,
                mode,
                size: None,
                sha256: None,
                link_target: None,
                device: None,
                excluded,
            };
            if !excluded || forced {
                self.push(entry)?;
            } else if enter {
                self.count_one()?;
                self.pending.insert(rel.clone(), entry);
            }
            return Ok(enter.then_some(Dir {
                rel,
                decision,
                depth,
            }));
        }
        if excluded && !forced {
            return Ok(None);
        }
        let entry = if file_type.is_file() {
            let (size, sha256, mode) = self.hash_file(&rel, &abs, &meta)?;
            Entry {
                path: rel,
                kind: EntryKind::File,
                mode,
                size: Some(size),
                sha256: Some(sha256),
                link_target: None,
                device: None,
                excluded,
            }
        } else if file_type.is_symlink() {
            let target = fs::read_link(&abs).map_err(|source| WalkError::Io {
                path: rel.clone(),
                source,
            })?;
            let Some(target) = target.to_str().map(str::to_owned) else {
                return Err(WalkError::NonUtf8Target { path: rel });
            };
            Entry {
                path: rel,
                kind: EntryKind::Symlink,
                mode,
                size: None,
                sha256: None,
                link_target: Some(target),
                device: None,
                excluded,
            }
        } else if !self.options.special_files {
            return Err(WalkError::SpecialFile {
                path: rel,
                kind: special_kind(&meta),
            });
        } else {
            let t = meta.file_type();
            let rdev = meta.rdev();
            let numbers = DeviceNumbers {
                major: libc::major(rdev),
                minor: libc::minor(rdev),
            };
            let (kind, device) = if t.is_char_device() {
                (EntryKind::Char, Some(numbers))
            } else if t.is_block_device() {
                (EntryKind::Block, Some(numbers))
            } else if t.is_fifo() {
                (EntryKind::Fifo, None)
            } else {
                return Ok(None); // a socket holds nothing to copy
            };
            Entry {
                path: rel,
                kind,
                mode,
                size: None,
                sha256: None,
                link_target: None,
                device,
                excluded,
            }
        };
        self.push(entry)?;
        Ok(None)
    }

    /// True when an always-included path lies strictly below `dir`.
    fn leads_to_always_included(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.always
            .range(prefix.clone()..)
            .next()
            .is_some_and(|p| p.starts_with(&prefix))
    }

    fn count_one(&mut self) -> Result<(), WalkError> {
        self.count += 1;
        if self.count > self.options.max_entries {
            return Err(WalkError::TooManyEntries {
                limit: self.options.max_entries,
            });
        }
        Ok(())
    }

    fn push(&mut self, entry: Entry) -> Result<(), WalkError> {
        self.count_one()?;
        self.entries.push(entry);
        Ok(())
    }

    /// Returns size, SHA-256 and permission bits of a regular file, reusing
    /// a remembered hash when the stat fields are unchanged.
    fn hash_file(
        &mut self,
        rel: &str,
        abs: &Path,
        lstat: &Metadata,
    ) -> Result<(u64, String, u32), WalkError> {
        let changed = || WalkError::Changed {
            path: rel.to_owned(),
        };
        let io_err = |source| WalkError::Io {
            path: rel.to_owned(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(abs)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    changed()
                } else {
                    io_err(e)
                }
            })?;
        let before = file.metadata().map_err(io_err)?;
        if !before.is_file() || before.dev() != lstat.dev() || before.ino() != lstat.ino() {
            return Err(changed());
        }
        let key = StatKey::from_metadata(&before);
        let mode = before.mode() & 0o7777;
        if let Some(sha) = self.old_cache.lookup(rel, &key) {
            let sha = sha.to_owned();
            self.remember(rel, key, &sha);
            return Ok((key.size, sha, mode));
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut read = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(e)),
            };
            hasher.update(&buf[..n]);
            read = read.saturating_add(n as u64);
        }
        let sha = hex::encode(hasher.finalize());
        let after = StatKey::from_metadata(&file.metadata().map_err(io_err)?);
        // A file that changed while being read gets the hash of the bytes
        // read, but is not remembered.
        if after == key && read == key.size {
            self.remember(rel, key, &sha);
        }
        Ok((read, sha, mode))
    }

    fn remember(&mut self, rel: &str, key: StatKey, sha: &str) {
        if key.ctime_ns < self.cache_before_ns {
            self.new_cache.insert(rel.to_owned(), key, sha.to_owned());
        }
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn special_kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else {
        "of an unknown type"
    }
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
