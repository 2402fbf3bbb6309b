//! Per-thread seccomp filters (Firecracker's scheme, built with rust-vmm's `seccompiler`).
//!
//! Every thread of a running VM belongs to one [`ThreadKind`] and installs the filter of its
//! kind as its first act: vCPU threads before their first `KVM_RUN`, the event loop, the
//! control API and the profiler at their start, and the main thread once it has spawned all
//! of them (a filter is inherited by the threads created after it, and stacked filters all
//! apply, so no thread may be created by a filtered one). Each filter allows only the system
//! calls that its kind was seen to make (with `strace -f` on boots, restores, snapshots,
//! vsock traffic, disk I/O, console output and profiling; see docs/vmm.md), `ioctl` only
//! with the request numbers it uses, `socket` only for `AF_UNIX`. Anything else ends the
//! process ([`SeccompMode::Kill`], the default), or with [`SeccompMode::Trap`] prints the
//! system call's number and exits with [`TRAP_EXIT_CODE`] — a development aid for finding a
//! missing syscall.
//!
//! `openat` has a guard of its own (a second, smaller filter installed before the main one):
//! it fails with `EPERM` instead of ending the process, except for the one kind of open a
//! thread needs (the API thread creating snapshot files). glibc opens
//! `/proc/sys/vm/overcommit_memory` once, from whichever thread first trims a malloc heap;
//! that open must fail quietly, as it does in a jail without `/proc`.
//!
//! Rules per kind: [`rules`]; ioctl numbers: [`ioctls`]; the SIGSYS handler: [`trap`].

pub mod ioctls;
pub mod rules;
mod trap;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

pub use trap::TRAP_EXIT_CODE;

/// The kinds of threads a running VM has; each has its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The process's first thread: waits for the VM's end, then flushes and exits.
    Main,
    /// One per vCPU: `KVM_RUN` and the exits it returns (port I/O, MMIO, serial output).
    Vcpu,
    /// The device event loop: virtio queues, disk I/O, vsock's Unix sockets, console input.
    EventLoop,
    /// The control socket: pause, resume, snapshot (writes the snapshot files), shutdown.
    Api,
    /// The profiler's timer thread, which kicks vCPU threads with a signal.
    Profiler,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 5] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::EventLoop,
        ThreadKind::Api,
        ThreadKind::Profiler,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::EventLoop => "event-loop",
            ThreadKind::Api => "api",
            ThreadKind::Profiler => "profiler",
        }
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a system call outside a thread's filter does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// The kernel kills the whole process with SIGSYS (production).
    #[default]
    Kill,
    /// SIGSYS to a handler that prints the syscall number and thread kind on stderr, then
    /// exits with [`TRAP_EXIT_CODE`] (development: finding a missing syscall).
    Trap,
    /// No filters (debugging).
    Off,
}

impl std::str::FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kill" => Ok(Self::Kill),
            "trap" => Ok(Self::Trap),
            "off" => Ok(Self::Off),
            other => Err(format!("unknown seccomp mode '{other}' (kill, trap, off)")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp filter of the {kind} thread: {source}")]
    Build {
        kind: ThreadKind,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the seccomp filter of the {kind} thread: {source}")]
    Install {
        kind: ThreadKind,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot install the SIGSYS handler for --seccomp trap: {0}")]
    TrapHandler(#[source] vmm_sys_util::errno::Error),
}

/// The filters of `kind` in the order they are installed: the `openat` guard, then the
/// allow list whose mismatch action `mode` gives. Empty for [`SeccompMode::Off`].
pub fn filters(kind: ThreadKind, mode: SeccompMode) -> Result<Vec<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(Vec::new()),
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Trap => SeccompAction::Trap,
    };
    let build = |source| SeccompError::Build { kind, source };
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(build)?;
    let guard = SeccompFilter::new(
        open_guard(kind).map_err(build)?,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(build)?;
    let mut allowed = rules::rules(kind).map_err(build)?;
    // The guard decides opens: where the kind needs none, it refuses every one with EPERM.
    allowed.entry(libc::SYS_openat).or_default();
    let allow_list =
        SeccompFilter::new(allowed, mismatch, SeccompAction::Allow, arch).map_err(build)?;
    Ok(vec![
        guard.try_into().map_err(build)?,
        allow_list.try_into().map_err(build)?,
    ])
}

/// The `openat` guard's rules (matching opens fail with EPERM): every open, except for
/// [`ThreadKind::Api`] one that creates a file for writing as `File::create` does.
fn open_guard(
    kind: ThreadKind,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let rule = match kind {
        ThreadKind::Api => vec![SeccompRule::new(vec![SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Ne,
            rules::CREATE_FLAGS,
        )?])?],
        _ => Vec::new(),
    };
    Ok([(libc::SYS_openat, rule)].into_iter().collect())
}

/// Installs the filters of `kind` on the calling thread (nothing with
/// [`SeccompMode::Off`]). seccompiler sets `no_new_privs` first. With
/// [`SeccompMode::Trap`], also the process-wide SIGSYS handler.
pub fn install(kind: ThreadKind, mode: SeccompMode) -> Result<(), SeccompError> {
    let programs = filters(kind, mode)?;
    if mode == SeccompMode::Trap {
        trap::install_handler().map_err(SeccompError::TrapHandler)?;
    }
    trap::set_thread_kind(kind);
    for p in &programs {
        seccompiler::apply_filter(p).map_err(|source| SeccompError::Install { kind, source })?;
    }
    if !programs.is_empty() {
        tracing::debug!(%kind, syscalls = allowed_syscalls(kind), "seccomp filter installed");
    }
    Ok(())
}

/// How many system calls the filter of `kind` allows (an `ioctl` or `socket` allowed only
/// with some arguments counts once; `openat`, refused with EPERM by the guard, counts only
/// where some open is let through).
pub fn allowed_syscalls(kind: ThreadKind) -> usize {
    rules::rules(kind).map(|r| r.len()).unwrap_or(0)
}

/// The ioctl requests the filter of `kind` allows, by name.
pub fn allowed_ioctls(kind: ThreadKind) -> Vec<&'static str> {
    ioctls::for_kind(kind)
        .iter()
        .map(|(name, _)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_in_every_mode() {
        for kind in ThreadKind::ALL {
            for mode in [SeccompMode::Kill, SeccompMode::Trap] {
                let f = filters(kind, mode).unwrap();
                assert_eq!(f.len(), 2, "{kind}");
                assert!(f.iter().all(|p| !p.is_empty()), "{kind}");
            }
            assert!(filters(kind, SeccompMode::Off).unwrap().is_empty());
            assert!(allowed_syscalls(kind) > 5, "{kind}");
        }
    }

    #[test]
    fn mode_parses() {
        assert_eq!("trap".parse::<SeccompMode>().unwrap(), SeccompMode::Trap);
        assert!("allow".parse::<SeccompMode>().is_err());
        assert_eq!(SeccompMode::default(), SeccompMode::Kill);
    }
}
