//! Bringing a VM to the point where its agent has said hello: the socket the agent dials,
//! the VMM's start (boot or restore), and the wait for the hello (the readiness signal:
//! no polling of the guest), bounded by a deadline and by the VMM's end.

use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use guest_agent::{BootTimings, Frame, FramedConn, Message, HOST_PORT, PROTOCOL_VERSION};

use super::config::{LaunchConfig, Snapshot};
use super::control::TaskControl;
use super::error::LaunchError;
use super::jail::VmJail;
use super::result::TaskEvent;
use super::vmm_process::{self, console_tail, StartFrom, CONSOLE, VSOCK};

/// The host end of the agent's vsock: the VMM forwards the guest's connections to port
/// [`HOST_PORT`] to `<uds>_<port>` in its `/run`, where this listens (the socket file
/// belongs to the VM's uid, so the jailed VMM may connect). The socket file goes with it.
pub(super) struct AgentListener {
    listener: UnixListener,
    path: PathBuf,
}

impl AgentListener {
    pub fn bind(jail: &VmJail) -> Result<Self, LaunchError> {
        let path = jail.host_path(&format!("{VSOCK}_{HOST_PORT}"));
        let _ = std::fs::remove_file(&path);
        let wd = |source| LaunchError::WorkDir {
            path: path.clone(),
            source,
        };
        let listener = super::socket_path::bind(&path).map_err(wd)?;
        listener.set_nonblocking(true).map_err(wd)?;
        jail.give(&path)?;
        Ok(Self { listener, path })
    }

    /// A connection that arrived within `wait`, if any.
    fn accept(&self, wait: Duration) -> std::io::Result<Option<UnixStream>> {
        if !wait_readable(&self.listener, wait)? {
            return Ok(None);
        }
        match self.listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                Ok(Some(s))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for AgentListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The agent's connection once it has said hello.
pub(super) struct Connected {
    pub conn: FramedConn<UnixStream>,
    pub guest: BootTimings,
}

/// How waiting for the hello ended without one.
pub(super) enum NoAgent {
    /// The VM was ended on request meanwhile.
    Killed,
    Failed(LaunchError),
}

impl From<LaunchError> for NoAgent {
    fn from(e: LaunchError) -> Self {
        NoAgent::Failed(e)
    }
}

/// Starts the VM and waits up to `patience` for the agent's hello.
pub(super) fn start_vm(
    cfg: &LaunchConfig,
    jail: &mut VmJail,
    from: StartFrom<'_>,
    agent: &AgentListener,
    control: &TaskControl,
    on_event: &mut dyn FnMut(TaskEvent<'_>),
    patience: Duration,
) -> Result<Connected, NoAgent> {
    let deadline = Instant::now() + patience;
    let wd = |source| LaunchError::WorkDir {
        path: cfg.work_dir.clone(),
        source,
    };
    let console = jail.host_path(CONSOLE);
    let vmm_log_path = cfg.work_dir.join("vmm.log");
    let vmm_log = std::fs::File::create(&vmm_log_path).map_err(wd)?;
    // A fallback boot after a failed restore starts from an empty cgroup.
    jail.end_vm();
    // The scratch disk as the start needs it: a snapshot's template when the restored
    // guest has it mounted, else an empty file system (a boot, a fallback boot included).
    if let Some(disk) = &cfg.scratch {
        match from {
            StartFrom::Snapshot {
                snap:
                    Snapshot {
                        scratch: Some(template),
                        ..
                    },
                ..
            } => disk.copy_of(template),
            _ => disk.make(),
        }
        .map_err(LaunchError::from)?;
    }
    let child = vmm_process::spawn(cfg, jail, from, vmm_log).map_err(LaunchError::from)?;
    on_event(TaskEvent::VmStarted {
        pid: child.id(),
        from_snapshot: matches!(from, StartFrom::Snapshot { .. }),
        warm: matches!(from, StartFrom::Snapshot { snap, .. } if snap.warm),
    });
    control.attach_child(child);
    // The agent dials us when it is ready: wait for that connection, the VM's end, or
    // the deadline, whichever comes first.
    let stream = loop {
        let accepted = agent
            .accept(Duration::from_millis(50))
            .map_err(|e| LaunchError::Connection(format!("waiting for the agent: {e}")))?;
        if let Some(s) = accepted {
            break s;
        }
        if let Some(status) = control.try_wait() {
            if control.was_killed() {
                return Err(NoAgent::Killed);
            }
            return Err(NoAgent::Failed(LaunchError::NoHello {
                status: vmm_process::describe_exit(status, &vmm_log_path, jail),
                vmm_refused_input: vmm_process::refused_its_input(status),
                console: console_tail(&console),
            }));
        }
        if Instant::now() > deadline {
            // Ends this VM; a fallback attaches its own.
            control.kill_child_and_wait();
            return Err(NoAgent::Failed(LaunchError::HelloTimeout(patience)));
        }
    };
    hello(FramedConn::new(stream), deadline).map_err(NoAgent::Failed)
}

/// Reads the agent's hello and checks that it speaks our protocol.
fn hello(mut conn: FramedConn<UnixStream>, deadline: Instant) -> Result<Connected, LaunchError> {
    match conn.recv(Some(deadline)) {
        Ok(Frame::Control(Message::Hello {
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
            Ok(Connected {
                conn,
                guest: timings,
            })
        }
        Ok(other) => Err(LaunchError::Connection(format!(
            "expected hello, got {}",
            other.kind_name()
        ))),
        Err(e) => Err(LaunchError::Connection(format!("waiting for hello: {e}"))),
    }
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
