//! Snapshots with real guests: one boot, a snapshot over the control socket, then restores
//! in new `skiff-vmm` processes. The guest (tests/guest/snapshot-test.c) dials the host
//! over vsock and answers pings; after a restore, vsock's transport reset drops its old
//! connection and it dials again — to the socket path given at restore — with its
//! connection count (state carried over), random bytes, its clock and the first line of
//! /dev/vda (the disk given at restore). A restored VM's own snapshot restores too. Bad
//! snapshot files are refused with exit code 2. The guest has a network card: each VMM
//! runs in a network namespace of the test's own with a TAP of its own (a restore takes a
//! new TAP, in a new namespace), and the host pings the guest after the boot and after
//! every restore.
//! One boot only: each costs 20-60 s on PVM hosts.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{netns_available, NetNs};
use common::*;

const PORT: u32 = 5000;
const GUEST_MAC: &str = "02:5c:1f:00:00:03";

struct Vmm {
    child: Child,
    name: String,
    console: PathBuf,
    stderr: PathBuf,
}

impl Vmm {
    /// Starts skiff-vmm inside `ns`.
    fn start(ns: &NetNs, dir: &Path, name: &str, args: &[&str]) -> Self {
        let console = dir.join(format!("{name}.console"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = ns
            .command(vmm_bin())
            .args(args)
            .arg("--serial-out")
            .arg(&console)
            .env("SKIFF_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start skiff-vmm");
        Self {
            child,
            name: name.to_owned(),
            console,
            stderr,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{}: --- stderr\n{}\n--- console\n{}",
            self.name,
            std::fs::read_to_string(&self.stderr).unwrap_or_default(),
            std::fs::read_to_string(&self.console).unwrap_or_default()
        )
    }

    fn assert_running(&mut self) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!("skiff-vmm ended early ({st})\n{}", self.describe());
        }
    }

    /// Waits for the VMM to end by itself and returns its exit code.
    fn wait(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "skiff-vmm did not exit within {within:?}\n{}",
                    self.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A namespace with TAP `sktap0` (10.200.0.1/24) for one VMM.
fn net_for(tag: &str) -> NetNs {
    let ns = NetNs::create(tag);
    ns.add_tap("sktap0", "10.200.0.1/24");
    ns
}

/// The host pings the guest (10.200.0.2) from `ns` until it answers; returns the RTT line.
fn ping_guest(ns: &NetNs, vmm: &mut Vmm, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let out = ns
            .command("busybox")
            .args(["ping", "-c", "1", "-W", "5", "10.200.0.2"])
            .output()
            .expect("run busybox ping");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return text
                .lines()
                .find(|l| l.contains("time="))
                .unwrap_or_default()
                .to_owned();
        }
        vmm.assert_running();
        assert!(
            Instant::now() < deadline,
            "guest did not answer pings within {within:?}: {text}\n{}",
            vmm.describe()
        );
    }
}

fn listen(uds: &Path) -> UnixListener {
    let p = PathBuf::from(format!("{}_{PORT}", uds.display()));
    let _ = std::fs::remove_file(&p);
    let l = UnixListener::bind(p).unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

/// Accepts the guest's connection and reads its HELLO line.
fn accept_hello(
    l: &UnixListener,
    vmm: &mut Vmm,
    within: Duration,
) -> (BufReader<UnixStream>, String) {
    let deadline = Instant::now() + within;
    let s = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                vmm.assert_running();
                assert!(
                    Instant::now() < deadline,
                    "guest did not connect within {within:?}\n{}",
                    vmm.describe()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HELLO "), "{line:?}\n{}", vmm.describe());
    (r, line.trim().to_owned())
}

fn field<'a>(hello: &'a str, key: &str) -> &'a str {
    hello
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {hello:?}"))
}

fn ping(conn: &mut BufReader<UnixStream>, token: &str) {
    conn.get_mut()
        .write_all(format!("PING {token}\n").as_bytes())
        .unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    assert_eq!(line, format!("PONG {token}\n"));
}

/// One control-socket request; returns the reply.
fn api(sock: &Path, request: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
}

fn disk(dir: &Path, name: &str, first_line: &str) -> PathBuf {
    let p = dir.join(name);
    let mut data = format!("{first_line}\n").into_bytes();
    data.resize(1 << 20, 0);
    std::fs::write(&p, data).unwrap();
    p
}

/// Runs skiff-vmm on bad input and returns (exit code, stderr).
fn run_bad(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(vmm_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "no guest should have run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line, got:\n{stderr}");
    assert!(
        lines[0].starts_with("skiff-vmm: ") && lines[0].contains(needle),
        "want '{needle}' in: {stderr}"
    );
}

#[test]
fn boot_once_snapshot_then_restore_twice_and_refuse_bad_files() {
    let test = "boot_once_snapshot_then_restore_twice_and_refuse_bad_files";
    if !kvm_available(test) || !netns_available(test) {
        return;
    }
    let dir = scratch_dir().join(format!("snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk_a = disk(&dir, "a.img", "SKIFF-DISK-A");
    let disk_b = disk(&dir, "b.img", "SKIFF-DISK-B");
    let mut w =
        vmm::initramfs::CpioWriter::new(std::fs::File::create(dir.join("init.cpio")).unwrap());
    vmm::initramfs::write_skeleton(&mut w).unwrap();
    w.host_file("init", &guest_program("snapshot-test"))
        .unwrap();
    w.finish().unwrap();
    let kernel = kernel();
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    // 1. Boot once, with disk A and a network card.
    let uds0 = dir.join("v0.sock");
    let api0 = dir.join("api0.sock");
    let l0 = listen(&uds0);
    let ns0 = net_for("snap0");
    let mut vm0 = Vmm::start(
        &ns0,
        &dir,
        "boot",
        &[
            "--kernel",
            &s(&kernel),
            "--initrd",
            &s(&dir.join("init.cpio")),
            "--disk",
            &format!("{},ro", disk_a.display()),
            "--vsock",
            &format!("cid=3,uds={}", uds0.display()),
            "--api-sock",
            &s(&api0),
            "--net",
            &format!("tap=sktap0,mac={GUEST_MAC}"),
            "--cmdline",
            "quiet",
        ],
    );
    let (mut c0, hello0) = accept_hello(&l0, &mut vm0, BOOT_DEADLINE);
    assert_eq!(field(&hello0, "conn"), "1", "{hello0}");
    assert_eq!(field(&hello0, "disk"), "SKIFF-DISK-A", "{hello0}");
    ping(&mut c0, "boot");
    eprintln!(
        "boot: guest answers pings: {}",
        ping_guest(&ns0, &mut vm0, Duration::from_secs(120))
    );

    // 2. Pause/resume round trip, then the snapshot (it pauses; the VM stays paused).
    assert_eq!(api(&api0, r#"{"action":"pause"}"#)["ok"], true);
    assert_eq!(api(&api0, r#"{"action":"resume"}"#)["ok"], true);
    ping(&mut c0, "after-resume");
    // A silent client cannot hold the control socket (connections are served one at a
    // time, each request line within api::REQUEST_TIMEOUT): the next client is answered,
    // and the silent one is hung up on.
    let mut silent = UnixStream::connect(&api0).unwrap();
    let t = Instant::now();
    assert_eq!(api(&api0, r#"{"action":"resume"}"#)["ok"], true);
    let waited = t.elapsed();
    assert!(
        waited < vmm::api::REQUEST_TIMEOUT + Duration::from_secs(5),
        "{waited:?}"
    );
    silent
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(silent.read(&mut [0u8; 8]).unwrap(), 0, "hung up");
    let bad = api(&api0, r#"{"action":"fly"}"#);
    assert_eq!(bad["ok"], false, "{bad}");
    // A snapshot that cannot be written says why; the VM stays paused and usable.
    let req = serde_json::json!({"action": "snapshot", "state_path": "/nonexistent/s", "memory_path": "/nonexistent/m"});
    let failed = api(&api0, &req.to_string());
    assert_eq!(failed["ok"], false, "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("/nonexistent/"),
        "{failed}"
    );
    let state = dir.join("vm.state");
    let mem = dir.join("vm.mem");
    let req = serde_json::json!({"action": "snapshot", "state_path": state, "memory_path": mem});
    let snap = api(&api0, &req.to_string());
    assert_eq!(snap["ok"], true, "{snap}\n{}", vm0.describe());
    eprintln!("snapshot: {snap}");
    assert!(snap["msrs"].as_u64().unwrap() > 10, "{snap}");
    assert_eq!(std::fs::metadata(&mem).unwrap().len(), 128 << 20);
    // The snapshotted VM itself carries on when resumed.
    assert_eq!(api(&api0, r#"{"action":"resume"}"#)["ok"], true);
    ping(&mut c0, "after-snapshot");
    assert_eq!(api(&api0, r#"{"action":"shutdown"}"#)["ok"], true);
    assert_eq!(
        vm0.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        vm0.describe()
    );
    drop(c0);

    // 3. Two restores in new processes, each with its own vsock socket; disk B, then A.
    // The first one is snapshotted again.
    let state2 = dir.join("vm2.state");
    let mem2 = dir.join("vm2.mem");
    let mut hellos = Vec::new();
    for (i, (d, want)) in [(&disk_b, "SKIFF-DISK-B"), (&disk_a, "SKIFF-DISK-A")]
        .iter()
        .enumerate()
    {
        let uds = dir.join(format!("v{}.sock", i + 1));
        let api_sock = dir.join(format!("api{}.sock", i + 1));
        let l = listen(&uds);
        let ns = net_for(&format!("snap{}", i + 1));
        let t = Instant::now();
        let mut vm = Vmm::start(
            &ns,
            &dir,
            &format!("restore{}", i + 1),
            &[
                "--restore",
                &s(&state),
                "--memory-file",
                &s(&mem),
                "--disk",
                &format!("{},ro", d.display()),
                "--vsock",
                &format!("cid=3,uds={}", uds.display()),
                "--api-sock",
                &s(&api_sock),
                "--net",
                "tap=sktap0",
                "--timings",
            ],
        );
        let (mut c, hello) = accept_hello(&l, &mut vm, Duration::from_secs(120));
        eprintln!(
            "restore {}: guest dialled again after {:?}: {hello}",
            i + 1,
            t.elapsed()
        );
        // The connection count goes on from the snapshot: this is the booted guest, resumed.
        assert_eq!(field(&hello, "conn"), "2", "{hello}\n{}", vm.describe());
        assert_eq!(field(&hello, "disk"), *want, "{hello}\n{}", vm.describe());
        assert_eq!(field(&hello, "rand").len(), 32, "{hello}");
        assert!(field(&hello, "time").parse::<f64>().is_ok(), "{hello}");
        ping(&mut c, &format!("restore{}", i + 1));
        ping(&mut c, "again");
        // A new TAP in a new namespace: the guest's card works on.
        eprintln!(
            "restore {}: guest answers pings on its new TAP: {}",
            i + 1,
            ping_guest(&ns, &mut vm, Duration::from_secs(60))
        );
        let stderr = std::fs::read_to_string(&vm.stderr).unwrap();
        assert!(
            stderr.contains("restored: vCPUs resumed"),
            "{}",
            vm.describe()
        );
        let console = std::fs::read_to_string(&vm.console).unwrap();
        assert!(
            console.contains("SNAPSHOT-TEST: connection ended"),
            "{}",
            vm.describe()
        );
        if i == 0 {
            // A restored VM can be snapshotted in turn.
            let req = serde_json::json!({"action": "snapshot", "state_path": state2, "memory_path": mem2});
            let r = api(&api_sock, &req.to_string());
            assert_eq!(r["ok"], true, "{r}\n{}", vm.describe());
        }
        assert_eq!(api(&api_sock, r#"{"action":"shutdown"}"#)["ok"], true);
        assert_eq!(
            vm.wait(Duration::from_secs(30)),
            Some(0),
            "{}",
            vm.describe()
        );
        hellos.push(hello);
    }
    eprintln!("hellos after restore: {hellos:?}");

    // 4. The snapshot of a restored VM restores too: its guest counts a third connection.
    let uds3 = dir.join("v3.sock");
    let api3 = dir.join("api3.sock");
    let l3 = listen(&uds3);
    let ns3 = net_for("snap3");
    let mut vm3 = Vmm::start(
        &ns3,
        &dir,
        "restore3",
        &[
            "--restore",
            &s(&state2),
            "--memory-file",
            &s(&mem2),
            "--disk",
            &format!("{},ro", disk_b.display()),
            "--vsock",
            &format!("cid=3,uds={}", uds3.display()),
            "--api-sock",
            &s(&api3),
            "--net",
            "tap=sktap0",
        ],
    );
    let (mut c3, hello3) = accept_hello(&l3, &mut vm3, Duration::from_secs(120));
    assert_eq!(field(&hello3, "conn"), "3", "{hello3}\n{}", vm3.describe());
    ping(&mut c3, "restore3");
    assert_eq!(api(&api3, r#"{"action":"shutdown"}"#)["ok"], true);
    assert_eq!(
        vm3.wait(Duration::from_secs(30)),
        Some(0),
        "{}",
        vm3.describe()
    );

    // 5. Bad files and flags: exit 2, one line, before any VM runs.
    let restore_args = |st: &Path, m: &Path| -> Vec<String> {
        vec![
            "--restore".into(),
            s(st),
            "--memory-file".into(),
            s(m),
            "--disk".into(),
            format!("{},ro", disk_a.display()),
            "--vsock".into(),
            format!("cid=3,uds={}", dir.join("bad.sock").display()),
            "--net".into(),
            "tap=sktap0".into(),
        ]
    };
    let run = |args: Vec<String>| run_bad(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let flipped = dir.join("flipped.state");
    std::fs::write(&flipped, &bytes).unwrap();
    let (code, err) = run(restore_args(&flipped, &mem));
    assert_eq!(code, Some(2), "{err}");
    assert_one_line(&err, "checksum mismatch");

    let truncated_state = dir.join("truncated.state");
    std::fs::write(&truncated_state, &std::fs::read(&state).unwrap()[..1000]).unwrap();
    let (code, err) = run(restore_args(&truncated_state, &mem));
    assert_eq!(code, Some(2), "{err}");
    assert_one_line(&err, "truncated state file");

    let short_mem = dir.join("short.mem");
    std::fs::copy(&mem, &short_mem).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&short_mem)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let (code, err) = run(restore_args(&state, &short_mem));
    assert_eq!(code, Some(2), "{err}");
    assert_one_line(&err, "truncated");

    let (code, err) = run_bad(&[
        "--restore",
        &s(&state),
        "--memory-file",
        &s(&mem),
        "--vsock",
        &format!("cid=3,uds={}", dir.join("bad.sock").display()),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert_one_line(&err, "the snapshot has 1 disk(s); 0 given");

    let mut no_net = restore_args(&state, &mem);
    no_net.truncate(no_net.len() - 2);
    let (code, err) = run(no_net);
    assert_eq!(code, Some(2), "{err}");
    assert_one_line(&err, "the snapshot has a network card: give --net tap=NAME");
    let mut other_mac = restore_args(&state, &mem);
    *other_mac.last_mut().unwrap() = "tap=sktap0,mac=02:00:00:00:00:99".into();
    let (code, err) = run(other_mac);
    assert_eq!(code, Some(2), "{err}");
    assert_one_line(&err, "the guest keeps");

    let _ = std::fs::remove_dir_all(&dir);
}
