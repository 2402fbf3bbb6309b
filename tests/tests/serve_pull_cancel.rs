//! Through a real `skiff serve` and a real registry behind a slow proxy: stopping a task
//! while its image is still downloading cancels the download. The task is STOPPED at once,
//! the registry stops being read within moments (not after the whole layer), and what came
//! stays as a partial blob for the next pull to resume.

use std::time::{Duration, Instant};

use serde_json::json;
use skiff_tests::proxy::{CutProxy, ProxyOptions};
use skiff_tests::registry::{Layer, Registry, Tar, OCI_MANIFEST};
use skiff_tests::serve::{state_dir, Serve};

/// `n` bytes that gzip or a registry cannot shrink (xorshift).
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn stopping_a_task_cancels_its_image_download() {
    const LAYER: usize = 16 << 20;
    let reg = Registry::start().unwrap();
    let layer = Layer::plain(Tar::new().exe("blob", &noise(LAYER)).build());
    reg.push_image(
        "slow",
        "v1",
        OCI_MANIFEST,
        &[layer],
        json!({"Cmd": ["/blob"]}),
    )
    .unwrap();
    // About 1.3 MB/s: the whole layer would take over 12 s.
    let proxy = CutProxy::start_with(
        &reg.addr,
        ProxyOptions {
            cuts: 0,
            cut_after: 0,
            stall: false,
            strip_range: false,
            pace: Some(Duration::from_millis(12)),
            cut_upload: None,
            upload_pace: None,
        },
    )
    .unwrap();
    let dir = state_dir("pull-cancel");
    let srv = Serve::start(
        &dir,
        &["--no-snapshots", "--insecure-registry", &proxy.addr],
    );
    let id = srv.submit(&json!({"image": format!("{}/slow:v1", proxy.addr), "command": ["true"]}));
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.served() < 1 << 20 {
        assert!(Instant::now() < deadline, "the download never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(srv.task(&id)["state"], "PROVISIONING");

    let (status, v) = srv.request("POST", &format!("/v1/tasks/{id}/stop"), None);
    assert!(status.is_success(), "{status}: {v}");
    let t = srv.wait_stopped(&id, Duration::from_secs(10));
    assert_eq!(t["stopCode"], "UserInitiated", "{t:#}");

    // The download ends at the client's next read: the proxy's writes start failing once
    // the socket buffers between us are full, so its count stops moving within seconds.
    let settle = Instant::now() + Duration::from_secs(20);
    let served = loop {
        let before = proxy.served();
        std::thread::sleep(Duration::from_secs(2));
        let after = proxy.served();
        if after == before {
            break after;
        }
        assert!(Instant::now() < settle, "the registry is still being read");
    };
    assert!(
        served < (LAYER as u64) * 3 / 4,
        "{served} of {LAYER} bytes went out: the download was not cancelled"
    );
    // What came is kept for a resume.
    let partial: u64 = std::fs::read_dir(dir.join("partial/sha256"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    assert!(partial >= 1 << 20, "{partial} bytes kept as a partial blob");
    eprintln!("cancelled after {served} of {LAYER} bytes served; {partial} bytes kept as partial");
}
