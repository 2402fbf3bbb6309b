//! A task's network (issue 14, host side): a network namespace of its own set up by the CNI
//! reference plugins, and a TAP in it for the VM, joined to the CNI interface by a tc
//! redirect both ways. The VMM runs in that namespace and opens the TAP (owned by the VM's
//! uid); the guest takes the CNI interface's MAC, address, gateway and MTU
//! ([`GuestNet`]), so from the outside the VM is the task's `eth0`.
//!
//! - [`cni`]: the plugin runner (ADD in order with `prevResult`, DEL in reverse);
//! - [`result`]: the CNI result types;
//! - [`ip`]: the iproute2 commands (namespaces, TAP, tc redirect, bridges);
//! - [`firewall`]: Skiff's nftables table that isolates tasks;
//! - [`named`]: named networks; [`registry`]: the server's networks;
//! - [`dns`]: the resolver each network has on its gateway.

pub mod cni;
pub mod dns;
pub mod firewall;
pub mod ip;
pub mod named;
pub mod registry;
pub mod result;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use cni::{Attachment, CniError, CniRunner, NetConfList};
use ip::IpError;
use result::CniResult;

/// Where Debian's containernetworking-plugins are.
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/lib/cni";
/// The task's interface as CNI makes it, inside the task's namespace.
const CNI_IFNAME: &str = "eth0";
/// The VM's TAP, beside it.
const TAP_NAME: &str = "tap0";
/// The default network's bridge on the host.
pub const DEFAULT_BRIDGE: &str = "skiff0";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Ip(#[from] IpError),
    #[error("network {network}: the CNI result has no {what}")]
    Incomplete { network: String, what: &'static str },
}

/// What the guest's `eth0` is given (the agent applies it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestNet {
    pub mac: String,
    /// `ADDRESS/PREFIX`.
    pub address: String,
    pub gateway: Option<IpAddr>,
    pub mtu: u32,
    pub nameservers: Vec<String>,
}

/// A task's attached network, as recorded for its teardown (also after a crash).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskNetwork {
    /// The Skiff network (`default` or a named one).
    #[serde(default = "default_network_name")]
    pub network: String,
    /// The namespace's name (`/run/netns/NAME`).
    pub netns: String,
    pub tap: String,
    pub container_id: String,
    /// CNI's `portMappings`, given again on DEL as the spec asks.
    #[serde(default)]
    pub port_mappings: Vec<Value>,
    pub result: CniResult,
    pub guest: GuestNet,
}

fn default_network_name() -> String {
    DEFAULT_NETWORK.into()
}

/// The default network's name in the API (`networkMode: "default"`).
pub const DEFAULT_NETWORK: &str = "default";

/// The MAC a snapshot VM's card is booted with (locally administered); every restored
/// guest's interface is given its task's MAC by the agent.
pub const SNAPSHOT_MAC: &str = "02:5f:00:00:00:01";

impl TaskNetwork {
    /// A namespace `name` holding only a TAP for a VM of uid/gid that is booted to be
    /// snapshotted: its card needs a backend, but it never sends anything anywhere (the
    /// guest's interface stays down until a restored task's agent sets it up).
    pub fn for_snapshot(name: &str, uid: u32, gid: u32) -> Result<TaskNetwork, NetError> {
        let _ = ip::netns_del(name);
        ip::netns_add(name)?;
        let net = TaskNetwork {
            network: String::new(),
            netns: name.to_owned(),
            tap: TAP_NAME.into(),
            container_id: String::new(),
            port_mappings: Vec::new(),
            result: CniResult::default(),
            guest: GuestNet {
                mac: SNAPSHOT_MAC.into(),
                address: String::new(),
                gateway: None,
                mtu: 1500,
                nameservers: Vec::new(),
            },
        };
        if let Err(e) = ip::tap_add(name, TAP_NAME, uid, gid, 1500) {
            let _ = ip::netns_del(name);
            return Err(e.into());
        }
        Ok(net)
    }

    pub fn netns_path(&self) -> PathBuf {
        ip::netns_path(&self.netns)
    }

    /// A namespace someone else set up (a Kubernetes pod's, by containerd's CNI plugins),
    /// pinned at `/run/netns/NAME`, with its `eth0` configured: the VM takes that
    /// interface's MAC, address, gateway and MTU as a task's VM takes its CNI interface's.
    /// Plug the VM with [`Networks::plug_vm`] and unplug it with [`TaskNetwork::unplug_vm`]:
    /// the namespace and its interface stay its owner's.
    pub fn from_netns(name: &str, nameservers: Vec<String>) -> Result<TaskNetwork, NetError> {
        let incomplete = |what| NetError::Incomplete {
            network: format!("namespace {name}"),
            what,
        };
        let (mac, mtu) = ip::link_info(name, CNI_IFNAME)?;
        let address =
            ip::ipv4_of(name, CNI_IFNAME)?.ok_or_else(|| incomplete("IPv4 address on eth0"))?;
        Ok(TaskNetwork {
            network: String::new(),
            netns: name.to_owned(),
            tap: TAP_NAME.into(),
            container_id: String::new(),
            port_mappings: Vec::new(),
            result: CniResult::default(),
            guest: GuestNet {
                mac,
                address,
                gateway: ip::default_gateway(name)?,
                mtu,
                nameservers,
            },
        })
    }

    /// Takes the VM's TAP and the redirects out of a namespace that stays (see
    /// [`TaskNetwork::from_netns`]); safe to repeat.
    pub fn unplug_vm(&self) {
        if ip::link_info(&self.netns, &self.tap).is_ok() {
            let _ = ip::redirect_del(&self.netns, CNI_IFNAME);
            let _ = ip::link_del_in(&self.netns, &self.tap);
        }
    }
}

/// Attaches tasks to one CNI network.
pub struct Networks {
    /// The Skiff network's name (`default` or a named one).
    name: String,
    runner: CniRunner,
    /// Where the network's resolver listens: the tasks' nameserver (else CNI's DNS).
    resolver: Option<std::net::Ipv4Addr>,
    /// The network's bridge on the host.
    bridge: String,
    /// Its tasks may not reach each other (their bridge ports are isolated).
    isolate_tasks: bool,
}

/// Skiff's default network: a bridge `skiff0` that is the tasks' gateway with outbound
/// NAT, host-local addresses from `subnet` (leases under `ipam_dir`), published ports
/// (portmap) and the firewall plugin's forwarding rules. What tasks may not reach is
/// dropped by [`firewall`]'s table.
pub fn default_conf(subnet: &str, ipam_dir: &Path) -> NetConfList {
    named::conf("skiff", DEFAULT_BRIDGE, subnet, ipam_dir)
}

fn runtime_config(port_mappings: &[Value]) -> serde_json::Map<String, Value> {
    let mut rc = serde_json::Map::new();
    if !port_mappings.is_empty() {
        rc.insert("portMappings".into(), Value::Array(port_mappings.to_vec()));
    }
    rc
}

impl Networks {
    /// A network whose bridge is `bridge`; with `isolate_tasks`, its tasks' bridge ports
    /// are isolated from each other.
    pub fn new(
        plugin_dir: &Path,
        conf: NetConfList,
        bridge: &str,
        isolate_tasks: bool,
    ) -> Result<Self, NetError> {
        Ok(Self {
            name: DEFAULT_NETWORK.into(),
            runner: CniRunner::new(plugin_dir, conf)?,
            resolver: None,
            bridge: bridge.to_owned(),
            isolate_tasks,
        })
    }

    /// The same, as Skiff network `name`.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// The same, with tasks told to use the resolver at `addr`.
    pub fn with_resolver(mut self, addr: std::net::Ipv4Addr) -> Self {
        self.resolver = Some(addr);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The namespace name of task `task_id`.
    pub fn netns_name(task_id: &str) -> String {
        format!("skiff-{}", &task_id[..task_id.len().min(16)])
    }

    /// Gives task `task_id` its namespace and CNI interface, and reads what its guest
    /// takes from them. `port_mappings` is CNI's `portMappings` runtime value (may be
    /// empty). On failure nothing is left behind. The VM's TAP comes with
    /// [`Networks::plug_vm`], once the VM's uid is known.
    pub fn attach(
        &self,
        task_id: &str,
        port_mappings: Vec<Value>,
    ) -> Result<TaskNetwork, NetError> {
        let netns = Self::netns_name(task_id);
        ip::netns_add(&netns)?;
        let attachment = Attachment {
            container_id: task_id.to_owned(),
            netns: ip::netns_path(&netns),
            ifname: CNI_IFNAME.into(),
            runtime_config: runtime_config(&port_mappings),
        };
        let result = match self.runner.add(&attachment) {
            Ok(r) => r,
            Err(e) => {
                let _ = ip::netns_del(&netns);
                return Err(e.into());
            }
        };
        let nameservers = match self.resolver {
            Some(r) => vec![r.to_string()],
            None => result.dns.nameservers.clone(),
        };
        let net = TaskNetwork {
            network: self.name.clone(),
            netns,
            tap: TAP_NAME.into(),
            container_id: task_id.to_owned(),
            port_mappings,
            guest: GuestNet {
                mac: String::new(),
                address: String::new(),
                gateway: None,
                mtu: 0,
                nameservers,
            },
            result,
        };
        let settled = self
            .isolate(&net)
            .and_then(|()| self.guest_settings(net.clone()));
        match settled {
            Ok(net) => Ok(net),
            Err(e) => {
                if let Err(d) = self.detach(&net) {
                    tracing::warn!(task = task_id, "undoing a failed attach: {d}");
                }
                Err(e)
            }
        }
    }

    /// Isolates the task's bridge ports, if this network's tasks must not reach each other.
    fn isolate(&self, net: &TaskNetwork) -> Result<(), NetError> {
        if !self.isolate_tasks {
            return Ok(());
        }
        let mut ports = net.result.host_ports(&self.bridge).peekable();
        if ports.peek().is_none() {
            return Err(NetError::Incomplete {
                network: self.runner.network().to_owned(),
                what: "bridge port on the host",
            });
        }
        for port in ports {
            ip::isolate_port(port)?;
        }
        Ok(())
    }

    /// Reads the guest's settings from the CNI result and the interface.
    fn guest_settings(&self, mut net: TaskNetwork) -> Result<TaskNetwork, NetError> {
        let incomplete = |what| NetError::Incomplete {
            network: self.runner.network().to_owned(),
            what,
        };
        let path = net.netns_path().display().to_string();
        let (index, _) = net
            .result
            .sandbox_interface(CNI_IFNAME, &path)
            .ok_or_else(|| incomplete("interface in the task's namespace"))?;
        let (cidr, gateway) = net
            .result
            .ipv4_of(index)
            .ok_or_else(|| incomplete("IPv4 address"))?;
        let (mac, mtu) = ip::link_info(&net.netns, CNI_IFNAME)?;
        net.guest.mac = mac;
        net.guest.address = cidr.to_string();
        net.guest.gateway = gateway;
        net.guest.mtu = mtu;
        Ok(net)
    }

    /// Adds the VM's TAP to an attached network, owned by `uid`/`gid` (the VM's, so the
    /// jailed VMM can open it), and joins it to the CNI interface both ways. A TAP already
    /// there (a boot after a failed restore) is kept.
    pub fn plug_vm(net: &TaskNetwork, uid: u32, gid: u32) -> Result<(), NetError> {
        if ip::link_info(&net.netns, &net.tap).is_ok() {
            return Ok(());
        }
        ip::tap_add(&net.netns, &net.tap, uid, gid, net.guest.mtu)?;
        ip::redirect(&net.netns, CNI_IFNAME, &net.tap)?;
        ip::redirect(&net.netns, &net.tap, CNI_IFNAME)?;
        Ok(())
    }

    /// Undoes [`Networks::attach`]: CNI DEL with the ADD's result (frees the address and
    /// the port mappings), then the namespace (with the TAP in it). Safe to repeat.
    pub fn detach(&self, net: &TaskNetwork) -> Result<(), NetError> {
        let attachment = Attachment {
            container_id: net.container_id.clone(),
            netns: net.netns_path(),
            ifname: CNI_IFNAME.into(),
            runtime_config: runtime_config(&net.port_mappings),
        };
        let del = self.runner.del(&attachment, Some(&net.result));
        ip::netns_del(&net.netns)?;
        Ok(del?)
    }
}
