//! Snapshot benchmark: boots the snapshot test guest once (1 vCPU, 128 MiB, a disk and
//! vsock), snapshots it over the control socket, then restores it N times, each in a new
//! `skiff-vmm` process, one after the other. For each restore it measures
//!   - spawn → the VMM's "vCPUs resumed" line on stderr (restore-to-running, as a caller
//!     sees it), and the VMM's own figure from its start;
//!   - spawn → the guest dialled the host again over vsock (after the transport reset);
//!   - the restored VMM's memory once the guest idles: peak RSS (VmHWM) and the
//!     private / shared split from /proc/PID/smaps_rollup (shared = snapshot pages in the
//!     page cache, which every VM restored from the file shares).
//!
//! Then it restores K VMs at once (default 4) and reports each one's PSS, which divides the
//! shared snapshot pages among them.
//!
//!   cargo bench --bench snapshot -- [-n N] [--concurrent K] [--json FILE] [--reuse]
//!
//! `--reuse` restores the snapshot left by an earlier run instead of booting again.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmm::initramfs::{write_skeleton, CpioWriter};

mod common;
use common::kernel;

const PORT: u32 = 5000;

fn guest_initramfs(dir: &Path) -> PathBuf {
    let init = common::static_guest_program(dir, "snapshot-test");
    let path = dir.join("snapshot-bench.cpio");
    let mut w = CpioWriter::new(std::fs::File::create(&path).unwrap());
    write_skeleton(&mut w).unwrap();
    w.host_file("init", &init).unwrap();
    w.finish().unwrap();
    path
}

fn listen(uds: &Path) -> UnixListener {
    let p = PathBuf::from(format!("{}_{PORT}", uds.display()));
    let _ = std::fs::remove_file(&p);
    UnixListener::bind(p).unwrap()
}

/// Accepts the guest's connection (in a thread, so a dead VM cannot hang the bench).
fn accept_hello(l: UnixListener, within: Duration) -> Result<(UnixStream, Instant), String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send((s, Instant::now(), line));
        }
    });
    let (s, t, line) = rx
        .recv_timeout(within)
        .map_err(|_| "guest did not dial the host".to_owned())?;
    if !line.starts_with("HELLO ") {
        return Err(format!("unexpected first line {line:?}"));
    }
    Ok((s, t))
}

fn api(sock: &Path, request: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).expect("control socket");
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

fn kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Sample {
    resumed_ms: f64,
    own_ms: f64,
    guest_back_ms: f64,
    hwm_kib: u64,
    private_kib: u64,
    shared_kib: u64,
    pss_kib: u64,
    anon_kib: u64,
}

fn spawn_vmm(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_skiff-vmm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn skiff-vmm")
}

/// Restores `k` VMs at once, waits until every guest dialled back and idles, and returns
/// each VMM's (PSS, anonymous) memory in KiB: PSS splits the snapshot's shared pages among
/// the VMs that map them, so it is the host memory each idle restored task costs.
fn restore_concurrently(
    dir: &Path,
    k: usize,
    state: &Path,
    mem: &Path,
    disk: &Path,
) -> Vec<(u64, u64)> {
    let mut running = Vec::new();
    for i in 0..k {
        let uds = dir.join(format!("c{i}.sock"));
        let l = listen(&uds);
        let args = restore_args(dir, &format!("c{i}"), state, mem, disk, &uds);
        let child = Command::new(env!("CARGO_BIN_EXE_skiff-vmm"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn skiff-vmm");
        running.push((child, l));
    }
    let mut conns = Vec::new();
    let mut children = Vec::new();
    for (child, l) in running {
        match accept_hello(l, Duration::from_secs(120)) {
            Ok((c, _)) => conns.push(c),
            Err(e) => eprintln!("concurrent restore: {e}"),
        }
        children.push(child);
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut out = Vec::new();
    for (i, child) in children.iter_mut().enumerate() {
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", child.id()))
            .unwrap_or_default();
        out.push((kib(&rollup, "Pss:"), kib(&rollup, "Anonymous:")));
        let _ = api(&dir.join(format!("c{i}.api")), r#"{"action":"shutdown"}"#);
        let _ = child.wait();
    }
    out
}

fn restore_args(
    dir: &Path,
    name: &str,
    state: &Path,
    mem: &Path,
    disk: &Path,
    uds: &Path,
) -> Vec<String> {
    vec![
        "--restore".into(),
        state.display().to_string(),
        "--memory-file".into(),
        mem.display().to_string(),
        "--disk".into(),
        format!("{},ro", disk.display()),
        "--vsock".into(),
        format!("cid=3,uds={}", uds.display()),
        "--api-sock".into(),
        dir.join(format!("{name}.api")).display().to_string(),
        "--serial-out".into(),
        dir.join(format!("{name}.console")).display().to_string(),
        "--timings".into(),
    ]
}

fn restore_once(
    dir: &Path,
    i: usize,
    state: &Path,
    mem: &Path,
    disk: &Path,
) -> Result<Sample, String> {
    let uds = dir.join(format!("r{i}.sock"));
    let api_sock = dir.join(format!("r{i}.api"));
    let l = listen(&uds);
    let args = restore_args(dir, &format!("r{i}"), state, mem, disk, &uds);
    let start = Instant::now();
    let mut child = spawn_vmm(&args);
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("vCPUs resumed ").nth(1) {
                let own: f64 = rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                let _ = tx.send((Instant::now(), own));
            } else {
                eprintln!("restore {i}: {line}");
            }
        }
    });
    let (resumed, own_ms) = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(v) => v,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err("no 'vCPUs resumed' line".into());
        }
    };
    let (_conn, back) = match accept_hello(l, Duration::from_secs(120)) {
        Ok(v) => v,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    // Let the guest go idle, then read the VMM's memory.
    std::thread::sleep(Duration::from_millis(500));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let sample = Sample {
        resumed_ms: (resumed - start).as_secs_f64() * 1e3,
        own_ms,
        guest_back_ms: (back - start).as_secs_f64() * 1e3,
        hwm_kib: kib(&status, "VmHWM:"),
        private_kib: kib(&rollup, "Private_Clean:") + kib(&rollup, "Private_Dirty:"),
        shared_kib: kib(&rollup, "Shared_Clean:") + kib(&rollup, "Shared_Dirty:"),
        pss_kib: kib(&rollup, "Pss:"),
        anon_kib: kib(&rollup, "Anonymous:"),
    };
    let _ = api(&api_sock, r#"{"action":"shutdown"}"#);
    let _ = child.wait();
    Ok(sample)
}

/// Boots the guest, waits until it dials the host, snapshots it and ends it.
fn boot_and_snapshot(dir: &Path, state: &Path, mem: &Path, disk: &Path) {
    let kernel = kernel();
    let initrd = guest_initramfs(dir);
    let mut data = b"SKIFF-BENCH-DISK\n".to_vec();
    data.resize(1 << 20, 0);
    std::fs::write(disk, data).unwrap();

    let uds = dir.join("boot.sock");
    let api_sock = dir.join("boot.api");
    let l = listen(&uds);
    let boot_args: Vec<String> = vec![
        "--kernel".into(),
        kernel.display().to_string(),
        "--initrd".into(),
        initrd.display().to_string(),
        "--disk".into(),
        format!("{},ro", disk.display()),
        "--vsock".into(),
        format!("cid=3,uds={}", uds.display()),
        "--api-sock".into(),
        api_sock.display().to_string(),
        "--serial-out".into(),
        dir.join("boot.console").display().to_string(),
        "--cmdline".into(),
        "quiet".into(),
    ];
    let t = Instant::now();
    let mut boot = spawn_vmm(&boot_args);
    let (_c, _) = accept_hello(l, Duration::from_secs(600)).expect("booted guest dials the host");
    println!("boot → guest ready: {:.1} s", t.elapsed().as_secs_f64());
    let req = serde_json::json!({"action": "snapshot", "state_path": state, "memory_path": mem});
    let snap = api(&api_sock, &req.to_string());
    assert_eq!(snap["ok"], true, "{snap}");
    let _ = api(&api_sock, r#"{"action":"shutdown"}"#);
    let _ = boot.wait();
    println!(
        "snapshot: {:.0} ms; state file {} bytes; memory file {} MiB with {:.1} MiB of data (rest are holes)",
        snap["millis"].as_f64().unwrap_or(0.0),
        snap["state_bytes"],
        snap["memory_file_bytes"].as_u64().unwrap_or(0) >> 20,
        snap["memory_data_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
    );
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = (p / 100.0 * (v.len() as f64 - 1.0)).round() as usize;
    v[rank.min(v.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut n = 10usize;
    let mut json: Option<PathBuf> = None;
    let mut reuse = false;
    let mut concurrent = 4usize;
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
            "--reuse" => reuse = true,
            "--concurrent" => {
                concurrent = args[i + 1].parse().expect("--concurrent takes a number");
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    println!("snapshot benchmark: 1 boot, then {n} restores in new processes (1 vCPU, 128 MiB)");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("snapshot-bench");
    let state = dir.join("vm.state");
    let mem = dir.join("vm.mem");
    let disk = dir.join("disk.img");
    if reuse && state.exists() && mem.exists() && disk.exists() {
        println!("reusing the snapshot in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        boot_and_snapshot(&dir, &state, &mem, &disk);
    }
    let mut samples = Vec::new();
    for i in 0..n {
        match restore_once(&dir, i, &state, &mem, &disk) {
            Ok(s) => samples.push(s),
            Err(e) => eprintln!("restore {i}: {e}"),
        }
    }
    assert!(!samples.is_empty(), "no restore succeeded");
    let col = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<f64>>();
    let rows: Vec<(&str, Vec<f64>, &str)> = vec![
        ("spawn → vCPUs resumed", col(&|s| s.resumed_ms), "ms"),
        ("  (VMM's own: main() → resumed)", col(&|s| s.own_ms), "ms"),
        (
            "spawn → guest dialled again",
            col(&|s| s.guest_back_ms),
            "ms",
        ),
        (
            "peak RSS (VmHWM)",
            col(&|s| s.hwm_kib as f64 / 1024.0),
            "MiB",
        ),
        (
            "private (not shared) memory",
            col(&|s| s.private_kib as f64 / 1024.0),
            "MiB",
        ),
        (
            "shared (page cache) memory",
            col(&|s| s.shared_kib as f64 / 1024.0),
            "MiB",
        ),
        ("PSS", col(&|s| s.pss_kib as f64 / 1024.0), "MiB"),
        (
            "anonymous (copied-on-write + heap)",
            col(&|s| s.anon_kib as f64 / 1024.0),
            "MiB",
        ),
    ];
    println!(
        "\n{} restores           {:>10} {:>10}",
        samples.len(),
        "median",
        "p90"
    );
    let mut doc = serde_json::Map::new();
    for (name, v, unit) in &rows {
        let (p50, p90) = (percentile(v.clone(), 50.0), percentile(v.clone(), 90.0));
        println!("{name:<32} {p50:>7.2} {unit:<3} {p90:>7.2} {unit}");
        doc.insert(
            format!("{name} ({unit})"),
            serde_json::json!({"p50": p50, "p90": p90}),
        );
    }
    if concurrent > 0 {
        let m = restore_concurrently(&dir, concurrent, &state, &mem, &disk);
        let pss: Vec<f64> = m.iter().map(|x| x.0 as f64 / 1024.0).collect();
        let anon: Vec<f64> = m.iter().map(|x| x.1 as f64 / 1024.0).collect();
        let (p, a) = (percentile(pss, 50.0), percentile(anon, 50.0));
        println!(
            "{concurrent} restored VMs running at once: PSS per VMM {p:.2} MiB, anonymous {a:.2} MiB (median)"
        );
        doc.insert(
            format!("{concurrent} at once: PSS per VMM (MiB)"),
            serde_json::json!({"p50": p}),
        );
    }
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        println!("wrote {}", path.display());
    }
}
