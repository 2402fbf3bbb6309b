//! One task's life in the server, as one pipeline: prepare (PROVISIONING: the image and
//! the run spec) → admit (PENDING: a capacity lease, first come first served) → launch (the
//! blocking launcher on a thread of its own, phases and output recorded as they come) →
//! report (the end as a stop code and reason). Capacity comes back when the lease drops,
//! whichever way this ends; a stop request ends any step.

use std::sync::Arc;
use std::time::Duration;

use super::snapshots::{image_key, WarmRequest, WarmTicket};
use super::{events, networking, report, Live, Server, ServerError, WaitingSlot};
use crate::images::cancel::{Cancel, CancelOnDrop};
use crate::images::registry::RegistryOptions;
use crate::images::run::RunOverrides;
use crate::launcher::LaunchConfig;
use crate::prepare::{prepare, Prepared, RootSource, TaskInput};
use crate::tasks::{now_ms, Ending, NetworkMode, StopCode, Task, Transition};
use guest_agent::RunSpec;

const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// How often a service's task reports its CPU use, guest ms.
const SERVICE_USAGE_INTERVAL_MS: u64 = 5000;

/// Runs task `id` to its end and records that end.
/// `slot` is the task's place among those waiting to start: given back at admission.
pub async fn supervise(srv: &Arc<Server>, id: &str, live: &Arc<Live>, slot: WaitingSlot) {
    let end = match run(srv, id, live, slot).await {
        Ok(e) => e,
        Err(e) => Ending::new(StopCode::TaskLost, format!("control plane error: {e}")),
    };
    record_end(srv, id, end);
}

/// Writes the end down (STOPPED), with an event.
pub(super) fn record_end(srv: &Server, id: &str, end: Ending) {
    let (code, reason) = (end.code, end.reason.clone());
    match srv.records.transition(id, Transition::Stopped(end)) {
        Ok(_) => srv
            .records
            .event(id, &format!("stopped: {code:?}: {reason}")),
        Err(e) => tracing::error!(task = id, "cannot record the end of the task: {e}"),
    }
}

fn stopped_before_start() -> Ending {
    Ending::new(StopCode::UserInitiated, "stopped before it started")
}

async fn run(
    srv: &Arc<Server>,
    id: &str,
    live: &Arc<Live>,
    slot: WaitingSlot,
) -> Result<Ending, ServerError> {
    let task = srv.records.get(id)?;
    if task.stop_requested {
        return Ok(stopped_before_start());
    }
    // Prepare (PROVISIONING).
    let prepared = tokio::select! {
        r = prepare_task(srv, &task) => r,
        () = live.stop_requested() => return Ok(stopped_before_start()),
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => return Ok(Ending::new(StopCode::TaskFailedToStart, e)),
    };
    let digest = prepared.image_digest.clone().unwrap_or_default();
    srv.records.transition(
        id,
        Transition::ImageReady {
            digest: digest.clone(),
        },
    )?;
    srv.records
        .event(id, &format!("image ready ({digest}); waiting for capacity"));
    // Admit (PENDING).
    let lease = tokio::select! {
        l = srv.sched.acquire(task.cpu, task.memory_mib) => l,
        () = live.stop_requested() => return Ok(stopped_before_start()),
    };
    drop(slot);
    // The task's network (unless networkMode none): attached before the VM, detached after it.
    let net = match task.network_mode {
        NetworkMode::None => None,
        NetworkMode::Default | NetworkMode::Named(_) => {
            match networking::attach(srv, &task).await {
                Ok(n) => Some(n),
                Err(e) => {
                    return Ok(Ending::new(
                        StopCode::TaskFailedToStart,
                        format!("network: {e}"),
                    ))
                }
            }
        }
    };
    // Launch.
    let (cfg, mut spec, warm_ticket) = launch_config(srv, &task, prepared, net.clone());
    spec.network = net.as_ref().map(|n| Box::new(networking::guest_spec(n)));
    let (srv2, live2, id2) = (srv.clone(), live.clone(), id.to_owned());
    let result = tokio::task::spawn_blocking(move || {
        events::launch(&srv2, &live2, &id2, &cfg, &spec, warm_ticket)
    })
    .await
    .map_err(|e| ServerError::Io {
        what: "launcher thread".into(),
        source: std::io::Error::other(e.to_string()),
    });
    if let Some(n) = net {
        networking::detach(srv, id, n).await;
    }
    let result = result?;
    drop(lease);
    // Report.
    let task = srv.records.get(id)?;
    Ok(match result {
        Ok(end) => report::ending(&task, end),
        Err(e) => Ending::new(
            StopCode::TaskFailedToStart,
            format!("the VM did not start: {e}"),
        ),
    })
}

/// The task's request as the pipeline's input.
fn input(task: &Task) -> Result<TaskInput, String> {
    let reference = task
        .image
        .parse()
        .map_err(|e| format!("image {}: {e}", task.image))?;
    Ok(TaskInput {
        root: RootSource::Image(reference),
        overrides: RunOverrides {
            entrypoint: task.entrypoint.clone(),
            cmd: task.command.clone(),
            env: task.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir: task.working_dir.clone(),
            user: task.user.clone(),
        },
        memory_mib: task.memory_mib,
        hostname: task.id.chars().take(12).collect(),
        stdin: false,
    })
}

/// Prepares off the async workers; the image is recorded for `GET /v1/images`. Dropping
/// this future (the task was stopped) cancels a pull in progress; the preparation slot
/// stays taken until the blocking work has really ended, so stopped tasks cannot make
/// more pulls run at once than the bound allows.
async fn prepare_task(srv: &Arc<Server>, task: &Task) -> Result<Prepared, String> {
    let slot = srv
        .prepare_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| format!("image preparation: {e}"))?;
    let cancel = Cancel::new();
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let (srv, task) = (srv.clone(), task.clone());
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let input = input(&task)?;
        let registry = RegistryOptions {
            cancel: Some(cancel),
            ..srv.cfg.registry.clone()
        };
        let prepared =
            prepare(&srv.images, &registry, &input, &|_| {}).map_err(|e| e.to_string())?;
        if let (RootSource::Image(r), Some(d)) = (&input.root, &prepared.image_digest) {
            let _ = srv.records.store.record_image(&r.to_string(), d, now_ms());
        }
        Ok(prepared)
    })
    .await
    .map_err(|e| format!("image preparation failed: {e}"))?
}

/// The launch and the run spec: from the image's warm snapshot when one is ready, else
/// from the shape's base snapshot (see [`crate::server::snapshots`]); and the image's warm
/// build, when this task's opens are to shape it.
fn launch_config(
    srv: &Arc<Server>,
    task: &Task,
    prepared: Prepared,
    net: Option<crate::network::TaskNetwork>,
) -> (LaunchConfig, RunSpec, Option<WarmTicket>) {
    let cfg = LaunchConfig {
        vmm: srv.cfg.vmm.clone(),
        jail: srv.cfg.jail.clone(),
        kernel: srv.cfg.kernel.clone(),
        initrd: srv.initrd.clone(),
        vcpus: task.cpu,
        memory_mib: task.memory_mib,
        rootfs: prepared.rootfs.clone(),
        scratch: None,
        work_dir: srv.task_dir(&task.id),
        timeout: task.timeout_seconds.map(Duration::from_secs),
        stop_timeout: Duration::from_secs(task.stop_timeout_seconds),
        boot_timeout: BOOT_TIMEOUT,
        snapshot: None,
        net,
    };
    let mut spec = prepared.spec;
    // The image's key tells the agent of a warm snapshot that the spec is for its image.
    let key = image_key(&prepared.rootfs, prepared.image_digest.as_deref());
    let snapshot = match key {
        Ok(image_key) => {
            spec.image_id = image_key.clone();
            let warm = WarmRequest {
                image_key,
                image_name: format!(
                    "{} ({})",
                    task.image,
                    prepared.image_digest.as_deref().unwrap_or("no digest")
                ),
                spec: spec.clone(),
                opened: Vec::new(),
            };
            srv.snapshots.for_task(&cfg, warm)
        }
        Err(e) => {
            tracing::warn!(
                task = task.id,
                "no warm snapshot: the image's root filesystem: {e}"
            );
            (srv.snapshots.for_shape(&cfg), None)
        }
    };
    let (snapshot, ticket) = snapshot;
    spec.record_opens = ticket.is_some();
    // A service's tasks report their CPU use (its autoscaling and `GET` show it).
    if task.labels.contains_key(crate::services::SERVICE_LABEL) {
        spec.usage_interval_ms = SERVICE_USAGE_INTERVAL_MS;
    }
    // A task with a network restores a snapshot with a network card.
    (LaunchConfig { snapshot, ..cfg }, spec, ticket)
}
