//! What a build is asked for, what it reports while it runs, and how it ends.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::context::{ContextError, IgnoreMatcher, Manifest};
use super::dockerfile::DockerfileError;
use super::image_config::Format;
use crate::images::digest::Digest;
use crate::images::registry::Reference;

/// One build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The Dockerfile's bytes.
    pub dockerfile: Vec<u8>,
    pub tags: Vec<Reference>,
    pub build_args: BTreeMap<String, String>,
    pub target: Option<String>,
    /// `--label`s, set on the result's config after its own LABELs.
    pub labels: BTreeMap<String, String>,
    pub no_cache: bool,
    /// `--source-date-epoch` / `SOURCE_DATE_EPOCH`: every time in the result is at most this.
    pub source_date_epoch: Option<u64>,
    pub format: Format,
    /// Each `RUN` step's VM.
    pub cpu: u32,
    pub memory_mib: u64,
    /// Longest a `RUN` step may take (it then ends with code 124).
    pub timeout: Option<Duration>,
    /// Whether `RUN` steps get a network (`--network default`: the server's default
    /// network, as a task's) or none (only loopback). Not part of cache keys, as in
    /// BuildKit.
    pub network: StepNetworkMode,
}

/// `--network` of a build.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StepNetworkMode {
    #[default]
    None,
    Default,
}

/// The files `COPY` and `ADD` read.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// What is in it (paths, kinds, modes, sizes, content hashes).
    pub manifest: Manifest,
    pub ignore: IgnoreMatcher,
    /// Where the bytes of its files are.
    pub files: ContextFiles,
}

/// Where a context file's bytes are kept.
#[derive(Debug, Clone)]
pub enum ContextFiles {
    /// The context folder itself (`skiff build --local`): `<dir>/<path>`.
    Dir(PathBuf),
    /// Uploaded files, by content hash: `<dir>/<sha256 hex>`.
    ByHash(PathBuf),
}

/// A step's state, as `--progress` and the events API show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Started,
    Cached,
    Done,
    Failed,
}

/// Where a step's output line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What a build reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// A step changed state. `label` is `[2/6] COPY app.jar /app/ (Dockerfile:4)`;
    /// `miss_reason` says why a started step was not taken from the cache.
    Step {
        index: usize,
        label: String,
        status: StepStatus,
        miss_reason: Option<String>,
    },
    /// Output of a `RUN` step.
    Log {
        index: usize,
        stream: Stream,
        data: Vec<u8>,
    },
    /// Something the user should know that does not stop the build.
    Warning(String),
}

/// One step of a finished (or failed) build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    pub index: usize,
    pub stage: usize,
    pub instruction: String,
    pub line: usize,
    pub cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub miss_reason: Option<String>,
    pub start_ms: u64,
    pub end_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// A `RUN` step that ran: where its time went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunPhases>,
}

/// Where a `RUN` step's time went: ms from the step's start to the end of each phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunPhases {
    /// The VM was restored from a snapshot (else it booted).
    pub from_snapshot: bool,
    /// Its root filesystem, scratch disk, room on the host and network were ready, and
    /// the VM starts.
    pub launch_ms: u64,
    /// The agent said hello: the VM is up.
    pub ready_ms: u64,
    /// The command was started.
    pub exec_ms: u64,
    /// The command exited (its start plus its run time on the guest's clock).
    pub exit_ms: u64,
    /// The host had read the step's changes to their end: the stream ends when the VM
    /// has stopped, so this phase holds the VM's stop too.
    pub received_ms: u64,
    /// The layer was written and stored.
    pub written_ms: u64,
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    /// The manifest digest (what `skiff run NAME@…` and a push name).
    pub manifest: Digest,
    /// The config digest (Docker's image id).
    pub config: Digest,
    pub steps: Vec<StepReport>,
}

/// Why a build failed. The CLI exits 1 for [`BuildError::Step`] failures of the user's
/// commands and 125 for the rest.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Its message starts with `Dockerfile:<line>:` where there is a line.
    #[error(transparent)]
    Dockerfile {
        #[from]
        source: DockerfileError,
    },
    #[error("the build context: {0}")]
    Context(#[from] ContextError),
    /// A step that failed; `message` names it, as `[4/7] RUN make (Dockerfile:9) …`.
    #[error("{message}")]
    Step {
        index: usize,
        message: String,
        /// A `RUN` that exited non-zero (its code), or None for another failure.
        exit_code: Option<i32>,
        /// The last lines the step printed.
        tail: Vec<String>,
    },
    #[error("the build was cancelled")]
    Cancelled,
    /// The image was built and stored, but pushing `tag` failed.
    #[error("pushing {tag}: {message}")]
    Push { tag: String, message: String },
    /// The store, the cache or a VM could not be used.
    #[error("{0}")]
    Internal(String),
}

impl BuildError {
    pub(super) fn internal(what: &str, e: impl std::fmt::Display) -> Self {
        BuildError::Internal(format!("{what}: {e}"))
    }

    /// The exit code `skiff build` ends with: 1 when a user's step failed, else 125.
    pub fn exit_code(&self) -> i32 {
        match self {
            BuildError::Dockerfile { .. } | BuildError::Step { .. } => 1,
            _ => 125,
        }
    }
}
