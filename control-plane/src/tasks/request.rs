//! `POST /v1/tasks`: the request body and its validation. Every refusal names the field.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::model::{NetworkMode, Phases, Task, TaskState};
use crate::images::Reference;

/// What a user submits. Unknown fields are refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskRequest {
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// vCPUs of the task's VM.
    pub cpu: Option<u32>,
    /// Memory of the task's VM, MiB: also the task's memory limit.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: Option<u64>,
    pub timeout_seconds: Option<u64>,
    pub stop_timeout_seconds: Option<u64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `none` (loopback only), `default`, or a named network; when absent, the server's
    /// default (`skiff serve --default-network`, itself `default` unless set).
    pub network_mode: Option<NetworkMode>,
    /// A name other tasks on its network resolve (a DNS label).
    pub name: Option<String>,
    /// Ports published on the host (needs a network).
    #[serde(default)]
    pub port_mappings: Vec<super::ports::PortMappingRequest>,
}

/// The largest task this host can ever run (its capacity).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_cpu: u32,
    pub max_memory_mib: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

pub const DEFAULT_CPU: u32 = 1;
pub const DEFAULT_MEMORY_MIB: u64 = 256;
pub const DEFAULT_STOP_TIMEOUT_S: u64 = 10;
const MIN_MEMORY_MIB: u64 = 64;
const MAX_VCPUS: u32 = 64;
const MAX_TIMEOUT_S: u64 = 7 * 24 * 3600;
const MAX_STOP_TIMEOUT_S: u64 = 3600;
const MAX_LABELS: usize = 64;

fn bad(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.into(),
    }
}

fn no_nul(field: &str, s: &str) -> Result<(), ValidationError> {
    if s.contains('\0') {
        return Err(bad(field, "must not contain NUL bytes"));
    }
    Ok(())
}

fn argv(field: &str, v: Option<Vec<String>>) -> Result<Option<Vec<String>>, ValidationError> {
    let Some(v) = v else { return Ok(None) };
    for (i, a) in v.iter().enumerate() {
        no_nul(&format!("{field}[{i}]"), a)?;
    }
    Ok((!v.is_empty()).then_some(v))
}

impl TaskRequest {
    /// Checks every field against `limits` and makes the task record; a task that names no
    /// network gets `default_network`.
    pub fn validate(
        self,
        limits: &Limits,
        default_network: &NetworkMode,
        id: String,
        now_ms: u64,
    ) -> Result<Task, ValidationError> {
        let network_mode = self
            .network_mode
            .clone()
            .unwrap_or_else(|| default_network.clone());
        let image = self.image.trim().to_owned();
        if image.is_empty() {
            return Err(bad("image", "must not be empty"));
        }
        image
            .parse::<Reference>()
            .map_err(|e| bad("image", format!("{image:?} is not an image reference: {e}")))?;
        let cpu = self.cpu.unwrap_or(DEFAULT_CPU);
        if !(1..=MAX_VCPUS).contains(&cpu) {
            return Err(bad("cpu", format!("{cpu} vCPUs: must be 1 to {MAX_VCPUS}")));
        }
        if cpu > limits.max_cpu {
            return Err(bad(
                "cpu",
                format!(
                    "{cpu} vCPUs exceed this host's capacity of {}",
                    limits.max_cpu
                ),
            ));
        }
        let memory_mib = self.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        if memory_mib < MIN_MEMORY_MIB {
            return Err(bad(
                "memoryMiB",
                format!("{memory_mib} MiB: at least {MIN_MEMORY_MIB} MiB"),
            ));
        }
        if memory_mib > limits.max_memory_mib {
            return Err(bad(
                "memoryMiB",
                format!(
                    "{memory_mib} MiB exceed this host's capacity of {} MiB",
                    limits.max_memory_mib
                ),
            ));
        }
        if let Some(t) = self.timeout_seconds {
            if !(1..=MAX_TIMEOUT_S).contains(&t) {
                return Err(bad(
                    "timeoutSeconds",
                    format!("{t}: must be 1 to {MAX_TIMEOUT_S}"),
                ));
            }
        }
        let stop_timeout = self.stop_timeout_seconds.unwrap_or(DEFAULT_STOP_TIMEOUT_S);
        if stop_timeout > MAX_STOP_TIMEOUT_S {
            return Err(bad(
                "stopTimeoutSeconds",
                format!("{stop_timeout}: at most {MAX_STOP_TIMEOUT_S}"),
            ));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') {
                return Err(bad("env", format!("{k:?} is not a variable name")));
            }
            no_nul(&format!("env.{k}"), k)?;
            no_nul(&format!("env.{k}"), v)?;
        }
        if let Some(w) = &self.working_dir {
            if !w.starts_with('/') {
                return Err(bad("workingDir", format!("{w:?} is not an absolute path")));
            }
            no_nul("workingDir", w)?;
        }
        if let Some(u) = &self.user {
            if u.is_empty() {
                return Err(bad("user", "must not be empty when given"));
            }
            no_nul("user", u)?;
        }
        if self.labels.len() > MAX_LABELS {
            return Err(bad("labels", format!("at most {MAX_LABELS} labels")));
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.len() > 128 || v.len() > 256 {
                return Err(bad(
                    format!("labels.{k}"),
                    "keys are 1 to 128 bytes, values at most 256",
                ));
            }
        }
        if let NetworkMode::Named(n) = &network_mode {
            crate::network::named::check_network_name(n).map_err(|m| bad("networkMode", m))?;
        }
        if let Some(n) = &self.name {
            crate::network::named::check_label(n).map_err(|m| bad("name", m))?;
        }
        let port_mappings = super::ports::check(&self.port_mappings)?;
        if !port_mappings.is_empty() && network_mode == NetworkMode::None {
            let why = if self.network_mode.is_some() {
                "publishing ports needs a network, and networkMode is \"none\""
            } else {
                "publishing ports needs a network, and this server's default is none: give networkMode \"default\""
            };
            return Err(bad("portMappings", why));
        }
        Ok(Task {
            id,
            state: TaskState::Provisioning,
            stop_requested: false,
            image,
            image_digest: None,
            command: argv("command", self.command)?,
            entrypoint: argv("entrypoint", self.entrypoint)?,
            env: self.env,
            working_dir: self.working_dir,
            user: self.user,
            cpu,
            memory_mib,
            timeout_seconds: self.timeout_seconds,
            stop_timeout_seconds: stop_timeout,
            labels: self.labels,
            exit_code: None,
            stop_code: None,
            stopped_reason: None,
            usage: None,
            phases: Phases {
                accepted_ms: now_ms,
                ..Default::default()
            },
            start_mode: None,
            vmm_pid: None,
            network_mode,
            name: self.name,
            port_mappings,
            network_interfaces: Vec::new(),
            network_timings: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_cpu: 4,
        max_memory_mib: 4096,
    };

    fn check(json: &str) -> Result<Task, String> {
        let r: TaskRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        r.validate(&LIMITS, &NetworkMode::None, "t1".into(), 5)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_fill_in() {
        let t = check(r#"{"image":"busybox"}"#).unwrap();
        assert_eq!((t.cpu, t.memory_mib, t.stop_timeout_seconds), (1, 256, 10));
        assert_eq!(t.state, TaskState::Provisioning);
        assert_eq!(t.phases.accepted_ms, 5);
    }

    #[test]
    fn a_task_without_a_network_mode_gets_the_servers_default() {
        let req = |json: &str| serde_json::from_str::<TaskRequest>(json).unwrap();
        let on = |r: TaskRequest, default: &NetworkMode| {
            r.validate(&LIMITS, default, "t1".into(), 5)
                .map(|t| t.network_mode)
                .map_err(|e| e.to_string())
        };
        let web = NetworkMode::Named("web".into());
        assert_eq!(
            on(req(r#"{"image":"b"}"#), &NetworkMode::Default),
            Ok(NetworkMode::Default)
        );
        assert_eq!(on(req(r#"{"image":"b"}"#), &web), Ok(web.clone()));
        assert_eq!(
            on(
                req(r#"{"image":"b","networkMode":"none"}"#),
                &NetworkMode::Default
            ),
            Ok(NetworkMode::None)
        );
        assert_eq!(
            on(
                req(r#"{"image":"b","networkMode":"bridge"}"#),
                &NetworkMode::None
            ),
            Ok(NetworkMode::Default)
        );
        // Ports with no network: the message says where the none came from.
        let ports = r#"{"image":"b","portMappings":[{"containerPort":80}]"#;
        let absent = on(req(&format!("{ports}}}")), &NetworkMode::None).unwrap_err();
        assert!(absent.contains("this server's default is none"), "{absent}");
        let given = on(
            req(&format!(r#"{ports},"networkMode":"none"}}"#)),
            &NetworkMode::Default,
        )
        .unwrap_err();
        assert!(given.contains("networkMode is \"none\""), "{given}");
    }

    #[test]
    fn refusals_name_the_field() {
        for (json, field) in [
            (r#"{"image":""}"#, "image:"),
            (r#"{"image":"  "}"#, "image:"),
            (r#"{"image":"UPPER/Case"}"#, "image:"),
            (r#"{"image":"b","cpu":0}"#, "cpu:"),
            (r#"{"image":"b","cpu":65}"#, "cpu:"),
            (r#"{"image":"b","cpu":8}"#, "cpu: 8 vCPUs exceed"),
            (r#"{"image":"b","memoryMiB":1}"#, "memoryMiB:"),
            (r#"{"image":"b","memoryMiB":999999999}"#, "memoryMiB:"),
            (r#"{"image":"b","timeoutSeconds":0}"#, "timeoutSeconds:"),
            (
                r#"{"image":"b","stopTimeoutSeconds":99999}"#,
                "stopTimeoutSeconds:",
            ),
            (r#"{"image":"b","env":{"A=B":"c"}}"#, "env:"),
            (r#"{"image":"b","workingDir":"rel"}"#, "workingDir:"),
            (r#"{"image":"b","command":["a\u0000b"]}"#, "command[0]:"),
            (
                r#"{"image":"b","portMappings":[{"containerPort":80}]}"#,
                "portMappings:",
            ),
            (
                r#"{"image":"b","networkMode":"default","portMappings":[{"containerPort":99999}]}"#,
                "portMappings[0].containerPort:",
            ),
        ] {
            let e = check(json).unwrap_err();
            assert!(e.starts_with(field), "{json}: {e}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = check(r#"{"image":"b","cpus":2}"#).unwrap_err();
        assert!(e.contains("unknown field `cpus`"), "{e}");
    }
}
