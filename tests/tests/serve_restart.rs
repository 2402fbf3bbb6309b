//! `skiff serve` killed mid-flight and started again on the same state dir loses nothing:
//! every task is still listed with its output; the task whose VM was running is STOPPED
//! with a reason (its VM gone); the tasks still waiting for capacity run after the restart.

use skiff_tests::serve as harness;

use std::time::{Duration, Instant};

use harness::{state_dir, vmms_under, Serve};
use serde_json::json;
use skiff_tests::kvm_available;

const LONG: Duration = Duration::from_secs(1200);

#[test]
fn a_restart_mid_flight_loses_nothing() {
    if !kvm_available("a_restart_mid_flight_loses_nothing") {
        return;
    }
    let dir = state_dir("restart");
    let mut srv = Serve::start(&dir, &["--cpus", "1", "--memory-mib", "512"]);
    let running = srv.submit(&json!({
        "image": "local/busybox",
        "command": ["sh", "-c", "echo started; sleep 1000"],
    }));
    srv.wait_task(&running, "printing", LONG, |_| {
        String::from_utf8_lossy(&srv.logs(&running).0).contains("started")
    });
    // Submitted while the only vCPU is taken: they wait in PENDING.
    let waiting: Vec<String> = ["b", "c"]
        .iter()
        .map(|n| {
            srv.submit(&json!({
                "image": "local/busybox",
                "command": ["echo", format!("task {n}")],
            }))
        })
        .collect();
    for id in &waiting {
        srv.wait_task(id, "PENDING", Duration::from_secs(60), |t| {
            t["state"] == "PENDING"
        });
    }
    srv.kill();

    let srv = Serve::start(&dir, &["--cpus", "1", "--memory-mib", "512"]);
    let t = srv.task(&running);
    assert_eq!(t["state"], "STOPPED", "{t:#}");
    assert_eq!(t["stopCode"], "ControlPlaneRestarted", "{t:#}");
    assert_eq!(String::from_utf8_lossy(&srv.logs(&running).0), "started\n");
    for (id, n) in waiting.iter().zip(["b", "c"]) {
        let t = srv.wait_stopped(id, LONG);
        assert_eq!(t["stopCode"], "EssentialContainerExited", "{t:#}");
        assert_eq!(t["exitCode"], 0);
        assert_eq!(
            String::from_utf8_lossy(&srv.logs(id).0),
            format!("task {n}\n")
        );
        let events: Vec<String> = t["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            events
                .iter()
                .any(|e| e.contains("resumed after a control-plane restart")),
            "{events:?}"
        );
    }
    assert_eq!(srv.get("/v1/tasks")["tasks"].as_array().unwrap().len(), 3);
    // The first task's VM did not outlive the restart.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !vmms_under(&dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "VMs left: {:?}",
            vmms_under(&dir)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
