//! Builds run by the server: each one's record (state, steps, result or error) kept in
//! memory with its NDJSON events for followers, and saved to `<state>/builds/<id>.json` at
//! its start and end. A server that starts finds the builds a previous run left QUEUED or
//! RUNNING and fails them with `ControlPlaneRestarted` (their cache records stay). Builds
//! run one at a time, in the order they came; each `RUN` step's VM waits for room in the
//! server's capacity, as a task's VM does.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};

use crate::build::{
    BuildContext, BuildControl, BuildError, BuildEvent, BuildNetworks, BuildRequest, Builder,
    StepNetwork, StepStatus, VmParts,
};
use crate::images::push::push_image;
use crate::images::registry::{Reference, RegistryClient};
use crate::tasks::now_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum BuildState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl BuildState {
    pub fn is_done(self) -> bool {
        matches!(
            self,
            BuildState::Succeeded | BuildState::Failed | BuildState::Cancelled
        )
    }
}

/// Event bytes kept per build (its `RUN` output beyond is dropped, with a warning).
const MAX_EVENT_BYTES: usize = 32 << 20;
/// Finished builds kept (records and events); older ones are forgotten.
const KEEP_FINISHED: usize = 200;

/// One step as the API shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    pub index: usize,
    pub label: String,
    pub status: String,
    pub cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub miss_reason: Option<String>,
    pub start_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// A `RUN` step that ran: where its time went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<crate::build::RunPhases>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildFailure {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_tail: Vec<String>,
}

/// A build as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildRecord {
    pub id: String,
    pub state: BuildState,
    pub context_id: String,
    pub tags: Vec<String>,
    pub created_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    pub steps: Vec<StepView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<BuildFailure>,
}

/// A build's record, its events so far and how to cancel it.
pub struct BuildEntry {
    pub record: Mutex<BuildRecord>,
    /// NDJSON lines, in order.
    events: Mutex<Vec<String>>,
    /// The number of events, for followers.
    tx: watch::Sender<usize>,
    /// Bytes of the events kept, and whether output is being dropped.
    event_bytes: AtomicUsize,
    dropping: AtomicBool,
    pub control: BuildControl,
}

impl BuildEntry {
    fn new(record: BuildRecord) -> Self {
        BuildEntry {
            record: Mutex::new(record),
            events: Mutex::new(Vec::new()),
            tx: watch::channel(0).0,
            event_bytes: AtomicUsize::new(0),
            dropping: AtomicBool::new(false),
            control: BuildControl::new(),
        }
    }

    pub fn snapshot(&self) -> BuildRecord {
        self.record
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Events from `from` on.
    pub fn events_from(&self, from: usize) -> Vec<String> {
        self.events
            .lock()
            .map(|e| e.get(from..).unwrap_or_default().to_vec())
            .unwrap_or_default()
    }

    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.tx.subscribe()
    }

    fn push(&self, v: Value) {
        let line = v.to_string();
        if let Ok(mut e) = self.events.lock() {
            // A chatty build's output is kept up to a bound; steps and the result always.
            let is_log = v["type"] == "log";
            let used = self.event_bytes.load(Ordering::Relaxed);
            if is_log && used + line.len() > MAX_EVENT_BYTES {
                if !self.dropping.swap(true, Ordering::Relaxed) {
                    e.push(
                        json!({"type": "warning", "message": format!(
                            "the build's output beyond {} MiB is not kept", MAX_EVENT_BYTES >> 20)})
                        .to_string(),
                    );
                }
            } else {
                self.event_bytes.fetch_add(line.len(), Ordering::Relaxed);
                e.push(line);
            }
            let n = e.len();
            self.tx.send_replace(n);
        }
    }

    fn update(&self, f: impl FnOnce(&mut BuildRecord)) {
        if let Ok(mut r) = self.record.lock() {
            f(&mut r);
        }
    }

    fn on_event(&self, e: &BuildEvent) {
        match e {
            BuildEvent::Step {
                index,
                label,
                status,
                miss_reason,
            } => {
                let status_text = serde_json::to_value(status).unwrap_or(Value::Null);
                self.update(|r| {
                    let now = now_ms();
                    match r.steps.iter_mut().find(|s| s.index == *index) {
                        Some(s) => {
                            s.status = status_text.as_str().unwrap_or_default().to_owned();
                            if *status != StepStatus::Started {
                                s.end_ms = Some(now);
                            }
                        }
                        None => r.steps.push(StepView {
                            index: *index,
                            label: label.clone(),
                            status: status_text.as_str().unwrap_or_default().to_owned(),
                            cached: *status == StepStatus::Cached,
                            miss_reason: miss_reason.clone(),
                            start_ms: now,
                            end_ms: (*status == StepStatus::Cached).then_some(now),
                            ..Default::default()
                        }),
                    }
                });
                self.push(json!({"type": "step", "index": index, "label": label,
                    "status": status, "missReason": miss_reason}));
            }
            BuildEvent::Log {
                index,
                stream,
                data,
            } => self.push(json!({"type": "log", "index": index, "stream": stream,
                "data": String::from_utf8_lossy(data)})),
            BuildEvent::Warning(w) => self.push(json!({"type": "warning", "message": w})),
        }
    }
}

/// The server's builds.
pub struct Builds {
    dir: PathBuf,
    entries: Mutex<HashMap<String, Arc<BuildEntry>>>,
    /// One build runs at a time.
    slots: Arc<Semaphore>,
}

impl Builds {
    /// Opens `<state>/builds`, failing the builds a previous run left unfinished.
    pub fn open(state_dir: &std::path::Path) -> std::io::Result<Self> {
        let dir = state_dir.join("builds");
        fs::create_dir_all(&dir)?;
        let builds = Builds {
            dir,
            entries: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(1)),
        };
        for f in fs::read_dir(&builds.dir)?.flatten() {
            let Ok(bytes) = fs::read(f.path()) else {
                continue;
            };
            let Ok(mut r) = serde_json::from_slice::<BuildRecord>(&bytes) else {
                continue;
            };
            if !r.state.is_done() {
                r.state = BuildState::Failed;
                r.ended_ms = Some(now_ms());
                r.error = Some(BuildFailure {
                    code: "ControlPlaneRestarted".into(),
                    message: "the server stopped while the build ran; its cached steps are kept"
                        .into(),
                    step: None,
                    exit_code: None,
                    output_tail: Vec::new(),
                });
                builds.save(&r);
            }
            let entry = Arc::new(BuildEntry::new(r.clone()));
            entry.push(json!({"type": "result", "state": r.state, "error": r.error}));
            if let Ok(mut e) = builds.entries.lock() {
                e.insert(r.id.clone(), entry);
            }
        }
        Ok(builds)
    }

    /// Keeps the newest [`KEEP_FINISHED`] finished builds, in memory and on disk.
    fn forget_old(&self, entries: &mut HashMap<String, Arc<BuildEntry>>) {
        let mut finished: Vec<(u64, String)> = entries
            .values()
            .map(|b| b.snapshot())
            .filter(|r| r.state.is_done())
            .map(|r| (r.created_ms, r.id))
            .collect();
        if finished.len() <= KEEP_FINISHED {
            return;
        }
        finished.sort();
        for (_, id) in &finished[..finished.len() - KEEP_FINISHED] {
            entries.remove(id);
            let _ = fs::remove_file(self.dir.join(format!("{id}.json")));
        }
    }

    fn save(&self, r: &BuildRecord) {
        let write = || -> std::io::Result<()> {
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
            serde_json::to_writer(&mut tmp, r)?;
            tmp.persist(self.dir.join(format!("{}.json", r.id)))
                .map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(build = r.id, "cannot save the build's record: {e}");
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<BuildEntry>> {
        self.entries.lock().ok()?.get(id).cloned()
    }

    /// Every build, newest first.
    pub fn list(&self) -> Vec<BuildRecord> {
        let mut all: Vec<BuildRecord> = self
            .entries
            .lock()
            .map(|e| e.values().map(|b| b.snapshot()).collect())
            .unwrap_or_default();
        all.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
        all
    }

    /// Queues a build; it starts when the one before it has ended.
    pub fn start(
        self: &Arc<Self>,
        builder: Builder,
        req: BuildRequest,
        ctx: BuildContext,
        context_id: String,
        push: Option<RegistryClient>,
    ) -> BuildRecord {
        let id = crate::tasks::new_task_id();
        let record = BuildRecord {
            id: id.clone(),
            state: BuildState::Queued,
            context_id,
            tags: req.tags.iter().map(|t| t.to_string()).collect(),
            created_ms: now_ms(),
            started_ms: None,
            ended_ms: None,
            steps: Vec::new(),
            image_digest: None,
            image_id: None,
            error: None,
        };
        self.save(&record);
        let entry = Arc::new(BuildEntry::new(record.clone()));
        if let Ok(mut e) = self.entries.lock() {
            e.insert(id, entry.clone());
            self.forget_old(&mut e);
        }
        let builds = self.clone();
        tokio::spawn(async move {
            let Ok(_slot) = builds.slots.clone().acquire_owned().await else {
                return;
            };
            if entry.control.is_cancelled() {
                builds.finish(&entry, Err(BuildError::Cancelled));
                return;
            }
            entry.update(|r| {
                r.state = BuildState::Running;
                r.started_ms = Some(now_ms());
            });
            builds.save(&entry.snapshot());
            let e2 = entry.clone();
            let result = tokio::task::spawn_blocking(move || {
                let outcome = builder.build(&req, &ctx, &e2.control, &|ev| e2.on_event(&ev))?;
                if let Some(mut client) = push {
                    // A cancel ends the push at its next request.
                    client.set_cancel(e2.control.transfers());
                    push_tags(&builder, &client, &req.tags, &e2)?;
                }
                Ok(outcome)
            })
            .await
            .unwrap_or_else(|_| Err(BuildError::Internal("the build's thread panicked".into())));
            builds.finish(&entry, result);
        });
        record
    }

    fn finish(&self, entry: &BuildEntry, result: Result<crate::build::BuildOutcome, BuildError>) {
        entry.update(|r| {
            r.ended_ms = Some(now_ms());
            match &result {
                Ok(o) => {
                    r.state = BuildState::Succeeded;
                    r.image_digest = Some(o.manifest.to_string());
                    r.image_id = Some(o.config.to_string());
                    let by_index: BTreeMap<usize, &crate::build::StepReport> =
                        o.steps.iter().map(|s| (s.index, s)).collect();
                    for s in &mut r.steps {
                        if let Some(rep) = by_index.get(&s.index) {
                            s.layer = rep.layer.as_ref().map(|d| d.to_string());
                            s.exit_code = rep.exit_code;
                            s.run = rep.run;
                            s.cached = rep.cached;
                        }
                    }
                }
                Err(BuildError::Cancelled) => {
                    r.state = BuildState::Cancelled;
                    r.error = Some(BuildFailure {
                        code: "Cancelled".into(),
                        message: "the build was cancelled".into(),
                        step: None,
                        exit_code: None,
                        output_tail: Vec::new(),
                    });
                }
                Err(e) => {
                    r.state = BuildState::Failed;
                    let (code, step, exit_code, tail) = match e {
                        BuildError::Dockerfile { .. } => ("DockerfileInvalid", None, None, vec![]),
                        BuildError::Step {
                            index,
                            exit_code,
                            tail,
                            ..
                        } => ("StepFailed", Some(*index), *exit_code, tail.clone()),
                        BuildError::Push { .. } => ("PushFailed", None, None, vec![]),
                        _ => ("Internal", None, None, vec![]),
                    };
                    r.error = Some(BuildFailure {
                        code: code.into(),
                        message: e.to_string(),
                        step,
                        exit_code,
                        output_tail: tail,
                    });
                }
            }
        });
        let r = entry.snapshot();
        self.save(&r);
        entry.push(
            json!({"type": "result", "state": r.state, "imageDigest": r.image_digest,
            "imageId": r.image_id, "error": r.error}),
        );
    }
}

/// Pushes each tag of a built image, its progress as `{"type":"push","tag",…}` events
/// (the fields of `PushEvent::to_json`), then `{"type":"push","tag","status":"done"}`.
fn push_tags(
    builder: &Builder,
    client: &RegistryClient,
    tags: &[Reference],
    entry: &BuildEntry,
) -> Result<(), BuildError> {
    for t in tags {
        let event = |mut v: Value| {
            v["type"] = "push".into();
            v["tag"] = t.to_string().into();
            entry.push(v);
        };
        let digest = push_image(builder.store(), client, t, t, &|e| event(e.to_json())).map_err(
            |e| match e {
                _ if entry.control.is_cancelled() => BuildError::Cancelled,
                e => BuildError::Push {
                    tag: t.to_string(),
                    message: e.to_string(),
                },
            },
        )?;
        event(json!({"status": "done", "digest": digest.to_string()}));
    }
    Ok(())
}

/// `RUN` steps' networks in the server: the default network, as a task's, recorded in
/// the VM's work folder (`network.json`) until it is detached.
struct StepNetworks {
    nets: Arc<crate::network::Networks>,
}

impl BuildNetworks for StepNetworks {
    fn attach(&self, id: &str, work: &std::path::Path) -> Result<StepNetwork, String> {
        let net = self
            .nets
            .attach(id, Vec::new())
            .map_err(|e| e.to_string())?;
        if let Err(e) = super::networking::write_record(&work.join(super::networking::RECORD), &net)
        {
            let _ = self.nets.detach(&net);
            return Err(format!("cannot record the step's network: {e}"));
        }
        tracing::info!(
            id,
            address = net.guest.address,
            "build step network attached"
        );
        Ok(StepNetwork {
            guest: super::networking::guest_spec(&net),
            net,
        })
    }

    fn detach(&self, net: &crate::network::TaskNetwork, work: &std::path::Path) {
        match self.nets.detach(net) {
            Ok(()) => {
                let _ = fs::remove_file(work.join(super::networking::RECORD));
            }
            Err(e) => tracing::warn!(netns = net.netns, "build step network detach: {e}"),
        }
    }
}

/// Ends the VMs of builds a previous run left (their work folders are
/// `<state>/tmp/build-*/vm-N`) and removes those folders with the stage trees in them.
pub fn remove_leftovers(
    state_dir: &std::path::Path,
    cgroup_parent: &str,
    networks: &Result<crate::network::registry::NetworkRegistry, String>,
) {
    let Ok(entries) = fs::read_dir(state_dir.join("tmp")) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        if !e.file_name().to_string_lossy().starts_with("build-") {
            continue;
        }
        for vm in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if vm.file_name().to_string_lossy().starts_with("vm-") {
                super::recovery::end_vmms_of(&vm.path(), cgroup_parent);
                detach_leftover_network(&vm.path(), networks);
            }
        }
        if let Err(e) = fs::remove_dir_all(&dir) {
            tracing::warn!("cannot remove {} left by a build: {e}", dir.display());
        }
    }
}

/// Detaches the network a build's VM folder records (its VM is gone by now).
fn detach_leftover_network(
    vm_dir: &std::path::Path,
    networks: &Result<crate::network::registry::NetworkRegistry, String>,
) {
    let path = vm_dir.join(super::networking::RECORD);
    let Ok(text) = fs::read_to_string(&path) else {
        return;
    };
    let Ok(net) = serde_json::from_str::<crate::network::TaskNetwork>(&text) else {
        tracing::warn!("unreadable {}", path.display());
        return;
    };
    let done = match networks.as_ref().ok().and_then(|r| r.get(&net.network)) {
        Some(nets) => nets.detach(&net),
        None => crate::network::ip::netns_del(&net.netns).map_err(Into::into),
    };
    match done {
        Ok(()) => tracing::info!(
            netns = net.netns,
            "detached a build step's network left from the last run"
        ),
        Err(e) => tracing::warn!(
            netns = net.netns,
            "cannot detach a build step's network: {e}"
        ),
    }
}

/// `wait`'s output, or None once the build is cancelled (checked every 200 ms).
async fn unless_cancelled<F: std::future::Future>(
    wait: F,
    control: &BuildControl,
) -> Option<F::Output> {
    tokio::pin!(wait);
    loop {
        tokio::select! {
            out = &mut wait => return Some(out),
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                if control.is_cancelled() {
                    return None;
                }
            }
        }
    }
}

/// What a server's builds run with: each `RUN` step first reserves its whole scratch disk
/// from the server's build disk budget (`--build-disk-budget`), then its VM is admitted by
/// the server's scheduler like a task's (its vCPUs and memory count against the
/// capacity), and it restores the server's snapshot of its shape when one is ready. Call
/// it from the server's runtime.
pub fn builder_of(srv: &super::Server) -> Builder {
    let sched = srv.sched.clone();
    let disk = srv.build_disk.clone();
    // The server refuses to start with a budget under one disk, so this always fits.
    let disk_mib =
        u32::try_from(srv.cfg.build_step_disk_bytes.div_ceil(1 << 20)).unwrap_or(u32::MAX);
    let handle = tokio::runtime::Handle::current();
    let admission: crate::build::executor::Admission =
        Arc::new(move |cpus: u32, memory_mib: u64, control: &BuildControl| {
            let control = control.clone();
            let disk = disk.clone();
            // Called on the build's blocking thread, never on the runtime's workers.
            handle.block_on(async {
                // The disk first: a step waiting for disk holds no vCPUs tasks could use.
                let reserved = unless_cancelled(disk.acquire_many_owned(disk_mib), &control)
                    .await?
                    .ok()?;
                let lease = unless_cancelled(sched.acquire(cpus, memory_mib), &control).await?;
                Some(Box::new((reserved, lease)) as Box<dyn Send>)
            })
        });
    let builder = Builder::new(
        srv.images.clone(),
        srv.cfg.registry.clone(),
        VmParts {
            vmm: srv.cfg.vmm.clone(),
            jail: srv.cfg.jail.clone(),
            kernel: srv.cfg.kernel.clone(),
            initrd: srv.initrd.clone(),
            step_disk_bytes: srv.cfg.build_step_disk_bytes,
        },
    )
    .with_admission(admission)
    .with_snapshots(Arc::new(srv.snapshots.clone()));
    // `RUN` steps with `--network default` join the server's default network.
    let default_network = srv
        .networks
        .as_ref()
        .ok()
        .and_then(|r| r.get(crate::network::DEFAULT_NETWORK));
    match default_network {
        Some(nets) => builder.with_networks(Arc::new(StepNetworks { nets })),
        None => builder,
    }
}
