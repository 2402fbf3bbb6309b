//! Makes a running process execute one system call of our choosing, as an attacker who
//! took over that process would: ptrace interrupts its main thread in a blocking system
//! call, rewinds it onto the `syscall` instruction with other registers, and lets it go.
//! Used to test that a jailed VMM's seccomp filter kills it for a forbidden call.

use std::io::{Error, Result};

/// `syscall` on x86-64.
const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

fn check(rc: libc::c_long) -> Result<libc::c_long> {
    if rc == -1 {
        Err(Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Has thread `tid` (stopped in a system call) run system call `nr` with `args` next.
pub fn inject_syscall(tid: i32, nr: u64, args: [u64; 3]) -> Result<()> {
    // SAFETY: ptrace and waitpid on a process id given by the caller, with valid
    // pointers to a local register struct; the tracee is detached before returning.
    unsafe {
        check(libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0))?;
        let detach = |e: Error| {
            libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0);
            e
        };
        check(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0)).map_err(detach)?;
        let mut status = 0;
        if libc::waitpid(tid, &mut status, libc::__WALL) != tid {
            return Err(detach(Error::last_os_error()));
        }
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        check(libc::ptrace(libc::PTRACE_GETREGS, tid, 0, &mut regs)).map_err(detach)?;
        let at = regs.rip - 2;
        *libc::__errno_location() = 0;
        let word = libc::ptrace(libc::PTRACE_PEEKTEXT, tid, at, 0);
        if word.to_le_bytes()[..2] != SYSCALL_INSN {
            return Err(detach(Error::other(
                "the thread is not stopped after a syscall instruction",
            )));
        }
        // No restart of the interrupted call: the rewound instruction runs ours instead.
        regs.orig_rax = u64::MAX;
        regs.rax = nr;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.rip = at;
        check(libc::ptrace(libc::PTRACE_SETREGS, tid, 0, &regs)).map_err(detach)?;
        check(libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0))?;
    }
    Ok(())
}
