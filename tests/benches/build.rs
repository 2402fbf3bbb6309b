//! Build benchmark (issue 19): `skiff build` through `skiff serve` against buildah 1.28
//! (`bud --layers --isolation chroot`), the same Dockerfiles on the same base: the bundled
//! busybox, pushed to a loopback docker-registry and pulled by both.
//!
//! Dockerfiles: `tiny` (COPY + RUN + CMD), `multi` (a two-stage app), `big` (200 MB of
//! files in one COPY, then a RUN). For each, with each tool, `SKIFF_BENCH_RUNS` (5) runs
//! of: cold (`--no-cache`, the base present), a rebuild with no change, a rebuild after
//! one COPY source is edited, a rebuild after that file is only touched. Then, per skiff
//! `RUN` step that ran, its phases from the build's step record (`run`: launch, VM
//! restore, root mounted and command started, the command, changes received and the VM
//! stopped, layer written); the context upload (first and after a one-file edit, from the
//! CLI's own report); and push, cold (a fresh registry) and warm
//! (the same destination again), against `buildah push`.
//!
//! Run: `cargo bench -p skiff-tests --bench build` (needs /dev/kvm and buildah:
//! `scripts/setup.sh` installs it; SKIFF_BENCH_BIG_MB sets the big context's size).
//! Prints medians and p90s; skiff's `RUN` VMs restore the server's 1 × 512 MiB snapshot,
//! which the warm-up build makes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use skiff_tests::layers::noise;
use skiff_tests::registry::Registry;
use skiff_tests::serve::Serve;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn p90(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() * 9).div_ceil(10))
        .saturating_sub(1)
        .min(v.len() - 1)]
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn check(o: Output, what: &str) -> Result<Output> {
    if !o.status.success() {
        bail!(
            "{what}: exit {:?}\n{}\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(o)
}

struct Bench {
    srv: Serve,
    state: PathBuf,
    registry: String,
}

impl Bench {
    fn skiff(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(skiff_tests::paths::skiff())
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env("SKIFF_API", &self.srv.listening)
            .env_remove("SKIFF_LOG")
            .output()?)
    }

    fn build(&self, tool: Tool, name: &str, ctx: &Path, no_cache: bool) -> Result<Output> {
        let ctx_arg = ctx.to_str().unwrap();
        let o = match tool {
            Tool::Skiff => {
                let mut args = vec!["build", "--progress", "plain", "-t", name];
                if no_cache {
                    args.push("--no-cache");
                }
                args.push(ctx_arg);
                self.skiff(&args)?
            }
            Tool::Buildah => {
                let mut args = vec![
                    "bud",
                    "--layers",
                    "--isolation",
                    "chroot",
                    "--tls-verify=false",
                    "-q",
                    "-t",
                    name,
                ];
                if no_cache {
                    args.push("--no-cache");
                }
                args.push(ctx_arg);
                Command::new("buildah").args(&args).output()?
            }
        };
        check(o, &format!("{tool:?} build {name}"))
    }
}

#[derive(Debug, Clone, Copy)]
enum Tool {
    Skiff,
    Buildah,
}

struct Case {
    name: &'static str,
    ctx: PathBuf,
    /// The COPY source edited or touched between rebuilds.
    edit: PathBuf,
    edit_len: usize,
}

fn make_cases(root: &Path, base: &str, big_mb: usize) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    let tiny = root.join("tiny");
    fs::create_dir_all(&tiny)?;
    fs::write(tiny.join("app.txt"), "hello from a tiny build\n")?;
    fs::write(
        tiny.join("Dockerfile"),
        format!(
            "FROM {base}\nCOPY app.txt /app/\nRUN cat /app/app.txt > /app/copy\n\
             CMD [\"cat\", \"/app/copy\"]\n"
        ),
    )?;
    cases.push(Case {
        name: "tiny",
        edit: tiny.join("app.txt"),
        ctx: tiny,
        edit_len: 24,
    });
    let multi = root.join("multi");
    fs::create_dir_all(multi.join("src"))?;
    for i in 0..20 {
        fs::write(
            multi.join(format!("src/part-{i:02}.txt")),
            format!("part {i}\n"),
        )?;
    }
    fs::write(
        multi.join("Dockerfile"),
        format!(
            "FROM {base} AS build\nCOPY src/ /src/\n\
             RUN mkdir -p /out && cat /src/*.txt > /out/app.txt && wc -l /out/app.txt\n\
             FROM {base}\nCOPY --from=build /out/app.txt /app/app.txt\nENV APP=/app/app.txt\n\
             CMD [\"cat\", \"/app/app.txt\"]\n"
        ),
    )?;
    cases.push(Case {
        name: "multi",
        edit: multi.join("src/part-00.txt"),
        ctx: multi,
        edit_len: 8,
    });
    let big = root.join("big");
    fs::create_dir_all(big.join("data"))?;
    for i in 0..big_mb {
        fs::write(
            big.join(format!("data/file-{i:04}.bin")),
            noise(1 << 20, i as u64 + 1),
        )?;
    }
    fs::write(
        big.join("Dockerfile"),
        format!("FROM {base}\nCOPY data/ /data/\nRUN du -s /data > /data-size\n"),
    )?;
    cases.push(Case {
        name: "big",
        edit: big.join("data/file-0000.bin"),
        ctx: big,
        edit_len: 1 << 20,
    });
    Ok(cases)
}

/// Waits until the server's snapshot of the build VMs' shape (1 vCPU, 512 MiB, a scratch
/// disk) is there.
fn wait_snapshot(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let ready = fs::read_dir(dir)
            .map(|d| {
                d.flatten().any(|e| {
                    e.file_name().to_string_lossy().contains("-1x512-scratch")
                        && !e.file_name().to_string_lossy().contains('.')
                        && e.path().join("vm.state").exists()
                })
            })
            .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no 1x512-scratch snapshot in {}", dir.display());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[derive(Default)]
struct Row {
    cold: Vec<Duration>,
    nochange: Vec<Duration>,
    edited: Vec<Duration>,
    touched: Vec<Duration>,
}

fn timed(f: impl FnOnce() -> Result<Output>) -> Result<(Duration, Output)> {
    let t0 = Instant::now();
    let o = f()?;
    Ok((t0.elapsed(), o))
}

fn run_case(b: &Bench, case: &Case, tool: Tool, runs: usize) -> Result<Row> {
    let name = format!("bench-{}:1", case.name);
    let mut row = Row::default();
    let mut edits = 0u64;
    for _ in 0..runs {
        row.cold
            .push(timed(|| b.build(tool, &name, &case.ctx, true))?.0);
    }
    for _ in 0..runs {
        row.nochange
            .push(timed(|| b.build(tool, &name, &case.ctx, false))?.0);
    }
    for _ in 0..runs {
        edits += 1;
        let content = if case.edit_len >= 1 << 20 {
            noise(case.edit_len, 1000 + edits)
        } else {
            format!("edit {edits} of {}\n", case.name).into_bytes()
        };
        fs::write(&case.edit, content)?;
        row.edited
            .push(timed(|| b.build(tool, &name, &case.ctx, false))?.0);
    }
    for _ in 0..runs {
        // A new mtime, the same bytes.
        let f = fs::File::options().write(true).open(&case.edit)?;
        f.set_modified(std::time::SystemTime::now())?;
        drop(f);
        std::thread::sleep(Duration::from_millis(20));
        row.touched
            .push(timed(|| b.build(tool, &name, &case.ctx, false))?.0);
    }
    Ok(row)
}

/// The phases of a `RUN` step, in the order of the step record's `run` fields (ms from
/// the step's start to each phase's end).
const PHASES: [(&str, &str); 6] = [
    ("launchMs", "root filesystem, scratch disk, room"),
    ("readyMs", "VM restored (agent's hello)"),
    ("execMs", "root mounted, command started"),
    ("exitMs", "the command ran"),
    ("receivedMs", "changes received, VM stopped"),
    ("writtenMs", "layer written and stored"),
];

/// Each skiff `RUN` step that ran (not cached), from the server's records: its whole
/// time and each phase's, and whether its VM was restored from a snapshot.
struct RunSteps {
    total: Vec<Duration>,
    phases: Vec<Vec<Duration>>,
    restored: usize,
}

fn run_steps(b: &Bench) -> RunSteps {
    let list = b.srv.get("/v1/builds");
    let mut out = RunSteps {
        total: Vec::new(),
        phases: vec![Vec::new(); PHASES.len()],
        restored: 0,
    };
    for build in list["builds"].as_array().into_iter().flatten() {
        for s in build["steps"].as_array().into_iter().flatten() {
            let run = &s["run"];
            if !run.is_object() {
                continue;
            }
            if let (Some(a), Some(z)) = (s["startMs"].as_u64(), s["endMs"].as_u64()) {
                out.total.push(Duration::from_millis(z.saturating_sub(a)));
            }
            out.restored += usize::from(run["fromSnapshot"] == true);
            let mut before = 0;
            for (i, (field, _)) in PHASES.iter().enumerate() {
                let at = run[field].as_u64().unwrap_or(before);
                out.phases[i].push(Duration::from_millis(at.saturating_sub(before)));
                before = at;
            }
        }
    }
    out
}

fn push_figures(b: &Bench, runs: usize) -> Result<()> {
    let mut rows: Vec<(&str, Vec<Duration>, Vec<Duration>)> = Vec::new();
    for tool in [Tool::Skiff, Tool::Buildah] {
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        for i in 0..runs {
            // Cold: a registry of its own, which has no blob.
            let reg = Registry::start()?;
            let dest = format!("{}/bench/big:{i}", reg.addr);
            let push = || -> Result<Output> {
                let o = match tool {
                    Tool::Skiff => b.skiff(&[
                        "image",
                        "push",
                        "bench-big:1",
                        "--dest",
                        &dest,
                        "--insecure",
                        &reg.addr,
                    ])?,
                    Tool::Buildah => Command::new("buildah")
                        .args([
                            "push",
                            "--tls-verify=false",
                            "-q",
                            "bench-big:1",
                            &format!("docker://{dest}"),
                        ])
                        .output()?,
                };
                check(o, &format!("{tool:?} push"))
            };
            cold.push(timed(push)?.0);
            warm.push(timed(push)?.0);
        }
        rows.push((
            match tool {
                Tool::Skiff => "skiff",
                Tool::Buildah => "buildah",
            },
            cold,
            warm,
        ));
    }
    println!(
        "\npush of the big image (busybox + ~{} MB layer), {runs} runs each",
        env_num("SKIFF_BENCH_BIG_MB", 200)
    );
    println!("| tool | cold median | cold p90 | warm median | warm p90 |");
    println!("|---|---|---|---|---|");
    for (tool, cold, warm) in &rows {
        println!(
            "| {tool} | {} s | {} s | {} s | {} s |",
            secs(median(cold)),
            secs(p90(cold)),
            secs(median(warm)),
            secs(p90(warm))
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    if !Path::new("/dev/kvm").exists() {
        bail!("the build benchmark needs /dev/kvm");
    }
    if Command::new("buildah").arg("--version").output().is_err() {
        bail!("the build benchmark compares with buildah: run scripts/setup.sh (it installs it)");
    }
    let runs = env_num("SKIFF_BENCH_RUNS", 5);
    let big_mb = env_num("SKIFF_BENCH_BIG_MB", 200);
    let work = tempfile::Builder::new()
        .prefix("bench-build-")
        .tempdir_in(skiff_tests::paths::tmp_dir())?;
    let state = work.path().join("state");
    let reg = Registry::start()?;
    let srv = Serve::start(
        &state,
        &[
            "--insecure-registry",
            &reg.addr,
            "--snapshot-dir",
            work.path().join("snapshots").to_str().unwrap(),
        ],
    );
    let b = Bench {
        srv,
        state: state.clone(),
        registry: reg.addr.clone(),
    };
    // The base, in a registry both tools pull from.
    let base = format!("{}/bench/busybox:1", b.registry);
    check(
        b.skiff(&["image", "pull", "local/busybox:latest"])?,
        "make the bundled busybox",
    )?;
    check(
        b.skiff(&[
            "image",
            "push",
            "local/busybox:latest",
            "--dest",
            &base,
            "--insecure",
            &b.registry,
        ])?,
        "push the base",
    )?;
    check(
        Command::new("buildah")
            .args(["pull", "--tls-verify=false", "-q", &base])
            .output()?,
        "buildah pull",
    )?;
    let cases = make_cases(&work.path().join("contexts"), &base, big_mb)?;
    // Warm-up: the first RUN boots and the server snapshots the build VMs' shape.
    let t0 = Instant::now();
    b.build(Tool::Skiff, "bench-warmup:1", &cases[0].ctx, true)?;
    println!("warm-up build (its RUN VM boots): {} s", secs(t0.elapsed()));
    wait_snapshot(&work.path().join("snapshots"))?;

    // The context upload: a first build of a fresh copy sends every file; after a
    // one-file edit, one.
    let upload = work.path().join("upload");
    check(
        Command::new("cp")
            .args([
                "-a",
                cases[2].ctx.to_str().unwrap(),
                upload.to_str().unwrap(),
            ])
            .output()?,
        "copy the big context",
    )?;
    fs::write(
        upload.join("Dockerfile"),
        format!("FROM {base}\nCOPY data/ /data/\n"),
    )?;
    let (first, o) = timed(|| b.build(Tool::Skiff, "bench-upload:1", &upload, false))?;
    let sent_first = String::from_utf8_lossy(&o.stderr)
        .lines()
        .find(|l| l.starts_with("sending"))
        .unwrap_or("sending nothing")
        .to_owned();
    fs::write(upload.join("data/file-0001.bin"), noise(1 << 20, 4242))?;
    let (second, o) = timed(|| b.build(Tool::Skiff, "bench-upload:1", &upload, false))?;
    let sent_second = String::from_utf8_lossy(&o.stderr)
        .lines()
        .find(|l| l.starts_with("sending"))
        .unwrap_or("sending nothing")
        .to_owned();
    println!(
        "context upload ({big_mb} files of 1 MiB, COPY only): first build {} s ({sent_first}); after a one-file edit {} s ({sent_second})",
        secs(first),
        secs(second)
    );

    println!("\n{runs} runs each; medians (p90) in seconds; ratio = skiff / buildah (median)");
    println!("| Dockerfile | scenario | skiff | buildah | ratio |");
    println!("|---|---|---|---|---|");
    for case in &cases {
        let s = run_case(&b, case, Tool::Skiff, runs)?;
        let h = run_case(&b, case, Tool::Buildah, runs)?;
        for (label, sv, hv) in [
            ("cold (--no-cache)", &s.cold, &h.cold),
            ("no change", &s.nochange, &h.nochange),
            ("one COPY source edited", &s.edited, &h.edited),
            ("mtime-only touch", &s.touched, &h.touched),
        ] {
            println!(
                "| {} | {label} | {} ({}) | {} ({}) | {:.2} |",
                case.name,
                secs(median(sv)),
                secs(p90(sv)),
                secs(median(hv)),
                secs(p90(hv)),
                median(sv).as_secs_f64() / median(hv).as_secs_f64()
            );
        }
    }
    let steps = run_steps(&b);
    if !steps.total.is_empty() {
        println!(
            "\nskiff RUN steps that ran: {} ({} restored from a snapshot), median {} s, p90 {} s",
            steps.total.len(),
            steps.restored,
            secs(median(&steps.total)),
            secs(p90(&steps.total))
        );
        println!("| phase | median | p90 |\n|---|---|---|");
        for ((_, what), v) in PHASES.iter().zip(&steps.phases) {
            println!("| {what} | {} | {} |", secs(median(v)), secs(p90(v)));
        }
    }
    push_figures(&b, runs)?;
    let _ = Command::new("buildah")
        .args(["rmi", "-f", "bench-tiny:1", "bench-multi:1", "bench-big:1"])
        .output();
    let _ = fs::canonicalize(&state).context("state")?;
    Ok(())
}
