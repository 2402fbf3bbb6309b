//! `containerd-shim-skiff-v2`: containerd's runtime v2 shim (`io.containerd.skiff.v2`),
//! so that containerd, and Kubernetes through its CRI plugin, run each container in its own
//! Skiff microVM. It speaks the task API v2 of containerd 1.6 (ttrpc), starts VMs
//! with the same launcher as `skiff run` (jailed VMM, agent, EROFS root filesystem), and
//! publishes the task events containerd follows.
//!
//! Modules: `bundle` (config.json), `rootfs` (containerd's snapshot mounts → an EROFS
//! image), `host` (the installed pieces), `stdio` (the FIFOs), `events`, `task` (the task
//! API), `service` (the shim's process life).

mod bundle;
mod events;
mod host;
mod rootfs;
mod service;
mod stdio;
mod task;

/// The runtime's name in containerd's configuration (`runtime_type`).
const RUNTIME_ID: &str = "io.containerd.skiff.v2";

fn main() {
    jailer::panic::abort_on_panic();
    init_logging();
    containerd_shim::run::<service::Service>(
        RUNTIME_ID,
        Some(containerd_shim::Config {
            // Our own tracing logger writes to the FIFO (see `init_logging`).
            no_setup_logger: true,
            default_log_level: "info".into(),
            // The launcher waits for its own VMM processes: a reaper that waits for any
            // child would take their exit statuses.
            no_reaper: true,
            no_sub_reaper: true,
        }),
    );
}

/// The serving daemon logs to the `log` FIFO containerd reads in the bundle (its working
/// directory), at `SKIFF_SHIM_LOG` (an env filter, default `info`); the short-lived
/// `start` and `delete` actions log to stderr, which containerd shows on failure.
fn init_logging() {
    let serving = std::env::args().any(|a| a == "-socket" || a == "--socket");
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKIFF_SHIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fifo = serving
        .then(|| std::fs::OpenOptions::new().write(true).open("log").ok())
        .flatten();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match fifo {
        Some(f) => builder.with_writer(std::sync::Mutex::new(f)).init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
}
