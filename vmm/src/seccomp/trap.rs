//! `--seccomp trap`: a SIGSYS handler that names the refused system call and the thread
//! kind on stderr, then ends the process with [`TRAP_EXIT_CODE`]. It uses only `write` and
//! `exit_group`, which every filter allows.

use std::cell::Cell;
use std::sync::OnceLock;

use super::ThreadKind;

/// `skiff-vmm`'s exit code when `--seccomp trap` caught a system call outside a filter
/// (31 is SIGSYS's number; a process killed by SIGSYS shows as 128 + 31 instead).
pub const TRAP_EXIT_CODE: i32 = 31;

/// SIGSYS's code for a seccomp trap (`SYS_SECCOMP` in <asm-generic/siginfo.h>).
const SYS_SECCOMP: libc::c_int = 1;

thread_local! {
    /// The kind of the filter this thread installed, for the handler's message.
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

pub(super) fn set_thread_kind(kind: ThreadKind) {
    KIND.with(|k| k.set(Some(kind)));
}

/// The head of `siginfo_t` as the kernel fills it for SIGSYS (`_sigsys` in
/// <asm-generic/siginfo.h>): three ints, then the union, 8-byte aligned on 64-bit.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// A line built on the stack: the handler must not allocate.
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut v: i64) {
        if v < 0 {
            self.push(b"-");
            v = -v;
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; for SIGSYS its
    // head has SigsysInfo's layout (the fields are only read when si_code is SYS_SECCOMP).
    let info = unsafe { &*(info as *const SigsysInfo) };
    let kind = KIND.try_with(Cell::get).ok().flatten();
    let mut line = Line {
        buf: [0; 160],
        len: 0,
    };
    line.push(b"skiff-vmm: seccomp: the ");
    line.push(kind.map_or("unfiltered", ThreadKind::name).as_bytes());
    line.push(b" thread made system call ");
    if info.code == SYS_SECCOMP {
        line.push_number(i64::from(info.syscall));
    } else {
        line.push(b"(unknown: SIGSYS not from seccomp)");
    }
    line.push(b", which its filter does not allow (see <asm/unistd_64.h>)\n");
    // SAFETY: write and _exit are async-signal-safe; the buffer is valid for `len` bytes.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        libc::_exit(TRAP_EXIT_CODE);
    }
}

/// Installs the SIGSYS handler (process-wide, once).
pub(super) fn install_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
            .map_err(|e| e.errno())
    });
    result.map_err(vmm_sys_util::errno::Error::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siginfo_layout_matches_the_kernel() {
        assert_eq!(std::mem::offset_of!(SigsysInfo, call_addr), 16);
        assert_eq!(std::mem::offset_of!(SigsysInfo, syscall), 24);
        assert_eq!(std::mem::offset_of!(SigsysInfo, arch), 28);
    }

    #[test]
    fn line_formats_numbers_without_allocating() {
        let mut l = Line {
            buf: [0; 160],
            len: 0,
        };
        l.push(b"nr ");
        l.push_number(59);
        l.push(b" ");
        l.push_number(0);
        assert_eq!(&l.buf[..l.len], b"nr 59 0");
    }
}
