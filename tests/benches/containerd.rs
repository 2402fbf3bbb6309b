//! `ctr run` of `true` with `io.containerd.skiff.v2` against runc, on one containerd (the
//! tests' harness: Debian's containerd, its own root and sockets), and what a shim costs in
//! memory per container.
//!
//! Run: `cargo bench -p skiff-tests --bench containerd` after `scripts/setup.sh` (with
//! `target/skiff.env` sourced, as the tests have it). SKIFF_BENCH_RUNS sets the runs per
//! runtime (default 5). The Skiff runs restore the VM shape's snapshot, which a first,
//! untimed run makes (its shim builds it and waits for the build before it exits).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use skiff_tests::containerd::{processes_with, Containerd, BUSYBOX_IMAGE, RUNTIME};
use skiff_tests::wait_until;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run_true(ctrd: &Containerd, runtime: &str, id: &str) -> Result<f64> {
    let started = Instant::now();
    let o = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        runtime,
        BUSYBOX_IMAGE,
        id,
        "true",
    ])?;
    let took = started.elapsed().as_secs_f64();
    if !o.status.success() {
        bail!("{runtime}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(took)
}

/// Resident memory of a process (VmRSS), KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let runs: usize = std::env::var("SKIFF_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let ctrd = Containerd::start("bench")?;
    ctrd.import_busybox()?;
    // The first Skiff run of the shape boots and leaves a snapshot; runc's first run warms
    // its own caches.
    run_true(&ctrd, RUNTIME, "warm-skiff")?;
    run_true(&ctrd, "io.containerd.runc.v2", "warm-runc")?;
    let ours = |c: &String| c.contains(&ctrd.socket.display().to_string());
    wait_until(
        "the first shim's snapshot build",
        Duration::from_secs(600),
        || {
            (!processes_with("containerd-shim-skiff-v2")
                .iter()
                .any(|(_, c)| ours(c)))
            .then_some(())
        },
    )?;
    let (mut skiff, mut runc) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // Alternated, so that a slow period of the host hits both.
        skiff.push(run_true(&ctrd, RUNTIME, &format!("skiff-{i}"))?);
        runc.push(run_true(
            &ctrd,
            "io.containerd.runc.v2",
            &format!("runc-{i}"),
        )?);
    }
    let (s, r) = (median(skiff.clone()), median(runc.clone()));
    println!("ctr run --rm IMG true, {runs} runs each (median, range):");
    println!(
        "  io.containerd.skiff.v2: {:.3} s ({:.3}–{:.3})",
        s,
        skiff.iter().copied().fold(f64::MAX, f64::min),
        skiff.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "  io.containerd.runc.v2:  {:.3} s ({:.3}–{:.3})",
        r,
        runc.iter().copied().fold(f64::MAX, f64::min),
        runc.iter().copied().fold(0.0, f64::max)
    );
    println!("  ratio skiff/runc: {:.1}×", s / r);

    // A running container's shim: its resident memory (the VMM's is the VM's, apart).
    ctrd.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        BUSYBOX_IMAGE,
        "mem",
        "sleep",
        "300",
    ])?;
    std::thread::sleep(Duration::from_secs(3));
    let shims: Vec<_> = processes_with("containerd-shim-skiff-v2")
        .into_iter()
        .filter(|(_, c)| ours(c))
        .collect();
    let runc_ctr = ctrd.ctr(&["run", "-d", BUSYBOX_IMAGE, "mem-runc", "sleep", "300"])?;
    if !runc_ctr.status.success() {
        bail!("runc: {}", String::from_utf8_lossy(&runc_ctr.stderr));
    }
    std::thread::sleep(Duration::from_secs(1));
    let runc_shims: Vec<_> = processes_with("containerd-shim-runc-v2")
        .into_iter()
        .filter(|(_, c)| ours(c))
        .collect();
    for (pid, _) in &shims {
        println!(
            "  containerd-shim-skiff-v2 (pid {pid}) resident: {} KiB",
            rss_kib(*pid)
        );
    }
    for (pid, _) in &runc_shims {
        println!(
            "  containerd-shim-runc-v2 (pid {pid}) resident: {} KiB",
            rss_kib(*pid)
        );
    }
    Ok(())
}
