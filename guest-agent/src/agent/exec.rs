//! Commands the host runs in a running task's container ([`Message::Exec`]): health checks
//! now. Each is forked from the agent into the task's cgroup and root, as the task's user,
//! in its working directory and environment; its output goes to a pipe the agent drains
//! (keeping the first [`MAX_EXEC_OUTPUT`] bytes), and its end is reported with
//! [`Message::ExecExited`]. One that runs past its timeout is killed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use guest_agent::{Message, MAX_EXECS, MAX_EXEC_OUTPUT, MAX_EXEC_TIMEOUT_MS};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::{ForkResult, Pid};

use super::helper::{exec_program, ExecRequest};
use super::rootfs::ROOT;
use super::system::boot_ms;

struct Running {
    id: u32,
    deadline_ms: u64,
    timed_out: bool,
    /// The read end of its stdout and stderr; `None` once it reached EOF.
    output: Option<File>,
    kept: Vec<u8>,
    /// Its exit status, once reaped (it is reported when its output is drained too).
    status: Option<i32>,
}

/// The execs of one task.
pub struct Execs {
    /// As the task's own process was started: user, working directory, environment.
    base: ExecRequest,
    cgroup: Option<RawFd>,
    running: HashMap<i32, Running>,
}

impl Execs {
    pub fn new(base: ExecRequest, cgroup: Option<RawFd>) -> Self {
        Self {
            base,
            cgroup,
            running: HashMap::new(),
        }
    }

    /// Starts `argv`; an answer that cannot wait (too many at once, no command, a fork
    /// that failed) is returned at once.
    pub fn start(&mut self, id: u32, argv: Vec<String>, timeout_ms: u64) -> Option<Message> {
        let refuse = |message: String| {
            Some(Message::ExecExited {
                id,
                exit_code: 125,
                timed_out: false,
                output: message,
            })
        };
        if self.running.len() >= MAX_EXECS {
            return refuse(format!("{MAX_EXECS} commands already run in this task"));
        }
        if argv.first().is_none_or(|a| a.is_empty()) {
            return refuse("no command given".into());
        }
        let (read, write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => return refuse(format!("pipe: {e}")),
        };
        let req = ExecRequest {
            argv,
            stdin: false,
            ..self.base.clone()
        };
        // SAFETY: the agent is single-threaded, so the child holds no lock another thread
        // owned; it only makes system calls and execs or `_exit`s.
        match unsafe { nix::unistd::fork() } {
            Err(e) => refuse(format!("fork: {e}")),
            Ok(ForkResult::Child) => {
                drop(read);
                child(&req, self.cgroup, write)
            }
            Ok(ForkResult::Parent { child }) => {
                drop(write);
                let output = File::from(read);
                super::process::set_nonblocking(&output);
                let timeout = timeout_ms.clamp(1, MAX_EXEC_TIMEOUT_MS);
                self.running.insert(
                    child.as_raw(),
                    Running {
                        id,
                        deadline_ms: boot_ms() + timeout,
                        timed_out: false,
                        output: Some(output),
                        kept: Vec::new(),
                        status: None,
                    },
                );
                None
            }
        }
    }

    /// The output pipes to poll, with the pid each belongs to.
    pub fn outputs(&self) -> Vec<(i32, BorrowedFd<'_>)> {
        self.running
            .iter()
            .filter_map(|(pid, r)| r.output.as_ref().map(|o| (*pid, o.as_fd())))
            .collect()
    }

    /// Reads what exec `pid` wrote; the answer once it has ended and its output is done.
    pub fn read_output(&mut self, pid: i32) -> Option<Message> {
        let r = self.running.get_mut(&pid)?;
        let mut buf = [0u8; 4096];
        while let Some(o) = r.output.as_mut() {
            match o.read(&mut buf) {
                Ok(0) => r.output = None,
                Ok(n) => {
                    let room = MAX_EXEC_OUTPUT - r.kept.len();
                    r.kept.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => r.output = None,
            }
        }
        self.finished(pid)
    }

    /// Whether `pid` is one of these execs; records its status (an exit code as a shell
    /// gives it) and answers when its output is done.
    pub fn reaped(&mut self, pid: i32, status: i32) -> Option<Option<Message>> {
        let r = self.running.get_mut(&pid)?;
        r.status = Some(status);
        // Whatever is left in the pipe, unless a child of it still holds it open.
        Some(self.read_output(pid).or_else(|| self.close_if_done(pid)))
    }

    /// Once reaped, an exec whose output is still open (a background child of it holds
    /// the pipe) is answered without waiting for that child.
    fn close_if_done(&mut self, pid: i32) -> Option<Message> {
        let r = self.running.get_mut(&pid)?;
        if r.status.is_some() {
            r.output = None;
        }
        self.finished(pid)
    }

    fn finished(&mut self, pid: i32) -> Option<Message> {
        let r = self.running.get(&pid)?;
        let (Some(code), None) = (r.status, &r.output) else {
            return None;
        };
        let r = self.running.remove(&pid)?;
        Some(Message::ExecExited {
            id: r.id,
            exit_code: code,
            timed_out: r.timed_out,
            output: String::from_utf8_lossy(&r.kept).into_owned(),
        })
    }

    /// Kills the execs whose time is up (they are answered when reaped).
    pub fn expire(&mut self) {
        let now = boot_ms();
        for (pid, r) in &mut self.running {
            if r.status.is_none() && !r.timed_out && now >= r.deadline_ms {
                r.timed_out = true;
                let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }

    /// Milliseconds until the next exec's time is up.
    pub fn next_deadline_in(&self) -> Option<u64> {
        let now = boot_ms();
        self.running
            .values()
            .filter(|r| r.status.is_none() && !r.timed_out)
            .map(|r| r.deadline_ms.saturating_sub(now))
            .min()
    }

    /// Kills whatever still runs (the task has ended).
    pub fn kill_all(&mut self) {
        for pid in self.running.keys() {
            let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
}

/// The forked child: into the task's cgroup and root, output to the pipe, the task's user;
/// exec. On failure the message goes to the pipe and the status is 126/127 as a shell's.
fn child(req: &ExecRequest, cgroup: Option<RawFd>, out: OwnedFd) -> ! {
    let failure = (|| -> Result<std::convert::Infallible, (i32, String)> {
        let fail = |what: &str, e: nix::Error| (125, format!("{what}: {e}"));
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
            .map_err(|e| fail("signal mask", e))?;
        if let Some(fd) = cgroup {
            // SAFETY: the agent keeps cgroup.procs open while the task runs.
            let _ = nix::unistd::write(unsafe { BorrowedFd::borrow_raw(fd) }, b"0");
        }
        let null = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDWR,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| fail("/dev/null", e))?;
        nix::unistd::dup2_stdin(&null)
            .and_then(|()| nix::unistd::dup2_stdout(&out))
            .and_then(|()| nix::unistd::dup2_stderr(&out))
            .map_err(|e| fail("stdio", e))?;
        nix::unistd::chroot(ROOT).map_err(|e| fail("chroot", e))?;
        nix::unistd::chdir(req.cwd.as_str())
            .map_err(|e| fail(&format!("working directory {}", req.cwd), e))?;
        let gid = nix::unistd::Gid::from_raw(req.gid);
        let user = |e| fail(&format!("user {}:{}", req.uid, req.gid), e);
        super::helper::set_rlimits(&req.rlimits).map_err(|(kind, m)| (kind.exit_code(), m))?;
        nix::unistd::setgroups(&[gid]).map_err(user)?;
        nix::unistd::setgid(gid).map_err(user)?;
        nix::unistd::setuid(nix::unistd::Uid::from_raw(req.uid)).map_err(user)?;
        exec_program(req).map_err(|(kind, m)| (kind.exit_code(), m))
    })();
    let (code, message) = match failure {
        Ok(never) => match never {},
        Err(f) => f,
    };
    // Stderr is the pipe by now, or the console if it could not be set up.
    eprintln!("{message}");
    // SAFETY: _exit ends the forked child without the parent's exit handlers.
    unsafe { libc::_exit(code) }
}
