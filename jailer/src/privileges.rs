//! The last steps before the program runs: resource limits, no capabilities (bounding and
//! ambient sets emptied, then a non-root uid, which clears the rest), no new privileges,
//! and death with the jailer.

use crate::error::JailError;
use crate::spec::JailSpec;
use crate::sys;

pub fn drop_privileges(spec: &JailSpec) -> Result<(), JailError> {
    sys::setrlimit(libc::RLIMIT_NOFILE, spec.limits.open_files)?;
    if let Some(bytes) = spec.limits.file_bytes {
        sys::setrlimit(libc::RLIMIT_FSIZE, bytes)?;
    }
    sys::setrlimit(libc::RLIMIT_CORE, 0)?;
    // A write past RLIMIT_FSIZE then fails with EFBIG instead of killing the process;
    // an ignored disposition survives exec.
    // SAFETY: setting a signal to SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    for cap in 0..64 {
        // Past the kernel's last capability the call fails with EINVAL: done.
        if sys::prctl(libc::PR_CAPBSET_DROP, cap, "dropping a capability").is_err() {
            break;
        }
    }
    // SAFETY: PR_CAP_AMBIENT takes integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    sys::become_user(spec.uid, spec.gid)?;
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "no_new_privs")?;
    // Set after the uid change, which clears it. If the jailer dies, so does the program.
    sys::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        "parent-death signal",
    )
}
