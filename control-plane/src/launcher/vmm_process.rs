//! Starting `skiff-vmm` for a task, telling how it ended, and the files it leaves in the
//! task directory.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

use super::config::{LaunchConfig, Snapshot};

/// How the VM comes to life: a full boot, or a restore of a snapshot.
#[derive(Debug, Clone, Copy)]
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

/// The VMM refused its input (flags, or for a restore the snapshot files themselves:
/// damaged, truncated, foreign) and started nothing.
pub(super) fn refused_its_input(status: ExitStatus) -> bool {
    status.code() == Some(vmm_api::exit_code::BAD_INPUT)
}

/// The VMM's exit status in words, with its own log's last line when it wrote one.
pub(super) fn describe_exit(status: ExitStatus, vmm_log: &Path) -> String {
    let how = match (status.code(), status.signal()) {
        (Some(c), _) => format!("skiff-vmm exited with code {c}"),
        (None, Some(s)) => format!("skiff-vmm was killed by signal {s}"),
        _ => format!("skiff-vmm ended ({status})"),
    };
    let log = std::fs::read_to_string(vmm_log).unwrap_or_default();
    match log.trim().lines().last() {
        Some(l) => format!("{how}: {l}"),
        None => how,
    }
}

/// The last lines of the guest console, for error messages.
pub(super) fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
