//! The jail, step by step (docs/jail.md tells the same story):
//!
//! 1. close every inherited descriptor above stderr;
//! 2. create the cgroup with its limits and join it, so everything after is counted;
//! 3. open the program (it must be static) and note the device numbers to recreate;
//! 4. `unshare(CLONE_NEWPID)` and fork: the child is pid 1 of a new PID namespace, the
//!    jailer stays outside as its reaper and ends the way the child ended;
//! 5. the child unshares mount, IPC, UTS and network namespaces (or joins the network
//!    namespace the spec names, where the VM's TAP is), builds and enters its
//!    root ([`crate::mounts`]), sets its hostname, drops its privileges
//!    ([`crate::privileges`]) and executes the program by descriptor with only the spec's
//!    environment.

use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

use crate::cgroup::{Cgroup, Layout};
use crate::elf;
use crate::error::JailError;
use crate::mounts::{self, Device};
use crate::privileges;
use crate::spec::JailSpec;
use crate::sys;

/// The jailer's exit code when it could not build the jail (the program never ran).
pub const JAIL_FAILED: i32 = 71;

/// Builds the jail and runs the program in it; returns the exit code the jailer should
/// end with, or ends by the same signal that ended the program.
pub fn run(spec: &JailSpec) -> Result<i32, JailError> {
    sys::close_from(3);
    let cgroup = Cgroup::new(Layout::detect()?, &spec.limits.cgroup_parent, &spec.id);
    cgroup.create(&spec.limits)?;
    cgroup.join(std::process::id())?;
    let program =
        std::fs::File::open(&spec.exec).map_err(JailError::path("opening", &spec.exec))?;
    elf::check_static(&program, &spec.exec)?;
    let devices = spec
        .devices
        .iter()
        .map(|d| Device::of(d))
        .collect::<Result<Vec<_>, _>>()?;
    let netns = match &spec.netns {
        Some(p) => Some(std::fs::File::open(p).map_err(JailError::path("opening", p))?),
        None => None,
    };
    let argv = mounts::c_strings(spec.args.iter().map(|a| a.as_bytes()))?;
    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let envp = mounts::c_strings(env.iter().map(|e| e.as_bytes()))?;

    sys::unshare(libc::CLONE_NEWPID)?;
    let child = sys::fork()?;
    if child == 0 {
        let e = match enter(spec, &devices, netns.as_ref()) {
            Ok(()) => sys::exec_fd(program.as_raw_fd(), &argv, &envp),
            Err(e) => e,
        };
        eprintln!("skiff-jailer: {e}");
        // SAFETY: _exit ends this forked child without running the parent's atexit
        // handlers or flushing buffers it shares with the parent.
        unsafe { libc::_exit(JAIL_FAILED) };
    }
    drop((program, netns));
    Ok(mirror(child))
}

/// The child's side: namespaces, root, identity.
fn enter(
    spec: &JailSpec,
    devices: &[Device],
    netns: Option<&std::fs::File>,
) -> Result<(), JailError> {
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    match netns {
        Some(ns) => sys::setns(ns.as_raw_fd(), libc::CLONE_NEWNET)?,
        None => flags |= libc::CLONE_NEWNET,
    }
    sys::unshare(flags)?;
    mounts::enter_root(spec, devices)?;
    sys::sethostname(&spec.id)?;
    privileges::drop_privileges(spec)
}

/// Waits for `child` and ends the way it ended: its exit code, or its signal raised on
/// ourselves (so the launcher sees SIGKILL from an OOM kill or SIGSYS from seccomp).
fn mirror(child: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        let rc = unsafe { libc::waitpid(child, &mut status, 0) };
        if rc == child {
            break;
        }
        if rc == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return JAIL_FAILED;
        }
    }
    if libc::WIFEXITED(status) {
        return libc::WEXITSTATUS(status);
    }
    let sig = libc::WTERMSIG(status);
    let _ = sys::setrlimit(libc::RLIMIT_CORE, 0);
    // SAFETY: restores the default action for `sig`, unblocks it and raises it on this
    // process: plain signal-state calls with valid arguments.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    128 + sig
}
