//! Applies image layers (tar, optionally gzip- or zstd-compressed) onto a root folder.
//!
//! Written here rather than with `tar::Entry::unpack_in`, because a layer needs what that
//! does not do: device nodes and FIFOs, OCI whiteouts, and paths resolved inside the root
//! (a symlink from an earlier entry or layer is followed as if the root were `/`, and any
//! resolution that would leave the root is rejected).
//!
//! Nothing here follows a symlink or leaves the root: each entry's parent folder is walked
//! to from the root one component at a time with `O_NOFOLLOW` (symlinks met on the way are
//! read and resolved by us, inside the root), and the entry is then made and given its
//! owner, mode, times and xattrs relative to that folder's descriptor (see `at`).

use std::collections::HashSet;
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode};
use rustix::io::Errno;
use tar::EntryType;
use tracing::{debug, warn};

use super::at;
use super::budget::{Budget, Limit, LimitError, Metered};
use crate::images::digest::Digest;
use crate::images::limits::Limits;

use super::compression::decompressed;
use super::error::{io_at, UnpackError};
use super::readahead::decompressed_ahead;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
const MAX_SYMLINK_HOPS: u32 = 40;

/// What one layer did to the root.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    pub whiteouts: u64,
    pub bytes: u64,
    /// The sha256 of the uncompressed layer (what the image config's `diff_ids` list).
    pub diff_id: Option<Digest>,
}

/// Applies the layer file at `layer` (any supported compression) onto `root`, decompressing
/// it on another thread while its files are written; `budget` is what is left of the
/// image's limits.
pub fn apply_layer_file(
    root: &Path,
    layer: &Path,
    budget: &Budget,
) -> Result<LayerStats, UnpackError> {
    let file = File::open(layer).map_err(io_at(layer))?;
    let tar = decompressed_ahead(file).map_err(UnpackError::Read)?;
    apply_tar(root, tar, budget)
}

/// Applies one layer stream onto `root`, which holds the layers below it, within the
/// default limits.
pub fn apply_layer(root: &Path, layer: impl Read) -> Result<LayerStats, UnpackError> {
    apply_tar(root, decompressed(layer)?, &Budget::new(Limits::default()))
}

/// Applies one uncompressed layer tar onto `root`.
fn apply_tar(root: &Path, tar: impl Read, budget: &Budget) -> Result<LayerStats, UnpackError> {
    let root_fd = at::open_root(root).map_err(|e| UnpackError::Io {
        path: root.to_path_buf(),
        source: e.into(),
    })?;
    let mut applier = Applier {
        root,
        root_fd,
        touched: HashSet::new(),
        dirs: Vec::new(),
        stats: LayerStats::default(),
        budget,
    };
    // The stream is counted (the byte limit) and hashed (the diff_id) on its way in.
    let mut metered = Metered::new(tar, budget);
    let applied = (|| {
        let mut archive = tar::Archive::new(&mut metered);
        for entry in archive.entries().map_err(UnpackError::Read)? {
            applier.entry(entry.map_err(UnpackError::Read)?)?;
        }
        applier.finish_dirs()
    })();
    if let Some(limit) = metered.over {
        return Err(UnpackError::Limit(limit));
    }
    applied?;
    let mut stats = applier.stats;
    stats.diff_id = Some(metered.finish().map_err(|e| match metered_limit(&e) {
        Some(l) => UnpackError::Limit(l),
        None => UnpackError::Read(e),
    })?);
    Ok(stats)
}

/// The limit behind a read error of `Metered`, if that is what it was.
fn metered_limit(e: &io::Error) -> Option<Limit> {
    e.get_ref()?.downcast_ref::<LimitError>().map(|l| l.0)
}

struct Applier<'r> {
    /// The root, for messages only: every operation goes through `root_fd`.
    root: &'r Path,
    root_fd: OwnedFd,
    /// Paths (relative, resolved) this layer wrote, with all their ancestors.
    touched: HashSet<PathBuf>,
    /// Directories this layer made or kept: (resolved relative path, mode, mtime).
    dirs: Vec<(PathBuf, u32, u64)>,
    stats: LayerStats,
    budget: &'r Budget,
}

/// A folder inside the root, open, with its resolved path relative to the root.
struct Parent {
    fd: OwnedFd,
    rel: PathBuf,
}

/// Splits an entry name into clean components; `..` and absolute names are refused.
fn clean_parts(name: &[u8]) -> Result<Vec<&OsStr>, &'static str> {
    if name.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut parts = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("\"..\" component"),
            p => parts.push(OsStr::from_bytes(p)),
        }
    }
    Ok(parts)
}

impl Applier<'_> {
    /// An I/O error on `rel` (relative to the root), named by its full path.
    fn io(&self, rel: &Path) -> impl FnOnce(Errno) -> UnpackError {
        let path = self.root.join(rel);
        move |e| UnpackError::Io {
            path,
            source: e.into(),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let parts = clean_parts(&raw).map_err(|why| UnpackError::Escape {
            entry: name.clone(),
            why,
        })?;
        let Some((file_name, parents)) = parts.split_last() else {
            return Ok(()); // the root itself ("./"): keep the root as it is
        };
        let file_name: &OsStr = file_name;
        self.stats.entries += 1;
        self.budget.entry().map_err(UnpackError::Limit)?;
        let file_bytes = file_name.as_bytes();
        if file_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            self.stats.whiteouts += 1;
            return self.whiteout(&name, parents, file_name);
        }
        let parent = self
            .resolve(&name, parents, true)?
            .ok_or_else(|| bad(&name, "its folder cannot be made"))?;
        let dir = parent.fd.as_fd();
        let rel = parent.rel.join(file_name);
        let err = self.io(&rel);
        self.touch(&rel);
        let header = entry.header().clone();
        // Blank numeric fields read as 0, as Go's archive/tar (which writes most layers) does.
        let default_mode = if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        };
        let mode = header.mode().unwrap_or(default_mode) & 0o7777;
        let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
        let mtime = header.mtime().unwrap_or(0);
        let xattrs = xattrs(&mut entry)?;
        // The made entry, open when that is safe (never a device node, FIFO or symlink).
        let opened: Option<OwnedFd> = match kind {
            EntryType::Directory => {
                match at::kind(dir, file_name).map_err(self.io(&rel))? {
                    Some(FileType::Directory) => {}
                    Some(_) => {
                        at::remove_any(dir, file_name).map_err(self.io(&rel))?;
                        mkdir(dir, file_name).map_err(self.io(&rel))?;
                    }
                    None => mkdir(dir, file_name).map_err(self.io(&rel))?,
                }
                let fd = at::open_dir(dir, file_name).map_err(self.io(&rel))?;
                at::chown_fd(&fd, uid, gid).map_err(self.io(&rel))?;
                // Mode and times once the layer is done (see `finish_dirs`).
                self.dirs.push((rel.clone(), mode, mtime));
                Some(fd)
            }
            EntryType::Regular | EntryType::Continuous => {
                at::remove_any(dir, file_name).map_err(self.io(&rel))?;
                let mut out = at::create_file(dir, file_name).map_err(self.io(&rel))?;
                self.stats.bytes += io::copy(&mut entry, &mut out).map_err(UnpackError::Read)?;
                // Owner, then mode (a chown clears set-id bits), then times.
                at::chown_fd(&out, uid, gid).map_err(self.io(&rel))?;
                at::chmod_fd(&out, mode).map_err(self.io(&rel))?;
                at::set_mtime_fd(&out, mtime);
                Some(out.into())
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(&name, "symlink without a target"))?
                    .into_owned();
                at::remove_any(dir, file_name).map_err(self.io(&rel))?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), dir, file_name)
                    .map_err(self.io(&rel))?;
                at::chown_at(dir, file_name, uid, gid).map_err(self.io(&rel))?;
                at::set_mtime_at(dir, file_name, mtime);
                None
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(&name, "hardlink without a target"))?;
                let tparts = clean_parts(&target).map_err(|why| UnpackError::Escape {
                    entry: name.clone(),
                    why,
                })?;
                let (tname, tparents) = tparts
                    .split_last()
                    .ok_or_else(|| bad(&name, "hardlink to the root"))?;
                let tparent = self
                    .resolve(&name, tparents, false)?
                    .ok_or_else(|| bad(&name, "hardlink target does not exist"))?;
                let trel = tparent.rel.join(tname);
                match at::kind(&tparent.fd, tname).map_err(self.io(&trel))? {
                    Some(FileType::Directory) => return Err(bad(&name, "hardlink to a directory")),
                    Some(_) => {}
                    None => return Err(bad(&name, "hardlink target does not exist")),
                }
                if trel != rel {
                    at::remove_any(dir, file_name).map_err(self.io(&rel))?;
                    // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
                    rustix::fs::linkat(&tparent.fd, *tname, dir, file_name, AtFlags::empty())
                        .map_err(self.io(&rel))?;
                }
                return Ok(()); // shares the target's inode, owner, mode and xattrs
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let ftype = match kind {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                at::remove_any(dir, file_name).map_err(self.io(&rel))?;
                let dev = rustix::fs::makedev(major, minor);
                match rustix::fs::mknodat(
                    dir,
                    file_name,
                    ftype,
                    Mode::from_raw_mode(mode & 0o777),
                    dev,
                ) {
                    Ok(()) => {}
                    Err(Errno::PERM) => {
                        warn!(entry = %name, "no permission to create device node; skipped");
                        return Ok(());
                    }
                    Err(e) => return Err(err(e)),
                }
                // Never opened: owner and times by name without following, and the mode by
                // name too, once we have seen that the name is still the node we made (the
                // unpack folder is private, so nobody else can swap it in between).
                at::chown_at(dir, file_name, uid, gid).map_err(self.io(&rel))?;
                match at::kind(dir, file_name).map_err(self.io(&rel))? {
                    Some(t) if t == ftype => {}
                    _ => return Err(bad(&name, "the node it made was replaced")),
                }
                rustix::fs::chmodat(dir, file_name, Mode::from_raw_mode(mode), AtFlags::empty())
                    .map_err(self.io(&rel))?;
                at::set_mtime_at(dir, file_name, mtime);
                None
            }
            other => {
                warn!(entry = %name, kind = ?other, "unsupported tar entry type; skipped");
                return Ok(());
            }
        };
        for (key, value) in xattrs {
            let set = match &opened {
                Some(fd) => at::set_xattr_fd(fd, &key, &value),
                None => at::set_xattr_at(dir, file_name, &key, &value),
            };
            if let Err(e) = set {
                warn!(entry = %name, xattr = ?key, error = %e, "could not set xattr");
            }
        }
        Ok(())
    }

    /// Directory modes and times last: adding entries to a directory changes its mtime, and
    /// a read-only mode would stop a non-root unpacker from filling it. Each is reopened by
    /// its resolved path without following symlinks; one a later entry replaced (by a
    /// symlink, say) is skipped.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        for (rel, mode, mtime) in self.dirs.iter().rev() {
            let fd = match at::open_dir_in(self.root_fd.as_fd(), rel) {
                Ok(fd) => fd,
                Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR | Errno::XDEV) => {
                    debug!(dir = %rel.display(), "replaced later in the layer; mode not set");
                    continue;
                }
                Err(e) => return Err(self.io(rel)(e)),
            };
            at::chmod_fd(&fd, *mode).map_err(self.io(rel))?;
            at::set_mtime_fd(&fd, *mtime);
        }
        Ok(())
    }

    fn whiteout(
        &mut self,
        name: &str,
        parents: &[&OsStr],
        file_name: &OsStr,
    ) -> Result<(), UnpackError> {
        let Some(parent) = self.resolve(name, parents, false)? else {
            return Ok(()); // nothing below to hide
        };
        let file_bytes = file_name.as_bytes();
        if file_bytes == OPAQUE_WHITEOUT.as_bytes() {
            debug!(dir = %parent.rel.display(), "opaque whiteout");
            return self.hide_lower(&parent.fd, &parent.rel);
        }
        let hidden = OsStr::from_bytes(&file_bytes[WHITEOUT_PREFIX.len()..]);
        if hidden.is_empty()
            || hidden == "."
            || hidden == ".."
            || hidden.as_bytes().starts_with(b".wh.")
        {
            return Err(bad(name, "malformed whiteout name"));
        }
        let rel = parent.rel.join(hidden);
        if self.touched.contains(&rel) {
            // This layer also wrote it: a whiteout hides only lower layers.
            if at::kind(&parent.fd, hidden).map_err(self.io(&rel))? == Some(FileType::Directory) {
                let fd = at::open_dir(&parent.fd, hidden).map_err(self.io(&rel))?;
                self.hide_lower(&fd, &rel)?;
            }
            return Ok(());
        }
        at::remove_any(parent.fd.as_fd(), hidden).map_err(self.io(&rel))
    }

    /// Removes everything in `dir` (at `rel_dir`) that this layer did not write.
    fn hide_lower(&self, dir: &OwnedFd, rel_dir: &Path) -> Result<(), UnpackError> {
        for child in at::names(dir.as_fd()).map_err(self.io(rel_dir))? {
            let child = OsStr::from_bytes(&child);
            let rel = rel_dir.join(child);
            if !self.touched.contains(&rel) {
                at::remove_any(dir.as_fd(), child).map_err(self.io(&rel))?;
            } else if at::kind(dir, child).map_err(self.io(&rel))? == Some(FileType::Directory) {
                let sub = at::open_dir(dir, child).map_err(self.io(&rel))?;
                self.hide_lower(&sub, &rel)?;
            }
        }
        Ok(())
    }

    fn touch(&mut self, rel: &Path) {
        for a in rel.ancestors() {
            if a.as_os_str().is_empty() || !self.touched.insert(a.to_path_buf()) {
                break;
            }
        }
    }

    /// Resolves directory components below the root, following symlinks as if the root
    /// were `/` and refusing any that lead out: each step opens one component of an open
    /// folder with `O_NOFOLLOW`; a symlink is read and its target walked the same way.
    /// Returns the open folder and its resolved relative path, or `None` when a component
    /// is missing and `create` is false.
    fn resolve(
        &mut self,
        name: &str,
        parts: &[&OsStr],
        create: bool,
    ) -> Result<Option<Parent>, UnpackError> {
        // The open folders from the root down, with their names.
        let mut stack: Vec<(OwnedFd, OsString)> = Vec::new();
        let mut queue: VecDeque<OsString> = parts.iter().map(|p| p.to_os_string()).collect();
        let mut hops = 0;
        // Folders made on the way, marked as this layer's once the walk is done.
        let mut made: Vec<PathBuf> = Vec::new();
        let rel_of = |stack: &[(OwnedFd, OsString)]| -> PathBuf {
            stack.iter().map(|(_, n)| n.as_os_str()).collect()
        };
        while let Some(c) = queue.pop_front() {
            if c.is_empty() || c == "." {
                continue;
            }
            if c == ".." {
                if stack.pop().is_none() {
                    return Err(UnpackError::Escape {
                        entry: name.to_string(),
                        why: "a symlink on its path leads out",
                    });
                }
                continue;
            }
            let cur = match stack.last() {
                Some((fd, _)) => fd.as_fd(),
                None => self.root_fd.as_fd(),
            };
            let here = || rel_of(&stack).join(&c);
            match at::kind(cur, c.as_os_str()).map_err(|e| self.io(&here())(e))? {
                Some(FileType::Symlink) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(bad(name, "too many levels of symlinks"));
                    }
                    let target = rustix::fs::readlinkat(cur, c.as_os_str(), Vec::new())
                        .map_err(|e| self.io(&here())(e))?;
                    let tb = target.as_bytes();
                    if tb.first() == Some(&b'/') {
                        stack.clear();
                    }
                    for part in tb.split(|&b| b == b'/').rev() {
                        queue.push_front(OsStr::from_bytes(part).to_os_string());
                    }
                }
                Some(FileType::Directory) => {
                    let fd = at::open_dir(cur, c.as_os_str()).map_err(|e| self.io(&here())(e))?;
                    stack.push((fd, c));
                }
                Some(_) => return Err(bad(name, "a component of its path is not a directory")),
                None => {
                    if !create {
                        return Ok(None);
                    }
                    let rel = here();
                    mkdir(cur, c.as_os_str()).map_err(self.io(&rel))?;
                    let fd = at::open_dir(cur, c.as_os_str()).map_err(self.io(&rel))?;
                    made.push(rel);
                    stack.push((fd, c));
                }
            }
        }
        for m in made {
            self.touch(&m);
        }
        let rel = rel_of(&stack);
        let fd = match stack.pop() {
            Some((fd, _)) => fd,
            None => at::open_dir_in(self.root_fd.as_fd(), Path::new("")).map_err(self.io(&rel))?,
        };
        Ok(Some(Parent { fd, rel }))
    }
}

fn mkdir(dir: impl AsFd, name: &OsStr) -> Result<(), Errno> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755))
}

fn bad(entry: &str, why: &str) -> UnpackError {
    UnpackError::BadEntry {
        entry: entry.to_string(),
        why: why.to_string(),
    }
}

fn xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<(OsString, Vec<u8>)>, UnpackError> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions().map_err(UnpackError::Read)? {
        for ext in exts {
            let ext = ext.map_err(UnpackError::Read)?;
            if let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                out.push((
                    OsStr::from_bytes(key).to_os_string(),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
