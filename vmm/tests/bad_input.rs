//! Bad input to `skiff-vmm` exits 2 with one readable line on stderr, and never panics.
//! None of these cases gets as far as creating a VM.

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let p =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A file that passes the kernel-format check: the start of an x86_64 ELF64 header.
fn fake_elf() -> PathBuf {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // 64-bit
    h[5] = 1; // little-endian
    h[18] = 62; // x86_64
    scratch("fake-elf", &h)
}

fn expect_bad_input(args: &[&str], needle: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff-vmm"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: want one line, got:\n{stderr}");
    assert!(lines[0].starts_with("skiff-vmm: "), "{args:?}: {stderr}");
    assert!(
        lines[0].contains(needle),
        "{args:?}: want '{needle}' in: {stderr}"
    );
    assert!(out.stdout.is_empty(), "{args:?}: no guest should have run");
}

#[test]
fn missing_kernel_flag() {
    expect_bad_input(&[], "--kernel is required");
}

#[test]
fn kernel_file_missing_or_not_a_kernel() {
    expect_bad_input(&["--kernel", "/nonexistent/vmlinux"], "cannot open kernel");
    let text = scratch("not-a-kernel", b"hello, I am not a kernel\n");
    expect_bad_input(
        &["--kernel", text.to_str().unwrap()],
        "is not a kernel image",
    );
    let empty = scratch("empty-kernel", b"");
    expect_bad_input(
        &["--kernel", empty.to_str().unwrap()],
        "is not a kernel image",
    );
}

#[test]
fn zero_or_absurd_vcpus() {
    let k = fake_elf();
    let k = k.to_str().unwrap();
    expect_bad_input(
        &["--kernel", k, "--vcpus", "0"],
        "--vcpus must be between 1 and 64, got 0",
    );
    expect_bad_input(&["--kernel", k, "--vcpus", "1000"], "got 1000");
    expect_bad_input(&["--kernel", k, "--vcpus", "-3"], "-3");
    expect_bad_input(&["--kernel", k, "--vcpus", "two"], "two");
}

#[test]
fn zero_absurd_or_more_than_host_memory() {
    let k = fake_elf();
    let k = k.to_str().unwrap();
    expect_bad_input(
        &["--kernel", k, "--memory-mib", "0"],
        "--memory-mib must be between",
    );
    expect_bad_input(
        &["--kernel", k, "--memory-mib", "99999999999"],
        "got 99999999999",
    );
    // 1 TiB is within the absolute limit, but more than this host has.
    expect_bad_input(
        &["--kernel", k, "--memory-mib", "1048576"],
        "more than this host has",
    );
}

#[test]
fn missing_initrd() {
    let k = fake_elf();
    expect_bad_input(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            "/nonexistent/initrd.cpio",
        ],
        "--initrd /nonexistent/initrd.cpio",
    );
    expect_bad_input(
        &["--kernel", k.to_str().unwrap(), "--initrd", "/tmp"],
        "is a directory",
    );
}

#[test]
fn bad_config_files_and_flags() {
    let broken = scratch("broken.json", b"{\"kernel\": ");
    expect_bad_input(&["--config", broken.to_str().unwrap()], "config file");
    let unknown = scratch("unknown.json", b"{\"kernel\": \"/k\", \"cpus\": 2}");
    expect_bad_input(
        &["--config", unknown.to_str().unwrap()],
        "unknown field `cpus`",
    );
    expect_bad_input(
        &["--config", "/nonexistent.json"],
        "cannot read config file",
    );
    expect_bad_input(&["--kernel", "/k", "--frobnicate"], "--frobnicate");
    expect_bad_input(&["--kernel", "/k", "--quirks", "maybe"], "maybe");
}

#[test]
fn restore_flags_and_files_are_checked_before_any_vm() {
    let junk = scratch("junk-state", b"this is not a snapshot\n");
    let mem = scratch("junk-mem", &[0u8; 4096]);
    expect_bad_input(
        &[
            "--restore",
            junk.to_str().unwrap(),
            "--memory-file",
            mem.to_str().unwrap(),
        ],
        "not a skiff-vmm snapshot state file",
    );
    expect_bad_input(
        &[
            "--restore",
            "/nonexistent/state",
            "--memory-file",
            mem.to_str().unwrap(),
        ],
        "/nonexistent/state",
    );
    expect_bad_input(&["--restore", junk.to_str().unwrap()], "--memory-file");
    expect_bad_input(
        &[
            "--restore",
            junk.to_str().unwrap(),
            "--memory-file",
            mem.to_str().unwrap(),
            "--kernel",
            "/vmlinux",
        ],
        "cannot be used with",
    );
    let mut v = b"SKIFFSNP".to_vec();
    v.extend_from_slice(&7u32.to_le_bytes());
    v.resize(64, 0);
    let future = scratch("future-state", &v);
    expect_bad_input(
        &[
            "--restore",
            future.to_str().unwrap(),
            "--memory-file",
            mem.to_str().unwrap(),
        ],
        "snapshot format version 7",
    );
}

#[test]
fn bad_net_flags_and_missing_taps() {
    let k = fake_elf();
    let k = k.to_str().unwrap();
    expect_bad_input(
        &["--kernel", k, "--net", "mac=02:00:00:00:00:01"],
        "tap=NAME missing",
    );
    expect_bad_input(
        &["--kernel", k, "--net", "tap=t0,mac=02:00:00:00:00"],
        "bad MAC address",
    );
    expect_bad_input(
        &["--kernel", k, "--net", "tap=t0,mac=01:00:00:00:00:01"],
        "multicast",
    );
    expect_bad_input(
        &["--kernel", k, "--net", "tap=way-too-long-name0"],
        "1 to 15 bytes",
    );
    expect_bad_input(
        &["--kernel", k, "--net", "tap=skiffnotap9"],
        "no such network interface",
    );
    let json = scratch(
        "net.json",
        format!(r#"{{"kernel": "{k}", "net": {{"tap": "t0", "queues": 2}}}}"#).as_bytes(),
    );
    expect_bad_input(
        &["--config", json.to_str().unwrap()],
        "unknown field `queues`",
    );
    let json = scratch(
        "net-name.json",
        format!(r#"{{"kernel": "{k}", "net": {{"tap": "a/b"}}}}"#).as_bytes(),
    );
    expect_bad_input(
        &["--config", json.to_str().unwrap()],
        "not a valid interface name",
    );
}
