//! What a launch reports: events while the task runs, and how it ended.

use std::time::Duration;

use guest_agent::{BootTimings, ExitReport, FailureKind};

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
    /// Guest clock (ms) when the process was exec'd and when it exited, as the agent
    /// reported them: the process's own run time, whatever the host's delays.
    pub guest_exec_ms: Option<u64>,
    pub guest_exited_ms: Option<u64>,
}

/// Things that happen while a task runs, in order, as they happen.
#[derive(Debug, PartialEq)]
pub enum TaskEvent<'a> {
    /// `skiff-vmm` is running (its process id), booting or restoring a snapshot.
    VmStarted {
        pid: u32,
        from_snapshot: bool,
        /// The snapshot is the image's warm one.
        warm: bool,
    },
    /// The snapshot could not be restored; a full boot follows. `bad_snapshot`: the VMM
    /// refused the snapshot files themselves (damaged, foreign), so they should go.
    RestoreFailed {
        reason: &'a str,
        bad_snapshot: bool,
    },
    /// The agent said hello; the run spec goes out next.
    AgentReady,
    /// The agent exec'd the process.
    ProcessStarted,
    /// The agent reported the process's end (its output has all arrived).
    ProcessExited,
    Output(Output, &'a [u8]),
    /// A piece of the upper layer's tar, after the process ended, when the run spec asked
    /// (`export_upper`, a build step): a guest's bytes, to be read as a hostile layer.
    Upper(&'a [u8]),
    /// The files the process opened, as its agent noted them when the run spec asked
    /// (`record_opens`): a guest's word, bounded by the frame size only; the warm build
    /// that takes it keeps what [`guest_agent::valid_opened_path`] allows.
    Opened(&'a [String]),
    /// The task's CPU time so far (µs) at guest time `at_ms`, when the run spec asked for
    /// usage reports (a guest's word).
    Usage {
        cpu_usec: u64,
        at_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum TaskEnd {
    /// The process ran and ended: the agent's report.
    Exited(ExitReport),
    /// The process never started.
    Failed {
        kind: FailureKind,
        message: String,
        exit_code: i32,
    },
    /// It ran past its timeout: it was sent SIGTERM, then its VM was ended if it did not
    /// exit within the stop timeout.
    TimedOut(Duration),
    /// Its VM was ended on request ([`crate::launcher::TaskControl::kill_vm`]) before the
    /// process reported an exit.
    Killed,
    /// The VM or the agent went away without a report.
    Lost(String),
}

impl TaskEnd {
    /// The exit code `skiff run` exits with.
    pub fn exit_code(&self) -> i32 {
        match self {
            TaskEnd::Exited(ExitReport { exit_code, .. }) | TaskEnd::Failed { exit_code, .. } => {
                *exit_code
            }
            TaskEnd::TimedOut(_) => 124,
            TaskEnd::Killed => 137,
            TaskEnd::Lost(_) => 125,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    pub end: TaskEnd,
    pub timings: Timings,
}
