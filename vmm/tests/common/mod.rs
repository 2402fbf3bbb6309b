//! Shared helpers for tests that boot real guests with the real `skiff-vmm` binary.
#![allow(dead_code)]

pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vmm::initramfs::{write_skeleton, CpioWriter};

/// A guest that has not ended by then is a failure, never a hang.
pub const BOOT_DEADLINE: Duration = Duration::from_secs(600);

#[allow(unused_imports)]
pub use skiff_tests::kvm_available;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn scratch_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// The guest kernel: $SKIFF_KERNEL, or whatever kernel-config/build.sh builds or caches.
pub fn kernel() -> PathBuf {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            if let Ok(k) = std::env::var("SKIFF_KERNEL") {
                return PathBuf::from(k);
            }
            let out = Command::new("bash")
                .arg(repo_root().join("kernel-config/build.sh"))
                .stderr(Stdio::inherit())
                .output()
                .expect("run kernel-config/build.sh");
            assert!(out.status.success(), "kernel-config/build.sh failed");
            let text = String::from_utf8(out.stdout).unwrap();
            PathBuf::from(text.lines().last().expect("build.sh printed a path").trim())
        })
        .clone()
}

/// The static test init (tests/guest/test-init.c).
pub fn test_init() -> PathBuf {
    guest_program("test-init")
}

/// An initramfs whose /init is the static test init.
pub fn test_init_initramfs(name: &str) -> PathBuf {
    let path = scratch_dir().join(format!("{name}-{}.cpio", std::process::id()));
    let mut w = CpioWriter::new(std::fs::File::create(&path).unwrap());
    write_skeleton(&mut w).unwrap();
    w.host_file("init", &test_init()).unwrap();
    w.finish().unwrap();
    path
}

/// An initramfs with Debian's static busybox, the given applets linked to it, and
/// `script` as /init.
pub fn busybox_initramfs(name: &str, applets: &[&str], script: &str) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: install Debian's busybox-static"
    );
    let path = scratch_dir().join(format!("{name}-{}.cpio", std::process::id()));
    let mut w = CpioWriter::new(std::fs::File::create(&path).unwrap());
    write_skeleton(&mut w).unwrap();
    w.host_file("bin/busybox", busybox).unwrap();
    for a in applets {
        w.symlink(&format!("bin/{a}"), "busybox").unwrap();
    }
    w.file("init", 0o755, script.as_bytes()).unwrap();
    w.finish().unwrap();
    path
}

pub fn vmm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_skiff-vmm")
}

/// Runs `skiff-vmm` with `args` to the end (killed at the deadline) and returns its output.
pub fn run_vmm(args: &[&str]) -> Output {
    let mut child = Command::new(vmm_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start skiff-vmm");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > BOOT_DEADLINE {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "skiff-vmm still running after {BOOT_DEADLINE:?}; console:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The value after `prefix` on the first console line that has it.
pub fn console_value(out: &Output, prefix: &str) -> Option<String> {
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        l.trim_end_matches('\r')
            .split_once(prefix)
            .map(|(_, v)| v.trim().to_owned())
    })
}

pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stderr\n{}\n--- console\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

/// MemTotal in KiB from a "MemTotal:   123 kB" line.
pub fn mem_total_kib(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"))
}

/// Compiles a C program from tests/guest/ into a static binary (once per name).
pub fn guest_program(name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/guest/{name}.c"));
    let out = scratch_dir().join(format!("{name}-{}", std::process::id()));
    if !out.exists() {
        let st = Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("run cc (install build-essential)");
        assert!(st.success(), "cc failed on {}", src.display());
    }
    out
}

/// Like [`busybox_initramfs`], with extra host files at guest paths.
pub fn busybox_initramfs_with(
    name: &str,
    applets: &[&str],
    script: &str,
    files: &[(&Path, &str)],
) -> PathBuf {
    let path = scratch_dir().join(format!("{name}-{}.cpio", std::process::id()));
    let mut w = CpioWriter::new(std::fs::File::create(&path).unwrap());
    write_skeleton(&mut w).unwrap();
    w.host_file("bin/busybox", Path::new("/bin/busybox"))
        .unwrap();
    for a in applets {
        w.symlink(&format!("bin/{a}"), "busybox").unwrap();
    }
    for (host, guest) in files {
        w.host_file(guest, host).unwrap();
    }
    w.file("init", 0o755, script.as_bytes()).unwrap();
    w.finish().unwrap();
    path
}

/// The byte at offset `i` of the vsock test stream (same as tests/guest/vsock-test.c).
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(7).wrapping_add(i >> 11)) as u8
}

/// 64-bit FNV-1a, continued from `h`.
pub fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

pub const FNV_OFFSET: u64 = 0xcbf29ce484222325;
