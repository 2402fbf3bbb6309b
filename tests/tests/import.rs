//! `skiff image import` and the bundled base image: OCI layouts, `docker save` archives
//! (made by Debian's skopeo), and `local/busybox:latest` from busybox-static.

use skiff_tests as common;

use std::fs;
use std::process::Command;

use anyhow::{ensure, Result};
use common::*;
use control_plane::images::import::busybox::{build_busybox_image, BUSYBOX_REF, DEFAULT_BUSYBOX};
use control_plane::images::import::{import_docker_save, import_oci_layout, ImportError};
use control_plane::images::registry::{RegistryClient, RegistryOptions};
use control_plane::images::store::StoreError;
use control_plane::images::{ImageStore, Reference};
use serde_json::json;

fn layers() -> Vec<Layer> {
    vec![
        Layer::gzip(
            Tar::new()
                .file("etc/base", "base")
                .file("etc/gone", "g")
                .build(),
        ),
        Layer::plain(
            Tar::new()
                .file("etc/.wh.gone", "")
                .file("etc/app", "app")
                .build(),
        ),
    ]
}

fn check_tree(store: &ImageStore, image: &control_plane::images::Image) -> Result<()> {
    let out = tempfile::tempdir()?;
    let root = out.path().join("r");
    extract_erofs(&store.rootfs(image)?.path, &root)?;
    assert_eq!(fs::read_to_string(root.join("etc/base"))?, "base");
    assert_eq!(fs::read_to_string(root.join("etc/app"))?, "app");
    assert!(!root.join("etc/gone").exists());
    Ok(())
}

#[test]
fn an_oci_layout_is_imported_tagged_and_usable() -> Result<()> {
    let layout = tempfile::tempdir()?;
    let digest = write_oci_layout(layout.path(), "1.0", &layers(), json!({"Cmd": ["app"]}))?;
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    let repo: Reference = "local/myapp".parse()?;
    let images = import_oci_layout(&store, layout.path(), Some(&repo))?;
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].manifest_digest, digest);
    let found = store.lookup(&"local/myapp:1.0".parse()?)?.expect("tagged");
    assert_eq!(found.config.run_defaults().argv(None), ["app"]);
    check_tree(&store, &found)?;
    // A local name is served from the store by pull, never fetched.
    let client = RegistryClient::new(RegistryOptions::default())?;
    assert_eq!(
        store
            .pull(&client, &"local/myapp:1.0".parse()?, &|_| {})?
            .manifest_digest,
        digest
    );
    Ok(())
}

#[test]
fn a_docker_save_archive_from_skopeo_is_imported_by_repo_tag() -> Result<()> {
    let work = tempfile::tempdir()?;
    let layout = work.path().join("layout");
    write_oci_layout(
        &layout,
        "v1",
        &layers(),
        json!({"Entrypoint": ["/bin/app"]}),
    )?;
    let archive = work.path().join("saved.tar");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!(
            "docker-archive:{}:example/app:v1",
            archive.display()
        ))
        .output()?;
    ensure!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    let images = import_docker_save(&store, &archive)?;
    assert_eq!(images.len(), 1);
    let found = store
        .lookup(&"example/app:v1".parse()?)?
        .expect("tagged as docker.io/example/app:v1");
    assert_eq!(found.config.run_defaults().argv(None), ["/bin/app"]);
    check_tree(&store, &found)?;
    assert_eq!(
        fs::read_dir(state.path().join("tmp"))?.count(),
        0,
        "work files removed"
    );
    Ok(())
}

#[test]
fn the_bundled_busybox_image_runs_its_applets() -> Result<()> {
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    let image = build_busybox_image(&store, DEFAULT_BUSYBOX.as_ref())?;
    let again = build_busybox_image(&store, DEFAULT_BUSYBOX.as_ref())?;
    assert_eq!(image.manifest_digest, again.manifest_digest, "reproducible");
    let found = store
        .lookup(&BUSYBOX_REF.parse()?)?
        .expect("tagged local/busybox:latest");
    assert_eq!(found.config.run_defaults().argv(None), ["sh"]);
    let out = tempfile::tempdir()?;
    let root = out.path().join("r");
    extract_erofs(&store.rootfs(&found)?.path, &root)?;
    assert_eq!(
        fs::read_link(root.join("bin/sh"))?.to_str(),
        Some("busybox")
    );
    let run = Command::new(root.join("bin/sh"))
        .args(["-c", "echo hello; uname -s"])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hello\nLinux\n");
    assert!(fs::read_to_string(root.join("etc/passwd"))?.starts_with("root:x:0:0:"));
    let err = build_busybox_image(&store, "/nonexistent/busybox".as_ref()).unwrap_err();
    assert!(err.to_string().contains("install busybox-static"), "{err}");
    Ok(())
}

#[test]
fn broken_layouts_and_archives_are_clear_errors() -> Result<()> {
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    let empty = tempfile::tempdir()?;
    let err = import_oci_layout(&store, empty.path(), None).unwrap_err();
    assert!(matches!(err, ImportError::NotLayout { .. }), "{err:?}");
    assert!(err.to_string().contains("is not an OCI layout"), "{err}");

    let layout = tempfile::tempdir()?;
    write_oci_layout(layout.path(), "v1", &layers(), json!({}))?;
    let victim = layers()[1].bytes.clone();
    let victim_digest = control_plane::images::Digest::of(&victim);
    let path = layout.path().join("blobs/sha256").join(victim_digest.hex());
    fs::write(&path, b"tampered")?;
    let err = import_oci_layout(&store, layout.path(), None).unwrap_err();
    assert!(
        matches!(
            err,
            ImportError::Store(
                StoreError::SizeMismatch { .. }
                    | StoreError::TooLarge { .. }
                    | StoreError::DigestMismatch { .. }
            )
        ),
        "{err:?}"
    );
    assert!(!store.blobs().contains(&victim_digest));
    fs::remove_file(&path)?;
    let err = import_oci_layout(&store, layout.path(), None).unwrap_err();
    assert!(matches!(err, ImportError::MissingBlob { .. }), "{err:?}");

    let junk = layout.path().join("junk.tar");
    fs::write(&junk, vec![7u8; 4096])?;
    let err = import_docker_save(&store, &junk).unwrap_err();
    assert!(
        err.to_string().contains("is not a docker save archive"),
        "{err}"
    );
    Ok(())
}
