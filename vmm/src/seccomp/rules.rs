//! The system calls each thread kind may make, as found with `strace -f` (docs/vmm.md,
//! "Seccomp"). A syscall with no rule is allowed with any arguments; one with rules only
//! when one of them matches (the conditions of a rule all hold).

use std::collections::BTreeMap;

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::{ioctls, ThreadKind};
use crate::cpu::kick::kick_signal;

/// A syscall number and the rules it is allowed under (none: always).
type Entry = (i64, Vec<SeccompRule>);
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// `File::create`'s open flags: the only open the API thread makes (snapshot files).
pub const CREATE_FLAGS: u64 =
    (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC) as u64;

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

fn eq(arg: u8, value: u64) -> Result<SeccompCondition, BackendError> {
    cond(arg, SeccompCmpOp::Eq, value)
}

fn always(nr: i64) -> Entry {
    (nr, Vec::new())
}

/// `nr` when argument `arg` is one of `values`.
fn one_of(nr: i64, arg: u8, values: &[u64]) -> Result<Entry, BackendError> {
    let rules = values
        .iter()
        .map(|&v| SeccompRule::new(vec![eq(arg, v)?]))
        .collect::<Result<_, _>>()?;
    Ok((nr, rules))
}

/// `mmap`/`mprotect` without PROT_EXEC: nothing maps code once the VM runs.
fn no_exec(nr: i64) -> Result<Entry, BackendError> {
    let prot = cond(2, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0)?;
    Ok((nr, vec![SeccompRule::new(vec![prot])?]))
}

/// `tgkill` to a thread of this process with one of `signals`.
fn tgkill(signals: &[i32]) -> Result<Entry, BackendError> {
    let pid = u64::from(std::process::id());
    let rules = signals
        .iter()
        .map(|&s| SeccompRule::new(vec![eq(0, pid)?, eq(2, s as u64)?]))
        .collect::<Result<_, _>>()?;
    Ok((libc::SYS_tgkill, rules))
}

/// `ioctl` with the requests of `kind` only.
fn ioctl(kind: ThreadKind) -> Result<Entry, BackendError> {
    let requests: Vec<u64> = ioctls::for_kind(kind).iter().map(|(_, nr)| *nr).collect();
    one_of(libc::SYS_ioctl, 1, &requests)
}

/// What every thread needs to live and end in a Rust program on glibc: locks and channels
/// (futex, sched_yield), malloc (brk, mmap, mprotect, munmap, mremap, madvise), signals
/// (the stop and kick handlers return through rt_sigreturn; thread exit resets the
/// alternate signal stack), logging on stderr (write), the clock when the vDSO cannot
/// serve it, HashMap keys (getrandom), thread and process exit, and a panic's abort
/// (getpid, gettid, tgkill with SIGABRT to itself).
fn common(extra_signals: &[i32]) -> Result<Vec<Entry>, BackendError> {
    let mut signals = vec![libc::SIGABRT];
    signals.extend_from_slice(extra_signals);
    Ok(vec![
        always(libc::SYS_futex),
        always(libc::SYS_sched_yield),
        always(libc::SYS_brk),
        no_exec(libc::SYS_mmap)?,
        no_exec(libc::SYS_mprotect)?,
        always(libc::SYS_munmap),
        always(libc::SYS_mremap),
        always(libc::SYS_madvise),
        always(libc::SYS_rt_sigprocmask),
        always(libc::SYS_rt_sigreturn),
        always(libc::SYS_sigaltstack),
        always(libc::SYS_write),
        always(libc::SYS_clock_gettime),
        always(libc::SYS_getrandom),
        always(libc::SYS_exit),
        always(libc::SYS_exit_group),
        always(libc::SYS_getpid),
        always(libc::SYS_gettid),
        // The kernel's own continuation of a call interrupted by a stop (SIGSTOP, a
        // debugger attaching): without it, attaching strace to a VMM kills it.
        always(libc::SYS_restart_syscall),
        tgkill(&signals)?,
    ])
}

/// The allowed system calls of `kind`.
pub fn rules(kind: ThreadKind) -> Result<Rules, BackendError> {
    let kick = kick_signal();
    let (signals, own): (&[i32], Vec<Entry>) = match kind {
        // Waits for the VM's end (poll on the exit eventfd), then removes the control
        // socket, writes the profile into the file opened before the filter, exits.
        ThreadKind::Main => (
            &[],
            vec![
                always(libc::SYS_poll),
                always(libc::SYS_close),
                always(libc::SYS_unlink),
            ],
        ),
        // KVM_RUN and the state reads of a snapshot; serial output (write) and interrupts
        // (eventfd writes) on port I/O exits; a vsock reset by the guest drops the
        // connections (epoll_ctl, close).
        ThreadKind::Vcpu => (
            &[],
            vec![
                ioctl(kind)?,
                always(libc::SYS_close),
                always(libc::SYS_epoll_ctl),
            ],
        ),
        // event-manager's epoll (epoll_ctl also stops and resumes watching virtio-net's
        // TAP); ioeventfds and irqfds (read, write); virtio-net's TAP (read, write: its
        // set-up ioctls ran before any filter); disks (pread64, pwrite64, fdatasync);
        // vsock's Unix sockets to and from the host; stdin.
        ThreadKind::EventLoop => (
            &[],
            vec![
                ioctl(kind)?,
                always(libc::SYS_epoll_wait),
                always(libc::SYS_epoll_ctl),
                always(libc::SYS_read),
                always(libc::SYS_close),
                always(libc::SYS_pread64),
                always(libc::SYS_pwrite64),
                always(libc::SYS_fdatasync),
                one_of(libc::SYS_socket, 0, &[libc::AF_UNIX as u64])?,
                always(libc::SYS_connect),
                always(libc::SYS_accept4),
                always(libc::SYS_recvfrom),
                always(libc::SYS_sendto),
                always(libc::SYS_shutdown),
            ],
        ),
        // One connection at a time with timeouts (setsockopt; recvfrom and sendto are how
        // std reads and writes a UnixStream); the VM-wide KVM state
        // reads; kicking vCPUs to pause them; creating, writing, syncing and renaming the
        // snapshot files (openat: created files only, see the guard).
        ThreadKind::Api => (
            &[kick],
            vec![
                ioctl(kind)?,
                always(libc::SYS_accept4),
                always(libc::SYS_recvfrom),
                always(libc::SYS_sendto),
                (
                    libc::SYS_setsockopt,
                    [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO]
                        .iter()
                        .map(|&o| {
                            SeccompRule::new(vec![
                                eq(1, libc::SOL_SOCKET as u64)?,
                                eq(2, o as u64)?,
                            ])
                        })
                        .collect::<Result<_, _>>()?,
                ),
                always(libc::SYS_close),
                always(libc::SYS_openat),
                always(libc::SYS_pwrite64),
                always(libc::SYS_ftruncate),
                always(libc::SYS_fsync),
                always(libc::SYS_rename),
                // A pause after a failed accept.
                always(libc::SYS_clock_nanosleep),
            ],
        ),
        // Sleeps, then kicks every vCPU thread.
        ThreadKind::Profiler => (&[kick], vec![always(libc::SYS_clock_nanosleep)]),
    };
    let mut out = Rules::new();
    for (nr, rules) in common(signals)?.into_iter().chain(own) {
        let before = out.insert(nr, rules);
        debug_assert!(before.is_none(), "syscall {nr} listed twice for {kind}");
    }
    Ok(out)
}
