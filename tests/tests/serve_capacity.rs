//! Through a real `skiff serve` with real VMs: 20 tasks of every network kind (none, the
//! default network, a named one, published TCP and UDP ports) submitted at once with
//! capacity for 3 all finish with their own output and exit code (`none` has loopback
//! only, the others `eth0` too), and no more than 3 ever ran at once (checked from the
//! tasks' phase timestamps). After them and a server restart, nothing of their networks
//! is left: no namespace, veth, address lease, port rule or network record. The server
//! runs in a test "host" namespace of the test's own.

use skiff_tests::serve as harness;

use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use harness::{state_dir, Serve};
use serde_json::{json, Value};
use skiff_tests::kvm_available;
use skiff_tests::netns::TestNetns;

const TASKS: usize = 20;
/// Prints the VM's network interfaces on one line (`links: eth0 lo`, sorted).
const LINKS: &str = "echo links: $(ls /sys/class/net)";
/// Host ports published by tasks 3, 7, 11, …: `PORT_BASE + i`.
const PORT_BASE: u16 = 18100;

/// Task `i`'s network: none, the default network, named network `cap`, or the default
/// network with a published port (UDP for task 7, TCP for the others).
fn network_of(i: usize) -> Value {
    match i % 4 {
        0 => json!({"networkMode": "none"}),
        1 => json!({}),
        2 => json!({"networkMode": "cap", "name": format!("t{i}")}),
        _ => {
            let protocol = if i == 7 { "udp" } else { "tcp" };
            json!({"portMappings": [{"containerPort": 80, "hostPort": PORT_BASE + i as u16,
                                     "protocol": protocol}]})
        }
    }
}

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
    let host = TestNetns::new("caphost");
    let args = [
        "--cpus",
        "3",
        "--memory-mib",
        "768",
        "--default-network",
        "default",
        "--network-subnet",
        "10.89.9.0/24",
    ];
    let srv = host.run(|| Serve::start(&dir, &args));
    let (status, v) = srv.request("POST", "/v1/networks", Some(r#"{"name":"cap"}"#));
    assert_eq!(status.as_u16(), 201, "{v}");
    // Submitted at once, from as many threads.
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..TASKS)
            .map(|i| {
                let srv = &srv;
                s.spawn(move || {
                    let mut body = json!({
                        "image": "local/busybox",
                        "command": ["sh", "-c", format!("echo out-{i}; {LINKS}; echo err-{i} >&2; exit {}", i % 7)],
                        "memoryMiB": 256,
                        "labels": {"batch": "capacity", "n": i.to_string()},
                    });
                    for (k, v) in network_of(i).as_object().unwrap() {
                        body[k] = v.clone();
                    }
                    srv.submit(&body)
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
        // A task without a network has loopback only; the others have eth0 too.
        let links = if i % 4 == 0 { "lo" } else { "eth0 lo" };
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("out-{i}\nlinks: {links}\n")
        );
        assert_eq!(String::from_utf8_lossy(&err), format!("err-{i}\n"));
        // Each got the network it asked for (or the server's default), timed.
        let (mode, subnet) = match i % 4 {
            0 => ("none", ""),
            2 => ("cap", "10.90.0."),
            _ => ("default", "10.89.9."),
        };
        assert_eq!(t["networkMode"], mode, "{t:#}");
        let address = t["networkInterfaces"][0]["privateIpv4Address"].as_str();
        if mode == "none" {
            assert!(address.is_none() && t["networkTimings"].is_null(), "{t:#}");
        } else {
            assert!(address.unwrap_or("").starts_with(subnet), "{t:#}");
            assert!(t["networkTimings"]["attachMs"].is_u64(), "{t:#}");
            assert!(t["networkTimings"]["detachMs"].is_u64(), "{t:#}");
        }
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

    // A restart, then nothing of the tasks' networks is left.
    drop(srv);
    let srv = host.run(|| Serve::start(&dir, &args));
    assert_eq!(srv.get("/v1/networks/cap")["name"], "cap");
    for id in &ids {
        let ns = format!("/run/netns/skiff-{}", &id[..16.min(id.len())]);
        assert!(!std::path::Path::new(&ns).exists(), "{ns} is left");
        assert!(!dir.join("tasks").join(id).join("network.json").exists());
    }
    let links = std::process::Command::new("ip")
        .args(["-n", &host.name, "-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("veth"), "{links}");
    // The default network's CNI name is `skiff`, a named one's `skiff-NAME`.
    for net in ["skiff", "skiff-cap"] {
        let leases = harness::leases(&dir, net);
        assert!(leases.is_empty(), "{net}: {leases:?}");
    }
    host.run(|| {
        let rules = std::process::Command::new("iptables-save")
            .output()
            .unwrap();
        let rules = String::from_utf8_lossy(&rules.stdout);
        assert!(!rules.contains("CNI-DN-"), "{rules}");
        // The published ports have no rule and are free again.
        for i in (3..TASKS).step_by(4) {
            let port = PORT_BASE + i as u16;
            assert!(!rules.contains(&format!("--dport {port}")), "{rules}");
            if i == 7 {
                UdpSocket::bind(("0.0.0.0", port)).unwrap();
            } else {
                TcpListener::bind(("0.0.0.0", port)).unwrap();
            }
        }
    });
}
