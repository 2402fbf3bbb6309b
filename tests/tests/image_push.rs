//! `skiff image push` against Debian's `docker-registry` with htpasswd auth: an image
//! `skiff build --local` made (a `COPY` on the bundled busybox, so no VM) goes up with the
//! auth file's credentials and comes back by `skiff image pull` into another store with the
//! same digest. A wrong password is named and uploads nothing; a second push finds every
//! blob there; `skiff build --push` pushes its tags; an unknown image and a local-only
//! destination are refused.

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
