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
//! store with the same digest.

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
