//! The server's task networks: the default one and the named ones, each with its bridge,
//! its CNI attacher ([`Networks`]) and its resolver on the gateway address; and Skiff's
//! firewall table, re-made whenever the set of resolvers changes. Made at start-up from
//! the stored named networks; `create` and `remove` change it while the server runs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;

use super::dns::{NameTable, Resolver};
use super::named::{self, NamedNetwork};
use super::{firewall, ip, Networks, DEFAULT_BRIDGE, DEFAULT_NETWORK};

/// How the server's networks are made (`skiff serve --network-subnet`, `--network-pool`,
/// `--dns-upstream`, `--cni-plugin-dir`).
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    pub plugin_dir: PathBuf,
    /// The default network's subnet.
    pub subnet: Ipv4Net,
    /// Where named networks get their /24s from when no subnet is asked for.
    pub pool: Ipv4Net,
    /// Where the resolvers send names that are not tasks'.
    pub upstreams: Vec<SocketAddr>,
    /// host-local's lease directory (one subdirectory per CNI network).
    pub ipam_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("name: a network named {0:?} exists already")]
    Exists(String),
    #[error("no network named {0:?}")]
    NotFound(String),
    #[error("network {0:?} is the default network; it cannot be removed")]
    Builtin(String),
    #[error("network {name}: {why}")]
    Failed { name: String, why: String },
}

struct Entry {
    record: NamedNetwork,
    nets: Arc<Networks>,
    resolver: tokio::task::JoinHandle<()>,
}

pub struct NetworkRegistry {
    opts: RegistryOptions,
    runtime: tokio::runtime::Handle,
    default: Arc<Networks>,
    default_gateway: Ipv4Addr,
    default_resolver: tokio::task::JoinHandle<()>,
    named: Mutex<BTreeMap<String, Entry>>,
    /// Tasks' names per network, which the resolvers answer.
    pub names: Arc<NameTable>,
}

/// The plugins a Skiff network uses.
pub const PLUGINS: [&str; 4] = ["bridge", "host-local", "portmap", "firewall"];

fn failed(name: &str) -> impl Fn(String) -> RegistryError + '_ {
    move |why| RegistryError::Failed {
        name: name.to_owned(),
        why,
    }
}

impl NetworkRegistry {
    /// Checks the plugins, makes the default network's bridge and the stored named
    /// networks' bridges, starts every resolver and installs the firewall table. Runs
    /// inside the server's tokio runtime. The error says why there are no networks.
    pub fn open(opts: RegistryOptions, stored: Vec<NamedNetwork>) -> Result<Self, String> {
        for p in PLUGINS {
            if !opts.plugin_dir.join(p).is_file() {
                return Err(format!(
                    "the CNI plugin {p} is not in {} (install containernetworking-plugins)",
                    opts.plugin_dir.display()
                ));
            }
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "task networks need the server's runtime".to_owned())?;
        let names = Arc::new(NameTable::default());
        let default_gateway = named::gateway_of(opts.subnet);
        let conf = super::default_conf(&opts.subnet.to_string(), &opts.ipam_dir);
        let default = Networks::new(&opts.plugin_dir, conf, DEFAULT_BRIDGE, true)
            .map_err(|e| e.to_string())?
            .with_resolver(default_gateway);
        ip::bridge_ensure(DEFAULT_BRIDGE, &gateway_cidr(default_gateway, opts.subnet))
            .map_err(|e| e.to_string())?;
        let default_resolver =
            spawn_resolver(&runtime, DEFAULT_NETWORK, default_gateway, &names, &opts)
                .map_err(|e| format!("the default network's resolver: {e}"))?;
        let reg = Self {
            runtime,
            default: Arc::new(default),
            default_gateway,
            default_resolver,
            named: Mutex::new(BTreeMap::new()),
            names,
            opts,
        };
        for n in stored {
            let name = n.name.clone();
            match reg.bring_up(n) {
                Ok(e) => {
                    reg.map().insert(name, e);
                }
                Err(e) => tracing::warn!(network = name, "cannot bring the network up: {e}"),
            }
        }
        reg.install_firewall().map_err(|e| e.to_string())?;
        Ok(reg)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.named.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The attacher of network `name` (`default` or a named one).
    pub fn get(&self, name: &str) -> Option<Arc<Networks>> {
        if name == DEFAULT_NETWORK {
            return Some(self.default.clone());
        }
        self.map().get(name).map(|e| e.nets.clone())
    }

    /// The default network, as the API lists it.
    pub fn default_network(&self) -> NamedNetwork {
        NamedNetwork {
            name: DEFAULT_NETWORK.into(),
            subnet: self.opts.subnet,
            gateway: self.default_gateway,
            bridge: DEFAULT_BRIDGE.into(),
            created_ms: 0,
        }
    }

    /// The named networks, by name.
    pub fn list(&self) -> Vec<NamedNetwork> {
        self.map().values().map(|e| e.record.clone()).collect()
    }

    /// Makes named network `name` (subnet as asked, else the pool's next free /24): its
    /// bridge, resolver and firewall entry. The caller stores the record.
    pub fn create(
        &self,
        name: &str,
        subnet: Option<&str>,
        now_ms: u64,
    ) -> Result<NamedNetwork, RegistryError> {
        named::check_network_name(name).map_err(|message| RegistryError::Invalid {
            field: "name",
            message,
        })?;
        let mut map = self.map();
        if map.contains_key(name) {
            return Err(RegistryError::Exists(name.to_owned()));
        }
        if map.len() >= named::MAX_NETWORKS {
            return Err(RegistryError::Invalid {
                field: "name",
                message: format!("this server has {} networks, the most it keeps", map.len()),
            });
        }
        let mut taken: Vec<Ipv4Net> = map.values().map(|e| e.record.subnet).collect();
        taken.push(self.opts.subnet);
        let subnet = match subnet {
            Some(s) => {
                let net = named::check_subnet(s).map_err(|message| RegistryError::Invalid {
                    field: "subnet",
                    message,
                })?;
                if let Some(t) = taken.iter().find(|t| named::overlap(net, **t)) {
                    return Err(RegistryError::Invalid {
                        field: "subnet",
                        message: format!("{net} overlaps {t}, which another network has"),
                    });
                }
                net
            }
            None => named::pick_subnet(self.opts.pool, &taken).ok_or_else(|| {
                RegistryError::Invalid {
                    field: "subnet",
                    message: format!("no free /24 is left in the pool {}", self.opts.pool),
                }
            })?,
        };
        let used: Vec<String> = map.values().map(|e| e.record.bridge.clone()).collect();
        let bridge = (1..)
            .map(named::bridge_name)
            .find(|b| !used.contains(b))
            .expect("fewer than MAX_NETWORKS bridges are used");
        let record = NamedNetwork {
            name: name.to_owned(),
            subnet,
            gateway: named::gateway_of(subnet),
            bridge,
            created_ms: now_ms,
        };
        let entry = self.bring_up(record.clone())?;
        map.insert(name.to_owned(), entry);
        drop(map);
        if let Err(e) = self.install_firewall() {
            let _ = self.remove(name);
            return Err(failed(name)(e.to_string()));
        }
        Ok(record)
    }

    /// Takes named network `name` down: its resolver, its bridge, its leases and its
    /// firewall entry. The caller checks that no task uses it.
    pub fn remove(&self, name: &str) -> Result<NamedNetwork, RegistryError> {
        if name == DEFAULT_NETWORK {
            return Err(RegistryError::Builtin(name.to_owned()));
        }
        let entry = self
            .map()
            .remove(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        entry.resolver.abort();
        ip::link_del(&entry.record.bridge).map_err(|e| failed(name)(e.to_string()))?;
        let _ = std::fs::remove_dir_all(self.opts.ipam_dir.join(named::cni_name(name)));
        self.install_firewall()
            .map_err(|e| failed(name)(e.to_string()))?;
        Ok(entry.record)
    }

    fn bring_up(&self, record: NamedNetwork) -> Result<Entry, RegistryError> {
        let name = record.name.clone();
        let conf = named::conf(
            &named::cni_name(&name),
            &record.bridge,
            &record.subnet.to_string(),
            &self.opts.ipam_dir,
        );
        let nets = Networks::new(&self.opts.plugin_dir, conf, &record.bridge, false)
            .map_err(|e| failed(&name)(e.to_string()))?
            .named(&name)
            .with_resolver(record.gateway);
        ip::bridge_ensure(&record.bridge, &gateway_cidr(record.gateway, record.subnet))
            .map_err(|e| failed(&name)(e.to_string()))?;
        let resolver = spawn_resolver(
            &self.runtime,
            &name,
            record.gateway,
            &self.names,
            &self.opts,
        )
        .map_err(|e| {
            let _ = ip::link_del(&record.bridge);
            failed(&name)(format!("its resolver on {}:53: {e}", record.gateway))
        })?;
        Ok(Entry {
            record,
            nets: Arc::new(nets),
            resolver,
        })
    }

    fn install_firewall(&self) -> Result<(), firewall::FirewallError> {
        let mut nets = vec![firewall::TaskBridge {
            bridge: DEFAULT_BRIDGE.into(),
            gateway: self.default_gateway,
        }];
        nets.extend(self.map().values().map(|e| firewall::TaskBridge {
            bridge: e.record.bridge.clone(),
            gateway: e.record.gateway,
        }));
        firewall::install(&nets)
    }
}

impl Drop for NetworkRegistry {
    fn drop(&mut self) {
        self.default_resolver.abort();
        for e in self.map().values() {
            e.resolver.abort();
        }
    }
}

fn gateway_cidr(gw: Ipv4Addr, subnet: Ipv4Net) -> String {
    format!("{gw}/{}", subnet.prefix_len())
}

fn spawn_resolver(
    runtime: &tokio::runtime::Handle,
    network: &str,
    gateway: Ipv4Addr,
    names: &Arc<NameTable>,
    opts: &RegistryOptions,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let std_sock = std::net::UdpSocket::bind((gateway, 53))?;
    std_sock.set_nonblocking(true)?;
    let _in_runtime = runtime.enter();
    let sock = tokio::net::UdpSocket::from_std(std_sock)?;
    Ok(Resolver {
        network: network.to_owned(),
        names: names.clone(),
        upstreams: Arc::new(opts.upstreams.clone()),
    }
    .spawn(sock))
}
