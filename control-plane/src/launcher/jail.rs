//! Every VMM runs jailed (`skiff-jailer`, the `jailer` crate): this is the launcher's side.
//! A [`VmJail`] holds one VM's uid (leased from a range, across processes), its cgroup, the
//! directory the VMM may write (`<work>/vm`, shown as `/run` inside) and the empty
//! directory its root is mounted on (`<work>/jail`). Dropping it kills whatever is left in
//! the cgroup and removes it, so nothing of a VM outlives its task.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use jailer::cgroup::{Cgroup, Layout};
use jailer::{Bind, JailSpec, Limits};

/// Where uid leases are locked, shared by every Skiff process on the host.
const UID_LOCK_DIR: &str = "/run/skiff/jail-uids";

/// The VMM's writable directory, as the VMM sees it.
pub const RUN_DIR: &str = "/run";

/// How VMMs are jailed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// The `skiff-jailer` binary.
    pub jailer: PathBuf,
    /// The first uid (and gid) VMMs get, and how many there are.
    pub uid_base: u32,
    pub uid_count: u32,
    /// The VMs' cgroups are `<parent>/<vm>` in each hierarchy.
    pub cgroup_parent: String,
    /// What a VMM may use on top of its guest's memory before its cgroup kills it, MiB.
    pub vmm_overhead_mib: u64,
}

impl JailConfig {
    pub const DEFAULT_UID_BASE: u32 = 900_000;
    pub const DEFAULT_UID_COUNT: u32 = 4096;
    pub const DEFAULT_OVERHEAD_MIB: u64 = 64;

    /// The defaults, with the installed jailer.
    pub fn installed() -> Self {
        Self {
            jailer: crate::install::jailer().path,
            uid_base: Self::DEFAULT_UID_BASE,
            uid_count: Self::DEFAULT_UID_COUNT,
            cgroup_parent: "skiff".into(),
            vmm_overhead_mib: Self::DEFAULT_OVERHEAD_MIB,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JailSetupError {
    #[error("all {count} jail uids from {base} are in use")]
    NoUid { base: u32, count: u32 },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Jail(#[from] jailer::JailError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> JailSetupError {
    let path = path.to_owned();
    move |source| JailSetupError::Io { what, path, source }
}

/// A uid held for one VM: an exclusive `flock` on its lock file, released when dropped
/// (or when the process dies), so two Skiff processes never hand out the same uid.
struct UidLease {
    uid: u32,
    _lock: File,
}

impl UidLease {
    fn take(cfg: &JailConfig) -> Result<Self, JailSetupError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = Path::new(UID_LOCK_DIR);
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let start = NEXT.fetch_add(1, Ordering::Relaxed);
        for i in 0..cfg.uid_count {
            let uid = cfg.uid_base + (start.wrapping_add(i) % cfg.uid_count);
            let path = dir.join(uid.to_string());
            let f = File::create(&path).map_err(io("creating", &path))?;
            if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok() {
                return Ok(Self { uid, _lock: f });
            }
        }
        Err(JailSetupError::NoUid {
            base: cfg.uid_base,
            count: cfg.uid_count,
        })
    }
}

/// Opens (read-only) a file in a VMM's writable directory, which the VMM may have
/// replaced: never through a symlink, and only a regular file.
pub fn open_vm_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file: refused"));
    }
    Ok(f)
}

/// One VM's jail, host side.
pub struct VmJail {
    cfg: JailConfig,
    id: String,
    uid: UidLease,
    /// `<work>/vm`: owned by the VM's uid, `/run` inside.
    run_dir: PathBuf,
    /// `<work>/jail`: empty on the host; the jail's root is mounted on it inside.
    root_dir: PathBuf,
    cgroup: Option<Cgroup>,
    /// A network namespace to join (the task's), else a new empty one.
    netns: Option<PathBuf>,
}

/// The jail id (cgroup name) of the VM working in `work_dir`: its directory name, made
/// safe, and a hash of the whole path so that two state directories never share one.
pub fn jail_id(work_dir: &Path) -> String {
    use sha2::Digest;
    let name: String = work_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let hash = sha2::Sha256::digest(work_dir.as_os_str().as_encoded_bytes());
    format!("{name}-{}", hex::encode(&hash[..4]))
}

/// The cgroup of the VM working in `work_dir` under `parent`, if the host has a usable
/// layout (for clean-up after a restart).
pub fn cgroup_of(work_dir: &Path, parent: &str) -> Option<Cgroup> {
    Layout::detect()
        .ok()
        .map(|l| Cgroup::new(l, parent, &jail_id(work_dir)))
}

impl VmJail {
    /// Leases a uid and makes the VM's directories in `work_dir`.
    pub fn new(cfg: &JailConfig, work_dir: &Path) -> Result<Self, JailSetupError> {
        let uid = UidLease::take(cfg)?;
        let run_dir = work_dir.join("vm");
        let root_dir = work_dir.join("jail");
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir).map_err(io("creating", &run_dir))?;
        std::os::unix::fs::chown(&run_dir, Some(uid.uid), Some(uid.uid))
            .map_err(io("chown", &run_dir))?;
        std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("chmod", &run_dir))?;
        std::fs::create_dir_all(&root_dir).map_err(io("creating", &root_dir))?;
        Ok(Self {
            cfg: cfg.clone(),
            id: jail_id(work_dir),
            uid,
            run_dir,
            root_dir,
            cgroup: None,
            netns: None,
        })
    }

    /// Runs the VMM in this network namespace (a task's, holding its TAP) instead of a
    /// new empty one, with `/dev/net/tun` in the jail.
    pub fn join_netns(&mut self, path: PathBuf) {
        self.netns = Some(path);
    }

    pub fn jailer_path(&self) -> &Path {
        &self.cfg.jailer
    }

    pub fn uid(&self) -> u32 {
        self.uid.uid
    }

    /// The host path of `name` in the VMM's `/run`.
    pub fn host_path(&self, name: &str) -> PathBuf {
        self.run_dir.join(name)
    }

    /// The VMM's path of `name` in its `/run`.
    pub fn jail_path(name: &str) -> PathBuf {
        Path::new(RUN_DIR).join(name)
    }

    /// Hands a file the launcher made in the VMM's directory (a socket it listens on) to
    /// the VM's uid.
    pub fn give(&self, path: &Path) -> Result<(), JailSetupError> {
        std::os::unix::fs::lchown(path, Some(self.uid()), Some(self.uid()))
            .map_err(io("chown", path))
    }

    /// The `skiff-jailer` command line that runs `vmm` with `args`, seeing `read_only`,
    /// and `writable` (files the VM writes in place: a scratch disk) besides its `/run`.
    pub fn command(
        &mut self,
        vmm: &Path,
        read_only: Vec<Bind>,
        writable: Vec<Bind>,
        vcpus: u32,
        memory_mib: u64,
        args: Vec<OsString>,
    ) -> Result<std::process::Command, JailSetupError> {
        let limits = Limits {
            cgroup_parent: self.cfg.cgroup_parent.clone(),
            cpus: Some(vcpus),
            memory_bytes: Some((memory_mib + self.cfg.vmm_overhead_mib) << 20),
            // vCPU threads, the event loop, the control socket, the main thread, the
            // jailer itself, and some room.
            pids_max: Some(vcpus + 12),
            open_files: 1024,
            // A snapshot's memory file or a writable disk is the largest file a VMM
            // writes.
            file_bytes: Some(
                writable
                    .iter()
                    .filter_map(|b| std::fs::metadata(&b.host).ok())
                    .map(|m| m.len())
                    .fold((memory_mib + 128) << 20, u64::max),
            ),
        };
        let mut env = Vec::new();
        if let Ok(v) = std::env::var("SKIFF_LOG") {
            env.push(("SKIFF_LOG".to_owned(), v));
        }
        let spec = JailSpec {
            id: self.id.clone(),
            uid: self.uid(),
            gid: self.uid(),
            root: self.root_dir.clone(),
            exec: vmm.to_owned(),
            read_only,
            writable: std::iter::once(Bind {
                host: self.run_dir.clone(),
                jail: RUN_DIR.into(),
            })
            .chain(writable)
            .collect(),
            devices: std::iter::once("/dev/kvm".into())
                .chain(self.netns.as_ref().map(|_| "/dev/net/tun".into()))
                .collect(),
            netns: self.netns.clone(),
            limits,
            env,
            args,
        };
        spec.validate()?;
        self.cgroup = Some(Cgroup::new(
            Layout::detect()?,
            &self.cfg.cgroup_parent,
            &self.id,
        ));
        let mut cmd = std::process::Command::new(&self.cfg.jailer);
        cmd.args(spec.to_args()).env_clear();
        Ok(cmd)
    }

    /// Whether the memory limit's OOM killer struck this VM's cgroup.
    pub fn oom_killed(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0)
    }

    /// Kills whatever is left in the cgroup and removes it (before a fallback's new VMM,
    /// and at the end).
    pub fn end_vm(&mut self) {
        if let Some(c) = self.cgroup.take() {
            c.kill();
            if let Err(e) = c.remove() {
                tracing::warn!("{e}");
            }
        }
    }
}

impl Drop for VmJail {
    fn drop(&mut self) {
        self.end_vm();
        let _ = std::fs::remove_dir(&self.root_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_ids_are_safe_names_and_differ_by_state_dir() {
        let a = jail_id(Path::new("/var/lib/skiff/tasks/t-1"));
        let b = jail_id(Path::new("/other/tasks/t-1"));
        assert!(a.starts_with("t-1-") && b.starts_with("t-1-"));
        assert_ne!(a, b);
        let odd = jail_id(Path::new("/s/snapshots/1x128.building"));
        assert!(odd.starts_with("1x128_building-"), "{odd}");
        assert!(odd
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_".contains(&c)));
    }
}
