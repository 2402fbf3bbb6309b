//! The snapshot fast path through a real `skiff serve`: the first task of a shape boots
//! (and the server snapshots a VM of that shape in the background); later tasks restore
//! it, give the same output as a boot, get their own random state and the right wall
//! clock; every VMM is jailed (inspected from the host while a restored task runs), and a
//! VMM killed by its cgroup's memory limit or by its seccomp filter (a forbidden call
//! injected into it) stops its task with that reason
//! while the server carries on; a damaged snapshot is refused and the task still runs (by
//! a full boot). Once a task of the image has restored the base snapshot, the server makes
//! the image's warm snapshot, and later tasks restore that one, with the same guarantees.
//! One server, one boot plus the snapshot's: the rest are restores.

use skiff_tests::serve as harness;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{state_dir, Serve};
use serde_json::{json, Value};
use skiff_tests::kvm_available;

const LONG: Duration = Duration::from_secs(1200);

/// Prints a fixed line, 16 random bytes and the guest's wall clock.
fn probe() -> Value {
    json!({
        "image": "local/busybox",
        "command": ["sh", "-c", "cat /etc/passwd >/dev/null; echo same output; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' '; date +%s"],
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

/// A restored task that runs until stopped, RUNNING; returns its id.
fn running_task(srv: &Serve, command: &str) -> String {
    let id = srv.submit(&json!({
        "image": "local/busybox",
        "command": ["sh", "-c", command],
        "memoryMiB": 128,
    }));
    let t = srv.wait_task(&id, "running", LONG, |t| {
        t["state"] == "RUNNING" || t["state"] == "STOPPED"
    });
    assert_eq!(t["state"], "RUNNING", "{t:#}");
    assert_eq!(t["startMode"], "snapshot", "{t:#}");
    id
}

/// The task's jailer (`vmmPid`) and the VMM, its only child.
fn jailed_vmm(srv: &Serve, id: &str) -> (u32, u32) {
    let jailer = srv.task(id)["vmmPid"].as_u64().expect("vmmPid") as u32;
    let children = std::fs::read_to_string(format!("/proc/{jailer}/task/{jailer}/children"))
        .expect("the jailer's children");
    let vmm = children
        .split_whitespace()
        .next()
        .expect("a VMM")
        .parse()
        .unwrap();
    (jailer, vmm)
}

fn status_line(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
}

fn task_cgroup(dir: &Path, id: &str) -> jailer::cgroup::Cgroup {
    control_plane::launcher::jail::cgroup_of(&dir.join("tasks").join(id), "skiff")
        .expect("a cgroup layout")
}

fn stop(srv: &Serve, id: &str) -> Value {
    let (s, v) = srv.request("POST", &format!("/v1/tasks/{id}/stop"), None);
    assert!(s.is_success(), "{v:#}");
    srv.wait_stopped(id, LONG)
}

/// Issue 12's inspection: uid, seccomp, no_new_privs, namespaces, root, cgroup limits.
fn jailed_vmm_seen_from_the_host(srv: &Serve, dir: &Path) {
    let id = running_task(srv, "sleep 300");
    let (jailer, vmm) = jailed_vmm(srv, &id);
    let exe = std::fs::read_link(format!("/proc/{vmm}/exe")).unwrap();
    assert!(exe.ends_with("skiff-vmm"), "{}", exe.display());
    let uids = status_line(vmm, "Uid:");
    assert!(
        !uids.split(' ').any(|u| u == "0"),
        "the VMM runs as root: {uids}"
    );
    assert_eq!(status_line(vmm, "NoNewPrivs:"), "1");
    assert_eq!(status_line(vmm, "Seccomp:"), "2", "no seccomp filter");
    assert_eq!(status_line(vmm, "CapEff:"), "0000000000000000");
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{vmm}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "the VMM shares the host's {ns} namespace");
    }
    // Its root holds its own files only: no kernel or initrd for a restore, just the
    // snapshot, its disk, /dev/kvm and its /run.
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    assert_eq!(root, ["dev", "disk", "run", "snapshot"]);
    let dev: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/root/dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dev, ["kvm"]);
    assert!(std::fs::read(format!("/proc/{vmm}/environ"))
        .unwrap()
        .is_empty());
    let cg = task_cgroup(dir, &id);
    let procs = cg.procs();
    assert!(
        procs.contains(&(vmm as i32)) && procs.contains(&(jailer as i32)),
        "{procs:?}"
    );
    assert_eq!(
        cg.memory_limit(),
        Some((128 + 64) << 20),
        "guest memory plus the VMM's allowance"
    );
    let pids = cg
        .dirs()
        .into_iter()
        .find_map(|d| std::fs::read_to_string(d.join("pids.max")).ok());
    assert_eq!(pids.as_deref().map(str::trim), Some("13"));
    let t = stop(srv, &id);
    assert_eq!(t["stopCode"], "UserInitiated", "{t:#}");
    // Nothing of the VM is left: its cgroup is gone.
    assert!(
        cg.dirs().iter().all(|d| !d.exists()),
        "the VM's cgroup was left behind"
    );
}

/// The VMM's cgroup limit is lowered under what the guest is about to touch (clean pages
/// of the snapshot's memory file can be dropped, the guest's writes cannot), then the
/// guest writes 50 MiB: the kernel's OOM killer ends the VMM, and the task says so.
fn vmm_killed_by_its_memory_limit(srv: &Serve, dir: &Path) {
    let id = running_task(
        srv,
        "sleep 3; dd if=/dev/zero of=/dev/shm/fill bs=1M count=50; sleep 30",
    );
    let cg = task_cgroup(dir, &id);
    // cgroup v1 refuses (EBUSY) a limit it cannot reclaim down to: step up until taken.
    let taken = (24..=120)
        .step_by(8)
        .any(|mib: u64| cg.set_memory_limit(mib << 20).is_ok());
    assert!(taken, "no lower memory limit was accepted");
    let t = srv.wait_stopped(&id, LONG);
    assert_eq!(t["stopCode"], "TaskLost", "{t:#}");
    let reason = t["stoppedReason"].as_str().unwrap_or_default();
    assert!(reason.contains("memory limit"), "{reason}");
}

/// A VMM taken over by an attacker: its main thread is made to call
/// `socket(AF_INET, SOCK_STREAM)` (injected with ptrace). The seccomp filter kills the VMM,
/// and the task stops saying so.
fn vmm_killed_by_seccomp(srv: &Serve) {
    let id = running_task(srv, "sleep 300");
    let (_, vmm) = jailed_vmm(srv, &id);
    skiff_tests::inject::inject_syscall(vmm as i32, libc::SYS_socket as u64, [2, 1, 0])
        .expect("inject a syscall into the VMM");
    let t = srv.wait_stopped(&id, Duration::from_secs(60));
    assert_eq!(t["stopCode"], "TaskLost", "{t:#}");
    let reason = t["stoppedReason"].as_str().unwrap_or_default();
    assert!(reason.contains("seccomp"), "{reason}");
}

fn events(t: &Value) -> Vec<String> {
    t["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect()
}

fn wait_for_metric(srv: &Serve, line: &str) {
    let deadline = Instant::now() + LONG;
    while !srv.get_text("/metrics").contains(line) {
        assert!(Instant::now() < deadline, "no {line} after {LONG:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Tasks restored from the warm snapshot (whose exec helper was forked as root before the
/// snapshot) still run as the user and in the directory they ask for, and a program that
/// is not there fails as on a boot.
fn warm_tasks_get_their_own_user_and_errors(srv: &Serve) {
    let id = srv.submit(&json!({
        "image": "local/busybox",
        "command": ["sh", "-c", "id -u; id -g; pwd; cat /proc/self/status | grep -E '^(SigBlk|CapEff)'"],
        "user": "65534:65533",
        "workingDir": "/tmp",
        "memoryMiB": 128,
    }));
    let t = srv.wait_stopped(&id, LONG);
    assert_eq!(t["exitCode"], 0, "{t:#}");
    assert!(
        events(&t).iter().any(|e| e.contains("warm snapshot")),
        "{t:#}"
    );
    let out = String::from_utf8(srv.logs(&id).0).unwrap();
    assert_eq!(
        out,
        "65534\n65533\n/tmp\nSigBlk:\t0000000000000000\nCapEff:\t0000000000000000\n"
    );
    let id = srv.submit(&json!({
        "image": "local/busybox",
        "command": ["no-such-program"],
        "memoryMiB": 128,
    }));
    let t = srv.wait_stopped(&id, LONG);
    assert_eq!(t["exitCode"], 127, "{t:#}");
    assert!(
        t["stoppedReason"]
            .as_str()
            .is_some_and(|r| r.contains("no-such-program: command not found")),
        "{t:#}"
    );
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
    // Its own snapshot dir: this test watches the build and then damages the snapshot.
    let own = dir.join("snapshots");
    let srv = Serve::start(
        &dir,
        &[
            "--cpus",
            "2",
            "--memory-mib",
            "1024",
            "--snapshot-dir",
            own.to_str().unwrap(),
        ],
    );
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
    // a restores the shape's base snapshot; the server then makes the image's warm one
    // from it (root mounted, exec helper forked, program read ahead), which b restores.
    let (a, a_out) = run(&srv);
    let host_after_a = now_s();
    wait_for_metric(&srv, "skiff_warm_snapshots 1");
    // a's agent noted the files a's process opened; the warm build read them ahead.
    let opened = std::fs::read_dir(&own)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("opened"))
        .find(|p| p.exists())
        .expect("a warm snapshot that lists the files its first task opened");
    let opened = std::fs::read_to_string(opened).unwrap();
    assert!(
        opened.lines().any(|l| l == "/etc/passwd"),
        "the probe reads /etc/passwd; the warm snapshot read ahead:\n{opened}"
    );
    let (b, b_out) = run(&srv);
    let host_after_b = now_s();
    for t in [&a, &b] {
        assert_eq!(t["startMode"], "snapshot", "{t:#}");
        assert_eq!(t["stopCode"], "EssentialContainerExited");
    }
    assert!(
        events(&a)
            .iter()
            .any(|e| e.contains("restoring a snapshot")),
        "{a:#}"
    );
    assert!(
        events(&b)
            .iter()
            .any(|e| e.contains("restoring the image's warm snapshot")),
        "{b:#}"
    );
    let m = srv.get_text("/metrics");
    for want in [
        "skiff_warm_snapshot_hits_total 1",
        "skiff_warm_snapshot_misses_total 1",
        "skiff_warm_snapshot_builds_total 1",
    ] {
        assert!(m.contains(want), "no {want} in the metrics:\n{m}");
    }
    warm_tasks_get_their_own_user_and_errors(&srv);
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

    jailed_vmm_seen_from_the_host(&srv, &dir);
    vmm_killed_by_its_memory_limit(&srv, &dir);
    vmm_killed_by_seccomp(&srv);

    // Damage the snapshot: the restore is refused, the task boots instead and succeeds,
    // and the damaged snapshot is dropped.
    // The image's warm snapshot is the one its tasks restore now: damage that one.
    let snap_dir = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("vm.state").exists() && p.to_string_lossy().contains("-img-"))
        .expect("a warm snapshot dir");
    let state = snap_dir.join("vm.state");
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&state, bytes).unwrap();
    let (c, c_out) = run(&srv);
    assert_eq!(c["startMode"], "boot", "{c:#}");
    assert_eq!(c_out[0], "same output");
    let events = events(&c);
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
