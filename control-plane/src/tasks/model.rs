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
    pub state: TaskState,
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
}

impl Task {
    pub fn is_stopped(&self) -> bool {
        self.state == TaskState::Stopped
    }
}
