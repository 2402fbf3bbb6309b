//! Pull + convert benchmark: a ~200 MB image of real files (taken from this host's /usr,
//! in three gzip layers, as Docker Hub images are) pushed to a local docker-registry, then
//! pulled and turned into an EROFS image, cold (empty state dir) and warm (all cached).
//!
//! Run: `cargo bench -p skiff-tests --bench pull` (SKIFF_BENCH_MB sets the size,
//! SKIFF_BENCH_COLD_RUNS the number of cold runs, SKIFF_BENCH_UNPACK_DIR forces the unpack
//! folder, e.g. a folder on disk; by default the store picks a tmpfs when the tree fits).
//! Each cold run starts from an empty state dir. `RUST_LOG=control_plane::images::rootfs=info`
//! shows where a build's time goes (unpacked / made / total).
//! Targets (issue 5): cold ≤ 2 s over loopback, warm ≤ 20 ms.

use skiff_tests as common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use common::layers::insecure_client;
use common::{Layer, Registry, OCI_MANIFEST};
use control_plane::images::{ImageStore, Reference};

/// Adds regular files and symlinks under `dir` to `b` until `budget` bytes are used.
fn add_tree(b: &mut tar::Builder<Vec<u8>>, dir: &Path, budget: &mut u64) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if *budget == 0 {
            return Ok(());
        }
        let path = e.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let name = path.strip_prefix("/")?;
        if meta.is_dir() {
            b.append_dir(name, &path)?;
            add_tree(b, &path, budget)?;
        } else if ((meta.is_file() && meta.len() <= *budget) || meta.file_type().is_symlink())
            && b.append_path_with_name(&path, name).is_ok()
        {
            *budget = budget.saturating_sub(meta.len() + 512);
        }
    }
    Ok(())
}

fn layer(dirs: &[&str], mb: u64) -> Result<Layer> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let mut budget = mb << 20;
    for d in dirs {
        add_tree(&mut b, Path::new(d), &mut budget)?;
    }
    Ok(Layer::gzip(b.into_inner()?))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let total_mb: u64 = std::env::var("SKIFF_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let t = Instant::now();
    let layers = vec![
        layer(&["/usr/lib/x86_64-linux-gnu"], total_mb / 2)?,
        layer(&["/usr/bin", "/usr/sbin"], total_mb / 4)?,
        layer(&["/usr/share"], total_mb / 4)?,
    ];
    let raw: usize = layers.iter().map(|l| l.tar.len()).sum();
    let packed: usize = layers.iter().map(|l| l.bytes.len()).sum();
    let reg = Registry::start()?;
    let pushed = reg.push_image(
        "bench/usr",
        "v1",
        OCI_MANIFEST,
        &layers,
        serde_json::json!({"Cmd": ["sh"]}),
    )?;
    drop(layers);
    println!(
        "image: {} layers, {:.1} MB of tar, {:.1} MB gzip, digest {} (set up in {:.1?})",
        pushed.layers.len(),
        raw as f64 / 1e6,
        packed as f64 / 1e6,
        pushed.manifest,
        t.elapsed()
    );
    let r: Reference = format!("{}/bench/usr:v1", reg.addr).parse()?;

    let cold_runs: usize = std::env::var("SKIFF_BENCH_COLD_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    let unpack_dir = std::env::var_os("SKIFF_BENCH_UNPACK_DIR")
        .filter(|s| !s.is_empty())
        .map(std::path::PathBuf::from);
    println!(
        "unpack dir: {}",
        unpack_dir
            .as_ref()
            .map_or("auto (a tmpfs when the tree fits)".into(), |p| p
                .display()
                .to_string())
    );
    let mut cold = Vec::new();
    let mut cold_pull = Vec::new();
    let keep = tempfile::tempdir()?;
    for i in 0..cold_runs {
        let state = tempfile::tempdir()?;
        let dir = if i + 1 == cold_runs {
            keep.path()
        } else {
            state.path()
        };
        let t = Instant::now();
        let mut store = ImageStore::open(dir, None)?;
        if let Some(u) = &unpack_dir {
            store = store.with_unpack_dir(u)?;
        }
        let client = insecure_client(&r.registry);
        let image = store.pull(&client, &r, &|_| {})?;
        let pulled = t.elapsed();
        let rootfs = store.rootfs(&image)?;
        assert!(!rootfs.cached);
        cold.push(t.elapsed());
        cold_pull.push(pulled);
        println!(
            "cold run {i}: pull {pulled:.2?}, pull + convert {:.2?} ({} bytes of EROFS)",
            t.elapsed(),
            fs::metadata(&rootfs.path)?.len()
        );
    }
    let mut warm = Vec::new();
    let client = insecure_client(&r.registry);
    for _ in 0..20 {
        let t = Instant::now();
        let store = ImageStore::open(keep.path(), None)?;
        let image = store.pull(&client, &r, &|_| {})?;
        assert!(store.rootfs(&image)?.cached);
        warm.push(t.elapsed());
    }
    let (c, w) = (median(cold), median(warm));
    println!(
        "cold pull + convert: median {c:.2?} (pull alone {:.2?}); target <= 2 s: {}",
        median(cold_pull),
        if c <= Duration::from_secs(2) {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "warm pull + convert: median {w:.2?}; target <= 20 ms: {}",
        if w <= Duration::from_millis(20) {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}
