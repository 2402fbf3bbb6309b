//! Boots the real guest kernel in the real `skiff-vmm` and checks, from inside the guest,
//! that it got the vCPUs and memory it asked for, and that guest reset and guest panic end
//! the VMM with the right exit codes.

mod common;

use common::*;

#[test]
fn boots_one_vcpu_128_mib_and_reset_exits_zero() {
    if !kvm_available("boots_one_vcpu_128_mib_and_reset_exits_zero") {
        return;
    }
    let kernel = kernel();
    let initrd = test_init_initramfs("boot-1cpu");
    let out = run_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--vcpus",
        "1",
        "--memory-mib",
        "128",
        "--cmdline",
        "quiet",
    ]);
    let d = describe(&out);
    assert_eq!(out.status.code(), Some(0), "{d}");
    assert!(
        console_value(&out, "SKIFF-TEST-INIT: hello").is_some(),
        "{d}"
    );
    assert_eq!(
        console_value(&out, "SKIFF-TEST-INIT: cpus=").as_deref(),
        Some("1"),
        "{d}"
    );
    let mem = mem_total_kib(&console_value(&out, "SKIFF-TEST-INIT: MemTotal:").expect(&d));
    // The kernel keeps its own image and reserved ranges out of MemTotal.
    assert!(
        (96 * 1024..128 * 1024).contains(&mem),
        "MemTotal {mem} kB\n{d}"
    );
    assert!(
        console_value(&out, "SKIFF-TEST-INIT: done").is_some(),
        "{d}"
    );
}

#[test]
fn guest_kernel_panic_exits_with_its_own_code() {
    if !kvm_available("guest_kernel_panic_exits_with_its_own_code") {
        return;
    }
    let kernel = kernel();
    let initrd = test_init_initramfs("boot-panic");
    let out = run_vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--cmdline",
        "quiet skiff.test=panic",
    ]);
    let d = describe(&out);
    assert_eq!(out.status.code(), Some(vmm::exit::code::GUEST_PANIC), "{d}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("guest kernel panicked"), "{d}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Kernel panic - not syncing"),
        "{d}"
    );
}
