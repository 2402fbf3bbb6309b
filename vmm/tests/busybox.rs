//! Debian's static busybox as /init runs shell commands in guest user space, on 2 vCPUs and
//! 4 GiB (memory split around the MMIO hole), and `reboot -f` ends the VMM with 0. The same
//! boot checks virtio-net: the VMM runs in a network namespace of the test's own with a TAP
//! (10.200.0.1/24 on the host side); the guest brings `eth0` up as 10.200.0.2, pings the
//! host and moves a few MiB over TCP both ways (busybox `nc` against listeners of this
//! test inside the namespace), checksums compared. One boot for both: each costs 30-60 s
//! on PVM hosts.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::netns::{netns_available, NetNs};
use common::*;

/// Bytes moved each way over TCP: 256 KiB, as TCP in this guest moves 15-30 KiB/s on PVM
/// hosts (every segment's checksum, copy and interrupt runs in the emulated guest kernel;
/// the device does no offloads). The guest sends back what it got (random bytes made in
/// the guest would cost minutes more).
const TRANSFER: usize = 256 << 10;
const MAC: &str = "02:5c:1f:00:00:02";
const UP_PORT: u16 = 5001;
const DOWN_PORT: u16 = 5002;

const SCRIPT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t devtmpfs dev /dev
echo "SKIFF-BUSYBOX: hello from $(uname -s)"
echo "SKIFF-BUSYBOX: cpus=$(grep -c ^processor /proc/cpuinfo)"
echo "SKIFF-BUSYBOX: $(grep MemTotal /proc/meminfo)"
echo "SKIFF-BUSYBOX: words=$(echo one two three | wc -w)"
ls / > /tmp/ls.txt
echo "SKIFF-BUSYBOX: ls-sees-proc=$(grep -c '^proc$' /tmp/ls.txt)"
x=0; for i in 1 2 3 4 5; do x=$((x + i)); done
echo "SKIFF-BUSYBOX: sum=$x"
ip link set eth0 up
ip addr add 10.200.0.2/24 dev eth0
ip link show eth0 > /tmp/link.txt
echo "SKIFF-BUSYBOX: $(grep -o 'ether [0-9a-f:]*' /tmp/link.txt)"
ping -c 3 10.200.0.1 > /tmp/ping.txt
echo "SKIFF-BUSYBOX: ping-exit=$?"
echo "SKIFF-BUSYBOX: $(grep 'packets received' /tmp/ping.txt)"
echo "SKIFF-BUSYBOX: $(grep round-trip /tmp/ping.txt)"
nc 10.200.0.1 5002 < /dev/null > /tmp/down
echo "SKIFF-BUSYBOX: down-exit=$?"
echo "SKIFF-BUSYBOX: down-md5=$(md5sum /tmp/down)"
nc 10.200.0.1 5001 < /tmp/down
echo "SKIFF-BUSYBOX: up-exit=$?"
echo "SKIFF-BUSYBOX: done"
reboot -f
"#;

/// md5 of `data` as hex, by the host's md5sum.
fn md5(data: &[u8]) -> String {
    let mut c = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run md5sum");
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn accept(l: &TcpListener, deadline: Instant) -> TcpStream {
    l.set_nonblocking(true).unwrap();
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(300))).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the guest never connected");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// What the host side of the transfers saw.
#[derive(Debug)]
struct HostSide {
    up_md5: String,
    up_secs: f64,
    down_md5: String,
    down_secs: f64,
}

/// Listens inside `ns` on 10.200.0.1: sends TRANSFER random bytes to the guest on
/// DOWN_PORT, then takes TRANSFER bytes back on UP_PORT. Runs on its own thread, moved
/// into `ns`.
fn host_side(ns: &NetNs) -> mpsc::Receiver<Result<HostSide, String>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    let name = ns.name.clone();
    std::thread::spawn(move || {
        NetNs::enter_this_thread(&name);
        let up = TcpListener::bind(("10.200.0.1", UP_PORT)).unwrap();
        let down = TcpListener::bind(("10.200.0.1", DOWN_PORT)).unwrap();
        ready_tx.send(()).unwrap();
        let result = std::panic::catch_unwind(|| {
            let deadline = Instant::now() + BOOT_DEADLINE;
            let data = random_bytes(TRANSFER);
            let mut s = accept(&down, deadline);
            // A small send buffer: write_all returns when nearly all has reached the guest.
            set_sndbuf(&s, 32 << 10);
            let t = Instant::now();
            s.write_all(&data).expect("send to the guest");
            s.shutdown(Shutdown::Write).unwrap();
            let _ = s.read(&mut [0u8; 16]);
            let down_secs = t.elapsed().as_secs_f64();
            drop(s);
            let mut s = accept(&up, deadline);
            let t = Instant::now();
            let mut got = vec![0u8; TRANSFER];
            s.read_exact(&mut got).expect("read the guest's upload");
            let up_secs = t.elapsed().as_secs_f64();
            assert!(got == data, "the bytes the guest sent back differ");
            HostSide {
                up_md5: md5(&got),
                up_secs,
                down_md5: md5(&data),
                down_secs,
            }
        });
        let _ = tx.send(result.map_err(|p| format!("{p:?}")));
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("host listeners ready");
    rx
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut v)
        .unwrap();
    v
}

fn set_sndbuf(s: &TcpStream, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: SO_SNDBUF reads one c_int from the pointer, a live local, for the call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

#[test]
fn busybox_shell_runs_on_two_vcpus_and_4_gib() {
    let test = "busybox_shell_runs_on_two_vcpus_and_4_gib";
    if !kvm_available(test) || !netns_available(test) {
        return;
    }
    let kernel = kernel();
    let initrd = busybox_initramfs(
        "busybox",
        &[
            "sh", "mount", "echo", "uname", "grep", "wc", "ls", "reboot", "ip", "ping", "md5sum",
            "nc",
        ],
        SCRIPT,
    );
    let ns = NetNs::create("busybox");
    ns.add_tap("sktap0", "10.200.0.1/24");
    let host = host_side(&ns);
    let t = Instant::now();
    let child = ns
        .command(vmm_bin())
        .args([
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--vcpus",
            "2",
            "--memory-mib",
            "4096",
            "--net",
            &format!("tap=sktap0,mac={MAC}"),
            "--cmdline",
            "quiet",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start skiff-vmm in the namespace");
    let out = wait_with_deadline(child);
    eprintln!("guest ran for {:?}", t.elapsed());
    let d = describe(&out);
    assert_eq!(out.status.code(), Some(0), "{d}");
    let value = |key: &str| console_value(&out, &format!("SKIFF-BUSYBOX: {key}"));
    assert_eq!(value("hello from").as_deref(), Some("Linux"), "{d}");
    assert_eq!(value("cpus=").as_deref(), Some("2"), "{d}");
    let mem = mem_total_kib(&value("MemTotal:").expect(&d));
    assert!(
        (3900 * 1024..4096 * 1024).contains(&mem),
        "MemTotal {mem} kB\n{d}"
    );
    assert_eq!(value("words=").as_deref(), Some("3"), "{d}");
    assert_eq!(value("ls-sees-proc=").as_deref(), Some("1"), "{d}");
    assert_eq!(value("sum=").as_deref(), Some("15"), "{d}");

    // The network card: the MAC given, ping, TCP both ways.
    assert_eq!(value("ether").as_deref(), Some(MAC), "{d}");
    assert_eq!(value("ping-exit=").as_deref(), Some("0"), "{d}");
    let stats = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("packets received"))
        .map(str::to_owned)
        .expect(&d);
    assert!(stats.contains("3 packets received"), "{stats}\n{d}");
    let rtt = value("round-trip").expect(&d);
    eprintln!("ping: {stats}; round-trip {rtt}");
    let host = host
        .recv_timeout(Duration::from_secs(60))
        .expect("host side finished")
        .unwrap_or_else(|e| panic!("host side: {e}\n{d}"));
    let guest_md5 = |key: &str| {
        value(key)
            .and_then(|v| v.split_whitespace().next().map(str::to_owned))
            .unwrap_or_default()
    };
    assert_eq!(value("up-exit=").as_deref(), Some("0"), "{d}");
    assert_eq!(value("down-exit=").as_deref(), Some("0"), "{d}");
    assert_eq!(guest_md5("down-md5="), host.down_md5, "host -> guest\n{d}");
    assert_eq!(host.up_md5, host.down_md5, "guest -> host\n{d}");
    let mib = TRANSFER as f64 / (1 << 20) as f64;
    eprintln!(
        "TCP guest->host: {mib} MiB in {:.2} s ({:.2} MiB/s); host->guest: {:.2} s ({:.2} MiB/s)",
        host.up_secs,
        mib / host.up_secs,
        host.down_secs,
        mib / host.down_secs
    );
    assert!(value("done").is_some(), "{d}");
}

/// Waits for `child` to end (killed at the boot deadline) and returns its output.
fn wait_with_deadline(mut child: std::process::Child) -> std::process::Output {
    // Read both pipes on threads so a chatty guest cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > BOOT_DEADLINE {
            let _ = child.kill();
            let st = child.wait().unwrap();
            let out = o.join().unwrap();
            panic!(
                "skiff-vmm still running after {BOOT_DEADLINE:?} ({st}); console:\n{}",
                String::from_utf8_lossy(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}
