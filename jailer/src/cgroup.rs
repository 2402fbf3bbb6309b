//! One cgroup per jailed process, on the host's layout: the unified hierarchy (cgroup v2)
//! where it holds the cpu, memory and pids controllers, else the v1 hierarchies of those
//! controllers (plus the unified one, when mounted, for `cgroup.kill`). Found from
//! `/proc/self/mountinfo` at run time.
//!
//! The group is `<hierarchy root>/<parent>/<id>` in every hierarchy used. The jailer
//! creates it, sets the limits and joins it before anything else runs; the launcher kills
//! what is left in it and removes it when the VM is over.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::JailError;
use crate::spec::Limits;

/// `cpu.max`'s period, µs.
const CPU_PERIOD_US: u64 = 100_000;

/// Where the host's cgroup hierarchies are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2 with the controllers we need.
    Unified { root: PathBuf },
    /// cgroup v1 controllers; `unified` is the v2 hierarchy beside them, if mounted.
    Legacy {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
        unified: Option<PathBuf>,
    },
}

impl Layout {
    pub fn detect() -> Result<Layout, JailError> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(JailError::path("reading", "/proc/self/mountinfo"))?;
        Self::from_mountinfo(&text, |root| {
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default()
        })
    }

    /// The layout that `mountinfo` describes; `controllers` reads a v2 root's
    /// `cgroup.controllers`.
    pub fn from_mountinfo(
        mountinfo: &str,
        controllers: impl Fn(&Path) -> String,
    ) -> Result<Layout, JailError> {
        let mut unified = None;
        let (mut memory, mut cpu, mut pids) = (None, None, None);
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split(' ').nth(4) else {
                continue;
            };
            let mut r = right.split(' ');
            let (fstype, _source, options) = (r.next(), r.next(), r.next().unwrap_or(""));
            let at = PathBuf::from(unescape(mount_point));
            match fstype {
                Some("cgroup2") => unified = unified.or(Some(at)),
                Some("cgroup") => {
                    for opt in options.split(',') {
                        match opt {
                            "memory" => memory = memory.or(Some(at.clone())),
                            "cpu" => cpu = cpu.or(Some(at.clone())),
                            "pids" => pids = pids.or(Some(at.clone())),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(root) = &unified {
            let have = controllers(root);
            let have: Vec<&str> = have.split_whitespace().collect();
            if ["cpu", "memory", "pids"].iter().all(|c| have.contains(c)) {
                return Ok(Layout::Unified { root: root.clone() });
            }
        }
        match (memory, cpu, pids) {
            (Some(memory), Some(cpu), Some(pids)) => Ok(Layout::Legacy {
                memory,
                cpu,
                pids,
                unified,
            }),
            _ => Err(JailError::Cgroup(
                "no cgroup hierarchy with the cpu, memory and pids controllers is mounted".into(),
            )),
        }
    }
}

/// Mount points in mountinfo escape space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One jailed process's group, in every hierarchy the layout uses.
#[derive(Debug, Clone)]
pub struct Cgroup {
    layout: Layout,
    /// `<parent>/<id>`.
    rel: PathBuf,
}

impl Cgroup {
    pub fn new(layout: Layout, parent: &str, id: &str) -> Self {
        Self {
            layout,
            rel: Path::new(parent).join(id),
        }
    }

    /// The group's directory in each hierarchy (the one with `cgroup.kill` first, if any).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::Unified { root } => vec![root.join(&self.rel)],
            Layout::Legacy {
                memory,
                cpu,
                pids,
                unified,
            } => unified
                .iter()
                .chain([memory, cpu, pids])
                .map(|r| r.join(&self.rel))
                .collect(),
        }
    }

    /// The directory holding the memory controller's files.
    pub fn memory_dir(&self) -> PathBuf {
        match &self.layout {
            Layout::Unified { root } => root.join(&self.rel),
            Layout::Legacy { memory, .. } => memory.join(&self.rel),
        }
    }

    /// Makes the group (emptied of any leftover first) with `limits`.
    pub fn create(&self, limits: &Limits) -> Result<(), JailError> {
        if self.dirs().iter().any(|d| d.exists()) {
            self.kill();
            self.remove()?;
        }
        if let Layout::Unified { root } = &self.layout {
            // Controllers must be enabled on every level above the group.
            let mut dir = root.clone();
            for part in Path::new(&limits.cgroup_parent).components() {
                enable_controllers(&dir)?;
                dir.push(part);
                mkdir(&dir)?;
            }
            enable_controllers(&dir)?;
        }
        for d in self.dirs() {
            std::fs::create_dir_all(&d).map_err(JailError::path("creating cgroup", &d))?;
        }
        match &self.layout {
            Layout::Unified { root } => {
                let d = root.join(&self.rel);
                if let Some(c) = limits.cpus {
                    write(
                        &d,
                        "cpu.max",
                        &format!("{} {CPU_PERIOD_US}", u64::from(c) * CPU_PERIOD_US),
                    )?;
                }
                if let Some(m) = limits.memory_bytes {
                    self.set_memory_limit(m)?;
                    // No swap: a runaway VMM is killed at its limit, not swapped out.
                    let _ = write(&d, "memory.swap.max", "0");
                }
                if let Some(p) = limits.pids_max {
                    write(&d, "pids.max", &p.to_string())?;
                }
            }
            Layout::Legacy { cpu, pids, .. } => {
                if let Some(c) = limits.cpus {
                    let d = cpu.join(&self.rel);
                    write(&d, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                    write(
                        &d,
                        "cpu.cfs_quota_us",
                        &(u64::from(c) * CPU_PERIOD_US).to_string(),
                    )?;
                }
                if let Some(m) = limits.memory_bytes {
                    self.set_memory_limit(m)?;
                }
                if let Some(p) = limits.pids_max {
                    write(&pids.join(&self.rel), "pids.max", &p.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// The memory limit's file: `memory.max` (v2) or `memory.limit_in_bytes` (v1).
    fn memory_limit_file(&self) -> PathBuf {
        let file = match self.layout {
            Layout::Unified { .. } => "memory.max",
            Layout::Legacy { .. } => "memory.limit_in_bytes",
        };
        self.memory_dir().join(file)
    }

    /// The group's memory limit in bytes (`None`: none set, or unreadable).
    pub fn memory_limit(&self) -> Option<u64> {
        std::fs::read_to_string(self.memory_limit_file())
            .ok()
            .and_then(|v| v.trim().parse().ok())
    }

    /// Sets the group's memory limit. On v1 the kernel refuses (EBUSY) a limit below what
    /// it cannot reclaim.
    pub fn set_memory_limit(&self, bytes: u64) -> Result<(), JailError> {
        let p = self.memory_limit_file();
        std::fs::write(&p, bytes.to_string())
            .map_err(|e| JailError::Cgroup(format!("writing {bytes} to {}: {e}", p.display())))
    }

    /// Moves process `pid` (and so everything it starts) into the group.
    pub fn join(&self, pid: u32) -> Result<(), JailError> {
        for d in self.dirs() {
            write(&d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in the group.
    pub fn procs(&self) -> Vec<i32> {
        let mut all: Vec<i32> = self
            .dirs()
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Kills everything in the group: `cgroup.kill` where the kernel has it, else SIGKILL
    /// to each member until none is left (a pid namespace's init takes the rest with it).
    pub fn kill(&self) {
        let killed = self
            .dirs()
            .first()
            .is_some_and(|d| std::fs::write(d.join("cgroup.kill"), "1").is_ok());
        if killed {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let procs = self.procs();
            if procs.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in procs {
                // SAFETY: kill(2) with a pid read from the group's own member list; the
                // group holds only the jail's processes, nothing of ours.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Removes the group once its processes are gone (waits up to 2 s for them to be
    /// reaped).
    pub fn remove(&self) -> Result<(), JailError> {
        let deadline = Instant::now() + Duration::from_secs(2);
        for d in self.dirs() {
            loop {
                match std::fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(JailError::path("removing cgroup", &d)(e))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        Ok(())
    }

    /// How many times the memory limit's OOM killer struck in the group.
    pub fn oom_kills(&self) -> u64 {
        let d = self.memory_dir();
        let text = std::fs::read_to_string(d.join("memory.events"))
            .or_else(|_| std::fs::read_to_string(d.join("memory.oom_control")))
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn enable_controllers(dir: &Path) -> Result<(), JailError> {
    let want = ["cpu", "memory", "pids"];
    let on = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let missing: Vec<String> = want
        .iter()
        .filter(|c| !on.split_whitespace().any(|x| x == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    write(dir, "cgroup.subtree_control", &missing.join(" "))
}

fn mkdir(d: &Path) -> Result<(), JailError> {
    match std::fs::create_dir(d) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(JailError::path("creating cgroup", d)(e))
        }
        _ => Ok(()),
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), JailError> {
    let p = dir.join(file);
    std::fs::write(&p, value)
        .map_err(|e| JailError::Cgroup(format!("writing {value:?} to {}: {e}", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
";

    #[test]
    fn hybrid_hosts_use_the_v1_controllers_and_the_unified_tree_for_kill() {
        let l = Layout::from_mountinfo(HYBRID, |_| String::new()).unwrap();
        assert_eq!(
            l,
            Layout::Legacy {
                memory: "/sys/fs/cgroup/memory".into(),
                cpu: "/sys/fs/cgroup/cpu,cpuacct".into(),
                pids: "/sys/fs/cgroup/pids".into(),
                unified: Some("/sys/fs/cgroup/unified".into()),
            }
        );
        let g = Cgroup::new(l, "skiff", "task-1");
        assert_eq!(
            g.dirs()[0],
            Path::new("/sys/fs/cgroup/unified/skiff/task-1")
        );
        assert_eq!(
            g.memory_dir(),
            Path::new("/sys/fs/cgroup/memory/skiff/task-1")
        );
    }

    #[test]
    fn unified_hosts_use_one_tree() {
        let m = "25 23 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let l = Layout::from_mountinfo(m, |_| "cpuset cpu io memory pids".into()).unwrap();
        assert_eq!(
            l,
            Layout::Unified {
                root: "/sys/fs/cgroup".into()
            }
        );
        // Without the controllers there, and no v1 ones, there is no usable layout.
        assert!(Layout::from_mountinfo(m, |_| "io".into()).is_err());
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
    }
}
