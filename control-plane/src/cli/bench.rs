//! `skiff bench cold-start`: submits tasks over HTTP and measures, per start mode (full
//! boot, restore of the shape's base snapshot, restore of the image's warm snapshot) and
//! per concurrency level, submit → VM started, → agent ready, → process exec, → task
//! STOPPED, and tasks per second; writes the samples as JSON and a CDF chart as SVG.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use super::remote::Api;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Boot,
    /// The shape's base snapshot (the server makes no warm snapshots).
    Snapshot,
    /// The image's warm snapshot.
    Warm,
    /// Boot and snapshot.
    Both,
    /// Boot, snapshot and warm.
    All,
}

/// How the measured tasks start.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Start {
    Boot,
    Snapshot,
    Warm,
}

impl Start {
    fn name(self) -> &'static str {
        match self {
            Start::Boot => "boot",
            Start::Snapshot => "snapshot",
            Start::Warm => "warm",
        }
    }
}

#[derive(Args)]
pub struct ColdStartArgs {
    /// Tasks per mode.
    #[arg(short = 'n', default_value_t = 10)]
    n: usize,
    /// Tasks in flight at once; a list (`1,2,4`) runs each mode at each level in turn.
    #[arg(short = 'c', default_value = "1", value_delimiter = ',')]
    concurrency: Vec<usize>,
    #[arg(long, value_enum, default_value = "all")]
    mode: Mode,
    #[arg(long, default_value = "local/busybox")]
    image: String,
    /// vCPUs and MiB of each task.
    #[arg(long, default_value_t = 1)]
    cpu: u32,
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// The tasks' networkMode (none, default or a named network); without it the server's
    /// default (`default` for the servers this benchmark starts).
    #[arg(long)]
    network: Option<String>,
    /// Use this running server (its own start mode) instead of starting one per mode.
    #[arg(long)]
    server: Option<String>,
    /// Raw samples and percentiles.
    #[arg(long, default_value = "cold-start.json")]
    json: PathBuf,
    /// CDF chart of submit → exec per mode.
    #[arg(long, default_value = "cold-start.svg")]
    svg: PathBuf,
    /// Run `python3 -c 'import json, hashlib, sqlite3'` in a Debian image with CPython that
    /// the benchmark makes with debootstrap (once, then cached), instead of busybox `true`.
    #[arg(long, conflicts_with_all = ["image", "server"])]
    python: bool,
    /// The Debian suite of the --python image.
    #[arg(long, default_value = "bookworm")]
    python_suite: String,
    /// The Debian mirror debootstrap uses for the --python image.
    #[arg(long, default_value = "http://deb.debian.org/debian")]
    mirror: String,
    /// Where the --python image is kept between runs.
    #[arg(long, default_value = super::bench_python::DEFAULT_CACHE)]
    python_cache: PathBuf,
}

/// The phases measured, as (name in the output, task phase field).
const PHASES: [(&str, &str); 5] = [
    ("submit_to_vm_started_ms", "vmStartedMs"),
    ("submit_to_agent_ready_ms", "agentReadyMs"),
    ("submit_to_exec_ms", "processStartedMs"),
    ("submit_to_exit_ms", "processExitedMs"),
    ("submit_to_stopped_ms", "stoppedMs"),
];

/// Durations measured, as (name in the output, field of the task's `networkTimings`).
const NETWORK: [(&str, &str); 2] = [
    ("network_attach_ms", "attachMs"),
    ("network_detach_ms", "detachMs"),
];

/// A `skiff serve` this benchmark started; stopped when dropped.
pub(super) struct OwnServer {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl OwnServer {
    pub fn state_dir(&self) -> &Path {
        self._dir.path()
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Starts a server with room for `concurrency` tasks of `cpu` × `memory`: booting only
/// (`snapshots` false), or with snapshots (in `snapshot_dir` when given, so that servers of
/// one benchmark share them) and warm ones when `warm`.
pub(super) fn start_server(
    snapshots: bool,
    warm: bool,
    snapshot_dir: Option<&Path>,
    cpu: u32,
    memory: u64,
    concurrency: usize,
) -> anyhow::Result<OwnServer> {
    let dir = tempfile::tempdir().context("cannot make a state dir")?;
    let log = dir.path().join("serve.log");
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("--state-dir")
        .arg(dir.path())
        .arg("serve")
        // Room for `concurrency` tasks (plus the snapshot build) whatever the host has.
        .args(["--cpus", &(cpu as usize * concurrency).to_string()])
        .args(["--memory-mib", &(memory as usize * concurrency).to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    if !snapshots {
        cmd.arg("--no-snapshots");
    } else {
        if let Some(d) = snapshot_dir {
            cmd.arg("--snapshot-dir").arg(d);
        }
        if !warm {
            cmd.args(["--warm-snapshot-budget", "0"]);
        }
    }
    let mut child = cmd.spawn().context("cannot start skiff serve")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(url) = text
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        {
            return Ok(OwnServer {
                child,
                url: url.to_owned(),
                _dir: dir,
            });
        }
        if let Ok(Some(st)) = child.try_wait() {
            bail!("skiff serve exited ({st}): {}", text.trim());
        }
        if Instant::now() > deadline {
            bail!("skiff serve did not start: {}", text.trim());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What each task runs: an image and a command.
struct Workload {
    image: String,
    command: Vec<String>,
}

fn task_body(a: &ColdStartArgs, w: &Workload) -> Value {
    let mut body =
        json!({"image": w.image, "command": w.command, "cpu": a.cpu, "memoryMiB": a.memory});
    if let Some(n) = &a.network {
        body["networkMode"] = json!(n);
    }
    body
}

/// Submits one task, follows it to the end, returns its record.
fn one_task(api: &Api, body: &Value) -> anyhow::Result<Value> {
    let t = api.post("/v1/tasks", body)?;
    let id = t["id"]
        .as_str()
        .ok_or_else(|| anyhow!("no task id in {t}"))?
        .to_owned();
    api.wait_logs_end(&id)?;
    let t = api.get(&format!("/v1/tasks/{id}"))?;
    if t["state"] != "STOPPED" {
        bail!("task {id} is {} after its logs ended", t["state"]);
    }
    if t["exitCode"] != 0 {
        bail!(
            "task {id} failed: {}: {}",
            t["stopCode"],
            t["stoppedReason"]
        );
    }
    Ok(t)
}

/// Waits until the server reports a snapshot ready (after a first task triggered it).
pub(super) fn wait_for_snapshot(api: &Api, body: &Value) -> anyhow::Result<()> {
    eprintln!("waiting for this shape's snapshot (a first task boots while the server makes it, unless it is there)…");
    one_task(api, body)?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let m = api.text("/metrics")?;
        if m.lines()
            .any(|l| l.starts_with("skiff_snapshots_ready ") && !l.ends_with(" 0"))
        {
            // A task that restores is the proof.
            let t = one_task(api, body)?;
            if t["startMode"] == "snapshot" {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("no snapshot became ready within 30 minutes");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// After [`wait_for_snapshot`]: waits until a task restores its image's warm snapshot.
fn wait_for_warm_snapshot(api: &Api, body: &Value) -> anyhow::Result<()> {
    eprintln!("warm mode: the server snapshots a VM with this image's root ready…");
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let m = api.text("/metrics")?;
        if m.lines()
            .any(|l| l.starts_with("skiff_warm_snapshots ") && !l.ends_with(" 0"))
        {
            let t = one_task(api, body)?;
            if started_as(&t) == Start::Warm {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("no warm snapshot became ready within 30 minutes");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// How a finished task started, from its start mode and events.
fn started_as(t: &Value) -> Start {
    let warm = t["events"].as_array().into_iter().flatten().any(|e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("warm snapshot"))
    });
    match (t["startMode"].as_str(), warm) {
        (Some("snapshot"), true) => Start::Warm,
        (Some("snapshot"), false) => Start::Snapshot,
        _ => Start::Boot,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `a.n` tasks, `concurrency` at a time, in a server ready for `start`.
fn run_mode(
    api: &Api,
    a: &ColdStartArgs,
    body: &Value,
    start: Start,
    concurrency: usize,
) -> anyhow::Result<Value> {
    eprintln!("{}: {} tasks, {concurrency} at a time…", start.name(), a.n,);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t0 = Instant::now();
    let results: Vec<anyhow::Result<Value>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < a.n {
                        out.push(one_task(api, body));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let wall = t0.elapsed().as_secs_f64();
    let tasks: Vec<Value> = results.into_iter().collect::<anyhow::Result<_>>()?;
    let mismatched = tasks.iter().filter(|t| started_as(t) != start).count();
    let mut samples = Vec::new();
    for t in &tasks {
        let p = &t["phases"];
        let t0 = p["acceptedMs"].as_u64().unwrap_or(0);
        let mut s = json!({"id": t["id"], "startedAs": started_as(t).name()});
        for (name, field) in PHASES {
            s[name] = json!(p[field].as_u64().map(|v| v.saturating_sub(t0)));
        }
        for (name, field) in NETWORK {
            s[name] = json!(t["networkTimings"][field].as_u64());
        }
        samples.push(s);
    }
    let mut out = json!({
        "n": a.n,
        "concurrency": concurrency,
        "wall_seconds": wall,
        "tasks_per_second": a.n as f64 / wall,
        "tasks_not_in_this_mode": mismatched,
    });
    for name in PHASES.iter().chain(&NETWORK).map(|(n, _)| *n) {
        let mut v: Vec<f64> = samples.iter().filter_map(|s| s[name].as_f64()).collect();
        if v.is_empty() {
            // No network (networkMode none): no such figures.
            continue;
        }
        v.sort_by(f64::total_cmp);
        out[name] = json!({
            "p50": percentile(&v, 50.0),
            "p90": percentile(&v, 90.0),
            "p99": percentile(&v, 99.0),
            "max": v.last().copied().unwrap_or(f64::NAN),
        });
    }
    out["samples"] = Value::Array(samples);
    Ok(out)
}

pub(super) fn host_facts() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": kernel.trim(),
        "kvm": if Path::new("/sys/module/kvm_pvm").exists() { "PVM (software nested)" } else { "hardware KVM" },
    })
}

pub fn cold_start(a: ColdStartArgs) -> anyhow::Result<i32> {
    if a.n == 0 || a.concurrency.is_empty() || a.concurrency.contains(&0) {
        bail!("-n and every -c level must be at least 1");
    }
    let host = host_facts();
    let starts: Vec<Start> = match a.mode {
        Mode::Boot => vec![Start::Boot],
        Mode::Snapshot => vec![Start::Snapshot],
        Mode::Warm => vec![Start::Warm],
        Mode::Both => vec![Start::Boot, Start::Snapshot],
        Mode::All => vec![Start::Boot, Start::Snapshot, Start::Warm],
    };
    let most = a.concurrency.iter().copied().max().unwrap_or(1);
    let python = if a.python {
        Some(super::bench_python::ensure(
            &a.python_cache,
            &a.python_suite,
            &a.mirror,
        )?)
    } else {
        None
    };
    let workload = match &python {
        Some(p) => Workload {
            image: p.reference.clone(),
            command: super::bench_python::COMMAND.map(String::from).to_vec(),
        },
        None => Workload {
            image: a.image.clone(),
            command: vec!["true".into()],
        },
    };
    // The servers of the snapshot modes share their snapshots: the warm mode's server
    // finds the base snapshot the snapshot mode's made.
    let shared = tempfile::tempdir().context("cannot make a snapshot dir")?;
    let mut report = json!({"host": host, "image": workload.image, "command": workload.command,
        "cpu": a.cpu, "memoryMiB": a.memory,
        "networkMode": a.network.as_deref().unwrap_or("server default"), "modes": {}});
    for start in starts {
        let (own, api) = match &a.server {
            Some(url) => (
                None,
                Api::new(Some(url.clone()), None, std::path::Path::new("/"))?,
            ),
            None => {
                let s = start_server(
                    start != Start::Boot,
                    start == Start::Warm,
                    Some(shared.path()),
                    a.cpu,
                    a.memory,
                    most,
                )?;
                if let Some(p) = &python {
                    super::bench_python::import_into(p, s.state_dir())?;
                }
                let api = Api::new(Some(s.url.clone()), None, std::path::Path::new("/"))?;
                (Some(s), api)
            }
        };
        let body = task_body(&a, &workload);
        if start != Start::Boot {
            wait_for_snapshot(&api, &body)?;
        } else if python.is_some() {
            // The imported image's root filesystem is made on its first use: not timed.
            eprintln!("boot mode: a first task makes the image's root filesystem…");
            one_task(&api, &body)?;
        }
        if start == Start::Warm {
            wait_for_warm_snapshot(&api, &body)?;
        }
        for &c in &a.concurrency {
            let key = mode_key(start, c, a.concurrency.len());
            report["modes"][key] = run_mode(&api, &a, &body, start, c)?;
        }
        drop(own);
    }
    print_report(&report, a.concurrency[0], a.concurrency.len());
    std::fs::write(&a.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", a.json.display()))?;
    std::fs::write(&a.svg, super::bench_chart::cdf_svg(&report))
        .with_context(|| format!("cannot write {}", a.svg.display()))?;
    eprintln!("samples: {}; chart: {}", a.json.display(), a.svg.display());
    Ok(0)
}

/// A mode's key in the report: its name, and its concurrency when several are measured.
fn mode_key(start: Start, concurrency: usize, levels: usize) -> String {
    if levels > 1 {
        format!("{} c={concurrency}", start.name())
    } else {
        start.name().to_owned()
    }
}

fn print_report(r: &Value, first_level: usize, levels: usize) {
    let h = &r["host"];
    crate::outln!(
        "host: {} ({} cores), kernel {}, {}",
        h["cpu"].as_str().unwrap_or(""),
        h["cores"],
        h["kernel"].as_str().unwrap_or(""),
        h["kvm"].as_str().unwrap_or("")
    );
    crate::outln!(
        "{:<12} {:<26} {:>10} {:>10} {:>10} {:>10}",
        "mode",
        "phase (ms)",
        "p50",
        "p90",
        "p99",
        "max"
    );
    let modes = r["modes"].as_object().cloned().unwrap_or_default();
    for (mode, m) in &modes {
        for name in PHASES.iter().chain(&NETWORK).map(|(n, _)| *n) {
            let p = &m[name];
            if p.is_null() {
                continue;
            }
            let f = |k: &str| p[k].as_f64().map_or("-".into(), |v| format!("{v:.0}"));
            crate::outln!(
                "{:<12} {:<26} {:>10} {:>10} {:>10} {:>10}",
                mode,
                name.trim_end_matches("_ms"),
                f("p50"),
                f("p90"),
                f("p99"),
                f("max")
            );
        }
        crate::outln!(
            "{:<12} {:.2} tasks/s ({} tasks, concurrency {})",
            mode,
            m["tasks_per_second"].as_f64().unwrap_or(0.0),
            m["n"],
            m["concurrency"]
        );
    }
    let p50 = |start: Start, phase: &str| {
        modes
            .get(&mode_key(start, first_level, levels))
            .and_then(|m| m[phase]["p50"].as_f64())
    };
    for (phase, what) in [("submit_to_exec_ms", "exec"), ("submit_to_exit_ms", "exit")] {
        let Some(b) = p50(Start::Boot, phase) else {
            continue;
        };
        for start in [Start::Snapshot, Start::Warm] {
            if let Some(s) = p50(start, phase) {
                crate::outln!(
                    "submit → {what} p50: {} is {:.1}× faster than a full boot",
                    start.name(),
                    b / s.max(1.0)
                );
            }
        }
    }
}
