//! The container's root filesystem: containerd hands the shim its snapshot as mounts (an
//! overlay of immutable lower snapshots over an empty writable one, or a bind mount of a
//! directory). The VM gets a read-only EROFS image of that tree and keeps the container's
//! writes in the guest, as for every Skiff task. Images of lower snapshots alone are cached
//! by their list (containerd never changes a committed snapshot), so every container of
//! one image after the first starts without building anything. The host only reads the
//! snapshots (through a read-only, nodev, nosuid overlay) and `mkfs.erofs` copies what it
//! finds without following links; the image is read by the guest alone.

use std::path::{Path, PathBuf};

use control_plane::images::rootfs::{RootfsBuilder, RootfsError};
use sha2::{Digest, Sha256};

use containerd_shim::protos::types::mount::Mount;

/// Overlay options longer than this do not fit in mount(2)'s one page of data.
const MAX_MOUNT_DATA: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error(
        "the bundle has no root filesystem: containerd gave no mounts and {0} is missing or empty"
    )]
    NoRootfs(PathBuf),
    #[error("root filesystem mount of type {0:?} is not supported (overlay and bind are)")]
    UnsupportedMount(String),
    #[error("root filesystem: more than one mount ({0}) is not supported")]
    TooManyMounts(usize),
    #[error("root filesystem overlay mount: {0}")]
    BadOverlay(String),
    #[error("mounting the lower snapshots at {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] RootfsError),
}

/// Where the tree comes from: read-only layers, top first, and whether the image may be
/// cached under their names.
#[derive(Debug, PartialEq, Eq)]
struct Layers {
    dirs: Vec<PathBuf>,
    cacheable: bool,
}

/// The image of the container's root, built (or found) with `builder`; `work` is the
/// container's own scratch directory (mount points, uncached images).
pub fn image(
    mounts: &[Mount],
    root_dir: &Path,
    builder: &RootfsBuilder,
    work: &Path,
) -> Result<PathBuf, RootError> {
    let layers = layers(mounts, root_dir)?;
    let merged = work.join("merged");
    let view = |dirs: &[PathBuf]| {
        TreeView::new(dirs, &merged).map_err(|e| RootfsError::Io {
            path: merged.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    };
    if !layers.cacheable {
        // A tree that may change: this container's own image, in its scratch directory.
        let path = work.join("rootfs.img");
        let tree = view(&layers.dirs)?;
        builder.image_at(tree.as_ref(), &path)?;
        return Ok(path);
    }
    // A path alone could name another snapshot after containerd's root is wiped (its
    // snapshot ids start again at 1): the directory's identity and change time go in too.
    let mut h = Sha256::new();
    for d in &layers.dirs {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(d).map_err(|source| RootfsError::Io {
            path: d.clone(),
            source,
        })?;
        h.update(d.as_os_str().as_encoded_bytes());
        h.update([0]);
        for v in [m.dev(), m.ino(), m.ctime() as u64, m.ctime_nsec() as u64] {
            h.update(v.to_le_bytes());
        }
    }
    let name = format!("containerd-{}", hex::encode(&h.finalize()[..16]));
    let fs = builder.from_tree(&name, || view(&layers.dirs))?;
    Ok(fs.path)
}

/// Reads containerd's mounts: one overlay (`lowerdir=top:…:bottom`, and an upper that
/// holds the container's earlier writes, if any) or one bind mount.
fn layers(mounts: &[Mount], root_dir: &Path) -> Result<Layers, RootError> {
    match mounts {
        [] => {
            let empty = std::fs::read_dir(root_dir)
                .map(|mut d| d.next().is_none())
                .unwrap_or(true);
            if empty {
                return Err(RootError::NoRootfs(root_dir.to_owned()));
            }
            Ok(Layers {
                dirs: vec![root_dir.to_owned()],
                cacheable: false,
            })
        }
        [m] if m.type_ == "bind" || m.type_ == "rbind" => {
            let ro = m.options.iter().any(|o| o == "ro");
            Ok(Layers {
                dirs: vec![PathBuf::from(&m.source)],
                cacheable: ro,
            })
        }
        [m] if m.type_ == "overlay" => {
            let mut lower = Vec::new();
            let mut upper = None;
            for o in &m.options {
                if let Some(l) = o.strip_prefix("lowerdir=") {
                    lower = l.split(':').map(PathBuf::from).collect();
                } else if let Some(u) = o.strip_prefix("upperdir=") {
                    upper = Some(PathBuf::from(u));
                }
            }
            if lower.is_empty() || lower.iter().any(|d| !d.is_absolute()) {
                return Err(RootError::BadOverlay("no absolute lowerdir= option".into()));
            }
            // The upper holds what the container wrote before (a restart): kept, but
            // then the tree is this container's own.
            let written = upper.as_ref().is_some_and(|u| {
                std::fs::read_dir(u)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false)
            });
            let mut dirs = Vec::new();
            if written {
                dirs.extend(upper);
            }
            dirs.extend(lower);
            Ok(Layers {
                dirs,
                cacheable: !written,
            })
        }
        [m] => Err(RootError::UnsupportedMount(m.type_.clone())),
        many => Err(RootError::TooManyMounts(many.len())),
    }
}

/// The merged tree of `dirs` (top first): the directory itself when there is one, else a
/// read-only overlay mounted for as long as this lives.
struct TreeView {
    path: PathBuf,
    mounted: bool,
}

impl TreeView {
    fn new(dirs: &[PathBuf], at: &Path) -> Result<Self, RootError> {
        if let [one] = dirs {
            return Ok(Self {
                path: one.clone(),
                mounted: false,
            });
        }
        let mount_err = |source| RootError::Mount {
            path: at.to_owned(),
            source,
        };
        std::fs::create_dir_all(at).map_err(mount_err)?;
        let lower: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        if lower.iter().any(|d| d.contains([',', ':'])) {
            return Err(RootError::BadOverlay(
                "a lower directory's path holds ',' or ':'".into(),
            ));
        }
        let data = format!("lowerdir={}", lower.join(":"));
        if data.len() > MAX_MOUNT_DATA {
            return Err(RootError::BadOverlay(format!(
                "{} lower directories do not fit in one mount",
                dirs.len()
            )));
        }
        mount_overlay(at, &data).map_err(mount_err)?;
        Ok(Self {
            path: at.to_owned(),
            mounted: true,
        })
    }
}

impl AsRef<Path> for TreeView {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TreeView {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = unmount(&self.path) {
                tracing::warn!("unmounting {}: {e}", self.path.display());
            }
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

fn cstring(p: &Path) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("path holds a NUL byte"))
}

/// A read-only overlay with only lower layers (no upper, no work dir: nothing is written).
fn mount_overlay(at: &Path, data: &str) -> std::io::Result<()> {
    let target = cstring(at)?;
    let data = std::ffi::CString::new(data).map_err(|_| std::io::Error::other("NUL in options"))?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call; mount(2)
    // only reads them.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn unmount(at: &Path) -> std::io::Result<()> {
    let target = cstring(at)?;
    // SAFETY: `target` is a NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(t: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            type_: t.into(),
            source: source.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn an_overlay_with_an_empty_upper_is_cached_by_its_lower_snapshots() {
        let up = tempfile::tempdir().unwrap();
        let l = layers(
            &[mount(
                "overlay",
                "overlay",
                &[
                    "index=off",
                    "workdir=/s/3/work",
                    &format!("upperdir={}", up.path().display()),
                    "lowerdir=/s/2/fs:/s/1/fs",
                ],
            )],
            Path::new("/b/rootfs"),
        )
        .unwrap();
        assert_eq!(
            l,
            Layers {
                dirs: vec!["/s/2/fs".into(), "/s/1/fs".into()],
                cacheable: true
            }
        );
        // Once the container wrote there, its upper is the top layer and nothing is shared.
        std::fs::write(up.path().join("f"), "x").unwrap();
        let opts = [
            format!("upperdir={}", up.path().display()),
            "lowerdir=/s/1/fs".to_string(),
        ];
        let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
        let l = layers(&[mount("overlay", "overlay", &opts)], Path::new("/b")).unwrap();
        assert_eq!(l.dirs, [up.path().to_path_buf(), "/s/1/fs".into()]);
        assert!(!l.cacheable);
    }

    #[test]
    fn mounts_we_cannot_read_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let err = |m: &[Mount]| layers(m, root.path()).unwrap_err().to_string();
        assert!(err(&[]).contains("has no root filesystem"));
        assert!(err(&[mount("erofs", "/dev/x", &[])]).contains("\"erofs\" is not supported"));
        assert!(err(&[mount("overlay", "o", &["lowerdir=rel"])]).contains("lowerdir"));
        assert!(err(&[mount("bind", "/a", &[]), mount("bind", "/b", &[])])
            .contains("more than one mount"));
        // A bundle with a filled rootfs directory and no mounts: that directory.
        std::fs::write(root.path().join("bin"), "").unwrap();
        assert_eq!(layers(&[], root.path()).unwrap().dirs, [root.path()]);
    }
}
