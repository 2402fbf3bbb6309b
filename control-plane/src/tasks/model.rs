//! A task's record: its request, where it is in its life, how it ended.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// ECS/Fargate's names: PROVISIONING (image being prepared) → PENDING (waiting for capacity,
/// VM booting) → RUNNING (process started) → STOPPING (stop requested) → STOPPED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    Provisioning,
    Pending,
    Running,
    Stopping,
    Stopped,
}

impl TaskState {
    pub const ALL: [TaskState; 5] = [
        Self::Provisioning,
        Self::Pending,
        Self::Running,
        Self::Stopping,
        Self::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "PROVISIONING",
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Stopping => "STOPPING",
            Self::Stopped => "STOPPED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a task stopped (ECS's stopCode, plus the cases a microVM adds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopCode {
    /// The image could not be prepared or the process could not start.
    TaskFailedToStart,
    /// The process ran and exited on its own.
    EssentialContainerExited,
    /// Someone asked for the stop.
    UserInitiated,
    /// It ran past its `timeoutSeconds`.
    Timeout,
    /// The guest's OOM killer ended it: the task needed more than its `memoryMiB`.
    OutOfMemory,
    /// Its VM or agent failed without a report.
    TaskLost,
    /// The control plane restarted while its VM ran.
    ControlPlaneRestarted,
}

/// How the task's VM came to life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartMode {
    /// A full boot of the guest kernel.
    Boot,
    /// A restore of a snapshot of a booted VM.
    Snapshot,
}

/// Which network a task's VM gets (`networkMode`, as ECS and Docker name it): `"none"`,
/// `"default"` (`"bridge"` is read as it too) or the name of a network made with
/// `POST /v1/networks`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// Loopback only, no network device. (Also what a stored record without the field
    /// means: it predates task networks; a request without it gets the server's default.)
    #[default]
    None,
    /// A namespace of its own on Skiff's default network (a bridge): an address,
    /// outbound NAT, reachable from the host and its published ports, isolated from other
    /// tasks and the host.
    Default,
    /// A named network: like the default one, but its tasks reach each other, by name too.
    Named(String),
}

impl NetworkMode {
    /// `none`, `default` (or `bridge`), else a network's name (checked where it is used).
    pub fn from_name(s: &str) -> Self {
        match s {
            "none" => NetworkMode::None,
            "default" | "bridge" => NetworkMode::Default,
            _ => NetworkMode::Named(s.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Default => "default",
            NetworkMode::Named(n) => n,
        }
    }
}

impl Serialize for NetworkMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for NetworkMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from_name(&String::deserialize(d)?))
    }
}

/// The task's network interface as the API shows it (ECS's `networkInterfaces` names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterface {
    pub private_ipv4_address: String,
    pub mac_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// When each phase was reached (ms since the Unix epoch).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Phases {
    pub accepted_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_ready_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_started_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_ready_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_started_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_exited_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_ms: Option<u64>,
}

/// What the process used, as the guest kernel counted it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub cpu_user_ms: u64,
    pub cpu_system_ms: u64,
    pub max_rss_kib: u64,
}

/// Everything we keep about a task; also its JSON in the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub id: String,
    /// Changed only through [`Task::apply`].
    pub(super) state: TaskState,
    /// A stop was asked for (kept across STOPPING → STOPPED).
    #[serde(default)]
    pub stop_requested: bool,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub cpu: u32,
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    pub stop_timeout_seconds: u64,
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<StopCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    pub phases: Phases,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_mode: Option<StartMode>,
    /// The `skiff-vmm` process while the VM runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmm_pid: Option<u32>,
    #[serde(default)]
    pub network_mode: NetworkMode,
    /// The name it has on its network (DNS), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Published ports (checked; only with a network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<super::ports::PortMapping>,
    /// Set once the task's network is attached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_interfaces: Vec<NetworkInterface>,
    /// How long the task's network took to set up and to tear down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_timings: Option<NetworkTimings>,
}

/// Durations of a task's network set-up and teardown, ms (the CNI plugin chain, the TAP
/// and its redirect, the firewall; the guest's own configuration is part of agent start).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkTimings {
    pub attach_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detach_ms: Option<u64>,
}

impl Task {
    pub fn state(&self) -> TaskState {
        self.state
    }

    pub fn is_stopped(&self) -> bool {
        self.state == TaskState::Stopped
    }

    /// The one place a task's state changes. `now` (ms since the Unix epoch) stamps the
    /// phase the transition reaches. An invalid transition changes nothing and is an error.
    pub fn apply(&mut self, tr: Transition, now: u64) -> Result<(), InvalidTransition> {
        use TaskState::*;
        let invalid = |state: TaskState, tr: &Transition| InvalidTransition {
            from: state,
            transition: tr.name(),
        };
        let next = match (&tr, self.state) {
            (Transition::ImageReady { .. }, Provisioning) => Pending,
            (Transition::ProcessStarted, Pending) => Running,
            // A process that starts while a stop is under way stays STOPPING.
            (Transition::ProcessStarted, Stopping) => Stopping,
            (Transition::StopRequested { vm_running: true }, Pending | Running) => Stopping,
            (
                Transition::StopRequested { .. },
                s @ (Provisioning | Pending | Running | Stopping),
            ) => s,
            (Transition::Requeued, Provisioning | Pending) => Provisioning,
            (Transition::Stopped(_), Provisioning | Pending | Running | Stopping) => Stopped,
            (_, s) => return Err(invalid(s, &tr)),
        };
        match tr {
            Transition::ImageReady { digest } => {
                self.image_digest = Some(digest);
                self.phases.image_ready_ms = Some(now);
            }
            Transition::ProcessStarted => self.phases.process_started_ms = Some(now),
            Transition::StopRequested { .. } => self.stop_requested = true,
            Transition::Requeued => {}
            Transition::Stopped(end) => {
                self.stop_code = Some(end.code);
                self.stopped_reason = Some(end.reason);
                self.exit_code = end.exit_code;
                self.usage = end.usage;
                self.phases.stopped_ms = Some(now);
                self.vmm_pid = None;
            }
        }
        self.state = next;
        Ok(())
    }
}

/// How a task ended, as it is written down.
#[derive(Debug, Clone, PartialEq)]
pub struct Ending {
    pub code: StopCode,
    pub reason: String,
    pub exit_code: Option<i32>,
    pub usage: Option<Usage>,
}

impl Ending {
    pub fn new(code: StopCode, reason: impl Into<String>) -> Self {
        Ending {
            code,
            reason: reason.into(),
            exit_code: None,
            usage: None,
        }
    }
}

/// What happens to a task, in the terms of its state machine:
///
/// ```text
/// PROVISIONING ─ImageReady─▶ PENDING ─ProcessStarted─▶ RUNNING
///      ▲  Requeued (restart)    │ StopRequested (VM up)   │ StopRequested
///      └────────────────────────┤                         ▼
///                               └───────────────────▶ STOPPING
/// every state but STOPPED ─Stopped─▶ STOPPED
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// The image and its root filesystem are ready.
    ImageReady {
        digest: String,
    },
    /// The agent started the task's process.
    ProcessStarted,
    /// A stop was asked for; with a VM up the task is STOPPING, before that the request is
    /// only recorded (the pipeline ends the task when it next looks).
    StopRequested {
        vm_running: bool,
    },
    /// A control-plane restart runs a task that never got a VM from the start again.
    Requeued,
    Stopped(Ending),
}

impl Transition {
    fn name(&self) -> &'static str {
        match self {
            Transition::ImageReady { .. } => "ImageReady",
            Transition::ProcessStarted => "ProcessStarted",
            Transition::StopRequested { .. } => "StopRequested",
            Transition::Requeued => "Requeued",
            Transition::Stopped(_) => "Stopped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a task in state {from} cannot take the transition {transition}")]
pub struct InvalidTransition {
    pub from: TaskState,
    pub transition: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    fn task_in(state: TaskState) -> Task {
        let mut t: Task = serde_json::from_value(serde_json::json!({
            "id": "t", "state": "PROVISIONING", "image": "i", "env": {}, "cpu": 1,
            "memoryMiB": 128, "stopTimeoutSeconds": 1, "labels": {},
            "phases": {"acceptedMs": 1}
        }))
        .unwrap();
        t.state = state;
        t
    }

    fn transitions() -> Vec<Transition> {
        vec![
            Transition::ImageReady { digest: "d".into() },
            Transition::ProcessStarted,
            Transition::StopRequested { vm_running: true },
            Transition::StopRequested { vm_running: false },
            Transition::Requeued,
            Transition::Stopped(Ending::new(StopCode::UserInitiated, "r")),
        ]
    }

    /// The whole table: every state against every transition.
    #[test]
    fn the_transition_table() {
        let want = |s: TaskState, tr: &Transition| -> Option<TaskState> {
            match (s, tr) {
                (Provisioning, Transition::ImageReady { .. }) => Some(Pending),
                (Pending, Transition::ProcessStarted) => Some(Running),
                (Stopping, Transition::ProcessStarted) => Some(Stopping),
                (Pending | Running, Transition::StopRequested { vm_running: true }) => {
                    Some(Stopping)
                }
                (Provisioning | Stopping, Transition::StopRequested { .. }) => Some(s),
                (Pending | Running, Transition::StopRequested { vm_running: false }) => Some(s),
                (Provisioning | Pending, Transition::Requeued) => Some(Provisioning),
                (Stopped, _) => None,
                (_, Transition::Stopped(_)) => Some(Stopped),
                _ => None,
            }
        };
        for s in TaskState::ALL {
            for tr in transitions() {
                let mut t = task_in(s);
                let before = t.clone();
                match (t.apply(tr.clone(), 42), want(s, &tr)) {
                    (Ok(()), Some(next)) => assert_eq!(t.state, next, "{s} + {tr:?}"),
                    (Err(e), None) => {
                        assert_eq!(t, before, "{s} + {tr:?} changed the task");
                        assert_eq!(e.from, s);
                    }
                    (got, want) => panic!("{s} + {tr:?}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn transitions_stamp_their_phase_and_record_the_end() {
        let mut t = task_in(Provisioning);
        t.apply(
            Transition::ImageReady {
                digest: "sha256:x".into(),
            },
            5,
        )
        .unwrap();
        assert_eq!(
            (t.image_digest.as_deref(), t.phases.image_ready_ms),
            (Some("sha256:x"), Some(5))
        );
        t.apply(Transition::ProcessStarted, 6).unwrap();
        assert_eq!(t.phases.process_started_ms, Some(6));
        t.vmm_pid = Some(9);
        t.apply(Transition::StopRequested { vm_running: true }, 7)
            .unwrap();
        assert!(t.stop_requested);
        let end = Ending {
            exit_code: Some(143),
            ..Ending::new(StopCode::UserInitiated, "stopped by request")
        };
        t.apply(Transition::Stopped(end), 8).unwrap();
        assert_eq!(t.state(), Stopped);
        assert_eq!(t.exit_code, Some(143));
        assert_eq!(t.stop_code, Some(StopCode::UserInitiated));
        assert_eq!(t.phases.stopped_ms, Some(8));
        assert_eq!(t.vmm_pid, None);
        let e = t.apply(Transition::ProcessStarted, 9).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a task in state STOPPED cannot take the transition ProcessStarted"
        );
    }
}
