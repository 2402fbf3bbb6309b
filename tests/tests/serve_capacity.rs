//! Through a real `skiff serve` with real VMs: 20 tasks submitted at once with capacity
//! for 3 all finish with their own output and exit code, and no more than 3 ever ran at
//! once (checked from the tasks' phase timestamps).

use skiff_tests::serve as harness;

use std::time::Duration;

use harness::{state_dir, Serve};
use serde_json::json;
use skiff_tests::kvm_available;

const TASKS: usize = 20;

/// Most intervals [start, end) that overlap at one instant.
fn max_overlap(mut spans: Vec<(u64, u64)>) -> usize {
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for (a, b) in spans.drain(..) {
        edges.push((a, 1));
        edges.push((b, -1));
    }
    // Ends sort before starts at the same instant: touching spans do not overlap.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[test]
fn twenty_tasks_with_capacity_for_three() {
    if !kvm_available("twenty_tasks_with_capacity_for_three") {
        return;
    }
    let dir = state_dir("capacity");
    let srv = Serve::start(&dir, &["--cpus", "3", "--memory-mib", "768"]);
    // Submitted at once, from as many threads.
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..TASKS)
            .map(|i| {
                let srv = &srv;
                s.spawn(move || {
                    srv.submit(&json!({
                        "image": "local/busybox",
                        "command": ["sh", "-c", format!("echo out-{i}; echo err-{i} >&2; exit {}", i % 7)],
                        "memoryMiB": 256,
                        "labels": {"batch": "capacity", "n": i.to_string()},
                    }))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut vm_spans = Vec::new();
    let mut run_spans = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let t = srv.wait_stopped(id, Duration::from_secs(2400));
        assert_eq!(t["stopCode"], "EssentialContainerExited", "{t:#}");
        assert_eq!(t["exitCode"], (i % 7) as i64, "{t:#}");
        let (out, err) = srv.logs(id);
        assert_eq!(String::from_utf8_lossy(&out), format!("out-{i}\n"));
        assert_eq!(String::from_utf8_lossy(&err), format!("err-{i}\n"));
        let p = &t["phases"];
        let at = |k: &str| {
            p[k].as_u64()
                .unwrap_or_else(|| panic!("{k} missing: {t:#}"))
        };
        vm_spans.push((at("vmStartedMs"), at("stoppedMs")));
        run_spans.push((at("processStartedMs"), at("processExitedMs")));
    }
    let vms = max_overlap(vm_spans);
    let running = max_overlap(run_spans);
    eprintln!("most VMs at once: {vms}; most processes running at once: {running}");
    assert!(vms <= 3, "{vms} VMs ran at once with capacity for 3");
    assert!(running <= 3);
    // The capacity was used, not just respected.
    assert!(vms >= 2, "tasks never ran side by side");
    // Every lease came back.
    let metrics = srv.get_text("/metrics");
    assert!(metrics.contains("skiff_used_vcpus 0"), "{metrics}");
    assert!(
        metrics.contains("skiff_tasks{state=\"STOPPED\"} 20"),
        "{metrics}"
    );
    // Filters and pages see them all.
    let page = srv.get("/v1/tasks?label=batch=capacity&limit=7");
    assert_eq!(page["tasks"].as_array().unwrap().len(), 7);
    assert!(page["nextToken"].is_string());
    let one = srv.get("/v1/tasks?label=n=13&state=STOPPED");
    assert_eq!(one["tasks"][0]["id"], ids[13].as_str());
}
