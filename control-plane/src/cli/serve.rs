//! `skiff serve`: the control plane's HTTP server.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use control_plane::api::listen::{self, ListenAddr, TlsFiles};
use control_plane::images::registry::RegistryOptions;
use control_plane::scheduler::Capacity;
use control_plane::server::{ServeConfig, Server};

use control_plane::install;

#[derive(Args)]
pub struct ServeArgs {
    /// Where to listen: unix:///PATH, or HOST:PORT (TCP needs a bearer token, loopback
    /// included). Default: the Unix socket <state dir>/skiff.sock (mode 0660).
    #[arg(long)]
    listen: Option<ListenAddr>,
    /// TLS certificate chain (PEM) for a TCP listener; needs --tls-key.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for a TCP listener.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// vCPUs tasks may use in all (default: the host's CPUs times --overcommit).
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory tasks may use in all, MiB (default: 90% of the host's memory).
    #[arg(long)]
    memory_mib: Option<u64>,
    /// vCPUs handed out per host CPU when --cpus is not given.
    #[arg(long, default_value_t = 1.0)]
    overcommit: f64,
    /// File holding the bearer token clients must send (also SKIFF_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Registries (host[:port]) that may be used over plain HTTP.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Tasks that may wait to start at once; more submissions get 429 until some start.
    #[arg(long, default_value_t = 1000)]
    max_queued: usize,
    /// How long a stopped task (record, events, output) is kept: 90s, 30m, 24h, 7d; 0 keeps
    /// stopped tasks for ever.
    #[arg(long, default_value = "24h", value_parser = parse_retention)]
    task_retention: std::time::Duration,
    /// A task keeps at most twice this much output (MiB): beyond it the oldest is dropped.
    #[arg(long, default_value_t = control_plane::tasks::logs::DEFAULT_LOG_CAP >> 20)]
    log_cap_mib: u64,
    /// The uids (and gids) jailed VMMs get: FIRST:COUNT, one per running VM.
    #[arg(long, default_value = "900000:4096", value_parser = parse_uid_range)]
    jail_uids: (u32, u32),
    /// The cgroup under which each VM gets its own (in every hierarchy used).
    #[arg(long, default_value = "skiff")]
    jail_cgroup_parent: String,
    /// Memory a VMM may use beyond its guest's before its cgroup kills it, MiB.
    #[arg(long, default_value_t = control_plane::launcher::JailConfig::DEFAULT_OVERHEAD_MIB)]
    vmm_overhead_mib: u64,
    #[command(flatten)]
    image_limits: super::limits::LimitArgs,
    /// The network of tasks that name none: default (Skiff's default network), none
    /// (loopback only) or a network made with `skiff network create`.
    #[arg(long, default_value = "default", value_parser = parse_network_mode)]
    default_network: control_plane::tasks::NetworkMode,
    /// The subnet of the default task network (tasks with `networkMode: default`).
    #[arg(long, default_value = "10.89.0.0/16")]
    network_subnet: String,
    /// Where named networks (`skiff network create`) take their /24 subnets from.
    #[arg(long, default_value = "10.90.0.0/16")]
    network_pool: String,
    /// A resolver the tasks' resolvers forward names to, IP:PORT (repeatable; the host's
    /// /etc/resolv.conf nameservers when not given).
    #[arg(long)]
    dns_upstream: Vec<std::net::SocketAddr>,
    /// Where the CNI plugins are.
    #[arg(long, default_value = control_plane::network::DEFAULT_PLUGIN_DIR)]
    cni_plugin_dir: PathBuf,
    /// Always boot task VMs; never start them from snapshots.
    #[arg(long)]
    no_snapshots: bool,
    /// Where snapshots are kept (default: STATE_DIR/snapshots). Servers on one host that
    /// run the same VMM, kernel and agent may share one: each shape is built once, under a
    /// lock, and restored by all of them.
    #[arg(long, conflicts_with = "no_snapshots")]
    snapshot_dir: Option<PathBuf>,
    /// Disk (MiB) the per-image warm snapshots may take; 0 makes none. A warm snapshot
    /// holds a VM with one image's root already mounted and its program read ahead; the
    /// least recently used go when a new one does not fit.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    warm_snapshot_budget: u64,
    /// Size of each build step's scratch disk, where a `RUN` step's writes go (e.g. 10G):
    /// a sparse file on the host, taking only what the step writes. A step that writes
    /// more fails with "No space left on device".
    #[arg(long, value_parser = parse_step_disk, value_name = "SIZE", default_value = "10G")]
    build_step_disk: u64,
    /// Scratch disk the build steps that run at once may have together (e.g. 40G): each
    /// step reserves its whole --build-step-disk before its VM starts, and waits while the
    /// budget is taken, so the sparse disks can never together fill more than this.
    /// Default: the space free in the state dir's file system at start (at least one
    /// step's disk).
    #[arg(long, value_parser = super::limits::parse_size, value_name = "SIZE")]
    build_disk_budget: Option<u64>,
    /// Guest kernel (default: SKIFF_KERNEL, else the installed one).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Static skiff-agent binary (default: SKIFF_AGENT, else the installed one).
    #[arg(long)]
    agent: Option<PathBuf>,
}

/// A step disk size: a size, and at least what ext4 needs.
/// Bytes an unprivileged writer may still take in the file system holding `dir`.
fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let st = rustix::fs::statvfs(dir)
        .with_context(|| format!("cannot read the free space of {}", dir.display()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

pub(super) fn parse_step_disk(s: &str) -> Result<u64, String> {
    use control_plane::launcher::scratch_disk::MIN_BYTES;
    let n = super::limits::parse_size(s)?;
    if n < MIN_BYTES {
        return Err(format!("{s:?}: at least {}M", MIN_BYTES >> 20));
    }
    Ok(n)
}

/// The bearer token from a file (trimmed) or SKIFF_TOKEN.
pub fn read_token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the token file {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("SKIFF_TOKEN").ok(),
    };
    match token {
        Some(t) if t.is_empty() => bail!("the bearer token is empty"),
        t => Ok(t),
    }
}

fn parse_uid_range(s: &str) -> Result<(u32, u32), String> {
    let (first, count) = s
        .split_once(':')
        .ok_or_else(|| "expected FIRST:COUNT, e.g. 900000:4096".to_owned())?;
    let first: u32 = first.parse().map_err(|_| format!("{first}: not a uid"))?;
    let count: u32 = count.parse().map_err(|_| format!("{count}: not a count"))?;
    if first == 0 || count == 0 || first.checked_add(count).is_none() {
        return Err("the range must be non-empty, above uid 0 and below 2^32".into());
    }
    Ok((first, count))
}

/// `default` (or `bridge`), `none`, else a network name that must be a valid one (whether
/// it exists is checked when a task asks for it).
fn parse_network_mode(s: &str) -> Result<control_plane::tasks::NetworkMode, String> {
    let mode = control_plane::tasks::NetworkMode::from_name(s);
    if let control_plane::tasks::NetworkMode::Named(n) = &mode {
        control_plane::network::named::check_network_name(n)?;
    }
    Ok(mode)
}

/// A duration as humantime reads it (`90s`, `30m`, `24h`, `7d`, `1h 30m`); `0` keeps stopped
/// tasks for ever.
fn parse_retention(s: &str) -> Result<std::time::Duration, String> {
    if s.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err(format!("{s:?}: use 0 to keep stopped tasks for ever")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{s:?}: {e} (e.g. 90s, 30m, 24h, 7d)")),
    }
}

pub fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(1024, |kib| kib / 1024)
}

pub fn serve(state_dir: &Path, a: ServeArgs) -> anyhow::Result<i32> {
    if !(a.overcommit > 0.0 && a.overcommit <= 64.0) {
        bail!("--overcommit must be more than 0 and at most 64");
    }
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let capacity = Capacity {
        cpus: a
            .cpus
            .unwrap_or(((host_cpus as f64) * a.overcommit).floor().max(1.0) as u32),
        memory_mib: a.memory_mib.unwrap_or(host_memory_mib() * 9 / 10),
    };
    if capacity.cpus == 0 || capacity.memory_mib < 64 {
        bail!("capacity must be at least 1 vCPU and 64 MiB");
    }
    let build_disk_budget = match a.build_disk_budget {
        Some(b) if b < a.build_step_disk => bail!(
            "--build-disk-budget {} MiB is less than one build step's disk (--build-step-disk {} MiB)",
            b >> 20,
            a.build_step_disk >> 20
        ),
        Some(b) => b,
        None => free_bytes(state_dir)?.max(a.build_step_disk),
    };
    let cfg = ServeConfig {
        listen: a
            .listen
            .clone()
            .unwrap_or_else(|| ListenAddr::default_for(state_dir)),
        state_dir: state_dir.to_owned(),
        capacity,
        token: read_token(a.token_file.as_deref())?,
        vmm: install::vmm().path,
        jail: control_plane::launcher::JailConfig {
            uid_base: a.jail_uids.0,
            uid_count: a.jail_uids.1,
            cgroup_parent: a.jail_cgroup_parent.clone(),
            vmm_overhead_mib: a.vmm_overhead_mib,
            ..control_plane::launcher::JailConfig::installed()
        },
        kernel: install::kernel(a.kernel.as_deref())?.path,
        agent: install::agent(a.agent.as_deref())?.path,
        registry: RegistryOptions {
            insecure: a.insecure_registries,
            ..Default::default()
        },
        image_limits: a.image_limits.limits(),
        network: control_plane::server::networking::NetworkOptions {
            plugin_dir: a.cni_plugin_dir.clone(),
            subnet: a.network_subnet.clone(),
            pool: a.network_pool.clone(),
            dns_upstreams: a.dns_upstream.clone(),
        },
        default_network: a.default_network.clone(),
        task_retention: (!a.task_retention.is_zero()).then_some(a.task_retention),
        snapshots: !a.no_snapshots,
        snapshot_dir: a.snapshot_dir.clone(),
        warm_snapshot_budget_mib: a.warm_snapshot_budget,
        build_step_disk_bytes: a.build_step_disk,
        build_disk_budget_bytes: build_disk_budget,
        max_queued: a.max_queued,
        log_cap_bytes: a.log_cap_mib.max(1) << 20,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let tls = TlsFiles::from_flags(a.tls_cert, a.tls_key)?;
    rt.block_on(async move {
        let (listen, token) = (cfg.listen.clone(), cfg.token.clone());
        let srv = Server::start(cfg)?;
        let bound = listen::bind(&listen, token.as_deref(), tls.as_ref()).await?;
        eprintln!(
            "skiff serve: listening on {} (state dir {}, capacity {} vCPUs, {} MiB)",
            bound.url(),
            state_dir.display(),
            capacity.cpus,
            capacity.memory_mib
        );
        match bound {
            listen::Bound::Unix(l, _) => serve_on(l, srv).await,
            listen::Bound::Tcp(l) => serve_on(l, srv).await,
            listen::Bound::Tls(l) => serve_on(l, srv).await,
        }
    })?;
    Ok(0)
}

/// Serves the API on `listener` until SIGTERM or SIGINT. Running tasks are stopped first,
/// so that log followers see their end and the server's connections can drain. Tasks still
/// waiting run after the next start.
async fn serve_on<L>(listener: L, srv: std::sync::Arc<Server>) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let app = control_plane::api::router(srv.clone());
    let shutdown = async move {
        shutdown_signal().await;
        eprintln!("skiff serve: shutting down; stopping running tasks");
        srv.stop_all().await;
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::parse_retention;
    use std::time::Duration;

    #[test]
    fn retentions_parse_with_units_and_zero_means_for_ever() {
        assert_eq!(parse_retention("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_retention("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_retention("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_retention("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_retention("0"), Ok(Duration::ZERO));
        for bad in ["", "h", "10", "5x", "0s", "-1h"] {
            assert!(parse_retention(bad).is_err(), "{bad}");
        }
    }
}
