//! One task's life on the host side: start the VMM, wait for the agent's hello, send the
//! run spec, relay frames until the process's report, tear the VM down.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use guest_agent::{Frame, Message, RunSpec, HOST_PORT, PROTOCOL_VERSION};

use super::control::{FinishOnDrop, TaskControl};
use super::result::{Output, TaskEnd, TaskEvent, TaskResult, Timings};
use super::snapshot::Snapshot;
use super::vmm_process::{self, console_tail, StartFrom};

/// SIGTERM: what a timeout sends first.
const SIGTERM: i32 = 15;

/// How long a restored VM has to say hello before the launcher falls back to a boot.
const RESTORE_PATIENCE: Duration = Duration::from_secs(30);

/// Where the pieces of a microVM are and how big it is.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    /// The agent's initramfs (see [`super::build_agent_initramfs`]).
    pub initrd: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Read-only root filesystem image (EROFS or ext4).
    pub rootfs: PathBuf,
    /// Scratch directory for this task's sockets and console log.
    pub work_dir: PathBuf,
    pub timeout: Option<Duration>,
    /// After a timeout's SIGTERM, how long the process has before its VM is ended.
    pub stop_timeout: Duration,
    /// Longest wait for the agent's hello (a full boot on an emulating host is slow).
    pub boot_timeout: Duration,
    /// Start from this snapshot (of a booted VM of the same shape whose agent waits for
    /// work) instead of booting; a restore that fails falls back to a boot.
    pub snapshot: Option<Snapshot>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot set up the task directory {path}: {source}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {vmm}: {source}")]
    Spawn {
        vmm: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VM ended before its agent said hello (skiff-vmm {status}); console ends with:\n{console}")]
    NoHello { status: String, console: String },
    #[error("the agent did not say hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("the agent speaks protocol {agent}, we speak {ours}")]
    Protocol { agent: u32, ours: u32 },
    #[error("agent connection: {0}")]
    Connection(String),
}

/// Runs `spec` in a new microVM. `on_event` hears each phase and the output as it arrives;
/// `control` may signal the process, feed its stdin or end the VM from other threads.
pub fn run_task(
    cfg: &LaunchConfig,
    spec: &RunSpec,
    control: &TaskControl,
    on_event: &mut dyn FnMut(TaskEvent<'_>),
) -> Result<TaskResult, LaunchError> {
    let _finish = FinishOnDrop(control);
    let wd = |source| LaunchError::WorkDir {
        path: cfg.work_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&cfg.work_dir).map_err(wd)?;
    let uds = cfg.work_dir.join("v.sock");
    let agent_sock = PathBuf::from(format!("{}_{HOST_PORT}", uds.display()));
    let _ = std::fs::remove_file(&agent_sock);
    let listener = UnixListener::bind(&agent_sock).map_err(wd)?;
    let _unlink = RemoveOnDrop(agent_sock);
    let start = Instant::now();
    let ms = |t: Instant| t.duration_since(start).as_millis() as u64;
    let stopped = |end, mut timings: Timings| {
        control.finish();
        timings.vm_stopped_ms = ms(Instant::now());
        Ok(TaskResult { end, timings })
    };
    let attempt =
        |from: StartFrom<'_>, patience: Duration, on_event: &mut dyn FnMut(TaskEvent<'_>)| {
            start_vm(cfg, from, &listener, &uds, control, on_event, patience)
        };
    let connected = match &cfg.snapshot {
        Some(snap) => match attempt(StartFrom::Snapshot(snap), RESTORE_PATIENCE, on_event) {
            Ok(c) => c,
            Err(e) if !control.was_killed() => {
                let bad_snapshot = matches!(&e, LaunchError::NoHello { status, .. } if status.contains("exit status: 2"));
                let reason = e.to_string();
                tracing::warn!(
                    "restoring the snapshot failed ({reason}); falling back to a full boot"
                );
                on_event(TaskEvent::RestoreFailed {
                    reason: &reason,
                    bad_snapshot,
                });
                attempt(
                    StartFrom::Boot { api_sock: None },
                    cfg.boot_timeout,
                    on_event,
                )?
            }
            Err(_) => None,
        },
        None => attempt(
            StartFrom::Boot { api_sock: None },
            cfg.boot_timeout,
            on_event,
        )?,
    };
    let Some(Connected {
        mut stream,
        mut reader,
        guest,
    }) = connected
    else {
        return stopped(TaskEnd::Killed, Timings::default());
    };
    let conn_err = |e: &dyn std::fmt::Display| LaunchError::Connection(e.to_string());
    let mut timings = Timings {
        agent_ready_ms: ms(Instant::now()),
        guest,
        ..Default::default()
    };
    on_event(TaskEvent::AgentReady);
    let mut spec = spec.clone();
    // The guest learns the time and gets fresh entropy with every task: a VM restored from
    // a snapshot would otherwise run with the snapshot's clock and random state.
    spec.wall_clock_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    spec.entropy = host_entropy().map_err(|e| conn_err(&format!("host entropy: {e}")))?;
    let run = Frame::Control(Message::Run(spec));
    stream
        .write_all(&run.encode().map_err(|e| conn_err(&e))?)
        .map_err(|e| conn_err(&e))?;
    control.attach_writer(stream.try_clone().map_err(|e| conn_err(&e))?);

    let mut deadline = cfg.timeout.map(|t| Instant::now() + t);
    let mut timed_out = false;
    let end = loop {
        let frame = match reader.next(&mut stream, deadline) {
            Ok(Some(f)) => f,
            Ok(None) if control.was_killed() => break TaskEnd::Killed,
            Ok(None) => {
                break TaskEnd::Lost("the agent closed the connection without a report".into())
            }
            Err(e) if e.kind() == ErrorKind::TimedOut && !timed_out => {
                // Ask first, as `docker stop` does; end the VM if that is not heeded.
                timed_out = true;
                let _ = control.signal(SIGTERM);
                deadline = Some(Instant::now() + cfg.stop_timeout);
                continue;
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                break TaskEnd::TimedOut(cfg.timeout.unwrap_or_default())
            }
            Err(_) if control.was_killed() => break TaskEnd::Killed,
            Err(e) => break TaskEnd::Lost(format!("agent connection: {e}")),
        };
        match frame {
            Frame::Stdout(b) => on_event(TaskEvent::Output(Output::Stdout, &b)),
            Frame::Stderr(b) => on_event(TaskEvent::Output(Output::Stderr, &b)),
            Frame::Control(Message::StdinConsumed { bytes }) => control.stdin_consumed(bytes),
            Frame::Control(Message::Started { exec_ms, .. }) => {
                tracing::debug!(
                    "agent: hello at guest {} ms, exec at guest {exec_ms} ms ({} ms in the guest)",
                    timings.guest.connected_ms,
                    exec_ms.saturating_sub(timings.guest.connected_ms)
                );
                timings.process_started_ms = Some(ms(Instant::now()));
                on_event(TaskEvent::ProcessStarted);
            }
            Frame::Control(Message::Exited {
                exit_code,
                signal,
                cpu_user_ms,
                cpu_system_ms,
                max_rss_kib,
                oom_killed,
                ..
            }) => {
                timings.process_exited_ms = Some(ms(Instant::now()));
                on_event(TaskEvent::ProcessExited);
                if timed_out {
                    break TaskEnd::TimedOut(cfg.timeout.unwrap_or_default());
                }
                break TaskEnd::Exited {
                    exit_code,
                    signal,
                    cpu_user_ms,
                    cpu_system_ms,
                    max_rss_kib,
                    oom_killed,
                };
            }
            Frame::Control(Message::Failed {
                kind,
                message,
                exit_code,
            }) => {
                break TaskEnd::Failed {
                    kind,
                    message,
                    exit_code,
                }
            }
            other => tracing::debug!("ignoring agent frame {other:?}"),
        }
    };
    // The agent powers the VM off after its report; give it a moment, then make sure.
    if matches!(end, TaskEnd::Exited { .. } | TaskEnd::Failed { .. }) {
        let grace = Instant::now() + Duration::from_secs(30);
        while Instant::now() < grace && control.try_wait().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stopped(end, timings)
}

/// The agent's connection once it has said hello.
struct Connected {
    stream: UnixStream,
    reader: FrameBuf,
    guest: guest_agent::BootTimings,
}

/// Starts the VM and waits for the agent's hello (the readiness signal). `Ok(None)`: the
/// VM was ended on request meanwhile.
fn start_vm(
    cfg: &LaunchConfig,
    from: StartFrom<'_>,
    listener: &UnixListener,
    uds: &std::path::Path,
    control: &TaskControl,
    on_event: &mut dyn FnMut(TaskEvent<'_>),
    patience: Duration,
) -> Result<Option<Connected>, LaunchError> {
    let deadline = Instant::now() + patience;
    let wd = |source| LaunchError::WorkDir {
        path: cfg.work_dir.clone(),
        source,
    };
    let console = cfg.work_dir.join("console.log");
    let vmm_log_path = cfg.work_dir.join("vmm.log");
    let vmm_log = std::fs::File::create(&vmm_log_path).map_err(wd)?;
    let from_snapshot = matches!(from, StartFrom::Snapshot(_));
    let child = vmm_process::spawn(cfg, from, uds, &console, vmm_log).map_err(|source| {
        LaunchError::Spawn {
            vmm: cfg.vmm.clone(),
            source,
        }
    })?;
    on_event(TaskEvent::VmStarted {
        pid: child.id(),
        from_snapshot,
    });
    control.attach_child(child);
    // The agent dials us when it is ready: wait for that connection, the VM's end, or
    // the deadline, whichever comes first.
    let mut stream = loop {
        let ready = wait_readable(listener, Duration::from_millis(50))
            .map_err(|e| LaunchError::Connection(format!("waiting for the agent: {e}")))?;
        if ready {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(LaunchError::Connection(e.to_string())),
            }
        }
        if let Some(status) = control.try_wait() {
            if control.was_killed() {
                return Ok(None);
            }
            let err = std::fs::read_to_string(&vmm_log_path).unwrap_or_default();
            let err = err.trim();
            return Err(LaunchError::NoHello {
                status: if err.is_empty() {
                    status.to_string()
                } else {
                    format!("{status}: {err}")
                },
                console: console_tail(&console),
            });
        }
        if Instant::now() > deadline {
            // Ends this VM; a fallback attaches its own.
            if let Some(pid) = control
                .vmm_pid()
                .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            while control.try_wait().is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            return Err(LaunchError::HelloTimeout(patience));
        }
    };
    let conn_err = |e: &dyn std::fmt::Display| LaunchError::Connection(e.to_string());
    let mut reader = FrameBuf::default();
    let hello = reader
        .next(&mut stream, Some(deadline))
        .map_err(|e| conn_err(&e))?;
    match hello {
        Some(Frame::Control(Message::Hello {
            protocol_version,
            timings,
            ..
        })) => {
            if protocol_version != PROTOCOL_VERSION {
                return Err(LaunchError::Protocol {
                    agent: protocol_version,
                    ours: PROTOCOL_VERSION,
                });
            }
            Ok(Some(Connected {
                stream,
                reader,
                guest: timings,
            }))
        }
        other => Err(LaunchError::Connection(format!(
            "expected hello, got {other:?}"
        ))),
    }
}

/// Boots a VM with a control socket for [`super::build_snapshot`] and waits for its
/// agent's hello; the connection is returned so that it stays open.
pub(super) fn start_vm_for_snapshot(
    cfg: &LaunchConfig,
    listener: &UnixListener,
    uds: &std::path::Path,
    api_sock: &std::path::Path,
    control: &TaskControl,
) -> Result<UnixStream, LaunchError> {
    let from = StartFrom::Boot {
        api_sock: Some(api_sock),
    };
    match start_vm(
        cfg,
        from,
        listener,
        uds,
        control,
        &mut |_| {},
        cfg.boot_timeout,
    )? {
        Some(c) => Ok(c.stream),
        None => Err(LaunchError::Connection("the VM was ended".into())),
    }
}

/// 32 bytes from the host's CRNG.
fn host_entropy() -> std::io::Result<Vec<u8>> {
    let mut b = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// Waits until `fd` is readable or `timeout` passes.
fn wait_readable(fd: &impl AsFd, timeout: Duration) -> std::io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let t = Timespec::try_from(timeout).unwrap_or(Timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    });
    match poll(&mut fds, Some(&t)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Frames from a stream, with a deadline.
#[derive(Default)]
struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    fn next(
        &mut self,
        s: &mut UnixStream,
        deadline: Option<Instant>,
    ) -> std::io::Result<Option<Frame>> {
        loop {
            match Frame::decode_from(&self.buf) {
                Ok(Some((f, n))) => {
                    self.buf.drain(..n);
                    return Ok(Some(f));
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::new(ErrorKind::InvalidData, e.to_string())),
            }
            let wait = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ErrorKind::TimedOut.into());
                    }
                    Some(left)
                }
                None => None,
            };
            s.set_read_timeout(wait)?;
            let mut b = [0u8; 64 * 1024];
            match s.read(&mut b) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(ErrorKind::TimedOut.into());
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
