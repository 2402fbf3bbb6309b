//! A whole build: the Dockerfile planned into stages, the stages the target needs built
//! (each wave of independent stages at once), and the target's image stored like a pulled
//! one: layers and config in the blob store, a manifest, its tags, and its root filesystem
//! image when the build already has its tree.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::info;

use super::cache_store::BuildCache;
use super::dockerfile::{parse_bytes, plan, Plan};
use super::image_config::{self, Clock, Descriptor};
use super::layer::{write_layer, LayerEntry};
use super::miss_reason::InputsLog;
use super::request::{
    BuildContext, BuildError, BuildEvent, BuildOutcome, BuildRequest, StepNetworkMode, StepReport,
};
use super::stage::StageState;
use super::tree::TreeLayer;
use crate::images::cancel::Cancel;
use crate::images::registry::RegistryOptions;
use crate::images::store::{writer_lock, ImageStore};
use crate::launcher::{JailConfig, LaunchConfig, Snapshot, TaskControl};
use crate::network::TaskNetwork;
use guest_agent::NetworkSpec;

/// What a `RUN` step's VM is made of, besides its root filesystem.
#[derive(Debug, Clone)]
pub struct VmParts {
    pub vmm: PathBuf,
    pub jail: JailConfig,
    pub kernel: PathBuf,
    /// The agent's initramfs.
    pub initrd: PathBuf,
    /// Size of each `RUN` step's scratch disk, the upper its writes go to: a sparse file
    /// in the step's folder, so it takes only what the step writes, and at most this.
    pub step_disk_bytes: u64,
}

/// A `RUN` step's scratch disk unless the server is told otherwise.
pub const DEFAULT_STEP_DISK_BYTES: u64 = 10 << 30;

/// Cancels a build: the running steps' VMs are ended, no new step starts, and a push
/// whose client holds [`BuildControl::transfers`] stops at its next request.
#[derive(Clone, Default)]
pub struct BuildControl {
    cancelled: Cancel,
    running: Arc<Mutex<Vec<TaskControl>>>,
}

impl std::fmt::Debug for BuildControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildControl")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl BuildControl {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.cancelled.cancel();
        if let Ok(running) = self.running.lock() {
            for c in running.iter() {
                c.kill_vm();
            }
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.is_cancelled()
    }

    /// The flag a registry client watches to end its transfers with the build
    /// ([`crate::images::registry::RegistryClient::set_cancel`]).
    pub fn transfers(&self) -> Cancel {
        self.cancelled.clone()
    }

    /// A control for one step's VM, ended with the build.
    pub(super) fn task(&self) -> TaskControl {
        let c = TaskControl::new();
        if let Ok(mut running) = self.running.lock() {
            running.retain(|r| !r.same_as(&c));
            running.push(c.clone());
        }
        if self.is_cancelled() {
            c.kill_vm();
        }
        c
    }

    pub(super) fn done(&self, task: &TaskControl) {
        if let Ok(mut running) = self.running.lock() {
            running.retain(|r| !r.same_as(task));
        }
    }
}

/// Waits for room for a `RUN` step's VM of (vCPUs, MiB) and returns what holds it until
/// dropped; None when the build was cancelled meanwhile. The server's scheduler admits
/// build VMs as it admits tasks; `--local` builds have no such hook.
pub type Admission = Arc<dyn Fn(u32, u64, &BuildControl) -> Option<Box<dyn Send>> + Send + Sync>;

/// The snapshots `RUN` steps' VMs restore instead of booting: the server's per-shape
/// snapshots, or a `--local` build's.
pub trait StepSnapshots: Send + Sync {
    /// The snapshot for a VM of this shape when one is ready; None: it boots.
    fn for_shape(&self, cfg: &LaunchConfig) -> Option<Snapshot>;
    /// The VMM refused this snapshot's files (damaged, foreign): drop it, so that later
    /// steps boot (and a new one is made) instead of failing the same restore.
    fn discard(&self, snap: &Snapshot);
}

/// A `RUN` step's network, attached for one VM by whoever has networks (the server).
pub struct StepNetwork {
    pub net: TaskNetwork,
    /// What the agent is told to set up on the guest's `eth0`.
    pub guest: NetworkSpec,
}

/// Gives `RUN` steps' VMs a network (`--network default`) and takes it back. `attach`
/// records the network in the VM's work folder before it returns, so that a restart
/// that finds the folder can detach it.
pub trait BuildNetworks: Send + Sync {
    fn attach(&self, id: &str, work: &Path) -> Result<StepNetwork, String>;
    fn detach(&self, net: &TaskNetwork, work: &Path);
}

/// Builds images into one image store.
#[derive(Clone)]
pub struct Builder {
    pub(super) store: ImageStore,
    pub(super) registry: RegistryOptions,
    pub(super) cache: BuildCache,
    pub(super) vm: VmParts,
    pub(super) admission: Option<Admission>,
    pub(super) snapshots: Option<Arc<dyn StepSnapshots>>,
    pub(super) networks: Option<Arc<dyn BuildNetworks>>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("store", &self.store.state_dir())
            .field("admission", &self.admission.is_some())
            .field("snapshots", &self.snapshots.is_some())
            .field("networks", &self.networks.is_some())
            .finish()
    }
}

/// A layer of a stage's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LayerRef {
    pub tree: TreeLayer,
    pub size: u64,
    /// Every layer a build writes is; a base image's may be a plain tar.
    pub gzip: bool,
}

/// One build while it runs.
pub(super) struct Run<'a> {
    pub b: &'a Builder,
    pub req: &'a BuildRequest,
    pub ctx: &'a BuildContext,
    pub control: &'a BuildControl,
    pub events: &'a (dyn Fn(BuildEvent) + Sync),
    pub plan: Plan,
    /// `<state>/tmp/build-…`: stage trees, spools, VM work folders; removed at the end.
    pub work: PathBuf,
    /// Each built stage's first step number (its FROM), and the build's step count.
    pub first_step: BTreeMap<usize, usize>,
    pub total_steps: usize,
    pub stages: Mutex<BTreeMap<usize, Arc<Mutex<StageState>>>>,
    /// What earlier builds' steps saw, for the reasons of misses.
    pub inputs: InputsLog,
    pub reports: Mutex<Vec<StepReport>>,
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Builder {
    pub fn new(store: ImageStore, registry: RegistryOptions, vm: VmParts) -> Self {
        Builder {
            cache: BuildCache::new(store.state_dir()),
            store,
            registry,
            vm,
            admission: None,
            snapshots: None,
            networks: None,
        }
    }

    /// Each `RUN` step's VM restores the snapshot of its shape from `snapshots`, when
    /// there is one (and boots when the restore fails).
    pub fn with_snapshots(mut self, snapshots: Arc<dyn StepSnapshots>) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    /// `RUN` steps of builds with `--network default` get their network from `networks`;
    /// without it such builds are refused.
    pub fn with_networks(mut self, networks: Arc<dyn BuildNetworks>) -> Self {
        self.networks = Some(networks);
        self
    }

    /// Each `RUN` step's VM waits for `admission` before it starts.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = Some(admission);
        self
    }

    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    pub fn cache(&self) -> &BuildCache {
        &self.cache
    }

    /// Runs `req` on `ctx`. Blocking; `events` hears every step, `control` can cancel.
    pub fn build(
        &self,
        req: &BuildRequest,
        ctx: &BuildContext,
        control: &BuildControl,
        events: &(dyn Fn(BuildEvent) + Sync),
    ) -> Result<BuildOutcome, BuildError> {
        if req.network == StepNetworkMode::Default && self.networks.is_none() {
            return Err(BuildError::Internal(
                "--network default: RUN steps get a network only in builds through skiff serve (its default network)".into(),
            ));
        }
        let df = parse_bytes(&req.dockerfile)?;
        let plan = plan(&df, &req.build_args)?;
        for arg in &plan.unused_build_args {
            events(BuildEvent::Warning(format!(
                "build argument {arg} was given but no ARG in the Dockerfile uses it"
            )));
        }
        let target = plan.target(req.target.as_deref())?;
        let waves = plan.build_waves(target)?;
        let mut first_step = BTreeMap::new();
        let mut total_steps = 0;
        for &s in waves
            .iter()
            .flatten()
            .collect::<std::collections::BTreeSet<_>>()
        {
            first_step.insert(s, total_steps + 1);
            total_steps += 1 + plan.stages[s].instructions.len();
        }
        // Held shared for the whole build: `image prune` waits rather than removing a
        // layer between its write and the cache record that pins it.
        let _gc = writer_lock(self.store.state_dir())
            .map_err(|e| BuildError::internal("the image store", e))?;
        let tmp = self.store.state_dir().join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| BuildError::internal("the work folder", e))?;
        let work = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&tmp)
            .map_err(|e| BuildError::internal("the work folder", e))?;
        let run = Run {
            b: self,
            req,
            ctx,
            control,
            events,
            plan,
            work: work.path().to_owned(),
            first_step,
            total_steps,
            stages: Mutex::new(BTreeMap::new()),
            inputs: InputsLog::new(self.store.state_dir()),
            reports: Mutex::new(Vec::new()),
        };
        let run = &run;
        for wave in &waves {
            let failures: Vec<BuildError> = std::thread::scope(|s| {
                let handles: Vec<_> = wave
                    .iter()
                    .map(|&stage| s.spawn(move || run.build_stage(stage)))
                    .collect();
                handles
                    .into_iter()
                    .filter_map(|h| match h.join() {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e),
                        Err(_) => Some(BuildError::Internal("a stage's thread panicked".into())),
                    })
                    .collect()
            });
            if let Some(e) = failures.into_iter().next() {
                // A second stage failing at the same time is not reported; the first is.
                return Err(if control.is_cancelled() {
                    BuildError::Cancelled
                } else {
                    e
                });
            }
        }
        let outcome = run.finish(target)?;
        info!(image = %outcome.manifest, steps = outcome.steps.len(), "built");
        Ok(outcome)
    }
}

impl Run<'_> {
    /// Stores the target stage's image: config, manifest, tags, root filesystem.
    fn finish(&self, target: usize) -> Result<BuildOutcome, BuildError> {
        let state = self.stage(target)?;
        let mut state = state
            .lock()
            .map_err(|_| BuildError::Internal("a stage's state was poisoned".into()))?;
        let mut config = state.config.clone();
        for (k, v) in &self.req.labels {
            config.set_label(k, v);
        }
        let blob = config.finish(self.clock(state.last_ms));
        let blobs = self.b.store.blobs();
        let put = |bytes: &[u8]| {
            blobs
                .put_bytes(bytes)
                .map_err(|e| BuildError::internal("storing the image", e))
        };
        let config_digest = put(&blob)?;
        let layers: Vec<Descriptor> = state
            .layers
            .iter()
            .map(|l| Descriptor {
                digest: l.tree.digest.clone(),
                size: l.size,
                gzip: l.gzip,
            })
            .collect();
        let manifest = image_config::manifest(
            self.req.format,
            &Descriptor {
                digest: config_digest.clone(),
                size: blob.len() as u64,
                gzip: false,
            },
            &layers,
        );
        let manifest_digest = put(&manifest)?;
        for tag in &self.req.tags {
            self.b
                .store
                .tag(tag, &manifest_digest)
                .map_err(|e| BuildError::internal("tagging the image", e))?;
        }
        // With the whole tree at hand, the image's root filesystem is made now rather
        // than unpacked again by its first run.
        let all = state
            .layers
            .iter()
            .map(|l| l.tree.clone())
            .collect::<Vec<_>>();
        if let Some(tree) = state.tree.as_mut().filter(|t| t.applied() == all.len()) {
            let root = tree.root().to_owned();
            self.b
                .store
                .rootfs_builder()
                .from_tree(config_digest.hex(), || Ok(root))
                .map_err(|e| BuildError::internal("the image's root filesystem", e))?;
        }
        let mut steps = self.reports.lock().map(|r| r.clone()).unwrap_or_default();
        steps.sort_by_key(|s| s.index);
        Ok(BuildOutcome {
            manifest: manifest_digest,
            config: config_digest,
            steps,
        })
    }

    pub(super) fn stage(&self, index: usize) -> Result<Arc<Mutex<StageState>>, BuildError> {
        self.stages
            .lock()
            .ok()
            .and_then(|s| s.get(&index).cloned())
            .ok_or_else(|| BuildError::Internal(format!("stage {index} was not built")))
    }

    /// The time history entries and `created` get: the step's own (when it was first
    /// built), or `SOURCE_DATE_EPOCH`.
    pub(super) fn clock(&self, step_ms: u64) -> Clock {
        Clock {
            epoch: Some(self.req.source_date_epoch.unwrap_or(step_ms / 1000)),
        }
    }

    /// Writes `entries` as a canonical layer into the blob store.
    pub(super) fn store_layer(
        &self,
        entries: Vec<LayerEntry>,
        spool: Option<&File>,
    ) -> Result<LayerRef, BuildError> {
        let fail = |e: &dyn std::fmt::Display| BuildError::internal("writing a layer", e);
        let mut tmp = tempfile::tempfile_in(&self.work).map_err(|e| fail(&e))?;
        let digests = write_layer(
            entries,
            spool,
            self.req.source_date_epoch,
            BufWriter::new(&mut tmp),
        )
        .map_err(|e| fail(&e))?;
        tmp.rewind().map_err(|e| fail(&e))?;
        self.b
            .store
            .blobs()
            .ensure(&digests.digest, Some(digests.size), |w| {
                io::copy(&mut tmp, w).map(drop)
            })
            .map_err(|e| fail(&e))?;
        Ok(LayerRef {
            tree: TreeLayer {
                path: self.b.store.blobs().path(&digests.digest),
                digest: digests.digest,
                diff_id: digests.diff_id,
            },
            size: digests.size,
            gzip: true,
        })
    }

    pub(super) fn work_path(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    /// The random part of the build's work folder's name (`build-XXXXXX`), unique among
    /// the builds that run: it names the build's VMs' networks.
    pub(super) fn work_suffix(&self) -> String {
        self.work
            .file_name()
            .map(|n| n.to_string_lossy().trim_start_matches("build-").to_owned())
            .unwrap_or_default()
    }
}
