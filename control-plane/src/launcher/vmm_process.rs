//! Starting `skiff-vmm` for a task, always through `skiff-jailer`, telling how it ended,
//! and the files it leaves.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};

use jailer::Bind;

use super::config::{LaunchConfig, Snapshot};
use super::jail::VmJail;

/// The VM's files as the VMM sees them in its jail.
const KERNEL: &str = "/vmlinux";
const INITRD: &str = "/initrd";
const DISK: &str = "/disk";
const SCRATCH: &str = "/scratch";
const SNAPSHOT_STATE: &str = "/snapshot/vm.state";
const SNAPSHOT_MEMORY: &str = "/snapshot/vm.mem";
const SYSTEM_MAP: &str = "/System.map";

/// SIGSYS: what a seccomp filter's kill looks like from outside.
const SIGSYS: i32 = 31;
const SIGKILL: i32 = 9;

/// How the VM comes to life: a full boot or a restore of a snapshot, with the control
/// socket when a snapshot is to be taken of it.
#[derive(Debug, Clone, Copy)]
pub(super) enum StartFrom<'a> {
    Boot { api_sock: bool },
    Snapshot { snap: &'a Snapshot, api_sock: bool },
}

/// The VMM's files in its `/run`: the vsock socket, the console, the control socket.
pub(super) const VSOCK: &str = "v.sock";
pub(super) const CONSOLE: &str = "console.log";
pub(super) const API_SOCK: &str = "api.sock";

/// Starts the VMM in `jail`. Its serial console goes to `/run/console.log`, its own log to
/// `vmm_log` (a pipe nobody reads would fill and stall it). It gets a process group of its
/// own, so a Ctrl-C meant for `skiff` reaches the task (forwarded by us), not the VMM.
pub(super) fn spawn(
    cfg: &LaunchConfig,
    jail: &mut VmJail,
    from: StartFrom<'_>,
    vmm_log: std::fs::File,
) -> Result<Child, super::jail::JailSetupError> {
    let ro = |host: &Path, jail: &str| Bind {
        host: host.to_owned(),
        jail: jail.into(),
    };
    let mut read_only = Vec::new();
    let mut args: Vec<OsString> = vec!["skiff-vmm".into()];
    let mut arg = |a: &str| args.push(a.into());
    let restoring = matches!(from, StartFrom::Snapshot { .. });
    match from {
        StartFrom::Boot { api_sock } => {
            read_only.push(ro(&cfg.kernel, KERNEL));
            read_only.push(ro(&cfg.initrd, INITRD));
            for a in ["--kernel", KERNEL, "--initrd", INITRD, "--cmdline"] {
                arg(a);
            }
            arg(&guest_cmdline());
            arg("--vcpus");
            arg(&cfg.vcpus.to_string());
            arg("--memory-mib");
            arg(&cfg.memory_mib.to_string());
            // The jailed VMM cannot see /sys: the host's kind is told, not detected inside.
            arg("--quirks");
            arg(if host_is_pvm() { "pvm" } else { "none" });
            if api_sock {
                arg("--api-sock");
                arg(&jail_run(API_SOCK));
            }
            extra_args("SKIFF_VMM_BOOT_ARGS", cfg, &mut read_only, &mut arg);
        }
        StartFrom::Snapshot { snap, api_sock } => {
            read_only.push(ro(&snap.state, SNAPSHOT_STATE));
            read_only.push(ro(&snap.memory, SNAPSHOT_MEMORY));
            for a in [
                "--restore",
                SNAPSHOT_STATE,
                "--memory-file",
                SNAPSHOT_MEMORY,
            ] {
                arg(a);
            }
            if api_sock {
                arg("--api-sock");
                arg(&jail_run(API_SOCK));
            }
            extra_args("SKIFF_VMM_RESTORE_ARGS", cfg, &mut read_only, &mut arg);
        }
    }
    read_only.push(ro(&cfg.rootfs, DISK));
    arg("--disk");
    arg(&format!("{DISK},ro"));
    let mut writable = Vec::new();
    if let Some(scratch) = &cfg.scratch {
        jail.give(&scratch.path)?;
        writable.push(Bind {
            host: scratch.path.clone(),
            jail: SCRATCH.into(),
        });
        arg("--disk");
        arg(SCRATCH);
    }
    arg("--vsock");
    arg(&format!("cid=3,uds={}", jail_run(VSOCK)));
    arg("--serial-out");
    arg(&jail_run(CONSOLE));
    if let Some(net) = &cfg.net {
        // A restored card keeps the snapshot's MAC; the agent gives the guest's interface
        // the task's.
        arg("--net");
        if restoring {
            arg(&format!("tap={}", net.tap));
        } else {
            arg(&format!("tap={},mac={}", net.tap, net.guest.mac));
        }
    }
    let mut cmd = jail.command(
        &cfg.vmm,
        read_only,
        writable,
        cfg.vcpus,
        cfg.memory_mib,
        args,
    )?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(vmm_log)
        .process_group(0)
        .spawn()
        .map_err(|source| super::jail::JailSetupError::Io {
            what: "starting",
            path: jail.jailer_path().to_owned(),
            source,
        })
}

/// Flags for every boot (or restore) from the environment variable `var`, for looking inside
/// guests (e.g. `--profile-out /run/prof.txt`); a profile gets the kernel's `System.map`
/// (beside it) in the jail as `/System.map` to name its symbols.
fn extra_args(var: &str, cfg: &LaunchConfig, read_only: &mut Vec<Bind>, arg: &mut dyn FnMut(&str)) {
    let Ok(extra) = std::env::var(var) else {
        return;
    };
    extra.split_whitespace().for_each(&mut *arg);
    let map = cfg.kernel.with_file_name("System.map");
    if extra.contains("--profile-out") && !extra.contains("--profile-symbols") && map.is_file() {
        read_only.push(Bind {
            host: map,
            jail: SYSTEM_MAP.into(),
        });
        arg("--profile-symbols");
        arg(SYSTEM_MAP);
    }
}

/// The guest kernel's command line: `quiet`, then whatever `SKIFF_GUEST_CMDLINE` adds (a
/// developer's knob for trying kernel parameters; snapshots are keyed by it too).
pub fn guest_cmdline() -> String {
    match std::env::var("SKIFF_GUEST_CMDLINE") {
        Ok(extra) if !extra.trim().is_empty() => format!("quiet {}", extra.trim()),
        _ => "quiet".to_owned(),
    }
}

/// `/dev/kvm` is PVM (the `kvm_pvm` module is loaded): guests need its quirks.
fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

fn jail_run(name: &str) -> String {
    VmJail::jail_path(name).display().to_string()
}

/// The VMM refused its input (flags, or for a restore the snapshot files themselves:
/// damaged, truncated, foreign) and started nothing.
pub(super) fn refused_its_input(status: ExitStatus) -> bool {
    status.code() == Some(vmm_api::exit_code::BAD_INPUT)
}

/// The VMM's exit status in words, with its own log's last line when it wrote one.
pub(super) fn describe_exit(status: ExitStatus, vmm_log: &Path, jail: &VmJail) -> String {
    let how = match (status.code(), status.signal()) {
        (Some(jailer::JAIL_FAILED), _) => "skiff-jailer could not build the VMM's jail".into(),
        (Some(c), _) => format!("skiff-vmm exited with code {c}"),
        (None, Some(SIGKILL)) if jail.oom_killed() => {
            "skiff-vmm was killed by its cgroup's memory limit (guest memory plus the VMM's allowance)".into()
        }
        (None, Some(SIGSYS)) => {
            "skiff-vmm was killed by its seccomp filter (a system call outside its allow-list)"
                .into()
        }
        (None, Some(s)) => format!("skiff-vmm was killed by signal {s}"),
        _ => format!("skiff-vmm ended ({status})"),
    };
    let log = std::fs::read_to_string(vmm_log).unwrap_or_default();
    match log.trim().lines().last() {
        Some(l) => format!("{how}: {l}"),
        None => how,
    }
}

/// The last lines of the guest console (from its last 16 KiB: the guest wrote it), for
/// error messages. The file is in the VMM's writable directory: it is opened without
/// following a symlink, and only if it is a regular file.
pub(super) fn console_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut tail = Vec::new();
    if let Ok(mut f) = super::jail::open_vm_file(path) {
        let _ = f
            .seek(SeekFrom::End(-16 * 1024))
            .or_else(|_| f.rewind().map(|_| 0));
        let _ = f.take(16 * 1024).read_to_end(&mut tail);
    }
    let text = String::from_utf8_lossy(&tail);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
