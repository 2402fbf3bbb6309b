//! Thin checked wrappers over the system calls the jail is built with. Each returns the
//! errno as an error naming the step; the `unsafe` is here, once per call.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::JailError;

pub fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| JailError::Spec(format!("{} holds a NUL byte", p.display())))
}

fn check(rc: libc::c_int, what: &'static str) -> Result<(), JailError> {
    if rc == -1 {
        Err(JailError::last_os(what))
    } else {
        Ok(())
    }
}

/// mount(2). `source`, `fstype` and `data` may be absent.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
    what: &'static str,
) -> Result<(), JailError> {
    let opt = |c: Option<&CStr>| c.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is either null (allowed by mount(2) for these arguments) or a
    // NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            opt(source),
            target.as_ptr(),
            opt(fstype),
            flags,
            opt(data).cast(),
        )
    };
    check(rc, what)
}

pub fn unshare(flags: libc::c_int) -> Result<(), JailError> {
    // SAFETY: unshare(2) takes flags only; the jailer is single-threaded here, which the
    // PID and mount namespace flags require.
    check(unsafe { libc::unshare(flags) }, "unshare")
}

/// setns(2): joins the namespace of type `nstype` that `fd` refers to.
pub fn setns(fd: libc::c_int, nstype: libc::c_int) -> Result<(), JailError> {
    // SAFETY: setns takes a descriptor the caller holds open and a namespace type; the
    // forked child calling it is single-threaded.
    check(unsafe { libc::setns(fd, nstype) }, "setns")
}

/// pivot_root(2) with the same directory twice: the old root is stacked under the new
/// one and detached right after by the caller.
pub fn pivot_root_here() -> Result<(), JailError> {
    let dot = c".";
    // SAFETY: two NUL-terminated paths that outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    check(rc as libc::c_int, "pivot_root")
}

pub fn umount_detach(target: &CStr) -> Result<(), JailError> {
    // SAFETY: a NUL-terminated path that outlives the call.
    check(
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) },
        "detaching the old root",
    )
}

pub fn chdir(dir: &CStr) -> Result<(), JailError> {
    // SAFETY: a NUL-terminated path that outlives the call.
    check(unsafe { libc::chdir(dir.as_ptr()) }, "chdir")
}

pub fn mknod_char(path: &CStr, rdev: libc::dev_t) -> Result<(), JailError> {
    // SAFETY: a NUL-terminated path; mode and device number are plain integers.
    check(
        unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, rdev) },
        "making a device node",
    )
}

pub fn chown(path: &CStr, uid: u32, gid: u32) -> Result<(), JailError> {
    // SAFETY: a NUL-terminated path; ids are plain integers.
    check(unsafe { libc::chown(path.as_ptr(), uid, gid) }, "chown")
}

pub fn sethostname(name: &str) -> Result<(), JailError> {
    // SAFETY: pointer and length describe `name`'s bytes, which outlive the call.
    check(
        unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) },
        "sethostname",
    )
}

pub fn setrlimit(resource: libc::__rlimit_resource_t, value: u64) -> Result<(), JailError> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `lim` is a valid rlimit that outlives the call.
    check(unsafe { libc::setrlimit(resource, &lim) }, "setrlimit")
}

pub fn prctl(option: libc::c_int, arg: libc::c_ulong, what: &'static str) -> Result<(), JailError> {
    // SAFETY: the prctl options used here take integer arguments only.
    check(unsafe { libc::prctl(option, arg, 0, 0, 0) }, what)
}

/// Sets uid and gid (real, effective, saved) and clears supplementary groups. With every
/// uid non-zero and no `PR_SET_KEEPCAPS`, the kernel clears the capability sets.
pub fn become_user(uid: u32, gid: u32) -> Result<(), JailError> {
    // SAFETY: an empty group list (count 0, null pointer is allowed).
    check(unsafe { libc::setgroups(0, std::ptr::null()) }, "setgroups")?;
    // SAFETY: plain integer ids.
    check(unsafe { libc::setresgid(gid, gid, gid) }, "setresgid")?;
    // SAFETY: plain integer ids.
    check(unsafe { libc::setresuid(uid, uid, uid) }, "setresuid")
}

/// Closes every descriptor from `first` up.
pub fn close_from(first: u32) {
    // SAFETY: close_range(2) on descriptors this process owns; nothing of ours above
    // `first` is in use by the caller (it opens its own files after).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if rc != 0 {
        // Kernels before 5.9: close them one by one.
        // SAFETY: sysconf has no pointer arguments.
        let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.max(1024) as i32;
        for fd in first as i32..max {
            // SAFETY: closing a descriptor number; EBADF for unused ones is ignored.
            unsafe { libc::close(fd) };
        }
    }
}

/// fork(2): `Ok(0)` in the child, the child's pid in the parent.
pub fn fork() -> Result<libc::pid_t, JailError> {
    // SAFETY: the jailer is single-threaded, so the child inherits a consistent heap and
    // may allocate.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(JailError::last_os("fork"));
    }
    Ok(pid)
}

/// execveat(fd, "", argv, envp, AT_EMPTY_PATH): runs the opened program. Returns only on
/// failure.
pub fn exec_fd(fd: libc::c_int, argv: &[CString], envp: &[CString]) -> JailError {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    e.push(std::ptr::null());
    // SAFETY: `a` and `e` are null-terminated arrays of pointers to NUL-terminated strings
    // owned by `argv`/`envp`, alive for the call; the empty path with AT_EMPTY_PATH names
    // `fd` itself.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            a.as_ptr(),
            e.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    JailError::last_os("executing the jailed program")
}
