//! The snapshot fast path through a real `skiff serve`: the first task of a shape boots
//! (and the server snapshots a VM of that shape in the background); later tasks restore
//! it, give the same output as a boot, get their own random state and the right wall
//! clock; a damaged snapshot is refused and the task still runs (by a full boot).

use skiff_tests::serve as harness;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{state_dir, Serve};
use serde_json::{json, Value};
use skiff_tests::kvm_available;

const LONG: Duration = Duration::from_secs(1200);

/// Prints a fixed line, 16 random bytes and the guest's wall clock.
fn probe() -> Value {
    json!({
        "image": "local/busybox",
        "command": ["sh", "-c", "echo same output; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' '; date +%s"],
        "memoryMiB": 128,
    })
}

fn run(srv: &Serve) -> (Value, Vec<String>) {
    let id = srv.submit(&probe());
    let t = srv.wait_stopped(&id, LONG);
    assert_eq!(t["exitCode"], 0, "{t:#}");
    let out = String::from_utf8(srv.logs(&id).0).unwrap();
    (t, out.lines().map(str::to_owned).collect())
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn restored_tasks_match_a_boot_with_their_own_entropy_and_clock() {
    if !kvm_available("restored_tasks_match_a_boot_with_their_own_entropy_and_clock") {
        return;
    }
    let dir = state_dir("snapshot");
    let srv = Serve::start(&dir, &["--cpus", "2", "--memory-mib", "1024"]);
    let (booted, boot_out) = run(&srv);
    assert_eq!(booted["startMode"], "boot", "{booted:#}");
    // The server builds the snapshot of this shape in the background.
    let deadline = Instant::now() + LONG;
    loop {
        let m = srv.get_text("/metrics");
        if m.contains("skiff_snapshots_ready 1") {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot after {LONG:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
    let (a, a_out) = run(&srv);
    let host_after_a = now_s();
    let (b, b_out) = run(&srv);
    let host_after_b = now_s();
    for t in [&a, &b] {
        assert_eq!(t["startMode"], "snapshot", "{t:#}");
        assert_eq!(t["stopCode"], "EssentialContainerExited");
    }
    // Same program, same output as the booted task.
    assert_eq!(a_out[0], "same output");
    assert_eq!(a_out[0], boot_out[0]);
    assert_eq!(b_out[0], boot_out[0]);
    // Own random state: no two tasks read the same bytes.
    assert_eq!(a_out[1].len(), 32, "{a_out:?}");
    assert_ne!(a_out[1], b_out[1]);
    assert_ne!(a_out[1], boot_out[1]);
    // The wall clock is the host's, not the snapshot's.
    for (out, host) in [(&a_out, host_after_a), (&b_out, host_after_b)] {
        let guest: i64 = out[2].parse().unwrap();
        assert!(
            (host - guest).abs() <= 5,
            "guest clock {guest}, host {host}"
        );
    }

    // Damage the snapshot: the restore is refused, the task boots instead and succeeds,
    // and the damaged snapshot is dropped.
    let snap_dir = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("vm.state").exists())
        .expect("a snapshot dir");
    let state = snap_dir.join("vm.state");
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&state, bytes).unwrap();
    let (c, c_out) = run(&srv);
    assert_eq!(c["startMode"], "boot", "{c:#}");
    assert_eq!(c_out[0], "same output");
    let events: Vec<String> = c["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect();
    let refused = events
        .iter()
        .find(|e| e.contains("snapshot restore failed"))
        .unwrap_or_else(|| panic!("no restore failure event: {events:?}"));
    assert!(
        refused.contains("checksum") && refused.contains("exited with code 2"),
        "{refused}"
    );
    assert!(!state.exists(), "the damaged snapshot was kept");
}
