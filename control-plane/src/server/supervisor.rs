//! One task's life, from PROVISIONING to STOPPED: prepare the image, wait for capacity,
//! run the VM (the blocking launcher on a thread of its own), record every phase and the
//! output, and map how it ended to a stopCode and a reason. Capacity comes back when the
//! lease drops, whichever way this ends.

use std::sync::Arc;
use std::time::Duration;

use guest_agent::RunSpec;

use super::{Live, Server, ServerError};
use crate::images::run::{resolve, RunOverrides};
use crate::images::source::get_image;
use crate::images::Reference;
use crate::launcher::{self, LaunchConfig, TaskEnd, TaskEvent};
use crate::tasks::logs::LogWriter;
use crate::tasks::{now_ms, StartMode, StopCode, Task, TaskState, Usage};

/// After SIGKILL, how long the agent has to report before the VM is ended.
const KILL_GRACE: Duration = Duration::from_secs(5);
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// How a task ended, before it is written down.
struct Ending {
    code: StopCode,
    reason: String,
    exit_code: Option<i32>,
    usage: Option<Usage>,
}

fn ending(code: StopCode, reason: impl Into<String>) -> Ending {
    Ending {
        code,
        reason: reason.into(),
        exit_code: None,
        usage: None,
    }
}

pub async fn supervise(srv: &Arc<Server>, id: &str, live: &Arc<Live>) {
    let end = match run(srv, id, live).await {
        Ok(e) => e,
        Err(e) => ending(StopCode::TaskLost, format!("control plane error: {e}")),
    };
    finish(srv, id, end);
}

fn finish(srv: &Server, id: &str, end: Ending) {
    let now = now_ms();
    let r = srv.update(id, |t| {
        t.state = TaskState::Stopped;
        t.stop_code = Some(end.code);
        t.stopped_reason = Some(end.reason.clone());
        t.exit_code = end.exit_code;
        t.usage = end.usage.clone();
        t.phases.stopped_ms = Some(now);
        t.vmm_pid = None;
    });
    match r {
        Ok(t) => {
            srv.metrics.observe_stopped(&t);
            srv.event(id, &format!("stopped: {:?}: {}", end.code, end.reason));
        }
        Err(e) => tracing::error!(task = id, "cannot record the end of the task: {e}"),
    }
}

async fn run(srv: &Arc<Server>, id: &str, live: &Arc<Live>) -> Result<Ending, ServerError> {
    let task = srv.update(id, |_| {})?;
    if task.stop_requested {
        return Ok(ending(StopCode::UserInitiated, "stopped before it started"));
    }
    // PROVISIONING: the image and its root filesystem.
    let prepared = tokio::select! {
        r = prepare_image(srv, &task) => r,
        () = live.stop_requested() => {
            return Ok(ending(StopCode::UserInitiated, "stopped before it started"));
        }
    };
    let (rootfs, spec, digest) = match prepared {
        Ok(p) => p,
        Err(e) => return Ok(ending(StopCode::TaskFailedToStart, e)),
    };
    srv.update(id, |t| {
        t.image_digest = Some(digest.clone());
        t.phases.image_ready_ms = Some(now_ms());
        t.state = TaskState::Pending;
    })?;
    srv.event(id, &format!("image ready ({digest}); waiting for capacity"));
    // PENDING: wait for room on this host, first come first served.
    let lease = tokio::select! {
        l = srv.sched.acquire(task.cpu, task.memory_mib) => l,
        () = live.stop_requested() => {
            return Ok(ending(StopCode::UserInitiated, "stopped before it started"));
        }
    };
    let cfg = LaunchConfig {
        vmm: srv.cfg.vmm.clone(),
        kernel: srv.cfg.kernel.clone(),
        initrd: srv.initrd.clone(),
        vcpus: task.cpu,
        memory_mib: task.memory_mib,
        rootfs,
        work_dir: srv.task_dir(id),
        timeout: task.timeout_seconds.map(Duration::from_secs),
        stop_timeout: Duration::from_secs(task.stop_timeout_seconds),
        boot_timeout: BOOT_TIMEOUT,
        snapshot: None,
    };
    let cfg = LaunchConfig {
        snapshot: srv.snapshots.for_shape(&cfg),
        ..cfg
    };
    let (srv2, live2, id2) = (srv.clone(), live.clone(), id.to_owned());
    let result = tokio::task::spawn_blocking(move || launch(&srv2, &live2, &id2, &cfg, &spec))
        .await
        .map_err(|e| ServerError::Io {
            what: "launcher thread".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    drop(lease);
    let task = srv.update(id, |_| {})?;
    Ok(match result {
        Ok(end) => map_end(&task, end),
        Err(e) => ending(
            StopCode::TaskFailedToStart,
            format!("the VM did not start: {e}"),
        ),
    })
}

/// The image's root filesystem and the run spec with the image's defaults applied.
async fn prepare_image(
    srv: &Arc<Server>,
    task: &Task,
) -> Result<(std::path::PathBuf, RunSpec, String), String> {
    let (srv, task) = (srv.clone(), task.clone());
    tokio::task::spawn_blocking(move || {
        let r: Reference = task
            .image
            .parse()
            .map_err(|e| format!("image {}: {e}", task.image))?;
        let image = get_image(&srv.images, &r, &srv.cfg.registry, &|_| {}).map_err(|e| {
            if e.is_not_found() {
                format!("image not found: {e}")
            } else {
                format!("cannot get image {r}: {e}")
            }
        })?;
        let digest = image.manifest_digest.to_string();
        let _ = srv.store.record_image(&r.to_string(), &digest, now_ms());
        let fs = srv
            .images
            .rootfs(&image)
            .map_err(|e| format!("cannot build the root filesystem of {r}: {e}"))?;
        let overrides = RunOverrides {
            entrypoint: task.entrypoint.clone(),
            cmd: task.command.clone(),
            env: task.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir: task.working_dir.clone(),
            user: task.user.clone(),
        };
        let resolved = resolve(&image.config.run_defaults(), &overrides)
            .map_err(|e| format!("image {r}: {e}"))?;
        let spec = RunSpec {
            argv: resolved.argv,
            env: resolved.env,
            working_dir: resolved.working_dir,
            user: resolved.user,
            image_disk: "/dev/vda".into(),
            upper_size_mib: (task.memory_mib / 4).max(16),
            hostname: task.id.chars().take(12).collect(),
            stdin: false,
            ..Default::default()
        };
        Ok((fs.path, spec, digest))
    })
    .await
    .map_err(|e| format!("image preparation failed: {e}"))?
}

/// Runs the VM on this (blocking) thread, writing phases and output as they come.
fn launch(
    srv: &Server,
    live: &Live,
    id: &str,
    cfg: &LaunchConfig,
    spec: &RunSpec,
) -> Result<TaskEnd, launcher::LaunchError> {
    std::fs::create_dir_all(&cfg.work_dir).map_err(|source| launcher::LaunchError::WorkDir {
        path: cfg.work_dir.clone(),
        source,
    })?;
    let mut log =
        LogWriter::create(&srv.log_path(id)).map_err(|source| launcher::LaunchError::WorkDir {
            path: srv.log_path(id),
            source,
        })?;
    let record = |r: Result<Task, ServerError>| {
        if let Err(e) = r {
            tracing::warn!(task = id, "cannot record a phase: {e}");
        }
    };
    let result = launcher::run_task(cfg, spec, &live.control, &mut |ev| match ev {
        TaskEvent::VmStarted { pid, from_snapshot } => {
            live.set_vm_started();
            let mode = if from_snapshot {
                StartMode::Snapshot
            } else {
                StartMode::Boot
            };
            record(srv.update(id, |t| {
                t.phases.vm_started_ms = Some(now_ms());
                t.vmm_pid = Some(pid);
                t.start_mode = Some(mode);
            }));
            srv.event(
                id,
                &format!(
                    "VM started (skiff-vmm pid {pid}, {})",
                    if from_snapshot {
                        "restoring a snapshot"
                    } else {
                        "booting"
                    }
                ),
            );
        }
        TaskEvent::RestoreFailed {
            reason,
            bad_snapshot,
        } => {
            srv.event(
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
            record(srv.update(id, |t| t.phases.agent_ready_ms = Some(now_ms())));
        }
        TaskEvent::ProcessStarted => {
            record(srv.update(id, |t| {
                t.phases.process_started_ms = Some(now_ms());
                if t.state == TaskState::Pending {
                    t.state = TaskState::Running;
                }
            }));
            srv.event(id, "process started");
        }
        TaskEvent::ProcessExited => {
            record(srv.update(id, |t| t.phases.process_exited_ms = Some(now_ms())));
        }
        TaskEvent::Output(stream, data) => match log.append(stream, now_ms(), data) {
            Ok(total) => live.log_written(total),
            Err(e) => tracing::warn!(task = id, "cannot write output log: {e}"),
        },
    })?;
    Ok(result.end)
}

fn map_end(task: &Task, end: TaskEnd) -> Ending {
    let stop_asked = task.stop_requested;
    match end {
        TaskEnd::Exited {
            exit_code,
            signal,
            cpu_user_ms,
            cpu_system_ms,
            max_rss_kib,
            oom_killed,
        } => {
            let (code, reason) = if oom_killed {
                (
                    StopCode::OutOfMemory,
                    format!(
                        "out of memory: the task needed more than its {} MiB",
                        task.memory_mib
                    ),
                )
            } else if stop_asked {
                (
                    StopCode::UserInitiated,
                    format!("stopped by request (exit code {exit_code})"),
                )
            } else if let Some(sig) = signal {
                (
                    StopCode::EssentialContainerExited,
                    format!("killed by signal {sig}"),
                )
            } else {
                (
                    StopCode::EssentialContainerExited,
                    format!("exited with code {exit_code}"),
                )
            };
            Ending {
                code,
                reason,
                exit_code: Some(exit_code),
                usage: Some(Usage {
                    cpu_user_ms,
                    cpu_system_ms,
                    max_rss_kib,
                }),
            }
        }
        TaskEnd::Failed {
            message, exit_code, ..
        } => Ending {
            exit_code: Some(exit_code),
            ..ending(StopCode::TaskFailedToStart, message)
        },
        TaskEnd::TimedOut(d) => Ending {
            exit_code: Some(124),
            ..ending(
                StopCode::Timeout,
                format!("timed out after {} s", d.as_secs()),
            )
        },
        TaskEnd::Killed if stop_asked => ending(
            StopCode::UserInitiated,
            "stopped by request; the VM was ended",
        ),
        TaskEnd::Killed => ending(StopCode::TaskLost, "the VM was ended"),
        TaskEnd::Lost(why) => ending(StopCode::TaskLost, why),
    }
}

/// What a stop request found.
pub enum StopOutcome {
    NotFound,
    AlreadyStopped(Task),
    /// Stopping (or stopped by this request); the record as it is now.
    Stopping(Task),
}

/// `POST /v1/tasks/{id}/stop`.
pub fn request_stop(srv: &Arc<Server>, id: &str) -> Result<StopOutcome, ServerError> {
    let Some(task) = srv.store.get(id)? else {
        return Ok(StopOutcome::NotFound);
    };
    if task.is_stopped() {
        return Ok(StopOutcome::AlreadyStopped(task));
    }
    let Some(live) = srv.live(id) else {
        // Not supervised (it is just ending): record it as stopped.
        finish(
            srv,
            id,
            ending(StopCode::UserInitiated, "stopped by request"),
        );
        return Ok(srv
            .store
            .get(id)?
            .map_or(StopOutcome::NotFound, StopOutcome::Stopping));
    };
    let first = !task.stop_requested;
    let task = srv.update(id, |t| {
        t.stop_requested = true;
        if matches!(t.state, TaskState::Running | TaskState::Pending) && live.has_vm() {
            t.state = TaskState::Stopping;
        }
    })?;
    live.request_stop();
    if !live.has_vm() {
        // Between admission and the VM's start no select sees the request: marking the
        // control killed makes the launcher end the VM the moment it exists.
        live.control.kill_vm();
    }
    if first && live.has_vm() {
        srv.event(id, "stop requested: SIGTERM");
        let grace = Duration::from_secs(task.stop_timeout_seconds);
        let (srv, id, live) = (srv.clone(), id.to_owned(), live.clone());
        tokio::spawn(async move {
            let mut done = live.subscribe_done();
            // A signal before the process exists ends the VM (the launcher's rule).
            let _ = live.control.signal(15);
            if tokio::time::timeout(grace, done.wait_for(|d| *d))
                .await
                .is_ok()
            {
                return;
            }
            srv.event(
                &id,
                &format!("still running {} s after SIGTERM: SIGKILL", grace.as_secs()),
            );
            let _ = live.control.signal(9);
            if tokio::time::timeout(KILL_GRACE, done.wait_for(|d| *d))
                .await
                .is_ok()
            {
                return;
            }
            srv.event(&id, "no report after SIGKILL: ending the VM");
            live.control.kill_vm();
        });
    }
    Ok(StopOutcome::Stopping(task))
}
