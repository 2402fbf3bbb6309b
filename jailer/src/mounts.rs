//! The jail's file system: a private tmpfs on the spec's root directory holding only the
//! spec's bind mounts and device nodes, made the process's root with `pivot_root` (the old
//! root detached), then remounted read-only. Runs inside the jail's own mount namespace,
//! so none of it is visible on the host.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::JailError;
use crate::spec::{Bind, JailSpec};
use crate::sys::{self, cstr};

/// The jail's tmpfs: room for directories and empty mount points only.
const TMPFS_OPTIONS: &std::ffi::CStr = c"size=64k,nr_inodes=128,mode=0755";

/// A device node to make in the jail: its path and device number.
pub struct Device {
    pub path: PathBuf,
    pub rdev: libc::dev_t,
}

impl Device {
    /// The host's node at `path`, which must be a character device.
    pub fn of(path: &Path) -> Result<Device, JailError> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let m = std::fs::metadata(path).map_err(JailError::path("device", path))?;
        if !m.file_type().is_char_device() {
            return Err(JailError::Spec(format!(
                "{} is not a character device",
                path.display()
            )));
        }
        Ok(Device {
            path: path.to_owned(),
            rdev: m.rdev(),
        })
    }
}

/// Builds the jail's root and moves the process into it. Afterwards `/` is the jail.
pub fn enter_root(spec: &JailSpec, devices: &[Device]) -> Result<(), JailError> {
    let root = cstr(&spec.root)?;
    sys::mount(
        None,
        c"/",
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
        "making the mounts private",
    )?;
    sys::mount(
        Some(c"tmpfs"),
        &root,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(TMPFS_OPTIONS),
        "mounting the jail's root tmpfs",
    )?;
    for b in &spec.read_only {
        bind(&spec.root, b, true)?;
    }
    for b in &spec.writable {
        bind(&spec.root, b, false)?;
    }
    for d in devices {
        let at = inside(&spec.root, &d.path);
        make_parent(&at)?;
        let c = cstr(&at)?;
        sys::mknod_char(&c, d.rdev)?;
        sys::chown(&c, spec.uid, spec.gid)?;
    }
    sys::chdir(&root)?;
    sys::pivot_root_here()?;
    sys::umount_detach(c".")?;
    sys::chdir(c"/")?;
    sys::mount(
        None,
        c"/",
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        None,
        "making the jail's root read-only",
    )
}

/// `jail` (absolute, checked by the spec) under the host path of the new root.
fn inside(root: &Path, jail: &Path) -> PathBuf {
    root.join(jail.strip_prefix("/").unwrap_or(jail))
}

fn make_parent(at: &Path) -> Result<(), JailError> {
    if let Some(parent) = at.parent() {
        std::fs::create_dir_all(parent).map_err(JailError::path("creating", parent))?;
    }
    Ok(())
}

/// Shows `b.host` at `b.jail`: a bind mount, then a remount with nosuid, nodev, noexec
/// (and read-only when asked).
fn bind(root: &Path, b: &Bind, read_only: bool) -> Result<(), JailError> {
    let at = inside(root, &b.jail);
    let meta = std::fs::metadata(&b.host).map_err(JailError::path("bind source", &b.host))?;
    make_parent(&at)?;
    if meta.is_dir() {
        std::fs::create_dir(&at).map_err(JailError::path("creating", &at))?;
    } else {
        std::fs::File::create(&at).map_err(JailError::path("creating", &at))?;
    }
    let (src, dst) = (cstr(&b.host)?, cstr(&at)?);
    sys::mount(Some(&src), &dst, None, libc::MS_BIND, None, "bind mount")?;
    let mut flags =
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    sys::mount(None, &dst, None, flags, None, "remounting a bind mount")
}

/// C strings for argv or envp.
pub fn c_strings<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<CString>, JailError> {
    items
        .into_iter()
        .map(|b| {
            CString::new(b).map_err(|_| {
                JailError::Spec(format!(
                    "{:?} holds a NUL byte",
                    std::ffi::OsStr::from_bytes(b)
                ))
            })
        })
        .collect()
}
