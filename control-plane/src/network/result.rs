//! The CNI result (spec 1.0.0) as far as Skiff reads it: which interface is the task's, its
//! MAC, addresses, gateway and routes, and the DNS settings. Plugins are programs we run,
//! but their output is still parsed strictly and bounded (`cni.rs` reads at most 1 MiB).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The network namespace the interface is in; empty for the host's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR notation, e.g. `10.89.0.5/16`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

impl CniResult {
    /// The names of the interfaces the result put on the host (no sandbox), other than
    /// `bridge`: a task's bridge ports (the host ends of its veths).
    pub fn host_ports<'a>(&'a self, bridge: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.interfaces
            .iter()
            .filter(move |i| i.sandbox.is_empty() && i.name != bridge)
            .map(|i| i.name.as_str())
    }
}

/// An address with its prefix length, e.g. `10.89.0.5/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("{a:?} is not an address"))?;
        let prefix: u8 = p.parse().map_err(|_| format!("{p:?} is not a prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix {prefix} is longer than {max}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl CniResult {
    /// The interface named `ifname` inside the sandbox `netns`, with its index.
    pub fn sandbox_interface(&self, ifname: &str, netns: &str) -> Option<(usize, &Interface)> {
        self.interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| i.name == ifname && i.sandbox == netns)
    }

    /// The first IPv4 address given to interface `index` (or to no interface in
    /// particular), with its gateway.
    pub fn ipv4_of(&self, index: usize) -> Option<(Cidr, Option<IpAddr>)> {
        self.ips
            .iter()
            .filter(|ip| ip.interface.is_none_or(|i| i == index))
            .filter_map(|ip| Some((ip.address.parse::<Cidr>().ok()?, ip.gateway)))
            .find(|(c, _)| c.addr.is_ipv4())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE_RESULT: &str = r#"{"cniVersion":"1.0.0",
        "interfaces":[{"name":"skiff0","mac":"aa:bb:cc:00:00:01"},
                      {"name":"veth1234","mac":"aa:bb:cc:00:00:02"},
                      {"name":"eth0","mac":"aa:bb:cc:00:00:03","sandbox":"/run/netns/t1"}],
        "ips":[{"interface":2,"address":"10.89.0.5/16","gateway":"10.89.0.1"}],
        "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;

    #[test]
    fn a_bridge_result_names_the_task_interface_and_its_address() {
        let r: CniResult = serde_json::from_str(BRIDGE_RESULT).unwrap();
        let (idx, eth0) = r.sandbox_interface("eth0", "/run/netns/t1").unwrap();
        assert_eq!((idx, eth0.mac.as_str()), (2, "aa:bb:cc:00:00:03"));
        let (cidr, gw) = r.ipv4_of(idx).unwrap();
        assert_eq!(cidr.to_string(), "10.89.0.5/16");
        assert_eq!(gw, Some("10.89.0.1".parse().unwrap()));
        assert_eq!(r.host_ports("skiff0").collect::<Vec<_>>(), ["veth1234"]);
        // It survives being stored and read back (it is handed to DEL as prevResult).
        let again: CniResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn bad_cidrs_are_refused() {
        for bad in ["10.0.0.1", "10.0.0.1/33", "x/8", "10.0.0.1/x", "::1/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!("fd00::1/64".parse::<Cidr>().unwrap().prefix, 64);
    }
}
