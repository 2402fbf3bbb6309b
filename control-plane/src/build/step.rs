//! One `RUN` step in a microVM of its own: the task pipeline's launcher runs it with the
//! agent asked to export the upper layer once the process has ended, and the host reads
//! that tar as a hostile layer (names cleaned, the image limits applied) on a thread of
//! its own as it arrives, so that a guest sending too much is stopped early.

use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};

use guest_agent::RunSpec;

use super::layer::{spool_tar, LayerError, Spooled};
use crate::images::limits::Limits;
use crate::images::unpack::Budget;
use crate::launcher::{
    self, LaunchConfig, LaunchError, Output, TaskControl, TaskEnd, TaskEvent, Timings,
};

/// Pieces of the upper tar held between the VM's session and the spooling thread.
const QUEUED_PIECES: usize = 16;

/// How a step ended, and its changes when it succeeded.
#[derive(Debug)]
pub struct StepOutcome {
    pub end: TaskEnd,
    /// The upper layer's entries, when the process exited 0.
    pub changes: Option<Spooled>,
    /// When each phase of the VM's life came, ms from the launch.
    pub timings: Timings,
    /// The VM was restored from a snapshot (else it booted).
    pub from_snapshot: bool,
    /// The VMM refused the snapshot's files, and the VM booted instead.
    pub bad_snapshot: bool,
    /// When the host had read the whole of the changes, ms from the launch.
    pub received_ms: u64,
}

/// Why a step could not run or its changes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("the step's changes: {0}")]
    Layer(#[from] LayerError),
    #[error("starting the thread that reads the step's changes: {0}")]
    Thread(#[source] io::Error),
}

/// Runs `spec` in a VM of `cfg` and reads the changes it made. Output goes to `on_output`;
/// `control` can stop the step.
pub fn run_step(
    cfg: &LaunchConfig,
    spec: &RunSpec,
    control: &TaskControl,
    limits: Limits,
    spool_dir: &Path,
    on_output: &mut dyn FnMut(Output, &[u8]),
) -> Result<StepOutcome, StepError> {
    let spec = RunSpec {
        export_upper: true,
        ..spec.clone()
    };
    let t0 = std::time::Instant::now();
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUED_PIECES);
    let dir = spool_dir.to_owned();
    let spooler = std::thread::Builder::new()
        .name("step-changes".into())
        .spawn(move || {
            let budget = Budget::new(limits);
            let spooled = spool_tar(Pieces::new(rx), &budget, &dir);
            (spooled, t0.elapsed().as_millis() as u64)
        })
        .map_err(StepError::Thread)?;
    let mut sender: Option<SyncSender<Vec<u8>>> = Some(tx);
    let mut refused = false;
    let mut from_snapshot = false;
    let mut bad_snapshot = false;
    let result = launcher::run_task(cfg, &spec, control, &mut |e| match e {
        TaskEvent::Output(o, b) => on_output(o, b),
        TaskEvent::VmStarted {
            from_snapshot: s, ..
        } => from_snapshot = s,
        TaskEvent::RestoreFailed {
            bad_snapshot: true, ..
        } => bad_snapshot = true,
        // The spooler stopped (over a limit, a bad entry): nothing more is wanted.
        TaskEvent::Upper(b) if sender.as_ref().is_some_and(|s| s.send(b.to_vec()).is_err()) => {
            sender = None;
            refused = true;
            control.kill_vm();
        }
        _ => {}
    });
    drop(sender);
    let (spooled, received_ms) = spooler.join().unwrap_or_else(|_| {
        let e = LayerError::Read(io::Error::other("the reader panicked"));
        (Err(e), t0.elapsed().as_millis() as u64)
    });
    // Changes the host refused end the step, whatever the guest said of its exit.
    let spooled = match spooled {
        Err(e) if refused => return Err(e.into()),
        other => other,
    };
    let result = result?;
    let succeeded = matches!(&result.end, TaskEnd::Exited(r) if r.exit_code == 0);
    let changes = match spooled {
        Ok(s) if succeeded => Some(s),
        Err(e) if succeeded => return Err(e.into()),
        // A failed step's changes are not wanted, nor why they could not be read.
        _ => None,
    };
    Ok(StepOutcome {
        end: result.end,
        changes,
        timings: result.timings,
        from_snapshot,
        bad_snapshot,
        received_ms,
    })
}

/// The upper tar's pieces as one stream; it ends when the session drops its sender.
struct Pieces {
    rx: Receiver<Vec<u8>>,
    piece: Vec<u8>,
    at: usize,
}

impl Pieces {
    fn new(rx: Receiver<Vec<u8>>) -> Self {
        Pieces {
            rx,
            piece: Vec::new(),
            at: 0,
        }
    }
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.piece.len() {
            match self.rx.recv() {
                Ok(p) => {
                    self.piece = p;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
