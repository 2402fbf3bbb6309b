//! Debian's static busybox as /init runs shell commands in guest user space, on 2 vCPUs and
//! 4 GiB (memory split around the MMIO hole), and `reboot -f` ends the VMM with 0.

mod common;

use common::*;

const SCRIPT: &str = r#"#!/bin/sh
mount -t proc proc /proc
echo "SKIFF-BUSYBOX: hello from $(uname -s)"
echo "SKIFF-BUSYBOX: cpus=$(grep -c ^processor /proc/cpuinfo)"
echo "SKIFF-BUSYBOX: $(grep MemTotal /proc/meminfo)"
echo "SKIFF-BUSYBOX: words=$(echo one two three | wc -w)"
ls / > /tmp/ls.txt
echo "SKIFF-BUSYBOX: ls-sees-proc=$(grep -c '^proc$' /tmp/ls.txt)"
x=0; for i in 1 2 3 4 5; do x=$((x + i)); done
echo "SKIFF-BUSYBOX: sum=$x"
echo "SKIFF-BUSYBOX: done"
reboot -f
"#;

#[test]
fn busybox_shell_runs_on_two_vcpus_and_4_gib() {
    if !kvm_available("busybox_shell_runs_on_two_vcpus_and_4_gib") {
        return;
    }
    let kernel = kernel();
    let initrd = busybox_initramfs(
        "busybox",
        &["sh", "mount", "echo", "uname", "grep", "wc", "ls", "reboot"],
        SCRIPT,
    );
    let out = run_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--vcpus",
        "2",
        "--memory-mib",
        "4096",
        "--cmdline",
        "quiet",
    ]);
    let d = describe(&out);
    assert_eq!(out.status.code(), Some(0), "{d}");
    assert_eq!(
        console_value(&out, "SKIFF-BUSYBOX: hello from").as_deref(),
        Some("Linux"),
        "{d}"
    );
    assert_eq!(
        console_value(&out, "SKIFF-BUSYBOX: cpus=").as_deref(),
        Some("2"),
        "{d}"
    );
    let mem = mem_total_kib(&console_value(&out, "SKIFF-BUSYBOX: MemTotal:").expect(&d));
    assert!(
        (3900 * 1024..4096 * 1024).contains(&mem),
        "MemTotal {mem} kB\n{d}"
    );
    assert_eq!(
        console_value(&out, "SKIFF-BUSYBOX: words=").as_deref(),
        Some("3"),
        "{d}"
    );
    assert_eq!(
        console_value(&out, "SKIFF-BUSYBOX: ls-sees-proc=").as_deref(),
        Some("1"),
        "{d}"
    );
    assert_eq!(
        console_value(&out, "SKIFF-BUSYBOX: sum=").as_deref(),
        Some("15"),
        "{d}"
    );
    assert!(console_value(&out, "SKIFF-BUSYBOX: done").is_some(), "{d}");
}
