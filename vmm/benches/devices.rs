//! Device benchmark: sequential read of a virtio-blk disk inside the guest (skiff-vmm and
//! QEMU microvm on the same file, same kernel, same guest program, in the same run), and
//! vsock throughput guest → host and host → guest through the hybrid Unix socket.
//!
//!   cargo bench --bench devices -- [--disk-mib N] [--vsock-mib N]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmm::initramfs::{write_skeleton, CpioWriter};

mod common;
use common::{kernel, qemu_microvm};

fn initramfs(dir: &Path, name: &str, script: &str, tool: &Path) -> PathBuf {
    let path = dir.join(format!("{name}.cpio"));
    let mut w = CpioWriter::new(std::fs::File::create(&path).unwrap());
    write_skeleton(&mut w).unwrap();
    w.host_file("bin/busybox", Path::new("/bin/busybox"))
        .unwrap();
    for a in ["sh", "mount", "reboot"] {
        w.symlink(&format!("bin/{a}"), "busybox").unwrap();
    }
    w.host_file("bin/vsock-test", tool).unwrap();
    w.file("init", 0o755, script.as_bytes()).unwrap();
    w.finish().unwrap();
    path
}

/// Runs a VMM command to the end and returns the guest's `VSOCK-TEST:` lines.
fn run(mut cmd: Command) -> Vec<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start VMM");
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.split_once("VSOCK-TEST: ").map(|(_, v)| v.to_owned()))
        .collect();
    let _ = child.wait();
    lines
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let disk_mib = arg("--disk-mib", 256);
    let vsock_mib = arg("--vsock-mib", 32);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("devices-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = kernel();
    let tool = common::static_guest_program(&dir, "vsock-test");
    let disk = dir.join("disk.img");
    let data: Vec<u8> = (0..(1u64 << 20)).map(|i| (i * 13 % 251) as u8).collect();
    let mut f = std::fs::File::create(&disk).unwrap();
    for _ in 0..disk_mib {
        f.write_all(&data).unwrap();
    }
    drop(f);

    println!("device benchmark: {disk_mib} MiB disk read, {vsock_mib} MiB vsock each way");

    // Block: skiff-vmm.
    let script =
        "#!/bin/sh\nmount -t proc proc /proc\nmount -t devtmpfs dev /dev\n/bin/vsock-test read /dev/vda x\nreboot -f\n";
    let rd = initramfs(&dir, "blk", script, &tool);
    let mut c = Command::new(env!("CARGO_BIN_EXE_skiff-vmm"));
    c.arg("--kernel").arg(&kernel).arg("--initrd").arg(&rd);
    c.arg("--disk").arg(format!("{},ro", disk.display()));
    c.args(["--memory-mib", "512", "--cmdline", "quiet"]);
    let ours = run(c);
    let ours_mbps = ours.iter().find_map(|l| field(l, "mbps"));

    // Block: QEMU microvm, same file, same guest program.
    let mut q = qemu_microvm(&kernel, &rd, 512);
    q.arg("-drive")
        .arg(format!(
            "id=d0,file={},format=raw,if=none,readonly=on",
            disk.display()
        ))
        .args(["-device", "virtio-blk-device,drive=d0"]);
    let theirs = run(q);
    let theirs_mbps = theirs.iter().find_map(|l| field(l, "mbps"));

    // vsock: guest dials the host and both send `vsock_mib` at once.
    let uds = dir.join("v.sock");
    let p = PathBuf::from(format!("{}_5000", uds.display()));
    let _ = std::fs::remove_file(&p);
    let l = UnixListener::bind(&p).unwrap();
    let bytes = vsock_mib << 20;
    let host = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        let t0 = Instant::now();
        let sender = std::thread::spawn(move || {
            let buf = vec![0x5au8; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                w.write_all(&buf[..n]).unwrap();
                left -= n as u64;
            }
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut r = s;
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
        sender.join().unwrap();
        (got, t0.elapsed())
    });
    let script = format!(
        "#!/bin/sh\nmount -t proc proc /proc\n/bin/vsock-test dial 5000 {bytes}\nreboot -f\n"
    );
    let rd = initramfs(&dir, "vsock", &script, &tool);
    let mut c = Command::new(env!("CARGO_BIN_EXE_skiff-vmm"));
    c.arg("--kernel").arg(&kernel).arg("--initrd").arg(&rd);
    c.arg("--vsock").arg(format!("cid=3,uds={}", uds.display()));
    c.args(["--cmdline", "quiet"]);
    let vs = run(c);
    let (got, took) = host.join().unwrap_or((0, Duration::ZERO));
    let guest_secs = vs.iter().find_map(|l| field(l, "secs"));

    let show = |x: Option<f64>| x.map(|v| format!("{v:.1} MB/s")).unwrap_or("failed".into());
    println!("{:<44}{:>16}{:>16}", "", "skiff-vmm", "qemu microvm");
    println!(
        "{:<44}{:>16}{:>16}",
        "virtio-blk sequential read (1 MiB reads)",
        show(ours_mbps),
        show(theirs_mbps)
    );
    if let (Some(a), Some(b)) = (ours_mbps, theirs_mbps) {
        println!("{:<44}{:>16.2}x", "ratio skiff-vmm / qemu", a / b);
    }
    match guest_secs {
        Some(s) if got == bytes => println!(
            "vsock, both directions at once: {:.1} MB/s each way ({vsock_mib} MiB in {s:.2} s guest time, {:.2} s host time)",
            bytes as f64 / s / 1e6,
            took.as_secs_f64()
        ),
        _ => println!("vsock: transfer failed (host got {got} of {bytes} bytes)"),
    }
    println!("(on PVM hosts the guest kernel's share of every transfer is emulated)");
}
