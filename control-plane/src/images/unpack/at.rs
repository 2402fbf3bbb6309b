//! File operations relative to directory file descriptors that never follow a symlink and
//! never leave the unpack root: every name handed to these functions is one component, in a
//! directory that was itself opened with `O_NOFOLLOW` from the root down. Modes, owners,
//! times and xattrs are set through a descriptor of the file itself (`fchmod`, `fchown`,
//! `futimens`, `fsetxattr`) or with `AT_SYMLINK_NOFOLLOW`; device nodes are never opened.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{
    self as rfs, AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid,
    XattrFlags,
};
use rustix::io::Errno;
use tracing::debug;

/// Set once `openat2` turned out to be missing (Linux before 5.6, or a seccomp filter).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens the unpack root itself (ours, so its path is trusted).
pub fn open_root(path: &Path) -> Result<OwnedFd, Errno> {
    rfs::open(path, DIR_FLAGS, Mode::empty())
}

/// Opens the directory `name` in `dir`; a symlink there fails (`ELOOP` / `ENOTDIR`).
pub fn open_dir(dir: impl AsFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    rfs::openat(dir, name, DIR_FLAGS, Mode::empty())
}

/// Opens the directory at `rel` below `root`, where `rel` holds no symlink (as `resolve`
/// returns it): `openat2` with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS |
/// RESOLVE_NO_SYMLINKS` where the kernel has it, else a walk component by component with
/// `O_NOFOLLOW`. A component that became a symlink since fails with `ELOOP` or `ENOTDIR`.
pub fn open_dir_in(root: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, Errno> {
    if rel.as_os_str().is_empty() {
        return rfs::openat(root, ".", DIR_FLAGS, Mode::empty());
    }
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_SYMLINKS;
        match rfs::openat2(root, rel, DIR_FLAGS, Mode::empty(), how) {
            Err(Errno::NOSYS) | Err(Errno::PERM) => NO_OPENAT2.store(true, Ordering::Relaxed),
            // EAGAIN: a rename raced the lookup; the walk below settles it.
            Err(Errno::AGAIN) => {}
            other => return other,
        }
    }
    let mut fd = rfs::openat(root, ".", DIR_FLAGS, Mode::empty())?;
    for c in rel.components() {
        match c {
            Component::Normal(name) => fd = open_dir(&fd, name)?,
            Component::CurDir => {}
            _ => return Err(Errno::INVAL),
        }
    }
    Ok(fd)
}

/// The type of `name` in `dir` (a symlink is reported as one), or None when missing.
pub fn kind(dir: impl AsFd, name: &OsStr) -> Result<Option<FileType>, Errno> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates the new regular file `name` in `dir`, mode 0600, refusing anything already there.
pub fn create_file(dir: impl AsFd, name: &OsStr) -> Result<File, Errno> {
    let flags = OFlags::WRONLY
        | OFlags::CREATE
        | OFlags::EXCL
        | OFlags::NOFOLLOW
        | OFlags::NOCTTY
        | OFlags::CLOEXEC;
    Ok(File::from(rfs::openat(
        dir,
        name,
        flags,
        Mode::from_raw_mode(0o600),
    )?))
}

/// Removes `name` from `dir`: a file, symlink or node, or a whole directory tree; symlinks
/// are removed, never followed.
pub fn remove_any(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match kind(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            let sub = open_dir(dir, name)?;
            empty_dir(sub.as_fd())?;
            rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)
        }
        Some(_) => rfs::unlinkat(dir, name, AtFlags::empty()),
    }
}

/// The names in `dir`, without `.` and `..`.
pub fn names(dir: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>, Errno> {
    let mut out = Vec::new();
    let mut it = rfs::Dir::read_from(dir)?;
    while let Some(e) = it.read() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

fn empty_dir(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    for n in names(dir)? {
        remove_any(dir, OsStr::from_bytes(&n))?;
    }
    Ok(())
}

fn ids(uid: u64, gid: u64) -> (Option<Uid>, Option<Gid>) {
    // u32::MAX is -1, "leave as is", for chown: never pass it on.
    let ok = |v: u64| u32::try_from(v).ok().filter(|&v| v != u32::MAX);
    (
        ok(uid).map(Uid::from_raw_unchecked),
        ok(gid).map(Gid::from_raw_unchecked),
    )
}

/// Owner of an open file; not being allowed to (an unprivileged unpacker) keeps ours.
pub fn chown_fd(fd: impl AsFd, uid: u64, gid: u64) -> Result<(), Errno> {
    let (u, g) = ids(uid, gid);
    match rfs::fchown(fd, u, g) {
        Err(Errno::PERM) => {
            debug!("not allowed to change owner; kept ours");
            Ok(())
        }
        r => r,
    }
}

/// Owner of `name` in `dir` itself (a symlink is not followed).
pub fn chown_at(dir: impl AsFd, name: &OsStr, uid: u64, gid: u64) -> Result<(), Errno> {
    let (u, g) = ids(uid, gid);
    match rfs::chownat(dir, name, u, g, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::PERM) => {
            debug!("not allowed to change owner; kept ours");
            Ok(())
        }
        r => r,
    }
}

pub fn chmod_fd(fd: impl AsFd, mode: u32) -> Result<(), Errno> {
    rfs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777))
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.min(i64::MAX as u64) as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Access and modification times of an open file (failures only logged, as before).
pub fn set_mtime_fd(fd: impl AsFd, mtime: u64) {
    if let Err(e) = rfs::futimens(fd, &times(mtime)) {
        debug!(error = %e, "could not set mtime");
    }
}

/// Times of `name` in `dir` itself (a symlink is not followed).
pub fn set_mtime_at(dir: impl AsFd, name: &OsStr, mtime: u64) {
    if let Err(e) = rfs::utimensat(dir, name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW) {
        debug!(error = %e, "could not set mtime");
    }
}

/// An xattr of an open file.
pub fn set_xattr_fd(fd: impl AsFd, key: &OsStr, value: &[u8]) -> Result<(), Errno> {
    rfs::fsetxattr(fd, key, value, XattrFlags::empty())
}

/// An xattr of `name` in `dir` itself, for what cannot be opened safely (symlinks, device
/// nodes, FIFOs): `lsetxattr` on `/proc/self/fd/<dir>/<name>`, whose last component is not
/// followed and whose directory is the one we hold open.
pub fn set_xattr_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    key: &OsStr,
    value: &[u8],
) -> Result<(), Errno> {
    let mut path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    path.push(name);
    rfs::lsetxattr(&path, key, value, XattrFlags::empty())
}
