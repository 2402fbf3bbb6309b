//! A `bridge` task through a real `skiff serve` (issue 14): the server runs inside a test
//! host namespace of the test's own (so the bridge, its addresses and NAT rules never touch
//! the machine's network), the task's VM gets an address on the default network, reaches a
//! server on the test host through its gateway, and serves a request from the test host on
//! its own address. When the task stops, its namespace and address lease are gone. A server
//! without the CNI plugins refuses bridge tasks with a 400 that says why.

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
fn a_bridge_task_reaches_the_host_and_is_reached_from_it() {
    if !kvm_available("a_bridge_task_reaches_the_host_and_is_reached_from_it") {
        return;
    }
    let host = TestNetns::new("srvnet");
    let dir = state_dir("network");
    let srv = host.run(|| {
        Serve::start(
            &dir,
            &["--no-snapshots", "--network-subnet", "10.89.7.0/24"],
        )
    });
    let listener = host.run(|| TcpListener::bind("0.0.0.0:18080").unwrap());
    answer_forever(listener, "hello from the test host");

    let script = "ip -4 -o addr show eth0; ip route; \
                  wget -q -O - http://10.89.7.1:18080/hello; echo; \
                  mkdir /www && echo served by the task > /www/index.html && \
                  echo READY && exec httpd -f -p 80 -h /www";
    let id = srv.submit(&json!({
        "image": "local/busybox",
        "command": ["sh", "-c", script],
        "networkMode": "bridge",
        "memoryMiB": 128,
    }));
    let t = srv.wait_task(&id, "running", LONG, |t| {
        t["state"] == "RUNNING" || t["state"] == "STOPPED"
    });
    assert_eq!(t["state"], "RUNNING", "{t:#}");
    let ip = t["networkInterfaces"][0]["privateIpv4Address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address: {t:#}"))
        .to_owned();
    assert!(ip.starts_with("10.89.7."), "{t:#}");
    assert_eq!(t["networkInterfaces"][0]["gateway"], "10.89.7.1");

    let answer = get_in(
        &host,
        &format!("{ip}:80"),
        "/index.html",
        Instant::now() + Duration::from_secs(300),
    );
    assert!(answer.contains("served by the task"), "{answer}");
    let out = String::from_utf8(srv.logs(&id).0).unwrap();
    assert!(out.contains(&format!("inet {ip}/24")), "{out}");
    assert!(out.contains("default via 10.89.7.1 dev eth0"), "{out}");
    assert!(out.contains("hello from the test host"), "{out}");

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
}

#[test]
fn without_the_plugins_bridge_tasks_are_refused_with_the_reason() {
    let dir = state_dir("network-none");
    let srv = Serve::start(
        &dir,
        &["--no-snapshots", "--cni-plugin-dir", "/nonexistent"],
    );
    let (status, v) = srv.request(
        "POST",
        "/v1/tasks",
        Some(&json!({"image": "local/busybox", "networkMode": "bridge"}).to_string()),
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
}
