//! How the controller drives the vCPU threads, Firecracker's scheme: a command goes down
//! each thread's channel, a kick signal (see [`super::kick`]) gets the thread out of
//! `KVM_RUN`, and the thread answers on the shared reply channel. A vCPU thread is always
//! in one [`RunState`]; [`RunState::next`] is the one place that says how a command
//! changes it.
//!
//! A vCPU takes a command only after `KVM_RUN` returned `EINTR`, so any port or MMIO access
//! it was doing has been completed by KVM first: the state it pauses with is complete.

use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::kick;
use crate::snapshot::vcpu::{Caps, VcpuState, VcpuStateError};

/// How long vCPUs get to pause or answer.
pub const VCPU_TIMEOUT: Duration = Duration::from_secs(10);

/// What the controller asks of a vCPU thread.
pub enum VcpuCommand {
    /// Stop running the guest until [`VcpuCommand::Resume`] (sent with a kick).
    Pause,
    Resume,
    /// Save the state, with these MSRs (what KVM lists, and PVM's own on PVM hosts).
    SaveState {
        msrs: Arc<Vec<u32>>,
        caps: Caps,
    },
}

/// What a vCPU thread tells the controller.
pub enum VcpuReply {
    Paused(u8),
    Resumed(u8),
    State(Box<Result<VcpuState, VcpuStateError>>),
}

/// Where a vCPU thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// In or around `KVM_RUN`, serving the guest's exits.
    Running,
    /// Parked on its command channel; the guest does not run.
    Paused,
    /// The VM is ending (or the controller is gone): the thread returns.
    Exiting,
}

impl RunState {
    /// The state after `command`. Every command is answered (by the thread, which alone
    /// can read its registers), except in `Exiting`.
    pub fn next(self, command: &VcpuCommand) -> RunState {
        match (self, command) {
            (RunState::Exiting, _) => RunState::Exiting,
            (_, VcpuCommand::Pause) => RunState::Paused,
            (_, VcpuCommand::Resume) => RunState::Running,
            (s, VcpuCommand::SaveState { .. }) => s,
        }
    }

    /// The state once the controller's end of the command channel is gone: a paused vCPU
    /// would wait forever, so it ends; a running one runs on (nobody can pause it).
    pub fn controller_gone(self) -> RunState {
        match self {
            RunState::Running => RunState::Running,
            RunState::Paused | RunState::Exiting => RunState::Exiting,
        }
    }
}

/// The vCPU thread's end of its channels.
pub struct VcpuChannel {
    pub commands: Receiver<VcpuCommand>,
    pub replies: Sender<VcpuReply>,
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuControlError {
    #[error("vCPUs did not {0} within {VCPU_TIMEOUT:?} (is the VM ending?)")]
    Timeout(&'static str),
    #[error("the VM is ending")]
    Gone,
}

/// The controller's end of one vCPU thread.
struct Link {
    thread: libc::pthread_t,
    commands: Sender<VcpuCommand>,
}

/// The controller's end of every vCPU thread of a VM, and whether they are paused.
pub struct VcpuHandles {
    links: Vec<Link>,
    replies: Receiver<VcpuReply>,
    paused: bool,
}

impl VcpuHandles {
    /// Starts one thread per vCPU; `start(id, channel)` is what each thread runs.
    pub fn spawn<F>(ids: Vec<(u8, F)>) -> std::io::Result<Self>
    where
        F: FnOnce(VcpuChannel) + Send + 'static,
    {
        let (reply_tx, replies) = mpsc::channel();
        let mut links = Vec::with_capacity(ids.len());
        for (id, run) in ids {
            let (commands, cmd_rx) = mpsc::channel();
            let channel = VcpuChannel {
                commands: cmd_rx,
                replies: reply_tx.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || run(channel))?;
            // vCPU threads are never joined: they end with the VM, before the process.
            links.push(Link {
                thread: h.as_pthread_t(),
                commands,
            });
        }
        Ok(Self {
            links,
            replies,
            paused: false,
        })
    }

    /// The threads, for the profiler's kicks.
    pub fn threads(&self) -> Vec<libc::pthread_t> {
        self.links.iter().map(|l| l.thread).collect()
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    fn send_all(&self, command: impl Fn() -> VcpuCommand) -> Result<(), VcpuControlError> {
        for l in &self.links {
            l.commands
                .send(command())
                .map_err(|_| VcpuControlError::Gone)?;
        }
        Ok(())
    }

    /// Waits for one reply from each vCPU that `want` accepts.
    fn collect<T>(
        &self,
        what: &'static str,
        mut want: impl FnMut(VcpuReply) -> Option<T>,
    ) -> Result<Vec<T>, VcpuControlError> {
        let deadline = Instant::now() + VCPU_TIMEOUT;
        let mut out = Vec::with_capacity(self.links.len());
        while out.len() < self.links.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(r) => out.extend(want(r)),
                Err(RecvTimeoutError::Timeout) => return Err(VcpuControlError::Timeout(what)),
                Err(RecvTimeoutError::Disconnected) => return Err(VcpuControlError::Gone),
            }
        }
        Ok(out)
    }

    /// Pauses every vCPU and waits until each has parked.
    pub fn pause(&mut self) -> Result<(), VcpuControlError> {
        if self.paused {
            return Ok(());
        }
        self.send_all(|| VcpuCommand::Pause)?;
        for l in &self.links {
            kick::kick(l.thread);
        }
        self.collect("pause", |r| match r {
            VcpuReply::Paused(id) => Some(id),
            _ => None,
        })?;
        self.paused = true;
        Ok(())
    }

    /// Lets every paused vCPU run again.
    pub fn resume(&mut self) -> Result<(), VcpuControlError> {
        if !self.paused {
            return Ok(());
        }
        self.send_all(|| VcpuCommand::Resume)?;
        self.collect("resume", |r| match r {
            VcpuReply::Resumed(id) => Some(id),
            _ => None,
        })?;
        self.paused = false;
        Ok(())
    }

    /// Every vCPU's state, by id; the vCPUs must be paused.
    pub fn save_states(
        &self,
        msrs: Arc<Vec<u32>>,
        caps: Caps,
    ) -> Result<Vec<Result<VcpuState, VcpuStateError>>, VcpuControlError> {
        debug_assert!(self.paused, "vCPU state is saved only while paused");
        self.send_all(|| VcpuCommand::SaveState {
            msrs: msrs.clone(),
            caps,
        })?;
        self.collect("save their state", |r| match r {
            VcpuReply::State(s) => Some(*s),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save() -> VcpuCommand {
        VcpuCommand::SaveState {
            msrs: Arc::new(Vec::new()),
            caps: Caps { xcrs: false },
        }
    }

    #[test]
    fn commands_move_the_run_state_and_exiting_is_final() {
        use RunState::*;
        assert_eq!(Running.next(&VcpuCommand::Pause), Paused);
        assert_eq!(Paused.next(&VcpuCommand::Pause), Paused);
        assert_eq!(Paused.next(&save()), Paused);
        assert_eq!(Paused.next(&VcpuCommand::Resume), Running);
        for c in [VcpuCommand::Pause, VcpuCommand::Resume, save()] {
            assert_eq!(Exiting.next(&c), Exiting);
        }
        assert_eq!(Running.controller_gone(), Running);
        assert_eq!(Paused.controller_gone(), Exiting);
    }

    #[test]
    fn pause_and_resume_reach_every_thread_and_are_idempotent() {
        // Pausing kicks the threads: without the handler the signal would end the process.
        kick::install_handler().unwrap();
        let ids = (0..3u8)
            .map(|id| {
                let f = move |ch: VcpuChannel| {
                    let mut state = RunState::Running;
                    while state != RunState::Exiting {
                        let Ok(cmd) = ch.commands.recv() else { return };
                        state = state.next(&cmd);
                        let reply = match cmd {
                            VcpuCommand::Pause => VcpuReply::Paused(id),
                            VcpuCommand::Resume => VcpuReply::Resumed(id),
                            VcpuCommand::SaveState { .. } => {
                                VcpuReply::State(Box::new(Err(VcpuStateError::XsaveTooLarge(0))))
                            }
                        };
                        if ch.replies.send(reply).is_err() {
                            return;
                        }
                    }
                };
                (id, f)
            })
            .collect();
        let mut h = VcpuHandles::spawn(ids).unwrap();
        h.pause().unwrap();
        assert!(h.paused());
        h.pause().unwrap();
        assert_eq!(
            h.save_states(Arc::new(vec![]), Caps { xcrs: false })
                .unwrap()
                .len(),
            3
        );
        h.resume().unwrap();
        assert!(!h.paused());
        h.resume().unwrap();
    }
}
