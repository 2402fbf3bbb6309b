//! Per-image warm snapshots: a VM of one shape whose agent has already mounted one image's
//! root filesystem, made its cgroup, forked its exec helper and read the image's entry
//! program ahead, snapshotted while it waits for a run spec. A task of that image and
//! shape restores it and skips all of that.
//!
//! - Made in the background after a task of an image starts from its shape's base
//!   snapshot (the warm one is built from the base one), one build at a time with the base
//!   builds; until it is ready such tasks use the base snapshot.
//! - Kept beside the base snapshots as `<fingerprint>-<shape>-img-<image key>/`, so a new
//!   VMM, kernel or agent sweeps them away with the rest; the image key hashes the image's
//!   digest and its root filesystem file (path, size, mtime, inode), so a rebuilt or
//!   deleted image is never restored with another disk under it.
//! - Bounded by a disk budget (blocks really used; the memory files are sparse): after
//!   each build the least recently used ones (by the mtime of their state file, touched at
//!   each use) go until the rest fits.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use guest_agent::{valid_opened_path, PrepareSpec, RunSpec, MAX_OPENED_FILES};
use prometheus_client::metrics::counter::Counter;
use sha2::{Digest, Sha256};

use super::{BuildLock, Snapshots};
use crate::launcher::{build_warm_snapshot, LaunchConfig, Snapshot, TaskControl};

/// Marks a warm snapshot's directory name.
const MARK: &str = "-img-";

/// The file in a warm snapshot's directory that names its image (for `skiff info`).
const IMAGE_FILE: &str = "image";

/// The file in a warm snapshot's directory that lists the files its first task opened,
/// which the snapshot holds in its page cache.
const OPENED_FILE: &str = "opened";

/// How long tasks of an image whose warm build failed use the base snapshot before the
/// next try.
const RETRY_FAILED_BUILD: Duration = Duration::from_secs(600);

/// What the server counts about warm snapshots (registered with the metrics).
#[derive(Debug, Default, Clone)]
pub struct WarmCounters {
    /// Tasks that restored a warm snapshot.
    pub hits: Counter,
    /// Tasks with a base snapshot ready and no warm one for their image yet.
    pub misses: Counter,
    pub builds: Counter,
    pub build_failures: Counter,
    pub evictions: Counter,
}

/// The warm snapshots on disk now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmUsage {
    pub count: u64,
    /// Bytes of disk really used.
    pub bytes: u64,
}

/// A stable key of the image a task runs: its digest and its root filesystem file.
pub fn image_key(rootfs: &Path, digest: Option<&str>) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(rootfs)?;
    let mut h = Sha256::new();
    for part in [
        digest.unwrap_or("").as_bytes(),
        rootfs.as_os_str().as_encoded_bytes(),
        &m.len().to_le_bytes(),
        &m.mtime().to_le_bytes(),
        &m.mtime_nsec().to_le_bytes(),
        &m.ino().to_le_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    Ok(hex::encode(&h.finalize()[..8]))
}

/// What a warm build of a task's image needs from the task.
pub struct WarmRequest {
    /// [`image_key`] of the task's image.
    pub image_key: String,
    /// A readable name of the image (its reference and digest), kept beside the snapshot.
    pub image_name: String,
    /// The task's run spec: its disk, upper size, program and PATH shape the preparation.
    pub spec: RunSpec,
    /// The files the task opened (its agent's report), read ahead after its program.
    pub opened: Vec<String>,
}

impl WarmRequest {
    fn prepare_spec(&self) -> PrepareSpec {
        let path = self
            .spec
            .env
            .iter()
            .find_map(|kv| kv.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        PrepareSpec {
            image_id: self.image_key.clone(),
            image_disk: self.spec.image_disk.clone(),
            upper_size_mib: self.spec.upper_size_mib,
            warm_programs: self.spec.argv.first().cloned().into_iter().collect(),
            path: path.to_owned(),
            // A guest's report: only well-formed paths, and no more than the agent takes.
            warm_files: self
                .opened
                .iter()
                .filter(|p| valid_opened_path(p))
                .take(MAX_OPENED_FILES)
                .cloned()
                .collect(),
        }
    }
}

/// An image's warm build that waits for its first task: the task's agent notes the
/// files the process opens, and [`WarmTicket::build_with`] starts the build with them. A
/// ticket dropped unused (the task failed, or its agent sent no report) starts the build
/// without them, so every path ends in a build.
pub struct WarmTicket {
    pending: Option<PendingBuild>,
}

struct PendingBuild {
    snapshots: Arc<Snapshots>,
    cfg: LaunchConfig,
    base: Snapshot,
    warm: WarmRequest,
    dir: PathBuf,
}

impl WarmTicket {
    /// Starts the build, reading `opened` ahead (the task's report) after the program.
    pub fn build_with(mut self, opened: Vec<String>) {
        self.start(opened);
    }

    fn start(&mut self, opened: Vec<String>) {
        if let Some(mut p) = self.pending.take() {
            p.warm.opened = opened;
            p.start();
        }
    }
}

impl PendingBuild {
    /// Starts the build in the background (one build at a time).
    fn start(self) {
        let PendingBuild {
            snapshots,
            cfg,
            base,
            warm,
            dir,
        } = self;
        snapshots.spawn_build(move |me, control| {
            let ok = me.build_warm(&cfg, &base, &warm, &dir, control);
            let mut builds = me.warm_builds();
            if ok {
                builds.remove(&dir);
            } else {
                builds.insert(dir, Some(Instant::now()));
            }
        });
    }
}

impl Drop for WarmTicket {
    fn drop(&mut self) {
        self.start(Vec::new());
    }
}

impl Snapshots {
    /// (Warm snapshots are of task shapes: vCPUs, MiB, a network card; no scratch disk.)
    fn warm_dir(&self, (vcpus, mib, net): (u32, u64, bool), image_key: &str) -> PathBuf {
        let card = if net { "-net" } else { "" };
        self.root.join(format!(
            "{}-{vcpus}x{mib}{card}{MARK}{image_key}",
            self.fingerprint
        ))
    }

    /// The snapshot a task should start from: its image's warm snapshot when there is one
    /// (and then `spec.image_id` names the image), else its shape's base snapshot; `None`
    /// (boot) while the base one is not ready. The first task of an image on the base
    /// snapshot also gets a [`WarmTicket`]: its agent notes the files it opens, and the
    /// image's warm build starts with them when the ticket is used or dropped.
    pub fn for_task(
        self: &Arc<Self>,
        cfg: &LaunchConfig,
        warm: WarmRequest,
    ) -> (Option<Snapshot>, Option<WarmTicket>) {
        let Some(base) = self.for_shape(cfg) else {
            return (None, None);
        };
        if self.warm_budget == 0 || cfg.scratch.is_some() {
            return (Some(base), None);
        }
        let key = (cfg.vcpus, cfg.memory_mib, cfg.net.is_some());
        let dir = self.warm_dir(key, &warm.image_key);
        if let Some(s) = Snapshot::in_dir(&dir) {
            self.warm_counters.hits.inc();
            touch(&s.state);
            return (Some(Snapshot { warm: true, ..s }), None);
        }
        self.warm_counters.misses.inc();
        {
            let mut builds = self.warm_builds();
            match builds.get(&dir) {
                Some(None) => return (Some(base), None),
                Some(Some(failed)) if failed.elapsed() < RETRY_FAILED_BUILD => {
                    return (Some(base), None)
                }
                _ => {}
            }
            builds.insert(dir.clone(), None);
        }
        let ticket = WarmTicket {
            pending: Some(PendingBuild {
                snapshots: self.clone(),
                cfg: cfg.clone(),
                base: base.clone(),
                warm,
                dir,
            }),
        };
        (Some(base), Some(ticket))
    }

    /// Builds one warm snapshot (when its turn comes); true when it is there after.
    fn build_warm(
        &self,
        cfg: &LaunchConfig,
        base: &Snapshot,
        warm: &WarmRequest,
        dir: &Path,
        control: &TaskControl,
    ) -> bool {
        let _turn = self.build_turn.lock().unwrap_or_else(|p| p.into_inner());
        if self.stopping.load(Ordering::SeqCst) {
            return false;
        }
        let _lock = match self.wait_for_build_lock(dir) {
            Ok(Some(l)) => l,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!("cannot lock {}: {e}", dir.display());
                return false;
            }
        };
        if Snapshot::in_dir(dir).is_some() {
            return true;
        }
        let prepare = warm.prepare_spec();
        match build_warm_snapshot(cfg, base, &prepare, dir, control) {
            Ok((_, built)) => {
                self.warm_counters.builds.inc();
                let _ = std::fs::write(dir.join(IMAGE_FILE), format!("{}\n", warm.image_name));
                let mut listed = prepare.warm_files.join("\n");
                listed.push('\n');
                let _ = std::fs::write(dir.join(OPENED_FILE), listed);
                tracing::info!(
                    "warm snapshot of {} for {}x{} MiB ready in {:.1} s (root prepared in {} ms in the guest, {} KiB read ahead: the program and {} files its first task opened)",
                    warm.image_name,
                    cfg.vcpus,
                    cfg.memory_mib,
                    built.build_ms as f64 / 1000.0,
                    built.prepare_ms,
                    built.warmed_bytes / 1024,
                    prepare.warm_files.len()
                );
                self.evict_beyond_budget(dir);
                true
            }
            Err(e) => {
                self.warm_counters.build_failures.inc();
                tracing::warn!(
                    "cannot build a warm snapshot of {}: {e}; its tasks use the base snapshot (next try in {} s)",
                    warm.image_name,
                    RETRY_FAILED_BUILD.as_secs()
                );
                let _ = std::fs::remove_dir_all(dir.with_extension("building"));
                false
            }
        }
    }

    fn warm_builds(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<PathBuf, Option<Instant>>> {
        self.warm_builds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This server's warm snapshots on disk, least recently used first.
    fn warm_on_disk(&self) -> Vec<(PathBuf, SystemTime, u64)> {
        let prefix = format!("{}-", self.fingerprint);
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return found;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&prefix) || !name.contains(MARK) || name.contains('.') {
                continue;
            }
            let Some(s) = Snapshot::in_dir(&e.path()) else {
                continue;
            };
            let used = std::fs::metadata(&s.state)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((e.path(), used, disk_bytes(&e.path())));
        }
        found.sort_by_key(|(_, used, _)| *used);
        found
    }

    /// How many warm snapshots there are and the disk they take.
    pub fn warm_usage(&self) -> WarmUsage {
        let all = self.warm_on_disk();
        WarmUsage {
            count: all.len() as u64,
            bytes: all.iter().map(|(_, _, b)| b).sum(),
        }
    }

    pub fn warm_counters(&self) -> &WarmCounters {
        &self.warm_counters
    }

    pub fn warm_budget(&self) -> u64 {
        self.warm_budget
    }

    /// Deletes the least recently used warm snapshots (never `keep`) until the rest fit
    /// the budget; one that another server is building over is left alone.
    fn evict_beyond_budget(&self, keep: &Path) {
        let all = self.warm_on_disk();
        let mut total: u64 = all.iter().map(|(_, _, b)| b).sum();
        for (dir, _, bytes) in all {
            if total <= self.warm_budget {
                break;
            }
            if dir == keep {
                continue;
            }
            let Ok(Some(_lock)) = BuildLock::try_take(&dir) else {
                continue;
            };
            if std::fs::remove_dir_all(&dir).is_ok() {
                let _ = std::fs::remove_file(dir.with_extension("lock"));
                total = total.saturating_sub(bytes);
                self.warm_counters.evictions.inc();
                tracing::info!(
                    "warm snapshot {} evicted ({} MiB; the budget is {} MiB)",
                    dir.display(),
                    bytes >> 20,
                    self.warm_budget >> 20
                );
            }
        }
    }
}

/// What a snapshot directory holds, read from its files alone (for `skiff info`).
#[derive(Debug, Default)]
pub struct DirSummary {
    pub base: usize,
    /// Each warm snapshot's directory name, its image as recorded, its disk bytes.
    pub warm: Vec<(String, String, u64)>,
}

pub fn summarize(root: &Path) -> DirSummary {
    let mut out = DirSummary::default();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains('.') || Snapshot::in_dir(&e.path()).is_none() {
            continue;
        }
        if name.contains(MARK) {
            let image = std::fs::read_to_string(e.path().join(IMAGE_FILE)).unwrap_or_default();
            out.warm
                .push((name, image.trim().to_owned(), disk_bytes(&e.path())));
        } else {
            out.base += 1;
        }
    }
    out.warm.sort();
    out
}

/// Marks a snapshot as just used (its state file's mtime orders the evictions).
fn touch(state: &Path) {
    if let Ok(f) = std::fs::File::open(state) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Disk blocks in use under `dir` (one level: a snapshot's files), in bytes.
pub fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_key_changes_with_the_digest_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("rootfs.erofs");
        std::fs::write(&f, b"one").unwrap();
        let a = image_key(&f, Some("sha256:aa")).unwrap();
        assert_eq!(a, image_key(&f, Some("sha256:aa")).unwrap());
        assert_ne!(a, image_key(&f, Some("sha256:bb")).unwrap());
        std::fs::write(&f, b"longer").unwrap();
        assert_ne!(a, image_key(&f, Some("sha256:aa")).unwrap());
        assert_eq!(a.len(), 16);
    }

    /// A server's snapshots in `root` with a budget of `budget_mib`.
    fn snapshots(root: &Path, budget_mib: u64) -> Snapshots {
        let pieces = root.join("pieces");
        std::fs::create_dir_all(&pieces).unwrap();
        let files: Vec<PathBuf> = ["vmm", "kernel", "initrd"]
            .iter()
            .map(|n| {
                let p = pieces.join(n);
                if !p.exists() {
                    std::fs::write(&p, n).unwrap();
                }
                p
            })
            .collect();
        Snapshots::open(
            &root.join("snapshots"),
            true,
            budget_mib << 20,
            &files[0],
            &files[1],
            &files[2],
        )
        .unwrap()
    }

    /// A warm snapshot of `mib` MiB of real blocks, last used `age_s` seconds ago.
    fn fake_warm(s: &Snapshots, image: &str, mib: usize, age_s: u64) -> PathBuf {
        let dir = s.warm_dir((1, 128, false), image);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vm.mem"), vec![1u8; mib << 20]).unwrap();
        std::fs::write(dir.join("vm.state"), b"state").unwrap();
        let f = std::fs::File::open(dir.join("vm.state")).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_s))
            .unwrap();
        dir
    }

    #[test]
    fn the_least_recently_used_go_until_the_rest_fit_the_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let s = snapshots(tmp.path(), 5);
        let oldest = fake_warm(&s, "aaaa", 2, 300);
        let middle = fake_warm(&s, "bbbb", 2, 200);
        let used_lately = fake_warm(&s, "cccc", 2, 10);
        let new = fake_warm(&s, "dddd", 2, 100);
        assert_eq!(s.warm_usage().count, 4);
        s.evict_beyond_budget(&new);
        // 8 MiB in a 5 MiB budget: the two least recently used go, the new one stays.
        assert!(!oldest.exists() && !middle.exists());
        assert!(used_lately.exists() && new.exists());
        assert_eq!(s.warm_counters().evictions.get(), 2);
        let usage = s.warm_usage();
        assert_eq!(usage.count, 2);
        assert!(
            usage.bytes >= 4 << 20 && usage.bytes <= 5 << 20,
            "{usage:?}"
        );
        // A base snapshot is never counted or evicted.
        assert_eq!(summarize(&s.root).warm.len(), 2);
    }

    #[test]
    fn a_snapshot_being_rebuilt_elsewhere_is_not_evicted() {
        let tmp = tempfile::tempdir().unwrap();
        let s = snapshots(tmp.path(), 1);
        let busy = fake_warm(&s, "aaaa", 2, 300);
        let new = fake_warm(&s, "bbbb", 2, 10);
        let _held = BuildLock::try_take(&busy).unwrap().unwrap();
        s.evict_beyond_budget(&new);
        assert!(busy.exists() && new.exists());
        assert_eq!(s.warm_counters().evictions.get(), 0);
    }

    #[test]
    fn a_new_agent_sweeps_the_warm_snapshots_away() {
        let tmp = tempfile::tempdir().unwrap();
        let s = snapshots(tmp.path(), 64);
        let old = fake_warm(&s, "aaaa", 1, 10);
        std::fs::write(tmp.path().join("pieces/initrd"), b"another agent").unwrap();
        let s2 = snapshots(tmp.path(), 64);
        assert!(!old.exists());
        assert_eq!(s2.warm_usage().count, 0);
    }

    #[test]
    fn the_prepare_spec_warms_the_task_program_along_its_path() {
        let req = WarmRequest {
            image_key: "k".into(),
            image_name: "local/busybox".into(),
            spec: RunSpec {
                argv: vec!["sh".into(), "-c".into(), "true".into()],
                env: vec!["A=1".into(), "PATH=/bin".into()],
                image_disk: "/dev/vda".into(),
                upper_size_mib: 32,
                ..Default::default()
            },
            opened: vec![
                "/usr/lib/libz.so.1".into(),
                "relative".into(),
                "/etc/../proc/kcore".into(),
                "/a//b".into(),
                "/lib/x\0y".into(),
                "/".into(),
                "/etc/ssl/openssl.cnf".into(),
            ],
        };
        let p = req.prepare_spec();
        assert_eq!(p.warm_programs, vec!["sh".to_owned()]);
        assert_eq!(p.path, "/bin");
        assert_eq!((p.image_id.as_str(), p.upper_size_mib), ("k", 32));
        // A guest's report: only absolute paths without `.`, `..`, NUL or empty parts.
        assert_eq!(p.warm_files, ["/usr/lib/libz.so.1", "/etc/ssl/openssl.cnf"]);
    }

    #[test]
    fn an_opened_report_is_capped() {
        let req = WarmRequest {
            image_key: "k".into(),
            image_name: "i".into(),
            spec: RunSpec {
                argv: vec!["x".into()],
                ..Default::default()
            },
            opened: (0..MAX_OPENED_FILES + 10)
                .map(|i| format!("/f{i}"))
                .collect(),
        };
        assert_eq!(req.prepare_spec().warm_files.len(), MAX_OPENED_FILES);
    }
}
