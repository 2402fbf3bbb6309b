//! Services (`/v1/services`): a task template kept at a desired count, with health checks,
//! rolling deployments and a load-balanced host port. This module holds what a service is
//! (`model`), how a request is checked (`request`), what the reconciler decides (`plan`)
//! and how services are stored (`store`); `crate::server::services` runs them.

pub mod model;
pub mod plan;
pub mod request;
mod store;

pub use model::{
    Autoscaling, Deployment, DeploymentPolicy, DeploymentState, HealthCheck, HttpGet, LoadBalancer,
    Revision, Service, ServiceStatus, REVISION_LABEL, SERVICE_LABEL,
};
pub use plan::{plan, Health, Plan, PlanTask, StopWhy};
pub use request::{Context, Patched, ServicePatch, ServiceRequest};
