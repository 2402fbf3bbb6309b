//! `skiff image push` against Debian's `docker-registry` with htpasswd auth: an image
//! `skiff build --local` made (a `COPY` on the bundled busybox, so no VM) goes up with the
//! auth file's credentials and comes back by `skiff image pull` into another store with the
//! same digest. A wrong password is named and uploads nothing; a second push finds every
//! blob there; `skiff build --push` pushes its tags; an unknown image and a local-only
//! destination are refused. A hostile registry whose upload sessions name another host
//! (`http.host`) gets the rest of the push sent there without its credentials, and never
//! over plain HTTP unless that host is allowed.

use std::fs;
use std::path::Path;
use std::process::Output;

use anyhow::Result;
use control_plane::images::digest::Digest;
use serde_json::json;
use skiff_tests::registry::Registry;

fn skiff(state: &Path, args: &[&str], auth: &Path) -> Output {
    std::process::Command::new(skiff_tests::paths::skiff())
        .arg("--state-dir")
        .arg(state)
        .args(args)
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

#[test]
fn a_built_image_is_pushed_and_pulled_back_with_the_same_digest() -> Result<()> {
    let reg = Registry::start_with(false, Some(("pusher", "right-pw")))?;
    let dir = tempfile::tempdir()?;
    let (state, other) = (dir.path().join("state"), dir.path().join("other"));
    let ctx = dir.path().join("context");
    fs::create_dir_all(&ctx)?;
    fs::write(ctx.join("app.txt"), "pushed\n")?;
    fs::write(
        ctx.join("Dockerfile"),
        "FROM local/busybox:latest\nCOPY app.txt /app/\nCMD [\"cat\", \"/app/app.txt\"]\n",
    )?;
    let auth = |pw: &str| -> Result<std::path::PathBuf> {
        let path = dir.path().join(format!("auth-{pw}.json"));
        let entry = json!({"auths": {reg.addr.clone(): {"username": "pusher", "password": pw}}});
        fs::write(&path, serde_json::to_vec(&entry)?)?;
        Ok(path)
    };
    let (right, wrong) = (auth("right-pw")?, auth("wrong-pw")?);
    let built = skiff(
        &state,
        &["build", "--local", "-t", "app:1", ctx.to_str().unwrap()],
        &right,
    );
    assert!(built.status.success(), "{}", show(&built));
    let digest = String::from_utf8_lossy(&built.stdout).trim().to_owned();
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(
        state
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )?)?;
    let blobs: Vec<Digest> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&manifest["config"]])
        .map(|d| d["digest"].as_str().unwrap().parse().unwrap())
        .collect();

    let dest = format!("{}/team/app:1", reg.addr);
    let push = |auth: &Path| {
        skiff(
            &state,
            &[
                "image",
                "push",
                "app:1",
                "--dest",
                &dest,
                "--insecure",
                &reg.addr,
            ],
            auth,
        )
    };
    let o = push(&wrong);
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        format!(
            "skiff: authentication failed for registry {}: wrong username or password",
            reg.addr
        )
    );
    for b in &blobs {
        assert!(
            !reg.blob_file(b).exists(),
            "{b} was uploaded without credentials"
        );
    }

    let o = push(&right);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("{dest}: {digest}")
    );
    for b in &blobs {
        assert!(reg.blob_file(b).exists(), "{b} is in the registry");
    }
    let again = push(&right);
    assert!(again.status.success(), "{}", show(&again));
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(
        err.matches("already exists").count(),
        blobs.len(),
        "a second push uploads nothing: {err}"
    );

    let pulled = skiff(
        &other,
        &["image", "pull", "--insecure", &reg.addr, &dest],
        &right,
    );
    assert!(pulled.status.success(), "{}", show(&pulled));
    assert!(
        String::from_utf8_lossy(&pulled.stdout).contains(&format!("{dest}: {digest}")),
        "{}",
        show(&pulled)
    );

    // `skiff build --push` pushes each tag once the build is done (here all cached).
    let tag2 = format!("{}/team/built:2", reg.addr);
    let o = skiff(
        &state,
        &[
            "build",
            "--local",
            "--push",
            "--insecure",
            &reg.addr,
            "-t",
            &tag2,
            ctx.to_str().unwrap(),
        ],
        &right,
    );
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("pushed {tag2}")),
        "{}",
        show(&o)
    );
    let pulled = skiff(
        &other,
        &["image", "pull", "--insecure", &reg.addr, &tag2],
        &right,
    );
    assert!(
        String::from_utf8_lossy(&pulled.stdout).contains(&format!("{tag2}: {digest}")),
        "{}",
        show(&pulled)
    );

    let o = skiff(
        &state,
        &["image", "push", "nothere:1", "--dest", &dest],
        &right,
    );
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not found in the local store"),
        "{}",
        show(&o)
    );
    let o = skiff(
        &state,
        &["image", "push", "app:1", "--dest", "local/x:1"],
        &right,
    );
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    Ok(())
}

/// A 20 MiB layer goes up in 8 MiB chunks. A cut after the second chunk's request head
/// is resumed where the registry says it stands (chunk one is not sent again); a cut in
/// the middle of a chunk, which Debian's registry will not resume (the offset it signed
/// into the session's URL no longer matches its file), starts a new session; a push to
/// another repository of the same registry mounts every blob instead of sending it.
/// Each result is pulled back into an empty store with the same digest.
#[test]
fn a_cut_upload_goes_on_and_another_repository_mounts_the_blobs() -> Result<()> {
    use skiff_tests::proxy::{CutProxy, ProxyOptions, UploadCut};
    let reg = Registry::start_with(false, Some(("pusher", "right-pw")))?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let ctx = dir.path().join("context");
    fs::create_dir_all(&ctx)?;
    const BIG: usize = 20 << 20;
    fs::write(ctx.join("big.bin"), skiff_tests::layers::noise(BIG, 1))?;
    fs::write(
        ctx.join("Dockerfile"),
        "FROM local/busybox:latest\nCOPY big.bin /\n",
    )?;
    let proxy = |request: usize, body_bytes: usize| {
        CutProxy::start_with(
            &reg.addr,
            ProxyOptions {
                cuts: 0,
                cut_after: 0,
                stall: false,
                strip_range: false,
                pace: None,
                cut_upload: Some(UploadCut {
                    request,
                    body_bytes,
                    min_body: 4 << 20,
                }),
                upload_pace: None,
            },
        )
    };
    // The second chunk's request (the only other request of 4 MiB or more is the third
    // chunk: the busybox layer is 2 MiB) is cut after its head (resumable), then one
    // 3 MiB into its body.
    let (resumable, broken) = (proxy(1, 0)?, proxy(1, 3 << 20)?);
    let auth = dir.path().join("auth.json");
    let entry = |addr: &str| {
        (
            addr.to_owned(),
            json!({"username": "pusher", "password": "right-pw"}),
        )
    };
    let auths: serde_json::Map<String, serde_json::Value> = [
        entry(&reg.addr),
        entry(&resumable.addr),
        entry(&broken.addr),
    ]
    .into_iter()
    .collect();
    fs::write(&auth, serde_json::to_vec(&json!({ "auths": auths }))?)?;
    let built = skiff(
        &state,
        &["build", "--local", "-t", "big:1", ctx.to_str().unwrap()],
        &auth,
    );
    assert!(built.status.success(), "{}", show(&built));
    let digest = String::from_utf8_lossy(&built.stdout).trim().to_owned();
    let push = |via: &CutProxy, repo: &str| {
        let dest = format!("{}/{repo}:1", via.addr);
        let o = skiff(
            &state,
            &[
                "image",
                "push",
                "big:1",
                "--dest",
                &dest,
                "--insecure",
                &via.addr,
            ],
            &auth,
        );
        (dest, o)
    };
    let pulled_back = |dest: &str, insecure: &str| -> Result<()> {
        let other = tempfile::tempdir()?;
        let o = skiff(
            other.path(),
            &["image", "pull", "--insecure", insecure, dest],
            &auth,
        );
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(&format!("{dest}: {digest}")),
            "{}",
            show(&o)
        );
        Ok(())
    };

    let (dest, o) = push(&resumable, "team/big");
    assert!(o.status.success(), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        resumable
            .cuts_done
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(
        err.contains(&format!("retry 2 from byte {}", 8 << 20)),
        "the upload goes on after the first chunk: {err}"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(
        state
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )?)?;
    let blob_bytes: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&manifest["config"]])
        .map(|d| d["size"].as_u64().unwrap())
        .sum();
    let sent = resumable.uploaded();
    assert!(
        sent < blob_bytes + (256 << 10),
        "chunk one was not sent again: {sent} request bytes for {blob_bytes} bytes of blobs"
    );
    pulled_back(&dest, &resumable.addr)?;

    let (dest, o) = push(&broken, "fresh/big");
    assert!(o.status.success(), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        broken.cuts_done.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(
        err.contains("retry 2 from byte 0"),
        "a session the registry will not resume starts again: {err}"
    );
    pulled_back(&dest, &broken.addr)?;

    // Another repository of a registry that holds the blobs: mounted, nothing sent.
    let before = resumable.uploaded();
    let (dest, o) = push(&resumable, "other/big");
    assert!(o.status.success(), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let layers = err.matches("mounted from team/big").count();
    assert!(layers >= 2, "the layers and config are mounted: {err}");
    assert!(!err.contains("uploading"), "{err}");
    let sent = resumable.uploaded() - before;
    assert!(sent < 64 << 10, "a mount sends no blob: {sent} bytes");
    pulled_back(&dest, &resumable.addr)?;
    Ok(())
}

/// A server that takes what a hostile registry sends on to it: it records each request's
/// head and asks for credentials (basic), as a thief would.
struct Thief {
    addr: String,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Thief {
    fn start() -> Result<Thief> {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => head.push_str(&line),
                    }
                }
                seen.lock().unwrap().push(head);
                let _ = conn.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"thief\"\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Ok(Thief { addr, heads })
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

#[test]
fn a_registry_that_sends_the_upload_elsewhere_gets_no_credentials_sent_there() -> Result<()> {
    // The registry's upload sessions name the thief's address (`http.host`), so after the
    // session opens the blob's bytes would go there; the credentials must not.
    let thief = Thief::start()?;
    let reg =
        Registry::start_advertising(("pusher", "right-pw"), &format!("http://{}", thief.addr))?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let ctx = dir.path().join("context");
    fs::create_dir_all(&ctx)?;
    fs::write(ctx.join("secret.txt"), "pushed\n")?;
    fs::write(
        ctx.join("Dockerfile"),
        "FROM local/busybox:latest\nCOPY secret.txt /\n",
    )?;
    let auth = dir.path().join("auth.json");
    let entry =
        json!({"auths": {reg.addr.clone(): {"username": "pusher", "password": "right-pw"}}});
    fs::write(&auth, serde_json::to_vec(&entry)?)?;
    let built = skiff(
        &state,
        &["build", "--local", "-t", "app:1", ctx.to_str().unwrap()],
        &auth,
    );
    assert!(built.status.success(), "{}", show(&built));
    let dest = format!("{}/team/app:1", reg.addr);
    let push = |insecure: &[&str]| {
        let mut args = vec!["image", "push", "app:1", "--dest", &dest];
        for i in insecure {
            args.extend(["--insecure", i]);
        }
        skiff(&state, &args, &auth)
    };

    // With the thief's address allowed plain HTTP, the upload goes there without the
    // registry's credentials, and the push ends when the thief asks for them.
    let o = push(&[&reg.addr, &thief.addr]);
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    let heads = thief.heads();
    assert!(
        !heads.is_empty(),
        "the upload went to the thief: {}",
        show(&o)
    );
    for h in &heads {
        assert!(
            !h.to_ascii_lowercase().contains("authorization:"),
            "credentials went to the thief:\n{h}"
        );
    }
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).lines().last(),
        Some(
            format!(
                "skiff: registry {} sent the transfer on to {}, which asks for credentials; \
                 they go only to the registry",
                reg.addr, thief.addr
            )
            .as_str()
        ),
        "{}",
        show(&o)
    );

    // Without it, a session moved to plain HTTP is refused before a byte goes there.
    let before = thief.heads().len();
    let o = push(&[&reg.addr]);
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "sent the upload to plain-HTTP http://{}/",
            thief.addr
        )),
        "{}",
        show(&o)
    );
    assert_eq!(
        thief.heads().len(),
        before,
        "nothing more went to the thief"
    );
    Ok(())
}
