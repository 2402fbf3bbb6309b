//! Task networks in the server: a task's network is attached once it is admitted
//! (CNI ADD, on a blocking thread), recorded in `<task>/network.json` before the VM starts,
//! and detached when the VM is gone (CNI DEL, the namespace removed). A record left by a
//! crash is detached at the next start, so addresses and port rules never leak.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use guest_agent::NetworkSpec;

use super::Server;
use crate::network::dns::upstreams_from_resolv_conf;
use crate::network::registry::{NetworkRegistry, RegistryOptions};
use crate::network::{NetError, TaskNetwork, DEFAULT_NETWORK};
use crate::tasks::{NetworkInterface, NetworkMode, NetworkTimings, Task, TaskStore};

/// Where a task's attached network is recorded.
pub(super) const RECORD: &str = "network.json";

/// How the server's networks are made (`skiff serve --network-subnet`, `--network-pool`,
/// `--dns-upstream`, `--cni-plugin-dir`).
#[derive(Debug, Clone)]
pub struct NetworkOptions {
    pub plugin_dir: PathBuf,
    /// The default network's subnet.
    pub subnet: String,
    /// Where named networks' subnets come from.
    pub pool: String,
    /// The resolvers' upstreams; the host's /etc/resolv.conf nameservers when empty.
    pub dns_upstreams: Vec<SocketAddr>,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        Self {
            plugin_dir: crate::network::DEFAULT_PLUGIN_DIR.into(),
            subnet: "10.89.0.0/16".into(),
            pool: "10.90.0.0/16".into(),
            dns_upstreams: Vec::new(),
        }
    }
}

/// The server's networks, or why there are none (told to whoever asks for one).
pub fn open(
    opts: &NetworkOptions,
    state_dir: &Path,
    store: &TaskStore,
) -> Result<NetworkRegistry, String> {
    let parse = |flag: &str, s: &str| {
        s.parse::<ipnet::Ipv4Net>()
            .map(|n| n.trunc())
            .map_err(|_| format!("{flag} {s}: not an IPv4 subnet"))
    };
    let upstreams = if opts.dns_upstreams.is_empty() {
        upstreams_from_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
    } else {
        opts.dns_upstreams.clone()
    };
    let stored = store.networks().map_err(|e| e.to_string())?;
    NetworkRegistry::open(
        RegistryOptions {
            plugin_dir: opts.plugin_dir.clone(),
            subnet: parse("--network-subnet", &opts.subnet)?,
            pool: parse("--network-pool", &opts.pool)?,
            upstreams,
            ipam_dir: state_dir.join("cni/ipam"),
        },
        stored,
    )
}

/// The network a task's `networkMode` names (none for `none`).
pub fn network_name(mode: &NetworkMode) -> Option<&str> {
    match mode {
        NetworkMode::None => None,
        NetworkMode::Default => Some(DEFAULT_NETWORK),
        NetworkMode::Named(n) => Some(n),
    }
}

fn record_path(srv: &Server, id: &str) -> PathBuf {
    srv.task_dir(id).join(RECORD)
}

/// Attaches `task` to the network its `networkMode` names, with its published ports, and
/// records it (durably) before returning.
pub async fn attach(srv: &Arc<Server>, task: &Task) -> Result<TaskNetwork, String> {
    let id = task.id.as_str();
    // Held since the submission, unless the task is re-run after a restart.
    srv.ports
        .reserve(id, &task.port_mappings)
        .map_err(|e| e.to_string())?;
    let ports: Vec<_> = task.port_mappings.iter().map(|m| m.cni_value()).collect();
    let name = network_name(&task.network_mode)
        .ok_or("the task has no network")?
        .to_owned();
    let (srv2, id2) = (srv.clone(), id.to_owned());
    let t0 = std::time::Instant::now();
    let net = tokio::task::spawn_blocking(move || -> Result<TaskNetwork, String> {
        let reg = srv2.networks.as_ref().map_err(Clone::clone)?;
        let nets = reg
            .get(&name)
            .ok_or_else(|| format!("networkMode: no network named {name:?}"))?;
        let net = nets.attach(&id2, ports).map_err(|e| e.to_string())?;
        if let Err(e) = write_record(&record_path(&srv2, &id2), &net) {
            let _ = nets.detach(&net);
            return Err(format!("cannot record the task's network: {e}"));
        }
        Ok(net)
    })
    .await
    .map_err(|e| format!("network attach: {e}"))??;
    let took = t0.elapsed();
    srv.records
        .metrics
        .observe_phase("network_attach", took.as_secs_f64());
    let iface = NetworkInterface {
        private_ipv4_address: net.guest.address.split('/').next().unwrap_or("").into(),
        mac_address: net.guest.mac.clone(),
        gateway: net.guest.gateway.map(|g| g.to_string()),
    };
    // On a named network, the task answers to its name, id and hostname.
    if let (Ok(reg), NetworkMode::Named(_)) = (&srv.networks, &task.network_mode) {
        if let Ok(ip) = iface.private_ipv4_address.parse() {
            let mut names = vec![id.to_owned(), id.chars().take(12).collect()];
            names.extend(task.name.clone());
            reg.names.add(&net.network, id, ip, &names);
        }
    }
    let _ = srv.records.update(id, |t| {
        t.network_interfaces = vec![iface];
        t.network_timings = Some(NetworkTimings {
            attach_ms: took.as_millis() as u64,
            detach_ms: None,
        });
    });
    let published: Vec<String> = task.port_mappings.iter().map(|m| m.to_string()).collect();
    let published = if published.is_empty() {
        String::new()
    } else {
        format!("; published {}", published.join(", "))
    };
    srv.records.event(
        id,
        &format!(
            "network attached in {} ms: {} on {} ({}){published}",
            took.as_millis(),
            net.guest.address,
            net.network,
            net.netns
        ),
    );
    Ok(net)
}

/// Detaches a task's network and drops its record; failures are logged and kept in the
/// record for the next start to retry.
pub async fn detach(srv: &Arc<Server>, id: &str, net: TaskNetwork) {
    let (srv2, id2) = (srv.clone(), id.to_owned());
    let t0 = std::time::Instant::now();
    let done = tokio::task::spawn_blocking(move || detach_recorded(&srv2, &id2, &net)).await;
    match done {
        Ok(Ok(())) => {
            let took = t0.elapsed();
            srv.records
                .metrics
                .observe_phase("network_detach", took.as_secs_f64());
            let _ = srv.records.update(id, |t| {
                if let Some(n) = t.network_timings.as_mut() {
                    n.detach_ms = Some(took.as_millis() as u64);
                }
            });
            srv.records
                .event(id, &format!("network detached in {} ms", took.as_millis()));
        }
        Ok(Err(e)) => srv
            .records
            .event(id, &format!("network detach failed: {e}")),
        Err(e) => tracing::warn!(task = id, "network detach: {e}"),
    }
}

fn detach_recorded(srv: &Server, id: &str, net: &TaskNetwork) -> Result<(), NetError> {
    let nets = srv.networks.as_ref().ok().and_then(|reg| {
        reg.names.remove_task(&net.network, id);
        reg.get(&net.network)
    });
    match nets {
        Some(nets) => nets.detach(net)?,
        // No plugins or no such network now: the namespace at least goes.
        None => crate::network::ip::netns_del(&net.netns)?,
    }
    let _ = std::fs::remove_file(record_path(srv, id));
    Ok(())
}

/// At start-up (no VM of ours runs): detaches every network a previous run left recorded.
pub fn recover(srv: &Server) {
    let Ok(dirs) = std::fs::read_dir(srv.cfg.state_dir.join("tasks")) else {
        return;
    };
    for d in dirs.flatten() {
        let path = d.path().join(RECORD);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let id = d.file_name().to_string_lossy().into_owned();
        match serde_json::from_str::<TaskNetwork>(&text) {
            Ok(net) => match detach_recorded(srv, &id, &net) {
                Ok(()) => tracing::info!(task = id, "detached a network left from the last run"),
                Err(e) => tracing::warn!(task = id, "cannot detach its network: {e}"),
            },
            Err(e) => tracing::warn!(task = id, "unreadable {}: {e}", path.display()),
        }
    }
}

pub(super) fn write_record(path: &Path, net: &TaskNetwork) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(net).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// What the agent is told about the task's interface.
pub fn guest_spec(net: &TaskNetwork) -> NetworkSpec {
    NetworkSpec {
        interface: "eth0".into(),
        mac: net.guest.mac.clone(),
        address: net.guest.address.clone(),
        gateway: net.guest.gateway.map(|g| g.to_string()),
        mtu: net.guest.mtu,
        nameservers: net.guest.nameservers.clone(),
        search: Vec::new(),
    }
}
