//! `skiff serve`: the control plane's core. It owns the task store, the scheduler, the
//! image store and the tasks that are alive; the HTTP layer (`crate::api`) only calls in.

mod live;
pub mod metrics;
mod recovery;
pub mod snapshots;
mod supervisor;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::images::registry::RegistryOptions;
use crate::images::ImageStore;
use crate::scheduler::{Capacity, Scheduler};
use crate::tasks::{now_ms, Limits, StoreError, Task, TaskStore};

pub use live::Live;
pub use supervisor::StopOutcome;

/// How `skiff serve` was started.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub capacity: Capacity,
    /// Required for any listen address that is not loopback.
    pub token: Option<String>,
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub agent: PathBuf,
    pub registry: RegistryOptions,
    /// Start tasks from snapshots of booted VMs (the fast path).
    pub snapshots: bool,
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
    #[error(
        "listening on {0} (not loopback) needs a bearer token: give --token-file or SKIFF_TOKEN"
    )]
    TokenRequired(SocketAddr),
}

pub fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// The shared core; handlers hold an `Arc<Server>`.
pub struct Server {
    pub cfg: ServeConfig,
    pub store: TaskStore,
    pub sched: Scheduler,
    pub images: ImageStore,
    pub metrics: metrics::Metrics,
    /// The agent's initramfs, built at start-up from `cfg.agent`.
    pub initrd: PathBuf,
    pub snapshots: Arc<snapshots::Snapshots>,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// Serialises read-modify-write of task records.
    update_lock: Mutex<()>,
    /// Held for the server's life: one `skiff serve` per state dir.
    _lock: std::fs::File,
}

impl Server {
    /// Opens the state dir, takes its lock, builds the agent's initramfs, and brings back
    /// the tasks a previous run left unfinished.
    pub fn start(cfg: ServeConfig) -> Result<Arc<Self>, ServerError> {
        if !cfg.listen.ip().is_loopback() && cfg.token.is_none() {
            return Err(ServerError::TokenRequired(cfg.listen));
        }
        std::fs::create_dir_all(cfg.state_dir.join("tasks"))
            .map_err(io_err(format!("create {}", cfg.state_dir.display())))?;
        let lock = lock_state_dir(&cfg.state_dir)?;
        let store = TaskStore::open(&cfg.state_dir.join("tasks.db"))?;
        let images = ImageStore::open(&cfg.state_dir, None)?;
        let initrd = cfg.state_dir.join("agent.cpio");
        crate::launcher::build_agent_initramfs(&cfg.agent, &initrd).map_err(io_err(format!(
            "build the agent initramfs from {}",
            cfg.agent.display()
        )))?;
        let snapshots = snapshots::Snapshots::open(
            &cfg.state_dir.join("snapshots"),
            cfg.snapshots,
            &cfg.vmm,
            &cfg.kernel,
            &initrd,
        )
        .map_err(io_err("prepare the snapshot dir"))?;
        let srv = Arc::new(Self {
            snapshots: Arc::new(snapshots),
            sched: Scheduler::new(cfg.capacity),
            metrics: metrics::Metrics::new(),
            cfg,
            store,
            images,
            initrd,
            live: Mutex::new(HashMap::new()),
            update_lock: Mutex::new(()),
            _lock: lock,
        });
        recovery::recover(&srv)?;
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
        self.store.insert(&task)?;
        self.event(&task.id, &format!("accepted (image {})", task.image));
        self.metrics.submitted.inc();
        self.spawn_supervisor(task.id.clone());
        Ok(task)
    }

    fn spawn_supervisor(self: &Arc<Self>, id: String) {
        let live = Arc::new(Live::new());
        self.live_map().insert(id.clone(), live.clone());
        let srv = self.clone();
        tokio::spawn(async move {
            supervisor::supervise(&srv, &id, &live).await;
            srv.live_map().remove(&id);
            live.mark_done();
        });
    }

    fn live_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live handle of a task that has not stopped yet.
    pub fn live(&self, id: &str) -> Option<Arc<Live>> {
        self.live_map().get(id).cloned()
    }

    /// Reads, changes and writes back one task record, atomically with respect to other
    /// updates. Returns the record as written.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Task)) -> Result<Task, ServerError> {
        let _g = self.update_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut t = self.store.get(id)?.ok_or_else(|| ServerError::Io {
            what: format!("task {id}"),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        f(&mut t);
        self.store.update(&t)?;
        Ok(t)
    }

    /// Appends to a task's event history; a failure is logged, not fatal.
    pub fn event(&self, id: &str, message: &str) {
        tracing::info!(task = id, "{message}");
        if let Err(e) = self.store.add_event(id, now_ms(), message) {
            tracing::warn!(task = id, "cannot record event: {e}");
        }
    }

    pub fn task_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("tasks").join(id)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.task_dir(id).join("output.log")
    }

    /// Asks a task to stop: SIGTERM, SIGKILL after its stop timeout, then the VM ends.
    pub fn stop(self: &Arc<Self>, id: &str) -> Result<StopOutcome, ServerError> {
        supervisor::request_stop(self, id)
    }

    /// Stops every running task (for shutdown) and waits until they have ended; VMs
    /// booting for a snapshot are ended.
    pub async fn stop_all(self: &Arc<Self>) {
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
