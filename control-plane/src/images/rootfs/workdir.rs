//! Where layers are unpacked before `mkfs` makes the image: a tmpfs (`/dev/shm`) when the
//! tree fits comfortably, else `<state>/tmp` on the state dir's disk.
//!
//! The unpacked tree is thrown away once the image is made, so nothing is gained by writing
//! it to disk; and on ext4 without a journal, creating thousands of inodes soon after
//! thousands were deleted (the previous build's tree) is quadratic in the kernel's inode
//! allocator (`recently_deleted` in `find_inode_bit`): 4–5 s instead of 0.8 s for a 200 MB
//! image. The tmpfs is used only when the guessed tree size is at most half of both its free
//! space and the host's available memory, and when it keeps `user.*` xattrs; a build that
//! runs out of room there is redone on disk (see `rootfs`).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};
use tracing::debug;

/// The tmpfs tried first unless another is given.
pub const DEFAULT_TMPFS: &str = "/dev/shm";
/// `TMPFS_MAGIC` from `linux/magic.h`.
const TMPFS_MAGIC: i64 = 0x0102_1994;
/// Guess of the unpacked size per compressed byte (gzip layers of binaries are 2–3×).
const EXPANSION: u64 = 4;
/// Work folder names: `skiff-rootfs-<pid>-<random>`, so leftovers of dead processes are found.
const PREFIX: &str = "skiff-rootfs-";

/// Where the unpack work folder goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnpackDir {
    /// This tmpfs when the tree fits, else the state dir's `tmp/`.
    Auto { tmpfs: PathBuf },
    /// Always this folder.
    Fixed(PathBuf),
}

impl Default for UnpackDir {
    fn default() -> Self {
        UnpackDir::Auto {
            tmpfs: DEFAULT_TMPFS.into(),
        }
    }
}

/// A work folder, removed on drop.
#[derive(Debug)]
pub struct WorkDir {
    pub dir: tempfile::TempDir,
    /// True when it is on the tmpfs (a build that fills it is redone on disk).
    pub in_memory: bool,
    /// `<dir>/lock`, flocked while the build runs: a sweeper that can lock it knows the
    /// builder is gone (whatever pid namespace it ran in).
    _lock: Option<File>,
}

/// Makes the work folder for a tree of layers totalling `layer_bytes` compressed bytes.
pub fn make(choice: &UnpackDir, disk: &Path, layer_bytes: u64) -> io::Result<WorkDir> {
    if let UnpackDir::Auto { tmpfs } = choice {
        if let Some((dir, lock)) = tmpfs_work_dir(tmpfs, layer_bytes) {
            return Ok(WorkDir {
                dir,
                in_memory: true,
                _lock: Some(lock),
            });
        }
    }
    let base = match choice {
        UnpackDir::Fixed(p) => p.as_path(),
        UnpackDir::Auto { .. } => disk,
    };
    Ok(WorkDir {
        dir: tempdir_in(base)?,
        in_memory: false,
        _lock: None,
    })
}

/// A work folder on disk (after the tmpfs filled up).
pub fn on_disk(disk: &Path) -> io::Result<WorkDir> {
    Ok(WorkDir {
        dir: tempdir_in(disk)?,
        in_memory: false,
        _lock: None,
    })
}

/// A new folder under `base`; mode 0700, so other users cannot reach the tree in it.
fn tempdir_in(base: &Path) -> io::Result<tempfile::TempDir> {
    let prefix = format!("{PREFIX}{}-", std::process::id());
    // Made 0700 from the start (tempfile's default follows the umask: 0755 here).
    tempfile::Builder::new()
        .prefix(&prefix)
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(base)
}

fn mem_available() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// True when `path` is on a tmpfs.
fn is_tmpfs(st: &rustix::fs::StatFs) -> bool {
    // f_type is i64 on x86_64 and narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    let t = st.f_type as i64;
    t == TMPFS_MAGIC
}

fn tmpfs_work_dir(tmpfs: &Path, layer_bytes: u64) -> Option<(tempfile::TempDir, File)> {
    let st = rustix::fs::statfs(tmpfs).ok()?;
    if !is_tmpfs(&st) {
        return None;
    }
    let free = (st.f_bavail as u64).saturating_mul(st.f_bsize as u64);
    let need = layer_bytes.saturating_mul(EXPANSION).saturating_mul(2);
    let mem = mem_available().unwrap_or(0);
    if need > free || need > mem {
        debug!(need, free, mem, "unpacking on disk: the tmpfs is too small");
        return None;
    }
    sweep_leftovers(tmpfs);
    let dir = tempdir_in(tmpfs).ok()?;
    // tmpfs keeps user.* xattrs only since Linux 6.6: without them the image would lose them.
    let probe = rustix::fs::lsetxattr(
        dir.path(),
        "user.skiff-probe",
        b"1",
        rustix::fs::XattrFlags::empty(),
    );
    if probe.is_err() {
        debug!("unpacking on disk: the tmpfs does not keep user xattrs");
        return None;
    }
    let _ = rustix::fs::lremovexattr(dir.path(), "user.skiff-probe");
    let lock = File::create(dir.path().join("lock")).ok()?;
    flock(&lock, FlockOperation::LockExclusive).ok()?;
    Some((dir, lock))
}

/// Removes work folders of processes that died mid-build (they would hold memory until
/// reboot): ours whose lock nobody holds, or without a lock file (a crash right after
/// making the folder) whose pid is gone.
fn sweep_leftovers(tmpfs: &Path) {
    use std::os::unix::fs::MetadataExt;
    let (Ok(entries), Ok(me)) = (fs::read_dir(tmpfs), fs::metadata("/proc/self")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let mine = e.metadata().is_ok_and(|m| m.uid() == me.uid());
        let dead = match File::open(e.path().join("lock")) {
            Ok(lock) => flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok(),
            Err(_) => !Path::new(&format!("/proc/{pid}")).exists(),
        };
        if mine && dead {
            debug!(dir = %e.path().display(), "removing a dead build's work folder");
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_dir_is_used_and_a_huge_tree_stays_on_disk() {
        let disk = tempfile::tempdir().unwrap();
        let fixed = tempfile::tempdir().unwrap();
        let w = make(&UnpackDir::Fixed(fixed.path().into()), disk.path(), 1).unwrap();
        assert!(!w.in_memory);
        assert!(w.dir.path().starts_with(fixed.path()));
        let w = make(&UnpackDir::default(), disk.path(), u64::MAX / 16).unwrap();
        assert!(!w.in_memory);
        assert!(w.dir.path().starts_with(disk.path()));
    }

    #[test]
    fn work_dirs_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let disk = tempfile::tempdir().unwrap();
        for choice in [UnpackDir::default(), UnpackDir::Fixed(disk.path().into())] {
            let w = make(&choice, disk.path(), 1).unwrap();
            let mode = fs::metadata(w.dir.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{choice:?}");
        }
    }

    #[test]
    fn a_small_tree_goes_to_the_tmpfs_and_dead_builds_are_swept() {
        let is_tmpfs = rustix::fs::statfs(DEFAULT_TMPFS).is_ok_and(|s| is_tmpfs(&s));
        if !is_tmpfs {
            eprintln!("skipped: {DEFAULT_TMPFS} is not a tmpfs here");
            return;
        }
        // No process has pid 4000000000 (pid_max is at most 2^22). One folder of a dead
        // build without a lock file, one with a lock nobody holds, and one whose lock is
        // held (a live build in another pid namespace): only that one stays.
        let tmpfs = Path::new(DEFAULT_TMPFS);
        let dead = tmpfs.join(format!("{PREFIX}4000000000-test"));
        fs::create_dir_all(dead.join("x")).unwrap();
        let unlocked = tmpfs.join(format!("{PREFIX}4000000000-unlocked"));
        fs::create_dir_all(&unlocked).unwrap();
        File::create(unlocked.join("lock")).unwrap();
        let live = tmpfs.join(format!("{PREFIX}4000000000-live"));
        fs::create_dir_all(&live).unwrap();
        let held = File::create(live.join("lock")).unwrap();
        flock(&held, FlockOperation::LockExclusive).unwrap();
        let disk = tempfile::tempdir().unwrap();
        let w = make(&UnpackDir::default(), disk.path(), 1 << 20).unwrap();
        assert!(w.in_memory, "{}", w.dir.path().display());
        assert!(w.dir.path().starts_with(DEFAULT_TMPFS));
        assert!(!dead.exists(), "a dead build's folder was left");
        assert!(!unlocked.exists(), "a dead build's locked folder was left");
        assert!(live.exists(), "a live build's folder was removed");
        fs::remove_dir_all(&live).unwrap();
        let path = w.dir.path().to_path_buf();
        drop(w);
        assert!(!path.exists());
    }
}
