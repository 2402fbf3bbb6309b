//! Services in the running server: the API's operations on them (create, inspect, patch,
//! delete), what the reconciler knows of each service's tasks (`runtime`), the reconciler
//! itself (`reconcile`), health checks (`health`, `watch`) and load balancers (`proxy`).

mod autoscale;
mod health;
pub mod metrics;
pub mod proxy;
mod reconcile;
mod runtime;
mod watch;

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use super::Server;
use crate::services::{
    Context, Health, Service, ServicePatch, ServiceRequest, ServiceStatus, REVISION_LABEL,
    SERVICE_LABEL,
};
use crate::tasks::store::Event;
use crate::tasks::{now_ms, StoreError, Task, TaskState, ValidationError};

pub use metrics::ServiceMetrics;
use proxy::Proxy;
use runtime::ServiceRuntime;

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("a service named {0:?} exists")]
    Exists(String),
    #[error("service {0:?} is being deleted")]
    Draining(String),
    #[error("service {0:?} not found")]
    NotFound(String),
    #[error("loadBalancer.hostPort: {addr}: the host port is not free: {source}")]
    PortTaken {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The server's services: their runtime state, load balancers and reconciler wake-up.
#[derive(Default)]
pub struct Services {
    runtime: Mutex<HashMap<String, ServiceRuntime>>,
    proxies: Mutex<HashMap<String, Proxy>>,
    /// Held while a service record is read, changed and written (API and reconciler).
    records: Mutex<()>,
    wake: Arc<tokio::sync::Notify>,
    /// The server is shutting down: nothing is started or replaced any more.
    shutting_down: AtomicBool,
    pub metrics: ServiceMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One task of a service, as `GET /v1/services/{name}` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTask {
    pub task_id: String,
    pub state: TaskState,
    pub health: Health,
    pub revision: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_ipv4_address: Option<String>,
    /// CPU use over its last usage reports, % of its vCPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// Why the last health check failed, while it fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_check_error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listening: Option<String>,
    pub targets: Vec<String>,
}

/// A service with what is true of it now.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    #[serde(flatten)]
    pub service: Service,
    /// Tasks whose process runs (not being stopped).
    pub running_count: usize,
    /// Running tasks that pass their health check (all running ones without a check).
    pub healthy_count: usize,
    /// Tasks on their way (image, capacity, VM).
    pub pending_count: usize,
    pub tasks: Vec<ServiceTask>,
    /// Where the load balancer listens (absent while it cannot) and the tasks it spreads
    /// connections over now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer_status: Option<LoadBalancerStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Event>>,
}

/// The revision a task of a service runs (0 when its label is missing or garbled).
fn revision_of(t: &Task) -> u64 {
    t.labels
        .get(REVISION_LABEL)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// A running task's CPU use, % of its vCPUs, rounded to 0.1.
fn cpu_percent(srv: &Server, t: &Task) -> Option<f64> {
    let used = srv.live(&t.id)?.cpu_use()?;
    Some((used * 1000.0 / f64::from(t.cpu.max(1))).round() / 10.0)
}

/// Every unfinished task, grouped by the service that owns it.
fn tasks_by_service(srv: &Server) -> Result<HashMap<String, Vec<Task>>, StoreError> {
    let mut by: HashMap<String, Vec<Task>> = HashMap::new();
    for t in srv.records.store.unfinished()? {
        if let Some(name) = t.labels.get(SERVICE_LABEL) {
            by.entry(name.clone()).or_default().push(t);
        }
    }
    Ok(by)
}

impl Services {
    /// Wakes the reconciler now rather than at its next tick.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn wake_handle(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// No more starts or replacements (the server is stopping its tasks).
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Records an event in the service's history (and the log).
    pub fn event(srv: &Server, name: &str, message: &str) {
        tracing::info!(service = name, "{message}");
        if let Err(e) = srv.records.store.add_service_event(name, now_ms(), message) {
            tracing::warn!(service = name, "cannot record event: {e}");
        }
    }

    fn bind_proxy(&self, svc: &Service) -> Result<(), ServicesError> {
        let Some(lb) = svc.load_balancer else {
            return Ok(());
        };
        let addr = SocketAddr::V4(SocketAddrV4::new(lb.host_ip, lb.host_port));
        let p = Proxy::bind(addr, svc.name.clone(), self.metrics.clone())
            .map_err(|source| ServicesError::PortTaken { addr, source })?;
        lock(&self.proxies).insert(svc.name.clone(), p);
        Ok(())
    }

    fn view(
        &self,
        srv: &Server,
        svc: Service,
        tasks: &[Task],
        events: Option<Vec<Event>>,
    ) -> ServiceView {
        let rt = lock(&self.runtime);
        let rt = rt.get(&svc.name);
        let mut view_tasks = Vec::with_capacity(tasks.len());
        let (mut running, mut healthy, mut pending) = (0, 0, 0);
        for t in tasks {
            let known = rt.and_then(|r| r.tasks.get(&t.id));
            let health = known.map_or(Health::Starting, |k| k.health);
            match t.state() {
                TaskState::Running => {
                    running += 1;
                    if health == Health::Healthy {
                        healthy += 1;
                    }
                }
                TaskState::Provisioning | TaskState::Pending => pending += 1,
                TaskState::Stopping | TaskState::Stopped => {}
            }
            view_tasks.push(ServiceTask {
                task_id: t.id.clone(),
                state: t.state(),
                health,
                revision: revision_of(t),
                private_ipv4_address: t
                    .network_interfaces
                    .first()
                    .map(|i| i.private_ipv4_address.clone()),
                cpu_percent: cpu_percent(srv, t),
                last_check_error: known.and_then(|k| k.last_error.clone()),
            });
        }
        let load_balancer_status = svc.load_balancer.map(|_| {
            let proxies = lock(&self.proxies);
            let p = proxies.get(&svc.name);
            LoadBalancerStatus {
                listening: p.map(|p| p.addr.to_string()),
                targets: p.map_or_else(Vec::new, |p| {
                    p.backends().iter().map(|b| b.to_string()).collect()
                }),
            }
        });
        ServiceView {
            load_balancer_status,
            service: svc,
            running_count: running,
            healthy_count: healthy,
            pending_count: pending,
            tasks: view_tasks,
            events,
        }
    }
}

impl Server {
    fn service_context(&self) -> (crate::tasks::Limits, crate::tasks::NetworkMode) {
        (self.limits(), self.cfg.default_network.clone())
    }

    /// Makes a service: checked, its load balancer listening, stored; the reconciler
    /// starts its tasks.
    pub fn create_service(&self, req: ServiceRequest) -> Result<ServiceView, ServicesError> {
        let (limits, net) = self.service_context();
        let cx = Context {
            limits: &limits,
            default_network: &net,
        };
        let svc = req.validate(&cx, now_ms())?;
        self.check_template_network(&svc)?;
        let _g = lock(&self.services.records);
        if let Some(old) = self.records.store.service(&svc.name)? {
            return Err(match old.status {
                ServiceStatus::Draining => ServicesError::Draining(svc.name),
                ServiceStatus::Active => ServicesError::Exists(svc.name),
            });
        }
        self.services.bind_proxy(&svc)?;
        if !self.records.store.insert_service(&svc)? {
            lock(&self.services.proxies).remove(&svc.name);
            return Err(ServicesError::Exists(svc.name));
        }
        Services::event(
            self,
            &svc.name,
            &format!("created: {} tasks of revision 1", svc.desired_count),
        );
        self.services.wake();
        Ok(self.services.view(self, svc, &[], None))
    }

    /// A template's network must exist here, as a task's must.
    fn check_template_network(&self, svc: &Service) -> Result<(), ServicesError> {
        let (limits, net) = self.service_context();
        let cx = Context {
            limits: &limits,
            default_network: &net,
        };
        let probe = cx.task(&svc.name, &svc.current.task_template, 1, "probe".into(), 0)?;
        let bad = |m: String| ValidationError {
            field: "taskTemplate.networkMode".into(),
            message: m,
        };
        if let Some(name) = super::networking::network_name(&probe.network_mode) {
            match &self.networks {
                Err(why) => {
                    return Err(bad(format!(
                        "task networks are not available on this server: {why}"
                    ))
                    .into())
                }
                Ok(reg) if reg.get(name).is_none() => {
                    return Err(bad(format!(
                        "no network named {name:?} (skiff network ls lists them)"
                    ))
                    .into())
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }

    fn stored_service(&self, name: &str) -> Result<Service, ServicesError> {
        self.records
            .store
            .service(name)?
            .ok_or_else(|| ServicesError::NotFound(name.into()))
    }

    pub fn services_list(&self) -> Result<Vec<ServiceView>, ServicesError> {
        let mut tasks = tasks_by_service(self)?;
        Ok(self
            .records
            .store
            .services()?
            .into_iter()
            .map(|s| {
                let t = tasks.remove(&s.name).unwrap_or_default();
                self.services.view(self, s, &t, None)
            })
            .collect())
    }

    pub fn service_view(&self, name: &str) -> Result<ServiceView, ServicesError> {
        let svc = self.stored_service(name)?;
        let tasks = tasks_by_service(self)?.remove(name).unwrap_or_default();
        let events = self.records.store.service_events(name)?;
        Ok(self.services.view(self, svc, &tasks, Some(events)))
    }

    /// Changes a service; a new template or health check starts a rolling deployment.
    pub fn patch_service(
        &self,
        name: &str,
        patch: ServicePatch,
    ) -> Result<ServiceView, ServicesError> {
        let (limits, net) = self.service_context();
        let cx = Context {
            limits: &limits,
            default_network: &net,
        };
        let svc = {
            let _g = lock(&self.services.records);
            let mut svc = self.stored_service(name)?;
            if svc.status == ServiceStatus::Draining {
                return Err(ServicesError::Draining(name.into()));
            }
            let before = svc.desired_count;
            let patched = patch.apply(&mut svc, &cx, now_ms())?;
            self.check_template_network(&svc)?;
            if patched.changed {
                self.records.store.update_service(&svc)?;
            }
            if before != svc.desired_count {
                Services::event(
                    self,
                    name,
                    &format!("desired count {before} -> {}", svc.desired_count),
                );
            }
            if patched.deployed {
                Services::event(
                    self,
                    name,
                    &format!("deployment of revision {} started", svc.current.revision),
                );
            }
            svc
        };
        self.services.wake();
        let tasks = tasks_by_service(self)?.remove(name).unwrap_or_default();
        Ok(self.services.view(self, svc, &tasks, None))
    }

    /// Drains a service: its tasks are stopped, then it is gone.
    pub fn delete_service(&self, name: &str) -> Result<ServiceView, ServicesError> {
        let svc = {
            let _g = lock(&self.services.records);
            let mut svc = self.stored_service(name)?;
            if svc.status != ServiceStatus::Draining {
                svc.status = ServiceStatus::Draining;
                svc.updated_ms = now_ms();
                self.records.store.update_service(&svc)?;
                Services::event(self, name, "deleting: draining its tasks");
            }
            svc
        };
        self.services.wake();
        let tasks = tasks_by_service(self)?.remove(name).unwrap_or_default();
        Ok(self.services.view(self, svc, &tasks, None))
    }
}

/// Brings the services back at start-up (their load balancers listening again) and starts
/// the reconciler.
pub fn start(srv: &Arc<Server>) -> Result<(), StoreError> {
    for svc in srv.records.store.services()? {
        if let Err(e) = srv.services.bind_proxy(&svc) {
            Services::event(srv, &svc.name, &format!("load balancer not listening: {e}"));
        }
    }
    reconcile::spawn(srv);
    Ok(())
}
