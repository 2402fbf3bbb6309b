//! The server's snapshots, one per VM shape (vCPUs × MiB × with or without a network
//! card × the size of a build step's scratch disk, if it has one), under
//! `<snapshots>/<fingerprint>-<vcpus>x<mib>[-net][-scratch<size>]/` (`<snapshots>` is
//! `<state>/snapshots` unless `--snapshot-dir` says otherwise). The fingerprint hashes the
//! VMM, kernel and agent initramfs, so a change to any of them makes new snapshots (old
//! ones are deleted at start). A shape's snapshot is built in the background the first
//! time a task of that shape runs; until it is ready such tasks boot. Builds run one at a
//! time: a builder's VM is not counted against the capacity, and two guest boots beside a
//! full load of tasks starve everything on a small host (seen on a 2-core PVM host: five
//! VMs booting at once, none said hello within 10 minutes).
//!
//! Servers may share the directory: a build holds an `flock` on `<shape dir>.lock`, so a
//! shape is built by one server at a time and the others find it ready; a `.building`
//! directory is swept at start only when its lock is free (its builder is gone).
//!
//! Beside them, per-image warm snapshots ([`warm`]).

mod warm;

pub use warm::{
    image_key, summarize, DirSummary, WarmCounters, WarmRequest, WarmTicket, WarmUsage,
};

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::launcher::{build_snapshot, LaunchConfig, Snapshot, TaskControl};

/// vCPUs, MiB, a network card, the bytes of a scratch disk (0: none).
type ShapeKey = (u32, u64, bool, u64);

#[derive(Debug, Clone)]
enum Shape {
    Building,
    Ready(Snapshot),
    /// The build failed then (the reason is logged); tried again after
    /// [`RETRY_FAILED_BUILD`], as a failure under load may not last.
    Failed(Instant),
}

/// How long tasks of a shape whose snapshot build failed boot before the next try.
const RETRY_FAILED_BUILD: Duration = Duration::from_secs(600);

pub struct Snapshots {
    root: PathBuf,
    fingerprint: String,
    enabled: bool,
    shapes: Mutex<HashMap<ShapeKey, Shape>>,
    /// The VMs being booted to be snapshotted, so shutdown can end them.
    builders: Mutex<Vec<TaskControl>>,
    /// Held by the one build under way.
    build_turn: Mutex<()>,
    /// Set at shutdown: builds still waiting for their turn do not start.
    stopping: AtomicBool,
    /// Disk bytes the warm snapshots may take; 0: none are made.
    warm_budget: u64,
    /// Warm snapshot dirs being built (None) or whose build failed then.
    warm_builds: Mutex<HashMap<PathBuf, Option<Instant>>>,
    warm_counters: WarmCounters,
}

/// sha256 over the files' bytes, in order.
fn fingerprint(files: &[&Path]) -> std::io::Result<String> {
    let mut h = Sha256::new();
    // Booted with other kernel parameters, the same files make another guest.
    h.update(crate::launcher::guest_cmdline().as_bytes());
    for f in files {
        let mut file = std::fs::File::open(f)?;
        std::io::copy(&mut file, &mut h)?;
    }
    Ok(hex::encode(&h.finalize()[..8]))
}

impl Snapshots {
    pub fn open(
        root: &Path,
        enabled: bool,
        warm_budget: u64,
        vmm: &Path,
        kernel: &Path,
        initrd: &Path,
    ) -> std::io::Result<Self> {
        let fingerprint = if enabled {
            fingerprint(&[vmm, kernel, initrd])?
        } else {
            String::new()
        };
        std::fs::create_dir_all(root)?;
        for e in std::fs::read_dir(root)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = enabled && name.starts_with(&format!("{fingerprint}-"));
            if let Some(shape) = name.strip_suffix(".building") {
                // A build left by a server that is gone (its lock is free).
                if let Ok(Some(_lock)) = BuildLock::try_take(&root.join(shape)) {
                    end_leftover_builders(&e.path());
                    let _ = std::fs::remove_dir_all(e.path());
                }
            } else if let Some(shape) = name.strip_suffix(".lock") {
                if !ours {
                    if let Ok(Some(_lock)) = BuildLock::try_take(&root.join(shape)) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            } else if !ours {
                // Snapshots of another VMM, kernel or agent are of no use any more.
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(Self {
            root: root.to_owned(),
            fingerprint,
            enabled,
            shapes: Mutex::new(HashMap::new()),
            builders: Mutex::new(Vec::new()),
            build_turn: Mutex::new(()),
            stopping: AtomicBool::new(false),
            warm_budget,
            warm_builds: Mutex::new(HashMap::new()),
            warm_counters: WarmCounters::default(),
        })
    }

    fn dir(&self, (vcpus, mib, net, scratch): ShapeKey) -> PathBuf {
        let card = if net { "-net" } else { "" };
        let disk = match scratch {
            0 => String::new(),
            b if b % (1 << 30) == 0 => format!("-scratch{}g", b >> 30),
            b if b % (1 << 20) == 0 => format!("-scratch{}m", b >> 20),
            b => format!("-scratch{b}"),
        };
        self.root
            .join(format!("{}-{vcpus}x{mib}{card}{disk}", self.fingerprint))
    }

    fn shapes(&self) -> std::sync::MutexGuard<'_, HashMap<ShapeKey, Shape>> {
        self.shapes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many shapes have a snapshot ready.
    pub fn ready(&self) -> usize {
        self.shapes()
            .values()
            .filter(|s| matches!(s, Shape::Ready(_)))
            .count()
    }

    /// The snapshot for this shape if it is ready; otherwise `None`, and a build starts in
    /// the background (once per shape) from `base`.
    pub fn for_shape(self: &Arc<Self>, base: &LaunchConfig) -> Option<Snapshot> {
        if !self.enabled {
            return None;
        }
        let key = (
            base.vcpus,
            base.memory_mib,
            base.net.is_some(),
            base.scratch.as_ref().map_or(0, |d| d.made_bytes()),
        );
        let mut shapes = self.shapes();
        match shapes.get(&key) {
            Some(Shape::Ready(s)) => return Some(s.clone()),
            Some(Shape::Building) => return None,
            Some(Shape::Failed(at)) if at.elapsed() < RETRY_FAILED_BUILD => return None,
            Some(Shape::Failed(_)) | None => {}
        }
        if let Some(s) = Snapshot::in_dir(&self.dir(key)) {
            shapes.insert(key, Shape::Ready(s.clone()));
            return Some(s);
        }
        shapes.insert(key, Shape::Building);
        drop(shapes);
        let cfg = base.clone();
        self.spawn_build(move |me, control| {
            let _turn = me.build_turn.lock().unwrap_or_else(|p| p.into_inner());
            if me.stopping.load(Ordering::SeqCst) {
                me.shapes().insert(key, Shape::Failed(Instant::now()));
                return;
            }
            let dir = me.dir(key);
            let lock = match me.wait_for_build_lock(&dir) {
                Ok(Some(lock)) => lock,
                Ok(None) => {
                    me.shapes().insert(key, Shape::Failed(Instant::now()));
                    return;
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot lock {}: {e}; tasks of that shape boot",
                        dir.display()
                    );
                    me.shapes().insert(key, Shape::Failed(Instant::now()));
                    return;
                }
            };
            // Another server sharing the directory may have built it meanwhile.
            if let Some(s) = Snapshot::in_dir(&dir) {
                me.shapes().insert(key, Shape::Ready(s));
                return;
            }
            let shape = match build_snapshot(&cfg, &dir, control) {
                Ok(s) => {
                    tracing::info!(
                        "snapshot for {}x{} MiB ready in {}",
                        key.0,
                        key.1,
                        dir.display()
                    );
                    Shape::Ready(s)
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot build a snapshot for {}x{} MiB: {e}; tasks of that shape boot (next try in {} s)",
                        key.0,
                        key.1,
                        RETRY_FAILED_BUILD.as_secs()
                    );
                    let _ = std::fs::remove_dir_all(dir.with_extension("building"));
                    Shape::Failed(Instant::now())
                }
            };
            me.shapes().insert(key, shape);
            drop(lock);
        });
        None
    }

    /// Runs `build` on a thread of its own with the control of its VM, which is listed in
    /// `builders` while the build runs (so that shutdown can end the VM).
    fn spawn_build(
        self: &Arc<Self>,
        build: impl FnOnce(&Arc<Self>, &TaskControl) + Send + 'static,
    ) {
        let control = TaskControl::new();
        self.builders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(control.clone());
        let me = self.clone();
        std::thread::spawn(move || {
            build(&me, &control);
            me.builders
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|c| !c.same_as(&control));
        });
    }

    /// Waits for the build lock of the shape in `dir`, which another server sharing the
    /// directory may hold while it builds; `None` when this server is stopping meanwhile.
    fn wait_for_build_lock(&self, dir: &Path) -> std::io::Result<Option<BuildLock>> {
        loop {
            if let Some(lock) = BuildLock::try_take(dir)? {
                return Ok(Some(lock));
            }
            if self.stopping.load(Ordering::SeqCst) {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Ends the VMs still booting to be snapshotted, and keeps waiting builds from
    /// starting (at shutdown).
    pub fn stop_builders(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for c in self
            .builders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            c.kill_vm();
        }
    }

    /// Waits until no build runs (or `timeout` passed); true when none does. A process
    /// that exits with a build under way loses it (the containerd shim waits here).
    pub fn wait_for_builds(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .builders
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Drops a snapshot the VMM refused; the next task of that shape builds a new one.
    pub fn discard(&self, snap: &Snapshot) {
        let mut shapes = self.shapes();
        shapes.retain(|_, s| !matches!(s, Shape::Ready(r) if r == snap));
        if let Some(dir) = snap.state.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A build's `RUN` steps restore these snapshots as tasks do.
impl crate::build::executor::StepSnapshots for Arc<Snapshots> {
    fn for_shape(&self, cfg: &LaunchConfig) -> Option<Snapshot> {
        Snapshots::for_shape(self, cfg)
    }

    fn discard(&self, snap: &Snapshot) {
        Snapshots::discard(self, snap);
    }
}

/// The `flock` a build of one shape holds on `<shape dir>.lock` (released when dropped,
/// or when its server dies).
struct BuildLock {
    _file: File,
}

impl BuildLock {
    /// The lock of the shape whose snapshot goes in `dir`, if no one holds it.
    fn try_take(dir: &Path) -> std::io::Result<Option<Self>> {
        use rustix::fs::{flock, FlockOperation};
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.with_extension("lock"))?;
        match flock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(Self { _file: f })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Kills `skiff-vmm` processes a previous server left booting for a snapshot in `work`
/// (their command line names a path under it).
fn end_leftover_builders(work: &Path) {
    let needle = work.to_string_lossy().into_owned();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline);
        if text.contains("skiff-vmm") && text.contains(&needle) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                tracing::warn!("ended a snapshot VM left from the previous run (pid {pid:?})");
            }
        }
    }
}
