//! Named networks (`skiff network create NAME`): what one is, how its name and subnet are
//! checked and chosen, and its CNI configuration. Each has its own bridge (`skiffN`) and
//! subnet; its tasks reach each other (their bridge ports are not isolated) and resolve
//! each other's names through the network's resolver on its gateway address. Everything
//! else about it (NAT, published ports, what it may not reach) is as on the default
//! network.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::cni::NetConfList;

/// Names a network may not have: the other `networkMode` values, and Docker's.
const RESERVED: [&str; 4] = ["none", "default", "bridge", "host"];
/// The most named networks a server keeps (one bridge each).
pub const MAX_NETWORKS: usize = 250;

/// A named network, as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedNetwork {
    pub name: String,
    /// Its IPv4 subnet, CIDR.
    pub subnet: Ipv4Net,
    /// The bridge's address: the tasks' gateway and resolver.
    pub gateway: Ipv4Addr,
    /// Its bridge on the host.
    pub bridge: String,
    pub created_ms: u64,
}

/// A DNS label, as task names must be: 1 to 63 of `a-z`, `0-9`, `-`, not starting or
/// ending with `-`.
pub fn check_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid name: 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'"
        ))
    }
}

/// A network's name: a DNS label that is not one of the reserved modes.
pub fn check_network_name(s: &str) -> Result<(), String> {
    check_label(s)?;
    if RESERVED.contains(&s) {
        return Err(format!("{s:?} is reserved"));
    }
    Ok(())
}

/// The bridge of the network with number `n` (1, 2, …; `skiff0` is the default network's).
pub fn bridge_name(n: u32) -> String {
    format!("{}{n}", super::firewall::BRIDGE_PREFIX)
}

/// A subnet a user asked for: IPv4, at most /16 wide and at least /29 (room for the
/// gateway and a few tasks), given as its network address.
pub fn check_subnet(s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 subnet (like 10.90.1.0/24)"))?;
    if !(16..=29).contains(&net.prefix_len()) {
        return Err(format!("{s}: the prefix must be /16 to /29"));
    }
    if net.network() != net.addr() {
        return Err(format!("{s}: give the network address ({})", net.trunc()));
    }
    Ok(net)
}

/// The first /24 of `pool` that overlaps none of `taken`.
pub fn pick_subnet(pool: Ipv4Net, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    let subnets = pool.subnets(24.max(pool.prefix_len())).ok()?;
    subnets
        .into_iter()
        .find(|s| !taken.iter().any(|t| overlap(*s, *t)))
}

/// Whether two subnets share an address.
pub fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The gateway of `subnet`: its first host address, as host-local's default.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The CNI configuration of a Skiff network: bridge `bridge` (the tasks' gateway, with
/// outbound NAT), host-local addresses from `subnet` (leases under `ipam_dir`), published
/// ports (portmap) and the firewall plugin's forwarding rules.
pub fn conf(cni_name: &str, bridge: &str, subnet: &str, ipam_dir: &Path) -> NetConfList {
    use serde_json::json;
    NetConfList {
        cni_version: "1.0.0".into(),
        name: cni_name.into(),
        plugins: vec![
            json!({
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                },
            }),
            json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            json!({"type": "firewall", "backend": "iptables"}),
        ],
    }
}

/// The CNI network name of named network `name` (leases live under it).
pub fn cni_name(name: &str) -> String {
    format!("skiff-{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels_and_not_reserved() {
        for good in ["web", "a", "front-end", "n1", &"x".repeat(63)] {
            check_network_name(good).unwrap();
        }
        for bad in [
            "", "-a", "a-", "Web", "a_b", "a.b", "none", "default", "host", "bridge",
        ] {
            assert!(check_network_name(bad).is_err(), "{bad}");
        }
        assert!(check_label(&"x".repeat(64)).is_err());
        check_label("default").unwrap();
    }

    #[test]
    fn subnets_are_checked_and_picked_without_overlap() {
        assert!(check_subnet("10.90.1.0/24").is_ok());
        for bad in [
            "10.90.1.1/24",
            "10.0.0.0/8",
            "10.90.1.0/30",
            "fd00::/64",
            "x",
        ] {
            assert!(check_subnet(bad).is_err(), "{bad}");
        }
        let pool: Ipv4Net = "10.90.0.0/16".parse().unwrap();
        let taken: Vec<Ipv4Net> = vec![
            "10.90.0.0/24".parse().unwrap(),
            "10.90.1.128/25".parse().unwrap(),
        ];
        assert_eq!(
            pick_subnet(pool, &taken).unwrap().to_string(),
            "10.90.2.0/24"
        );
        assert_eq!(
            gateway_of("10.90.2.0/24".parse().unwrap()).to_string(),
            "10.90.2.1"
        );
        let all: Vec<Ipv4Net> = vec![pool];
        assert!(pick_subnet(pool, &all).is_none());
    }
}
