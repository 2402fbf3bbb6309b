//! Through a real `skiff serve` with real VMs: a stop, a timeout, an out-of-memory task,
//! an unknown image, and bad requests answered with the right 4xx.

use skiff_tests::serve as harness;

use std::time::Duration;

use harness::{state_dir, vmms_under, Serve};
use reqwest::StatusCode;
use serde_json::json;
use skiff_tests::kvm_available;

const LONG: Duration = Duration::from_secs(1200);

#[test]
fn stop_timeout_oom_and_unknown_image() {
    if !kvm_available("stop_timeout_oom_and_unknown_image") {
        return;
    }
    let dir = state_dir("lifecycle");
    let srv = Serve::start(&dir, &["--cpus", "3", "--memory-mib", "1024"]);
    let stop_me = srv.submit(&json!({
        "image": "local/busybox",
        "command": ["sh", "-c", "trap 'echo got TERM; exit 42' TERM; echo up; while :; do sleep 1; done"],
        "stopTimeoutSeconds": 30,
    }));
    let timeout = srv.submit(&json!({
        "image": "local/busybox",
        "command": ["sleep", "1000"],
        "timeoutSeconds": 5,
    }));
    // dd's 300 MiB buffer does not fit a 128 MiB VM: the guest's OOM killer ends it.
    let oom = srv.submit(&json!({
        "image": "local/busybox",
        "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=300M", "count=1"],
        "memoryMiB": 128,
    }));
    let unknown = srv.submit(&json!({"image": "local/no-such-image:1.0", "command": ["true"]}));

    // Unknown image: fails in PROVISIONING, no VM.
    let t = srv.wait_stopped(&unknown, Duration::from_secs(60));
    assert_eq!(t["stopCode"], "TaskFailedToStart", "{t:#}");
    let reason = t["stoppedReason"].as_str().unwrap();
    assert!(reason.contains("not found"), "{reason}");
    assert!(t["phases"]["vmStartedMs"].is_null());

    // Stop: once its output shows it runs, SIGTERM reaches the process, which exits 42.
    srv.wait_task(&stop_me, "printing", LONG, |_| {
        String::from_utf8_lossy(&srv.logs(&stop_me).0).contains("up")
    });
    let (s, v) = srv.request("POST", &format!("/v1/tasks/{stop_me}/stop"), None);
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["state"], "STOPPING", "{v:#}");
    let t = srv.wait_stopped(&stop_me, LONG);
    assert_eq!(t["stopCode"], "UserInitiated", "{t:#}");
    assert_eq!(t["exitCode"], 42, "{t:#}");
    assert_eq!(
        String::from_utf8_lossy(&srv.logs(&stop_me).0),
        "up\ngot TERM\n"
    );
    // Stopping a stopped task: 409.
    let (s, v) = srv.request("POST", &format!("/v1/tasks/{stop_me}/stop"), None);
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    let t = srv.wait_stopped(&timeout, LONG);
    assert_eq!(t["stopCode"], "Timeout", "{t:#}");
    assert_eq!(t["stoppedReason"], "timed out after 5 s", "{t:#}");

    let t = srv.wait_stopped(&oom, LONG);
    assert_eq!(t["stopCode"], "OutOfMemory", "{t:#}");
    assert_eq!(t["exitCode"], 137, "{t:#}");
    assert!(
        t["stoppedReason"]
            .as_str()
            .unwrap()
            .contains("out of memory"),
        "{t:#}"
    );

    // Every VM is gone and all capacity is back.
    assert!(vmms_under(&dir).is_empty(), "{:?}", vmms_under(&dir));
    let m = srv.get_text("/metrics");
    assert!(m.contains("skiff_used_vcpus 0"), "{m}");
    assert!(
        m.contains("skiff_tasks_stopped_total{stop_code=\"OutOfMemory\"} 1"),
        "{m}"
    );
}

#[test]
fn bad_requests_get_the_right_4xx() {
    // No VM is started here, but the server needs its kernel and agent paths.
    if !kvm_available("bad_requests_get_the_right_4xx") {
        return;
    }
    let dir = state_dir("badreq");
    let srv = Serve::start(&dir, &["--cpus", "2", "--memory-mib", "1024"]);
    for (body, status, needle) in [
        (
            r#"{"image":"local/busybox","cpus":2}"#,
            400,
            "unknown field `cpus`",
        ),
        (
            r#"{"image":"local/busybox","cpu":-1}"#,
            400,
            "cpu: invalid value",
        ),
        (r#"{"image":"local/busybox","cpu":0}"#, 400, "cpu: 0 vCPUs"),
        (
            r#"{"image":"local/busybox","cpu":3}"#,
            400,
            "cpu: 3 vCPUs exceed",
        ),
        (
            r#"{"image":"local/busybox","memoryMiB":-5}"#,
            400,
            "memoryMiB: invalid value",
        ),
        (
            r#"{"image":"local/busybox","memoryMiB":99999999}"#,
            400,
            "memoryMiB:",
        ),
        (r#"{"image":""}"#, 400, "image: must not be empty"),
        (r#"{"command":["true"]}"#, 400, "missing field `image`"),
        (
            r#"{"image":"local/busybox","env":{"A=B":"x"}}"#,
            400,
            "env:",
        ),
        (
            r#"{"image":"local/busybox","timeoutSeconds":0}"#,
            400,
            "timeoutSeconds:",
        ),
        (r#"{"image": "#, 400, "malformed JSON"),
        ("[1,2]", 400, "invalid type"),
    ] {
        let (s, v) = srv.request("POST", "/v1/tasks", Some(body));
        assert_eq!(s.as_u16(), status, "{body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{body}: {msg}");
        assert_eq!(v["error"]["code"], "invalid_request");
    }
    let huge = format!(
        r#"{{"image":"local/busybox","command":["{}"]}}"#,
        "x".repeat(300_000)
    );
    let (s, v) = srv.request("POST", "/v1/tasks", Some(&huge));
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], "payload_too_large");
    let (s, v) = srv.request("GET", "/v1/tasks/0123456789abcdef", None);
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = srv.request("POST", "/v1/tasks/0123456789abcdef/stop", None);
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = srv.request("GET", "/v1/tasks/0123456789abcdef/logs", None);
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = srv.request("GET", "/v1/tasks?state=SLEEPING", None);
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("state:"),
        "{v}"
    );
    let (s, _) = srv.request("GET", "/v1/tasks?limit=0", None);
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = srv.request("DELETE", "/v1/tasks", None);
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _) = srv.request("GET", "/v2/nothing", None);
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = srv.request("POST", "/v1/images", Some(r#"{"reference":"Not A Ref"}"#));
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Nothing was stored by any of that.
    assert_eq!(srv.get("/v1/tasks")["tasks"].as_array().unwrap().len(), 0);
    // The API describes itself, and the document in the repo is what it serves.
    let doc = srv.get("/v1/openapi.json");
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/tasks/{id}/logs"].is_object());
    assert!(doc["paths"]["/v1/networks/{name}"].is_object());
    assert!(doc["paths"]["/v1/services/{name}"].is_object());
}

#[test]
fn the_api_is_a_private_unix_socket_and_tcp_needs_a_token() {
    if !kvm_available("the_api_is_a_private_unix_socket_and_tcp_needs_a_token") {
        return;
    }
    let dir = state_dir("token");
    // By default: the Unix socket in the state dir, mode 0660, and the CLI finds it there.
    {
        let srv = Serve::start(&dir, &[]);
        let sock = dir.join("skiff.sock");
        assert_eq!(srv.listening, format!("unix://{}", sock.display()));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&sock).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o660);
        for api in [None, Some(srv.listening.as_str())] {
            let mut cmd = std::process::Command::new(skiff_tests::paths::skiff());
            cmd.arg("--state-dir").arg(&dir).args(["ps", "-a"]);
            match api {
                Some(a) => cmd.env("SKIFF_API", a),
                None => cmd.env_remove("SKIFF_API"),
            };
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{api:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // TCP, loopback included, is refused at start without a token.
    for listen in ["127.0.0.1:0", "0.0.0.0:0"] {
        let out = std::process::Command::new(skiff_tests::paths::skiff())
            .arg("--state-dir")
            .arg(&dir)
            .args(["serve", "--listen", listen])
            .env_remove("SKIFF_TOKEN")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(125));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("needs a bearer token"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // With one, requests without it or with a wrong one get 401; /healthz stays open.
    let srv = Serve::start_with(
        &dir,
        &["--listen", "127.0.0.1:0"],
        &[("SKIFF_TOKEN", "s3cret-token")],
    );
    assert!(
        srv.listening.starts_with("http://127.0.0.1:"),
        "{}",
        srv.listening
    );
    let c = reqwest::blocking::Client::new();
    let r = c.get(format!("{}/v1/tasks", srv.url)).send().unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .get(format!("{}/v1/tasks", srv.url))
        .bearer_auth("s3cret-tokeX")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .get(format!("{}/v1/tasks", srv.url))
        .bearer_auth("s3cret-token")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.get(format!("{}/healthz", srv.url)).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    drop(srv);
    // TLS: a client that trusts the CA gets through with the token; plain HTTP does not.
    let tls = skiff_tests::make_tls(&dir).unwrap();
    let srv = Serve::start_with(
        &dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            tls.cert.to_str().unwrap(),
            "--tls-key",
            tls.key.to_str().unwrap(),
        ],
        &[("SKIFF_TOKEN", "s3cret-token")],
    );
    assert!(
        srv.listening.starts_with("https://127.0.0.1:"),
        "{}",
        srv.listening
    );
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&tls.ca).unwrap()).unwrap();
    let c = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let r = c
        .get(format!("{}/v1/tasks", srv.url))
        .bearer_auth("s3cret-token")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let plain = srv.url.replace("https://", "http://");
    assert!(reqwest::blocking::get(format!("{plain}/healthz"))
        .map(|r| r.status() != StatusCode::OK)
        .unwrap_or(true));
    // The CLI speaks TLS too, with the CA in SKIFF_TLS_CA.
    let out = std::process::Command::new(skiff_tests::paths::skiff())
        .args(["ps", "-a"])
        .env("SKIFF_API", &srv.listening)
        .env("SKIFF_TOKEN", "s3cret-token")
        .env("SKIFF_TLS_CA", &tls.ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
