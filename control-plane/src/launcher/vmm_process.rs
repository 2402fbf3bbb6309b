//! Starting `skiff-vmm` for a task, and the files it leaves in the task directory.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::session::LaunchConfig;

/// Starts the VMM. Its serial console goes to `console`, its own log to `vmm_log` (a pipe
/// nobody reads would fill and stall it). It gets a process group of its own, so a Ctrl-C
/// meant for `skiff` reaches the task (forwarded by us), not the VMM.
pub(super) fn spawn(
    cfg: &LaunchConfig,
    uds: &Path,
    console: &Path,
    vmm_log: std::fs::File,
) -> std::io::Result<Child> {
    Command::new(&cfg.vmm)
        .arg("--kernel")
        .arg(&cfg.kernel)
        .arg("--initrd")
        .arg(&cfg.initrd)
        .arg("--disk")
        .arg(format!("{},ro", cfg.rootfs.display()))
        .arg("--vsock")
        .arg(format!("cid=3,uds={}", uds.display()))
        .args(["--vcpus", &cfg.vcpus.to_string()])
        .args(["--memory-mib", &cfg.memory_mib.to_string()])
        .arg("--serial-out")
        .arg(console)
        .args(["--cmdline", "quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(vmm_log)
        .process_group(0)
        .spawn()
}

/// The last lines of the guest console, for error messages.
pub(super) fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Writes the agent's initramfs (the agent as /init) to `out`.
pub fn build_agent_initramfs(agent: &Path, out: &Path) -> std::io::Result<()> {
    let tmp = out.with_extension("tmp");
    let f = std::fs::File::create(&tmp)?;
    let mut w = vmm::initramfs::CpioWriter::new(std::io::BufWriter::new(f));
    let io = |e: vmm::initramfs::InitramfsError| std::io::Error::other(e.to_string());
    vmm::initramfs::write_skeleton(&mut w).map_err(io)?;
    w.host_file("init", agent).map_err(io)?;
    w.finish().map_err(io)?;
    std::fs::rename(tmp, out)
}
