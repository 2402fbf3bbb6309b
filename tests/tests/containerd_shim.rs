//! `containerd-shim-skiff-v2` under a real containerd (Debian's 1.6), driven with `ctr`:
//! containers run in Skiff microVMs with their output, exit codes and signals as with runc,
//! a second command runs in a running container, a memory limit sizes the VM, and bad
//! bundles are refused with a message that reaches `ctr` and nothing left behind.
//!
//! One containerd, one sequence: the VMs boot one after another (boots are the cost here).

use std::time::Duration;

use anyhow::{Context, Result};
use skiff_tests::containerd::{processes_with, Containerd, BUSYBOX_IMAGE, RUNTIME};
use skiff_tests::{kvm_available, wait_until};

/// 192 MiB, as `--memory-limit` takes it.
const MIB_192: &str = "201326592";

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// No shim or VM of this containerd is left, and containerd holds no task or bundle.
fn nothing_left(ctrd: &Containerd) -> Result<()> {
    let dir = ctrd.dir.display().to_string();
    // A shim that is building a snapshot finishes it first.
    wait_until("the shims and VMs to end", Duration::from_secs(600), || {
        let vms: Vec<_> = processes_with("skiff-vmm")
            .into_iter()
            .filter(|(_, c)| c.contains("skiff-test-ctrd-shim"))
            .collect();
        let shims: Vec<_> = processes_with("containerd-shim-skiff-v2")
            .into_iter()
            .filter(|(_, c)| c.contains(&ctrd.socket.display().to_string()))
            .collect();
        (vms.is_empty() && shims.is_empty()).then_some(())
    })
    .with_context(|| format!("left running: {:?}", processes_with("skiff")))?;
    let tasks = ctrd.ctr_ok(&["task", "ls", "-q"])?;
    assert_eq!(tasks.trim(), "", "tasks left: {tasks}");
    let bundles = std::path::Path::new(
        "/run/skiff-test-ctrd-shim/state/io.containerd.runtime.v2.task/default",
    );
    let left: Vec<_> = std::fs::read_dir(bundles)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "bundles left under {}: {left:?} ({dir})",
        bundles.display()
    );
    Ok(())
}

#[test]
fn containers_run_in_skiff_microvms_under_containerd() -> Result<()> {
    if !kvm_available("containers_run_in_skiff_microvms_under_containerd") {
        return Ok(());
    }
    let ctrd = Containerd::start("shim")?;
    ctrd.import_busybox()?;

    // Bad input first: refused before any VM starts, with the reason on ctr's stderr.
    let o = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--mount",
        "type=bind,src=/etc,dst=/data,options=rbind:ro",
        BUSYBOX_IMAGE,
        "bad-volume",
        "true",
    ])?;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/data: volumes are not supported by io.containerd.skiff.v2"),
        "{}",
        stderr(&o)
    );
    let empty = ctrd.dir.join("empty-rootfs");
    std::fs::create_dir_all(&empty)?;
    let o = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--rootfs",
        empty.to_str().unwrap(),
        "bad-rootfs",
        "true",
    ])?;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("the bundle has no root filesystem"),
        "{}",
        stderr(&o)
    );
    let o = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "docker.io/skiff/nosuch:1",
        "bad-image",
        "true",
    ])?;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
    nothing_left(&ctrd)?;

    // A container's output and exit code, in a VM of the size its memory limit asks for
    // (192 MiB: the guest sees that less what its kernel keeps). Its shim builds a
    // snapshot of that VM shape beside it, and waits for the build before it exits.
    // containerd's default spec sets RLIMIT_NOFILE to 1024 both ways (the guest's own
    // hard limit would be 4096).
    // ctr's stdin goes through containerd's FIFO: a short one, whose CloseIO comes right
    // behind its bytes, arrives whole, then ends.
    let o = ctrd.ctr_with_input(
        &[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--memory-limit",
            MIB_192,
            BUSYBOX_IMAGE,
            "echo",
            "sh",
            "-c",
            "echo hi; cat | sed 's/^/in:/'; grep MemTotal /proc/meminfo; ulimit -H -n; \
             echo oops >&2; exit 3",
        ],
        b"from-stdin\nline 2\n",
    )?;
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(3), "{out}{}", stderr(&o));
    assert!(
        out.starts_with("hi\nin:from-stdin\nin:line 2\n"),
        "stdout and the stdin it echoes: {out}"
    );
    assert!(out.ends_with("\n1024\n"), "the spec's rlimit: {out}");
    assert!(stderr(&o).contains("oops"), "{}", stderr(&o));
    let mem_kib: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no MemTotal in {out}"))?;
    assert!(
        (150 * 1024..=192 * 1024).contains(&mem_kib),
        "MemTotal {mem_kib} kB in a VM of 192 MiB"
    );
    nothing_left(&ctrd)?;

    // A long-running container of the same shape, restored from that snapshot: exec a
    // second command in it, then stop it with SIGTERM.
    ctrd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        MIB_192,
        BUSYBOX_IMAGE,
        "sleeper",
        "sleep",
        "600",
    ])?;
    assert!(
        ctrd.log_text()
            .lines()
            .any(|l| l.contains("container prepared id=sleeper") && l.contains("restore=true")),
        "the second container of a shape restores its snapshot"
    );
    let exec = ctrd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "sleeper",
        "sh",
        "-c",
        "echo from-exec; id -u; exit 4",
    ])?;
    assert_eq!(exec.status.code(), Some(4), "{}", stderr(&exec));
    assert_eq!(stdout(&exec), "from-exec\n0\n");
    let ls = ctrd.ctr_ok(&["task", "ls"])?;
    assert!(ls.contains("sleeper") && ls.contains("RUNNING"), "{ls}");
    ctrd.ctr_ok(&["task", "kill", "-s", "SIGTERM", "sleeper"])?;
    wait_until("the container to stop", Duration::from_secs(60), || {
        let ls = ctrd.ctr_ok(&["task", "ls"]).ok()?;
        ls.lines()
            .any(|l| l.starts_with("sleeper") && l.contains("STOPPED"))
            .then_some(())
    })?;
    let del = ctrd.ctr(&["task", "delete", "sleeper"])?;
    assert!(del.status.success(), "{}", stderr(&del));
    assert!(
        stderr(&del).contains("exit code 143"),
        "exit status of SIGTERM: {}",
        stderr(&del)
    );
    ctrd.ctr_ok(&["container", "rm", "sleeper"])?;

    // A process that cannot start: the agent's reason reaches ctr, exit 125 as runc's.
    let o = ctrd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        MIB_192,
        "--cwd",
        "/nonexistent",
        BUSYBOX_IMAGE,
        "bad-cwd",
        "true",
    ])?;
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).contains("/nonexistent"), "{}", stderr(&o));

    nothing_left(&ctrd)?;
    Ok(())
}
