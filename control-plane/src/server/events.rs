//! The launch step of the pipeline on its blocking thread: the launcher's events become
//! phase times, state transitions, task events and output log records as they happen.

use guest_agent::RunSpec;

use super::snapshots::WarmTicket;
use super::{Live, Server, ServerError};
use crate::launcher::{self, LaunchConfig, LaunchError, TaskEnd, TaskEvent};
use crate::tasks::logs::LogWriter;
use crate::tasks::{now_ms, StartMode, Task, Transition};

/// Runs the VM on this (blocking) thread.
pub(super) fn launch(
    srv: &Server,
    live: &Live,
    id: &str,
    cfg: &LaunchConfig,
    spec: &RunSpec,
    mut warm_ticket: Option<WarmTicket>,
) -> Result<TaskEnd, LaunchError> {
    let wd = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| LaunchError::WorkDir { path, source }
    };
    std::fs::create_dir_all(&cfg.work_dir).map_err(wd(&cfg.work_dir))?;
    let log_path = srv.log_path(id);
    let mut log = LogWriter::create(&log_path, srv.cfg.log_cap_bytes).map_err(wd(&log_path))?;
    let mut rotated = false;
    let result = launcher::run_task(cfg, spec, &live.control, &mut |ev| match ev {
        // The first task of an image on the base snapshot: its opens shape the image's
        // warm snapshot (a ticket never used starts the build without them when dropped).
        TaskEvent::Opened(paths) => {
            if let Some(t) = warm_ticket.take() {
                tracing::debug!(task = id, "the process opened {} files", paths.len());
                t.build_with(paths.to_vec());
            }
        }
        ev => on_event(srv, live, id, cfg, &mut log, &mut rotated, ev),
    })?;
    Ok(result.end)
}

fn recorded(id: &str, r: Result<Task, ServerError>) {
    if let Err(e) = r {
        tracing::warn!(task = id, "cannot record a phase: {e}");
    }
}

#[allow(clippy::too_many_arguments)]
fn on_event(
    srv: &Server,
    live: &Live,
    id: &str,
    cfg: &LaunchConfig,
    log: &mut LogWriter,
    rotated: &mut bool,
    ev: TaskEvent<'_>,
) {
    let rec = &srv.records;
    match ev {
        TaskEvent::VmStarted {
            pid,
            from_snapshot,
            warm,
        } => {
            live.set_vm_started();
            let mode = if from_snapshot {
                StartMode::Snapshot
            } else {
                StartMode::Boot
            };
            recorded(
                id,
                rec.update(id, |t| {
                    t.phases.vm_started_ms = Some(now_ms());
                    t.vmm_pid = Some(pid);
                    t.start_mode = Some(mode);
                }),
            );
            let how = match (from_snapshot, warm) {
                (true, true) => "restoring the image's warm snapshot",
                (true, false) => "restoring a snapshot",
                (false, _) => "booting",
            };
            rec.event(id, &format!("VM started (skiff-vmm pid {pid}, {how})"));
        }
        TaskEvent::RestoreFailed {
            reason,
            bad_snapshot,
        } => {
            rec.event(
                id,
                &format!("snapshot restore failed, booting instead: {reason}"),
            );
            if bad_snapshot {
                if let Some(s) = &cfg.snapshot {
                    srv.snapshots.discard(s);
                }
            }
        }
        TaskEvent::AgentReady => {
            recorded(
                id,
                rec.update(id, |t| t.phases.agent_ready_ms = Some(now_ms())),
            );
        }
        TaskEvent::ProcessStarted => {
            recorded(id, rec.transition(id, Transition::ProcessStarted));
            rec.event(id, "process started");
        }
        TaskEvent::ProcessExited => {
            recorded(
                id,
                rec.update(id, |t| t.phases.process_exited_ms = Some(now_ms())),
            );
        }
        // Taken by `launch` (the image's warm build), never passed on.
        // Tasks never ask for their upper layer; a guest that sends one is not heard.
        TaskEvent::Opened(_) | TaskEvent::Upper(_) => {}
        TaskEvent::Usage { cpu_usec, at_ms } => live.record_usage(cpu_usec, at_ms),
        TaskEvent::Output(stream, data) => match log.append(stream, now_ms(), data) {
            Ok(a) => {
                if a.rotated && !*rotated {
                    *rotated = true;
                    rec.event(
                        id,
                        &format!(
                            "output passed {} MiB: the oldest output is dropped as more comes (the log keeps the newest {} MiB at most)",
                            srv.cfg.log_cap_bytes >> 20,
                            (2 * srv.cfg.log_cap_bytes) >> 20
                        ),
                    );
                }
                live.log_written(a.total)
            }
            Err(e) => tracing::warn!(task = id, "cannot write output log: {e}"),
        },
    }
}
