//! A handle on a running task that other threads hold: signals and stdin go to the agent
//! over the task's connection; `kill_vm` ends the VM outright.
//!
//! The VMM's `Child` lives behind the handle's lock, and only the handle waits for it, so a
//! kill can never reach a recycled process id.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use guest_agent::{Frame, Message, STDIN_WINDOW};

/// Stdin travels in frames of at most this many bytes.
const STDIN_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the task has already ended")]
    Ended,
    #[error("cannot reach the task's agent: {0}")]
    Connection(#[from] std::io::Error),
    #[error("the task's agent did not answer within {0:?}")]
    NoAnswer(std::time::Duration),
}

/// How a command run in the task ([`TaskControl::exec`]) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// As a shell reports it: the code, 128 + a signal, 126/127 when it could not start.
    pub exit_code: i32,
    /// It ran out of time and was killed.
    pub timed_out: bool,
    /// The start of its output (stdout and stderr), as the guest reported it.
    pub output: String,
}

/// After an exec's own timeout, how long the agent has to answer.
const EXEC_ANSWER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Default)]
struct State {
    child: Option<Child>,
    status: Option<ExitStatus>,
    connected: bool,
    /// The agent reported the task's process started (execs are taken from then on).
    started: bool,
    ended: bool,
    killed: bool,
    /// Stdin bytes sent that the agent has not reported consumed (≤ STDIN_WINDOW).
    stdin_in_flight: u64,
    /// Execs waiting for their answer, by id.
    execs: std::collections::HashMap<u32, std::sync::mpsc::Sender<ExecOutcome>>,
    next_exec: u32,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    /// Apart from `state` so that a write blocked on a full socket never holds up a kill.
    writer: Mutex<Option<UnixStream>>,
}

/// Cheap to clone; every clone acts on the same task.
#[derive(Clone, Default)]
pub struct TaskControl(Arc<Inner>);

impl TaskControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether both handles control the same VM.
    pub fn same_as(&self, other: &TaskControl) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, frame: &Frame) -> Result<(), ControlError> {
        let mut w = self.0.writer.lock().unwrap_or_else(|p| p.into_inner());
        let s = w.as_mut().ok_or(ControlError::Ended)?;
        let bytes = frame
            .encode()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        s.write_all(&bytes)?;
        Ok(())
    }

    /// Blocks until the run spec has gone out (true) or the task ended first (false).
    pub fn wait_connected(&self) -> bool {
        let mut st = self.state();
        while !st.connected && !st.ended {
            st = self.0.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.connected && !st.ended
    }

    /// Blocks until the task's process has started (true) or the task ended first
    /// (false): an [`TaskControl::exec`] needs the process's container.
    pub fn wait_started(&self) -> bool {
        let mut st = self.state();
        while !st.started && !st.ended {
            st = self.0.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.started && !st.ended
    }

    pub(super) fn process_started(&self) {
        self.state().started = true;
        self.0.changed.notify_all();
    }

    /// Delivers `signal` to the task's process. Before the process exists (the VM is still
    /// booting) nothing could receive it, so the VM is ended instead.
    pub fn signal(&self, signal: i32) -> Result<(), ControlError> {
        {
            let st = self.state();
            if st.ended {
                return Err(ControlError::Ended);
            }
            if !st.connected {
                drop(st);
                self.kill_vm();
                return Ok(());
            }
        }
        self.send(&Frame::Control(Message::Signal { signal }))
    }

    /// Feeds bytes to the process's stdin (the run spec must have asked for stdin); waits
    /// until the process has started, and while the agent has a window's worth unconsumed.
    /// (Frames that follow the run spec at once can sit in the agent's read buffer unseen
    /// until more bytes arrive: stdin sent before the start, then nothing, was lost.)
    pub fn write_stdin(&self, data: &[u8]) -> Result<(), ControlError> {
        if !self.wait_started() {
            return Err(ControlError::Ended);
        }
        for chunk in data.chunks(STDIN_CHUNK) {
            let len = chunk.len() as u64;
            {
                let mut st = self.state();
                while !st.ended && st.stdin_in_flight + len > STDIN_WINDOW {
                    st = self.0.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if st.ended {
                    return Err(ControlError::Ended);
                }
                st.stdin_in_flight += len;
            }
            self.send(&Frame::Stdin(chunk.to_vec()))?;
        }
        Ok(())
    }

    /// Runs `argv` in the task's container (its root, cgroup, user, directory and
    /// environment) and waits for how it ended; the agent kills it after `timeout`. The
    /// task must have started its process.
    pub fn exec(
        &self,
        argv: Vec<String>,
        timeout: std::time::Duration,
    ) -> Result<ExecOutcome, ControlError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let id = {
            let mut st = self.state();
            if st.ended || !st.connected {
                return Err(ControlError::Ended);
            }
            st.next_exec = st.next_exec.wrapping_add(1);
            let id = st.next_exec;
            st.execs.insert(id, tx);
            id
        };
        let forget = || {
            self.state().execs.remove(&id);
        };
        let timeout_ms = timeout.as_millis().min(u128::from(u64::MAX)) as u64;
        if let Err(e) = self.send(&Frame::Control(Message::Exec {
            id,
            argv,
            timeout_ms,
        })) {
            forget();
            return Err(e);
        }
        let wait = timeout + EXEC_ANSWER_GRACE;
        match rx.recv_timeout(wait) {
            Ok(o) => Ok(o),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                forget();
                Err(ControlError::NoAnswer(wait))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(ControlError::Ended),
        }
    }

    /// The agent's answer to exec `id` (one nobody waits for is dropped).
    pub(super) fn exec_exited(&self, id: u32, mut outcome: ExecOutcome) {
        if let Some(tx) = self.state().execs.remove(&id) {
            if outcome.output.len() > guest_agent::MAX_EXEC_OUTPUT {
                let mut end = guest_agent::MAX_EXEC_OUTPUT;
                while !outcome.output.is_char_boundary(end) {
                    end -= 1;
                }
                outcome.output.truncate(end);
            }
            let _ = tx.send(outcome);
        }
    }

    /// Copies `input` to the process's stdin until its end (or a read error), then closes
    /// the process's stdin; returns early if the task ends. Blocking: give it a thread.
    pub fn copy_stdin_from(&self, mut input: impl std::io::Read) {
        let mut buf = vec![0u8; STDIN_CHUNK];
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = self.close_stdin();
                    return;
                }
                Ok(n) => {
                    if self.write_stdin(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Closes the process's stdin.
    pub fn close_stdin(&self) -> Result<(), ControlError> {
        if !self.wait_started() {
            return Err(ControlError::Ended);
        }
        self.send(&Frame::StdinEof)
    }

    /// Ends the VM now (SIGKILL to `skiff-vmm`); the task ends as [`TaskEnd::Killed`]
    /// unless it had already reported.
    ///
    /// [`TaskEnd::Killed`]: super::TaskEnd::Killed
    pub fn kill_vm(&self) {
        let mut st = self.state();
        if st.ended {
            return;
        }
        st.killed = true;
        if let Some(c) = st.child.as_mut() {
            let _ = c.kill();
        }
        self.0.changed.notify_all();
    }

    /// The VMM's process id while it runs.
    pub fn vmm_pid(&self) -> Option<u32> {
        let st = self.state();
        st.child
            .as_ref()
            .filter(|_| st.status.is_none())
            .map(Child::id)
    }

    /// The VMM to act on (a second one replaces the first after a failed restore, which
    /// has exited by then).
    pub(super) fn attach_child(&self, child: Child) {
        let mut st = self.state();
        st.status = None;
        let killed = st.killed;
        let c = st.child.insert(child);
        if killed {
            let _ = c.kill();
        }
    }

    /// Ends the current VMM and reaps it without marking the task killed: a failed start
    /// that a fallback follows.
    pub(super) fn kill_child_and_wait(&self) {
        reap(&mut self.state());
    }

    pub(super) fn attach_writer(&self, stream: UnixStream) {
        *self.0.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream);
        self.state().connected = true;
        self.0.changed.notify_all();
    }

    /// The agent reports stdin bytes consumed: that much more may be sent.
    pub(super) fn stdin_consumed(&self, bytes: u64) {
        let mut st = self.state();
        st.stdin_in_flight = st.stdin_in_flight.saturating_sub(bytes);
        self.0.changed.notify_all();
    }

    pub(super) fn was_killed(&self) -> bool {
        self.state().killed
    }

    /// The VMM's exit status once it has ended (reaps it).
    pub(super) fn try_wait(&self) -> Option<ExitStatus> {
        let mut st = self.state();
        if st.status.is_none() {
            st.status = st.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        }
        st.status
    }

    /// The task is over: the VM is killed if it still runs, reaped, and later calls to the
    /// handle report [`ControlError::Ended`].
    pub(super) fn finish(&self) {
        let mut st = self.state();
        reap(&mut st);
        st.ended = true;
        // Whoever waits for an exec hears that the task ended.
        st.execs.clear();
        *self.0.writer.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.0.changed.notify_all();
    }
}

/// Kills the current VMM if it still runs and waits for it.
fn reap(st: &mut State) {
    if let (Some(c), None) = (st.child.as_mut(), st.status) {
        let _ = c.kill();
        st.status = c.wait().ok();
    }
}

/// Ends the task's VM when the launcher leaves by any path (error, panic, return).
pub(super) struct FinishOnDrop<'a>(pub &'a TaskControl);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}
