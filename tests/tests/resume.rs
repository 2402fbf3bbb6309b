//! Resumed downloads: a blob download cut mid-way goes on with a `Range` request from the
//! bytes already in its partial file — on the retry within one pull, and on the next pull
//! after the pulling process was killed — and a registry that ignores `Range` restarts it
//! cleanly. A loopback proxy between us and the real registry cuts, stalls and counts.

use skiff_tests as common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use common::layers::insecure_client;
use common::proxy::{CutProxy, ProxyOptions};
use common::*;
use control_plane::images::{Digest, ImageStore, PullEvent, Reference};
use serde_json::json;

/// A gzip layer of one file of `len` pseudo-random (incompressible) bytes.
fn noisy_layer(len: usize, seed: u64) -> Layer {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "noise.bin", data.as_slice())
        .expect("tar in memory");
    Layer::gzip(b.into_inner().expect("tar in memory"))
}

/// The offsets of the ranged blob GETs the proxy saw.
fn range_offsets(proxy: &CutProxy) -> Vec<u64> {
    proxy
        .ranges()
        .iter()
        .filter_map(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .collect()
}

fn partial_files(state: &Path) -> Vec<String> {
    fs::read_dir(state.join("partial/sha256"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_cut_download_resumes_from_where_it_stopped_within_one_pull() -> Result<()> {
    let reg = Registry::start()?;
    let layer = noisy_layer(4 << 20, 1);
    let size = layer.bytes.len() as u64;
    let pushed = reg.push_image(
        "resume/a",
        "v1",
        OCI_MANIFEST,
        std::slice::from_ref(&layer),
        json!({}),
    )?;
    // Two cuts, each after 1.2 MB of response: without resuming, the layer would cost
    // 1.2 + 1.2 + 4.2 MB; resumed, it costs its size plus headers.
    let proxy = CutProxy::start(&reg.addr, 2, 1_200_000)?;
    let r: Reference = format!("{}/resume/a:v1", proxy.addr).parse()?;
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    let client = insecure_client(&proxy.addr);
    let events = Mutex::new(Vec::new());
    let image = store.pull(&client, &r, &|e| events.lock().unwrap().push(e))?;
    assert_eq!(image.manifest_digest, pushed.manifest);

    let retries = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, PullEvent::LayerRetry { .. }))
        .count();
    assert_eq!(retries, 2);
    let offsets = range_offsets(&proxy);
    assert_eq!(offsets.len(), 2, "ranged GETs: {:?}", proxy.ranges());
    assert!(
        offsets[0] > 500_000 && offsets[1] > offsets[0] + 500_000 && offsets[1] < size,
        "each retry starts where the last one stopped: {offsets:?}"
    );
    let served = proxy.served();
    assert!(
        served < size + 100_000,
        "{served} bytes served for a {size}-byte layer: the cut parts were fetched again"
    );
    // Verified over the whole blob, stored whole, and no partial file left.
    assert_eq!(store.blobs().read(&pushed.layers[0])?, layer.bytes);
    assert!(partial_files(state.path()).is_empty());
    let fs = store.rootfs(&image)?;
    assert!(fs.path.is_file());
    Ok(())
}

#[test]
fn the_next_pull_after_a_killed_one_resumes_from_its_partial_file() -> Result<()> {
    let reg = Registry::start()?;
    let layer = noisy_layer(6 << 20, 2);
    let size = layer.bytes.len() as u64;
    let pushed = reg.push_image(
        "resume/b",
        "v1",
        OCI_MANIFEST,
        std::slice::from_ref(&layer),
        json!({}),
    )?;
    let digest: &Digest = &pushed.layers[0];
    let state = tempfile::tempdir()?;

    // `skiff image pull` through a proxy that stalls the layer after 3.5 MB; killed there.
    let stall = CutProxy::start_with(
        &reg.addr,
        ProxyOptions {
            cuts: 1,
            cut_after: 3_500_000,
            stall: true,
            strip_range: false,
            pace: None,
            cut_upload: None,
            upload_pace: None,
        },
    )?;
    let mut child = Command::new(skiff_tests::paths::skiff())
        .arg("--state-dir")
        .arg(state.path())
        .args(["image", "pull", "--insecure", &stall.addr])
        .arg(format!("{}/resume/b:v1", stall.addr))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting skiff")?;
    let partial = state.path().join("partial/sha256").join(digest.hex());
    let waited = wait_until("2 MB in the partial file", Duration::from_secs(30), || {
        fs::metadata(&partial)
            .is_ok_and(|m| m.len() >= 2 << 20)
            .then_some(())
    });
    child.kill()?;
    child.wait()?;
    waited?;
    let kept = fs::metadata(&partial)?.len();
    assert!(
        !state
            .path()
            .join("blobs/sha256")
            .join(digest.hex())
            .exists(),
        "a killed pull leaves no blob in the store"
    );

    // A new process pulls through a clean proxy: it asks for the rest only.
    let clean = CutProxy::start(&reg.addr, 0, 0)?;
    let out = Command::new(skiff_tests::paths::skiff())
        .arg("--state-dir")
        .arg(state.path())
        .args(["image", "pull", "--insecure", &clean.addr])
        .arg(format!("{}/resume/b:v1", clean.addr))
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(range_offsets(&clean), [kept], "{:?}", clean.ranges());
    let served = clean.served();
    assert!(
        served < size - kept + 100_000,
        "{served} bytes served, {kept} of {size} were on disk already"
    );
    let store = ImageStore::open(state.path(), None)?;
    assert_eq!(store.blobs().read(digest)?, layer.bytes);
    assert!(partial_files(state.path()).is_empty());
    Ok(())
}

#[test]
fn a_registry_that_ignores_range_sends_the_whole_blob_and_it_still_verifies() -> Result<()> {
    let reg = Registry::start()?;
    let layer = noisy_layer(3 << 20, 3);
    let size = layer.bytes.len() as u64;
    let pushed = reg.push_image(
        "resume/c",
        "v1",
        OCI_MANIFEST,
        std::slice::from_ref(&layer),
        json!({}),
    )?;
    // One cut after 1 MB; the proxy drops Range headers, so the registry answers 200.
    let proxy = CutProxy::start_with(
        &reg.addr,
        ProxyOptions {
            cuts: 1,
            cut_after: 1_000_000,
            stall: false,
            strip_range: true,
            pace: None,
            cut_upload: None,
            upload_pace: None,
        },
    )?;
    let r: Reference = format!("{}/resume/c:v1", proxy.addr).parse()?;
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    let client = insecure_client(&proxy.addr);
    store.pull(&client, &r, &|_| {})?;
    assert_eq!(
        range_offsets(&proxy).len(),
        1,
        "the retry asked for a range: {:?}",
        proxy.ranges()
    );
    let served = proxy.served();
    assert!(
        served > size + 900_000,
        "the whole blob came again after the cut: {served} bytes for {size}"
    );
    assert_eq!(store.blobs().read(&pushed.layers[0])?, layer.bytes);
    assert!(partial_files(state.path()).is_empty());
    Ok(())
}
