use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guest_agent::{BootTimings, FailureKind, Frame, Message, RunSpec, HOST_PORT, PROTOCOL_VERSION};

/// Where the pieces of a microVM are and how big it is.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    /// The agent's initramfs (see [`build_agent_initramfs`]).
    pub initrd: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Read-only root filesystem image (EROFS or ext4).
    pub rootfs: PathBuf,
    /// Scratch directory for this task's sockets and console log.
    pub work_dir: PathBuf,
    pub timeout: Option<Duration>,
    /// Longest wait for the agent's hello (a full boot on an emulating host is slow).
    pub boot_timeout: Duration,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// Milliseconds from the VMM's start (host clock) to each phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    pub agent_ready_ms: u64,
    pub process_started_ms: Option<u64>,
    pub process_exited_ms: Option<u64>,
    pub vm_stopped_ms: u64,
    /// The agent's own view (guest clock from kernel start).
    pub guest: BootTimings,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TaskEnd {
    /// The process ran and ended.
    Exited {
        exit_code: i32,
        signal: Option<i32>,
        cpu_user_ms: u64,
        cpu_system_ms: u64,
        max_rss_kib: u64,
    },
    /// The process never started.
    Failed {
        kind: FailureKind,
        message: String,
        exit_code: i32,
    },
    /// It ran past its timeout and the VM was ended.
    TimedOut(Duration),
    /// The VM or the agent went away without a report.
    Lost(String),
}

impl TaskEnd {
    /// The exit code `skiff run` exits with.
    pub fn exit_code(&self) -> i32 {
        match self {
            TaskEnd::Exited { exit_code, .. } | TaskEnd::Failed { exit_code, .. } => *exit_code,
            TaskEnd::TimedOut(_) => 124,
            TaskEnd::Lost(_) => 125,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    pub end: TaskEnd,
    pub timings: Timings,
}

/// Kills and reaps the VMM when dropped, whatever path got us there.
struct VmGuard(Child);

impl Drop for VmGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Runs `spec` in a new microVM; `on_output` gets the process's output as it arrives.
pub fn run_task(
    cfg: &LaunchConfig,
    spec: &RunSpec,
    on_output: &mut dyn FnMut(Output, &[u8]),
) -> Result<TaskResult, LaunchError> {
    let wd = |source| LaunchError::WorkDir {
        path: cfg.work_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&cfg.work_dir).map_err(wd)?;
    let uds = cfg.work_dir.join("v.sock");
    let agent_sock = PathBuf::from(format!("{}_{HOST_PORT}", uds.display()));
    let _ = std::fs::remove_file(&agent_sock);
    let listener = UnixListener::bind(&agent_sock).map_err(wd)?;
    listener.set_nonblocking(true).map_err(wd)?;
    let console = cfg.work_dir.join("console.log");
    // The VMM's own log goes to a file: a pipe nobody reads would fill and stall it.
    let vmm_log_path = cfg.work_dir.join("vmm.log");
    let vmm_log = std::fs::File::create(&vmm_log_path).map_err(wd)?;

    let start = Instant::now();
    let child = Command::new(&cfg.vmm)
        .arg("--kernel")
        .arg(&cfg.kernel)
        .arg("--initrd")
        .arg(&cfg.initrd)
        .arg("--disk")
        .arg(format!("{},ro", cfg.rootfs.display()))
        .arg("--vsock")
        .arg(format!("cid=3,uds={}", uds.display()))
        .args(["--vcpus", &cfg.vcpus.to_string()])
        .args(["--memory-mib", &cfg.memory_mib.to_string()])
        .arg("--serial-out")
        .arg(&console)
        .args(["--cmdline", "quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(vmm_log)
        .spawn()
        .map_err(|source| LaunchError::Spawn {
            vmm: cfg.vmm.clone(),
            source,
        })?;
    let mut vm = VmGuard(child);
    let ms = |t: Instant| t.duration_since(start).as_millis() as u64;

    // The agent dials us when it is ready.
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(LaunchError::Connection(e.to_string())),
        }
        if let Ok(Some(status)) = vm.0.try_wait() {
            let err = std::fs::read_to_string(&vmm_log_path).unwrap_or_default();
            return Err(LaunchError::NoHello {
                status: format!(
                    "{status}{}",
                    if err.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", err.trim())
                    }
                ),
                console: console_tail(&console),
            });
        }
        if start.elapsed() > cfg.boot_timeout {
            return Err(LaunchError::HelloTimeout(cfg.boot_timeout));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let conn_err = |e: &dyn std::fmt::Display| LaunchError::Connection(e.to_string());
    stream.set_nonblocking(false).map_err(|e| conn_err(&e))?;
    let mut reader = FrameBuf::default();
    let hello = reader.next(&mut stream, None).map_err(|e| conn_err(&e))?;
    let mut timings = Timings {
        agent_ready_ms: ms(Instant::now()),
        ..Default::default()
    };
    match hello {
        Some(Frame::Control(Message::Hello {
            protocol_version,
            timings: guest,
            ..
        })) => {
            if protocol_version != PROTOCOL_VERSION {
                return Err(LaunchError::Protocol {
                    agent: protocol_version,
                    ours: PROTOCOL_VERSION,
                });
            }
            timings.guest = guest;
        }
        other => {
            return Err(LaunchError::Connection(format!(
                "expected hello, got {other:?}"
            )))
        }
    }
    let run = Frame::Control(Message::Run(spec.clone()));
    stream
        .write_all(&run.encode().map_err(|e| conn_err(&e))?)
        .map_err(|e| conn_err(&e))?;

    let deadline = cfg.timeout.map(|t| Instant::now() + t);
    let end = loop {
        let frame = match reader.next(&mut stream, deadline) {
            Ok(Some(f)) => f,
            Ok(None) => {
                break TaskEnd::Lost("the agent closed the connection without a report".into())
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                break TaskEnd::TimedOut(cfg.timeout.unwrap_or_default());
            }
            Err(e) => break TaskEnd::Lost(format!("agent connection: {e}")),
        };
        match frame {
            Frame::Stdout(b) => on_output(Output::Stdout, &b),
            Frame::Stderr(b) => on_output(Output::Stderr, &b),
            Frame::Control(Message::Started { .. }) => {
                timings.process_started_ms = Some(ms(Instant::now()))
            }
            Frame::Control(Message::Exited {
                exit_code,
                signal,
                cpu_user_ms,
                cpu_system_ms,
                max_rss_kib,
                ..
            }) => {
                timings.process_exited_ms = Some(ms(Instant::now()));
                break TaskEnd::Exited {
                    exit_code,
                    signal,
                    cpu_user_ms,
                    cpu_system_ms,
                    max_rss_kib,
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
    let grace = Instant::now()
        + Duration::from_secs(if matches!(end, TaskEnd::TimedOut(_)) {
            0
        } else {
            30
        });
    while Instant::now() < grace {
        if let Ok(Some(_)) = vm.0.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(vm);
    timings.vm_stopped_ms = ms(Instant::now());
    let _ = std::fs::remove_file(&agent_sock);
    Ok(TaskResult { end, timings })
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

/// Writes the agent's initramfs (the agent as /init) to `out`.
pub fn build_agent_initramfs(agent: &Path, out: &Path) -> std::io::Result<()> {
    let tmp = out.with_extension("tmp");
    let f = std::fs::File::create(&tmp)?;
    let mut w = vmm::initramfs::CpioWriter::new(std::io::BufWriter::new(f));
    let io = |e: vmm::initramfs::InitramfsError| std::io::Error::other(e.to_string());
    vmm::initramfs::write_skeleton(&mut w).map_err(io)?;
    w.host_file("init", agent).map_err(io)?;
    w.finish().map_err(io)?;
    std::fs::rename(tmp, out)
}
