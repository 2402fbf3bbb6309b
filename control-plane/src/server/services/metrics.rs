//! Per-service metrics: desired, running and healthy tasks, replacements, deployments, and
//! the load balancer's connections.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub service: String,
    pub outcome: String,
}

#[derive(Default, Clone)]
pub struct ServiceMetrics {
    pub desired: Family<ServiceLabel, Gauge>,
    pub running: Family<ServiceLabel, Gauge>,
    pub healthy: Family<ServiceLabel, Gauge>,
    /// Tasks started in place of ones that ended or failed their health check.
    pub replacements: Family<ServiceLabel, Counter>,
    /// Deployments by how they ended (completed, rolled_back).
    pub deployments: Family<OutcomeLabel, Counter>,
    /// Connections the load balancer accepted, by outcome (proxied, no_backend).
    pub connections: Family<OutcomeLabel, Counter>,
}

pub fn label(service: &str) -> ServiceLabel {
    ServiceLabel {
        service: service.to_owned(),
    }
}

pub fn outcome(service: &str, outcome: &str) -> OutcomeLabel {
    OutcomeLabel {
        service: service.to_owned(),
        outcome: outcome.to_owned(),
    }
}

impl ServiceMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "service_desired_tasks",
            "Tasks a service should have",
            self.desired.clone(),
        );
        r.register(
            "service_running_tasks",
            "A service's tasks whose process runs",
            self.running.clone(),
        );
        r.register(
            "service_healthy_tasks",
            "A service's tasks that pass their health check",
            self.healthy.clone(),
        );
        r.register(
            "service_task_replacements",
            "Tasks started to replace ones that ended or failed their health check",
            self.replacements.clone(),
        );
        r.register(
            "service_deployments",
            "Deployments ended, by outcome",
            self.deployments.clone(),
        );
        r.register(
            "service_lb_connections",
            "Connections the service's load balancer accepted, by outcome",
            self.connections.clone(),
        );
    }

    /// Forgets a deleted service's series.
    pub fn forget(&self, service: &str) {
        let l = label(service);
        self.desired.remove(&l);
        self.running.remove(&l);
        self.healthy.remove(&l);
        self.replacements.remove(&l);
        for o in ["completed", "rolled_back"] {
            self.deployments.remove(&outcome(service, o));
        }
        for o in ["proxied", "no_backend"] {
            self.connections.remove(&outcome(service, o));
        }
    }
}
