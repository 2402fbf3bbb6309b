//! `skiff bench density`: how many idle 128 MiB tasks one host holds when they are
//! restored from one snapshot, and the host memory each costs (their VMMs share the
//! snapshot's unchanged pages through the page cache).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use super::bench::{host_facts, start_server, wait_for_snapshot};
use super::remote::Api;

#[derive(Args)]
pub struct DensityArgs {
    /// Idle tasks to start.
    #[arg(short = 'n', default_value_t = 8)]
    n: usize,
    /// Memory of each task, MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    #[arg(long, default_value = "local/busybox")]
    image: String,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "density.json")]
    json: std::path::PathBuf,
}

fn meminfo_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The children of process `pid`.
fn children(pid: u64) -> Vec<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// (Rss, Pss, Private) of a process in KiB, from smaps_rollup.
fn smaps(pid: u64) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let get = |k: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(k))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    };
    (
        get("Rss:"),
        get("Pss:"),
        get("Private_Clean:") + get("Private_Dirty:"),
    )
}

pub fn density(a: DensityArgs) -> anyhow::Result<i32> {
    if a.n == 0 {
        bail!("-n must be at least 1");
    }
    let server = start_server(true, true, None, 1, a.memory, a.n + 1)?;
    let api = Api::new(Some(server.url.clone()), None, std::path::Path::new("/"))?;
    let probe = json!({"image": a.image, "command": ["true"], "cpu": 1, "memoryMiB": a.memory});
    wait_for_snapshot(&api, &probe)?;
    let before = meminfo_kib("MemAvailable:");
    let idle =
        json!({"image": a.image, "command": ["sleep", "100000"], "cpu": 1, "memoryMiB": a.memory});
    let ids: Vec<String> = (0..a.n)
        .map(|_| {
            api.post("/v1/tasks", &idle)
                .map(|t| t["id"].as_str().unwrap_or_default().to_owned())
        })
        .collect::<anyhow::Result<_>>()?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    let tasks: Vec<Value> = loop {
        let ts: Vec<Value> = ids
            .iter()
            .map(|id| api.get(&format!("/v1/tasks/{id}")))
            .collect::<anyhow::Result<_>>()?;
        if ts.iter().all(|t| t["state"] == "RUNNING") {
            break ts;
        }
        if let Some(t) = ts.iter().find(|t| t["state"] == "STOPPED") {
            bail!("task {} stopped: {}", t["id"], t["stoppedReason"]);
        }
        if Instant::now() > deadline {
            bail!("the idle tasks were not all RUNNING after 30 minutes");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // Let the guests settle before measuring.
    std::thread::sleep(Duration::from_secs(5));
    let after = meminfo_kib("MemAvailable:");
    let (mut rss, mut pss, mut private) = (0u64, 0u64, 0u64);
    let mut restored = 0;
    for t in &tasks {
        if t["startMode"] == "snapshot" {
            restored += 1;
        }
        let pid = t["vmmPid"]
            .as_u64()
            .context("a running task without vmmPid")?;
        // The jailer and the jailed VMM (its only child): what a VM costs the host.
        for pid in std::iter::once(pid).chain(children(pid)) {
            let (r, p, v) = smaps(pid);
            rss += r;
            pss += p;
            private += v;
        }
    }
    for id in &ids {
        let _ = api.post(&format!("/v1/tasks/{id}/stop"), &json!({}));
    }
    let n = a.n as f64;
    // MemAvailable moves with everything else on the host; the VMMs' proportional share
    // (PSS, guest pages they dirtied included) is the steadier figure. Take the larger.
    let drop_kib = before.saturating_sub(after) as f64 / n;
    let per_task_kib = drop_kib.max(pss as f64 / n);
    let report = json!({
        "host": host_facts(),
        "tasks": a.n,
        "restored_from_snapshot": restored,
        "memory_mib_each": a.memory,
        "mem_available_drop_per_task_mib": drop_kib / 1024.0,
        "host_memory_per_task_mib": per_task_kib / 1024.0,
        "pss_per_vmm_mib": pss as f64 / n / 1024.0,
        "rss_per_vmm_mib": rss as f64 / n / 1024.0,
        "private_per_vmm_mib": private as f64 / n / 1024.0,
        "tasks_that_fit_in_available_memory": (before as f64 / per_task_kib.max(1.0)).floor(),
    });
    let f = |k: &str| report[k].as_f64().unwrap_or(0.0);
    crate::outln!(
        "{} idle tasks of {} MiB ({} restored from one snapshot):",
        a.n,
        a.memory,
        restored
    );
    crate::outln!(
        "  host memory per task: {:.1} MiB (MemAvailable drop {:.1} MiB); per VMM with its jailer: PSS {:.1} MiB, RSS {:.1} MiB, private {:.1} MiB",
        f("host_memory_per_task_mib"),
        f("mem_available_drop_per_task_mib"),
        f("pss_per_vmm_mib"),
        f("rss_per_vmm_mib"),
        f("private_per_vmm_mib")
    );
    crate::outln!(
        "  at that cost the host's available memory holds about {:.0} such idle tasks (memory only)",
        f("tasks_that_fit_in_available_memory")
    );
    std::fs::write(&a.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", a.json.display()))?;
    // Give the stops a moment so the server's shutdown is quick.
    std::thread::sleep(Duration::from_secs(2));
    drop(server);
    Ok(0)
}
