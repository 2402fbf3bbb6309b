//! Shared by the benchmarks: the guest kernel and a QEMU microvm command line that boots
//! it the way skiff-vmm does.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// $SKIFF_KERNEL, or whatever kernel-config/build.sh builds or caches.
pub fn kernel() -> PathBuf {
    if let Ok(k) = std::env::var("SKIFF_KERNEL") {
        return k.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("bash")
        .arg(root.join("kernel-config/build.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run kernel-config/build.sh");
    assert!(out.status.success(), "kernel build failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .into()
}

/// The kernel command line skiff-vmm would use (defaults, host quirks, `quiet`), so QEMU
/// boots the guest with the same parameters.
pub fn skiff_cmdline(kernel: &Path) -> String {
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let quirks = vmm::host::HostQuirks::detect(&kvm);
    let mut cfg = vmm::VmConfig::new(kernel.to_owned());
    cfg.cmdline = Some("quiet".into());
    cfg.kernel_cmdline(&quirks.kernel_params())
}

/// `qemu-system-x86_64 -M microvm` with one vCPU, no defaults, console on stdio, and an
/// i8042 so that the guest's reset (reboot=k) ends QEMU (-no-reboot) as it ends skiff-vmm.
pub fn qemu_microvm(kernel: &Path, initrd: &Path, mem_mib: u64) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "microvm,acpi=off,x-option-roms=off,rtc=off",
        "-device",
        "i8042",
    ])
    // PVM refuses MSR_IA32_ARCH_CAPABILITIES, which `-cpu host` sets.
    .args([
        "-enable-kvm",
        "-cpu",
        "host,arch-capabilities=off",
        "-smp",
        "1",
    ])
    .args(["-m", &mem_mib.to_string()])
    .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
    .args(["-serial", "stdio", "-kernel"])
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", &skiff_cmdline(kernel)]);
    c
}

/// Compiles `tests/guest/NAME.c` into a static binary in `dir` (it runs under a busybox
/// initramfs or as init, with no libc of the guest's).
pub fn static_guest_program(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/guest/{name}.c"));
    let st = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status();
    assert!(
        st.map(|s| s.success()).unwrap_or(false),
        "cc -static {} failed (a C compiler and static libc are needed)",
        src.display()
    );
    out
}

pub fn qemu_available() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok()
}
