//! One task's life on the host side, as an explicit state machine:
//!
//! ```text
//! Starting(restore) ──hello──▶ Connected ──run spec──▶ Running ──report──▶ Ending
//!      │ failed                    ▲                      │ timeout: SIGTERM, then end
//!      ▼                           │                      ▼
//! Starting(boot) ────hello─────────┘                   Ending
//! ```
//!
//! Every path ends in one typed [`TaskEnd`]; the VM is torn down on each of them (and when
//! the caller's thread unwinds).

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use guest_agent::{Frame, FrameError, FramedConn, Message, RunSpec};

use super::config::LaunchConfig;
use super::control::{FinishOnDrop, TaskControl};
use super::error::LaunchError;
use super::jail::VmJail;
use super::result::{Output, TaskEnd, TaskEvent, TaskResult, Timings};
use super::start::{start_vm, AgentListener, Connected, NoAgent};
use super::vmm_process::StartFrom;

/// SIGTERM: what a timeout sends first.
const SIGTERM: i32 = 15;

/// How long a restored VM has to say hello before the launcher falls back to a boot.
const RESTORE_PATIENCE: Duration = Duration::from_secs(30);

/// When the agent's connection drops, how long the VMM gets to end before the task is
/// reported lost without its exit status.
const VMM_END_WAIT: Duration = Duration::from_secs(2);

/// After the agent's report, how long the VM has to power itself off.
const POWER_OFF_GRACE: Duration = Duration::from_secs(30);

/// Where a session is.
enum Phase<'a> {
    /// A VM is being started this way.
    Starting(StartFrom<'a>),
    /// The agent said hello; the run spec goes next.
    Connected(Connected),
    /// The process runs (or is about to); frames are relayed.
    Running(Running),
    Ending(TaskEnd),
}

struct Running {
    conn: FramedConn<UnixStream>,
    /// When the current wait ends: the task's timeout, then the stop timeout after it.
    deadline: Option<Instant>,
    timed_out: bool,
    /// The run spec asked for the files the process opens; one report is taken.
    opens_expected: bool,
}

struct Session<'a> {
    cfg: &'a LaunchConfig,
    control: &'a TaskControl,
    on_event: &'a mut dyn FnMut(TaskEvent<'_>),
    jail: VmJail,
    /// Where the agent dials in; closed once it has said hello. Left listening, it would
    /// queue every later guest connection to the agent's port, unaccepted and unread, each
    /// holding a socket buffer of guest data in the host's kernel and up to a connection's
    /// buffer in the VMM, for as long as the task runs.
    agent: Option<AgentListener>,
    start: Instant,
    timings: Timings,
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
    let mut jail = VmJail::new(&cfg.jail, &cfg.work_dir)?;
    if let Some(net) = &cfg.net {
        crate::network::Networks::plug_vm(net, jail.uid(), jail.uid())?;
        jail.join_netns(net.netns_path());
    }
    let mut s = Session {
        cfg,
        control,
        on_event,
        agent: Some(AgentListener::bind(&jail)?),
        jail,
        start: Instant::now(),
        timings: Timings::default(),
    };
    let mut phase = Phase::Starting(match &cfg.snapshot {
        Some(snap) => StartFrom::Snapshot {
            snap,
            api_sock: false,
        },
        None => StartFrom::Boot { api_sock: false },
    });
    loop {
        phase = match phase {
            Phase::Starting(from) => s.starting(from)?,
            Phase::Connected(c) => s.connected(c, spec)?,
            Phase::Running(r) => s.running(r),
            Phase::Ending(end) => return Ok(s.ending(end)),
        };
    }
}

impl Session<'_> {
    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Starting → Connected; a failed restore → Starting(boot); ended on request → Ending.
    fn starting(&mut self, from: StartFrom<'_>) -> Result<Phase<'static>, LaunchError> {
        let restoring = matches!(from, StartFrom::Snapshot { .. });
        let Some(agent) = &self.agent else {
            return Err(LaunchError::Connection(
                "the agent's listener was closed before a start".into(),
            ));
        };
        let patience = if restoring {
            RESTORE_PATIENCE
        } else {
            self.cfg.boot_timeout
        };
        match start_vm(
            self.cfg,
            &mut self.jail,
            from,
            agent,
            self.control,
            &mut *self.on_event,
            patience,
        ) {
            Ok(c) => Ok(Phase::Connected(c)),
            Err(NoAgent::Killed) => Ok(Phase::Ending(TaskEnd::Killed)),
            Err(NoAgent::Failed(_)) if self.control.was_killed() => {
                Ok(Phase::Ending(TaskEnd::Killed))
            }
            Err(NoAgent::Failed(e)) if restoring => {
                let bad_snapshot = matches!(
                    e,
                    LaunchError::NoHello {
                        vmm_refused_input: true,
                        ..
                    }
                );
                let reason = e.to_string();
                tracing::warn!(
                    "restoring the snapshot failed ({reason}); falling back to a full boot"
                );
                (self.on_event)(TaskEvent::RestoreFailed {
                    reason: &reason,
                    bad_snapshot,
                });
                Ok(Phase::Starting(StartFrom::Boot { api_sock: false }))
            }
            Err(NoAgent::Failed(e)) => Err(e),
        }
    }

    /// Connected → Running: the run spec goes out with the host's clock and fresh entropy
    /// (a VM restored from a snapshot would otherwise run with the snapshot's).
    fn connected(&mut self, c: Connected, spec: &RunSpec) -> Result<Phase<'static>, LaunchError> {
        let Connected { mut conn, guest } = c;
        // The agent is connected: nothing else may dial the host.
        self.agent = None;
        self.timings.agent_ready_ms = self.ms();
        self.timings.guest = guest;
        (self.on_event)(TaskEvent::AgentReady);
        let conn_err = |e: &dyn std::fmt::Display| LaunchError::Connection(e.to_string());
        let mut spec = spec.clone();
        let opens_expected = spec.record_opens;
        spec.wall_clock_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        spec.entropy = host_entropy().map_err(|e| conn_err(&format!("host entropy: {e}")))?;
        conn.send(&Frame::Control(Message::Run(Box::new(spec))))
            .map_err(|e| conn_err(&e))?;
        self.control
            .attach_writer(conn.get_ref().try_clone().map_err(|e| conn_err(&e))?);
        Ok(Phase::Running(Running {
            conn,
            deadline: self.cfg.timeout.map(|t| Instant::now() + t),
            timed_out: false,
            opens_expected,
        }))
    }

    /// One frame from the agent: Running → Running, or → Ending on its report, on the
    /// connection's end, or when the timeout's grace runs out.
    fn running(&mut self, mut r: Running) -> Phase<'static> {
        let frame = match r.conn.recv(r.deadline) {
            Ok(f) => f,
            Err(FrameError::TimedOut) if !r.timed_out => {
                // Ask first, as `docker stop` does; end the VM if that is not heeded.
                r.timed_out = true;
                let _ = self.control.signal(SIGTERM);
                r.deadline = Some(Instant::now() + self.cfg.stop_timeout);
                return Phase::Running(r);
            }
            Err(FrameError::TimedOut) => return Phase::Ending(self.timed_out()),
            Err(_) if self.control.was_killed() => return Phase::Ending(TaskEnd::Killed),
            Err(FrameError::Closed { mid_frame: false }) => {
                return Phase::Ending(self.lost("the agent closed the connection without a report"))
            }
            Err(e) => return Phase::Ending(self.lost(&format!("agent connection: {e}"))),
        };
        match frame {
            Frame::Stdout(b) => (self.on_event)(TaskEvent::Output(Output::Stdout, &b)),
            Frame::Stderr(b) => (self.on_event)(TaskEvent::Output(Output::Stderr, &b)),
            Frame::Upper(b) => (self.on_event)(TaskEvent::Upper(&b)),
            Frame::Control(Message::StdinConsumed { bytes }) => self.control.stdin_consumed(bytes),
            Frame::Control(Message::Started {
                spec_ms,
                prepared_ms,
                exec_ms,
                ..
            }) => {
                if self.timings.process_started_ms.is_some() {
                    tracing::debug!("ignoring a repeated `started` from the agent");
                    return Phase::Running(r);
                }
                tracing::debug!(
                    "agent: hello at guest {} ms, spec at {spec_ms} ms, root filesystem and cgroup ready at {prepared_ms} ms, exec at {exec_ms} ms",
                    self.timings.guest.connected_ms,
                );
                self.timings.process_started_ms = Some(self.ms());
                self.timings.guest_exec_ms = Some(exec_ms);
                self.control.process_started();
                (self.on_event)(TaskEvent::ProcessStarted);
            }
            Frame::Control(Message::Exited(report)) => {
                tracing::debug!("agent: process exited at guest {} ms", report.exited_ms);
                self.timings.process_exited_ms = Some(self.ms());
                self.timings.guest_exited_ms = Some(report.exited_ms);
                (self.on_event)(TaskEvent::ProcessExited);
                return Phase::Ending(if r.timed_out {
                    self.timed_out()
                } else {
                    TaskEnd::Exited(report)
                });
            }
            Frame::Control(Message::Usage { cpu_usec, at_ms }) => {
                (self.on_event)(TaskEvent::Usage { cpu_usec, at_ms })
            }
            Frame::Control(Message::ExecExited {
                id,
                exit_code,
                timed_out,
                output,
            }) => self.control.exec_exited(
                id,
                super::control::ExecOutcome {
                    exit_code,
                    timed_out,
                    output,
                },
            ),
            Frame::Control(Message::Opened { paths }) if r.opens_expected => {
                r.opens_expected = false;
                (self.on_event)(TaskEvent::Opened(&paths));
            }
            Frame::Control(Message::Failed {
                kind,
                message,
                exit_code,
            }) => {
                return Phase::Ending(TaskEnd::Failed {
                    kind,
                    message: bounded(message),
                    exit_code,
                })
            }
            other => tracing::debug!("ignoring an agent frame of kind {}", other.kind_name()),
        }
        Phase::Running(r)
    }

    /// The connection ended without a report: if the VMM ended too (killed by its memory
    /// limit or its seccomp filter, say), that is the reason given.
    fn lost(&self, what: &str) -> TaskEnd {
        let until = Instant::now() + VMM_END_WAIT;
        let status = loop {
            match self.control.try_wait() {
                Some(s) => break Some(s),
                None if Instant::now() > until => break None,
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        TaskEnd::Lost(match status {
            Some(s) => format!(
                "{what}; {}",
                super::vmm_process::describe_exit(
                    s,
                    &self.cfg.work_dir.join("vmm.log"),
                    &self.jail
                )
            ),
            None => what.to_owned(),
        })
    }

    fn timed_out(&self) -> TaskEnd {
        TaskEnd::TimedOut(self.cfg.timeout.unwrap_or_default())
    }

    /// Ending: the VM is gone (the agent powers it off after its report; it gets a moment,
    /// then it is ended) and the result is final.
    fn ending(mut self, end: TaskEnd) -> TaskResult {
        if matches!(end, TaskEnd::Exited(_) | TaskEnd::Failed { .. }) {
            let grace = Instant::now() + POWER_OFF_GRACE;
            while Instant::now() < grace && self.control.try_wait().is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.control.finish();
        self.timings.vm_stopped_ms = self.ms();
        TaskResult {
            end,
            timings: self.timings,
        }
    }
}

/// Longest failure message kept from an agent.
const MAX_MESSAGE: usize = 4096;

/// `message` cut to [`MAX_MESSAGE`] bytes (at a character boundary).
pub(super) fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(" […]");
    }
    message
}

/// 32 bytes from the host's CRNG.
fn host_entropy() -> std::io::Result<Vec<u8>> {
    let mut b = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_agent_messages_are_cut_at_a_character_boundary() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(MAX_MESSAGE);
        let b = bounded(long);
        assert!(b.len() <= MAX_MESSAGE + " […]".len());
        assert!(b.ends_with(" […]"));
    }
}
