//! The exec helper: a child of the agent forked as soon as the container's root is mounted
//! (before a warm snapshot is taken, or right after the mount on other starts). It is
//! already in the task's cgroup, chrooted into the root, with its stdio on the agent's
//! pipes and no signal blocked; when the run spec comes it only changes directory and
//! identity and execs. On these hosts a fork costs ~0.3 s of emulated page-table work, so a
//! warm snapshot that holds the helper takes that (and the mount) off the path from the
//! run spec to the process.
//!
//! Written on plain `fork`/`execve` rather than `std::process::Command`, because the child
//! must outlive a snapshot between its fork and its exec, which `Command` cannot express.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{OwnedFd, RawFd};

use guest_agent::FailureKind;
use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::{ForkResult, Pid};

use super::rootfs::ROOT;

/// What the helper execs, as the agent resolved it from the run spec.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// `KEY=VALUE`; `PATH` from here is used to find `argv[0]`.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Stdin from the agent's pipe; otherwise `/dev/null`.
    pub stdin: bool,
    /// setrlimit(2) resource, soft, hard: set before the identity changes, so hard limits
    /// may be raised too.
    #[serde(default)]
    pub rlimits: Vec<(u32, u64, u64)>,
}

/// A helper waiting for its request.
pub struct Helper {
    pid: Pid,
    request: File,
    exec_result: File,
    stdin: File,
    stdout: File,
    stderr: File,
}

/// A process the helper became.
pub struct Spawned {
    pub pid: u32,
    /// The process's stdin (None when it reads /dev/null).
    pub stdin: Option<File>,
    pub stdout: File,
    pub stderr: File,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

impl Helper {
    /// Forks the helper into the root at [`ROOT`] and the cgroup whose `cgroup.procs` is
    /// open as `cgroup`, and waits until it is set up there. It reads `warm` ahead first
    /// (see `readahead::programs_and_files`); the answer holds the bytes it read. The agent must be
    /// single-threaded (it is).
    pub fn fork(
        cgroup: Option<RawFd>,
        warm: &Warm,
    ) -> Result<(Helper, u64), (FailureKind, String)> {
        let internal = |m: String| (FailureKind::Internal, m);
        let (request_r, request_w) = pipe().map_err(internal)?;
        let (result_r, result_w) = pipe().map_err(internal)?;
        let (ready_r, ready_w) = pipe().map_err(internal)?;
        let (stdin_r, stdin_w) = pipe().map_err(internal)?;
        let (stdout_r, stdout_w) = pipe().map_err(internal)?;
        let (stderr_r, stderr_w) = pipe().map_err(internal)?;
        // SAFETY: the agent is single-threaded, so no lock is held by another thread at the
        // fork; the child only runs `helper_main`, which never returns (it execs or _exits).
        let forked = unsafe { nix::unistd::fork() }
            .map_err(|e| internal(format!("fork the exec helper: {e}")))?;
        let child = match forked {
            ForkResult::Child => {
                drop((request_w, result_r, ready_r, stdin_w, stdout_r, stderr_r));
                let stdio = [stdin_r, stdout_w, stderr_w];
                let pipes = HelperPipes {
                    request: File::from(request_r),
                    ready: File::from(ready_w),
                    result: File::from(result_w),
                };
                helper_main(cgroup, stdio, warm, pipes)
            }
            ForkResult::Parent { child } => child,
        };
        drop((request_r, result_w, ready_w, stdin_r, stdout_w, stderr_w));
        let mut helper = Helper {
            pid: child,
            request: File::from(request_w),
            exec_result: File::from(result_r),
            stdin: File::from(stdin_w),
            stdout: File::from(stdout_r),
            stderr: File::from(stderr_r),
        };
        // Eight bytes (what it read ahead) once it is set up; nothing if it failed.
        let mut ready = [0u8; 8];
        match File::from(ready_r).read_exact(&mut ready) {
            Ok(()) => Ok((helper, u64::from_le_bytes(ready))),
            Err(_) => Err(helper.failure()),
        }
    }

    /// Why the helper gave up (it has exited or is about to), once it is reaped.
    fn failure(&mut self) -> (FailureKind, String) {
        let mut answer = Vec::new();
        let _ = Read::by_ref(&mut self.exec_result)
            .take(8192)
            .read_to_end(&mut answer);
        let _ = nix::sys::wait::waitpid(self.pid, None);
        if answer.is_empty() {
            (
                FailureKind::Internal,
                "the exec helper ended without a word".into(),
            )
        } else {
            decode_failure(&answer)
        }
    }

    /// Sends the request and waits until the helper has exec'd (or says why it could not).
    pub fn exec(self, req: &ExecRequest) -> Result<Spawned, (FailureKind, String)> {
        let Helper {
            pid,
            mut request,
            mut exec_result,
            stdin,
            stdout,
            stderr,
        } = self;
        let internal = |m: String| (FailureKind::Internal, m);
        let body = serde_json::to_vec(req).map_err(|e| internal(format!("exec request: {e}")))?;
        request
            .write_all(&body)
            .map_err(|e| internal(format!("exec helper: {e}")))?;
        drop(request);
        // The result pipe closes on a successful exec (close-on-exec) with nothing in it.
        let mut answer = Vec::new();
        let read = Read::by_ref(&mut exec_result)
            .take(8192)
            .read_to_end(&mut answer);
        if let Err(e) = read {
            return Err(internal(format!("exec helper: {e}")));
        }
        if !answer.is_empty() {
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(decode_failure(&answer));
        }
        Ok(Spawned {
            pid: pid.as_raw() as u32,
            stdin: req.stdin.then_some(stdin),
            stdout,
            stderr,
        })
    }
}

/// A failure as the helper writes it: the kind's code, a newline, the message.
fn encode_failure(kind: FailureKind, message: &str) -> Vec<u8> {
    let code = match kind {
        FailureKind::CommandNotFound => 'n',
        FailureKind::NotExecutable => 'x',
        FailureKind::BadUser => 'u',
        FailureKind::BadWorkingDir => 'd',
        _ => 'i',
    };
    format!("{code}\n{message}").into_bytes()
}

fn decode_failure(b: &[u8]) -> (FailureKind, String) {
    let text = String::from_utf8_lossy(b);
    let (code, message) = text.split_once('\n').unwrap_or(("i", &text));
    let kind = match code {
        "n" => FailureKind::CommandNotFound,
        "x" => FailureKind::NotExecutable,
        "u" => FailureKind::BadUser,
        "d" => FailureKind::BadWorkingDir,
        _ => FailureKind::Internal,
    };
    (kind, message.to_owned())
}

/// Programs to read into the page cache while the helper is set up (a warm snapshot's).
#[derive(Default)]
pub struct Warm<'a> {
    pub programs: &'a [String],
    /// The `PATH` that finds them.
    pub path: &'a str,
    /// Files an earlier task of the image opened, read as they are after the programs.
    pub files: &'a [String],
}

/// The helper's ends of its pipes to the agent.
struct HelperPipes {
    request: File,
    ready: File,
    result: File,
}

/// The helper's life: set up, say it is ready, wait for the request, exec; on any failure,
/// report it on the result pipe and exit.
fn helper_main(cgroup: Option<RawFd>, stdio: [OwnedFd; 3], warm: &Warm, pipes: HelperPipes) -> ! {
    let HelperPipes {
        request,
        ready,
        mut result,
    } = pipes;
    let failure = match wait_and_exec(cgroup, stdio, warm, ready, request) {
        Ok(never) => match never {},
        Err((kind, message)) => encode_failure(kind, &message),
    };
    let _ = result.write_all(&failure);
    // SAFETY: _exit ends the forked child without running the agent's exit handlers or
    // destructors, which belong to the parent.
    unsafe { libc::_exit(127) }
}

fn wait_and_exec(
    cgroup: Option<RawFd>,
    stdio: [OwnedFd; 3],
    warm: &Warm,
    mut ready: File,
    mut request: File,
) -> Result<std::convert::Infallible, (FailureKind, String)> {
    let internal = |what: &str, e: nix::Error| (FailureKind::Internal, format!("{what}: {e}"));
    // The agent blocks SIGCHLD (it reads it from a signalfd); the task starts with none.
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| internal("signal mask", e))?;
    if let Some(fd) = cgroup {
        // Joining may fail (no memory controller): the task then runs unaccounted.
        let _ = nix::unistd::write(
            // SAFETY: the agent keeps cgroup.procs open for the task's whole life.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            b"0",
        );
    }
    nix::unistd::chroot(ROOT).map_err(|e| internal("chroot", e))?;
    nix::unistd::chdir("/").map_err(|e| internal("chdir /", e))?;
    let [stdin, stdout, stderr] = stdio;
    nix::unistd::dup2_stdin(&stdin)
        .and_then(|()| nix::unistd::dup2_stdout(&stdout))
        .and_then(|()| nix::unistd::dup2_stderr(&stderr))
        .map_err(|e| internal("stdio", e))?;
    drop((stdin, stdout, stderr));
    // Inside the root, so the image's own symlinks resolve as the task will see them.
    let warmed = super::readahead::programs_and_files(warm.programs, warm.path, warm.files);
    ready
        .write_all(&warmed.to_le_bytes())
        .map_err(|e| (FailureKind::Internal, format!("ready: {e}")))?;
    drop(ready);
    let mut body = Vec::new();
    request
        .read_to_end(&mut body)
        .map_err(|e| (FailureKind::Internal, format!("exec request: {e}")))?;
    let req: ExecRequest = serde_json::from_slice(&body)
        .map_err(|e| (FailureKind::Internal, format!("exec request: {e}")))?;
    if !req.stdin {
        let null = nix::fcntl::open("/dev/null", OFlag::O_RDWR, nix::sys::stat::Mode::empty())
            .map_err(|e| internal("/dev/null", e))?;
        nix::unistd::dup2_stdin(&null).map_err(|e| internal("stdin", e))?;
    }
    nix::unistd::chdir(req.cwd.as_str()).map_err(|e| {
        (
            FailureKind::BadWorkingDir,
            format!("working directory {}: {e}", req.cwd),
        )
    })?;
    let gid = nix::unistd::Gid::from_raw(req.gid);
    let bad_user = |e: nix::Error| {
        (
            FailureKind::BadUser,
            format!("{}:{}: {e}", req.uid, req.gid),
        )
    };
    set_rlimits(&req.rlimits)?;
    nix::unistd::setgroups(&[gid]).map_err(bad_user)?;
    nix::unistd::setgid(gid).map_err(bad_user)?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(req.uid)).map_err(bad_user)?;
    exec_program(&req)
}

/// Applies the process's resource limits (resource numbers checked by the agent against
/// `RLIMIT_NAMES`; the kernel refuses a soft limit above the hard one).
pub(super) fn set_rlimits(limits: &[(u32, u64, u64)]) -> Result<(), (FailureKind, String)> {
    for &(resource, soft, hard) in limits {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: `lim` is a valid rlimit that lives across the call; setrlimit only reads
        // it, and an unknown resource number is refused with EINVAL.
        if unsafe { libc::setrlimit(resource as _, &lim) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err((
                FailureKind::Internal,
                format!("rlimit {resource} ({soft}/{hard}): {e}"),
            ));
        }
    }
    Ok(())
}

/// Finds `argv[0]` as a shell does (a name with a `/` as it is, else each `PATH` entry in
/// turn) and execs it; returns only on failure.
pub(super) fn exec_program(
    req: &ExecRequest,
) -> Result<std::convert::Infallible, (FailureKind, String)> {
    use std::ffi::CString;
    let program = req.argv.first().map(String::as_str).unwrap_or_default();
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| {
            (
                FailureKind::Internal,
                format!("{program}: an argument or variable holds a NUL byte"),
            )
        })
    };
    let argv = req
        .argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env = req
        .env
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let candidates: Vec<String> = if program.contains('/') {
        vec![program.to_owned()]
    } else {
        let path = req
            .env
            .iter()
            .find_map(|kv| kv.strip_prefix("PATH="))
            .unwrap_or_default();
        path.split(':')
            .map(|dir| {
                let dir = if dir.is_empty() { "." } else { dir };
                format!("{dir}/{program}")
            })
            .collect()
    };
    let mut denied = false;
    for c in &candidates {
        let file = cstr(c)?;
        match nix::unistd::execve(&file, &argv, &env) {
            Err(nix::Error::ENOENT | nix::Error::ENOTDIR) => {}
            Err(nix::Error::EACCES) => denied = true,
            Err(nix::Error::ENOEXEC) => {
                return Err((
                    FailureKind::NotExecutable,
                    format!("{program}: exec format error"),
                ))
            }
            Err(e) => return Err((FailureKind::Internal, format!("{program}: {e}"))),
            Ok(never) => match never {},
        }
    }
    Err(if denied {
        (
            FailureKind::NotExecutable,
            format!("{program}: permission denied"),
        )
    } else {
        (
            FailureKind::CommandNotFound,
            format!("{program}: command not found"),
        )
    })
}
