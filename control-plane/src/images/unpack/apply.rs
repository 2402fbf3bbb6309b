//! Applies image layers (tar, optionally gzip- or zstd-compressed) onto a root folder.
//!
//! Written here rather than with `tar::Entry::unpack_in`, because a layer needs what that
//! does not do: device nodes and FIFOs, OCI whiteouts, and paths resolved inside the root
//! (a symlink from an earlier entry or layer is followed as if the root were `/`, and any
//! resolution that would leave the root is rejected).

use std::collections::HashSet;
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};
use tar::EntryType;
use tracing::{debug, warn};

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
}

/// Applies the layer file at `layer` (any supported compression) onto `root`, decompressing
/// it on another thread while its files are written.
pub fn apply_layer_file(root: &Path, layer: &Path) -> Result<LayerStats, UnpackError> {
    let file = File::open(layer).map_err(io_at(layer))?;
    let tar = decompressed_ahead(file).map_err(UnpackError::Read)?;
    apply_tar(root, tar)
}

/// Applies one layer stream onto `root`, which holds the layers below it.
pub fn apply_layer(root: &Path, layer: impl Read) -> Result<LayerStats, UnpackError> {
    apply_tar(root, decompressed(layer)?)
}

/// Applies one uncompressed layer tar onto `root`.
fn apply_tar(root: &Path, tar: impl Read) -> Result<LayerStats, UnpackError> {
    let mut applier = Applier {
        root,
        touched: HashSet::new(),
        dirs: Vec::new(),
        stats: LayerStats::default(),
    };
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(UnpackError::Read)? {
        applier.entry(entry.map_err(UnpackError::Read)?)?;
    }
    // Directory modes and times last: adding entries to a directory changes its mtime, and
    // a read-only mode would stop a non-root unpacker from filling it.
    for (path, mode, mtime) in applier.dirs.iter().rev() {
        fs::set_permissions(path, fs::Permissions::from_mode(*mode)).map_err(io_at(path))?;
        set_mtime(path, *mtime);
    }
    Ok(applier.stats)
}

struct Applier<'r> {
    root: &'r Path,
    /// Paths (relative, resolved) this layer wrote, with all their ancestors.
    touched: HashSet<PathBuf>,
    dirs: Vec<(PathBuf, u32, u64)>,
    stats: LayerStats,
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
        self.stats.entries += 1;
        let file_bytes = file_name.as_bytes();
        if file_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            self.stats.whiteouts += 1;
            return self.whiteout(&name, parents, file_name);
        }
        let parent = self
            .resolve(&name, parents, true)?
            .ok_or_else(|| bad(&name, "its folder cannot be made"))?;
        let rel = parent.join(file_name);
        let path = self.root.join(&rel);
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
        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&path)?;
                        mkdir(&path)?;
                    }
                    Err(_) => mkdir(&path)?,
                }
                chown(&path, uid, gid)?;
                self.dirs.push((path.clone(), mode, mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                remove_any(&path)?;
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_at(&path))?;
                self.stats.bytes += io::copy(&mut entry, &mut out).map_err(UnpackError::Read)?;
                drop(out);
                finish(&path, uid, gid, Some(mode), mtime)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(&name, "symlink without a target"))?
                    .into_owned();
                remove_any(&path)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(io_at(&path))?;
                finish(&path, uid, gid, None, mtime)?;
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
                let tpath = self.root.join(tparent.join(tname));
                match fs::symlink_metadata(&tpath) {
                    Ok(m) if !m.is_dir() => {}
                    Ok(_) => return Err(bad(&name, "hardlink to a directory")),
                    Err(_) => return Err(bad(&name, "hardlink target does not exist")),
                }
                if tpath != path {
                    remove_any(&path)?;
                    fs::hard_link(&tpath, &path).map_err(io_at(&path))?;
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
                remove_any(&path)?;
                let dev = rustix::fs::makedev(major, minor);
                match rustix::fs::mknodat(CWD, &path, ftype, Mode::from_raw_mode(mode & 0o777), dev)
                {
                    Ok(()) => finish(&path, uid, gid, Some(mode), mtime)?,
                    Err(rustix::io::Errno::PERM) => {
                        warn!(entry = %name, "no permission to create device node; skipped");
                        return Ok(());
                    }
                    Err(e) => {
                        return Err(UnpackError::Io {
                            path,
                            source: e.into(),
                        })
                    }
                }
            }
            other => {
                warn!(entry = %name, kind = ?other, "unsupported tar entry type; skipped");
                return Ok(());
            }
        }
        for (key, value) in xattrs {
            if let Err(e) = rustix::fs::lsetxattr(
                &path,
                key.as_os_str(),
                &value,
                rustix::fs::XattrFlags::empty(),
            ) {
                warn!(entry = %name, xattr = ?key, error = %e, "could not set xattr");
            }
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
            debug!(dir = %parent.display(), "opaque whiteout");
            return self.hide_lower(&parent);
        }
        let hidden = OsStr::from_bytes(&file_bytes[WHITEOUT_PREFIX.len()..]);
        if hidden.is_empty()
            || hidden == "."
            || hidden == ".."
            || hidden.as_bytes().starts_with(b".wh.")
        {
            return Err(bad(name, "malformed whiteout name"));
        }
        let rel = parent.join(hidden);
        let path = self.root.join(&rel);
        if self.touched.contains(&rel) {
            // This layer also wrote it: a whiteout hides only lower layers.
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                self.hide_lower(&rel)?;
            }
            return Ok(());
        }
        remove_any(&path)
    }

    /// Removes everything under `rel_dir` that this layer did not write.
    fn hide_lower(&self, rel_dir: &Path) -> Result<(), UnpackError> {
        let dir = self.root.join(rel_dir);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(UnpackError::Io {
                    path: dir,
                    source: e,
                })
            }
        };
        for child in entries {
            let child = child.map_err(io_at(&dir))?;
            let rel = rel_dir.join(child.file_name());
            if !self.touched.contains(&rel) {
                remove_any(&child.path())?;
            } else if child.file_type().map_err(io_at(&dir))?.is_dir() {
                self.hide_lower(&rel)?;
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
    /// were `/` and refusing any that lead out. Returns the resolved relative path, or `None`
    /// when a component is missing and `create` is false.
    fn resolve(
        &mut self,
        name: &str,
        parts: &[&OsStr],
        create: bool,
    ) -> Result<Option<PathBuf>, UnpackError> {
        let mut resolved: Vec<OsString> = Vec::new();
        let mut queue: VecDeque<OsString> = parts.iter().map(|p| p.to_os_string()).collect();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            if c.is_empty() || c == "." {
                continue;
            }
            if c == ".." {
                if resolved.pop().is_none() {
                    return Err(UnpackError::Escape {
                        entry: name.to_string(),
                        why: "a symlink on its path leads out",
                    });
                }
                continue;
            }
            resolved.push(c);
            let rel: PathBuf = resolved.iter().collect();
            let path = self.root.join(&rel);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(bad(name, "too many levels of symlinks"));
                    }
                    let target = fs::read_link(&path).map_err(io_at(&path))?;
                    resolved.pop();
                    let tb = target.as_os_str().as_bytes();
                    if tb.first() == Some(&b'/') {
                        resolved.clear();
                    }
                    for part in tb.split(|&b| b == b'/').rev() {
                        queue.push_front(OsStr::from_bytes(part).to_os_string());
                    }
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(bad(name, "a component of its path is not a directory")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    mkdir(&path)?;
                    self.touch(&rel);
                }
                Err(e) => return Err(UnpackError::Io { path, source: e }),
            }
        }
        Ok(Some(resolved.iter().collect()))
    }
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

fn mkdir(path: &Path) -> Result<(), UnpackError> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(io_at(path))
}

/// Removes a file, symlink or whole directory tree (never following symlinks).
fn remove_any(path: &Path) -> Result<(), UnpackError> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(io_at(path))
}

fn chown(path: &Path, uid: u64, gid: u64) -> Result<(), UnpackError> {
    let (uid, gid) = (u32::try_from(uid).ok(), u32::try_from(gid).ok());
    match std::os::unix::fs::lchown(path, uid, gid) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            debug!(path = %path.display(), "not allowed to change owner; kept ours");
            Ok(())
        }
        r => r.map_err(io_at(path)),
    }
}

/// Owner, then mode (a chown clears set-id bits), then mtime.
fn finish(
    path: &Path,
    uid: u64,
    gid: u64,
    mode: Option<u32>,
    mtime: u64,
) -> Result<(), UnpackError> {
    chown(path, uid, gid)?;
    if let Some(mode) = mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_at(path))?;
    }
    set_mtime(path, mtime);
    Ok(())
}

fn set_mtime(path: &Path, mtime: u64) {
    let t = Timespec {
        tv_sec: mtime.min(i64::MAX as u64) as i64,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    if let Err(e) = rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW) {
        debug!(path = %path.display(), error = %e, "could not set mtime");
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
