//! Task networks through a real `skiff serve` (issue 14): the server runs inside a test
//! "host" namespace of the test's own, joined to a test "internet" namespace with a DNS
//! server of its own (so bridges, addresses and NAT rules never touch the machine's
//! network). On a named network made through the API, a task's VM gets an address and
//! resolver, resolves and reaches a server on the internet through NAT but not a service
//! of the host, and serves requests on its own address and on its published port
//! (127.0.0.1 on the host, the host's uplink address from the internet); the port is held
//! for it (a second task asking for it gets 409). A second task on the network fetches
//! the first one's page by its name. A third task restores the snapshot of a VM with a
//! network card that the first one's start built, and serves its own published port with
//! its own MAC and address. The server is killed while that task runs; the next start
//! tears its network down and keeps the named network. When the tasks stop, their namespaces, address
//! leases and port rules are gone, and the network can be removed with its bridge. A
//! server without the CNI plugins refuses such tasks with a 400 that says why. A build's
//! `RUN` step with `--network default` fetches from the internet (and with `none` cannot),
//! leaving no namespace or lease behind.
//! (`tests/tests/network.rs` checks the default network's isolation with the tasks' own
//! interfaces, without VMs.)

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control_plane::network::dns::{NameTable, Resolver};
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

/// Whether the snapshot of the shape of the tasks here (1 vCPU, 128 MiB, a network card)
/// is there.
fn net_snapshot_ready(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten().any(|e| {
                e.file_name().to_string_lossy().ends_with("-1x128-net")
                    && e.path().join("vm.state").exists()
            })
        })
        .unwrap_or(false)
}

/// A DNS server on the test internet (our own resolver, standing for the world's):
/// `name` is `ip`.
fn internet_resolver(inet: &TestNetns, at: &str, name: &str, ip: &str) {
    let sock = inet.run(|| std::net::UdpSocket::bind(at).unwrap());
    let names = NameTable::default();
    names.add("internet", "x", ip.parse().unwrap(), &[name.to_owned()]);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            sock.set_nonblocking(true).unwrap();
            let sock = tokio::net::UdpSocket::from_std(sock).unwrap();
            Resolver {
                network: "internet".into(),
                names: Arc::new(names),
                upstreams: Arc::new(vec![]),
            }
            .serve(sock)
            .await
        })
    });
}

#[test]
fn tasks_on_a_named_network_reach_each_other_by_name_and_the_internet() {
    if !kvm_available("tasks_on_a_named_network_reach_each_other_by_name_and_the_internet") {
        return;
    }
    // The machine the server runs on, and the internet beyond its uplink.
    // Namespaces an earlier, interrupted run may have left are not this test's.
    let netns_before = skiff_tests::netns::names();
    let host = TestNetns::new("srvnet");
    let inet = TestNetns::new("srvinet");
    host.link(&inet, "uplink", "10.200.1.1/24", "10.200.1.2/24");
    internet_resolver(&inet, "10.200.1.2:53", "example.test", "10.200.1.2");
    let dir = state_dir("network");
    let serve_args = [
        "--default-network",
        "default",
        "--network-subnet",
        "10.89.7.0/24",
        "--dns-upstream",
        "10.200.1.2:53",
    ];
    let mut srv = host.run(|| Serve::start(&dir, &serve_args));
    answer_forever(
        inet.run(|| TcpListener::bind("0.0.0.0:18080").unwrap()),
        "hello from the internet",
    );
    // A service of the host's, which tasks must not reach.
    answer_forever(
        host.run(|| TcpListener::bind("0.0.0.0:18081").unwrap()),
        "a host service",
    );

    // A named network; a second one of that name, a bad name, an unknown one: refused.
    let (status, web) = srv.request("POST", "/v1/networks", Some(r#"{"name":"web"}"#));
    assert_eq!(status.as_u16(), 201, "{web}");
    assert_eq!(web["subnet"], "10.90.0.0/24", "{web}");
    assert_eq!(web["gateway"], "10.90.0.1", "{web}");
    let bridge = web["bridge"].as_str().unwrap().to_owned();
    for (body, code, needle) in [
        (r#"{"name":"web"}"#, 409, "exists"),
        (r#"{"name":"Web!"}"#, 400, "name:"),
        (r#"{"name":"w2","subnet":"10.89.7.0/25"}"#, 400, "subnet:"),
    ] {
        let (status, v) = srv.request("POST", "/v1/networks", Some(body));
        assert_eq!(status.as_u16(), code, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let (status, v) = srv.request(
        "POST",
        "/v1/tasks",
        Some(&json!({"image": "local/busybox", "networkMode": "nosuch"}).to_string()),
    );
    assert_eq!(status.as_u16(), 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nosuch"),
        "{v}"
    );

    // (Debian's busybox wget dies of SIGSEGV with -T: `timeout` bounds it instead. The
    // fetch from the internet is the control that this form of fetch works.)
    let front = "ip -4 -o addr show eth0; ip route; cat /etc/resolv.conf; \
                 timeout 10 wget -q -O - http://example.test:18080/hello; echo; \
                 for a in 10.90.0.1:18081 10.200.1.1:18081; do \
                   timeout 5 wget -q -O - http://$a/ >/dev/null 2>&1; \
                   echo \"$a: $?\"; done; \
                 mkdir /www && echo served by the task > /www/index.html && \
                 echo READY && exec httpd -f -p 80 -h /www";
    let id = srv.submit(&json!({
        "image": "local/busybox",
        "command": ["sh", "-c", front],
        "networkMode": "web",
        "name": "front",
        "portMappings": [{"containerPort": 80, "hostPort": 18088}],
        "memoryMiB": 128,
    }));
    // The host port is the task's now: a second task cannot publish it (that one names no
    // network: it gets the server's default, which can publish ports).
    let (status, v) = srv.request(
        "POST",
        "/v1/tasks",
        Some(
            &json!({"image": "local/busybox",
                    "portMappings": [{"containerPort": 80, "hostPort": 18088}]})
            .to_string(),
        ),
    );
    assert_eq!(status.as_u16(), 409, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("portMappings[0].hostPort"), "{msg}");
    // A second task on the network fetches the first one's page by its name.
    let client = "for i in $(seq 1 100); do \
                    timeout 5 wget -q -O - http://front/index.html && exit 0; sleep 2; done; exit 1";
    let client_id = srv.submit(&json!({
        "image": "local/busybox",
        "command": ["sh", "-c", client],
        "networkMode": "web",
        "name": "client",
        "memoryMiB": 128,
    }));

    let t = srv.wait_task(&id, "running", LONG, |t| {
        t["state"] == "RUNNING" || t["state"] == "STOPPED"
    });
    assert_eq!(t["state"], "RUNNING", "{t:#}");
    assert_eq!(t["networkMode"], "web", "{t:#}");
    assert_eq!(t["portMappings"][0]["hostPort"], 18088, "{t:#}");
    let ip = t["networkInterfaces"][0]["privateIpv4Address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address: {t:#}"))
        .to_owned();
    assert!(ip.starts_with("10.90.0."), "{t:#}");
    assert_eq!(t["networkInterfaces"][0]["gateway"], "10.90.0.1");
    // In use: the network cannot go.
    let (status, v) = srv.request("DELETE", "/v1/networks/web", None);
    assert_eq!(status.as_u16(), 409, "{v}");

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
    assert!(out.contains("default via 10.90.0.1 dev eth0"), "{out}");
    assert!(out.contains("nameserver 10.90.0.1"), "{out}");
    assert!(out.contains("hello from the internet"), "{out}");
    // Dropped: timeout's 143 (not refused: 1, nor a crash: 139).
    assert!(out.contains("10.90.0.1:18081: 143"), "{out}");
    assert!(out.contains("10.200.1.1:18081: 143"), "{out}");

    let c = srv.wait_stopped(&client_id, LONG);
    let client_out = String::from_utf8_lossy(&srv.logs(&client_id).0).into_owned();
    assert_eq!(c["exitCode"], 0, "{c:#}\n{client_out}");
    assert!(client_out.contains("served by the task"), "{client_out}");

    // The first task's start built a snapshot of a VM with a network card (unless a server
    // before this one did, in the shared snapshot dir): a third task restores it, gets its
    // own MAC and address, and serves its own published port.
    let snap_deadline = Instant::now() + LONG;
    while !net_snapshot_ready(&srv.snapshot_dir) {
        assert!(
            Instant::now() < snap_deadline,
            "no snapshot with a network card"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let again = "ip -o link show eth0; mkdir /www && echo restored > /www/index.html && \
                 exec httpd -f -p 80 -h /www";
    let again_id = srv.submit(&json!({
        "image": "local/busybox",
        "command": ["sh", "-c", again],
        "networkMode": "web",
        "portMappings": [{"containerPort": 80, "hostPort": 18089, "hostIp": "127.0.0.1"}],
        "memoryMiB": 128,
    }));
    let t = srv.wait_task(&again_id, "running", LONG, |t| {
        t["state"] == "RUNNING" || t["state"] == "STOPPED"
    });
    assert_eq!(t["state"], "RUNNING", "{t:#}");
    assert_eq!(t["startMode"], "snapshot", "{t:#}");
    let answer = get_in(
        &host,
        "127.0.0.1:18089",
        "/index.html",
        Instant::now() + LONG,
    );
    assert!(answer.contains("restored"), "{answer}");
    let mac = t["networkInterfaces"][0]["macAddress"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = String::from_utf8(srv.logs(&again_id).0).unwrap();
    assert!(out.contains(&format!("link/ether {mac}")), "{mac}: {out}");

    let (status, v) = srv.request("POST", &format!("/v1/tasks/{id}/stop"), None);
    assert!(status.is_success(), "{v}");
    srv.wait_stopped(&id, LONG);
    // The server dies with the third task running; the next one tears its network down
    // and keeps the named network.
    srv.kill();
    let srv = host.run(|| Serve::start(&dir, &serve_args));
    let t = srv.wait_stopped(&again_id, LONG);
    assert_eq!(t["stopCode"], "ControlPlaneRestarted", "{t:#}");
    let (status, v) = srv.request("GET", "/v1/networks/web", None);
    assert_eq!(status.as_u16(), 200, "{v}");
    assert_eq!(v["bridge"], bridge.as_str(), "{v}");
    // The tasks' namespaces, address leases and records are gone, and the snapshot
    // build's namespace too.
    let left = skiff_tests::netns::added_since(&netns_before, "skiff-snap-");
    assert!(left.is_empty(), "{left:?}");
    for task in [&id, &client_id, &again_id] {
        let ns = format!("/run/netns/skiff-{}", &task[..16.min(task.len())]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::path::Path::new(&ns).exists() {
            assert!(Instant::now() < deadline, "{ns} is still there");
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(!dir.join("tasks").join(task).join("network.json").exists());
    }
    let leases = skiff_tests::serve::leases(&dir, "skiff-web");
    assert!(leases.is_empty(), "{leases:?}");
    // Nor are the published port's rules, and the host port is free again.
    host.run(|| {
        let rules = std::process::Command::new("iptables-save")
            .output()
            .unwrap();
        let rules = String::from_utf8_lossy(&rules.stdout);
        assert!(
            !rules.contains("18088") && !rules.contains("18089"),
            "{rules}"
        );
        TcpListener::bind("0.0.0.0:18088").unwrap();
        TcpListener::bind("127.0.0.1:18089").unwrap();
    });
    // A build whose `RUN` step joins the default network (`--network default`) fetches
    // from the internet through it but cannot reach the host's service; the step's VM restores the snapshot with a network
    // card (same shape: 1 vCPU, 128 MiB), and its namespace and lease go with the VM.
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM local/busybox:latest\n\
         RUN timeout 10 wget -q -O /fetched http://example.test:18080/build && cat /fetched && \\\n\
           for a in 10.89.7.1:18081 10.200.1.1:18081; do \\\n\
             timeout 5 wget -q -O - http://$a/ >/dev/null 2>&1; echo \"$a: $?\"; done\n",
    )
    .unwrap();
    let build = |network: &str| {
        std::process::Command::new(skiff_tests::paths::skiff())
            .arg("--state-dir")
            .arg(&dir)
            .args([
                "build",
                "--progress",
                "plain",
                "--no-cache",
                "--memory",
                "128",
            ])
            .args(["--network", network, "-t", "fetched:1"])
            .arg(ctx.path())
            .env("SKIFF_API", &srv.listening)
            .env_remove("SKIFF_LOG")
            .output()
            .unwrap()
    };
    let t0 = Instant::now();
    let o = build("default");
    eprintln!("the build with --network default took {:?}", t0.elapsed());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("hello from the internet"), "{err}");
    // A step is held to a task's isolation: the host's service, on the gateway and on the
    // uplink, is dropped (timeout's 143).
    assert!(err.contains("10.89.7.1:18081: 143"), "{err}");
    assert!(err.contains("10.200.1.1:18081: 143"), "{err}");
    let left = skiff_tests::netns::added_since(&netns_before, "skiff-b");
    assert!(
        left.is_empty(),
        "a build step's namespace is left: {left:?}"
    );
    // (No task is on the default network now.)
    let leases = skiff_tests::serve::leases(&dir, "skiff");
    assert!(
        leases.is_empty(),
        "the step's address lease is freed: {leases:?}"
    );
    // Without a network the same step reaches nothing (no snapshot of that shape may be
    // ready: this one may boot).
    let t0 = Instant::now();
    let o = build("none");
    eprintln!("the build with --network none took {:?}", t0.elapsed());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("exited with code"), "{err}");
    let o = build("host");
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--network host: give none or default"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // A server killed while a build's step holds a network: after the restart the build
    // is FAILED with ControlPlaneRestarted, and the step's namespace and lease are gone.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        // The output's marker is not the instruction's text, which the CLI shows first.
        "FROM local/busybox:latest\nRUN echo holding-net-$((40 + 2)); sleep 600\n",
    )
    .unwrap();
    let mut holder = std::process::Command::new(skiff_tests::paths::skiff())
        .arg("--state-dir")
        .arg(&dir)
        .args(["build", "--progress", "plain", "--memory", "128"])
        .args(["--network", "default", "-t", "holder:1"])
        .arg(ctx.path())
        .env("SKIFF_API", &srv.listening)
        .env_remove("SKIFF_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(holder.stderr.take().unwrap()));
    let mut said = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let running = line.contains("holding-net-42");
        said.push(line);
        if running {
            break;
        }
    }
    assert!(
        said.iter().any(|l| l.contains("holding-net-42")),
        "{said:?}"
    );
    let held = skiff_tests::netns::added_since(&netns_before, "skiff-b");
    assert_eq!(held.len(), 1, "the step's namespace: {held:?}");
    assert_eq!(skiff_tests::serve::leases(&dir, "skiff").len(), 1);
    let mut srv = srv;
    srv.kill();
    // The CLI that followed the build ends with the server, with an error.
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = holder.wait().unwrap();
    assert!(!status.success(), "{said:?} {rest:?}");
    let srv = host.run(|| Serve::start(&dir, &serve_args));
    let (_, builds) = srv.request("GET", "/v1/builds", None);
    let b = builds["builds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| {
            b["tags"][0]
                .as_str()
                .is_some_and(|t| t.ends_with("holder:1"))
        })
        .unwrap_or_else(|| panic!("{builds:#}"))
        .clone();
    assert_eq!(b["state"], "FAILED", "{b:#}");
    assert_eq!(b["error"]["code"], "ControlPlaneRestarted", "{b:#}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !skiff_tests::netns::added_since(&netns_before, "skiff-b").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the step's namespace {held:?} is left"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let leases = skiff_tests::serve::leases(&dir, "skiff");
    assert!(leases.is_empty(), "the step's lease is left: {leases:?}");

    // Unused now, the network goes, with its bridge and lease directory.
    let (status, v) = srv.request("DELETE", "/v1/networks/web", None);
    assert_eq!(status.as_u16(), 204, "{v}");
    let (status, _) = srv.request("GET", "/v1/networks/web", None);
    assert_eq!(status.as_u16(), 404);
    let links = std::process::Command::new("ip")
        .args(["-n", &host.name, "-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains(&format!(" {bridge}:")), "{links}");
    assert!(!dir.join("cni/ipam/skiff-web").exists());
    let (_, all) = srv.request("GET", "/v1/networks", None);
    assert_eq!(all["networks"].as_array().unwrap().len(), 1, "{all}");
    assert_eq!(all["networks"][0]["name"], "default", "{all}");
}

#[test]
fn without_the_plugins_networked_tasks_are_refused_with_the_reason() {
    let dir = state_dir("network-none");
    let srv = Serve::start(
        &dir,
        &[
            "--no-snapshots",
            "--cni-plugin-dir",
            "/nonexistent",
            "--default-network",
            "default",
        ],
    );
    // A task that names no network gets the default one, which this server cannot make:
    // the refusal says why and how to do without.
    let (status, v) = srv.request(
        "POST",
        "/v1/tasks",
        Some(&json!({"image": "local/busybox"}).to_string()),
    );
    assert_eq!(status.as_u16(), 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("networkMode:")
            && msg.contains("/nonexistent")
            && msg.contains("--default-network none"),
        "{msg}"
    );
    let (status, v) = srv.request(
        "POST",
        "/v1/tasks",
        Some(&json!({"image": "local/busybox", "networkMode": "host"}).to_string()),
    );
    assert_eq!(status.as_u16(), 400, "{v}");
    // So is a build whose `RUN` steps ask for the default network.
    let (status, v) = srv.request(
        "POST",
        "/v1/builds",
        Some(
            &json!({"contextId": "c", "dockerfile": "FROM local/busybox\nRUN true\n",
                    "network": "default"})
            .to_string(),
        ),
    );
    assert_eq!(status.as_u16(), 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("network: this server has no networks for RUN steps")
            && msg.contains("/nonexistent"),
        "{msg}"
    );
    // Bad published ports are refused before anything is made, naming the field.
    for (body, field) in [
        (
            json!({"image": "local/busybox", "networkMode": "default",
                   "portMappings": [{"containerPort": 70000}]}),
            "portMappings[0].containerPort",
        ),
        (
            json!({"image": "local/busybox", "networkMode": "none",
                   "portMappings": [{"containerPort": 80}]}),
            "portMappings",
        ),
    ] {
        let (status, v) = srv.request("POST", "/v1/tasks", Some(&body.to_string()));
        assert_eq!(status.as_u16(), 400, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{field}:")), "{msg}");
    }
}
