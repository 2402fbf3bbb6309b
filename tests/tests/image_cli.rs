//! `skiff image pull / ls / rm / prune / import`: the built `skiff` binary run against a real
//! `docker-registry` on loopback, each test with its own state dir (`--state-dir`). Bad input
//! must end with a non-zero exit and one readable line on stderr, never a panic.

use skiff_tests as common;

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Result};
use common::*;
use control_plane::images::Digest;
use serde_json::json;

/// What one `skiff` run did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `skiff --state-dir STATE ARGS…` with `env` added; backtraces on, so a panic would
/// show. No auth file unless the test gives one.
fn skiff_env(state: &Path, args: &[&str], env: &[(&str, &Path)]) -> Run {
    let mut cmd = Command::new(skiff_tests::paths::skiff());
    cmd.arg("--state-dir")
        .arg(state)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("REGISTRY_AUTH_FILE", state.join("no-auth-file.json"))
        .env_remove("SKIFF_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running skiff");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn skiff(state: &Path, args: &[&str]) -> Run {
    skiff_env(state, args, &[])
}

fn ok(state: &Path, args: &[&str]) -> Run {
    let run = skiff(state, args);
    assert_eq!(run.code, 0, "skiff {args:?}: {run}");
    run
}

/// A failure the way people should see it: a non-zero exit (not a panic's 101), and one
/// line on stderr, `skiff: …` naming the problem.
fn assert_one_line_error(run: &Run, what: &str) {
    assert!(run.code != 0 && run.code != 101, "{run}");
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {run}");
    assert!(lines[0].starts_with("skiff: "), "{run}");
    assert!(lines[0].contains(what), "expected {what:?}: {run}");
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!run.stderr.contains(bad), "{run}");
    }
}

fn short(d: &Digest) -> &str {
    &d.hex()[..12]
}

/// Files in the state dir's blob store (lock files aside).
fn blob_files(state: &Path) -> Vec<String> {
    fs::read_dir(state.join("blobs/sha256"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default()
}

fn app_layers() -> Vec<Layer> {
    let mut layers = gzip_layers();
    layers[1] = Layer::zstd(layers[1].tar.clone());
    layers
}

/// Both layers gzip (a `docker save` archive cannot hold zstd layers).
fn gzip_layers() -> Vec<Layer> {
    vec![
        Layer::gzip(
            Tar::new()
                .dir("bin")
                .exe("bin/app", b"#!/bin/sh\necho app\n")
                .build(),
        ),
        Layer::gzip(Tar::new().dir("etc").file("etc/app.conf", "x=1\n").build()),
    ]
}

/// The `image ls` row of `reference`, split into its columns.
fn ls_row(state: &Path, reference: &str) -> Option<Vec<String>> {
    let run = ok(state, &["image", "ls"]);
    run.stdout
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(reference))
}

#[test]
fn pull_shows_each_layer_then_ls_lists_the_image_with_its_id_and_size() -> Result<()> {
    let reg = Registry::start()?;
    let layers = app_layers();
    let pushed = reg.push_image(
        "cli/app",
        "v1",
        OCI_MANIFEST,
        &layers,
        json!({"Cmd": ["/bin/app"]}),
    )?;
    let state = tempfile::tempdir()?;
    let reference = format!("{}/cli/app:v1", reg.addr);

    let run = ok(
        state.path(),
        &["image", "pull", "--insecure", &reg.addr, &reference],
    );
    // One progress line per layer on stderr, as `docker pull` shows them.
    assert!(
        run.stderr.contains(&pushed.manifest.to_string()),
        "the resolved manifest is named: {run}"
    );
    for layer in &pushed.layers {
        let line = run
            .stderr
            .lines()
            .find(|l| l.starts_with(short(layer)))
            .unwrap_or_else(|| panic!("no progress line for layer {layer}: {run}"));
        assert!(line.contains("complete"), "{line}");
    }
    // The result on stdout: the manifest digest and the root filesystem image made.
    assert!(run.stdout.contains(&pushed.manifest.to_string()), "{run}");
    let rootfs = state
        .path()
        .join(format!("rootfs/{}.erofs", pushed.config.hex()));
    assert!(run.stdout.contains(&rootfs.display().to_string()), "{run}");
    assert!(rootfs.is_file());

    let row = ls_row(state.path(), &reference).expect("the pulled image is listed");
    let size: usize = layers.iter().map(|l| l.bytes.len()).sum();
    assert_eq!(
        row,
        [
            reference.clone(),
            short(&pushed.config).into(),
            size.to_string()
        ]
    );

    // A second pull fetches no layer again.
    let before = reg.wait_blob_gets(3)?;
    let run = ok(
        state.path(),
        &["image", "pull", "--insecure", &reg.addr, &reference],
    );
    for layer in &pushed.layers {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.starts_with(short(layer)) && l.contains("already exists")),
            "{run}"
        );
    }
    assert_eq!(reg.blob_gets(None), before, "nothing downloaded again");
    Ok(())
}

#[test]
fn rm_untags_prune_frees_what_no_tag_uses_and_unknown_references_are_errors() -> Result<()> {
    let reg = Registry::start()?;
    let base = Layer::gzip(Tar::new().file("etc/base", "shared").build());
    let own = Layer::gzip(Tar::new().file("etc/one", "only one").build());
    let one = reg.push_image(
        "cli/one",
        "v1",
        OCI_MANIFEST,
        &[base.clone(), own],
        json!({}),
    )?;
    let two = reg.push_image("cli/two", "v1", DOCKER_MANIFEST, &[base], json!({}))?;
    let state = tempfile::tempdir()?;
    let (r1, r2) = (
        format!("{}/cli/one:v1", reg.addr),
        format!("{}/cli/two:v1", reg.addr),
    );
    ok(
        state.path(),
        &["image", "pull", "--insecure", &reg.addr, &r1],
    );
    ok(
        state.path(),
        &["image", "pull", "--insecure", &reg.addr, &r2],
    );
    assert!(ls_row(state.path(), &r1).is_some() && ls_row(state.path(), &r2).is_some());

    let run = ok(state.path(), &["image", "rm", &r1]);
    assert!(run.stdout.contains(&r1), "says what it untagged: {run}");
    assert!(ls_row(state.path(), &r1).is_none(), "gone from image ls");
    assert!(ls_row(state.path(), &r2).is_some());
    assert_one_line_error(
        &skiff(state.path(), &["image", "rm", &r1]),
        "is not in the local store",
    );
    assert_one_line_error(
        &skiff(state.path(), &["image", "rm", "never/pulled:v9"]),
        "docker.io/never/pulled:v9 is not in the local store",
    );

    // Prune: one's manifest, config and own layer, and its root filesystem image.
    let rootfs_one = state
        .path()
        .join(format!("rootfs/{}.erofs", one.config.hex()));
    assert!(rootfs_one.is_file());
    let run = ok(state.path(), &["image", "prune"]);
    let said = run.stdout.to_lowercase();
    assert!(
        said.contains("blob")
            && said.contains('3')
            && (said.contains("rootfs") || said.contains("root filesystem")),
        "says what it removed: {run}"
    );
    for d in [&one.layers[1], &one.config, &one.manifest] {
        assert!(!blob_files(state.path()).contains(&d.hex().to_string()));
    }
    assert!(!rootfs_one.exists());
    let mut kept = blob_files(state.path());
    kept.sort();
    let mut want: Vec<String> = [&two.layers[0], &two.config, &two.manifest]
        .iter()
        .map(|d| d.hex().to_string())
        .collect();
    want.sort();
    assert_eq!(kept, want, "two's blobs stay (with the shared base layer)");
    assert!(ls_row(state.path(), &r2).is_some());
    Ok(())
}

#[test]
fn import_takes_an_oci_layout_and_a_docker_save_archive() -> Result<()> {
    let work = tempfile::tempdir()?;
    let layout = work.path().join("myapp");
    let digest = write_oci_layout(&layout, "1.0", &gzip_layers(), json!({"Cmd": ["/bin/app"]}))?;
    let state = tempfile::tempdir()?;

    let run = ok(state.path(), &["image", "import", layout.to_str().unwrap()]);
    assert!(run.stdout.contains("local/myapp:1.0"), "{run}");
    assert!(run.stdout.contains(&digest.to_string()), "{run}");
    assert!(ls_row(state.path(), "local/myapp:1.0").is_some());

    let archive = work.path().join("saved.tar");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:1.0", layout.display()))
        .arg(format!(
            "docker-archive:{}:example/saved:v2",
            archive.display()
        ))
        .output()?;
    ensure!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = ok(
        state.path(),
        &["image", "import", archive.to_str().unwrap()],
    );
    assert!(run.stdout.contains("docker.io/example/saved:v2"), "{run}");
    assert!(ls_row(state.path(), "docker.io/example/saved:v2").is_some());

    let junk = work.path().join("junk.tar");
    fs::write(&junk, vec![7u8; 4096])?;
    assert_one_line_error(
        &skiff(state.path(), &["image", "import", junk.to_str().unwrap()]),
        "is not a docker save archive",
    );
    let empty = work.path().join("empty");
    fs::create_dir(&empty)?;
    assert_one_line_error(
        &skiff(state.path(), &["image", "import", empty.to_str().unwrap()]),
        "is not an OCI layout",
    );
    assert_one_line_error(
        &skiff(state.path(), &["image", "import", "/nonexistent/x.tar"]),
        "/nonexistent/x.tar",
    );
    Ok(())
}

#[test]
fn bad_references_and_unreachable_or_missing_images_are_one_line_errors() -> Result<()> {
    let reg = Registry::start()?;
    reg.push_image("cli/app", "v1", OCI_MANIFEST, &app_layers(), json!({}))?;
    let state = tempfile::tempdir()?;
    // Each registry named explicitly as plain HTTP, as a user must.
    let pull = |r: &str| {
        let host = r.split('/').next().unwrap_or_default();
        skiff(state.path(), &["image", "pull", "--insecure", host, r])
    };

    assert_one_line_error(&pull("Not/Valid:REF!"), "invalid image reference");
    assert_one_line_error(&pull("x@sha256:1234"), "invalid digest in image reference");
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.to_string()
    };
    assert_one_line_error(
        &pull(&format!("{closed}/cli/app:v1")),
        &format!("cannot reach registry {closed}"),
    );
    assert_one_line_error(
        &pull(&format!("{}/cli/app:nope", reg.addr)),
        "tag nope not found",
    );
    assert_one_line_error(
        &pull(&format!("{}/cli/nothing:v1", reg.addr)),
        "not found in registry",
    );
    assert!(
        blob_files(state.path()).is_empty(),
        "failed pulls store nothing"
    );
    assert!(ls_row(state.path(), &format!("{}/cli/app:v1", reg.addr)).is_none());
    Ok(())
}

#[test]
fn credentials_come_from_the_auth_file_and_a_wrong_password_is_named() -> Result<()> {
    let reg = Registry::start_with(false, Some(("cli", "right-pw")))?;
    reg.push_image("cli/secret", "v1", OCI_MANIFEST, &app_layers(), json!({}))?;
    let state = tempfile::tempdir()?;
    let reference = format!("{}/cli/secret:v1", reg.addr);
    let auth = |user: &str, pw: &str| -> Result<std::path::PathBuf> {
        let path = state.path().join(format!("auth-{pw}.json"));
        let entry = json!({"auths": {reg.addr.clone(): {"username": user, "password": pw}}});
        fs::write(&path, serde_json::to_vec(&entry)?)?;
        Ok(path)
    };
    let args = [
        "image",
        "pull",
        "--insecure",
        reg.addr.as_str(),
        reference.as_str(),
    ];

    assert_one_line_error(
        &skiff(state.path(), &args),
        &format!("registry {} requires authentication", reg.addr),
    );
    let wrong = auth("cli", "wrong-pw")?;
    assert_one_line_error(
        &skiff_env(state.path(), &args, &[("REGISTRY_AUTH_FILE", &wrong)]),
        "wrong username or password",
    );
    let garbled = state.path().join("garbled.json");
    fs::write(&garbled, "{\"auths\": [")?;
    assert_one_line_error(
        &skiff_env(state.path(), &args, &[("REGISTRY_AUTH_FILE", &garbled)]),
        "registry auth file",
    );
    assert!(blob_files(state.path()).is_empty());
    let right = auth("cli", "right-pw")?;
    let run = skiff_env(state.path(), &args, &[("REGISTRY_AUTH_FILE", &right)]);
    assert_eq!(run.code, 0, "{run}");
    assert!(ls_row(state.path(), &reference).is_some());
    Ok(())
}

#[test]
fn limit_flags_lower_the_caps_and_bad_sizes_are_refused() -> Result<()> {
    let reg = Registry::start()?;
    reg.push_image(
        "app",
        "v1",
        OCI_MANIFEST,
        &app_layers(),
        json!({"Cmd": ["/bin/app"]}),
    )?;
    let state = tempfile::tempdir()?;
    let r = format!("{}/app:v1", reg.addr);
    let pull = |extra: &[&str]| {
        let mut args = vec!["image", "pull", "--insecure", &reg.addr, &r];
        args.extend_from_slice(extra);
        skiff(state.path(), &args)
    };
    // The manifest is a few hundred bytes: a 100-byte cap refuses it, naming the cap.
    let run = pull(&["--max-manifest-size", "100"]);
    assert_one_line_error(&run, "larger than 100 bytes");
    // Two files and a folder are more than 2 entries: the root filesystem is refused.
    // (After the pull's progress lines: the layers themselves were fetched.)
    let run = pull(&["--max-image-entries", "2"]);
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(
        run.code != 0
            && run.code != 101
            && last.starts_with("skiff: ")
            && last.contains("limit of 2 entries"),
        "{run}"
    );
    assert!(
        ls_row(state.path(), &r).is_some(),
        "the image itself stays pulled: {run}"
    );
    let run = pull(&["--max-image-size", "1X"]);
    assert!(
        run.code == 2 && run.stderr.contains("unknown unit"),
        "{run}"
    );
    // Raised or default limits pull it whole.
    ok(
        state.path(),
        &[
            "image",
            "pull",
            "--insecure",
            &reg.addr,
            "--max-image-size",
            "1G",
            &r,
        ],
    );
    Ok(())
}
