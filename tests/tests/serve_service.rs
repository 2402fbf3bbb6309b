//! Services through a real `skiff serve` (issue 15), in a test "host" namespace of the
//! test's own. One service of busybox `httpd` tasks behind a load-balanced host port goes
//! through a service's life, sharing its VMs from step to step:
//! - bad requests are refused with 400/409 naming the field;
//! - two tasks become healthy and `curl` through the port reaches both;
//! - `kill -9` of one task's VMM: the task is replaced and the service is back to two
//!   healthy tasks;
//! - one task's health check starts failing (a CGI script of its own removes the page the
//!   check asks for): that task is replaced;
//! - scaled 2 → 3 → 1 (with the CLI);
//! - a rolling update of the served page while a client asks once a second through the
//!   port: no request fails and the page changes (the new revision is checked by a command
//!   the agent runs in the task);
//! - a template whose tasks never become healthy: the deployment rolls back and the old
//!   tasks keep serving;
//! - the server is killed and started again: the service comes back to its desired state,
//!   its revision and events kept;
//! - deleted: its tasks stop, then it is gone and its port closes;
//! - `skiff apply -f` of a YAML file makes a named network and a service whose tasks burn
//!   CPU for a minute, with autoscaling; a second apply changes nothing; the service's name
//!   resolves to its tasks on the network; it scales out to its maximum while they burn,
//!   then back in to its minimum.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skiff_tests::kvm_available;
use skiff_tests::netns::{in_netns, TestNetns};
use skiff_tests::serve::{state_dir, Serve};

const LONG: Duration = Duration::from_secs(600);
const LB: &str = "127.0.0.1:18480";

/// The command of the tasks: a page saying `version` and the task's hostname, a health
/// page, and a CGI script that removes the health page (the task "falls ill").
fn httpd(version: &str) -> Value {
    let script = format!(
        "mkdir -p /www/cgi-bin && echo \"{version} $(hostname)\" > /www/index.html && \
         echo ok > /www/health && \
         printf '#!/bin/sh\\nrm -f /www/health\\nprintf \"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\nsick\\\\n\"\\n' \
           > /www/cgi-bin/sick && chmod +x /www/cgi-bin/sick && \
         exec httpd -f -p 80 -h /www"
    );
    json!(["sh", "-c", script])
}

fn template(version: &str) -> Value {
    json!({"image": "local/busybox", "command": httpd(version), "memoryMiB": 128})
}

/// GET http://ADDR/PATH once (from the calling thread's namespace): the body of a 200.
fn get(addr: &str, path: &str, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), timeout)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read {addr}{path}: {e} after {out:?}"))?;
    match out.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
        {
            Ok(body.to_owned())
        }
        _ => Err(format!("GET {addr}{path}: {out:?}")),
    }
}

fn service(srv: &Serve, name: &str) -> Value {
    srv.get(&format!("/v1/services/{name}"))
}

/// Waits until `cond` holds for the service (checked twice a second).
fn wait_service(srv: &Serve, name: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + LONG;
    loop {
        let s = service(srv, name);
        if cond(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "service {name} not {what} after {LONG:?}: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Healthy tasks (not being stopped), and nothing else running or on its way.
fn settled(s: &Value, n: u64) -> bool {
    s["healthyCount"] == n
        && s["tasks"].as_array().unwrap().len() as u64 == n
        && s["deployment"]["state"] != "IN_PROGRESS"
}

fn task_ids(s: &Value) -> Vec<String> {
    let mut v: Vec<String> = s["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["taskId"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

fn events(s: &Value) -> String {
    s["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

fn refused(srv: &Serve, method: &str, path: &str, body: Value, code: u16, needle: &str) {
    let (status, v) = srv.request(method, path, Some(&body.to_string()));
    assert_eq!(status.as_u16(), code, "{body}: {v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(needle), "{body}: {msg}");
}

/// A client asking through the load balancer once a second until stopped: the answers,
/// in order.
struct Client {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Result<String, String>>>,
}

impl Client {
    fn start(host: &TestNetns) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let (path, stop2) = (host.path(), stop.clone());
        let thread = std::thread::spawn(move || {
            in_netns(&path, || {
                let mut out = Vec::new();
                while !stop2.load(Ordering::SeqCst) {
                    out.push(get(LB, "/index.html", Duration::from_secs(30)));
                    std::thread::sleep(Duration::from_secs(1));
                }
                out
            })
        });
        Client { stop, thread }
    }

    fn finish(self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

fn skiff_cli(srv: &Serve, args: &[&str]) -> String {
    let out = Command::new(skiff_tests::paths::skiff())
        .env("SKIFF_API", &srv.listening)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skiff {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_service_is_kept_healthy_scaled_rolled_out_and_rolled_back() {
    if !kvm_available("a_service_is_kept_healthy_scaled_rolled_out_and_rolled_back") {
        return;
    }
    let host = TestNetns::new("svc");
    let dir = state_dir("service");
    let args = [
        "--default-network",
        "default",
        "--network-subnet",
        "10.89.8.0/24",
        "--cpus",
        "4",
    ];
    let mut srv = host.run(|| Serve::start(&dir, &args));
    let health = json!({"httpGet": {"port": 80, "path": "/health"},
                        "intervalSeconds": 4, "timeoutSeconds": 4, "retries": 3,
                        "startPeriodSeconds": 120});
    let web = json!({
        "name": "web", "desiredCount": 2, "taskTemplate": template("v1"),
        "healthCheck": health,
        "deployment": {"minimumHealthyPercent": 100, "maximumPercent": 150},
        "loadBalancer": {"hostPort": 18480, "containerPort": 80, "hostIp": "127.0.0.1"},
    });

    // Bad requests.
    let with = |k: &str, v: Value| {
        let mut b = web.clone();
        b[k] = v;
        b
    };
    for (body, needle) in [
        (with("desiredCount", json!(-1)), "desiredCount: -1"),
        (with("desiredCount", json!(99)), "desiredCount: 99 tasks"),
        (
            with("healthCheck", json!({"intervalSeconds": 3})),
            "healthCheck: no way to check",
        ),
        (with("replicas", json!(2)), "unknown field `replicas`"),
        (
            with(
                "taskTemplate",
                json!({"image": "local/busybox", "portMappings": [{"containerPort": 80}]}),
            ),
            "taskTemplate.portMappings",
        ),
        (
            with(
                "taskTemplate",
                json!({"image": "local/busybox", "networkMode": "nosuch"}),
            ),
            "taskTemplate.networkMode: no network named \"nosuch\"",
        ),
    ] {
        refused(&srv, "POST", "/v1/services", body, 400, needle);
    }
    // A port a host program has.
    let taken = host.run(|| std::net::TcpListener::bind("127.0.0.1:18481").unwrap());
    refused(
        &srv,
        "POST",
        "/v1/services",
        with(
            "loadBalancer",
            json!({"hostPort": 18481, "containerPort": 80, "hostIp": "127.0.0.1"}),
        ),
        409,
        "loadBalancer.hostPort",
    );
    drop(taken);

    // Two healthy tasks behind the port.
    let t0 = Instant::now();
    let (status, v) = srv.request("POST", "/v1/services", Some(&web.to_string()));
    assert_eq!(status.as_u16(), 201, "{v}");
    refused(&srv, "POST", "/v1/services", web.clone(), 409, "exists");
    let s = wait_service(&srv, "web", "2 healthy", |s| settled(s, 2));
    eprintln!(
        "FIGURE service of 2 healthy after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(s["deployment"]["state"], "COMPLETED", "{s:#}");
    assert_eq!(s["runningCount"], 2, "{s:#}");
    let pages: Vec<String> = host.run(|| {
        (0..6)
            .map(|_| get(LB, "/index.html", Duration::from_secs(30)).unwrap())
            .collect()
    });
    assert!(pages.iter().all(|p| p.starts_with("v1 ")), "{pages:?}");
    let hosts: std::collections::HashSet<&String> = pages.iter().collect();
    assert_eq!(hosts.len(), 2, "both tasks answer: {pages:?}");
    // The tasks carry the service's labels.
    let ids = task_ids(&s);
    let t = srv.task(&ids[0]);
    assert_eq!(t["labels"]["skiff.service"], "web", "{t:#}");
    assert_eq!(t["labels"]["skiff.service.revision"], "1", "{t:#}");

    // kill -9 of one task's VMM: replaced.
    let victim = &ids[0];
    let pid = srv.task(victim)["vmmPid"].as_u64().unwrap();
    let killed = Instant::now();
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let s = wait_service(&srv, "web", "2 healthy after a VMM was killed", |s| {
        settled(s, 2) && !task_ids(s).contains(victim)
    });
    eprintln!(
        "FIGURE task whose VMM was killed replaced (2 healthy) in {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    assert!(
        events(&s).contains(&format!("task {victim} ended")),
        "{}",
        events(&s)
    );
    assert_eq!(srv.task(victim)["state"], "STOPPED");

    // One task's health check starts failing: it is replaced.
    let ids = task_ids(&s);
    let ill = ids[0].clone();
    let ip = srv.task(&ill)["networkInterfaces"][0]["privateIpv4Address"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = host.run(|| {
        get(
            &format!("{ip}:80"),
            "/cgi-bin/sick",
            Duration::from_secs(30),
        )
    });
    assert_eq!(answer.as_deref().map(str::trim), Ok("sick"), "{answer:?}");
    let s = wait_service(&srv, "web", "2 healthy after one fell ill", |s| {
        settled(s, 2) && !task_ids(s).contains(&ill)
    });
    let ev = events(&s);
    assert!(
        ev.contains(&format!(
            "task {ill} failed its health check 3 times in a row"
        )),
        "{ev}"
    );
    // (404 once the page is gone; a PVM guest busy forking may also not answer in time.)
    assert!(
        ev.contains(&format!(
            "failed its health check 3 times in a row (GET http://{ip}:80/health: "
        )),
        "{ev}"
    );

    // Scale 2 -> 3 -> 1, with the CLI.
    skiff_cli(&srv, &["service", "scale", "web", "3"]);
    wait_service(&srv, "web", "3 healthy", |s| settled(s, 3));
    skiff_cli(&srv, &["service", "scale", "web", "1"]);
    let s = wait_service(&srv, "web", "1 healthy", |s| settled(s, 1));
    let ls = skiff_cli(&srv, &["service", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("web ") && l.contains(" 1 ")),
        "{ls}"
    );
    assert!(events(&s).contains("scaling in to 1"), "{}", events(&s));
    skiff_cli(&srv, &["service", "scale", "web", "2"]);
    let s = wait_service(&srv, "web", "2 healthy", |s| settled(s, 2));

    // A rolling update while a client asks once a second: no request fails.
    let client = Client::start(&host);
    std::thread::sleep(Duration::from_secs(2));
    let rolled = Instant::now();
    // Revision 2 is checked by a command the agent runs in the task.
    // (A fork and an exec in a PVM guest next to VMs being restored can take seconds.)
    let by_command = json!({"command": ["sh", "-c", "test -f /www/health"],
                            "intervalSeconds": 6, "timeoutSeconds": 6, "retries": 3,
                            "startPeriodSeconds": 120});
    let (status, v) = srv.request(
        "PATCH",
        "/v1/services/web",
        Some(&json!({"taskTemplate": template("v2"), "healthCheck": by_command}).to_string()),
    );
    assert_eq!(status.as_u16(), 200, "{v}");
    assert_eq!(v["current"]["revision"], 2, "{v}");
    let s2 = wait_service(&srv, "web", "rolled out to revision 2", |s| {
        settled(s, 2) && s["deployment"]["revision"] == 2
    });
    eprintln!(
        "FIGURE rolling update of 2 tasks in {:.1} s",
        rolled.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    let answers = client.finish();
    let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        answers.len()
    );
    // v1 first, v2 at the end (both while the old and new tasks serve side by side).
    let page = |i: usize| {
        answers[i]
            .as_ref()
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        (page(0), page(answers.len() - 1)),
        ("v1".into(), "v2".into()),
        "{answers:?}"
    );
    assert_eq!(s2["deployment"]["state"], "COMPLETED", "{s2:#}");
    let serving = task_ids(&s2);
    assert!(
        serving.iter().all(|id| !task_ids(&s).contains(id)),
        "all tasks replaced"
    );

    // A template whose tasks never become healthy: rolled back; the old tasks serve on.
    let client = Client::start(&host);
    let never = json!({"image": "local/busybox", "command": ["sleep", "3600"], "memoryMiB": 128});
    let quick = json!({"command": ["sh", "-c", "echo no health here; exit 3"],
                       "intervalSeconds": 2, "timeoutSeconds": 2, "retries": 2});
    let (status, v) = srv.request(
        "PATCH",
        "/v1/services/web",
        Some(&json!({"taskTemplate": never, "healthCheck": quick}).to_string()),
    );
    assert_eq!(status.as_u16(), 200, "{v}");
    let s = wait_service(&srv, "web", "rolled back", |s| {
        s["deployment"]["state"] == "ROLLED_BACK" && settled(s, 2)
    });
    let answers = client.finish();
    assert_eq!(s["current"]["revision"], 2, "{s:#}");
    assert_eq!(s["deployment"]["revision"], 3, "{s:#}");
    assert_eq!(task_ids(&s), serving, "the old tasks were kept");
    let ev = events(&s);
    assert!(ev.contains("deployment of revision 3 failed"), "{ev}");
    assert!(ev.contains("rolled back to revision 2"), "{ev}");
    assert!(ev.contains("the command exited 3: no health here"), "{ev}");
    // Every answer came from the old revision's tasks. (While VMs of the failing revision
    // are restored one after another, a PVM guest on this 2-core host can stall for tens of
    // seconds: a request may then time out; most must not.)
    let ok: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    assert!(ok.iter().all(|p| p.starts_with("v2 ")), "{answers:?}");
    assert!(ok.len() * 4 >= answers.len() * 3, "{answers:?}");

    // The server dies and comes back: so does the service.
    // A PVM stall may have cost an old task its health check meanwhile (it is then
    // replaced): the gauge is read once the service is back at 2 healthy.
    let deadline = Instant::now() + LONG;
    let metrics = loop {
        let metrics = srv.get_text("/metrics");
        if metrics.contains("skiff_service_healthy_tasks{service=\"web\"} 2") {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "not 2 healthy after {LONG:?}: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        metrics
            .contains("skiff_service_deployments_total{service=\"web\",outcome=\"rolled_back\"} 1"),
        "{metrics}"
    );
    srv.kill();
    let mut srv = host.run(|| Serve::start(&dir, &args));
    let s = wait_service(&srv, "web", "back to 2 healthy after a restart", |s| {
        settled(s, 2) && task_ids(s).iter().all(|id| !serving.contains(id))
    });
    assert_eq!(s["current"]["revision"], 2, "{s:#}");
    assert!(
        events(&s).contains("rolled back to revision 2"),
        "events kept"
    );
    let page = host.run(|| get(LB, "/index.html", Duration::from_secs(30)));
    assert!(
        page.as_deref().is_ok_and(|p| p.starts_with("v2 ")),
        "{page:?}"
    );

    // Deleted: drained, then gone, and the port closes.
    let ids = task_ids(&s);
    let (status, v) = srv.request("DELETE", "/v1/services/web", None);
    assert_eq!(status.as_u16(), 202, "{v}");
    assert_eq!(v["status"], "DRAINING", "{v}");
    refused(
        &srv,
        "PATCH",
        "/v1/services/web",
        json!({"desiredCount": 3}),
        409,
        "being deleted",
    );
    let deadline = Instant::now() + LONG;
    while srv.request("GET", "/v1/services/web", None).0.as_u16() != 404 {
        assert!(Instant::now() < deadline, "the service was not deleted");
        std::thread::sleep(Duration::from_millis(500));
    }
    for id in &ids {
        assert_eq!(srv.task(id)["state"], "STOPPED");
    }
    assert!(
        host.run(|| TcpStream::connect(LB)).is_err(),
        "the port still listens"
    );

    autoscaled_from_a_file(&host, &srv);
    srv.kill();
}

/// The A records `name` has at the DNS server `server` (from the calling thread's namespace).
fn resolve(server: std::net::SocketAddr, name: &str) -> Vec<std::net::Ipv4Addr> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(&m.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("no DNS answer");
    let answer = Message::from_vec(&buf[..n]).unwrap();
    let mut ips: Vec<_> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    ips.sort();
    ips
}

const SHOP: &str = "\
# A network and a service that burns CPU for its first minute.
networks:
  - name: shop
services:
  - name: burn
    desiredCount: 1
    taskTemplate:
      image: local/busybox
      networkMode: shop
      memoryMiB: 128
      command: [sh, -c, \"timeout 60 sh -c 'while :; do :; done'; exec sleep 3600\"]
    autoscaling:
      minCount: 1
      maxCount: 3
      targetCpuPercent: 50
      scaleOutCooldownSeconds: 10
      scaleInCooldownSeconds: 20
";

fn autoscaled_from_a_file(host: &TestNetns, srv: &Serve) {
    let file = srv.state_dir.join("shop.yaml");
    std::fs::write(&file, SHOP).unwrap();
    let file = file.to_str().unwrap();
    let out = skiff_cli(srv, &["apply", "-f", file]);
    assert_eq!(out, "network shop: created\nservice burn: created\n");
    let before = service(srv, "burn");
    let out = skiff_cli(srv, &["apply", "-f", file]);
    assert_eq!(out, "network shop: unchanged\nservice burn: unchanged\n");
    let after = service(srv, "burn");
    assert_eq!(before["updatedMs"], after["updatedMs"]);
    assert_eq!(before["events"], after["events"]);

    // Out to the maximum while the tasks burn; the name resolves to the running tasks.
    let t0 = Instant::now();
    let s = wait_service(srv, "burn", "scaled out to 3", |s| {
        s["desiredCount"] == 3 && s["healthyCount"] == 3
    });
    eprintln!(
        "FIGURE autoscaled 1 -> 3 in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let ev = events(&s);
    assert!(ev.contains("autoscaling: average CPU"), "{ev}");
    let burning = s["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["cpuPercent"].as_f64());
    assert!(burning.clone().any(|c| c > 50.0), "{s:#}");
    let gateway = srv.get("/v1/networks/shop")["gateway"]
        .as_str()
        .unwrap()
        .to_owned();
    let dns = format!("{gateway}:53").parse().unwrap();
    let mut ips: Vec<std::net::Ipv4Addr> = s["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["privateIpv4Address"].as_str().unwrap().parse().unwrap())
        .collect();
    ips.sort();
    assert_eq!(host.run(|| resolve(dns, "burn")), ips);

    // Back in to the minimum once they idle.
    let t0 = Instant::now();
    let s = wait_service(srv, "burn", "scaled in to 1", |s| {
        settled(s, 1) && s["desiredCount"] == 1
    });
    eprintln!(
        "FIGURE autoscaled back to 1 in {:.1} s after reaching 3",
        t0.elapsed().as_secs_f64()
    );
    assert!(events(&s).contains("-> 1"), "{}", events(&s));
    assert_eq!(host.run(|| resolve(dns, "burn")).len(), 1);
    skiff_cli(srv, &["service", "rm", "burn"]);
    let deadline = Instant::now() + LONG;
    while srv.request("GET", "/v1/services/burn", None).0.as_u16() != 404 {
        assert!(Instant::now() < deadline, "the service was not deleted");
        std::thread::sleep(Duration::from_millis(500));
    }
}
