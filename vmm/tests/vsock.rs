//! virtio-vsock with the hybrid Unix-socket backend, in a real guest: 8 MiB each way at
//! once on a guest-initiated connection and on a host-initiated one (checksums on both
//! ends), then 50 guest connections open at the same time.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// 32 times the 256 KiB credit window each way, so credit updates, stalls on a full
/// window and wrap-around all happen many times. Bigger transfers are the device
/// benchmark's job (`cargo bench --bench devices -- --vsock-mib N`): every MiB costs
/// seconds of emulated guest kernel on a PVM host.
const BYTES: u64 = 8 << 20;

/// Sends the pattern and reads until EOF at the same time; returns (bytes read, FNV).
fn exchange(s: UnixStream) -> (u64, u64) {
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut off = 0u64;
        while off < BYTES {
            let n = (BYTES - off).min(buf.len() as u64) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(off + i as u64);
            }
            w.write_all(&buf[..n]).unwrap();
            off += n as u64;
        }
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut r = s;
    let (mut got, mut h) = (0u64, FNV_OFFSET);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h = fnv(h, &buf[..n]);
        got += n as u64;
    }
    writer.join().unwrap();
    (got, h)
}

fn listen(base: &Path, port: u32) -> UnixListener {
    let p = PathBuf::from(format!("{}_{port}", base.display()));
    let _ = std::fs::remove_file(&p);
    UnixListener::bind(p).unwrap()
}

/// Dials the VM through the hybrid socket until the guest listens (RST, then retry).
fn connect_to_guest(base: &Path, port: u32, deadline: Instant) -> UnixStream {
    loop {
        assert!(
            Instant::now() < deadline,
            "guest never accepted on vsock port {port}"
        );
        if let Ok(mut s) = UnixStream::connect(base) {
            s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap_or(0) == 1 {
                line.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
            if line.starts_with(b"OK ") {
                return s;
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn eight_mib_each_way_both_directions_and_fifty_connections() {
    if !kvm_available("eight_mib_each_way_both_directions_and_fifty_connections") {
        return;
    }
    let dir = scratch_dir().join(format!("vsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let dial_l = listen(&uds, 5000);
    let many_l = listen(&uds, 7000);
    let deadline = Instant::now() + BOOT_DEADLINE;

    let dial = thread::spawn(move || exchange(dial_l.accept().unwrap().0));
    let u = uds.clone();
    let host_dial = thread::spawn(move || exchange(connect_to_guest(&u, 6000, deadline)));
    let many = thread::spawn(move || {
        let mut served = 0;
        for _ in 0..50 {
            let (mut s, _) = many_l.accept().unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap();
            let reply = String::from_utf8_lossy(&buf[..n]).replace("ping", "pong");
            s.write_all(reply.as_bytes()).unwrap();
            served += 1;
        }
        served
    });

    let script = format!(
        "#!/bin/sh\nmount -t proc proc /proc\n\
         /bin/vsock-test dial 5000 {BYTES}\n\
         /bin/vsock-test listen 6000 {BYTES}\n\
         /bin/vsock-test many 7000 50\n\
         reboot -f\n"
    );
    let prog = guest_program("vsock-test");
    let initrd = busybox_initramfs_with(
        "vsock",
        &["sh", "mount", "reboot"],
        &script,
        &[(&prog, "bin/vsock-test")],
    );
    let kernel = kernel();
    let out = run_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--vsock",
        &format!("cid=3,uds={}", uds.display()),
        "--cmdline",
        "quiet",
    ]);
    let d = describe(&out);
    assert_eq!(out.status.code(), Some(0), "{d}");

    let mut expected = FNV_OFFSET;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < BYTES {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern(off + i as u64);
        }
        expected = fnv(expected, &buf);
        off += buf.len() as u64;
    }
    let want = format!("sent={BYTES} recv={BYTES} fnv={expected:016x}");
    let console = String::from_utf8_lossy(&out.stdout);
    let results: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("VSOCK-TEST: sent="))
        .collect();
    assert_eq!(results.len(), 2, "{d}");
    for r in &results {
        assert!(r.contains(&want), "guest saw {r}, want {want}\n{d}");
    }
    assert_eq!(
        dial.join().unwrap(),
        (BYTES, expected),
        "guest-initiated, host side"
    );
    assert_eq!(
        host_dial.join().unwrap(),
        (BYTES, expected),
        "host-initiated, host side"
    );
    assert_eq!(many.join().unwrap(), 50);
    assert_eq!(
        console_value(&out, "VSOCK-TEST: many=").as_deref(),
        Some("50 ok=50"),
        "{d}"
    );
}
