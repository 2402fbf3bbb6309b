//! `skiff run --local` end to end: real microVMs from the bundled busybox image, each test
//! one task. Output streams, exit codes, signals, failures, user/env/cwd, binary output,
//! writes staying in the upper layer, orphans reaped, timeouts ending the VM. Every run
//! uses Skiff as `scripts/install.sh` installs it, with no Skiff variable set: `skiff`
//! finds its VMM, kernel and agent by itself. The runs keep their snapshots where the test
//! servers do: the first run of the shape boots and leaves one, later runs restore it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use skiff_tests::kvm_available;

/// One state dir for the whole test binary, so the bundled image is made once.
fn state_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = skiff_tests::paths::deep_state_dir("run-local");
        std::fs::create_dir_all(&d).unwrap();
        // Make the bundled image and its root filesystem once, before tests run in parallel.
        let out = skiff(&["image", "pull", "local/busybox:latest"]);
        assert!(out.status.success(), "{}", show(&out));
        d
    })
}

fn skiff(args: &[&str]) -> Output {
    let dir = skiff_tests::paths::deep_state_dir("run-local");
    skiff_in(&dir, args)
}

fn skiff_in(dir: &Path, args: &[&str]) -> Output {
    skiff_tests::install::skiff()
        .arg("--state-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run skiff")
}

/// `--snapshot-dir` and the test servers' snapshot dir.
fn snapshot_flag() -> [String; 2] {
    let dir = skiff_tests::serve::shared_snapshots();
    ["--snapshot-dir".into(), dir.to_string_lossy().into_owned()]
}

fn run(args: &[&str]) -> Output {
    state_dir();
    let flag = snapshot_flag();
    let mut all = vec!["run", "--local", &flag[0], &flag[1]];
    all.extend_from_slice(args);
    skiff(&all)
}

/// sha256 of every EROFS/ext4 root filesystem image in the shared state dir.
fn rootfs_hashes() -> Vec<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("find \"$0\" -name '*.erofs' -o -name '*.ext4' | sort | xargs -r sha256sum")
        .arg(state_dir())
        .output()
        .unwrap();
    text(&out.stdout).lines().map(str::to_owned).collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

#[test]
fn streams_env_user_cwd_upper_layer_and_orphans() {
    if !kvm_available("streams_env_user_cwd_upper_layer_and_orphans") {
        return;
    }
    let o = run(&[
        "-e",
        "FOO=bar baz",
        "-u",
        "1000:1000",
        "-w",
        "/tmp",
        "local/busybox",
        "--",
        "sh",
        "-c",
        "echo out1; echo err1 >&2; echo \"$FOO\"; pwd; id -u; id -g; \
         echo data > /tmp/file && cat /tmp/file; \
         (sleep 0.3 &); sleep 1; \
         echo zombies=$(cat /proc/[0-9]*/stat | grep -c '^[0-9]* ([^)]*) Z'); \
         grep ^SigBlk /proc/$$/status; exit 7",
    ]);
    let d = show(&o);
    assert_eq!(o.status.code(), Some(7), "{d}");
    assert_eq!(
        text(&o.stdout),
        // Orphans reaped; the agent's blocked SIGCHLD is not the process's.
        "out1\nbar baz\n/tmp\n1000\n1000\ndata\nzombies=0\nSigBlk:\t0000000000000000\n",
        "{d}"
    );
    assert_eq!(text(&o.stderr), "err1\n", "{d}");
}

#[test]
fn writes_stay_in_the_upper_layer() {
    if !kvm_available("writes_stay_in_the_upper_layer") {
        return;
    }
    state_dir();
    let before = rootfs_hashes();
    assert!(!before.is_empty(), "no root filesystem image found");
    let o = run(&[
        "local/busybox",
        "--",
        "sh",
        "-c",
        "echo new > /etc/added; rm /bin/ls; cat /etc/added; test -e /bin/ls || echo gone",
    ]);
    let d = show(&o);
    assert_eq!(o.status.code(), Some(0), "{d}");
    assert_eq!(text(&o.stdout), "new\ngone\n", "{d}");
    // The image's root filesystem file on the host is byte for byte what it was.
    assert_eq!(rootfs_hashes(), before, "{d}");
    // The image's root filesystem still has /bin/ls and no /etc/added for the next task,
    // whose VM restores the snapshot the first run left (or found).
    let second = run(&[
        "--timings",
        "local/busybox",
        "--",
        "sh",
        "-c",
        "test -e /bin/ls && test ! -e /etc/added && echo pristine",
    ]);
    assert_eq!(text(&second.stdout), "pristine\n", "{}", show(&second));
    assert!(
        text(&second.stderr).contains("timings from VMM start (restored from a snapshot)"),
        "{}",
        show(&second)
    );
}

#[test]
fn signals_and_start_failures_map_to_shell_exit_codes() {
    if !kvm_available("signals_and_start_failures_map_to_shell_exit_codes") {
        return;
    }
    let o = run(&["local/busybox", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(o.status.code(), Some(137), "{}", show(&o));
    let o = run(&["local/busybox", "--", "no-such-command", "x"]);
    assert_eq!(o.status.code(), Some(127), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("no-such-command: command not found"),
        "{}",
        show(&o)
    );
    let o = run(&["local/busybox", "--", "/etc/passwd"]);
    assert_eq!(o.status.code(), Some(126), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("/etc/passwd: permission denied"),
        "{}",
        show(&o)
    );
    // A "root filesystem" that is no file system: the agent reports it, the VM ends.
    let junk = skiff_tests::paths::tmp_dir().join(format!("junk-{}.img", std::process::id()));
    std::fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
    let o = run(&["--rootfs", junk.to_str().unwrap(), "--", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("cannot mount image disk /dev/vda"),
        "{}",
        show(&o)
    );
    let o = run(&["-u", "ghost", "local/busybox", "--", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("user 'ghost' not found"),
        "{}",
        show(&o)
    );
}

#[test]
fn ten_mib_of_binary_output_arrives_intact() {
    if !kvm_available("ten_mib_of_binary_output_arrives_intact") {
        return;
    }
    let one = std::fs::read("/bin/busybox").unwrap();
    let copies = (10 << 20) / one.len() + 1;
    let script = format!("i=0; while [ $i -lt {copies} ]; do cat /bin/busybox; i=$((i+1)); done");
    let o = run(&["local/busybox", "--", "sh", "-c", &script]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "exit {:?} stderr {}",
        o.status.code(),
        text(&o.stderr)
    );
    assert_eq!(o.stdout.len(), one.len() * copies);
    assert!(
        o.stdout.chunks(one.len()).all(|c| c == one.as_slice()),
        "output differs from /bin/busybox x5"
    );
}

#[test]
fn a_timeout_ends_the_task_and_the_vm() {
    if !kvm_available("a_timeout_ends_the_task_and_the_vm") {
        return;
    }
    // Its own state dir, so that no other test's VM matches the check below.
    state_dir();
    let own = skiff_tests::paths::tmp_dir().join(format!("run-timeout-{}", std::process::id()));
    let flag = snapshot_flag();
    let o = skiff_in(
        &own,
        &[
            "run",
            "--local",
            &flag[0],
            &flag[1],
            "--timeout",
            "3",
            "local/busybox",
            "--",
            "sleep",
            "1000",
        ],
    );
    assert_eq!(o.status.code(), Some(124), "{}", show(&o));
    assert!(
        text(&o.stderr).contains("timed out after 3 s"),
        "{}",
        show(&o)
    );
    // No VMM of this state dir is left running.
    let ps = Command::new("pgrep")
        .arg("-f")
        .arg(own.join("run"))
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "a skiff-vmm survived: {}",
        text(&ps.stdout)
    );
}

#[test]
fn stdin_and_signals_reach_the_task() {
    if !kvm_available("stdin_and_signals_reach_the_task") {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    state_dir();
    let dir = skiff_tests::paths::deep_state_dir("run-local");
    // Reads one line and 1 MiB, then stops reading stdin and waits for SIGINT.
    let script = "trap 'echo got INT; exit 3' INT; read line; echo \"line:$line\"; \
                  echo \"md5:$(head -c 1048576 | md5sum)\"; echo ready; \
                  while :; do sleep 1; done";
    let mut child = Command::new(skiff_tests::paths::skiff())
        .arg("--state-dir")
        .arg(&dir)
        .args(["run", "--local"])
        .args(snapshot_flag())
        .args(["-i", "local/busybox", "--", "sh", "-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let body: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let want_md5 = host_md5(&body);
    let mut stdin = child.stdin.take().unwrap();
    // Then 4 MiB more that nobody reads, with stdin left open: flow control holds them
    // back, and the signal below must not queue behind them.
    let writer = std::thread::spawn(move || {
        stdin.write_all(b"hello stdin\n").unwrap();
        stdin.write_all(&body).unwrap();
        let _ = stdin.write_all(&vec![7u8; 4 << 20]);
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let ready = line == "ready";
        seen.push(line);
        if ready {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            "line:hello stdin".to_owned(),
            format!("md5:{want_md5}  -"),
            "ready".to_owned()
        ]
    );
    // Ctrl-C on `skiff` reaches the task's process, which handles it.
    send_signal(child.id(), "INT");
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(rest, ["got INT"], "stderr: {stderr}");
    assert_eq!(status.code(), Some(3), "stderr: {stderr}");
    // `skiff` has exited, so the writer's pipe is closed and it ends too.
    writer.join().unwrap();
}

fn host_md5(data: &[u8]) -> String {
    use std::io::Write;
    let mut c = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn send_signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}
