//! Skiff's own nftables table, which keeps tasks to what they may reach (issue 14). The
//! CNI plugins' rules (NAT, published ports, forwarding) only ever accept; this table
//! drops what a task must not do, and nftables drops a packet that any base chain drops, so
//! the two never have to agree on order:
//!
//! - `inet skiff` `input`: from a task bridge, only replies to the host's own connections
//!   and DNS to Skiff's resolvers (on the networks' gateways) reach the host: no host
//!   service, on any of the host's addresses, is open to tasks; IPv6 included.
//! - `inet skiff` `forward`: traffic from a task to another task bridge, or to
//!   link-local addresses (cloud metadata services), is dropped; replies, and connections
//!   to a port another task published on the host (DNAT), pass.
//!
//! Tasks on one bridge reach each other at layer 2, without the host's IP layer: on the
//! default network each task's bridge port is made `isolated` (the kernel's bridge port
//! isolation) when it is attached, so those frames never pass (see `super::ip::isolate_port`).
//!
//! The table is replaced whole, in one transaction, each time the server starts.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Every task bridge's name starts with this (`skiff0` is the default network's).
pub const BRIDGE_PREFIX: &str = "skiff";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run nft (install nftables): {0}")]
    Spawn(std::io::Error),
    #[error("nft refused Skiff's rules: {0}")]
    Refused(String),
}

/// The ruleset text (`nft -f` syntax) for the task bridges.
/// A task network as the rules see it.
#[derive(Debug, Clone)]
pub struct TaskBridge {
    pub bridge: String,
    /// Where its resolver listens (DNS from tasks to it is let through).
    pub gateway: Ipv4Addr,
}

/// The ruleset for these task networks. A packet is only compared with its own bridge:
/// where `br_netfilter` is loaded, traffic between two ports of one bridge passes the IP
/// layer's forward hook too, with the bridge as both its in and out interface, and must
/// not be taken for traffic between networks.
pub fn ruleset(nets: &[TaskBridge]) -> String {
    let tasks = format!("\"{BRIDGE_PREFIX}*\"");
    let dns = if nets.is_empty() {
        String::new()
    } else {
        let set: Vec<String> = nets.iter().map(|n| n.gateway.to_string()).collect();
        format!(
            "    iifname {tasks} ip daddr {{ {} }} meta l4proto {{ udp, tcp }} th dport 53 accept comment \"Skiff's resolvers\"\n",
            set.join(", ")
        )
    };
    let between: String = nets
        .iter()
        .map(|n| {
            format!(
                "    iifname \"{b}\" oifname {tasks} oifname != \"{b}\" counter drop comment \"tasks do not reach other networks\"\n",
                b = n.bridge
            )
        })
        .collect();
    let mut out = String::new();
    // Declaring a table before deleting it makes the delete succeed when it is absent.
    out.push_str("table inet skiff\ndelete table inet skiff\n");
    out.push_str(&format!(
        "table inet skiff {{
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    iifname {tasks} ct state established,related accept
{dns}    iifname {tasks} counter drop comment \"tasks do not reach the host\"
  }}
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    iifname {tasks} ct state established,related accept
    iifname {tasks} ct status dnat accept comment \"a port another task published\"
{between}    iifname {tasks} ip daddr 169.254.0.0/16 counter drop comment \"no link-local (metadata) addresses\"
    iifname {tasks} ip6 daddr fe80::/10 counter drop
  }}
}}
"
    ));
    out
}

fn nft(args: &[&str], rules: &str) -> Result<(), FirewallError> {
    let mut child = Command::new("nft")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(FirewallError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(FirewallError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(FirewallError::Spawn)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(FirewallError::Refused(
            err.trim().chars().take(500).collect(),
        ));
    }
    Ok(())
}

/// Replaces Skiff's table with its rules, in one transaction.
pub fn install(nets: &[TaskBridge]) -> Result<(), FirewallError> {
    nft(&["-f", "-"], &ruleset(nets))
}

/// Checks the rules with nft without applying them.
pub fn check(nets: &[TaskBridge]) -> Result<(), FirewallError> {
    nft(&["--check", "-f", "-"], &ruleset(nets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets() -> Vec<TaskBridge> {
        vec![
            TaskBridge {
                bridge: "skiff0".into(),
                gateway: "10.89.0.1".parse().unwrap(),
            },
            TaskBridge {
                bridge: "skiff1".into(),
                gateway: "10.90.1.1".parse().unwrap(),
            },
        ]
    }

    #[test]
    fn the_rules_drop_what_tasks_must_not_do() {
        let r = ruleset(&nets());
        assert!(
            r.contains(
                "ip daddr { 10.89.0.1, 10.90.1.1 } meta l4proto { udp, tcp } th dport 53 accept"
            ),
            "{r}"
        );
        assert!(r.contains("iifname \"skiff*\" counter drop"), "{r}");
        assert!(
            r.contains("iifname \"skiff1\" oifname \"skiff*\" oifname != \"skiff1\" counter drop"),
            "{r}"
        );
        assert!(r.contains("169.254.0.0/16"), "{r}");
        assert!(!ruleset(&[]).contains("dport 53"));
    }

    /// nft itself accepts the rules (a check: nothing is applied).
    #[test]
    fn nft_accepts_the_rules() {
        if Command::new("nft").arg("--version").output().is_err() {
            if std::env::var_os("CI").is_some() {
                panic!("nft is missing: scripts/setup.sh installs nftables");
            }
            eprintln!("skipped: nft is missing (scripts/setup.sh installs nftables)");
            return;
        }
        check(&[]).unwrap();
        check(&nets()).unwrap();
    }
}
