//! `skiff run`: the flags shared by local (daemonless) and server runs.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;

use control_plane::tasks::ports::{parse_publish, PortMappingRequest};

#[derive(Args)]
pub struct RunArgs {
    /// Run here, in a microVM started by this command, without a server (like podman).
    #[arg(long)]
    pub local: bool,
    /// A read-only root filesystem image (EROFS or ext4) instead of an image reference
    /// (with --local).
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// Environment variable NAME=VALUE (repeatable).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// User: name, uid, or uid:gid.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Override the image's entrypoint.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// vCPUs of the microVM.
    #[arg(long, default_value_t = 1)]
    pub cpu: u32,
    /// Memory of the microVM in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory: u64,
    /// Stop the task after this many seconds (SIGTERM, then the VM ends; exit code 124).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Seconds between SIGTERM and the end of the VM when the task is stopped.
    #[arg(long, default_value_t = 10)]
    pub stop_timeout: u64,
    /// Keep stdin open and pass it to the task.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Print the task id and return at once instead of streaming (server runs).
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Label KEY=VALUE (repeatable; server runs).
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
    /// The task's network: default (an address on the server's default network, outbound
    /// access, isolated from other tasks and the host; `bridge` is the same), none
    /// (loopback only), or a network made with `skiff network create`. Without it: the
    /// server's default (`skiff serve --default-network`, itself `default`). Server runs;
    /// --local runs have loopback only.
    #[arg(long)]
    pub network: Option<String>,
    /// The task's name, which other tasks on its network resolve. Server runs.
    #[arg(long)]
    pub name: Option<String>,
    /// Publish a port on the host: [HOSTIP:]HOSTPORT:CONTAINERPORT[/udp] (repeatable; needs
    /// a network: the server's default one unless --network names another). Server runs.
    #[arg(short = 'p', long = "publish", value_parser = parse_publish)]
    pub publish: Vec<PortMappingRequest>,
    /// Print the phase timings to stderr when the task ends.
    #[arg(long)]
    pub timings: bool,
    /// With --local: where VM snapshots are kept (default STATE/snapshots). The first run
    /// of a VM shape (vCPUs, memory) boots and leaves a snapshot; later runs restore it.
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<PathBuf>,
    /// With --local: boot the VM; make and restore no snapshot.
    #[arg(long)]
    pub no_snapshots: bool,
    /// Image reference, then the command: IMAGE [-- CMD ARG…], or -- CMD ARG… with --rootfs.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

impl RunArgs {
    /// The image reference (none with --rootfs) and the command after it.
    pub fn image_and_command(&self) -> anyhow::Result<(Option<String>, Vec<String>)> {
        let mut it = self.args.iter().peekable();
        let image = if self.rootfs.is_some() {
            None
        } else {
            match it.next() {
                Some(i) if i != "--" => Some(i.clone()),
                _ => return Err(anyhow!("give an image (or --rootfs FILE with --local)")),
            }
        };
        if it.peek().is_some_and(|s| *s == "--") {
            it.next();
        }
        Ok((image, it.cloned().collect()))
    }
}
