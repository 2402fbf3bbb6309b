//! A service as it is stored and shown: a task template the control plane keeps
//! `desiredCount` copies of, its health check, how it is rolled out, and how clients reach
//! it. ECS's names where they fit.

use serde::{Deserialize, Serialize};

/// The label every task of a service carries: the service's name.
pub const SERVICE_LABEL: &str = "skiff.service";
/// The label that tells which revision of its service a task runs.
pub const REVISION_LABEL: &str = "skiff.service.revision";

/// Where a service is in its life (ECS: ACTIVE, DRAINING).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceStatus {
    /// Kept at its desired count.
    Active,
    /// Being deleted: its tasks are stopped, then the service goes.
    Draining,
}

/// How the agent's side of a health check reaches the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpGet {
    pub port: u16,
    pub path: String,
}

/// A checked health check (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Run in the task's container; healthy when it exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// An HTTP GET from the host to the task's address; healthy on 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGet>,
    pub interval_seconds: u64,
    pub timeout_seconds: u64,
    /// Consecutive failures that make a task unhealthy.
    pub retries: u32,
    /// Failures in this long after the process starts do not count.
    pub start_period_seconds: u64,
}

/// How a new revision replaces the old one (ECS's rolling update).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentPolicy {
    /// Healthy tasks kept during a deployment, % of `desiredCount` (rounded up).
    pub minimum_healthy_percent: u32,
    /// Tasks that may exist during a deployment, % of `desiredCount` (rounded down).
    pub maximum_percent: u32,
}

impl Default for DeploymentPolicy {
    fn default() -> Self {
        Self {
            minimum_healthy_percent: 100,
            maximum_percent: 200,
        }
    }
}

/// A port on the host whose connections are spread over the service's healthy tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    pub host_ip: std::net::Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
}

/// Scaling on measured CPU: the count follows the tasks' average CPU use toward the target
/// (as ECS's target tracking does), between `minCount` and `maxCount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    pub min_count: u32,
    pub max_count: u32,
    /// Average CPU use of the tasks, % of their vCPUs.
    pub target_cpu_percent: u32,
    /// After a scale-out, the next one waits this long.
    pub scale_out_cooldown_seconds: u64,
    /// After any scaling, a scale-in waits this long.
    pub scale_in_cooldown_seconds: u64,
}

/// One version of what the service's tasks are: a template and its health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    pub revision: u64,
    /// The fields of `POST /v1/tasks`, checked when it was given.
    pub task_template: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// Where the newest deployment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentState {
    InProgress,
    Completed,
    /// Its tasks never became healthy: the previous revision was brought back.
    RolledBack,
}

/// The newest deployment: the service's move to its current revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// The revision it deploys.
    pub revision: u64,
    pub state: DeploymentState,
    pub started_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// Tasks of this revision that ended or failed their health check before the
    /// deployment completed.
    pub failed_tasks: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A service record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub status: ServiceStatus,
    pub desired_count: u32,
    /// What its tasks are now.
    pub current: Revision,
    /// What they were before the current deployment, kept to roll back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Revision>,
    pub deployment: Deployment,
    pub deployment_policy: DeploymentPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// The revision number the next template change gets.
    pub next_revision: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl Service {
    /// Makes `rev` the current revision and starts its deployment.
    pub fn deploy(
        &mut self,
        task_template: serde_json::Value,
        health_check: Option<HealthCheck>,
        now_ms: u64,
    ) {
        let revision = self.next_revision;
        self.next_revision += 1;
        let old = std::mem::replace(
            &mut self.current,
            Revision {
                revision,
                task_template,
                health_check,
            },
        );
        self.previous = Some(old);
        self.deployment = Deployment {
            revision,
            state: DeploymentState::InProgress,
            started_ms: now_ms,
            finished_ms: None,
            failed_tasks: 0,
            reason: None,
        };
        self.updated_ms = now_ms;
    }

    /// Brings the previous revision back (the current one's tasks never became healthy).
    /// False when there is none to go back to.
    pub fn roll_back(&mut self, reason: String, now_ms: u64) -> bool {
        let Some(prev) = self.previous.take() else {
            return false;
        };
        self.current = prev;
        self.deployment.state = DeploymentState::RolledBack;
        self.deployment.finished_ms = Some(now_ms);
        self.deployment.reason = Some(reason);
        self.updated_ms = now_ms;
        true
    }
}
