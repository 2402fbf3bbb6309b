//! A task on the default network through a real `skiff serve` (issue 14): the server runs
//! inside a test "host" namespace of the test's own, joined to a test "internet" namespace
//! (so the bridge, its addresses and NAT rules never touch the machine's network). The
//! task's VM gets an address, reaches a server on the internet through NAT but not a
//! service of the host, and serves requests on its own address and on its published port
//! (127.0.0.1 on the host, the host's uplink address from the internet); the port is held
//! for it (a second task asking for it gets 409). When the task stops, its namespace,
//! address lease and port rules are gone. A server without the CNI plugins refuses such
//! tasks with a 400 that says why. (`tests/tests/network.rs` checks the rest of the
//! isolation with the tasks' own interfaces, without VMs.)

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::json;
use skiff_tests::kvm_available;
use skiff_tests::netns::TestNetns;
use skiff_tests::serve::{state_dir, Serve};

const LONG: Duration = Duration::from_secs(900);

/// Answers every HTTP request on `listener` with `body`, until the test ends.
fn answer_forever(listener: TcpListener, body: &'static str) {
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = write!(
                c,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

/// GET http://ADDR/PATH from inside `ns`, retried until `deadline`.
fn get_in(ns: &TestNetns, addr: &str, path: &str, deadline: Instant) -> String {
    ns.run(|| loop {
        let tried = std::net::TcpStream::connect(addr).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        });
        match tried {
            Ok(out) if out.starts_with("HTTP/1.") => return out,
            other => {
                assert!(Instant::now() < deadline, "GET {addr}{path}: {other:?}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    })
}

#[test]
fn a_task_reaches_the_internet_and_serves_a_published_port() {
    if !kvm_available("a_task_reaches_the_internet_and_serves_a_published_port") {
        return;
    }
    // The machine the server runs on, and the internet beyond its uplink.
    let host = TestNetns::new("srvnet");
    let inet = TestNetns::new("srvinet");
    host.link(&inet, "uplink", "10.200.1.1/24", "10.200.1.2/24");
    let dir = state_dir("network");
    let srv = host.run(|| {
        Serve::start(
            &dir,
            &["--no-snapshots", "--network-subnet", "10.89.7.0/24"],
        )
    });
    answer_forever(
        inet.run(|| TcpListener::bind("0.0.0.0:18080").unwrap()),
        "hello from the internet",
    );
    // A service of the host's, which tasks must not reach.
    answer_forever(
        host.run(|| TcpListener::bind("0.0.0.0:18081").unwrap()),
        "a host service",
    );

    let script = "ip -4 -o addr show eth0; ip route; \
                  wget -q -O - http://10.200.1.2:18080/hello; echo; \
                  for a in 10.89.7.1:18081 10.200.1.1:18081; do \
                    wget -T 3 -q -O - http://$a/ >/dev/null 2>&1 \
                      && echo REACHED $a || echo BLOCKED $a; done; \
                  mkdir /www && echo served by the task > /www/index.html && \
                  echo READY && exec httpd -f -p 80 -h /www";
    let id = srv.submit(&json!({
        "image": "local/busybox",
        "command": ["sh", "-c", script],
        "networkMode": "default",
        "portMappings": [{"containerPort": 80, "hostPort": 18088}],
        "memoryMiB": 128,
    }));
    // The host port is the task's now: a second task cannot publish it.
    let (status, v) = srv.request(
        "POST",
        "/v1/tasks",
        Some(
            &json!({"image": "local/busybox", "networkMode": "default",
                    "portMappings": [{"containerPort": 80, "hostPort": 18088}]})
            .to_string(),
        ),
    );
    assert_eq!(status.as_u16(), 409, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("portMappings[0].hostPort"), "{msg}");
    let t = srv.wait_task(&id, "running", LONG, |t| {
        t["state"] == "RUNNING" || t["state"] == "STOPPED"
    });
    assert_eq!(t["state"], "RUNNING", "{t:#}");
    assert_eq!(t["networkMode"], "default", "{t:#}");
    assert_eq!(t["portMappings"][0]["hostPort"], 18088, "{t:#}");
    let ip = t["networkInterfaces"][0]["privateIpv4Address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address: {t:#}"))
        .to_owned();
    assert!(ip.starts_with("10.89.7."), "{t:#}");
    assert_eq!(t["networkInterfaces"][0]["gateway"], "10.89.7.1");

    let deadline = Instant::now() + Duration::from_secs(300);
    // The task's own address, from the host; its published port on the host's loopback
    // and on its uplink address, from the internet.
    let answer = get_in(&host, &format!("{ip}:80"), "/index.html", deadline);
    assert!(answer.contains("served by the task"), "{answer}");
    let answer = get_in(&host, "127.0.0.1:18088", "/index.html", deadline);
    assert!(answer.contains("served by the task"), "{answer}");
    let answer = get_in(&inet, "10.200.1.1:18088", "/index.html", deadline);
    assert!(answer.contains("served by the task"), "{answer}");
    let out = String::from_utf8(srv.logs(&id).0).unwrap();
    assert!(out.contains(&format!("inet {ip}/24")), "{out}");
    assert!(out.contains("default via 10.89.7.1 dev eth0"), "{out}");
    assert!(out.contains("hello from the internet"), "{out}");
    assert!(out.contains("BLOCKED 10.89.7.1:18081"), "{out}");
    assert!(out.contains("BLOCKED 10.200.1.1:18081"), "{out}");

    let (status, v) = srv.request("POST", &format!("/v1/tasks/{id}/stop"), None);
    assert!(status.is_success(), "{v}");
    srv.wait_stopped(&id, LONG);
    // The task's namespace and its address lease are gone.
    let ns = format!("/run/netns/skiff-{}", &id[..16.min(id.len())]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&ns).exists() {
        assert!(Instant::now() < deadline, "{ns} is still there");
        std::thread::sleep(Duration::from_millis(200));
    }
    let leases: Vec<_> = std::fs::read_dir(dir.join("cni/ipam/skiff"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert!(leases.is_empty(), "{leases:?}");
    assert!(!dir.join("tasks").join(&id).join("network.json").exists());
    // Nor are the published port's rules, and the host port is free again.
    host.run(|| {
        let rules = std::process::Command::new("iptables-save")
            .output()
            .unwrap();
        let rules = String::from_utf8_lossy(&rules.stdout);
        assert!(!rules.contains("18088"), "{rules}");
        TcpListener::bind("0.0.0.0:18088").unwrap();
    });
}

#[test]
fn without_the_plugins_networked_tasks_are_refused_with_the_reason() {
    let dir = state_dir("network-none");
    let srv = Serve::start(
        &dir,
        &["--no-snapshots", "--cni-plugin-dir", "/nonexistent"],
    );
    let (status, v) = srv.request(
        "POST",
        "/v1/tasks",
        Some(&json!({"image": "local/busybox", "networkMode": "default"}).to_string()),
    );
    assert_eq!(status.as_u16(), 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("networkMode") && msg.contains("/nonexistent"),
        "{msg}"
    );
    let (status, v) = srv.request(
        "POST",
        "/v1/tasks",
        Some(&json!({"image": "local/busybox", "networkMode": "host"}).to_string()),
    );
    assert_eq!(status.as_u16(), 400, "{v}");
    // Bad published ports are refused before anything is made, naming the field.
    for (body, field) in [
        (
            json!({"image": "local/busybox", "networkMode": "default",
                   "portMappings": [{"containerPort": 70000}]}),
            "portMappings[0].containerPort",
        ),
        (
            json!({"image": "local/busybox", "portMappings": [{"containerPort": 80}]}),
            "portMappings",
        ),
    ] {
        let (status, v) = srv.request("POST", "/v1/tasks", Some(&body.to_string()));
        assert_eq!(status.as_u16(), 400, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{field}:")), "{msg}");
    }
}
