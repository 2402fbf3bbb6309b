//! `skiff serve`: the control plane's core. It owns the task store, the scheduler, the
//! image store and the tasks that are alive; the HTTP layer (`crate::api`) only calls in.

pub mod builds;
mod events;
mod live;
pub mod metrics;
pub mod named_networks;
pub mod networking;
mod pipeline;
pub mod ports;
pub mod records;
mod recovery;
mod report;
pub mod retention;
pub mod services;
pub mod snapshots;
mod stop;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use records::TaskRecords;

use crate::api::listen::{ListenAddr, ListenError};
use crate::images::registry::RegistryOptions;
use crate::images::ImageStore;
use crate::scheduler::{Capacity, Scheduler};
use crate::tasks::{InvalidTransition, Limits, StoreError, Task, TaskStore};

pub use live::Live;
pub use stop::StopOutcome;

/// How `skiff serve` was started.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: ListenAddr,
    pub state_dir: PathBuf,
    pub capacity: Capacity,
    /// Required for a TCP listener (loopback included); the Unix socket needs none.
    pub token: Option<String>,
    pub vmm: PathBuf,
    /// How VMMs are jailed (always).
    pub jail: crate::launcher::JailConfig,
    pub kernel: PathBuf,
    pub agent: PathBuf,
    pub registry: RegistryOptions,
    /// How the default task network is made.
    pub network: networking::NetworkOptions,
    /// The network of a task that names none (`--default-network`).
    pub default_network: crate::tasks::NetworkMode,
    /// How long stopped tasks are kept (record, events, output); None: for ever.
    pub task_retention: Option<std::time::Duration>,
    /// What one image may make the host store and read.
    pub image_limits: crate::images::Limits,
    /// Start tasks from snapshots of booted VMs (the fast path).
    pub snapshots: bool,
    /// Where the snapshots are kept (`<state>/snapshots` when not given); servers of the
    /// same VMM, kernel and agent may share one.
    pub snapshot_dir: Option<PathBuf>,
    /// Disk the per-image warm snapshots may take, MiB (0: none).
    pub warm_snapshot_budget_mib: u64,
    /// Size of a build's `RUN` step scratch disk (sparse), bytes.
    pub build_step_disk_bytes: u64,
    /// Scratch disk bytes the `RUN` steps that run at once may have together: each
    /// reserves its whole disk before its VM starts, so sparse disks can never together
    /// outgrow it. At least `build_step_disk_bytes`.
    pub build_disk_budget_bytes: u64,
    /// Tasks that may wait (accepted, not yet admitted) at once; beyond it submissions are
    /// refused (429) until some start.
    pub max_queued: usize,
    /// Cap of one task output file; a task keeps at most twice this (the newest output).
    pub log_cap_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("another `skiff serve` uses the state dir {0}")]
    StateDirBusy(PathBuf),
    #[error(transparent)]
    Images(#[from] crate::images::PullError),
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("{0} tasks are already waiting to start (the server's --max-queued); try again later")]
    QueueFull(usize),
    #[error("networkMode: task networks are not available on this server: {0} (a task may still ask for networkMode \"none\"; `skiff serve --default-network none` makes that the default)")]
    NoNetwork(String),
    #[error(transparent)]
    PortTaken(#[from] ports::PortTaken),
    #[error("networkMode: no network named {0:?} (skiff network ls lists them)")]
    UnknownNetwork(String),
}

pub fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// The shared core; handlers hold an `Arc<Server>`.
pub struct Server {
    pub cfg: ServeConfig,
    /// Tasks, their events and the metrics they feed.
    pub records: TaskRecords,
    pub sched: Scheduler,
    pub images: ImageStore,
    /// The agent's initramfs, built at start-up from `cfg.agent`.
    pub initrd: PathBuf,
    pub snapshots: Arc<snapshots::Snapshots>,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// Tasks accepted and not yet admitted (see [`ServeConfig::max_queued`]).
    waiting: Arc<AtomicUsize>,
    /// Image preparations (pulls, unpacking, root filesystems) under way at once: their
    /// blocking threads stay few, apart from the launchers' (which capacity bounds).
    pub prepare_slots: Arc<tokio::sync::Semaphore>,
    /// The build steps' scratch disk budget, in MiB permits.
    pub build_disk: Arc<tokio::sync::Semaphore>,
    /// The default task network, or why this server has none.
    pub networks: Result<crate::network::registry::NetworkRegistry, String>,
    /// Host ports held for tasks that publish them.
    pub ports: ports::PortReservations,
    /// Services: desired state the reconciler keeps.
    pub services: services::Services,
    /// Build contexts clients uploaded, and the builds of them.
    pub contexts: crate::build::context_store::ContextStore,
    pub builds: Arc<builds::Builds>,
    /// Held for the server's life: one `skiff serve` per state dir.
    _lock: std::fs::File,
}

impl Server {
    /// Opens the state dir, takes its lock, builds the agent's initramfs, and brings back
    /// the tasks a previous run left unfinished.
    pub fn start(cfg: ServeConfig) -> Result<Arc<Self>, ServerError> {
        if let (ListenAddr::Tcp(a), None) = (&cfg.listen, &cfg.token) {
            return Err(ListenError::TokenRequired(*a).into());
        }
        std::fs::create_dir_all(cfg.state_dir.join("tasks"))
            .map_err(io_err(format!("create {}", cfg.state_dir.display())))?;
        let lock = lock_state_dir(&cfg.state_dir)?;
        let store = TaskStore::open(&cfg.state_dir.join("tasks.db"))?;
        make_private(&cfg.state_dir).map_err(io_err(format!(
            "restrict the permissions of {}",
            cfg.state_dir.display()
        )))?;
        let images = ImageStore::open(&cfg.state_dir, None)?.with_limits(cfg.image_limits);
        let initrd = cfg.state_dir.join("agent.cpio");
        crate::launcher::build_agent_initramfs(&cfg.agent, &initrd).map_err(io_err(format!(
            "build the agent initramfs from {}",
            cfg.agent.display()
        )))?;
        let snapshots = snapshots::Snapshots::open(
            &cfg.snapshot_dir
                .clone()
                .unwrap_or_else(|| cfg.state_dir.join("snapshots")),
            cfg.snapshots,
            cfg.warm_snapshot_budget_mib << 20,
            &cfg.vmm,
            &cfg.kernel,
            &initrd,
        )
        .map_err(io_err("prepare the snapshot dir"))?;
        let networks = networking::open(&cfg.network, &cfg.state_dir, &store);
        if let Err(why) = &networks {
            tracing::warn!("tasks cannot have networks: {why}");
            if cfg.default_network != crate::tasks::NetworkMode::None {
                tracing::warn!(
                    "tasks that name no network get {:?} (--default-network) and will be refused",
                    cfg.default_network.as_str()
                );
            }
        }
        let mut metrics = metrics::Metrics::new();
        metrics.register_warm(snapshots.warm_counters());
        let services = services::Services::default();
        metrics.register_services(&services.metrics);
        builds::remove_leftovers(&cfg.state_dir, &cfg.jail.cgroup_parent, &networks);
        let builds = Arc::new(
            builds::Builds::open(&cfg.state_dir).map_err(io_err("open the builds folder"))?,
        );
        let contexts = crate::build::context_store::ContextStore::new(&cfg.state_dir);
        let disk_mib =
            (cfg.build_disk_budget_bytes >> 20).min(tokio::sync::Semaphore::MAX_PERMITS as u64);
        let build_disk = Arc::new(tokio::sync::Semaphore::new(disk_mib as usize));
        tracing::info!(
            "build steps: scratch disks of {} MiB, at most {} MiB of them at once",
            cfg.build_step_disk_bytes >> 20,
            disk_mib
        );
        let srv = Arc::new(Self {
            snapshots: Arc::new(snapshots),
            sched: Scheduler::new(cfg.capacity),
            records: TaskRecords::new(store, metrics),
            cfg,
            images,
            initrd,
            live: Mutex::new(HashMap::new()),
            waiting: Arc::new(AtomicUsize::new(0)),
            prepare_slots: Arc::new(tokio::sync::Semaphore::new(MAX_PREPARES)),
            build_disk,
            networks,
            ports: ports::PortReservations::default(),
            services,
            contexts,
            builds,
            _lock: lock,
        });
        // Networks first: a task re-run below attaches a new one under the same name.
        networking::recover(&srv);
        recovery::recover(&srv)?;
        retention::remove_orphan_dirs(&srv);
        services::start(&srv)?;
        if let Some(keep) = srv.cfg.task_retention {
            retention::spawn_pruner(&srv, keep);
        }
        Ok(srv)
    }

    pub fn limits(&self) -> Limits {
        let c = self.sched.capacity();
        Limits {
            max_cpu: c.cpus,
            max_memory_mib: c.memory_mib,
        }
    }

    /// Stores a new task and starts its life.
    pub fn submit(self: &Arc<Self>, task: Task) -> Result<Task, ServerError> {
        if let Some(name) = networking::network_name(&task.network_mode) {
            match &self.networks {
                Err(why) => return Err(ServerError::NoNetwork(why.clone())),
                Ok(reg) if reg.get(name).is_none() => {
                    return Err(ServerError::UnknownNetwork(name.to_owned()))
                }
                Ok(_) => {}
            }
        }
        let max = self.cfg.max_queued;
        let slot =
            WaitingSlot::take(&self.waiting, Some(max)).ok_or(ServerError::QueueFull(max))?;
        self.ports.reserve(&task.id, &task.port_mappings)?;
        if let Err(e) = self.records.store.insert(&task) {
            self.ports.release(&task.id);
            return Err(e.into());
        }
        self.records
            .event(&task.id, &format!("accepted (image {})", task.image));
        self.records.metrics.submitted.inc();
        self.spawn_supervisor(task.id.clone(), slot);
        Ok(task)
    }

    fn spawn_supervisor(self: &Arc<Self>, id: String, slot: WaitingSlot) {
        let live = Arc::new(Live::new());
        self.live_map().insert(id.clone(), live.clone());
        let srv = self.clone();
        tokio::spawn(async move {
            pipeline::supervise(&srv, &id, &live, slot).await;
            srv.ports.release(&id);
            srv.live_map().remove(&id);
            live.mark_done();
        });
    }

    /// A waiting slot outside the limit (tasks brought back after a restart).
    fn waiting_slot(&self) -> WaitingSlot {
        WaitingSlot::take(&self.waiting, None).unwrap_or_else(|| WaitingSlot(self.waiting.clone()))
    }

    /// Tasks accepted and not yet admitted.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    fn live_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live handle of a task that has not stopped yet.
    pub fn live(&self, id: &str) -> Option<Arc<Live>> {
        self.live_map().get(id).cloned()
    }

    pub fn task_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("tasks").join(id)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.task_dir(id).join("output.log")
    }

    /// Asks a task to stop: SIGTERM, SIGKILL after its stop timeout, then the VM ends.
    pub fn stop(self: &Arc<Self>, id: &str) -> Result<StopOutcome, ServerError> {
        stop::request_stop(self, id)
    }

    /// Stops every running task (for shutdown) and waits until they have ended; VMs
    /// booting for a snapshot are ended.
    pub async fn stop_all(self: &Arc<Self>) {
        self.services.shut_down();
        self.snapshots.stop_builders();
        let lives: Vec<(String, Arc<Live>)> = self
            .live_map()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, live) in &lives {
            if live.has_vm() {
                let _ = self.stop(id);
            }
        }
        for (_, live) in lives {
            if live.has_vm() {
                live.done().await;
            }
        }
    }
}

/// Image preparations at once.
const MAX_PREPARES: usize = 4;

/// A place among the tasks waiting to start, given back when dropped (at admission, or
/// when the task ends before it).
pub struct WaitingSlot(Arc<AtomicUsize>);

impl WaitingSlot {
    /// A slot, unless `max` are taken already.
    fn take(waiting: &Arc<AtomicUsize>, max: Option<usize>) -> Option<Self> {
        waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (max.is_none_or(|m| n < m)).then_some(n + 1)
            })
            .ok()
            .map(|_| WaitingSlot(waiting.clone()))
    }
}

impl Drop for WaitingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The state dir can be traversed (to reach the 0660 API socket) but not listed by
/// others; task environments, logs and the database are the server user's alone.
fn make_private(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: std::path::PathBuf, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
    };
    set(dir.to_owned(), 0o711)?;
    set(dir.join("tasks"), 0o700)?;
    for f in ["tasks.db", "tasks.db-wal", "tasks.db-shm", "serve.lock"] {
        match set(dir.join(f), 0o600) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// An exclusive lock on `<state>/serve.lock` for as long as the server runs.
fn lock_state_dir(dir: &std::path::Path) -> Result<std::fs::File, ServerError> {
    let path = dir.join("serve.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("open {}", path.display())))?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(f),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(ServerError::StateDirBusy(dir.to_owned())),
        Err(e) => Err(io_err(format!("lock {}", path.display()))(e.into())),
    }
}
