//! Boot benchmark: boots the same kernel and initramfs N times with `skiff-vmm` and with
//! QEMU's microvm machine (when qemu-system-x86_64 is installed), alternating, and prints
//! median and p90 of process start → guest init runs and → VMM exit, plus the VMM's own
//! resident memory apart from guest RAM.
//!
//!   cargo bench --bench boot -- [-n N] [--json FILE]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmm::initramfs::{write_skeleton, CpioWriter};

mod common;
use common::{kernel, qemu_available, qemu_microvm};

const MARKER: &str = "SKIFF-TEST-INIT: hello";
const MEM_MIB: u64 = 128;
const DEADLINE: Duration = Duration::from_secs(600);

struct Sample {
    to_init: Duration,
    to_exit: Duration,
    overhead_kib: u64,
}

fn initramfs(dir: &Path) -> PathBuf {
    let init = common::static_guest_program(dir, "test-init");
    let path = dir.join("bench.cpio");
    let mut w = CpioWriter::new(std::fs::File::create(&path).unwrap());
    write_skeleton(&mut w).unwrap();
    w.host_file("init", &init).unwrap();
    w.finish().unwrap();
    path
}

/// RSS of a process without its guest RAM: every mapping counts except the largest
/// anonymous one of at least the guest's size (that is guest memory).
fn rss_without_guest_kib(pid: u32, guest_kib: u64) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut maps: Vec<(u64, u64, bool)> = Vec::new(); // size, rss, anonymous
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
            let anon = f.nth(4).is_none();
            maps.push((0, 0, anon));
        } else if let Some(m) = maps.last_mut() {
            let v: u64 = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
            match first {
                "Size:" => m.0 = v,
                "Rss:" => m.1 = v,
                _ => {}
            }
        }
    }
    let guest = maps
        .iter()
        .enumerate()
        .filter(|(_, m)| m.2 && m.0 >= guest_kib)
        .max_by_key(|(_, m)| m.0)
        .map(|(i, _)| i);
    Some(
        maps.iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != guest)
            .map(|(_, m)| m.1)
            .sum(),
    )
}

fn boot_once(mut cmd: Command) -> Result<Sample, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(MARKER) {
                let _ = tx.send(Instant::now());
            }
        }
    });
    let (to_init, overhead_kib) = match rx.recv_timeout(DEADLINE) {
        Ok(t) => (
            t - start,
            rss_without_guest_kib(pid, MEM_MIB * 1024).unwrap_or(0),
        ),
        Err(_) => {
            let _ = child.kill();
            return Err("no init marker before the deadline".into());
        }
    };
    let status = child.wait().map_err(|e| e.to_string())?;
    let to_exit = start.elapsed();
    if !status.success() {
        return Err(format!("exited with {status}"));
    }
    Ok(Sample {
        to_init,
        to_exit,
        overhead_kib,
    })
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = (p / 100.0 * (v.len() as f64 - 1.0)).round() as usize;
    v[rank.min(v.len() - 1)]
}

struct Summary {
    init_p50: f64,
    init_p90: f64,
    exit_p50: f64,
    exit_p90: f64,
    rss_p50_kib: f64,
}

fn summarize(s: &[Sample]) -> Summary {
    let init: Vec<f64> = s.iter().map(|x| x.to_init.as_secs_f64() * 1e3).collect();
    let exit: Vec<f64> = s.iter().map(|x| x.to_exit.as_secs_f64() * 1e3).collect();
    let rss: Vec<f64> = s.iter().map(|x| x.overhead_kib as f64).collect();
    Summary {
        init_p50: percentile(init.clone(), 50.0),
        init_p90: percentile(init, 90.0),
        exit_p50: percentile(exit.clone(), 50.0),
        exit_p90: percentile(exit, 90.0),
        rss_p50_kib: percentile(rss, 50.0),
    }
}

fn host_facts() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    format!(
        "{cpu}, {} cores, host kernel {}, KVM: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel.trim(),
        if pvm {
            "PVM (software-nested)"
        } else {
            "hardware"
        }
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut n = 5usize;
    let mut json: Option<PathBuf> = None;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "-n" => {
                n = args[i + 1].parse().expect("-n takes a number");
                i += 1;
            }
            "--json" => {
                json = Some(args[i + 1].clone().into());
                i += 1;
            }
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("boot-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = kernel();
    let initrd = initramfs(&dir);
    let qemu = qemu_available();

    println!("boot benchmark: {n} boots each, 1 vCPU, {MEM_MIB} MiB, same kernel + initramfs");
    println!("host: {}", host_facts());
    println!("kernel: {}", kernel.display());
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..n {
        let mut c = Command::new(env!("CARGO_BIN_EXE_skiff-vmm"));
        c.arg("--kernel").arg(&kernel).arg("--initrd").arg(&initrd);
        c.args([
            "--vcpus",
            "1",
            "--memory-mib",
            &MEM_MIB.to_string(),
            "--cmdline",
            "quiet",
        ]);
        match boot_once(c) {
            Ok(s) => ours.push(s),
            Err(e) => eprintln!("skiff-vmm round {round}: {e}"),
        }
        if qemu {
            let c = qemu_microvm(&kernel, &initrd, MEM_MIB);
            match boot_once(c) {
                Ok(s) => theirs.push(s),
                Err(e) => eprintln!("qemu round {round}: {e}"),
            }
        }
    }
    assert!(!ours.is_empty(), "no skiff-vmm boot succeeded");
    let a = summarize(&ours);
    println!();
    println!(
        "{:<36}{:>14}{:>16}{:>10}",
        "", "skiff-vmm", "qemu microvm", "ratio"
    );
    let b = (!theirs.is_empty()).then(|| summarize(&theirs));
    let row = |name: &str, x: f64, y: Option<f64>, unit: &str| {
        let (ys, r) = match y {
            Some(y) => (format!("{y:.0} {unit}"), format!("{:.2}x", y / x)),
            None => ("n/a".into(), "".into()),
        };
        println!("{name:<36}{:>14}{ys:>16}{r:>10}", format!("{x:.0} {unit}"));
    };
    row(
        "start -> init runs   p50",
        a.init_p50,
        b.as_ref().map(|b| b.init_p50),
        "ms",
    );
    row(
        "start -> init runs   p90",
        a.init_p90,
        b.as_ref().map(|b| b.init_p90),
        "ms",
    );
    row(
        "start -> VMM exit    p50",
        a.exit_p50,
        b.as_ref().map(|b| b.exit_p50),
        "ms",
    );
    row(
        "start -> VMM exit    p90",
        a.exit_p90,
        b.as_ref().map(|b| b.exit_p90),
        "ms",
    );
    row(
        "VMM RSS w/o guest RAM p50",
        a.rss_p50_kib,
        b.as_ref().map(|b| b.rss_p50_kib),
        "KiB",
    );
    println!("(ratio = qemu / skiff-vmm; above 1 means skiff-vmm is faster or smaller)");
    if !qemu {
        println!(
            "qemu-system-x86_64 not found: install Debian's qemu-system-x86 for the comparison"
        );
    }
    if let Some(path) = json {
        let j = |s: &Summary| {
            serde_json::json!({
                "start_to_init_ms": {"p50": s.init_p50, "p90": s.init_p90},
                "start_to_exit_ms": {"p50": s.exit_p50, "p90": s.exit_p90},
                "vmm_rss_without_guest_kib": {"p50": s.rss_p50_kib},
            })
        };
        let doc = serde_json::json!({
            "boots": n, "host": host_facts(), "skiff_vmm": j(&a),
            "qemu_microvm": b.as_ref().map(j),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        println!("wrote {}", path.display());
    }
}
