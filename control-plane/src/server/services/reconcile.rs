//! The reconciler: once a second, and whenever something changes, each service is brought
//! toward its desired state. Tasks that ended are noted (a failure unless the reconciler
//! stopped them) and replaced after a capped exponential back-off; health is followed;
//! the plan (`crate::services::plan`) says what to stop and start; a deployment completes
//! when only healthy tasks of its revision are left, and rolls back when too many of them
//! fail first. The load balancer's backends and the service's DNS name follow the healthy
//! tasks.

use std::collections::HashSet;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use super::metrics::{label, outcome};
use super::runtime::{ServiceRuntime, TaskRuntime};
use super::{lock, revision_of, tasks_by_service, watch, Services};
use crate::server::Server;
use crate::services::{
    plan, Context, DeploymentState, Health, HealthCheck, PlanTask, Service, ServiceStatus, StopWhy,
};
use crate::tasks::{new_task_id, now_ms, NetworkMode, Task, TaskState};

/// A pass at least this often.
const TICK: Duration = Duration::from_secs(1);
/// A task that served leaves the load balancer and its DNS name at least this long before
/// its stop (for clients that resolved its name)...
const DRAIN_MIN: Duration = Duration::from_secs(1);
/// ...and until the load balancer's connections to it have ended, at most this long.
const DRAIN_MAX: Duration = Duration::from_secs(60);

pub fn spawn(srv: &Arc<Server>) {
    let weak = Arc::downgrade(srv);
    let wake = srv.services.wake_handle();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = wake.notified() => {}
            }
            let Some(srv) = weak.upgrade() else { return };
            pass(&srv);
        }
    });
}

/// Failures of a deployment's tasks that roll it back (ECS's circuit breaker: half the
/// desired count, at least 3).
fn rollback_threshold(desired: u32) -> u32 {
    desired.div_ceil(2).clamp(3, 200)
}

fn pass(srv: &Arc<Server>) {
    if srv.services.is_shutting_down() {
        return;
    }
    let _g = lock(&srv.services.records);
    let (services, mut by) = match (srv.records.store.services(), tasks_by_service(srv)) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("service reconciler: {e}");
            return;
        }
    };
    let names: HashSet<String> = services.iter().map(|s| s.name.clone()).collect();
    for svc in services {
        let tasks = by.remove(&svc.name).unwrap_or_default();
        reconcile(srv, svc, tasks);
    }
    lock(&srv.services.runtime).retain(|name, _| names.contains(name));
}

/// The health check of revision `rev` of `svc` (the current or the previous one).
fn health_check_of(svc: &Service, rev: u64) -> Option<&HealthCheck> {
    if svc.current.revision == rev {
        svc.current.health_check.as_ref()
    } else {
        svc.previous
            .as_ref()
            .filter(|p| p.revision == rev)
            .and_then(|p| p.health_check.as_ref())
    }
}

/// How a task ended, in a few words.
fn describe_end(t: &Task) -> String {
    let code = t.stop_code.map(|c| format!("{c:?}")).unwrap_or_default();
    let reason = t.stopped_reason.clone().unwrap_or_default();
    match t.exit_code {
        Some(x) => format!("{code}, exit code {x}: {reason}"),
        None => format!("{code}: {reason}"),
    }
}

struct Pass<'a> {
    srv: &'a Arc<Server>,
    svc: Service,
    changed: bool,
    now: u64,
}

impl Pass<'_> {
    fn event(&self, msg: &str) {
        Services::event(self.srv, &self.svc.name, msg);
    }

    /// A task failed (ended on its own or failed its health check): back off, count it
    /// against its deployment, say so.
    fn failure(&mut self, rt: &mut ServiceRuntime, revision: u64, ever_healthy: bool, what: &str) {
        if self.svc.status == ServiceStatus::Draining {
            self.event(what);
            return;
        }
        let delay = rt.failed(self.now);
        self.srv
            .services
            .metrics
            .replacements
            .get_or_create(&label(&self.svc.name))
            .inc();
        let d = &mut self.svc.deployment;
        if d.state == DeploymentState::InProgress && revision == d.revision && !ever_healthy {
            d.failed_tasks += 1;
            self.changed = true;
        }
        self.event(&format!(
            "{what}; replacing it ({} failures in a row: the next start waits {:.0} s)",
            rt.failures,
            delay as f64 / 1000.0
        ));
    }
}

fn reconcile(srv: &Arc<Server>, svc: Service, tasks: Vec<Task>) {
    let now = now_ms();
    let mut p = Pass {
        srv,
        svc,
        changed: false,
        now,
    };
    let name = p.svc.name.clone();
    let mut rts = lock(&srv.services.runtime);
    let rt = rts.entry(name.clone()).or_default();
    // Tasks that ended since the last pass.
    let live: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    let gone: Vec<String> = rt
        .tasks
        .keys()
        .filter(|id| !live.contains(id.as_str()))
        .cloned()
        .collect();
    let ended: Vec<(String, TaskRuntime)> = gone
        .into_iter()
        .filter_map(|id| rt.tasks.remove(&id).map(|k| (id, k)))
        .collect();
    for (id, k) in ended {
        if let Some(net) = &k.network {
            if rt.dns.remove(&id) {
                remove_name(srv, net, &id, &name);
            }
        }
        if k.stopped_by_us {
            continue;
        }
        let why = match srv.records.store.get(&id) {
            Ok(Some(t)) => describe_end(&t),
            _ => "its record is gone".into(),
        };
        p.failure(
            rt,
            k.revision,
            k.ever_healthy,
            &format!("task {id} ended ({why})"),
        );
    }
    // What the live ones are now.
    for t in &tasks {
        let rev = revision_of(t);
        let k = rt
            .tasks
            .entry(t.id.clone())
            .or_insert_with(|| TaskRuntime::new(rev, health_check_of(&p.svc, rev).cloned()));
        k.stopping |= t.stop_requested || t.state() == TaskState::Stopping;
        k.addr = t
            .network_interfaces
            .first()
            .and_then(|i| i.private_ipv4_address.parse().ok());
        k.network = match &t.network_mode {
            NetworkMode::Named(n) => Some(n.clone()),
            _ => None,
        };
        if t.state() != TaskState::Running || k.stopping {
            continue;
        }
        match &k.check {
            None => {
                if k.became_healthy(now) {
                    p.event(&format!("task {} is running", t.id));
                }
            }
            Some(hc) if !k.watching => {
                k.watching = true;
                watch::spawn(srv, &name, &t.id, hc.clone(), k.addr);
            }
            Some(_) => {}
        }
    }
    rt.forgive(now);
    autoscale(&mut p, rt, &tasks);
    // The plan.
    let draining = p.svc.status == ServiceStatus::Draining;
    let desired = if draining { 0 } else { p.svc.desired_count };
    let view: Vec<PlanTask> = tasks
        .iter()
        .map(|t| {
            let k = &rt.tasks[&t.id];
            PlanTask {
                id: t.id.clone(),
                revision: k.revision,
                health: k.health,
                stopping: k.stopping,
                accepted_ms: t.phases.accepted_ms,
            }
        })
        .collect();
    let may_start = !draining && now >= rt.next_start_ms && !srv.services.is_shutting_down();
    let cur = p.svc.current.revision;
    let plan = plan(desired, cur, p.svc.deployment_policy, &view, may_start);
    for (id, why) in &plan.stop {
        let Some(k) = rt.tasks.get_mut(id) else {
            continue;
        };
        let was_serving = k.serving();
        k.stopping = true;
        k.stopped_by_us = true;
        let (rev, err, ever) = (k.revision, k.last_error.clone(), k.ever_healthy);
        let retries = k.check.as_ref().map_or(0, |h| h.retries);
        match why {
            StopWhy::Unhealthy => {
                p.failure(
                    rt,
                    rev,
                    ever,
                    &format!(
                        "task {id} failed its health check {retries} times in a row ({})",
                        err.unwrap_or_default()
                    ),
                );
            }
            StopWhy::ScaleIn if draining => {
                p.event(&format!("stopping task {id}: the service is being deleted"))
            }
            StopWhy::ScaleIn => p.event(&format!("stopping task {id}: scaling in to {desired}")),
            StopWhy::Replaced => p.event(&format!(
                "stopping task {id} of revision {rev}: replaced by revision {cur}"
            )),
        }
        let backend = was_serving
            .zip(p.svc.load_balancer)
            .map(|(ip, lb)| SocketAddr::V4(SocketAddrV4::new(ip, lb.container_port)));
        stop_later(srv, id.clone(), &name, was_serving.is_some(), backend);
    }
    for _ in 0..plan.start {
        match start_task(srv, &p.svc) {
            Ok(id) => {
                let check = p.svc.current.health_check.clone();
                rt.tasks.insert(id.clone(), TaskRuntime::new(cur, check));
                p.event(&format!("started task {id} (revision {cur})"));
            }
            Err(e) => {
                let delay = rt.failed(now);
                p.event(&format!(
                    "cannot start a task: {e}; trying again in {:.0} s",
                    delay as f64 / 1000.0
                ));
                break;
            }
        }
    }
    deployment_progress(&mut p, rt, desired);
    route(srv, &p.svc, rt);
    // Gauges.
    let m = &srv.services.metrics;
    let running = tasks
        .iter()
        .filter(|t| t.state() == TaskState::Running && !rt.tasks[&t.id].stopping)
        .count();
    let healthy = rt
        .tasks
        .values()
        .filter(|k| k.health == Health::Healthy && !k.stopping)
        .count();
    m.desired
        .get_or_create(&label(&name))
        .set(i64::from(desired));
    m.running.get_or_create(&label(&name)).set(running as i64);
    m.healthy.get_or_create(&label(&name)).set(healthy as i64);
    if draining && tasks.is_empty() {
        drop(rts);
        finish_delete(srv, &name);
        return;
    }
    if p.changed {
        if let Err(e) = srv.records.store.update_service(&p.svc) {
            tracing::warn!(service = name, "cannot record the service: {e}");
        }
    }
}

/// Moves the desired count toward the CPU target, when the service autoscales: measured on
/// its serving tasks of the current revision.
fn autoscale(p: &mut Pass<'_>, rt: &mut ServiceRuntime, tasks: &[Task]) {
    let (Some(a), ServiceStatus::Active) = (p.svc.autoscaling, p.svc.status) else {
        return;
    };
    let cur = p.svc.current.revision;
    let samples: Vec<f64> = tasks
        .iter()
        .filter(|t| {
            rt.tasks
                .get(&t.id)
                .is_some_and(|k| k.revision == cur && k.health == Health::Healthy && !k.stopping)
        })
        .filter_map(|t| super::cpu_percent(p.srv, t))
        .collect();
    let desired = p.svc.desired_count;
    let Some(want) = super::autoscale::decide(&a, desired, &samples, p.now, rt.scaled) else {
        return;
    };
    if want > desired {
        rt.scaled.out_ms = p.now;
    } else {
        rt.scaled.in_ms = p.now;
    }
    let avg = samples.iter().sum::<f64>() / samples.len().max(1) as f64;
    p.svc.desired_count = want;
    p.changed = true;
    p.event(&format!(
        "autoscaling: average CPU {avg:.0}% of {} tasks (target {}%): desired count {desired} -> {want}",
        samples.len(),
        a.target_cpu_percent
    ));
}

/// Completes the deployment once only healthy tasks of its revision are left, or rolls it
/// back when too many of its tasks failed before becoming healthy.
fn deployment_progress(p: &mut Pass<'_>, rt: &ServiceRuntime, desired: u32) {
    let d = &p.svc.deployment;
    if d.state != DeploymentState::InProgress || p.svc.status == ServiceStatus::Draining {
        return;
    }
    let cur = p.svc.current.revision;
    let active = || rt.tasks.values().filter(|k| !k.stopping);
    let others = active().filter(|k| k.revision != cur).count();
    let healthy = active()
        .filter(|k| k.revision == cur && k.health == Health::Healthy)
        .count();
    if others == 0 && healthy >= desired as usize {
        let (rev, now) = (d.revision, p.now);
        p.svc.deployment.state = DeploymentState::Completed;
        p.svc.deployment.finished_ms = Some(now);
        p.changed = true;
        let secs = now.saturating_sub(p.svc.deployment.started_ms) as f64 / 1000.0;
        p.event(&format!(
            "deployment of revision {rev} completed in {secs:.1} s"
        ));
        p.srv
            .services
            .metrics
            .deployments
            .get_or_create(&outcome(&p.svc.name, "completed"))
            .inc();
        return;
    }
    let limit = rollback_threshold(desired);
    if d.failed_tasks < limit || d.revision != cur {
        return;
    }
    let (rev, failed) = (d.revision, d.failed_tasks);
    let reason =
        format!("{failed} of its tasks ended or failed their health check before becoming healthy");
    if p.svc.roll_back(reason.clone(), p.now) {
        p.changed = true;
        p.event(&format!(
            "deployment of revision {rev} failed: {reason}; rolled back to revision {}",
            p.svc.current.revision
        ));
        p.srv
            .services
            .metrics
            .deployments
            .get_or_create(&outcome(&p.svc.name, "rolled_back"))
            .inc();
    }
}

/// The load balancer's backends and the service's DNS name: its serving tasks.
fn route(srv: &Server, svc: &Service, rt: &mut ServiceRuntime) {
    if let Some(lb) = svc.load_balancer {
        let backends: Vec<SocketAddr> = rt
            .tasks
            .values()
            .filter_map(|k| k.serving())
            .map(|ip| SocketAddr::V4(SocketAddrV4::new(ip, lb.container_port)))
            .collect();
        let listening = lock(&srv.services.proxies).contains_key(&svc.name);
        // One that could not listen at start-up (its port was taken) is tried again.
        if !listening && svc.status == ServiceStatus::Active {
            match srv.services.bind_proxy(svc) {
                Ok(()) => Services::event(
                    srv,
                    &svc.name,
                    &format!("load balancer listening on {}:{}", lb.host_ip, lb.host_port),
                ),
                Err(e) => tracing::debug!(service = svc.name, "load balancer: {e}"),
            }
        }
        if let Some(proxy) = lock(&srv.services.proxies).get(&svc.name) {
            proxy.set_backends(backends);
        }
    }
    let Ok(reg) = &srv.networks else { return };
    for (id, k) in &rt.tasks {
        let (Some(net), serving) = (&k.network, k.serving()) else {
            continue;
        };
        match (serving, rt.dns.contains(id)) {
            (Some(ip), false) => {
                reg.names.add(net, id, ip, std::slice::from_ref(&svc.name));
                rt.dns.insert(id.clone());
            }
            (None, true) => {
                reg.names.remove_name(net, id, &svc.name);
                rt.dns.remove(id);
            }
            _ => {}
        }
    }
}

fn remove_name(srv: &Server, net: &str, id: &str, name: &str) {
    if let Ok(reg) = &srv.networks {
        reg.names.remove_name(net, id, name);
    }
}

/// A task of the current revision, from the template as it is checked for any task.
fn start_task(srv: &Arc<Server>, svc: &Service) -> Result<String, String> {
    let (limits, net) = srv.service_context();
    let cx = Context {
        limits: &limits,
        default_network: &net,
    };
    let task = cx
        .task(
            &svc.name,
            &svc.current.task_template,
            svc.current.revision,
            new_task_id(),
            now_ms(),
        )
        .map_err(|e| e.to_string())?;
    srv.submit(task).map(|t| t.id).map_err(|e| e.to_string())
}

/// Stops a task; one that served has left the load balancer already and is drained
/// first: [`DRAIN_MIN`], then until its connections through the load balancer have ended
/// (at most [`DRAIN_MAX`]).
fn stop_later(
    srv: &Arc<Server>,
    id: String,
    service: &str,
    served: bool,
    backend: Option<SocketAddr>,
) {
    let (srv, service) = (srv.clone(), service.to_owned());
    tokio::spawn(async move {
        if served {
            tokio::time::sleep(DRAIN_MIN).await;
        }
        if let Some(b) = backend {
            let until = std::time::Instant::now() + DRAIN_MAX;
            let open = || {
                lock(&srv.services.proxies)
                    .get(&service)
                    .map_or(0, |p| p.active(b))
            };
            while open() > 0 && std::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if let Err(e) = srv.stop(&id) {
            tracing::warn!(task = id, "cannot stop a service's task: {e}");
        }
    });
}

/// A drained service's last step: it is gone.
fn finish_delete(srv: &Server, name: &str) {
    lock(&srv.services.proxies).remove(name);
    lock(&srv.services.runtime).remove(name);
    srv.services.metrics.forget(name);
    match srv.records.store.delete_service(name) {
        Ok(()) => tracing::info!(service = name, "deleted"),
        Err(e) => tracing::warn!(service = name, "cannot delete the service: {e}"),
    }
}
