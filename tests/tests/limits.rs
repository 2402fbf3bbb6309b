//! Limits and verification of pulled content (issue 13), through a real registry: an
//! image's uncompressed size and entry count are capped (a small gzip of zeros must not
//! fill the disk), the config blob has a size cap, and each layer must match its diff_id.

use skiff_tests as common;

use std::fs;
use std::path::Path;

use anyhow::Result;
use common::layers::{config_with_diff_ids, push_with_config, zeros_layer, Crafted};
use common::*;
use control_plane::images::registry::{RegistryClient, RegistryOptions};
use control_plane::images::{Digest, ImageStore, Limits, PullError, Reference};

fn client(reg: &Registry) -> RegistryClient {
    RegistryClient::new(RegistryOptions {
        insecure: vec![reg.addr.clone()],
        ..Default::default()
    })
    .unwrap()
}

/// Files under `dir`, recursively, except lock files.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else if !p.to_string_lossy().ends_with(".lock") {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[test]
fn a_gzip_bomb_stops_at_the_byte_limit_and_leaves_nothing_behind() -> Result<()> {
    let reg = Registry::start()?;
    let (layer, diff_id) = zeros_layer("zeros", 1 << 30)?;
    assert!(layer.bytes.len() < 2 << 20, "{} bytes", layer.bytes.len());
    push_with_config(
        &reg,
        "bomb",
        "v1",
        &[layer],
        &config_with_diff_ids(&[diff_id]),
    )?;

    let state = tempfile::tempdir()?;
    let unpack = tempfile::tempdir()?;
    let limit = 64 << 20;
    let store = ImageStore::open(state.path(), None)?
        .with_unpack_dir(unpack.path())?
        .with_limits(Limits {
            max_image_bytes: limit,
            ..Limits::default()
        });
    let r: Reference = format!("{}/bomb:v1", reg.addr).parse()?;
    let image = store.pull(&client(&reg), &r, &|_| {})?;
    let err = store.rootfs(&image).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("limit of {limit} uncompressed bytes per image")),
        "{text}"
    );
    assert!(
        files(unpack.path()).is_empty(),
        "{:?}",
        files(unpack.path())
    );
    assert!(files(&state.path().join("tmp")).is_empty());
    assert!(files(&state.path().join("rootfs")).is_empty());
    Ok(())
}

#[test]
fn too_many_entries_stop_at_the_entry_limit() -> Result<()> {
    let reg = Registry::start()?;
    let mut tar = Crafted::new();
    for i in 0..50 {
        tar = tar.file(&format!("f{i}"), 0o644, "x");
    }
    let layer = Layer::gzip(tar.build());
    reg.push_image("many", "v1", OCI_MANIFEST, &[layer], serde_json::json!({}))?;
    let state = tempfile::tempdir()?;
    let unpack = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?
        .with_unpack_dir(unpack.path())?
        .with_limits(Limits {
            max_image_entries: 10,
            ..Limits::default()
        });
    let r: Reference = format!("{}/many:v1", reg.addr).parse()?;
    let image = store.pull(&client(&reg), &r, &|_| {})?;
    let err = store.rootfs(&image).unwrap_err().to_string();
    assert!(err.contains("limit of 10 entries per image"), "{err}");
    assert!(files(unpack.path()).is_empty());
    Ok(())
}

#[test]
fn an_oversized_config_is_refused_before_it_is_read() -> Result<()> {
    let reg = Registry::start()?;
    let layer = Layer::gzip(Crafted::new().file("a", 0o644, "a").build());
    let diff_id = Digest::of(&layer.tar);
    let mut config: serde_json::Value = serde_json::from_slice(&config_with_diff_ids(&[diff_id]))?;
    config["padding"] = serde_json::Value::String("x".repeat(9 << 20));
    push_with_config(&reg, "fat", "v1", &[layer], &serde_json::to_vec(&config)?)?;
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    let r: Reference = format!("{}/fat:v1", reg.addr).parse()?;
    let err = store.pull(&client(&reg), &r, &|_| {}).unwrap_err();
    assert!(matches!(err, PullError::ConfigTooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("{}", 8 << 20)), "{err}");
    assert!(store.lookup(&r)?.is_none());
    Ok(())
}

#[test]
fn a_layer_that_does_not_match_its_diff_id_is_refused_by_name() -> Result<()> {
    let reg = Registry::start()?;
    let honest = Layer::gzip(Crafted::new().file("a", 0o644, "honest").build());
    let liar = Layer::gzip(Crafted::new().file("b", 0o644, "liar").build());
    let ids = [Digest::of(&honest.tar), Digest::of(b"not the tar")];
    let liar_digest = Digest::of(&liar.bytes);
    push_with_config(
        &reg,
        "liar",
        "v1",
        &[honest, liar],
        &config_with_diff_ids(&ids),
    )?;
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    let r: Reference = format!("{}/liar:v1", reg.addr).parse()?;
    let image = store.pull(&client(&reg), &r, &|_| {})?;
    let err = store.rootfs(&image).unwrap_err().to_string();
    assert!(err.contains(&liar_digest.to_string()), "{err}");
    assert!(err.contains("diff_id"), "{err}");
    assert!(err.contains(&ids[1].to_string()), "{err}");
    assert!(files(&state.path().join("rootfs")).is_empty());
    Ok(())
}
