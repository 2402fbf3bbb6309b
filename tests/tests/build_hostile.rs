//! A build's `RUN` step that lies about its changes (`tests/guest/hostile_build.c`): as
//! root in its VM it takes the agent's connection and sends a forged upper-layer tar ahead
//! of the agent's own. The host must read that stream as an attacker's: a name that climbs
//! out with `..` ends the build with the entry named, and entries that lead through a
//! symlink to `/` stay inside the host's unpacked tree when a later step applies them; an
//! extended attribute other than a file's capabilities ends the build with the entry
//! named. None may create a file on the host. Three VMs, one per attack, restored from the
//! run's snapshot of the build shape once there is one (the first build makes it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use skiff_tests::kvm_available;

fn skiff_in(state: &Path, args: &[&str]) -> Output {
    skiff_tests::install::skiff()
        .arg("--state-dir")
        .arg(state)
        .args(args)
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

/// Every entry name of the gzip layer `digest` in the store.
fn layer_names(state: &Path, digest: &str) -> Vec<String> {
    let hex = digest.trim_start_matches("sha256:");
    let f = fs::File::open(state.join("blobs/sha256").join(hex)).unwrap();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
    a.entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect()
}

#[test]
fn forged_step_changes_are_refused_or_kept_inside_the_tree() {
    if !kvm_available("forged_step_changes_are_refused_or_kept_inside_the_tree") {
        return;
    }
    let escapes: Vec<PathBuf> = ["traversal", "link"]
        .iter()
        .map(|w| PathBuf::from(format!("/tmp/skiff-build-escape-{w}")))
        .chain([PathBuf::from("/tmp/marker.txt")])
        .collect();
    for p in &escapes {
        let _ = fs::remove_file(p);
    }
    let st = skiff_tests::paths::deep_state_dir("build-hostile");
    let _ = fs::remove_dir_all(&st);
    let ctx = st.join("context");
    fs::create_dir_all(&ctx).unwrap();
    fs::copy(
        skiff_tests::guest::guest_program("hostile_build"),
        ctx.join("hostile_build"),
    )
    .unwrap();
    fs::write(ctx.join("marker.txt"), "marker\n").unwrap();
    // The test servers' snapshots: these steps restore the build shape's once it is made.
    let snapshots = skiff_tests::serve::shared_snapshots();
    let build = |dockerfile: &str| {
        fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        skiff_in(
            &st,
            &[
                "build",
                "--local",
                "--snapshot-dir",
                snapshots.to_str().unwrap(),
                "-t",
                "hostile:1",
                ctx.to_str().unwrap(),
            ],
        )
    };

    // A `..` name: the VM is ended as soon as the entry is read, and the build fails
    // naming it.
    let o =
        build("FROM local/busybox:latest\nCOPY hostile_build /hostile\nRUN /hostile traversal\n");
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "[3/3] RUN /hostile traversal (Dockerfile:3): the step's changes: layer entry \"../../../../tmp/skiff-build-escape-traversal\""
        ),
        "{err}"
    );

    // An extended attribute other than a file's capabilities: the host would set it as
    // root on its own copy of the tree when a later step applies the layer. The build
    // fails naming the entry, and no layer is stored.
    let o = build("FROM local/busybox:latest\nCOPY hostile_build /hostile\nRUN /hostile xattr\n");
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("\"evil.txt\"") && err.contains("trusted.skiff-evil"),
        "{err}"
    );
    assert!(
        err.contains("a build keeps only security.capability"),
        "{err}"
    );

    // A link to `/` and a file through it: fine as layer entries (a guest may make any
    // tree it likes), applied on the host inside the stage's tree only. The COPY after
    // it resolves its destination through that link inside the image too.
    let o = build(
        "FROM local/busybox:latest\nCOPY hostile_build /hostile\nRUN /hostile links\nCOPY marker.txt /a/tmp/\n",
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let digest = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(
            st.join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let run_layer = layer_names(&st, layers[2]["digest"].as_str().unwrap());
    assert!(
        run_layer
            .iter()
            .any(|n| n == "a/tmp/skiff-build-escape-link"),
        "{run_layer:?}"
    );
    let copy_layer = layer_names(&st, layers[3]["digest"].as_str().unwrap());
    assert_eq!(
        copy_layer,
        ["tmp/", "tmp/marker.txt"],
        "resolved inside the image"
    );

    for p in &escapes {
        assert!(!p.exists(), "{} was written on the host", p.display());
    }
}
