//! The server's snapshots, one per VM shape (vCPUs × MiB), under
//! `<state>/snapshots/<fingerprint>-<vcpus>x<mib>/`. The fingerprint hashes the VMM, kernel
//! and agent initramfs, so a change to any of them makes new snapshots (old ones are
//! deleted at start). A shape's snapshot is built in the background the first time a task
//! of that shape runs; until it is ready such tasks boot.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::launcher::{build_snapshot, LaunchConfig, Snapshot};

#[derive(Debug, Clone)]
enum Shape {
    Building,
    Ready(Snapshot),
    /// Not retried until the server restarts (the reason is logged).
    Failed,
}

pub struct Snapshots {
    root: PathBuf,
    fingerprint: String,
    enabled: bool,
    shapes: Mutex<HashMap<(u32, u64), Shape>>,
}

/// sha256 over the files' bytes, in order.
fn fingerprint(files: &[&Path]) -> std::io::Result<String> {
    let mut h = Sha256::new();
    for f in files {
        let mut file = std::fs::File::open(f)?;
        std::io::copy(&mut file, &mut h)?;
    }
    Ok(hex::encode(&h.finalize()[..8]))
}

impl Snapshots {
    pub fn open(root: &Path, enabled: bool, vmm: &Path, kernel: &Path, initrd: &Path) -> std::io::Result<Self> {
        let fingerprint = if enabled {
            fingerprint(&[vmm, kernel, initrd])?
        } else {
            String::new()
        };
        std::fs::create_dir_all(root)?;
        // Snapshots of another VMM, kernel or agent are of no use any more.
        for e in std::fs::read_dir(root)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !enabled || !name.starts_with(&format!("{fingerprint}-")) || name.ends_with(".building") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(Self {
            root: root.to_owned(),
            fingerprint,
            enabled,
            shapes: Mutex::new(HashMap::new()),
        })
    }

    fn dir(&self, vcpus: u32, mib: u64) -> PathBuf {
        self.root.join(format!("{}-{vcpus}x{mib}", self.fingerprint))
    }

    fn shapes(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, u64), Shape>> {
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
        let key = (base.vcpus, base.memory_mib);
        let mut shapes = self.shapes();
        match shapes.get(&key) {
            Some(Shape::Ready(s)) => return Some(s.clone()),
            Some(Shape::Building | Shape::Failed) => return None,
            None => {}
        }
        if let Some(s) = Snapshot::in_dir(&self.dir(key.0, key.1)) {
            shapes.insert(key, Shape::Ready(s.clone()));
            return Some(s);
        }
        shapes.insert(key, Shape::Building);
        drop(shapes);
        let (me, cfg) = (self.clone(), base.clone());
        std::thread::spawn(move || {
            let dir = me.dir(key.0, key.1);
            let shape = match build_snapshot(&cfg, &dir) {
                Ok(s) => {
                    tracing::info!("snapshot for {}x{} MiB ready in {}", key.0, key.1, dir.display());
                    Shape::Ready(s)
                }
                Err(e) => {
                    tracing::warn!("cannot build a snapshot for {}x{} MiB: {e}; tasks of that shape boot", key.0, key.1);
                    Shape::Failed
                }
            };
            me.shapes().insert(key, shape);
        });
        None
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
