//! Through a real `skiff serve`: stopped tasks are pruned after `--task-retention` (their
//! record, events and directory; the API answers 404 and the list no longer shows them),
//! a task stopped later is kept until its own retention ends, and a task directory with
//! no record is removed when the server starts. No VM is needed: the tasks name an image
//! that does not exist, so they stop right after they are accepted.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use skiff_tests::serve::{state_dir, Serve};

const RETENTION_S: u64 = 8;

fn failing_task(srv: &Serve) -> String {
    let id = srv.submit(&json!({"image": "local/no-such-image", "command": ["true"]}));
    let t = srv.wait_stopped(&id, Duration::from_secs(30));
    assert_eq!(t["stopCode"], "TaskFailedToStart", "{t:#}");
    id
}

fn listed(srv: &Serve) -> Vec<String> {
    srv.get("/v1/tasks?limit=100")["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn stopped_tasks_are_pruned_after_their_retention() {
    let dir = state_dir("retention");
    let orphan = dir.join("tasks/00000000deadbeef");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("output.log"), b"left by a crash").unwrap();
    let retention = format!("{RETENTION_S}s");
    let srv = Serve::start(&dir, &["--no-snapshots", "--task-retention", &retention]);
    assert!(
        !orphan.exists(),
        "a task directory with no record survived the start"
    );

    let first = failing_task(&srv);
    // A task that never got a VM has no directory: give it one, to see it go with it.
    let first_dir = dir.join("tasks").join(&first);
    std::fs::create_dir_all(&first_dir).unwrap();
    assert!(!srv.task(&first)["events"].as_array().unwrap().is_empty());
    std::thread::sleep(Duration::from_secs(RETENTION_S / 2));
    let second = failing_task(&srv);
    assert_eq!(listed(&srv), [second.clone(), first.clone()]);

    let deadline = Instant::now() + Duration::from_secs(RETENTION_S + 10);
    loop {
        let (status, _) = srv.request("GET", &format!("/v1/tasks/{first}"), None);
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(Instant::now() < deadline, "{first} was never pruned");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The first is gone whole; the second, stopped half a retention later, is still there.
    assert!(
        !first_dir.exists(),
        "the pruned task's directory is still there"
    );
    assert_eq!(listed(&srv), std::slice::from_ref(&second));
    let (status, _) = srv.request("GET", &format!("/v1/tasks/{first}/logs"), None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(srv
        .get_text("/metrics")
        .contains("skiff_tasks_pruned_total 1"));
    let deadline = Instant::now() + Duration::from_secs(RETENTION_S + 10);
    while !listed(&srv).is_empty() {
        assert!(Instant::now() < deadline, "{second} was never pruned");
        std::thread::sleep(Duration::from_millis(200));
    }
}
