//! Layer downloads cut mid-way (by a proxy on loopback) are retried; a registry that keeps
//! failing gives a clear error and leaves nothing in the store (only a partial file apart
//! from it, for the next pull to resume; see `resume.rs`).

use skiff_tests as common;

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use anyhow::Result;
use common::layers::insecure_client;
use common::proxy::CutProxy;
use common::*;
use control_plane::images::store::StoreError;
use control_plane::images::{ImageStore, PullError, PullEvent, Reference};
use serde_json::json;

/// 2 MB that gzip cannot shrink, so each try gets further than the 100 kB cut.
fn noisy_layer() -> Layer {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..2_000_000u32)
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

#[test]
fn cut_downloads_are_retried_and_endless_failures_are_reported() -> Result<()> {
    let reg = Registry::start()?;
    let pushed = reg.push_image("flaky", "v1", OCI_MANIFEST, &[noisy_layer()], json!({}))?;

    // The proxy cuts blob downloads after 100 kB, twice: the config is smaller and goes
    // through; the 2 MB layer is cut on its first two attempts.
    let proxy = CutProxy::start(&reg.addr, 2, 100_000)?;
    let r: Reference = format!("{}/flaky:v1", proxy.addr).parse()?;
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;

    let events = Mutex::new(Vec::new());
    let image = store.pull(&insecure_client(&r.registry), &r, &|e| {
        events.lock().unwrap().push(e)
    })?;
    assert_eq!(image.manifest_digest, pushed.manifest);
    assert!(store.blobs().contains(&pushed.layers[0]));
    let retries = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, PullEvent::LayerRetry { .. }))
        .count();
    assert_eq!(retries, 2, "two cut layer downloads, then a whole one");
    assert_eq!(proxy.cuts_done.load(Ordering::SeqCst), 2);

    let always = CutProxy::start(&reg.addr, usize::MAX, 100_000)?;
    let r: Reference = format!("{}/flaky:v1", always.addr).parse()?;
    let fresh = tempfile::tempdir()?;
    let store = ImageStore::open(fresh.path(), None)?;
    let err = store
        .pull(&insecure_client(&r.registry), &r, &|_| {})
        .unwrap_err();
    assert!(
        matches!(err, PullError::Store(StoreError::Fetch { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("fetching blob {}", pushed.layers[0])),
        "{err}"
    );
    assert!(!store.blobs().contains(&pushed.layers[0]));
    // What the five tries got is kept apart from the store for the next pull to resume.
    let partial = store.blobs().partial_path(&pushed.layers[0]);
    assert!(std::fs::metadata(&partial)?.len() > 300_000);
    Ok(())
}
