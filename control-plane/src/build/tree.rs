//! A stage's root filesystem on the host while it is built: its layers applied in place,
//! one after another, to a folder only the host writes, so that a step needs only the
//! layers made since the last one (not an unpack from scratch). The tree is read to make
//! a `RUN` step's root filesystem image, to learn the metadata of folders a `COPY` writes
//! into, and to find the users `--chown` names; paths in it are always resolved inside it,
//! as the image's own symlinks would resolve in a container, never out of it.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::images::digest::Digest;
use crate::images::limits::Limits;
use crate::images::unpack::{apply_layer_file, Budget, UnpackError};

use super::copy::DirMeta;

/// Symlinks followed while resolving one path (Linux's `MAXSYMLINKS`).
const MAX_LINK_HOPS: u32 = 40;
/// Largest `/etc/passwd` or `/etc/group` read for `--chown`.
const MAX_ID_FILE_BYTES: u64 = 4 << 20;

/// One layer of the stage's image, bottom first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeLayer {
    pub digest: Digest,
    pub path: PathBuf,
    pub diff_id: Digest,
}

/// Why the tree could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: {source}")]
    Unpack {
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("layer {layer} does not match its diff_id {expected} (it holds {actual})")]
    DiffId {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
}

/// The unpacked tree of one stage.
#[derive(Debug)]
pub struct StageTree {
    root: PathBuf,
    applied: Vec<Digest>,
    budget: Budget,
}

impl StageTree {
    /// An empty tree at `root` (made here; removed with the build's work folder).
    pub fn new(root: PathBuf, limits: Limits) -> Result<Self, TreeError> {
        fs::create_dir_all(&root).map_err(|source| TreeError::Io {
            path: root.clone(),
            source,
        })?;
        Ok(StageTree {
            root,
            applied: Vec::new(),
            budget: Budget::new(limits),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Layers applied so far.
    pub fn applied(&self) -> usize {
        self.applied.len()
    }

    /// Applies the layers of `layers` the tree does not have yet. `layers` must start
    /// with the ones already applied (a stage only ever adds layers on top).
    pub fn catch_up(&mut self, layers: &[TreeLayer]) -> Result<&Path, TreeError> {
        debug_assert!(layers
            .iter()
            .zip(&self.applied)
            .all(|(l, d)| &l.digest == d));
        for layer in &layers[self.applied.len().min(layers.len())..] {
            let stats =
                apply_layer_file(&self.root, &layer.path, &self.budget).map_err(|source| {
                    TreeError::Unpack {
                        layer: layer.digest.clone(),
                        source,
                    }
                })?;
            if let Some(actual) = stats.diff_id {
                if actual != layer.diff_id {
                    return Err(TreeError::DiffId {
                        layer: layer.digest.clone(),
                        expected: layer.diff_id.clone(),
                        actual,
                    });
                }
            }
            self.applied.push(layer.digest.clone());
        }
        Ok(&self.root)
    }

    /// `path` (absolute in the image) with the image's symlinks resolved inside the tree,
    /// as a clean path without the leading `/`. Components that do not exist are kept as
    /// written; `..` never climbs above the root.
    pub fn resolve(&self, path: &str) -> String {
        let mut done: Vec<String> = Vec::new();
        let mut todo: Vec<String> = components(path).rev().collect();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => {}
            }
            let here = self.root.join(done.join("/")).join(&c);
            match fs::symlink_metadata(&here) {
                Ok(m) if m.file_type().is_symlink() && hops < MAX_LINK_HOPS => {
                    hops += 1;
                    let Ok(target) = fs::read_link(&here) else {
                        done.push(c);
                        continue;
                    };
                    let target = target.to_string_lossy().into_owned();
                    if target.starts_with('/') {
                        done.clear();
                    }
                    todo.extend(components(&target).rev());
                }
                _ => done.push(c),
            }
        }
        done.join("/")
    }

    /// The metadata of the folder at `rel` (resolved, relative), if there is one.
    pub fn dir_meta(&self, rel: &str) -> Option<DirMeta> {
        let m = fs::symlink_metadata(self.root.join(rel)).ok()?;
        m.is_dir().then(|| DirMeta {
            mode: m.mode() & 0o7777,
            uid: m.uid() as u64,
            gid: m.gid() as u64,
            mtime: m.mtime().max(0) as u64,
        })
    }

    /// `--chown`'s `USER[:GROUP]` as numbers: numbers as they are, names looked up in the
    /// image's `/etc/passwd` and `/etc/group`. A user alone gives its primary group.
    pub fn owner(&self, spec: &str) -> Result<(u64, u64), String> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let passwd = self.id_file("/etc/passwd");
        let uid_and_group = match user.parse::<u64>() {
            Ok(n) => (
                n,
                lookup(&passwd, |f| f[2] == user).and_then(|f| f[3].parse().ok()),
            ),
            Err(_) => {
                let f = lookup(&passwd, |f| f[0] == user).ok_or_else(|| {
                    format!("unable to find user {user}: no such user in /etc/passwd")
                })?;
                let uid = f[2]
                    .parse()
                    .map_err(|_| format!("user {user}: bad uid in /etc/passwd"))?;
                (uid, f[3].parse().ok())
            }
        };
        let gid = match group {
            None => uid_and_group.1.unwrap_or(uid_and_group.0),
            Some(g) => match g.parse::<u64>() {
                Ok(n) => n,
                Err(_) => {
                    let groups = self.id_file("/etc/group");
                    let f = lookup(&groups, |f| f[0] == g).ok_or_else(|| {
                        format!("unable to find group {g}: no such group in /etc/group")
                    })?;
                    f[2].parse()
                        .map_err(|_| format!("group {g}: bad gid in /etc/group"))?
                }
            },
        };
        Ok((uid_and_group.0, gid))
    }

    /// A small file of the image, read through the image's own symlinks but never out of
    /// the tree; empty when it is missing, not a regular file or too large.
    fn id_file(&self, path: &str) -> String {
        let rel = self.resolve(path);
        let read = || -> io::Result<String> {
            let f = File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(self.root.join(&rel))?;
            let m = f.metadata()?;
            if !m.is_file() || m.len() > MAX_ID_FILE_BYTES {
                return Ok(String::new());
            }
            let mut s = String::new();
            f.take(MAX_ID_FILE_BYTES).read_to_string(&mut s)?;
            Ok(s)
        };
        read().unwrap_or_default()
    }
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = String> + '_ {
    path.split('/').filter(|c| !c.is_empty()).map(str::to_owned)
}

/// The first line of a colon-separated id file (at least four fields) that `pick` accepts.
fn lookup(text: &str, pick: impl Fn(&[&str]) -> bool) -> Option<Vec<&str>> {
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .find(|f| pick(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> (tempfile::TempDir, StageTree) {
        let dir = tempfile::tempdir().unwrap();
        let t = StageTree::new(dir.path().join("root"), Limits::default()).unwrap();
        (dir, t)
    }

    #[test]
    fn paths_resolve_through_the_images_links_but_never_out_of_it() {
        let (_d, t) = tree();
        let r = t.root();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        symlink("usr/bin", r.join("bin")).unwrap();
        symlink("/usr", r.join("abs")).unwrap();
        symlink("../../../../etc", r.join("usr/out")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        assert_eq!(t.resolve("/bin/x"), "usr/bin/x");
        assert_eq!(t.resolve("/abs/bin"), "usr/bin");
        assert_eq!(t.resolve("/usr/out/passwd"), "etc/passwd");
        assert_eq!(t.resolve("/a/../../b/./c"), "b/c");
        assert_eq!(t.resolve("/loop/x"), "loop/x", "a loop stops after 40 hops");
        assert_eq!(t.resolve("/"), "");
        assert!(t.dir_meta("usr/bin").is_some());
        assert!(t.dir_meta("bin").is_none(), "a link is not a folder");
    }

    #[test]
    fn chown_names_come_from_the_images_files_only() {
        let (_d, t) = tree();
        let r = t.root();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(
            r.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\nshort:x\n",
        )
        .unwrap();
        fs::write(r.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(t.owner("app"), Ok((1000, 1001)));
        assert_eq!(t.owner("app:staff"), Ok((1000, 50)));
        assert_eq!(t.owner("7:8"), Ok((7, 8)));
        assert_eq!(t.owner("1000"), Ok((1000, 1001)));
        assert_eq!(t.owner("42"), Ok((42, 42)));
        assert!(t
            .owner("nobody")
            .unwrap_err()
            .contains("unable to find user nobody"));
        assert!(t.owner("app:wheel").unwrap_err().contains("group wheel"));
        // A passwd that is a link out of the image is read inside it (here: missing).
        fs::remove_file(r.join("etc/passwd")).unwrap();
        symlink("/../../../etc/passwd-host", r.join("etc/passwd")).unwrap();
        assert!(t.owner("app").is_err());
    }
}
