//! Runs the container process: the exec helper (already chrooted into the prepared root,
//! see `helper`) gets the user, working directory and environment and execs, with stdio
//! on pipes; then one poll loop that streams stdout and stderr to the
//! host as raw frames, passes stdin and signals from the host, reaps every child (PID 1's
//! duty), and reports how the process ended once its output is drained.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;

use guest_agent::{
    ExitReport, FailureKind, Frame, FrameError, Message, RunSpec, MAX_OUTPUT_CHUNK,
    MIN_USAGE_INTERVAL_MS, RECORD_OPENS_MS, STDIN_WINDOW,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::cgroup;
use super::conn::Conn;
use super::exec::Execs;
use super::helper::{ExecRequest, Helper, Warm};
use super::opens::OpenRecorder;
use super::rootfs::{self, ROOT};
use super::system::boot_ms;
use super::user;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// On PVM hosts the guest kernel runs without XSAVE (PVM cannot emulate it), so it does not
/// preserve AVX register state across context switches, while user space still sees AVX in
/// the hardware's CPUID. glibc's AVX/EVEX string functions then corrupt data when processes
/// run side by side (measured: 11 of 30 `$(echo a | cat)` failed with SIGSEGV; 0 of 30 with
/// this). Keeping glibc on its SSE2 versions avoids it for glibc programs.
const PVM_GLIBC_TUNABLES: &str = "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2,-AVX512F,-AVX512VL,\
-AVX512BW,-AVX512DQ,-AVX,-AVX_Fast_Unaligned_Load,-ERMS,-FSRM,-Prefer_No_VZEROUPPER,-EVEX";

/// The VMM marks PVM hosts on the kernel command line (`skiff.pvm=1`).
fn pvm_host() -> bool {
    super::system::cmdline_value("skiff.pvm").as_deref() == Some("1")
}

/// How the run ended, for the host.
pub enum Outcome {
    Failed(FailureKind, String),
    Exited(Message),
}

/// A container root mounted and an exec helper waiting in it: made when the run spec
/// arrives, or before a warm snapshot (then restored with the VM).
pub struct ReadyRoot {
    helper: Helper,
    cgroup: Option<cgroup::TaskCgroup>,
}

impl ReadyRoot {
    /// Mounts the image on `disk` as the root, makes the task's cgroup and forks the exec
    /// helper into both (reading `warm` ahead); returns the bytes read ahead too.
    pub fn make(
        disk: &str,
        upper: rootfs::Upper<'_>,
        warm: &Warm,
    ) -> Result<(ReadyRoot, u64), (FailureKind, String)> {
        rootfs::mount_root(disk, upper)?;
        let cgroup = cgroup::TaskCgroup::create()
            .map_err(|e| eprintln!("skiff-agent: {e}; OOM kills will not be reported"))
            .ok();
        let procs = cgroup.as_ref().map(cgroup::TaskCgroup::procs_fd);
        let (helper, warmed) = Helper::fork(procs, warm)?;
        Ok((ReadyRoot { helper, cgroup }, warmed))
    }
}

fn key_of(kv: &str) -> &str {
    kv.split_once('=').map_or(kv, |(k, _)| k)
}

/// The spec's `KEY=VALUE` pairs as a process environment: one entry per key (a later one
/// replaces an earlier one in its place), and `KEY` alone as `KEY=`.
fn environment(pairs: &[String]) -> Vec<String> {
    let mut env: Vec<String> = Vec::with_capacity(pairs.len());
    for kv in pairs {
        let kv = if kv.contains('=') {
            kv.clone()
        } else {
            format!("{kv}=")
        };
        match env.iter_mut().find(|e| key_of(e) == key_of(&kv)) {
            Some(e) => *e = kv,
            None => env.push(kv),
        }
    }
    env
}

/// What the helper is to exec for `spec`: its user resolved against the image, its working
/// directory checked, its environment completed.
fn exec_request(spec: &RunSpec) -> Result<ExecRequest, (FailureKind, String)> {
    if spec.argv.first().is_none_or(|p| p.is_empty()) {
        return Err((FailureKind::CommandNotFound, "no command given".into()));
    }
    let ids = user::resolve(
        &spec.user,
        &rootfs::read_root_file("/etc/passwd"),
        &rootfs::read_root_file("/etc/group"),
    )
    .map_err(|m| (FailureKind::BadUser, m))?;
    let cwd = if spec.working_dir.is_empty() {
        "/"
    } else {
        spec.working_dir.as_str()
    };
    if !std::path::Path::new(&format!("{ROOT}{cwd}")).is_dir() {
        return Err((
            FailureKind::BadWorkingDir,
            format!("working directory {cwd} does not exist in the image"),
        ));
    }
    let mut env = environment(&spec.env);
    let has = |env: &[String], key: &str| env.iter().any(|kv| key_of(kv) == key);
    if !has(&env, "PATH") {
        env.push(DEFAULT_PATH.to_owned());
    }
    if pvm_host() && !has(&env, "GLIBC_TUNABLES") {
        env.push(PVM_GLIBC_TUNABLES.to_owned());
    }
    if !has(&env, "HOME") {
        env.push(if ids.uid == 0 { "HOME=/root" } else { "HOME=/" }.to_owned());
    }
    let mut rlimits = Vec::with_capacity(spec.rlimits.len());
    for l in &spec.rlimits {
        let resource = l.resource().ok_or_else(|| {
            (
                FailureKind::Internal,
                format!("unknown resource limit {:?}", l.name),
            )
        })?;
        rlimits.push((resource, l.soft, l.hard));
    }
    Ok(ExecRequest {
        argv: spec.argv.clone(),
        env,
        cwd: cwd.to_owned(),
        uid: ids.uid,
        gid: ids.gid,
        stdin: spec.stdin,
        rlimits,
    })
}

/// The process's stdin: bytes from the host wait here until the pipe takes them, so a
/// process that does not read its stdin never blocks the agent's loop. The host sends at
/// most [`STDIN_WINDOW`] bytes ahead of what we report consumed, which bounds `pending`.
struct StdinPipe {
    pipe: Option<std::fs::File>,
    pending: std::collections::VecDeque<u8>,
    close_when_drained: bool,
    /// Bytes written to the pipe (or dropped) and not yet reported to the host.
    consumed: u64,
}

/// Above this many pending bytes (a host that ignores the window) the agent stops reading
/// from the host.
const STDIN_BACKLOG: usize = STDIN_WINDOW as usize;

/// Consumption is reported in steps of this size (or when nothing is left pending).
const CONSUMED_REPORT_STEP: u64 = 64 * 1024;

impl StdinPipe {
    fn new(pipe: Option<std::fs::File>) -> Self {
        if let Some(p) = &pipe {
            set_nonblocking(p);
        }
        Self {
            pipe,
            pending: Default::default(),
            close_when_drained: false,
            consumed: 0,
        }
    }

    fn wants_write(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.pipe
            .as_ref()
            .filter(|_| !self.pending.is_empty())
            .map(|p| p.as_fd())
    }

    /// More pending than the window allows: only a host that ignores the window gets
    /// here. A host that keeps to it can have exactly a window's worth pending (a process
    /// that stopped reading), and the agent must go on reading its frames then, or a
    /// signal queued behind the stdin would never arrive.
    fn is_backed_up(&self) -> bool {
        self.pipe.is_some() && self.pending.len() > STDIN_BACKLOG
    }

    fn push(&mut self, data: &[u8]) {
        if self.pipe.is_some() {
            self.pending.extend(data);
            self.flush();
        } else {
            self.consumed += data.len() as u64;
        }
    }

    /// Consumed bytes worth telling the host about (a step's worth, or all once drained).
    fn take_consumed(&mut self) -> Option<u64> {
        let due =
            self.consumed >= CONSUMED_REPORT_STEP || (self.consumed > 0 && self.pending.is_empty());
        due.then(|| std::mem::take(&mut self.consumed))
    }

    fn close_when_drained(&mut self) {
        self.close_when_drained = true;
        self.flush();
    }

    /// Writes what the pipe takes now; a closed pipe (the process exited or closed its
    /// stdin) drops the rest, as a shell pipeline would.
    fn flush(&mut self) {
        let Some(p) = self.pipe.as_mut() else {
            return;
        };
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            match p.write(front) {
                Ok(n) => {
                    self.pending.drain(..n);
                    self.consumed += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.pipe = None;
                    self.consumed += self.pending.len() as u64;
                    self.pending.clear();
                    return;
                }
            }
        }
        if self.close_when_drained {
            self.pipe = None;
        }
    }
}

pub(super) fn set_nonblocking(fd: &impl AsFd) {
    if let Ok(flags) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL) {
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags));
    }
}

/// How long the loop waits for the task's children after its process has exited, while
/// they keep its output pipes open.
const ORPHAN_GRACE_MS: u64 = 2000;

/// SIGCHLD as a readable descriptor, so that the loop sleeps in `poll` until output, a host
/// frame or a child's end wakes it. SIGCHLD is blocked in the agent (pending signals wait
/// for the descriptor); the spawned child empties its mask before it execs. Measured
/// on PVM: a 50 ms poll timeout instead kept the guest's one vCPU busy all the time the
/// task ran (every wake-up is emulated kernel work), which slowed the task itself.
fn child_exits() -> Option<SignalFd> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()
        .and_then(|()| SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC))
        .map_err(|e| eprintln!("skiff-agent: SIGCHLD descriptor: {e}; polling for exits"))
        .ok()
}

/// Ends a recording of opens, if one runs, and tells the host what it found: once, at the
/// process's exit or when the recording's time is up, whichever comes first.
fn report_opens(recorder: &mut Option<OpenRecorder>, conn: &mut Conn) -> Result<(), FrameError> {
    match recorder.take() {
        Some(r) => conn.send(&Frame::Control(Message::Opened { paths: r.finish() })),
        None => Ok(()),
    }
}

/// Runs the spec (which arrived at guest time `spec_ms`) to the end, streaming over `conn`,
/// in `ready` (a warm snapshot's root) or in a root made now (over the scratch disk
/// mounted on `scratch` before a build shape's snapshot, if the spec asks for that one).
pub fn run(
    spec: &RunSpec,
    spec_ms: u64,
    ready: Option<ReadyRoot>,
    scratch: Option<&str>,
    conn: &mut Conn,
) -> Result<Outcome, FrameError> {
    let made = match ready {
        Some(_) if !spec.scratch_disk.is_empty() => Err((
            FailureKind::Internal,
            "a prepared root writes to memory; a scratch disk needs a root made for it".into(),
        )),
        Some(r) => rootfs::resize_upper(spec.upper_size_mib).map(|()| r),
        None => rootfs::Upper::of(spec, scratch).and_then(|upper| {
            ReadyRoot::make(&spec.image_disk, upper, &Warm::default()).map(|(r, _)| r)
        }),
    };
    let ReadyRoot { helper, cgroup } =
        match made.and_then(|r| rootfs::personalize(spec).map(|()| r)) {
            Ok(r) => r,
            Err((kind, msg)) => return Ok(Outcome::Failed(kind, msg)),
        };
    let exits = child_exits();
    // Started after the task's own files went in, so only the process's opens count.
    let mut recorder = spec
        .record_opens
        .then(|| OpenRecorder::start(rootfs::ROOT))
        .and_then(|r| {
            r.map_err(|e| eprintln!("skiff-agent: not noting opens: {e}"))
                .ok()
        });
    let prepared_ms = boot_ms();
    let req = match exec_request(spec) {
        Ok(r) => r,
        Err((kind, msg)) => return Ok(Outcome::Failed(kind, msg)),
    };
    let spawned = match helper.exec(&req) {
        Ok(c) => c,
        Err((kind, msg)) => return Ok(Outcome::Failed(kind, msg)),
    };
    let mut execs = Execs::new(req, cgroup.as_ref().map(cgroup::TaskCgroup::procs_fd));
    let usage_every =
        (spec.usage_interval_ms > 0).then(|| spec.usage_interval_ms.max(MIN_USAGE_INTERVAL_MS));
    let mut last_usage = 0u64;
    let pid = spawned.pid;
    let exec_ms = boot_ms();
    conn.send(&Frame::Control(Message::Started {
        pid,
        spec_ms,
        prepared_ms,
        exec_ms,
    }))?;
    let mut stdout = Some(spawned.stdout);
    let mut stderr = Some(spawned.stderr);
    let mut stdin = StdinPipe::new(spawned.stdin);
    for f in stdout.iter().chain(stderr.iter()) {
        set_nonblocking(f);
    }
    let mut status: Option<std::process::ExitStatus> = None;
    let mut buf = vec![0u8; MAX_OUTPUT_CHUNK];
    let mut exited_at = 0;
    while stdout.is_some() || stderr.is_some() || status.is_none() {
        let mut fds: Vec<PollFd> = Vec::new();
        let out_at = stdout.as_ref().map(|s| {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let err_at = stderr.as_ref().map(|s| {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let stdin_at = stdin.wants_write().map(|fd| {
            fds.push(PollFd::new(fd, PollFlags::POLLOUT));
            fds.len() - 1
        });
        // While the process does not drain its stdin, stop taking more from the host:
        // the host's writes then block instead of this agent's memory growing.
        let conn_at = (!stdin.is_backed_up()).then(|| {
            fds.push(PollFd::new(conn.get_ref().as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let exits_at = exits.as_ref().map(|e| {
            fds.push(PollFd::new(e.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let exec_outputs = execs.outputs();
        let execs_at = fds.len();
        for (_, fd) in &exec_outputs {
            fds.push(PollFd::new(*fd, PollFlags::POLLIN));
        }
        let timeout = match (status, &exits) {
            // The orphans' grace runs out even if nothing else happens.
            (Some(_), _) => {
                let left = (exited_at + ORPHAN_GRACE_MS).saturating_sub(boot_ms());
                PollTimeout::from(left.clamp(1, ORPHAN_GRACE_MS) as u16)
            }
            // So does a recording of opens.
            (None, Some(_)) if recorder.is_some() => {
                let left = (exec_ms + RECORD_OPENS_MS).saturating_sub(boot_ms());
                PollTimeout::from(left.clamp(1, u16::MAX as u64) as u16)
            }
            (None, Some(_)) => PollTimeout::NONE,
            // Without the descriptor, exits are polled.
            (None, None) => PollTimeout::from(50u16),
        };
        // An exec's time running out wakes the loop too, and so does a usage report.
        let next_usage = usage_every.map(|every| (last_usage + every).saturating_sub(boot_ms()));
        let wake = match (execs.next_deadline_in(), next_usage) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = match wake {
            Some(ms) => {
                let ms = PollTimeout::from(ms.clamp(1, u16::MAX as u64) as u16);
                if timeout == PollTimeout::NONE {
                    ms
                } else {
                    timeout.min(ms)
                }
            }
            None => timeout,
        };
        // Frames that came in the same read as the run spec (or an earlier frame) are
        // already buffered: the socket will not wake the poll for them.
        let timeout = if conn.has_buffered_frame() {
            PollTimeout::ZERO
        } else {
            timeout
        };
        let _ = poll(&mut fds, timeout);
        let ready = |at: Option<usize>| {
            at.and_then(|i| fds[i].revents())
                .is_some_and(|r| !r.is_empty())
        };
        let (out_ready, err_ready, stdin_ready, conn_ready, exits_ready) = (
            ready(out_at),
            ready(err_at),
            ready(stdin_at),
            ready(conn_at),
            ready(exits_at),
        );
        let execs_ready: Vec<i32> = exec_outputs
            .iter()
            .enumerate()
            .filter(|(i, _)| ready(Some(execs_at + i)))
            .map(|(_, (p, _))| *p)
            .collect();
        drop(fds);
        drop(exec_outputs);
        for p in execs_ready {
            if let Some(answer) = execs.read_output(p) {
                conn.send(&Frame::Control(answer))?;
            }
        }
        execs.expire();
        if let (Some(every), Some(cg), None) = (usage_every, &cgroup, status) {
            let now = boot_ms();
            if now >= last_usage + every {
                last_usage = now;
                if let Some(cpu_usec) = cg.cpu_usec() {
                    conn.send(&Frame::Control(Message::Usage {
                        cpu_usec,
                        at_ms: now,
                    }))?;
                }
            }
        }
        if exits_ready {
            // Drained only: waitpid below reaps whatever ended, however many signals merged.
            while let Some(e) = &exits {
                if !matches!(e.read_signal(), Ok(Some(_))) {
                    break;
                }
            }
        }
        for (stream, is_out, r) in [
            (&mut stdout, true, out_ready),
            (&mut stderr, false, err_ready),
        ] {
            let Some(s) = stream.as_mut().filter(|_| r) else {
                continue;
            };
            match s.read(&mut buf) {
                Ok(0) => *stream = None,
                Ok(n) => {
                    let data = buf[..n].to_vec();
                    conn.send(&if is_out {
                        Frame::Stdout(data)
                    } else {
                        Frame::Stderr(data)
                    })?;
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(_) => *stream = None,
            }
        }
        if stdin_ready {
            stdin.flush();
        }
        if let Some(bytes) = stdin.take_consumed() {
            conn.send(&Frame::Control(Message::StdinConsumed { bytes }))?;
        }
        if conn_ready {
            conn.fill()?;
        }
        if conn_ready || conn.has_buffered_frame() {
            while let Some(frame) = conn.next_buffered()? {
                match frame {
                    Frame::Control(Message::Signal { signal }) => {
                        if let Ok(sig) = Signal::try_from(signal) {
                            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
                        }
                    }
                    Frame::Stdin(data) => stdin.push(&data),
                    Frame::StdinEof => stdin.close_when_drained(),
                    Frame::Control(Message::Exec {
                        id,
                        argv,
                        timeout_ms,
                    }) => {
                        let answer = if status.is_some() {
                            Some(Message::ExecExited {
                                id,
                                exit_code: 125,
                                timed_out: false,
                                output: "the task's process has ended".into(),
                            })
                        } else {
                            execs.start(id, argv, timeout_ms)
                        };
                        if let Some(a) = answer {
                            conn.send(&Frame::Control(a))?;
                        }
                    }
                    _ => {}
                }
            }
            if let Some(bytes) = stdin.take_consumed() {
                conn.send(&Frame::Control(Message::StdinConsumed { bytes }))?;
            }
        }
        // Reap everything: the task's process and any orphan reparented to us.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) if p.as_raw() as u32 == pid => {
                    status = Some(std::process::ExitStatus::from_raw(code << 8));
                    exited_at = boot_ms();
                }
                Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() as u32 == pid => {
                    status = Some(std::process::ExitStatus::from_raw(sig as i32));
                    exited_at = boot_ms();
                }
                Ok(WaitStatus::Exited(p, code)) => {
                    if let Some(Some(answer)) = execs.reaped(p.as_raw(), code) {
                        conn.send(&Frame::Control(answer))?;
                    }
                }
                Ok(WaitStatus::Signaled(p, sig, _)) => {
                    if let Some(Some(answer)) = execs.reaped(p.as_raw(), 128 + sig as i32) {
                        conn.send(&Frame::Control(answer))?;
                    }
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if status.is_some() || boot_ms() >= exec_ms + RECORD_OPENS_MS {
            report_opens(&mut recorder, conn)?;
        }
        // Once the process is gone, background children that keep the pipes open must not
        // hold the task forever: give them a moment, then stop reading.
        if status.is_some() && boot_ms() >= exited_at + ORPHAN_GRACE_MS {
            break;
        }
    }
    execs.kill_all();
    report_opens(&mut recorder, conn)?;
    let status = status.unwrap_or_else(|| std::process::ExitStatus::from_raw(0));
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).ok();
    let ms = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1000 + t.tv_usec() as u64 / 1000;
    let signal = status.signal();
    Ok(Outcome::Exited(Message::Exited(ExitReport {
        exit_code: status.code().unwrap_or_else(|| 128 + signal.unwrap_or(0)),
        signal,
        cpu_user_ms: usage.as_ref().map_or(0, |u| ms(u.user_time())),
        cpu_system_ms: usage.as_ref().map_or(0, |u| ms(u.system_time())),
        max_rss_kib: usage.as_ref().map_or(0, |u| u.max_rss() as u64),
        exited_ms: exited_at,
        oom_killed: cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_has_one_entry_per_key_the_last_one_winning() {
        let pairs: Vec<String> = ["PATH=/a", "A=1", "FLAG", "PATH=/b", "B=x=y"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(environment(&pairs), ["PATH=/b", "A=1", "FLAG=", "B=x=y"]);
    }
}
