//! PID 1 duties before any task: the kernel file systems, loopback, hostname, the clock
//! we report timings with, and powering the VM off at the end.

use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;

/// Milliseconds since the guest kernel started (CLOCK_BOOTTIME, which counts from boot).
pub fn boot_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

fn mkdir(p: &str) {
    let _ = nix::unistd::mkdir(p, Mode::from_bits_truncate(0o755));
}

fn mount_fs(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mkdir(target);
    mount(Some(src), target, Some(fstype), flags, data)
        .map_err(|e| format!("mount {fstype} on {target}: {e}"))
}

/// Mounts /proc, /sys, /dev (+ /dev/pts, /dev/shm), /run, /tmp and cgroup2.
pub fn mount_basics() -> Result<(), String> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", nodev, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nodev, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("ptmxmode=0666,mode=0620"),
    )?;
    mount_fs("shm", "/dev/shm", "tmpfs", nodev, Some("mode=1777"))?;
    mount_fs(
        "run",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mount_fs(
        "tmp",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mount_fs("cgroup2", "/sys/fs/cgroup", "cgroup2", nodev, None)?;
    Ok(())
}

/// Brings the loopback interface up.
pub fn loopback_up() -> Result<(), String> {
    super::network::link_up("lo")
}

pub fn set_hostname(name: &str) {
    if let Err(e) = nix::unistd::sethostname(name) {
        eprintln!("skiff-agent: sethostname {name}: {e}");
    }
}

/// A `key=value` from the kernel command line.
pub fn cmdline_value(key: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/cmdline").ok()?;
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
}

/// Flushes file systems and resets the VM (the VMM exits 0). Never returns.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // Only reached if reboot(2) failed: as PID 1, exiting panics the kernel, which the
    // VMM reports as such.
    std::process::exit(1)
}

/// Sets the wall clock to `unix_ms` (the host's clock when it sent the run spec).
pub fn set_wall_clock(unix_ms: u64) -> Result<(), String> {
    use nix::sys::time::TimeSpec;
    use nix::time::{clock_settime, ClockId};
    let ts = TimeSpec::new(
        (unix_ms / 1000) as libc::time_t,
        ((unix_ms % 1000) * 1_000_000) as libc::c_long,
    );
    clock_settime(ClockId::CLOCK_REALTIME, ts).map_err(|e| format!("set the clock: {e}"))
}

// RNDRESEEDCRNG = _IO('R', 0x07): reseed the kernel's CRNG from its input pool now.
nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);

/// Mixes `bytes` into the kernel's entropy pool and reseeds the CRNG at once, so that
/// what /dev/urandom and getrandom(2) return next depends on them.
pub fn add_entropy(bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("open /dev/urandom: {e}"))?;
    f.write_all(bytes)
        .map_err(|e| format!("write /dev/urandom: {e}"))?;
    // SAFETY: RNDRESEEDCRNG takes no argument; the fd is an open /dev/urandom that lives
    // across the call.
    unsafe { rnd_reseed_crng(f.as_raw_fd()) }.map_err(|e| format!("reseed the CRNG: {e}"))?;
    Ok(())
}

/// Lets allocations succeed and leaves the limit to the OOM killer, as a container under a
/// memory limit sees it: with the kernel's default heuristic, one large malloc in a small
/// VM fails outright instead ("out of memory" from the program, not an OOM kill).
pub fn overcommit_like_containers() -> Result<(), String> {
    std::fs::write("/proc/sys/vm/overcommit_memory", "1")
        .map_err(|e| format!("set vm.overcommit_memory: {e}"))
}
