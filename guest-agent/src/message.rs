//! Control messages. One enum for both directions, tagged by `type`; unknown fields are
//! refused so that a mismatch between host and agent is an error, not a silent default.

use serde::{Deserialize, Serialize};

/// Milliseconds since the guest kernel started (CLOCK_BOOTTIME), at points of the agent's
/// life. The host adds its own clock for VMM start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootTimings {
    /// The agent's main() began.
    pub agent_start_ms: u64,
    /// /proc, /sys, /dev, … mounted, loopback up, hostname set.
    pub setup_done_ms: u64,
    /// The vsock connection to the host is open (hello sent right after).
    pub connected_ms: u64,
}

/// Host → agent, in place of a run spec, while a per-image warm snapshot is made: mount
/// this image's root, make the task's cgroup, fork the exec helper into both, and read
/// these files into the page cache; then answer [`Message::Prepared`] and wait for the run
/// spec (which comes after the snapshot is restored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareSpec {
    /// The host's name for the image's root filesystem; a later run spec must name the same.
    pub image_id: String,
    /// As in [`RunSpec::image_disk`].
    pub image_disk: String,
    /// As in [`RunSpec::upper_size_mib`]; a run spec that asks for another size gets the
    /// upper layer resized.
    pub upper_size_mib: u64,
    /// Programs (found through `path` if they have no `/`) whose files, and the ELF
    /// interpreter they name, are read ahead. At most [`MAX_WARM_FILES`] of them.
    pub warm_programs: Vec<String>,
    /// The `PATH` used to find them.
    pub path: String,
    /// Files (absolute paths in the image) that an earlier task of the image opened
    /// ([`Message::Opened`]), read ahead as they are after the programs, within the same
    /// byte budget. At most [`MAX_OPENED_FILES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warm_files: Vec<String>,
}

/// Most programs a [`PrepareSpec`] may name.
pub const MAX_WARM_FILES: usize = 8;

/// Most files a [`Message::Opened`] report (and so a [`PrepareSpec`]) may list.
pub const MAX_OPENED_FILES: usize = 1024;

/// Longest path in a [`Message::Opened`] report, bytes.
pub const MAX_OPENED_PATH: usize = 1024;

/// Whether `path` may stand in an [`Message::Opened`] report: absolute, at most
/// [`MAX_OPENED_PATH`] bytes, no NUL, no `.` or `..` component, no empty component.
pub fn valid_opened_path(path: &str) -> bool {
    path.len() <= MAX_OPENED_PATH
        && path.len() > 1
        && !path.contains('\0')
        && path.strip_prefix('/').is_some_and(|rest| {
            rest.split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
        })
}

/// What to run, sent by the host after Hello.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Program and arguments (entrypoint + command, already combined by the host).
    pub argv: Vec<String>,
    /// `KEY=VALUE` pairs; PATH gets a default when absent.
    pub env: Vec<String>,
    /// Working directory inside the container; `/` when empty.
    pub working_dir: String,
    /// `name`, `uid` or `uid:gid`, resolved against the image's /etc/passwd and /etc/group.
    pub user: String,
    /// Guest block device holding the read-only image (e.g. `/dev/vda`).
    pub image_disk: String,
    /// Size limit of the writable upper layer (tmpfs), MiB.
    pub upper_size_mib: u64,
    /// Guest block device (e.g. `/dev/vdb`) holding an ext4 file system, made by the host,
    /// to use as the upper instead of a tmpfs: a build step's. Empty: the tmpfs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scratch_disk: String,
    pub hostname: String,
    /// The host will send stdin frames (and StdinEof); otherwise stdin is /dev/null.
    pub stdin: bool,
    /// The host's wall clock (ms since the Unix epoch) when it sent the spec; the agent sets
    /// the guest clock from it (a VM restored from a snapshot would be behind). 0: leave it.
    #[serde(default)]
    pub wall_clock_ms: u64,
    /// Fresh host entropy that the agent mixes into the guest's random pool before the
    /// process starts, so VMs restored from one snapshot never share random state.
    #[serde(default)]
    pub entropy: Vec<u8>,
    /// The host's name for the image (see [`PrepareSpec::image_id`]): a VM prepared for
    /// one image refuses a spec for another. Empty when the VM was not prepared.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_id: String,
    /// The task's network interface, configured by the agent before the process starts
    /// (absent: loopback only). Snapshots are taken before any spec, so they never hold an
    /// address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Box<NetworkSpec>>,
    /// Note the files of the root the process opens (during its first
    /// [`RECORD_OPENS_MS`], or until it exits) and report them with [`Message::Opened`]:
    /// the host reads them ahead in the image's warm snapshot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record_opens: bool,
    /// Report the task's CPU use ([`Message::Usage`]) this often while it runs, guest
    /// milliseconds (at least [`MIN_USAGE_INTERVAL_MS`]); 0: never (autoscaled services
    /// ask for it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub usage_interval_ms: u64,
    /// Resource limits the process starts with (OCI's `process.rlimits`, from the
    /// containerd shim); the guest's defaults for the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    /// Once the process has exited 0, send the upper layer's changes as a tar in
    /// [`crate::Frame::Upper`] frames (before the exit report): a build's `RUN` step.
    /// Overlayfs whiteouts go as `.wh.NAME`, opaque folders as `.wh..wh..opq`; the files
    /// the agent itself writes (`/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`) are
    /// left out, as Docker leaves out its bind mounts of them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub export_upper: bool,
}

/// One resource limit, as OCI's runtime spec and setrlimit(2) name them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE`, `RLIMIT_NPROC`, … (see [`RLIMIT_NAMES`]).
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// The limits a [`Rlimit`] may name, with their setrlimit(2) resource numbers on Linux
/// (the same on every architecture Skiff runs on).
pub const RLIMIT_NAMES: [(&str, u32); 16] = [
    ("RLIMIT_CPU", 0),
    ("RLIMIT_FSIZE", 1),
    ("RLIMIT_DATA", 2),
    ("RLIMIT_STACK", 3),
    ("RLIMIT_CORE", 4),
    ("RLIMIT_RSS", 5),
    ("RLIMIT_NPROC", 6),
    ("RLIMIT_NOFILE", 7),
    ("RLIMIT_MEMLOCK", 8),
    ("RLIMIT_AS", 9),
    ("RLIMIT_LOCKS", 10),
    ("RLIMIT_SIGPENDING", 11),
    ("RLIMIT_MSGQUEUE", 12),
    ("RLIMIT_NICE", 13),
    ("RLIMIT_RTPRIO", 14),
    ("RLIMIT_RTTIME", 15),
];

impl Rlimit {
    /// Its setrlimit(2) resource number, if the name is one of [`RLIMIT_NAMES`].
    pub fn resource(&self) -> Option<u32> {
        RLIMIT_NAMES
            .iter()
            .find(|(n, _)| *n == self.name)
            .map(|&(_, r)| r)
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The shortest [`RunSpec::usage_interval_ms`] the agent keeps to.
pub const MIN_USAGE_INTERVAL_MS: u64 = 1000;

/// How long after the exec a recording of opened files ([`RunSpec::record_opens`]) lasts,
/// guest milliseconds: a program's start-up, not what a long-running one reads later.
pub const RECORD_OPENS_MS: u64 = 60_000;

/// Commands of [`Message::Exec`] that may run at once in one task; more are answered at
/// once with exit code 125.
pub const MAX_EXECS: usize = 4;

/// The output of an exec the agent keeps and reports (the rest is read and dropped).
pub const MAX_EXEC_OUTPUT: usize = 4096;

/// The longest an exec may be given.
pub const MAX_EXEC_TIMEOUT_MS: u64 = 3_600_000;

/// How the agent sets up the guest's network interface and the container's resolver files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// The guest interface (the VM's virtio-net device), e.g. `eth0`.
    pub interface: String,
    /// `aa:bb:cc:dd:ee:ff`: the task interface's MAC on the host side.
    pub mac: String,
    /// IPv4 `ADDRESS/PREFIX`.
    pub address: String,
    /// The default route's gateway (none: no default route).
    #[serde(default)]
    pub gateway: Option<String>,
    pub mtu: u32,
    /// For /etc/resolv.conf.
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub search: Vec<String>,
}

/// Why a run could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    ImageDisk,
    CommandNotFound,
    NotExecutable,
    BadUser,
    BadWorkingDir,
    /// The network interface could not be set up as the spec says.
    Network,
    Internal,
}

impl FailureKind {
    /// The exit code a shell would give (127 not found, 126 not executable), else 125
    /// (as `docker run` uses for its own failures).
    pub fn exit_code(self) -> i32 {
        match self {
            Self::CommandNotFound => 127,
            Self::NotExecutable => 126,
            _ => 125,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// Agent → host, first message: who is speaking and how long the boot took.
    Hello {
        protocol_version: u32,
        agent_version: String,
        timings: BootTimings,
        /// The image this VM's root is already mounted for (a restored warm snapshot).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prepared_image: Option<String>,
    },
    /// Host → agent: run this.
    Run(Box<RunSpec>),
    /// Host → agent: get ready for tasks of one image (a warm snapshot is taken next).
    Prepare(PrepareSpec),
    /// Host → agent: mount the scratch disk on `device` (a build step's upper) now, and
    /// write everything back to it; the snapshot taken next holds it mounted, and each VM
    /// restored from it gets a copy of that disk as it is then (see
    /// [`RunSpec::scratch_disk`]).
    MountScratch { device: String },
    /// Agent → host: ready as [`Message::Prepare`] or [`Message::MountScratch`] asked: the
    /// guest time it took, and the bytes read ahead.
    Prepared { prepare_ms: u64, warmed_bytes: u64 },
    /// Agent → host: the process was exec'd. Guest times (ms since the kernel started) of
    /// the run spec's arrival, of the root filesystem and cgroup being ready, and of the
    /// exec: where the guest spent the time between the spec and the process.
    Started {
        pid: u32,
        spec_ms: u64,
        prepared_ms: u64,
        exec_ms: u64,
    },
    /// Host → agent: deliver this signal to the process.
    Signal { signal: i32 },
    /// Agent → host: this many more stdin bytes went to the process (or were dropped
    /// because it closed its stdin); the host may send that many more.
    StdinConsumed { bytes: u64 },
    /// Agent → host: the run could not start.
    Failed {
        kind: FailureKind,
        message: String,
        exit_code: i32,
    },
    /// Agent → host: the process ended; all its output frames came before this.
    Exited(ExitReport),
    /// Agent → host, once, when [`RunSpec::record_opens`] asked: the files of the root the
    /// process opened, first opens first, at most [`MAX_OPENED_FILES`] (a guest's word:
    /// the host checks each with [`valid_opened_path`]).
    Opened { paths: Vec<String> },
    /// Agent → host, every [`RunSpec::usage_interval_ms`] while the process runs: the CPU
    /// time the task's processes have used in all (its cgroup's `usage_usec`) at guest time
    /// `at_ms` (a guest's word: the host only uses it to scale the guest's own service).
    Usage { cpu_usec: u64, at_ms: u64 },
    /// Host → agent, while the process runs: run `argv` in the task's container too (its
    /// root, cgroup, user, working directory and environment), for at most `timeout_ms`;
    /// at most [`MAX_EXECS`] at once. The answer is [`Message::ExecExited`] with the same
    /// `id`. Health checks use it.
    Exec {
        id: u32,
        argv: Vec<String>,
        timeout_ms: u64,
    },
    /// Agent → host: how an [`Message::Exec`] ended: its exit status as a shell reports it
    /// (126/127 when it could not start), whether its time ran out (it was killed), and at
    /// most [`MAX_EXEC_OUTPUT`] bytes of its output, stdout and stderr together.
    ExecExited {
        id: u32,
        exit_code: i32,
        timed_out: bool,
        output: String,
    },
}

impl Message {
    /// The message's `type` on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Run(_) => "run",
            Message::Prepare(_) => "prepare",
            Message::MountScratch { .. } => "mount_scratch",
            Message::Prepared { .. } => "prepared",
            Message::Started { .. } => "started",
            Message::Signal { .. } => "signal",
            Message::StdinConsumed { .. } => "stdin_consumed",
            Message::Failed { .. } => "failed",
            Message::Exited(_) => "exited",
            Message::Opened { .. } => "opened",
            Message::Usage { .. } => "usage",
            Message::Exec { .. } => "exec",
            Message::ExecExited { .. } => "exec_exited",
        }
    }
}

/// How the task's process ended and what it used: the agent's report, kept as it is by the
/// host (launcher result, task record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitReport {
    /// Exit status as a shell reports it: the code, or 128 + signal.
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    pub cpu_user_ms: u64,
    pub cpu_system_ms: u64,
    pub max_rss_kib: u64,
    /// Guest clock (ms since boot) when it exited.
    pub exited_ms: u64,
    /// The guest's OOM killer killed a process of the task.
    #[serde(default)]
    pub oom_killed: bool,
}
