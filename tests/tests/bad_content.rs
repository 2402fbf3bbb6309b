//! Hostile or broken registry content: corrupted and truncated blobs, escaping layers.

use skiff_tests as common;

use std::fs;

use anyhow::Result;
use common::layers::insecure_client;
use common::*;
use control_plane::images::registry::RegistryClient;
use control_plane::images::rootfs::RootfsError;
use control_plane::images::store::StoreError;
use control_plane::images::unpack::UnpackError;
use control_plane::images::{ImageStore, PullError, Reference};
use serde_json::json;

fn client(reg: &Registry) -> RegistryClient {
    insecure_client(&reg.addr)
}

/// Everything in the blob folder that is not a lock file.
fn blob_files(state: &std::path::Path) -> Vec<String> {
    fs::read_dir(state.join("blobs/sha256"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_corrupted_or_truncated_blob_is_rejected_and_nothing_of_it_is_cached() -> Result<()> {
    let reg = Registry::start()?;
    let good = Layer::gzip(Tar::new().file("a", "fine").build());
    let bad = Layer::gzip(Tar::new().file("b", &"payload ".repeat(1000)).build());
    let pushed = reg.push_image("broken", "v1", OCI_MANIFEST, &[good, bad], json!({}))?;
    let target = &pushed.layers[1];
    let file = reg.blob_file(target);
    let mut data = fs::read(&file)?;
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(&file, &data)?;

    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    let r: Reference = format!("{}/broken:v1", reg.addr).parse()?;
    let err = store.pull(&client(&reg), &r, &|_| {}).unwrap_err();
    assert!(
        matches!(err, PullError::Store(StoreError::DigestMismatch { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("digest mismatch for blob {target}")),
        "{err}"
    );
    assert!(!store.blobs().contains(target));
    assert!(
        !store.blobs().contains(&pushed.manifest),
        "no manifest for an incomplete image"
    );
    assert!(store.lookup(&r)?.is_none());
    assert!(
        blob_files(state.path())
            .iter()
            .all(|n| !n.starts_with(".tmp")),
        "{:?}",
        blob_files(state.path())
    );

    data.truncate(mid);
    fs::write(&file, &data)?;
    let err = store.pull(&client(&reg), &r, &|_| {}).unwrap_err();
    assert!(matches!(err, PullError::Store(_)), "{err:?}");
    assert!(!store.blobs().contains(target));
    assert!(blob_files(state.path())
        .iter()
        .all(|n| !n.starts_with(".tmp")));
    Ok(())
}

#[test]
fn layers_that_escape_the_root_are_rejected_and_build_nothing() -> Result<()> {
    let reg = Registry::start()?;
    let cases = [
        (
            "dotdot",
            Tar::new()
                .file("etc/ok", "ok")
                .file("../../escaped", "x")
                .build(),
        ),
        (
            "symlink",
            Tar::new()
                .symlink("up", "../../..")
                .file("up/tmp/escaped", "x")
                .build(),
        ),
        ("absolute", Tar::new().file("/tmp/escaped", "x").build()),
    ];
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    for (tag, tar) in cases {
        reg.push_image("evil", tag, OCI_MANIFEST, &[Layer::gzip(tar)], json!({}))?;
        let r: Reference = format!("{}/evil:{tag}", reg.addr).parse()?;
        let image = store.pull(&client(&reg), &r, &|_| {})?;
        let err = store.rootfs(&image).unwrap_err();
        assert!(
            matches!(
                err,
                PullError::Rootfs(RootfsError::Unpack {
                    source: UnpackError::Escape { .. },
                    ..
                })
            ),
            "{tag}: {err:?}"
        );
        assert!(err.to_string().contains("escapes the root"), "{tag}: {err}");
    }
    assert_eq!(
        fs::read_dir(state.path().join("rootfs"))?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| !e.file_name().to_string_lossy().ends_with(".lock"))
            })
            .count(),
        0
    );
    assert_eq!(fs::read_dir(state.path().join("tmp"))?.count(), 0);
    assert!(!state.path().join("escaped").exists() && !state.path().join("tmp/escaped").exists());
    Ok(())
}
