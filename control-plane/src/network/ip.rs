//! The iproute2 commands Skiff runs on the host: named network namespaces (`ip netns`,
//! so that `ip netns ls` shows a task's), the VM's TAP (created persistent, owned by the
//! VM's uid so the jailed VMM can open it without privileges, with the virtio-net header),
//! and the tc redirect that joins the TAP and the task's CNI interface both ways. Run as
//! commands rather than through a netlink crate: each is one well-known line, and an
//! operator can read and replay what Skiff did.

use std::process::Command;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {why}")]
pub struct IpError {
    pub command: String,
    pub why: String,
}

fn run(program: &str, args: &[&str]) -> Result<String, IpError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .map_err(|e| IpError {
            command: command.clone(),
            why: e.to_string(),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(IpError {
            command,
            why: err.trim().chars().take(300).collect(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `/run/netns/NAME`, where `ip netns add NAME` pins the namespace.
pub fn netns_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new("/run/netns").join(name)
}

pub fn netns_add(name: &str) -> Result<(), IpError> {
    run("ip", &["netns", "add", name]).map(drop)
}

/// Deletes the namespace; one already gone is not an error.
pub fn netns_del(name: &str) -> Result<(), IpError> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    run("ip", &["netns", "del", name]).map(drop)
}

/// A link's MAC and MTU inside namespace `ns`.
pub fn link_info(ns: &str, dev: &str) -> Result<(String, u32), IpError> {
    let out = run("ip", &["-n", ns, "-j", "link", "show", "dev", dev])?;
    let bad = |why: &str| IpError {
        command: format!("ip -n {ns} -j link show dev {dev}"),
        why: why.to_owned(),
    };
    let v: Value = serde_json::from_str(&out).map_err(|_| bad("not JSON"))?;
    let link = v.get(0).ok_or_else(|| bad("no such link"))?;
    let mac = link["address"].as_str().ok_or_else(|| bad("no address"))?;
    let mtu = link["mtu"].as_u64().ok_or_else(|| bad("no mtu"))?;
    Ok((mac.to_owned(), mtu as u32))
}

/// Makes bridge `name` with address `gateway` (CIDR) on the host, up, unless it is there:
/// the bridge plugin finds it ready (it adds the same address only when it is missing), and
/// the network's resolver can listen on the gateway before the first task.
pub fn bridge_ensure(name: &str, gateway: &str) -> Result<(), IpError> {
    if run("ip", &["link", "show", "dev", name]).is_err() {
        run("ip", &["link", "add", name, "type", "bridge"])?;
    }
    let addrs = run("ip", &["-o", "addr", "show", "dev", name])?;
    if !addrs.split_whitespace().any(|w| w == gateway) {
        run("ip", &["addr", "add", gateway, "dev", name])?;
    }
    run("ip", &["link", "set", "dev", name, "up"]).map(drop)
}

/// Deletes link `name` on the host; one already gone is not an error.
pub fn link_del(name: &str) -> Result<(), IpError> {
    if run("ip", &["link", "show", "dev", name]).is_err() {
        return Ok(());
    }
    run("ip", &["link", "del", "dev", name]).map(drop)
}

/// Makes bridge port `dev` (on the host) isolated: the bridge forwards no frame between
/// two isolated ports, so the tasks behind them cannot reach each other.
pub fn isolate_port(dev: &str) -> Result<(), IpError> {
    run(
        "ip",
        &[
            "link",
            "set",
            "dev",
            dev,
            "type",
            "bridge_slave",
            "isolated",
            "on",
        ],
    )
    .map(drop)
}

/// Creates TAP `tap` in namespace `ns`, owned by `uid`/`gid`, with `IFF_VNET_HDR`, up,
/// with `mtu`.
pub fn tap_add(ns: &str, tap: &str, uid: u32, gid: u32, mtu: u32) -> Result<(), IpError> {
    let (uid, gid, mtu) = (uid.to_string(), gid.to_string(), mtu.to_string());
    run(
        "ip",
        &[
            "-n", ns, "tuntap", "add", "dev", tap, "mode", "tap", "user", &uid, "group", &gid,
            "vnet_hdr",
        ],
    )?;
    run(
        "ip",
        &["-n", ns, "link", "set", "dev", tap, "mtu", &mtu, "up"],
    )
    .map(drop)
}

/// Everything arriving on `from` leaves through `to`, unchanged (an ingress qdisc and a
/// mirred redirect, as containerd's tc-redirect-tap does).
pub fn redirect(ns: &str, from: &str, to: &str) -> Result<(), IpError> {
    run("tc", &["-n", ns, "qdisc", "add", "dev", from, "ingress"])?;
    run(
        "tc",
        &[
            "-n", ns, "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32",
            "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
        ],
    )
    .map(drop)
}

/// The first IPv4 address of `dev` in namespace `ns`, as `ADDRESS/PREFIX`.
pub fn ipv4_of(ns: &str, dev: &str) -> Result<Option<String>, IpError> {
    let out = run("ip", &["-n", ns, "-j", "-4", "addr", "show", "dev", dev])?;
    let v: Value = serde_json::from_str(&out).map_err(|_| IpError {
        command: format!("ip -n {ns} -j -4 addr show dev {dev}"),
        why: "not JSON".into(),
    })?;
    Ok(v.get(0)
        .and_then(|l| l["addr_info"].as_array())
        .and_then(|a| a.first())
        .and_then(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        }))
}

/// The IPv4 default route's gateway in namespace `ns`, if it has one.
pub fn default_gateway(ns: &str) -> Result<Option<std::net::IpAddr>, IpError> {
    let out = run("ip", &["-n", ns, "-j", "-4", "route", "show", "default"])?;
    let v: Value = serde_json::from_str(&out).map_err(|_| IpError {
        command: format!("ip -n {ns} -j -4 route show default"),
        why: "not JSON".into(),
    })?;
    Ok(v.get(0)
        .and_then(|r| r["gateway"].as_str())
        .and_then(|g| g.parse().ok()))
}

/// Undoes [`redirect`] from `dev` (its ingress qdisc, with the filter in it).
pub fn redirect_del(ns: &str, dev: &str) -> Result<(), IpError> {
    run("tc", &["-n", ns, "qdisc", "del", "dev", dev, "ingress"]).map(drop)
}

/// Deletes link `dev` in namespace `ns`.
pub fn link_del_in(ns: &str, dev: &str) -> Result<(), IpError> {
    run("ip", &["-n", ns, "link", "del", "dev", dev]).map(drop)
}
