//! Builds through `skiff serve`: `skiff build` (no `--local`) sends its context's manifest,
//! then only the files the server lacks, and follows the build's events to its result; a
//! rebuild after an edit sends one file. The API refuses a context over its limit (413,
//! before any upload), a bad Dockerfile (400 with the line), an unknown or incomplete
//! context; a build is listed and shown with its steps; a running build is cancelled; a
//! server restarted mid-build fails it with `ControlPlaneRestarted` and leaves nothing of
//! it; a `RUN` step's VM waits while a task holds the capacity. Once the build VMs' shape
//! has its snapshot (scratch disk mounted), steps restore it, each with a copy of its
//! disk, and a file's capabilities set in one stage reach another through `COPY --from`,
//! as do its device nodes and FIFO.
//! Six VMs: two `RUN` steps, a task, one cancelled while it starts, one the restart ends,
//! and the snapshot's boot (in the background). A second test runs two independent `RUN`
//! stages on servers whose scratch disk budget holds two disks (the VMs overlap) and one
//! (they do not); a budget under one disk keeps the server from starting.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use skiff_tests::kvm_available;
use skiff_tests::serve::{state_dir, Serve};

fn skiff(srv: &Serve, args: &[&str]) -> Output {
    std::process::Command::new(skiff_tests::paths::skiff())
        .arg("--state-dir")
        .arg(&srv.state_dir)
        .args(args)
        .env("SKIFF_API", &srv.listening)
        .env_remove("SKIFF_LOG")
        .output()
        .expect("run skiff")
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn wait_build(srv: &Serve, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let b = srv.get(&format!("/v1/builds/{id}"));
        if ok(&b) {
            return b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "build {id} never got {what}: {b}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for the snapshot of the build VMs' shape (1 vCPU, 512 MiB, a scratch disk) under
/// `dir`; returns its scratch disk template.
fn wait_build_snapshot(dir: &Path) -> std::path::PathBuf {
    let start = Instant::now();
    loop {
        let found = fs::read_dir(dir).into_iter().flatten().flatten().find(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.contains("-1x512-scratch")
                && !name.contains('.')
                && e.path().join("vm.state").is_file()
        });
        if let Some(e) = found {
            return e.path().join("scratch.img");
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "no build shape snapshot in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn post(srv: &Serve, path: &str, body: &Value) -> (StatusCode, Value) {
    srv.request("POST", path, Some(&body.to_string()))
}

fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).unwrap();
}

const APP: &str = "FROM local/busybox:latest\nCOPY app.txt /app/\nRUN cat /app/app.txt; cp /app/app.txt /app/copy.txt\nCMD [\"cat\", \"/app/copy.txt\"]\n";

#[test]
fn builds_through_the_server_send_only_what_it_lacks() {
    if !kvm_available("builds_through_the_server_send_only_what_it_lacks") {
        return;
    }
    let dir = state_dir("serve-build");
    // One vCPU: a task's VM and a build's VM cannot run at once.
    let srv = Serve::start(&dir, &["--cpus", "1"]);
    let ctx = dir.join("context");
    fs::create_dir_all(&ctx).unwrap();
    write(&ctx, "Dockerfile", APP);
    write(&ctx, "app.txt", "from the server\n");
    write(&ctx, "notes.txt", "not read by the build\n");
    let ctx_arg = ctx.to_str().unwrap();

    let o = skiff(&srv, &["build", "-t", "app:1", ctx_arg]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("sending 3 files"), "{err}");
    assert!(
        err.contains("#3 from the server"),
        "the RUN's output: {err}"
    );
    let digest = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(digest.starts_with("sha256:"), "{}", show(&o));

    // An edit the build does not read: one file sent, every step cached, the same image.
    write(&ctx, "notes.txt", "edited\n");
    let o = skiff(&srv, &["build", "-t", "app:1", ctx_arg]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("sending 1 files"), "{err}");
    assert!(
        err.contains("COPY app.txt /app/ (Dockerfile:2)  CACHED"),
        "{err}"
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), digest);

    // The builds are listed, newest first, with their steps.
    let list = srv.get("/v1/builds");
    let builds = list["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 2, "{list}");
    let last = &builds[0];
    assert_eq!(last["state"], "SUCCEEDED");
    assert_eq!(last["imageDigest"], digest.as_str());
    assert_eq!(last["tags"], json!(["docker.io/library/app:1"]));
    let steps = last["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4, "{last}");
    assert!(steps[1..].iter().all(|s| s["cached"] == true), "{last}");
    assert!(steps.iter().all(|s| s.get("run").is_none()), "{last}");
    // The first build's RUN step ran: its record says where its time went, in order.
    let first = &builds[1];
    let ran: Vec<&serde_json::Value> = first["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["run"].is_object())
        .collect();
    assert_eq!(ran.len(), 1, "{first}");
    let run = &ran[0]["run"];
    assert!(run["fromSnapshot"].is_boolean(), "{run}");
    let at: Vec<u64> = [
        "launchMs",
        "readyMs",
        "execMs",
        "exitMs",
        "receivedMs",
        "writtenMs",
    ]
    .iter()
    .map(|f| run[f].as_u64().unwrap_or_else(|| panic!("{f}: {run}")))
    .collect();
    assert!(at.windows(2).all(|w| w[0] <= w[1]), "{run}");
    let took = ran[0]["endMs"].as_u64().unwrap() - ran[0]["startMs"].as_u64().unwrap();
    assert!(at[5] <= took + 1000, "{run} in {took} ms");

    // A RUN step's VM waits for room as a task's does: while a task holds the only vCPU,
    // the build's step has started but no VM of it runs; it goes on once the task stops.
    let task = srv.submit(&json!({"image": "local/busybox", "command": ["sleep", "600"]}));
    srv.wait_task(&task, "RUNNING", Duration::from_secs(600), |t| {
        t["state"] == "RUNNING"
    });
    write(
        &ctx,
        "Dockerfile",
        "FROM local/busybox:latest\nCOPY app.txt /app/\nRUN echo waited for room\n",
    );
    let waiting = std::thread::scope(|s| {
        let build = s.spawn(|| skiff(&srv, &["build", ctx_arg]));
        let start = Instant::now();
        let id = loop {
            let list = srv.get("/v1/builds");
            let running = list["builds"].as_array().unwrap().iter().find(|b| {
                b["state"] == "RUNNING"
                    && b["steps"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|s| s["index"] == 3))
            });
            if let Some(b) = running {
                break b["id"].as_str().unwrap().to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "no RUN step started: {list}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(srv.get(&format!("/v1/builds/{id}"))["state"], "RUNNING");
        assert!(
            skiff_tests::serve::vmms_under(&dir.join("tmp")).is_empty(),
            "the build's VM started while the task held the capacity"
        );
        let (status, _) = post(&srv, &format!("/v1/tasks/{task}/stop"), &json!({}));
        assert_eq!(status, StatusCode::ACCEPTED);
        build.join().unwrap()
    });
    assert_eq!(waiting.status.code(), Some(0), "{}", show(&waiting));
    assert!(
        String::from_utf8_lossy(&waiting.stderr).contains("#3 waited for room"),
        "{}",
        show(&waiting)
    );

    // Refused before anything is uploaded or built.
    let huge = json!({"files": [{"path": "big.iso", "type": "file", "mode": 420,
        "size": 6_200_000_000u64, "sha256": "a".repeat(64)}]});
    let (status, body) = post(&srv, "/v1/build-contexts", &huge);
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(
        body["error"]["message"],
        "context too large: 6.2 GB > 4 GiB; exclude paths in .dockerignore"
    );
    let (status, body) = post(
        &srv,
        "/v1/build-contexts",
        &json!({"files": [{"path": "../x", "type": "dir", "mode": 493}]}),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("files[0] (\"../x\")"),
        "{body}"
    );
    let (status, body) = post(
        &srv,
        "/v1/build-contexts",
        &json!({"files": [{"path": "a.txt", "type": "file", "mode": 420, "size": 2,
            "sha256": "b".repeat(64)}]}),
    );
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["missing"], json!(["a.txt"]));
    let incomplete = body["id"].as_str().unwrap().to_owned();
    let (status, body) = post(
        &srv,
        "/v1/builds",
        &json!({"contextId": incomplete, "dockerfile": "FROM local/busybox:latest\n"}),
    );
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = post(
        &srv,
        "/v1/builds",
        &json!({"contextId": "f".repeat(64), "dockerfile": "FROM local/busybox:latest\n"}),
    );
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = post(
        &srv,
        "/v1/builds",
        &json!({"contextId": incomplete, "dockerfile": "FROM local/busybox:latest\nFROMM x\n"}),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "dockerfile_invalid");
    assert_eq!(body["error"]["line"], 2);
    assert_eq!(
        body["error"]["message"],
        "Dockerfile:2: unknown instruction \"FROMM\""
    );

    // A build cancelled while its RUN step's VM starts.
    let (status, body) = post(&srv, "/v1/build-contexts", &json!({"files": []}));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let empty = body["id"].as_str().unwrap().to_owned();
    let (status, body) = post(
        &srv,
        "/v1/builds",
        &json!({"contextId": empty, "dockerfile": "FROM local/busybox:latest\nRUN sleep 600\n"}),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    wait_build(&srv, &id, "its RUN started", |b| {
        b["steps"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["index"] == 2 && s["status"] == "started")
        })
    });
    let (status, body) = post(&srv, &format!("/v1/builds/{id}/cancel"), &json!({}));
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let b = wait_build(&srv, &id, "CANCELLED", |b| b["state"] == "CANCELLED");
    assert_eq!(b["error"]["code"], "Cancelled", "{b}");
    let events = srv.get_text(&format!("/v1/builds/{id}/events"));
    let last: Value = serde_json::from_str(events.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "result", "{events}");
    assert_eq!(last["state"], "CANCELLED", "{events}");
    let (status, _) = post(&srv, &format!("/v1/builds/{id}/cancel"), &json!({}));
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        skiff_tests::serve::vmms_under(&dir).is_empty(),
        "the cancelled build's VM is gone"
    );

    // A server that stops mid-build: after its restart the build is FAILED with
    // ControlPlaneRestarted, no VM or work folder of it is left, the cache is intact.
    let (status, body) = post(
        &srv,
        "/v1/builds",
        &json!({"contextId": empty, "dockerfile": "FROM local/busybox:latest\nRUN sleep 600\n"}),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    wait_build(&srv, &id, "its RUN started", |b| {
        b["steps"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["index"] == 2 && s["status"] == "started")
        })
    });
    let mut srv = srv;
    srv.kill();
    let srv = Serve::start(&dir, &["--cpus", "1"]);
    let b = srv.get(&format!("/v1/builds/{id}"));
    assert_eq!(b["state"], "FAILED", "{b}");
    assert_eq!(b["error"]["code"], "ControlPlaneRestarted", "{b}");
    assert!(skiff_tests::serve::vmms_under(&dir).is_empty());
    let left: Vec<_> = fs::read_dir(dir.join("tmp"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("build-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    write(&ctx, "Dockerfile", APP);
    let o = skiff(&srv, &["build", "-t", "app:1", ctx_arg]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        digest,
        "the cache is intact: {}",
        show(&o)
    );

    // By now the server has snapshotted the build VMs' shape in the background, with its
    // scratch disk mounted: the steps below restore it, each with a copy of that disk.
    let template = wait_build_snapshot(&srv.snapshot_dir);
    let stat = |p: &Path| {
        let m = fs::metadata(p).unwrap();
        (
            m.len(),
            m.blocks(),
            m.mtime(),
            m.mtime_nsec(),
            m.mode() & 0o7777,
            m.uid(),
        )
    };
    let template_before = stat(&template);
    assert_eq!(template_before.4, 0o444, "the template is read-only");
    assert_eq!(template_before.5, 0, "the template is root's");

    // `setcap` in a step: the file's capabilities are in its layer, so in its stage's
    // tree; `COPY --from` that stage keeps them (a PAX record in the copy's layer) and the
    // next step's root has them; a `user.*` attribute stays behind, as in Docker. The
    // stage's device nodes and FIFO are copied as nodes, and the next step sees them.
    fs::copy(
        skiff_tests::guest::guest_program("file_caps"),
        ctx.join("file_caps"),
    )
    .unwrap();
    write(
        &ctx,
        "Dockerfile",
        "FROM local/busybox:latest AS caps\nCOPY file_caps /usr/bin/\n\
         RUN file_caps set /usr/bin/file_caps && mkdir /devs && mknod /devs/null c 1 3 \
             && mknod -m 600 /devs/loop9 b 7 9 && mkfifo /devs/pipe\n\
         FROM local/busybox:latest\nCOPY --from=caps /usr/bin/file_caps /usr/local/bin/\n\
         COPY --from=caps /devs /devs\n\
         RUN file_caps get /usr/local/bin/file_caps && test -c /devs/null && test -b /devs/loop9 \
             && test -p /devs/pipe\n",
    );
    let o = skiff(
        &srv,
        &["build", "--progress", "plain", "-t", "caps:1", ctx_arg],
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("caps 0000000200200000000000000000000000000000"),
        "{err}"
    );
    assert!(err.contains("note no"), "{err}");
    let digest = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let list = srv.get("/v1/builds");
    let runs: Vec<&Value> = list["builds"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.get("run"))
        .collect();
    assert_eq!(runs.len(), 2, "{list}");
    assert!(
        runs.iter().all(|r| r["fromSnapshot"] == true),
        "both steps restored the snapshot: {runs:?}"
    );
    assert_eq!(
        stat(&template),
        template_before,
        "the steps wrote their copies, not the template"
    );
    let blob = |d: &str| {
        srv.state_dir
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: Value = serde_json::from_slice(&fs::read(blob(&digest)).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "the base's and the copies': {manifest}");
    let copy_layer = layers[1]["digest"].as_str().unwrap();
    let f = fs::File::open(blob(copy_layer)).unwrap();
    let mut layer = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut xattrs = Vec::new();
    for e in layer.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        for r in e.pax_extensions().unwrap().into_iter().flatten() {
            let r = r.unwrap();
            xattrs.push((
                path.clone(),
                r.key().unwrap().to_owned(),
                r.value_bytes().len(),
            ));
        }
    }
    assert_eq!(
        xattrs,
        [(
            "usr/local/bin/file_caps".to_owned(),
            "SCHILY.xattr.security.capability".to_owned(),
            20
        )],
        "the COPY --from layer's PAX records"
    );
    // The stage's device nodes and FIFO come over as they are (Docker copies them too).
    let devs_layer = layers[2]["digest"].as_str().unwrap();
    let f = fs::File::open(blob(devs_layer)).unwrap();
    let mut layer = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut nodes = Vec::new();
    for e in layer.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        nodes.push((
            String::from_utf8_lossy(&e.path_bytes()).into_owned(),
            h.entry_type().as_byte(),
            // Empty (not a number) in entries that are not devices.
            h.device_major().ok().flatten().unwrap_or(0),
            h.device_minor().ok().flatten().unwrap_or(0),
            h.mode().unwrap() & 0o7777,
        ));
    }
    assert_eq!(
        nodes,
        [
            ("devs/".to_owned(), b'5', 0, 0, 0o755),
            ("devs/loop9".to_owned(), b'4', 7, 9, 0o600),
            ("devs/null".to_owned(), b'3', 1, 3, 0o644),
            ("devs/pipe".to_owned(), b'6', 0, 0, 0o644),
        ],
        "the COPY --from of device nodes and a FIFO"
    );
}

/// Two independent stages, each with a `RUN`, that the last stage needs: their steps may
/// run at once.
const TWO_RUNS: &str = "FROM local/busybox:latest AS a\nRUN echo a > /a.txt\n\
                        FROM local/busybox:latest AS b\nRUN echo b > /b.txt\n\
                        FROM local/busybox:latest\nCOPY --from=a /a.txt /\nCOPY --from=b /b.txt /\n";

/// The VM spans [launch, changes received] (wall ms) of the newest build's `RUN` steps.
fn run_spans(srv: &Serve) -> Vec<(u64, u64)> {
    let list = srv.get("/v1/builds");
    let b = &list["builds"][0];
    assert_eq!(b["state"], "SUCCEEDED", "{b}");
    b["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["run"].is_object())
        .map(|s| {
            let at = s["startMs"].as_u64().unwrap();
            let r = &s["run"];
            (
                at + r["launchMs"].as_u64().unwrap(),
                at + r["receivedMs"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn steps_that_run_at_once_share_the_scratch_disk_budget() {
    if !kvm_available("steps_that_run_at_once_share_the_scratch_disk_budget") {
        return;
    }
    let dir = state_dir("build-disk");
    // A budget under one step's disk: the server refuses to start, saying why.
    let o = std::process::Command::new(skiff_tests::paths::skiff())
        .arg("--state-dir")
        .arg(&dir)
        .args([
            "serve",
            "--build-step-disk",
            "2G",
            "--build-disk-budget",
            "1G",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(
            "--build-disk-budget 1024 MiB is less than one build step's disk (--build-step-disk 2048 MiB)"
        ),
        "{}",
        show(&o)
    );
    let ctx = dir.join("context");
    fs::create_dir_all(&ctx).unwrap();
    write(&ctx, "Dockerfile", TWO_RUNS);
    let ctx_arg = ctx.to_str().unwrap();
    // Room for both steps' VMs and both their disks (10 GiB each): they run side by side.
    let args = ["--cpus", "2", "--memory-mib", "2048"];
    let srv = Serve::start(&dir, &[&args[..], &["--build-disk-budget", "20G"]].concat());
    let o = skiff(&srv, &["build", "--no-cache", "-t", "two:1", ctx_arg]);
    assert!(o.status.success(), "{}", show(&o));
    let spans = run_spans(&srv);
    assert_eq!(spans.len(), 2, "{spans:?}");
    let overlap = |s: &[(u64, u64)]| s[0].0.max(s[1].0) < s[0].1.min(s[1].1);
    assert!(overlap(&spans), "with room for both: {spans:?}");
    drop(srv);
    // Room for one disk: the second step waits until the first has given its disk back.
    let srv = Serve::start(&dir, &[&args[..], &["--build-disk-budget", "10G"]].concat());
    let o = skiff(&srv, &["build", "--no-cache", "-t", "two:1", ctx_arg]);
    assert!(o.status.success(), "{}", show(&o));
    let spans = run_spans(&srv);
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert!(!overlap(&spans), "with room for one disk: {spans:?}");
}
