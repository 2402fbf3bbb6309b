//! Through a real `skiff serve`: submissions are bounded. With one task running and a
//! queue limit of 100, 1,000 tasks submitted at once give 100 accepted and 900 refused with
//! 429 and `Retry-After`; the accepted ones all reach STOPPED when stopped, and nothing is
//! left waiting.

use std::time::Duration;

use serde_json::json;
use skiff_tests::kvm_available;
use skiff_tests::serve::{state_dir, Serve};

#[test]
fn a_thousand_submissions_against_a_queue_of_a_hundred() {
    if !kvm_available("a_thousand_submissions_against_a_queue_of_a_hundred") {
        return;
    }
    let dir = state_dir("queue");
    let srv = Serve::start(
        &dir,
        &["--cpus", "1", "--max-queued", "100", "--no-snapshots"],
    );
    // One task holds the only vCPU; once it is admitted it no longer counts as waiting.
    let first = srv.submit(&json!({"image": "local/busybox", "command": ["sleep", "600"]}));
    srv.wait_task(&first, "admitted", Duration::from_secs(120), |t| {
        t["phases"]["vmStartedMs"].is_u64()
    });
    let body = json!({"image": "local/busybox", "command": ["true"]}).to_string();
    let results: Vec<(u16, Option<String>, serde_json::Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|_| {
                s.spawn(|| {
                    (0..100)
                        .map(|_| srv.request_full("POST", "/v1/tasks", Some(&body)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let accepted: Vec<String> = results
        .iter()
        .filter(|(s, _, _)| *s == 202)
        .map(|(_, _, v)| v["id"].as_str().unwrap().to_owned())
        .collect();
    let refused: Vec<_> = results.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!((accepted.len(), refused.len()), (100, 900));
    let (_, retry_after, v) = refused[0];
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert_eq!(v["error"]["code"], "queue_full");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("100 tasks are already waiting"),
        "{v}"
    );
    // Every accepted task is kept and ends; the queue empties.
    for id in accepted.iter().chain([&first]) {
        let (s, v) = srv.request("POST", &format!("/v1/tasks/{id}/stop"), Some("{}"));
        assert!(s == 202 || s == 409, "stop {id}: {s} {v}");
    }
    for id in accepted.iter().chain([&first]) {
        let t = srv.wait_stopped(id, Duration::from_secs(120));
        assert_eq!(t["stopCode"], "UserInitiated", "{t}");
    }
    let m = srv.get_text("/metrics");
    assert!(m.contains("skiff_tasks_queued 0"), "{m}");
    // Room again: a new submission is accepted.
    let (s, v) = srv.request("POST", "/v1/tasks", Some(&body));
    assert_eq!(s, 202, "{v}");
}
