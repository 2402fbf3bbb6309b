//! The task's cgroup: every process of the task runs in `/sys/fs/cgroup/task`, so the agent
//! can tell from its `memory.events` when the guest's OOM killer hit the task.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

const DIR: &str = "/sys/fs/cgroup/task";

pub struct TaskCgroup {
    procs: File,
}

impl TaskCgroup {
    pub fn create() -> Result<Self, String> {
        // The memory controller must be enabled for children for memory.events to exist.
        if let Err(e) = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory") {
            return Err(format!("enable the memory cgroup controller: {e}"));
        }
        match std::fs::create_dir(DIR) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("create {DIR}: {e}")),
        }
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("{DIR}/cgroup.procs"))
            .map_err(|e| format!("open {DIR}/cgroup.procs: {e}"))?;
        Ok(Self { procs })
    }

    /// The open `cgroup.procs`: a forked child writes "0" to it to join the cgroup before
    /// it execs, so nothing it starts can escape.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// CPU time the task's processes have used, µs (`cpu.stat`'s `usage_usec`, kept by
    /// every cgroup).
    pub fn cpu_usec(&self) -> Option<u64> {
        std::fs::read_to_string(format!("{DIR}/cpu.stat"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
            })
    }

    /// How many of the task's processes the OOM killer has killed.
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(format!("{DIR}/memory.events"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}
