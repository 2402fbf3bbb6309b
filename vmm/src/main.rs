//! `skiff-vmm`: boot one microVM from flags or a JSON config, like Firecracker.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmm::exit::code;
use vmm::host::QuirksMode;
use vmm::seccomp::SeccompMode;
use vmm::{Vm, VmConfig};

#[derive(Parser, Debug)]
#[command(
    name = "skiff-vmm",
    version,
    about = "Boot a Linux guest in a KVM microVM"
)]
struct Args {
    /// JSON config file (same field names as the flags, in snake_case); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Guest kernel: ELF vmlinux or bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs (newc cpio).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Extra kernel parameters, added to Skiff's defaults; `-- ARGS` at the end go to init.
    #[arg(long, allow_hyphen_values = true)]
    cmdline: Option<String>,
    /// Number of vCPUs (1-64).
    #[arg(long)]
    vcpus: Option<u32>,
    /// Guest memory in MiB.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Write the guest console to this file instead of stdout.
    #[arg(long)]
    serial_out: Option<PathBuf>,
    /// Write at most N bytes of guest console output (default 64 MiB); beyond, output is
    /// dropped after one marker line.
    #[arg(long, value_name = "N")]
    serial_max_bytes: Option<u64>,
    /// A disk, PATH[,ro]; repeat for more (/dev/vda, /dev/vdb, …).
    #[arg(long = "disk")]
    disks: Vec<vmm::devices::virtio::block::BlockConfig>,
    /// virtio-vsock, cid=N,uds=PATH (Firecracker-style hybrid vsock over Unix sockets).
    #[arg(long)]
    vsock: Option<vmm::devices::virtio::vsock::VsockConfig>,
    /// A network card on an existing TAP device: tap=NAME[,mac=MAC] (MAC default: random,
    /// locally administered). With --restore: the TAP this VM gets.
    #[arg(long)]
    net: Option<vmm::devices::virtio::net::NetConfig>,
    /// Host workarounds: auto (detect), pvm, none.
    #[arg(long)]
    quirks: Option<QuirksMode>,
    /// Sample the guest's instruction pointer and write a per-symbol profile here.
    #[arg(long)]
    profile_out: Option<PathBuf>,
    /// System.map for --profile-out (default: System.map beside the kernel).
    #[arg(long)]
    profile_symbols: Option<PathBuf>,
    /// Samples per second per vCPU for --profile-out.
    #[arg(long)]
    profile_hz: Option<u32>,
    /// Serve the control API (pause, resume, snapshot, shutdown) on this Unix socket.
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Restore a snapshot from this state file instead of booting (with --memory-file;
    /// --disk, --vsock and --net name this VM's disks, socket and TAP).
    #[arg(long, requires = "memory_file", conflicts_with_all = [
        "config", "kernel", "initrd", "cmdline", "vcpus", "memory_mib", "quirks",
    ])]
    restore: Option<PathBuf>,
    /// The snapshot's guest-memory file (mapped copy-on-write, paged in lazily).
    #[arg(long, requires = "restore")]
    memory_file: Option<PathBuf>,
    /// Print on stderr how long a restore took, by phase.
    #[arg(long)]
    timings: bool,
    /// Per-thread seccomp filters: kill (default; a system call outside its thread's
    /// filter kills the VMM with SIGSYS), trap (prints the syscall number and thread kind
    /// on stderr and exits 31: for finding a missing syscall), off (no filters).
    #[arg(long, value_name = "kill|trap|off")]
    seccomp: Option<SeccompMode>,
    /// Write at most N bytes of the VMM's own log (SKIFF_LOG lines on stderr; default
    /// 4 MiB); beyond, lines are dropped after one marker line.
    #[arg(long, value_name = "N", default_value_t = vmm::log_cap::DEFAULT_LOG_MAX_BYTES)]
    log_max_bytes: u64,
}

fn config_from(args: Args) -> Result<VmConfig, String> {
    let mut c = match (&args.config, &args.kernel) {
        (Some(path), _) => VmConfig::from_json_file(path).map_err(|e| e.to_string())?,
        (None, Some(k)) => VmConfig::new(k.clone()),
        (None, None) => return Err("--kernel is required (or --config FILE)".to_owned()),
    };
    if let Some(k) = args.kernel {
        c.kernel = k;
    }
    if args.initrd.is_some() {
        c.initrd = args.initrd;
    }
    if args.cmdline.is_some() {
        c.cmdline = args.cmdline;
    }
    if let Some(v) = args.vcpus {
        c.vcpus = v;
    }
    if let Some(m) = args.memory_mib {
        c.memory_mib = m;
    }
    if args.serial_out.is_some() {
        c.serial_out = args.serial_out;
    }
    if let Some(n) = args.serial_max_bytes {
        c.serial_max_bytes = n;
    }
    if !args.disks.is_empty() {
        c.disks = args.disks;
    }
    if args.vsock.is_some() {
        c.vsock = args.vsock;
    }
    if args.net.is_some() {
        c.net = args.net;
    }
    if let Some(q) = args.quirks {
        c.quirks = q;
    }
    if args.profile_out.is_some() {
        c.profile_out = args.profile_out;
    }
    if args.profile_symbols.is_some() {
        c.profile_symbols = args.profile_symbols;
    }
    if let Some(hz) = args.profile_hz {
        c.profile_hz = hz;
    }
    if let Some(m) = args.seccomp {
        c.seccomp = m;
    }
    Ok(c)
}

/// Restores a snapshot and runs it to the end.
fn restore(args: Args, started: std::time::Instant) -> ExitCode {
    let (Some(state), Some(memory)) = (args.restore, args.memory_file) else {
        eprintln!("skiff-vmm: --restore needs --memory-file");
        return ExitCode::from(code::BAD_INPUT as u8);
    };
    let files = vmm::vm::SnapshotFiles { state, memory };
    let given = vmm::vm::RestoreOverrides {
        disks: args.disks,
        vsock: args.vsock,
        net: args.net,
        serial_out: args.serial_out,
        serial_max_bytes: args.serial_max_bytes,
    };
    let mut vm = match Vm::restore(&files, &given, started) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("skiff-vmm: {e}");
            let c = if e.is_bad_input() {
                code::BAD_INPUT
            } else {
                code::VMM_ERROR
            };
            return ExitCode::from(c as u8);
        }
    };
    vm.set_api_sock(args.api_sock);
    if let Some(out) = args.profile_out {
        // A restore has no kernel beside which System.map would be found.
        vm.set_profile(out, args.profile_symbols, args.profile_hz);
    }
    vm.set_print_timings(args.timings);
    vm.set_seccomp(args.seccomp.unwrap_or_default());
    finish(vm.run())
}

fn finish(result: Result<vmm::ExitReason, vmm::VmError>) -> ExitCode {
    match result {
        Ok(reason) => {
            if let Some(m) = reason.message() {
                eprintln!("skiff-vmm: {m}");
            }
            ExitCode::from(reason.exit_code() as u8)
        }
        Err(e) => {
            eprintln!("skiff-vmm: {e}");
            ExitCode::from(code::VMM_ERROR as u8)
        }
    }
}

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if e.use_stderr() => {
            // clap's message on one line, without its usage hints.
            let text = e.to_string();
            let line = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("Usage:")
                        && !l.starts_with("For more information")
                })
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("skiff-vmm: {}", line.trim_start_matches("error: "));
            return ExitCode::from(code::BAD_INPUT as u8);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    tracing_subscriber::fmt()
        .with_writer(vmm::log_cap::CappedLog::new(
            args.log_max_bytes,
            std::io::stderr,
        ))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    // Console and snapshot writes past RLIMIT_FSIZE fail with EFBIG instead of killing us.
    vmm::exit::ignore_sigxfsz();
    if let Err(e) = vmm::exit::install_stop_handlers() {
        eprintln!("skiff-vmm: cannot install signal handlers: {e}");
        return ExitCode::from(code::VMM_ERROR as u8);
    }
    if args.restore.is_some() {
        return restore(args, started);
    }
    let api_sock = args.api_sock.clone();
    let config = match config_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skiff-vmm: {e}");
            return ExitCode::from(code::BAD_INPUT as u8);
        }
    };
    let mut vm = match Vm::boot(config) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("skiff-vmm: {e}");
            let c = match e {
                vmm::VmError::Config(_) | vmm::VmError::Net(_) => code::BAD_INPUT,
                _ => code::VMM_ERROR,
            };
            return ExitCode::from(c as u8);
        }
    };
    vm.set_api_sock(api_sock);
    finish(vm.run())
}
