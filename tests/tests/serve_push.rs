//! Pushing through `skiff serve`, against Debian's `docker-registry` with htpasswd auth:
//! `POST /v1/images/{ref}/push` with the client's credentials in `X-Registry-Auth`
//! (streamed NDJSON per blob, then `done`), and `skiff build --push` through the server.
//! The images are `COPY`-only builds on the bundled busybox, so no VM is started.
//!
//! Shown: a wrong password is a 401 naming the registry and uploads nothing; a push
//! uploads each blob and ends with the stored digest; the same push again finds each
//! blob there; a push to another repository mounts each blob; unknown images, local
//! destinations and malformed headers are refused by name; `skiff build --push` sends the
//! auth file's credentials and the image comes back by `skiff image pull` into an empty
//! store with the same digest. A push ends with its client: an API client that leaves after
//! one line, and a `build --push` cancelled while it uploads, stop the upload (through a
//! paced proxy) and never make the tag.

use std::fs;
use std::path::Path;
use std::process::Output;

use anyhow::Result;
use base64::Engine;
use serde_json::{json, Value};
use skiff_tests::registry::Registry;
use skiff_tests::serve::{state_dir, Serve};

fn skiff(srv: &Serve, state: &Path, args: &[&str], auth: &Path) -> Output {
    std::process::Command::new(skiff_tests::paths::skiff())
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("SKIFF_API", &srv.listening)
        .env("REGISTRY_AUTH_FILE", auth)
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

fn x_registry_auth(user: &str, pw: &str) -> String {
    base64::engine::general_purpose::URL_SAFE
        .encode(json!({"username": user, "password": pw}).to_string())
}

/// The NDJSON lines of a push answer.
fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn encoded(reference: &str) -> String {
    reference.replace('/', "%2F").replace(':', "%3A")
}

#[test]
fn images_are_pushed_through_the_api_with_the_clients_credentials() -> Result<()> {
    let reg = Registry::start_with(false, Some(("pusher", "right-pw")))?;
    let dir = state_dir("serve-push");
    let srv = Serve::start(&dir, &["--insecure-registry", &reg.addr]);
    let work = tempfile::tempdir()?;
    let ctx = work.path().join("context");
    fs::create_dir_all(&ctx)?;
    fs::write(ctx.join("app.txt"), "pushed through the server\n")?;
    fs::write(
        ctx.join("Dockerfile"),
        "FROM local/busybox:latest\nCOPY app.txt /app/\nCMD [\"cat\", \"/app/app.txt\"]\n",
    )?;
    let auth = work.path().join("auth.json");
    fs::write(
        &auth,
        serde_json::to_vec(
            &json!({"auths": {reg.addr.clone(): {"username": "pusher", "password": "right-pw"}}}),
        )?,
    )?;
    let tag = format!("{}/team/app:1", reg.addr);
    let built = skiff(
        &srv,
        &dir,
        &["build", "-t", &tag, ctx.to_str().unwrap()],
        &auth,
    );
    assert!(built.status.success(), "{}", show(&built));
    let digest = String::from_utf8_lossy(&built.stdout).trim().to_owned();
    let manifest: Value = serde_json::from_slice(&fs::read(
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )?)?;
    let blobs: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&manifest["config"]])
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect();
    let path = format!("/v1/images/{}/push", encoded(&tag));
    let push = |body: &str, auth: &str| {
        let headers = [("x-registry-auth", auth)];
        srv.request_raw("POST", &path, Some(body), &headers)
    };

    // A wrong password: 401 before any blob, nothing in the registry.
    let (status, text) = push("{}", &x_registry_auth("pusher", "wrong-pw"));
    assert_eq!(status, 401, "{text}");
    let err: Value = serde_json::from_str(&text)?;
    assert_eq!(err["error"]["code"], "registry_auth_failed", "{text}");
    assert_eq!(
        err["error"]["message"],
        format!(
            "authentication failed for registry {}: wrong username or password",
            reg.addr
        )
    );
    for b in &blobs {
        assert!(!reg.blob_file(&b.parse()?).exists(), "{b} was uploaded");
    }

    // The push: each blob uploaded, then done with the stored digest.
    let (status, text) = push("", &x_registry_auth("pusher", "right-pw"));
    assert_eq!(status, 200, "{text}");
    let ev = lines(&text);
    for b in &blobs {
        assert!(
            ev.iter()
                .any(|e| e["status"] == "pushed" && e["digest"] == b.as_str()),
            "{b} pushed: {text}"
        );
        assert!(
            reg.blob_file(&b.parse()?).exists(),
            "{b} is in the registry"
        );
    }
    let last = ev.last().unwrap();
    assert_eq!(last["status"], "done", "{text}");
    assert_eq!(last["digest"], digest.as_str(), "{text}");

    // Again: every blob is there already, 0 bytes sent.
    let (status, text) = push("", &x_registry_auth("pusher", "right-pw"));
    assert_eq!(status, 200, "{text}");
    let ev = lines(&text);
    assert_eq!(
        ev.iter().filter(|e| e["status"] == "exists").count(),
        blobs.len(),
        "{text}"
    );
    assert!(
        ev.iter().all(|e| e["bytes"].as_u64().unwrap_or(0) == 0),
        "{text}"
    );

    // Another repository of the same registry: mounted from team/app.
    let other = format!("{}/other/app:2", reg.addr);
    let (status, text) = push(
        &json!({ "destination": other }).to_string(),
        &x_registry_auth("pusher", "right-pw"),
    );
    assert_eq!(status, 200, "{text}");
    let ev = lines(&text);
    assert_eq!(
        ev.iter()
            .filter(|e| e["status"] == "mounted" && e["from"] == "team/app")
            .count(),
        blobs.len(),
        "{text}"
    );
    assert_eq!(ev.last().unwrap()["digest"], digest.as_str());

    // Refusals, by name.
    let right = x_registry_auth("pusher", "right-pw");
    let (status, text) = srv.request_raw(
        "POST",
        &format!("/v1/images/{}/push", encoded("nothere:1")),
        None,
        &[],
    );
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("not found in the local store"), "{text}");
    let (status, text) = push(&json!({"destination": "local/x:1"}).to_string(), &right);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("local-only"), "{text}");
    let (status, text) = push("{}", "%%%");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("X-Registry-Auth: not base64"), "{text}");
    let (status, text) = push(r#"{"destinaton": "x"}"#, &right);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("destinaton"), "{text}");

    // `skiff build --push` through the server, with the auth file's credentials.
    let tag2 = format!("{}/team/built:2", reg.addr);
    let o = skiff(
        &srv,
        &dir,
        &["build", "--push", "-t", &tag2, ctx.to_str().unwrap()],
        &auth,
    );
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("pushed {tag2}")),
        "{}",
        show(&o)
    );
    let empty = work.path().join("empty");
    let pulled = std::process::Command::new(skiff_tests::paths::skiff())
        .arg("--state-dir")
        .arg(&empty)
        .args(["image", "pull", "--insecure", &reg.addr, &tag2])
        .env("REGISTRY_AUTH_FILE", &auth)
        .env_remove("SKIFF_LOG")
        .output()?;
    assert!(
        String::from_utf8_lossy(&pulled.stdout).contains(&format!("{tag2}: {digest}")),
        "{}",
        show(&pulled)
    );

    // The same build with no credentials for the registry fails at its push, by name.
    let none = work.path().join("none.json");
    fs::write(&none, "{}")?;
    let tag3 = format!("{}/team/nocreds:3", reg.addr);
    let o = skiff(
        &srv,
        &dir,
        &["build", "--push", "-t", &tag3, ctx.to_str().unwrap()],
        &none,
    );
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!(
            "skiff: error: pushing {tag3}: registry {} requires authentication",
            reg.addr
        )),
        "{}",
        show(&o)
    );
    Ok(())
}

#[test]
fn a_build_pushing_to_two_registries_gives_each_only_its_own_credentials() -> Result<()> {
    let a = Registry::start_with(false, Some(("alice", "alice-pw")))?;
    let b = Registry::start_with(false, Some(("bob", "bob-pw")))?;
    let dir = state_dir("serve-push-two");
    let srv = Serve::start(
        &dir,
        &[
            "--insecure-registry",
            &a.addr,
            "--insecure-registry",
            &b.addr,
        ],
    );
    let work = tempfile::tempdir()?;
    let ctx = work.path().join("context");
    fs::create_dir_all(&ctx)?;
    fs::write(ctx.join("app.txt"), "two registries\n")?;
    fs::write(
        ctx.join("Dockerfile"),
        "FROM local/busybox:latest\nCOPY app.txt /\n",
    )?;
    let auth = work.path().join("auth.json");
    fs::write(
        &auth,
        serde_json::to_vec(&json!({"auths": {
            a.addr.clone(): {"username": "alice", "password": "alice-pw"},
            b.addr.clone(): {"username": "bob", "password": "bob-pw"},
        }}))?,
    )?;
    let (tag_a, tag_b) = (
        format!("{}/team/two:1", a.addr),
        format!("{}/team/two:1", b.addr),
    );
    // The CLI sends X-Registry-Config: each registry gets its own entry.
    let o = skiff(
        &srv,
        &dir,
        &[
            "build",
            "--push",
            "-t",
            &tag_a,
            "-t",
            &tag_b,
            ctx.to_str().unwrap(),
        ],
        &auth,
    );
    assert!(o.status.success(), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for t in [&tag_a, &tag_b] {
        assert!(err.contains(&format!("pushed {t}")), "{}", show(&o));
    }
    // One registry's credentials are never sent to the other: each log shows only its
    // own user.
    assert!(
        !a.log_text().contains("bob"),
        "bob's name reached registry a"
    );
    assert!(
        !b.log_text().contains("alice"),
        "alice's name reached registry b"
    );

    // Through the API: X-Registry-Auth without an address cannot say whose it is.
    let file = |path: &str, bytes: &[u8]| {
        json!({"path": path, "type": "file", "mode": 0o644, "size": bytes.len(),
            "sha256": hex_sha256(bytes)})
    };
    let files = json!({"files": [
        file("Dockerfile", b"FROM local/busybox:latest\nCOPY app.txt /\n"),
        file("app.txt", b"two registries\n"),
    ]});
    let (status, made) = srv.request("POST", "/v1/build-contexts", Some(&files.to_string()));
    assert_eq!(status.as_u16(), 201, "{made}");
    assert_eq!(
        made["missing"],
        json!([]),
        "the CLI's build sent these files: {made}"
    );
    let ctx_id = made["id"].as_str().unwrap().to_owned();
    let body = json!({"contextId": ctx_id, "dockerfile": "Dockerfile", "tags": [tag_a, tag_b],
        "push": true})
    .to_string();
    let (status, text) = srv.request_raw(
        "POST",
        "/v1/builds",
        Some(&body),
        &[("x-registry-auth", &x_registry_auth("alice", "alice-pw"))],
    );
    assert_eq!(status, 400, "{text}");
    let (first, second) = if a.addr < b.addr {
        (&a.addr, &b.addr)
    } else {
        (&b.addr, &a.addr)
    };
    assert!(
        text.contains(&format!(
            "the tags name several registries ({first}, {second})"
        )),
        "{text}"
    );
    Ok(())
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `n` bytes no compressor can shrink (xorshift), so a layer of them is `n` bytes too.
fn incompressible(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// Waits until the proxy has forwarded no request bytes for 2 s in a row (at most 60 s);
/// returns the bytes forwarded by then.
fn uploads_settled(proxy: &skiff_tests::proxy::CutProxy) -> u64 {
    let start = std::time::Instant::now();
    let mut last = proxy.uploaded();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(2));
        let now = proxy.uploaded();
        if now == last {
            return now;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "uploads never stopped"
        );
        last = now;
    }
}

#[test]
fn a_push_ends_when_its_client_leaves_or_its_build_is_cancelled() -> Result<()> {
    use skiff_tests::proxy::{CutProxy, ProxyOptions};
    use std::io::BufRead;
    let reg = Registry::start_with(false, None)?;
    // A slow uplink to the registry: 16 KiB per 4 ms, so the 24 MiB layer's three chunks
    // take about 2 s each.
    let proxy = CutProxy::start_with(
        &reg.addr,
        ProxyOptions {
            upload_pace: Some(std::time::Duration::from_millis(4)),
            ..ProxyOptions::default()
        },
    )?;
    let dir = state_dir("serve-push-cancel");
    let srv = Serve::start(&dir, &["--insecure-registry", &proxy.addr]);
    let work = tempfile::tempdir()?;
    let ctx = work.path().join("context");
    fs::create_dir_all(&ctx)?;
    const LAYER: usize = 24 << 20;
    fs::write(ctx.join("big.bin"), incompressible(LAYER))?;
    fs::write(
        ctx.join("Dockerfile"),
        "FROM local/busybox:latest\nCOPY big.bin /\n",
    )?;
    let none = work.path().join("none.json");
    fs::write(&none, "{}")?;
    let tag = format!("{}/team/big:1", proxy.addr);
    let built = skiff(
        &srv,
        &dir,
        &["build", "-t", &tag, ctx.to_str().unwrap()],
        &none,
    );
    assert!(built.status.success(), "{}", show(&built));
    let manifest_of = |t: &str| -> Result<u16> {
        Ok(reg
            .http()?
            .get(format!("http://{}/v2/team/big/manifests/{t}", reg.addr))
            .header(
                "accept",
                "application/vnd.oci.image.manifest.v1+json, \
                 application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()?
            .status()
            .as_u16())
    };

    // The client reads the first line of the push's stream and leaves: the push stops
    // within the chunk under way, and the tag never reaches the registry.
    let resp = srv.send(
        "POST",
        &format!("/v1/images/{}/push", encoded(&tag)),
        Some("{}"),
        &[],
    );
    assert_eq!(resp.status().as_u16(), 200);
    let mut first = String::new();
    std::io::BufReader::new(resp).read_line(&mut first)?;
    assert!(first.contains("\"status\""), "{first}");
    let left_at = proxy.uploaded();
    let settled = uploads_settled(&proxy);
    assert!(
        settled < left_at + (9 << 20),
        "{} bytes went after the client left (at most the chunk under way, 8 MiB)",
        settled - left_at
    );
    assert!(
        settled < LAYER as u64,
        "the whole layer went: {settled} bytes"
    );
    assert_eq!(manifest_of("1")?, 404, "the tag was pushed");

    // A build with --push, cancelled while it pushes: CANCELLED, and the push stops.
    let tag2 = format!("{}/team/big:2", proxy.addr);
    std::thread::scope(|s| -> Result<()> {
        let build = s.spawn(|| {
            skiff(
                &srv,
                &dir,
                &["build", "--push", "-t", &tag2, ctx.to_str().unwrap()],
                &none,
            )
        });
        let start = std::time::Instant::now();
        let id = loop {
            let list = srv.get("/v1/builds");
            let pushing = list["builds"].as_array().unwrap().iter().find_map(|b| {
                let id = b["id"].as_str()?;
                let events = srv.get_text(&format!("/v1/builds/{id}/events"));
                (b["state"] == "RUNNING"
                    && events.contains(r#""type":"push""#)
                    && events.contains(r#""status":"uploading""#))
                .then(|| id.to_owned())
            });
            if let Some(id) = pushing {
                break id;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "the build never pushed: {list}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let at_cancel = proxy.uploaded();
        let (status, body) = srv.request("POST", &format!("/v1/builds/{id}/cancel"), Some("{}"));
        assert_eq!(status.as_u16(), 202, "{body}");
        let o = build.join().unwrap();
        assert_ne!(o.status.code(), Some(0), "{}", show(&o));
        let b = srv.get(&format!("/v1/builds/{id}"));
        assert_eq!(b["state"], "CANCELLED", "{b}");
        let settled = uploads_settled(&proxy);
        assert!(
            settled < at_cancel + (9 << 20),
            "{} bytes went after the cancel",
            settled - at_cancel
        );
        assert_eq!(manifest_of("2")?, 404, "the tag was pushed");
        Ok(())
    })?;
    Ok(())
}
