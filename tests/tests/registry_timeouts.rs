//! A registry that stops answering mid-download must not hang a pull: the read timeout
//! (`RegistryOptions::read_timeout`) ends the stalled transfer and the retry resumes it.
//! A real registry behind the harness's stalling proxy.

use skiff_tests as common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use common::proxy::{CutProxy, ProxyOptions};
use common::*;
use control_plane::images::registry::{RegistryClient, RegistryOptions};
use control_plane::images::{ImageStore, PullEvent, Reference};
use serde_json::json;

/// 2 MB that gzip cannot shrink much (a xorshift stream).
fn noisy_layer() -> Layer {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: String = (0..2_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    Layer::gzip(Tar::new().file("noise", &data).build())
}

#[test]
fn a_stalled_download_times_out_and_is_resumed() -> Result<()> {
    let reg = Registry::start()?;
    let pushed = reg.push_image("stall", "v1", OCI_MANIFEST, &[noisy_layer()], json!({}))?;
    let proxy = CutProxy::start_with(
        &reg.addr,
        ProxyOptions {
            cuts: 1,
            cut_after: 300_000,
            stall: true,
            strip_range: false,
            pace: None,
            cut_upload: None,
            upload_pace: None,
        },
    )?;
    let client = RegistryClient::new(RegistryOptions {
        insecure: vec![proxy.addr.clone()],
        read_timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    })?;
    let r: Reference = format!("{}/stall:v1", proxy.addr).parse()?;
    let state = tempfile::tempdir()?;
    let store = ImageStore::open(state.path(), None)?;
    let events = Mutex::new(Vec::new());
    let started = Instant::now();
    let image = store.pull(&client, &r, &|e| events.lock().unwrap().push(e))?;
    assert_eq!(image.manifest_digest, pushed.manifest);
    assert!(store.blobs().contains(&pushed.layers[0]));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let retries: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            PullEvent::LayerRetry { error, .. } => Some(error.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(retries.len(), 1, "{retries:?}");
    Ok(())
}
