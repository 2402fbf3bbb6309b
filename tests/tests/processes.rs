//! Several processes sharing one state dir (as `skiff serve` and `skiff run --local` do)
//! pull and convert one image at once: each blob is fetched once, one rootfs is built.
//! The child processes are this test binary, re-run with `SKIFF_TEST_CHILD` set.

use skiff_tests as common;

use std::process::{Command, Stdio};

use anyhow::{ensure, Result};
use common::layers::insecure_client;
use common::*;
use control_plane::images::{ImageStore, Reference};
use serde_json::json;

const CHILD: &str = "SKIFF_TEST_CHILD";

/// In a child: pull `SKIFF_TEST_REF` into `SKIFF_TEST_STATE` and print the rootfs path.
fn child() -> Result<()> {
    let state = std::env::var("SKIFF_TEST_STATE")?;
    let r: Reference = std::env::var("SKIFF_TEST_REF")?.parse()?;
    let store = ImageStore::open(state.as_ref(), None)?;
    let image = store.pull(&insecure_client(&r.registry), &r, &|_| {})?;
    println!("ROOTFS={}", store.rootfs(&image)?.path.display());
    Ok(())
}

#[test]
fn processes_sharing_a_state_dir_fetch_and_build_once() -> Result<()> {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let reg = Registry::start()?;
    let big: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(big.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "big.bin", big.as_slice())?;
    let layers = [
        Layer::gzip(b.into_inner()?),
        Layer::zstd(Tar::new().file("etc/x", "x").build()),
    ];
    reg.push_image("shared", "v1", OCI_MANIFEST, &layers, json!({}))?;
    let state = tempfile::tempdir()?;
    let me = std::env::current_exe()?;
    // All three start before any is waited for, so they really run at once.
    let children = (0..3)
        .map(|_| {
            Command::new(&me)
                .args([
                    "--exact",
                    "processes_sharing_a_state_dir_fetch_and_build_once",
                    "--nocapture",
                ])
                .env(CHILD, "1")
                .env("SKIFF_TEST_STATE", state.path())
                .env("SKIFF_TEST_REF", format!("{}/shared:v1", reg.addr))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut paths = Vec::new();
    for c in children {
        let out = c.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "child failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        paths.extend(
            stdout
                .lines()
                .filter_map(|l| l.strip_prefix("ROOTFS="))
                .map(String::from),
        );
    }
    assert_eq!(paths.len(), 3);
    assert!(paths.iter().all(|p| p == &paths[0]));
    assert_eq!(
        reg.wait_blob_gets(3)?,
        3,
        "two layers and a config, once each across processes"
    );
    let local = ImageStore::open(state.path(), None)?;
    assert_eq!(local.list()?.len(), 1);
    Ok(())
}
