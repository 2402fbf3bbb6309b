//! Read-only root filesystem images, one per image (keyed by its config digest, Docker's
//! image id), made with `mkfs.erofs` (or `mkfs.ext4 -d` where erofs-utils is missing),
//! cached under `<state>/rootfs/` and reused by every task of that image.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tracing::{debug, info};

pub mod workdir;

use crate::images::digest::Digest;
use crate::images::limits::Limits;
use crate::images::unpack::{apply_layer_file, Budget, UnpackError};
use workdir::UnpackDir;

/// A failure to build a root filesystem image.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("unpacking layer {layer}: {source}")]
    Unpack {
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("layer {layer} does not match the image config: its diff_id is {expected}, its content {actual}")]
    DiffId {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {0} is not in the store (pull the image again)")]
    MissingLayer(Digest),
    #[error("{tool} not found: install {package}")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: &'static str,
        status: String,
        stderr: String,
    },
    #[error("rootfs I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Images built before VMMs were jailed were private to root (0600); a jailed VMM runs as
/// its own uid and reads the image through a bind mount, so the image must be 0444 (the
/// store's directories keep other users out).
fn readable_by_vmms(path: &Path) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)
        .map_err(io_at(path))?
        .permissions()
        .mode();
    if mode & 0o444 != 0o444 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o444)).map_err(io_at(path))?;
    }
    Ok(())
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file system of a root filesystem image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsFormat {
    Erofs,
    Ext4,
}

impl RootfsFormat {
    fn ext(self) -> &'static str {
        match self {
            RootfsFormat::Erofs => "erofs",
            RootfsFormat::Ext4 => "ext4",
        }
    }
}

/// A built (or found) root filesystem image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    pub path: PathBuf,
    pub format: RootfsFormat,
    /// False when this call built it, true when it was already cached.
    pub cached: bool,
}

/// One layer to unpack: its digest, its blob file and, when the config lists it, the
/// sha256 its uncompressed content must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    pub digest: Digest,
    pub path: PathBuf,
    pub diff_id: Option<Digest>,
}

/// Builds root filesystem images from stored layers.
#[derive(Debug, Clone)]
pub struct RootfsBuilder {
    dir: PathBuf,
    /// `<state>/tmp`: unpack work folders on disk.
    tmp: PathBuf,
    unpack: UnpackDir,
    format: Option<RootfsFormat>,
    limits: Limits,
}

fn tool_present(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|d| d.join(tool).is_file())
        })
        .unwrap_or(false)
}

impl RootfsBuilder {
    /// A builder under `<state_dir>/rootfs`; `format` None picks EROFS when available.
    pub fn new(state_dir: &Path, format: Option<RootfsFormat>) -> Result<Self, RootfsError> {
        let dir = state_dir.join("rootfs");
        let tmp = state_dir.join("tmp");
        for d in [&dir, &tmp] {
            fs::create_dir_all(d).map_err(io_at(d))?;
        }
        Ok(RootfsBuilder {
            dir,
            tmp,
            unpack: UnpackDir::default(),
            format,
            limits: Limits::default(),
        })
    }

    fn format(&self) -> RootfsFormat {
        self.format.unwrap_or(if tool_present("mkfs.erofs") {
            RootfsFormat::Erofs
        } else {
            RootfsFormat::Ext4
        })
    }

    /// Unpacks within `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Tries the tmpfs mounted at `dir` instead of `/dev/shm` for unpacking.
    pub fn with_tmpfs(mut self, dir: &Path) -> Self {
        self.unpack = UnpackDir::Auto { tmpfs: dir.into() };
        self
    }

    /// Always unpacks layers under `dir` (by default: a tmpfs when the tree fits, else
    /// `<state>/tmp`; see `workdir`).
    pub fn with_unpack_dir(mut self, dir: &Path) -> Result<Self, RootfsError> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        self.unpack = UnpackDir::Fixed(dir.to_path_buf());
        Ok(self)
    }

    /// Where the image of `image_id` lives in `format`.
    pub fn path(&self, image_id: &Digest, format: RootfsFormat) -> PathBuf {
        self.dir
            .join(format!("{}.{}", image_id.hex(), format.ext()))
    }

    /// Returns the cached image of `image_id`, building it from `layers` (bottom first) if
    /// needed. Concurrent builders of one image wait for each other and build once.
    pub fn build(&self, image_id: &Digest, layers: &[LayerFile]) -> Result<Rootfs, RootfsError> {
        let format = self.format();
        let path = self.path(image_id, format);
        if path.is_file() {
            readable_by_vmms(&path)?;
            return Ok(Rootfs {
                path,
                format,
                cached: true,
            });
        }
        let lock_path = self.dir.join(format!("{}.lock", image_id.hex()));
        let lock = File::create(&lock_path).map_err(io_at(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            RootfsError::Io {
                path: lock_path.clone(),
                source: e.into(),
            }
        })?;
        if path.is_file() {
            return Ok(Rootfs {
                path,
                format,
                cached: true,
            });
        }
        let started = Instant::now();
        let mut layer_bytes = 0;
        for layer in layers {
            let meta = fs::metadata(&layer.path)
                .map_err(|_| RootfsError::MissingLayer(layer.digest.clone()))?;
            layer_bytes += meta.len();
        }
        let mut work =
            workdir::make(&self.unpack, &self.tmp, layer_bytes).map_err(io_at(&self.tmp))?;
        let mut result = unpack_all(work.dir.path(), layers, self.limits);
        if work.in_memory
            && matches!(&result, Err(RootfsError::Unpack { source, .. }) if source.is_no_space())
        {
            info!(image = %image_id, "the tmpfs filled up; unpacking on disk instead");
            work = workdir::on_disk(&self.tmp).map_err(io_at(&self.tmp))?;
            result = unpack_all(work.dir.path(), layers, self.limits);
        }
        let tree = result?;
        let unpacked = started.elapsed();
        // Read-only for everyone who can reach it: jailed VMMs (their own uids) read it
        // through a bind mount; the store's directories keep other users out.
        self.make_image(&tree, format, &path)?;
        let made = started.elapsed();
        let in_memory = work.in_memory;
        drop(work);
        info!(image = %image_id, format = format.ext(), in_memory, ?unpacked, ?made, total = ?started.elapsed(), "root filesystem image built");
        Ok(Rootfs {
            path,
            format,
            cached: false,
        })
    }
}

impl RootfsBuilder {
    /// Returns the cached image called `name` (letters, digits, `-` and `_`), making it
    /// from the directory tree `tree()` gives when it is not there yet. For trees that
    /// come from elsewhere (containerd's snapshots): `tree` is called only on a miss, and
    /// concurrent callers for one name build it once.
    pub fn from_tree<T: AsRef<Path>>(
        &self,
        name: &str,
        tree: impl FnOnce() -> Result<T, RootfsError>,
    ) -> Result<Rootfs, RootfsError> {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "rootfs name {name:?}"
        );
        let format = self.format();
        let path = self.dir.join(format!("{name}.{}", format.ext()));
        let lock_path = self.dir.join(format!("{name}.lock"));
        let lock = File::create(&lock_path).map_err(io_at(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            RootfsError::Io {
                path: lock_path.clone(),
                source: e.into(),
            }
        })?;
        if path.is_file() {
            readable_by_vmms(&path)?;
            return Ok(Rootfs {
                path,
                format,
                cached: true,
            });
        }
        let started = Instant::now();
        let tree = tree()?;
        self.make_image(tree.as_ref(), format, &path)?;
        info!(name, format = format.ext(), took = ?started.elapsed(), "root filesystem image built from a tree");
        Ok(Rootfs {
            path,
            format,
            cached: false,
        })
    }

    /// Makes an image of `tree` at `path`, not cached (a tree that may change, such as a
    /// container's own directory).
    pub fn image_at(&self, tree: &Path, path: &Path) -> Result<RootfsFormat, RootfsError> {
        let format = self.format();
        self.make_image(tree, format, path)?;
        Ok(format)
    }

    /// Makes the image at `path` from `tree`: built beside it and renamed into place, so a
    /// crash never leaves a torn image under the final name.
    fn make_image(
        &self,
        tree: &Path,
        format: RootfsFormat,
        path: &Path,
    ) -> Result<(), RootfsError> {
        let dir = path.parent().unwrap_or(&self.dir);
        let out = tempfile::Builder::new()
            .prefix(".tmp-tree-")
            .tempfile_in(dir)
            .map_err(io_at(dir))?;
        match format {
            RootfsFormat::Erofs => mkfs_erofs(tree, out.path())?,
            RootfsFormat::Ext4 => mkfs_ext4(tree, out.path())?,
        }
        out.as_file()
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444))
            .and_then(|_| out.as_file().sync_all())
            .map_err(io_at(out.path()))?;
        out.persist(path).map_err(|e| RootfsError::Io {
            path: path.to_owned(),
            source: e.error,
        })?;
        Ok(())
    }
}

/// Applies `layers` (bottom first) into `<work>/root` within `limits`, checking each
/// against its diff_id; returns that tree.
fn unpack_all(work: &Path, layers: &[LayerFile], limits: Limits) -> Result<PathBuf, RootfsError> {
    let tree = work.join("root");
    fs::create_dir(&tree).map_err(io_at(&tree))?;
    let budget = Budget::new(limits);
    for layer in layers {
        let stats = apply_layer_file(&tree, &layer.path, &budget).map_err(|source| {
            RootfsError::Unpack {
                layer: layer.digest.clone(),
                source,
            }
        })?;
        if let (Some(expected), Some(actual)) = (&layer.diff_id, &stats.diff_id) {
            if expected != actual {
                return Err(RootfsError::DiffId {
                    layer: layer.digest.clone(),
                    expected: expected.clone(),
                    actual: actual.clone(),
                });
            }
        }
        debug!(layer = %layer.digest, ?stats, "layer applied");
    }
    Ok(tree)
}

fn run(tool: &'static str, package: &'static str, cmd: &mut Command) -> Result<(), RootfsError> {
    let out = cmd.output().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => RootfsError::ToolMissing { tool, package },
        _ => RootfsError::Io {
            path: PathBuf::from(tool),
            source: e,
        },
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr: String = stderr
            .trim()
            .lines()
            .take(4)
            .collect::<Vec<_>>()
            .join(" / ");
        return Err(RootfsError::Tool {
            tool,
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(())
}

fn mkfs_erofs(tree: &Path, out: &Path) -> Result<(), RootfsError> {
    // Uncompressed: a rootfs is read often, built once per image, and lives on local disk.
    run(
        "mkfs.erofs",
        "erofs-utils",
        Command::new("mkfs.erofs").arg("--quiet").arg(out).arg(tree),
    )
}

/// Bytes the tree needs, rounded per file to 4 KiB blocks, and its inode count.
fn tree_usage(dir: &Path) -> Result<(u64, u64), RootfsError> {
    let (mut bytes, mut inodes) = (0u64, 1u64);
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let meta = entry.metadata().map_err(io_at(&entry.path()))?;
        inodes += 1;
        bytes += meta.len().div_ceil(4096) * 4096 + 4096;
        if meta.is_dir() {
            let (b, i) = tree_usage(&entry.path())?;
            bytes += b;
            inodes += i;
        }
    }
    Ok((bytes, inodes))
}

fn mkfs_ext4(tree: &Path, out: &Path) -> Result<(), RootfsError> {
    let (bytes, inodes) = tree_usage(tree)?;
    let size = (bytes + inodes * 256) / 4 * 5 + (16 << 20);
    let file = File::create(out).map_err(io_at(out))?;
    file.set_len(size.div_ceil(4096) * 4096)
        .map_err(io_at(out))?;
    drop(file);
    run(
        "mkfs.ext4",
        "e2fsprogs",
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-b",
                "4096",
                "-O",
                "^has_journal",
                "-m",
                "0",
                "-N",
            ])
            .arg((inodes + 64).to_string())
            .arg("-d")
            .arg(tree)
            .arg(out),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(files: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Stores a layer as a blob file would be; returns its digest and file.
    fn put(state: &Path, bytes: &[u8]) -> LayerFile {
        let digest = Digest::of(bytes);
        let dir = state.join("layers");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(digest.hex());
        fs::write(&path, bytes).unwrap();
        LayerFile {
            digest,
            path,
            diff_id: None,
        }
    }

    fn extract(format: RootfsFormat, image: &Path, to: &Path) {
        let out = match format {
            RootfsFormat::Erofs => Command::new("fsck.erofs")
                .arg(format!("--extract={}", to.display()))
                .arg(image)
                .output(),
            RootfsFormat::Ext4 => Command::new("debugfs")
                .arg("-R")
                .arg(format!("rdump /etc {}", to.display()))
                .arg(image)
                .output(),
        }
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn builds_each_format_once_and_reuses_it() {
        for format in [RootfsFormat::Erofs, RootfsFormat::Ext4] {
            let state = tempfile::tempdir().unwrap();
            let l1 = put(state.path(), &layer(&[("etc/a", "one"), ("etc/b", "two")]));
            let l2 = put(
                state.path(),
                &layer(&[("etc/.wh.b", ""), ("etc/c", "three")]),
            );
            let id = Digest::of(b"config");
            let builder = RootfsBuilder::new(state.path(), Some(format)).unwrap();
            let first = builder.build(&id, &[l1.clone(), l2.clone()]).unwrap();
            assert!(!first.cached);
            assert_eq!(first.format, format);
            let again = builder.build(&id, &[l1, l2]).unwrap();
            assert!(again.cached);
            assert_eq!(again.path, first.path);
            let out = tempfile::tempdir().unwrap();
            let dest = out.path().join("x");
            if format == RootfsFormat::Ext4 {
                fs::create_dir(&dest).unwrap();
            }
            extract(format, &first.path, &dest);
            let etc = dest.join("etc");
            assert_eq!(fs::read_to_string(etc.join("a")).unwrap(), "one");
            assert_eq!(fs::read_to_string(etc.join("c")).unwrap(), "three");
            assert!(!etc.join("b").exists());
            assert_eq!(
                fs::read_dir(state.path().join("tmp")).unwrap().count(),
                0,
                "work dir left behind"
            );
        }
    }

    #[test]
    fn a_bad_layer_is_reported_and_leaves_no_image() {
        let state = tempfile::tempdir().unwrap();
        let bad = put(state.path(), &[0x1f, 0x8b, 0, 0, 0]);
        let builder = RootfsBuilder::new(state.path(), None).unwrap();
        let id = Digest::of(b"cfg");
        let err = builder.build(&id, std::slice::from_ref(&bad)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("unpacking layer {}", bad.digest)),
            "{err}"
        );
        let missing = Digest::of(b"nothing");
        assert!(matches!(
            builder.build(
                &id,
                &[LayerFile {
                    digest: missing,
                    path: state.path().join("nothing"),
                    diff_id: None
                }]
            ),
            Err(RootfsError::MissingLayer(_))
        ));
        assert!(
            !builder.path(&id, RootfsFormat::Erofs).exists()
                && !builder.path(&id, RootfsFormat::Ext4).exists()
        );
    }

    /// A 1 MiB tmpfs mounted for one test (needs root); unmounted on drop.
    struct SmallTmpfs(tempfile::TempDir);

    impl SmallTmpfs {
        fn mount() -> Option<SmallTmpfs> {
            let dir = tempfile::tempdir().ok()?;
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1m", "skiff-test"])
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(SmallTmpfs(dir))
        }
    }

    impl Drop for SmallTmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0.path()).status();
        }
    }

    #[test]
    fn a_tree_that_fills_the_tmpfs_is_unpacked_again_on_disk() {
        let Some(tmpfs) = SmallTmpfs::mount() else {
            eprintln!("skipped: cannot mount a tmpfs (not root)");
            return;
        };
        // 3 MiB of zeros: a few kB of gzip, so the size guess lets it try the 1 MiB tmpfs,
        // which fills up (without the fallback: "No space left on device").
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &layer(&[("etc/zeros", &"\0".repeat(3 << 20))])).unwrap();
        let state = tempfile::tempdir().unwrap();
        let l = put(state.path(), &gz.finish().unwrap());
        let builder = RootfsBuilder::new(state.path(), Some(RootfsFormat::Erofs))
            .unwrap()
            .with_tmpfs(tmpfs.0.path());
        let id = Digest::of(b"big");
        let built = builder.build(&id, &[l]).unwrap();
        let out = tempfile::tempdir().unwrap();
        extract(RootfsFormat::Erofs, &built.path, &out.path().join("x"));
        let zeros = fs::metadata(out.path().join("x/etc/zeros")).unwrap();
        assert_eq!(zeros.len(), 3 << 20);
        assert_eq!(
            fs::read_dir(tmpfs.0.path()).unwrap().count(),
            0,
            "tmpfs left clean"
        );
        assert_eq!(fs::read_dir(state.path().join("tmp")).unwrap().count(), 0);
    }
}
