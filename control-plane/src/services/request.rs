//! `POST /v1/services` and `PATCH /v1/services/{name}`: the bodies and their checks. Every
//! refusal names the field, with the task template's own fields under `taskTemplate.`.

use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;

use super::model::{
    Autoscaling, Deployment, DeploymentPolicy, DeploymentState, HealthCheck, HttpGet, LoadBalancer,
    Revision, Service, ServiceStatus, REVISION_LABEL, SERVICE_LABEL,
};
use crate::tasks::{Limits, NetworkMode, Task, TaskRequest, ValidationError};

/// What a client sends to make a service. Unknown fields are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceRequest {
    pub name: String,
    pub desired_count: i64,
    pub task_template: serde_json::Value,
    pub health_check: Option<HealthCheckRequest>,
    pub deployment: Option<DeploymentRequest>,
    pub autoscaling: Option<AutoscalingRequest>,
    pub load_balancer: Option<LoadBalancerRequest>,
}

/// What `PATCH` may change; a template or health check change starts a deployment.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePatch {
    pub desired_count: Option<i64>,
    pub task_template: Option<serde_json::Value>,
    /// `null` removes the health check.
    #[serde(default, deserialize_with = "present")]
    pub health_check: Option<Option<HealthCheckRequest>>,
    pub deployment: Option<DeploymentRequest>,
    /// `null` removes it.
    #[serde(default, deserialize_with = "present")]
    pub autoscaling: Option<Option<AutoscalingRequest>>,
    /// Accepted only as it is (a service's load balancer does not change).
    pub load_balancer: Option<LoadBalancerRequest>,
}

/// What a patch changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Patched {
    /// Anything at all (the record was written).
    pub changed: bool,
    /// A new revision, whose deployment started.
    pub deployed: bool,
}

/// A field that is present (`Some`), `null` included (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheckRequest {
    pub command: Option<Vec<String>>,
    pub http_get: Option<HttpGetRequest>,
    pub interval_seconds: Option<i64>,
    pub timeout_seconds: Option<i64>,
    pub retries: Option<i64>,
    pub start_period_seconds: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpGetRequest {
    pub port: i64,
    pub path: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentRequest {
    pub minimum_healthy_percent: Option<i64>,
    pub maximum_percent: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AutoscalingRequest {
    pub min_count: i64,
    pub max_count: i64,
    pub target_cpu_percent: i64,
    pub scale_out_cooldown_seconds: Option<i64>,
    pub scale_in_cooldown_seconds: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancerRequest {
    pub host_port: i64,
    pub container_port: i64,
    pub host_ip: Option<String>,
}

const DEFAULT_INTERVAL_S: u64 = 10;
const DEFAULT_TIMEOUT_S: u64 = 5;
const DEFAULT_RETRIES: u32 = 3;
const MAX_INTERVAL_S: i64 = 3600;
const MAX_RETRIES: i64 = 10;
const MAX_PATH: usize = 1024;

fn bad(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.into(),
    }
}

fn in_range(field: &str, v: i64, lo: i64, hi: i64) -> Result<i64, ValidationError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(bad(field, format!("{v}: must be {lo} to {hi}")))
    }
}

fn port(field: &str, p: i64) -> Result<u16, ValidationError> {
    in_range(field, p, 1, 65535).map(|p| p as u16)
}

/// What the server's checks need to know of it.
pub struct Context<'a> {
    pub limits: &'a Limits,
    pub default_network: &'a NetworkMode,
}

impl Context<'_> {
    /// Checks a template as the tasks made from it will be checked, and makes one such
    /// task (the service's labels added) with `id`.
    pub fn task(
        &self,
        service: &str,
        template: &serde_json::Value,
        revision: u64,
        id: String,
        now_ms: u64,
    ) -> Result<Task, ValidationError> {
        let mut req: TaskRequest = serde_path_to_error::deserialize(template).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "taskTemplate".to_owned()
            } else {
                format!("taskTemplate.{path}")
            };
            bad(field, e.into_inner().to_string())
        })?;
        if let Some(k) = req.labels.keys().find(|k| k.starts_with(SERVICE_LABEL)) {
            return Err(bad(
                format!("taskTemplate.labels.{k}"),
                format!("labels starting with {SERVICE_LABEL} are the server's"),
            ));
        }
        if !req.port_mappings.is_empty() {
            return Err(bad(
                "taskTemplate.portMappings",
                "a service's tasks cannot publish host ports (its tasks would need the same one); give the service a loadBalancer",
            ));
        }
        req.labels.insert(SERVICE_LABEL.into(), service.into());
        req.labels
            .insert(REVISION_LABEL.into(), revision.to_string());
        req.validate(self.limits, self.default_network, id, now_ms)
            .map_err(|e| bad(format!("taskTemplate.{}", e.field), e.message))
    }

    /// The most tasks of `task`'s size this host can run at once.
    fn host_limit(&self, task: &Task) -> u64 {
        let by_cpu = u64::from(self.limits.max_cpu / task.cpu.max(1));
        let by_mem = self.limits.max_memory_mib / task.memory_mib.max(1);
        by_cpu.min(by_mem)
    }

    fn count(&self, field: &str, n: i64, task: &Task) -> Result<u32, ValidationError> {
        let max = self.host_limit(task);
        if n < 0 {
            return Err(bad(field, format!("{n}: must not be negative")));
        }
        if n as u64 > max {
            return Err(bad(
                field,
                format!(
                    "{n} tasks of {} vCPU and {} MiB exceed what this host can run at once ({max})",
                    task.cpu, task.memory_mib
                ),
            ));
        }
        Ok(n as u32)
    }

    /// A checked health check for tasks like `task`.
    fn health_check(
        &self,
        h: HealthCheckRequest,
        task: &Task,
    ) -> Result<HealthCheck, ValidationError> {
        let http_get = match (&h.command, h.http_get) {
            (Some(_), Some(_)) => {
                return Err(bad("healthCheck", "give command or httpGet, not both"))
            }
            (None, None) => {
                return Err(bad(
                    "healthCheck",
                    "no way to check: give command or httpGet",
                ))
            }
            (Some(c), None) => {
                if c.is_empty() || c[0].is_empty() {
                    return Err(bad("healthCheck.command", "must not be empty"));
                }
                if let Some(i) = c.iter().position(|a| a.contains('\0')) {
                    return Err(bad(
                        format!("healthCheck.command[{i}]"),
                        "must not contain NUL bytes",
                    ));
                }
                None
            }
            (None, Some(g)) => {
                let port = port("healthCheck.httpGet.port", g.port)?;
                let path = g.path.unwrap_or_else(|| "/".into());
                if !path.starts_with('/')
                    || path.len() > MAX_PATH
                    || path.bytes().any(|b| b.is_ascii_control() || b == b' ')
                {
                    return Err(bad(
                        "healthCheck.httpGet.path",
                        format!("{path:?}: an absolute path of at most {MAX_PATH} bytes, no spaces or control characters"),
                    ));
                }
                if task.network_mode == NetworkMode::None {
                    return Err(bad(
                        "healthCheck.httpGet",
                        "the tasks have no network (taskTemplate.networkMode is none): use a command",
                    ));
                }
                Some(HttpGet { port, path })
            }
        };
        let interval = h
            .interval_seconds
            .map(|v| in_range("healthCheck.intervalSeconds", v, 1, MAX_INTERVAL_S))
            .transpose()?
            .map_or(DEFAULT_INTERVAL_S, |v| v as u64);
        let timeout = h
            .timeout_seconds
            .map(|v| in_range("healthCheck.timeoutSeconds", v, 1, MAX_INTERVAL_S))
            .transpose()?
            .map_or(DEFAULT_TIMEOUT_S.min(interval), |v| v as u64);
        if timeout > interval {
            return Err(bad(
                "healthCheck.timeoutSeconds",
                format!("{timeout}: must not exceed intervalSeconds ({interval})"),
            ));
        }
        let retries = h
            .retries
            .map(|v| in_range("healthCheck.retries", v, 1, MAX_RETRIES))
            .transpose()?
            .map_or(DEFAULT_RETRIES, |v| v as u32);
        let start_period = h
            .start_period_seconds
            .map(|v| in_range("healthCheck.startPeriodSeconds", v, 0, MAX_INTERVAL_S))
            .transpose()?
            .map_or(0, |v| v as u64);
        Ok(HealthCheck {
            command: h.command,
            http_get,
            interval_seconds: interval,
            timeout_seconds: timeout,
            retries,
            start_period_seconds: start_period,
        })
    }
}

fn policy(
    d: DeploymentRequest,
    base: DeploymentPolicy,
) -> Result<DeploymentPolicy, ValidationError> {
    let min = d
        .minimum_healthy_percent
        .map(|v| in_range("deployment.minimumHealthyPercent", v, 0, 100))
        .transpose()?
        .map_or(base.minimum_healthy_percent, |v| v as u32);
    let max = d
        .maximum_percent
        .map(|v| in_range("deployment.maximumPercent", v, 100, 200))
        .transpose()?
        .map_or(base.maximum_percent, |v| v as u32);
    Ok(DeploymentPolicy {
        minimum_healthy_percent: min,
        maximum_percent: max,
    })
}

fn load_balancer(l: LoadBalancerRequest, task: &Task) -> Result<LoadBalancer, ValidationError> {
    let host_port = port("loadBalancer.hostPort", l.host_port)?;
    let container_port = port("loadBalancer.containerPort", l.container_port)?;
    let host_ip = match l.host_ip.as_deref() {
        None | Some("") => Ipv4Addr::UNSPECIFIED,
        Some(s) => match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) if !ip.is_multicast() && !ip.is_broadcast() => ip,
            _ => {
                return Err(bad(
                    "loadBalancer.hostIp",
                    format!("{s:?} is not a unicast IPv4 address"),
                ))
            }
        },
    };
    if task.network_mode == NetworkMode::None {
        return Err(bad(
            "loadBalancer",
            "the tasks have no network (taskTemplate.networkMode is none)",
        ));
    }
    Ok(LoadBalancer {
        host_ip,
        host_port,
        container_port,
    })
}

const DEFAULT_SCALE_OUT_COOLDOWN_S: u64 = 60;
const DEFAULT_SCALE_IN_COOLDOWN_S: u64 = 300;
const MAX_COOLDOWN_S: i64 = 24 * 3600;

fn autoscaling(
    a: AutoscalingRequest,
    cx: &Context<'_>,
    task: &Task,
) -> Result<Autoscaling, ValidationError> {
    let min = cx.count("autoscaling.minCount", a.min_count, task)?;
    let max = cx.count("autoscaling.maxCount", a.max_count, task)?;
    if max < min || max == 0 {
        return Err(bad(
            "autoscaling.maxCount",
            format!("{max}: must be at least 1 and at least minCount ({min})"),
        ));
    }
    let target = in_range("autoscaling.targetCpuPercent", a.target_cpu_percent, 1, 100)? as u32;
    let cooldown = |field: &str, v: Option<i64>, default: u64| {
        v.map(|v| in_range(field, v, 0, MAX_COOLDOWN_S).map(|v| v as u64))
            .transpose()
            .map(|v| v.unwrap_or(default))
    };
    Ok(Autoscaling {
        min_count: min,
        max_count: max,
        target_cpu_percent: target,
        scale_out_cooldown_seconds: cooldown(
            "autoscaling.scaleOutCooldownSeconds",
            a.scale_out_cooldown_seconds,
            DEFAULT_SCALE_OUT_COOLDOWN_S,
        )?,
        scale_in_cooldown_seconds: cooldown(
            "autoscaling.scaleInCooldownSeconds",
            a.scale_in_cooldown_seconds,
            DEFAULT_SCALE_IN_COOLDOWN_S,
        )?,
    })
}

/// A count the autoscaler would not keep is refused rather than changed.
fn within(desired: u32, a: Option<&Autoscaling>) -> Result<(), ValidationError> {
    match a {
        Some(a) if desired < a.min_count || desired > a.max_count => Err(bad(
            "desiredCount",
            format!(
                "{desired} is outside autoscaling's {} to {}",
                a.min_count, a.max_count
            ),
        )),
        _ => Ok(()),
    }
}

impl ServiceRequest {
    /// Checks every field and makes the service record (revision 1, its deployment started).
    pub fn validate(self, cx: &Context<'_>, now_ms: u64) -> Result<Service, ValidationError> {
        crate::network::named::check_label(&self.name).map_err(|m| bad("name", m))?;
        let probe = cx.task(&self.name, &self.task_template, 1, "probe".into(), now_ms)?;
        let desired_count = cx.count("desiredCount", self.desired_count, &probe)?;
        let health_check = self
            .health_check
            .map(|h| cx.health_check(h, &probe))
            .transpose()?;
        let deployment_policy = self
            .deployment
            .map(|d| policy(d, DeploymentPolicy::default()))
            .transpose()?
            .unwrap_or_default();
        let autoscaling = self
            .autoscaling
            .map(|a| autoscaling(a, cx, &probe))
            .transpose()?;
        within(desired_count, autoscaling.as_ref())?;
        let load_balancer = self
            .load_balancer
            .map(|l| load_balancer(l, &probe))
            .transpose()?;
        Ok(Service {
            name: self.name,
            status: ServiceStatus::Active,
            desired_count,
            current: Revision {
                revision: 1,
                task_template: self.task_template,
                health_check,
            },
            previous: None,
            deployment: Deployment {
                revision: 1,
                state: DeploymentState::InProgress,
                started_ms: now_ms,
                finished_ms: None,
                failed_tasks: 0,
                reason: None,
            },
            deployment_policy,
            load_balancer,
            autoscaling,
            next_revision: 2,
            created_ms: now_ms,
            updated_ms: now_ms,
        })
    }
}

impl ServicePatch {
    /// Applies the patch to `svc` after checking it whole; a template or health check
    /// change makes a new revision and starts its deployment. A patch that changes nothing
    /// leaves the record as it was (`skiff apply` of the same file twice).
    pub fn apply(
        self,
        svc: &mut Service,
        cx: &Context<'_>,
        now_ms: u64,
    ) -> Result<Patched, ValidationError> {
        let template = self
            .task_template
            .clone()
            .unwrap_or_else(|| svc.current.task_template.clone());
        let probe = cx.task(
            &svc.name,
            &template,
            svc.next_revision,
            "probe".into(),
            now_ms,
        )?;
        let desired = self
            .desired_count
            .map(|n| cx.count("desiredCount", n, &probe))
            .transpose()?;
        let health = match self.health_check {
            None => svc.current.health_check.clone(),
            Some(None) => None,
            Some(Some(h)) => Some(cx.health_check(h, &probe)?),
        };
        if let Some(l) = self.load_balancer {
            if Some(load_balancer(l, &probe)?) != svc.load_balancer {
                return Err(bad(
                    "loadBalancer",
                    "cannot change on a service: delete it and create it again",
                ));
            }
        }
        if let Some(lb) = &svc.load_balancer {
            if probe.network_mode == NetworkMode::None {
                return Err(bad(
                    "taskTemplate.networkMode",
                    format!(
                        "the service's loadBalancer ({}) needs tasks with a network",
                        lb.host_port
                    ),
                ));
            }
        }
        let policy = self
            .deployment
            .map(|d| policy(d, svc.deployment_policy))
            .transpose()?;
        let scaling = match self.autoscaling {
            None => svc.autoscaling,
            Some(None) => None,
            Some(Some(a)) => Some(autoscaling(a, cx, &probe)?),
        };
        within(desired.unwrap_or(svc.desired_count), scaling.as_ref())?;
        // All checked: change it.
        let before = svc.clone();
        if let Some(n) = desired {
            svc.desired_count = n;
        }
        if let Some(p) = policy {
            svc.deployment_policy = p;
        }
        svc.autoscaling = scaling;
        let deployed = template != svc.current.task_template || health != svc.current.health_check;
        if deployed {
            svc.deploy(template, health, now_ms);
        }
        let changed = *svc != before;
        if changed {
            svc.updated_ms = now_ms;
        }
        Ok(Patched { changed, deployed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_cpu: 4,
        max_memory_mib: 1024,
    };

    fn cx() -> Context<'static> {
        Context {
            limits: &LIMITS,
            default_network: &NetworkMode::Default,
        }
    }

    fn create(json: serde_json::Value) -> Result<Service, String> {
        let r: ServiceRequest = serde_json::from_value(json).map_err(|e| e.to_string())?;
        r.validate(&cx(), 7).map_err(|e| e.to_string())
    }

    fn web() -> serde_json::Value {
        serde_json::json!({
            "name": "web", "desiredCount": 2,
            "taskTemplate": {"image": "busybox", "memoryMiB": 128},
            "healthCheck": {"httpGet": {"port": 80}, "intervalSeconds": 2},
            "loadBalancer": {"hostPort": 8080, "containerPort": 80, "hostIp": "127.0.0.1"}
        })
    }

    #[test]
    fn a_service_gets_its_defaults_and_revision_one() {
        let s = create(web()).unwrap();
        assert_eq!(
            (s.desired_count, s.current.revision, s.next_revision),
            (2, 1, 2)
        );
        let h = s.current.health_check.unwrap();
        assert_eq!(h.http_get.unwrap().path, "/");
        assert_eq!(
            (h.interval_seconds, h.timeout_seconds, h.retries),
            (2, 2, 3)
        );
        assert_eq!(s.deployment_policy, DeploymentPolicy::default());
        assert_eq!(s.load_balancer.unwrap().host_ip, Ipv4Addr::LOCALHOST);
        assert_eq!(s.deployment.state, DeploymentState::InProgress);
    }

    #[test]
    fn refusals_name_the_field() {
        let with = |path: &[&str], v: serde_json::Value| {
            let mut j = web();
            let mut at = &mut j;
            for p in &path[..path.len() - 1] {
                at = &mut at[*p];
            }
            at[path[path.len() - 1]] = v;
            j
        };
        for (json, want) in [
            (with(&["name"], "Web!".into()), "name:"),
            (with(&["desiredCount"], (-1).into()), "desiredCount: -1"),
            (with(&["desiredCount"], 9.into()), "desiredCount: 9 tasks of 1 vCPU and 128 MiB exceed what this host can run at once (4)"),
            (with(&["taskTemplate", "image"], "".into()), "taskTemplate.image:"),
            (with(&["taskTemplate", "cpus"], 1.into()), "taskTemplate.cpus: unknown field `cpus`"),
            (with(&["taskTemplate", "memoryMiB"], "x".into()), "taskTemplate.memoryMiB:"),
            (
                with(&["taskTemplate", "labels"], serde_json::json!({"skiff.service": "x"})),
                "taskTemplate.labels.skiff.service:",
            ),
            (
                with(&["taskTemplate", "portMappings"], serde_json::json!([{"containerPort": 80}])),
                "taskTemplate.portMappings:",
            ),
            (with(&["healthCheck"], serde_json::json!({})), "healthCheck: no way to check"),
            (
                with(&["healthCheck"], serde_json::json!({"command": ["true"], "httpGet": {"port": 80}})),
                "healthCheck: give command or httpGet, not both",
            ),
            (with(&["healthCheck", "httpGet", "port"], 0.into()), "healthCheck.httpGet.port:"),
            (with(&["healthCheck", "httpGet", "path"], "x y".into()), "healthCheck.httpGet.path:"),
            (with(&["healthCheck", "retries"], 0.into()), "healthCheck.retries:"),
            (with(&["healthCheck", "timeoutSeconds"], 5.into()), "healthCheck.timeoutSeconds: 5: must not exceed"),
            (with(&["deployment"], serde_json::json!({"maximumPercent": 99})), "deployment.maximumPercent:"),
            (with(&["deployment"], serde_json::json!({"minimumHealthyPercent": 101})), "deployment.minimumHealthyPercent:"),
            (with(&["loadBalancer", "hostPort"], 70000.into()), "loadBalancer.hostPort:"),
            (with(&["loadBalancer", "hostIp"], "::1".into()), "loadBalancer.hostIp:"),
            (with(&["taskTemplate", "networkMode"], "none".into()), "healthCheck.httpGet: the tasks have no network"),
            (with(&["autoscaling"], serde_json::json!({"minCount": 1})), "missing field `maxCount`"),
            (
                with(&["autoscaling"], serde_json::json!({"minCount": 3, "maxCount": 2, "targetCpuPercent": 50})),
                "autoscaling.maxCount: 2: must be at least 1 and at least minCount (3)",
            ),
            (
                with(&["autoscaling"], serde_json::json!({"minCount": 1, "maxCount": 9, "targetCpuPercent": 50})),
                "autoscaling.maxCount: 9 tasks",
            ),
            (
                with(&["autoscaling"], serde_json::json!({"minCount": 1, "maxCount": 2, "targetCpuPercent": 0})),
                "autoscaling.targetCpuPercent:",
            ),
            (
                with(&["autoscaling"], serde_json::json!({"minCount": 3, "maxCount": 4, "targetCpuPercent": 50})),
                "desiredCount: 2 is outside autoscaling's 3 to 4",
            ),
        ] {
            let e = create(json.clone()).unwrap_err();
            assert!(e.starts_with(want), "{json}: {e}");
        }
        let e = create(
            with(&["healthCheck", "intervalSeconds"], 2.into())
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("replicas".into(), 1.into());
                    serde_json::Value::Object(o)
                })
                .unwrap(),
        )
        .unwrap_err();
        assert!(e.contains("unknown field `replicas`"), "{e}");
    }

    #[test]
    fn a_patch_of_the_template_or_health_check_is_a_new_revision() {
        let mut s = create(web()).unwrap();
        let patch = |j: serde_json::Value| serde_json::from_value::<ServicePatch>(j).unwrap();
        // A count alone is no deployment.
        let p = patch(serde_json::json!({"desiredCount": 3}))
            .apply(&mut s, &cx(), 8)
            .unwrap();
        assert_eq!(
            p,
            Patched {
                changed: true,
                deployed: false
            }
        );
        assert_eq!(
            (s.desired_count, s.current.revision, s.updated_ms),
            (3, 1, 8)
        );
        // The whole service as it was created, again: nothing changes.
        let mut again = web();
        again.as_object_mut().unwrap().remove("name");
        again["desiredCount"] = 3.into();
        let p = patch(again).apply(&mut s, &cx(), 9).unwrap();
        assert_eq!(p, Patched::default());
        assert_eq!(s.updated_ms, 8);
        let t = serde_json::json!({"taskTemplate": {"image": "busybox", "memoryMiB": 128, "env": {"V": "2"}}});
        assert!(patch(t).apply(&mut s, &cx(), 10).unwrap().deployed);
        assert_eq!(
            (s.current.revision, s.previous.as_ref().unwrap().revision),
            (2, 1)
        );
        assert_eq!(
            (s.deployment.revision, s.deployment.state),
            (2, DeploymentState::InProgress)
        );
        // Removing the health check is a revision too.
        assert!(
            patch(serde_json::json!({"healthCheck": null}))
                .apply(&mut s, &cx(), 11)
                .unwrap()
                .deployed
        );
        assert_eq!(
            (s.current.revision, s.current.health_check.is_none()),
            (3, true)
        );
        // A bad patch changes nothing.
        let before = s.clone();
        let e = patch(serde_json::json!({"desiredCount": 2, "taskTemplate": {"image": ""}}))
            .apply(&mut s, &cx(), 12)
            .unwrap_err();
        assert!(e.to_string().starts_with("taskTemplate.image:"), "{e}");
        assert_eq!(s, before);
        let lb = serde_json::json!({"loadBalancer": {"hostPort": 8081, "containerPort": 80}});
        let e = patch(lb).apply(&mut s, &cx(), 12).unwrap_err();
        assert_eq!(e.field, "loadBalancer");
        // Rolling back brings the previous revision back.
        assert!(s.roll_back("never healthy".into(), 13));
        assert_eq!(
            (s.current.revision, s.deployment.state),
            (2, DeploymentState::RolledBack)
        );
        assert!(!s.roll_back("again".into(), 14));
    }
}
