//! The guest's console is a file the guest fills: it is capped (`--serial-max-bytes`), and a
//! write error (here `EFBIG` past RLIMIT_FSIZE, as in a jail) never ends the VM. In both
//! cases the kernel's panic is still seen in the bytes that were dropped. The VMM's own log
//! is capped too (`--log-max-bytes`), its exit line kept after the cap.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::*;

/// Boots the test init that panics, console to `console`, with `extra` flags and, when
/// given, RLIMIT_FSIZE.
fn boot_panicking(console: &Path, extra: &[&str], fsize: Option<u64>) -> Output {
    let kernel = kernel();
    let initrd = test_init_initramfs("console");
    let mut cmd = Command::new(vmm_bin());
    cmd.args(["--kernel", kernel.to_str().unwrap()])
        .args(["--initrd", initrd.to_str().unwrap()])
        .args(["--cmdline", "skiff.test=panic"])
        .arg("--serial-out")
        .arg(console)
        .args(extra)
        .env("SKIFF_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(limit) = fsize {
        let rl = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: setrlimit is async-signal-safe and only reads `rl`, copied into the
        // closure; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            })
        };
    }
    let mut child = cmd.spawn().expect("start skiff-vmm");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > BOOT_DEADLINE {
            let _ = child.kill();
            panic!("skiff-vmm still running after {BOOT_DEADLINE:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn console_is_capped_and_write_errors_never_end_the_vm() {
    if !kvm_available("console_is_capped_and_write_errors_never_end_the_vm") {
        return;
    }
    let dir = scratch_dir().join(format!("console-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // A cap well below what a non-quiet boot prints: one marker, then nothing.
    let capped = dir.join("capped.log");
    let out = boot_panicking(
        &capped,
        &["--serial-max-bytes", "3000", "--log-max-bytes", "1000"],
        None,
    );
    let text = std::fs::read_to_string(&capped).unwrap();
    let d = format!("{}\n--- console\n{text}", describe(&out));
    assert_eq!(out.status.code(), Some(vmm::exit::code::GUEST_PANIC), "{d}");
    let marker =
        "[skiff-vmm: console output reached its limit of 3000 bytes; the rest is dropped]\n";
    assert!(text.ends_with(marker), "{d}");
    assert_eq!(text.len(), 3000 + 1 + marker.len(), "{d}");
    assert!(!text.contains("Kernel panic"), "{d}");
    // The VMM's debug log: 1000 bytes at most, the marker, then only the exit line.
    let log = String::from_utf8_lossy(&out.stderr);
    let log_marker = "skiff-vmm: log capped at 1000 bytes; later lines are dropped\n";
    let (kept, after) = log.split_once(log_marker).expect(&d);
    assert!(kept.len() <= 1000, "{d}");
    assert_eq!(after.lines().count(), 1, "{d}");
    assert!(after.contains("panic"), "{d}");

    // A file size limit (SIGXFSZ is ignored by the VMM): writes fail with EFBIG, the
    // output is given up, the guest runs to its end.
    let limited = dir.join("limited.log");
    let out = boot_panicking(&limited, &[], Some(2000));
    let d = describe(&out);
    assert_eq!(out.status.code(), Some(vmm::exit::code::GUEST_PANIC), "{d}");
    assert_eq!(std::fs::metadata(&limited).unwrap().len(), 2000, "{d}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("console output failed"),
        "{d}"
    );
}
