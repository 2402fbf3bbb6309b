//! Starting `skiff-vmm` for a task, and the files it leaves in the task directory.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::session::LaunchConfig;
use super::snapshot::Snapshot;

/// How the VM comes to life: a full boot, or a restore of a snapshot.
pub(super) enum StartFrom<'a> {
    Boot { api_sock: Option<&'a Path> },
    Snapshot(&'a Snapshot),
}

/// Starts the VMM. Its serial console goes to `console`, its own log to `vmm_log` (a pipe
/// nobody reads would fill and stall it). It gets a process group of its own, so a Ctrl-C
/// meant for `skiff` reaches the task (forwarded by us), not the VMM.
pub(super) fn spawn(
    cfg: &LaunchConfig,
    from: StartFrom<'_>,
    uds: &Path,
    console: &Path,
    vmm_log: std::fs::File,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(&cfg.vmm);
    match from {
        StartFrom::Boot { api_sock } => {
            cmd.arg("--kernel")
                .arg(&cfg.kernel)
                .arg("--initrd")
                .arg(&cfg.initrd)
                .args(["--vcpus", &cfg.vcpus.to_string()])
                .args(["--memory-mib", &cfg.memory_mib.to_string()])
                .args(["--cmdline", "quiet"]);
            if let Some(api) = api_sock {
                cmd.arg("--api-sock").arg(api);
            }
            if let Ok(extra) = std::env::var("SKIFF_VMM_BOOT_ARGS") {
                cmd.args(extra.split_whitespace());
            }
        }
        StartFrom::Snapshot(snap) => {
            cmd.arg("--restore")
                .arg(&snap.state)
                .arg("--memory-file")
                .arg(&snap.memory);
        }
    }
    cmd.arg("--disk")
        .arg(format!("{},ro", cfg.rootfs.display()))
        .arg("--vsock")
        .arg(format!("cid=3,uds={}", uds.display()))
        .arg("--serial-out")
        .arg(console)
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
    let mut w = initramfs::CpioWriter::new(std::io::BufWriter::new(f));
    let io = |e: initramfs::InitramfsError| std::io::Error::other(e.to_string());
    initramfs::write_skeleton(&mut w).map_err(io)?;
    w.host_file("init", agent).map_err(io)?;
    w.finish().map_err(io)?;
    std::fs::rename(tmp, out)
}
