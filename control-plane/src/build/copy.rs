//! What a `COPY` step puts in its layer, by Docker's rules: the destination is taken
//! relative to `WORKDIR`; a source folder's contents (not the folder) go into it; a file
//! goes into it when it names a folder (a trailing `/`, or a folder the image already
//! has), else becomes it; several sources need a folder destination ending in `/`.
//! Copied entries belong to root (or `--chown`) and keep their mode (or take `--chmod`);
//! the folders above the destination come along with the metadata the image gives them,
//! or as new root-owned `0755` folders.
//!
//! Every copied entry gets the step's time as its mtime (the build's clock, or
//! `SOURCE_DATE_EPOCH`), not the context file's: the cache key ignores mtimes, so a layer
//! that kept them would differ between builds whose keys are the same.

use std::collections::{BTreeMap, HashMap};

use super::context::manifest::DeviceNumbers;
use super::context::{
    select_sources, ChecksumError, Entry, EntryKind as SourceKind, IgnoreMatcher, Manifest,
};
use super::layer::{Content, EntryKind, LayerEntry};

/// A folder's metadata in the image the step builds on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirMeta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

/// What one `COPY` does, already expanded.
#[derive(Debug, Clone)]
pub struct CopyRequest<'a> {
    pub sources: &'a [String],
    pub dest: &'a str,
    /// The stage's `WORKDIR` when the step runs (absolute).
    pub workdir: &'a str,
    /// `--chown`, resolved to numbers; root otherwise.
    pub owner: (u64, u64),
    /// `--chmod` permission bits.
    pub chmod: Option<u32>,
    /// The step's time.
    pub mtime: u64,
}

/// Why a `COPY` cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Source(#[from] ChecksumError),
    #[error("when using COPY with more than one source file, the destination must be a directory and end with a /")]
    NotADirectory,
}

/// Extended attributes by name.
pub type Xattrs = Vec<(String, Vec<u8>)>;

/// Where the copied files' bytes and attributes are.
pub struct SourceFiles<'a> {
    /// Where a source file's bytes are.
    pub content_of: &'a dyn Fn(&Entry) -> Content,
    /// The extended attributes a copied entry keeps (a file's capabilities, from another
    /// stage's tree); none for a context's files.
    pub xattrs_of: &'a dyn Fn(&Entry) -> Xattrs,
}

/// The entries `req` puts in the layer. `files` says where a source file's bytes and
/// attributes are; `image_dir` gives the metadata of a folder the image already has (path
/// without the leading `/`), `None` when it has none there.
pub fn copy_entries(
    manifest: &Manifest,
    ignore: &IgnoreMatcher,
    req: &CopyRequest<'_>,
    files: &SourceFiles<'_>,
    image_dir: &dyn Fn(&str) -> Option<DirMeta>,
) -> Result<Vec<LayerEntry>, CopyError> {
    let content_of = files.content_of;
    let dest_named_dir = req.dest.ends_with('/') || req.dest == "." || req.dest.ends_with("/.");
    let dest = absolute(req.workdir, req.dest);
    // Each source's roots: the entries it selects that are not under another one.
    let mut roots: Vec<(&Entry, Vec<&Entry>)> = Vec::new();
    for source in req.sources {
        let selected = select_sources(manifest, std::slice::from_ref(source), ignore)?;
        // `COPY . /dst`: the context's root is a folder whose contents go.
        if source_is_root(source) {
            roots.push((&ROOT_DIR, selected));
            continue;
        }
        // An entry belongs to its topmost selected folder above it, if any: found through
        // its ancestors, so a folder of many files costs their number times their depth.
        // (A folder sorts before everything under it, so it is seen first.)
        let mut dirs: HashMap<&str, usize> = HashMap::new();
        for e in &selected {
            let root = ancestors(&e.path)
                .iter()
                .find_map(|a| dirs.get(a.as_str()).copied());
            match root {
                Some(i) => roots[i].1.push(e),
                None => {
                    if e.kind == SourceKind::Dir {
                        dirs.insert(e.path.as_str(), roots.len());
                    }
                    roots.push((e, Vec::new()));
                }
            }
        }
    }
    // Docker's check is on the sources as written; a wildcard that matches several makes
    // the destination a folder.
    if req.sources.len() > 1 && !dest_named_dir {
        return Err(CopyError::NotADirectory);
    }
    let into_dir = dest_named_dir || roots.len() > 1 || image_dir(&dest).is_some();
    let mut out: BTreeMap<String, LayerEntry> = BTreeMap::new();
    let copied = |e: &Entry, kind: EntryKind, path: String| LayerEntry {
        path: path.into_bytes(),
        kind,
        mode: req.chmod.unwrap_or(e.mode) & 0o7777,
        uid: req.owner.0,
        gid: req.owner.1,
        mtime: req.mtime,
        xattrs: (files.xattrs_of)(e),
    };
    for (root, below) in roots {
        let target = match root.kind {
            SourceKind::Dir => dest.clone(),
            _ if into_dir => join(&dest, basename(&root.path)),
            _ => dest.clone(),
        };
        if root.kind == SourceKind::Dir {
            // The destination folder itself: the image's, or made with the source's mode.
            if !target.is_empty() && image_dir(&target).is_none() {
                out.insert(target.clone(), copied(root, EntryKind::Dir, target.clone()));
            }
        } else {
            out.insert(
                target.clone(),
                copied(root, kind_of(root, content_of), target.clone()),
            );
        }
        for e in below {
            let rel = &e.path[root.path.len() + usize::from(!root.path.is_empty())..];
            let path = join(&target, rel);
            out.insert(path.clone(), copied(e, kind_of(e, content_of), path));
        }
    }
    // The folders above everything copied.
    let parents: Vec<String> = out.keys().flat_map(|p| ancestors(p)).collect();
    for p in parents {
        if out.contains_key(&p) {
            continue;
        }
        let meta = image_dir(&p).unwrap_or(DirMeta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: req.mtime,
        });
        out.insert(
            p.clone(),
            LayerEntry {
                path: p.into_bytes(),
                kind: EntryKind::Dir,
                mode: meta.mode & 0o7777,
                uid: meta.uid,
                gid: meta.gid,
                mtime: meta.mtime,
                xattrs: Vec::new(),
            },
        );
    }
    Ok(out.into_values().collect())
}

/// The context's root as a source folder (`COPY . /app/`).
static ROOT_DIR: Entry = Entry {
    path: String::new(),
    kind: SourceKind::Dir,
    mode: 0o755,
    size: None,
    sha256: None,
    link_target: None,
    device: None,
    excluded: false,
};

fn source_is_root(source: &str) -> bool {
    source.split('/').all(|p| p.is_empty() || p == ".")
}

fn kind_of(e: &Entry, content_of: &dyn Fn(&Entry) -> Content) -> EntryKind {
    match e.kind {
        SourceKind::Dir => EntryKind::Dir,
        SourceKind::Symlink => {
            EntryKind::Symlink(e.link_target.clone().unwrap_or_default().into_bytes())
        }
        SourceKind::Char => {
            let d = e.device.unwrap_or(DeviceNumbers { major: 0, minor: 0 });
            EntryKind::Char {
                major: d.major,
                minor: d.minor,
            }
        }
        SourceKind::Block => {
            let d = e.device.unwrap_or(DeviceNumbers { major: 0, minor: 0 });
            EntryKind::Block {
                major: d.major,
                minor: d.minor,
            }
        }
        SourceKind::Fifo => EntryKind::Fifo,
        SourceKind::File => {
            let size = e.size.unwrap_or(0);
            EntryKind::File {
                size,
                content: if size == 0 {
                    Content::Empty
                } else {
                    content_of(e)
                },
            }
        }
    }
}

/// `dest` made absolute against `workdir` and cleaned, without its leading `/` (the root
/// is ""); a `..` stops at the root, as in a path lookup.
fn absolute(workdir: &str, dest: &str) -> String {
    let full = if dest.starts_with('/') {
        dest.to_owned()
    } else {
        format!("{workdir}/{dest}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for p in full.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn join(dir: &str, name: &str) -> String {
    match (dir.is_empty(), name.is_empty()) {
        (true, _) => name.to_owned(),
        (_, true) => dir.to_owned(),
        _ => format!("{dir}/{name}"),
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `a/b/c` → `a`, `a/b`.
fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = path[at..].find('/') {
        out.push(path[..at + i].to_owned());
        at += i + 1;
    }
    out
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
