//! The guest side of a task's network: the interface named in the run spec (the VM's
//! virtio-net device) gets the host side's MAC, the MTU, its IPv4 address, and comes up;
//! a default route goes through the gateway. Done with the classic interface ioctls
//! (SIOCSIF*, SIOCADDRT) on a datagram socket: a handful of calls, no netlink library in
//! the agent. The spec is checked first, so a bad one is one clear error.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use guest_agent::NetworkSpec;

/// A spec made ready for the ioctls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub interface: String,
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("MAC {s:?}: expected six hex pairs"));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(format!("MAC {s:?}: expected six hex pairs"));
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| format!("MAC {s:?}: {p:?} is not hex"))?;
    }
    if mac[0] & 1 == 1 {
        return Err(format!("MAC {s:?} is a multicast address"));
    }
    Ok(mac)
}

/// Checks `spec` and turns it into what the ioctls take.
pub fn plan(spec: &NetworkSpec) -> Result<Plan, String> {
    let name = &spec.interface;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(format!("interface name {name:?} is not valid"));
    }
    let (addr, prefix) = spec
        .address
        .split_once('/')
        .ok_or_else(|| format!("address {:?}: expected ADDRESS/PREFIX", spec.address))?;
    let address: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("address {addr:?} is not IPv4"))?;
    let prefix: u32 = prefix
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| format!("prefix {prefix:?}: expected 1 to 32"))?;
    let netmask = Ipv4Addr::from(u32::MAX << (32 - prefix));
    let gateway = spec
        .gateway
        .as_deref()
        .map(|g| {
            g.parse::<Ipv4Addr>()
                .map_err(|_| format!("gateway {g:?} is not IPv4"))
        })
        .transpose()?;
    if let Some(g) = gateway {
        let net = u32::from(netmask);
        if u32::from(g) & net != u32::from(address) & net {
            return Err(format!("gateway {g} is outside {}", spec.address));
        }
    }
    if !(68..=65535).contains(&spec.mtu) {
        return Err(format!("MTU {} is out of range (68-65535)", spec.mtu));
    }
    Ok(Plan {
        interface: name.clone(),
        mac: parse_mac(&spec.mac)?,
        address,
        netmask,
        gateway,
        mtu: spec.mtu,
    })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is a C struct of integers, byte arrays and a union of such; all-zero
    // bytes are a valid value of each.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().enumerate() {
        req.ifr_name[i] = b as libc::c_char;
    }
    req
}

fn sockaddr_v4(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain C structs; the kernel reads
    // an AF_INET sockaddr as a sockaddr_in, which is how it is laid out here.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl<T>(sock: &OwnedFd, request: libc::Ioctl, arg: &mut T, what: &str) -> Result<(), String> {
    // SAFETY: `arg` is the struct this request takes (ifreq or rtentry), initialised and
    // alive across the call; the kernel reads it and may write within its size.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), request, arg as *mut T) };
    if r < 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A socket to address the interface ioctls to.
fn inet_socket() -> Result<OwnedFd, String> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))
}

/// Sets `dev` up (and running), keeping its other flags.
fn bring_up(s: &OwnedFd, dev: &str) -> Result<(), String> {
    let mut req = ifreq(dev);
    ioctl(
        s,
        libc::SIOCGIFFLAGS,
        &mut req,
        &format!("read the flags of {dev}"),
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(s, libc::SIOCSIFFLAGS, &mut req, &format!("bring {dev} up"))
}

/// Brings interface `dev` up (the agent's loopback at start).
pub fn link_up(dev: &str) -> Result<(), String> {
    bring_up(&inet_socket()?, dev)
}

/// Applies `plan`: MAC and MTU while the interface is down, then the address, up, and the
/// default route.
pub fn apply(plan: &Plan) -> Result<(), String> {
    let s = inet_socket()?;
    let dev = &plan.interface;

    let mut req = ifreq(dev);
    req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
    for (i, b) in plan.mac.iter().enumerate() {
        // SAFETY: writing the hwaddr member of the union we just chose.
        unsafe { req.ifr_ifru.ifru_hwaddr.sa_data[i] = *b as libc::c_char };
    }
    ioctl(
        &s,
        libc::SIOCSIFHWADDR,
        &mut req,
        &format!("set the MAC of {dev}"),
    )?;

    let mut req = ifreq(dev);
    req.ifr_ifru.ifru_mtu = plan.mtu as libc::c_int;
    ioctl(
        &s,
        libc::SIOCSIFMTU,
        &mut req,
        &format!("set the MTU of {dev}"),
    )?;

    let mut req = ifreq(dev);
    req.ifr_ifru.ifru_addr = sockaddr_v4(plan.address);
    ioctl(
        &s,
        libc::SIOCSIFADDR,
        &mut req,
        &format!("set the address of {dev}"),
    )?;

    let mut req = ifreq(dev);
    req.ifr_ifru.ifru_netmask = sockaddr_v4(plan.netmask);
    ioctl(
        &s,
        libc::SIOCSIFNETMASK,
        &mut req,
        &format!("set the netmask of {dev}"),
    )?;

    bring_up(&s, dev)?;

    if let Some(gw) = plan.gateway {
        // SAFETY: rtentry is a C struct of integers, sockaddrs and pointers; all-zero is
        // valid (a null rt_dev lets the kernel pick the interface from the gateway).
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr_v4(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        ioctl(
            &s,
            libc::SIOCADDRT,
            &mut rt,
            &format!("add a default route via {gw}"),
        )?;
    }
    Ok(())
}

/// `/etc/resolv.conf` of a task with this network.
pub fn resolv_conf(spec: &NetworkSpec) -> String {
    if spec.nameservers.is_empty() {
        return "# no resolver given for this task\n".into();
    }
    let mut out = String::new();
    for ns in &spec.nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !spec.search.is_empty() {
        out.push_str(&format!("search {}\n", spec.search.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NetworkSpec {
        NetworkSpec {
            interface: "eth0".into(),
            mac: "02:1a:6a:e7:2a:ba".into(),
            address: "10.89.0.5/24".into(),
            gateway: Some("10.89.0.1".into()),
            mtu: 1500,
            nameservers: vec!["10.89.0.1".into()],
            search: vec!["skiff.internal".into()],
        }
    }

    #[test]
    fn a_spec_becomes_a_plan() {
        let p = plan(&spec()).unwrap();
        assert_eq!(p.mac, [0x02, 0x1a, 0x6a, 0xe7, 0x2a, 0xba]);
        assert_eq!(p.netmask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(p.gateway, Some(Ipv4Addr::new(10, 89, 0, 1)));
        assert_eq!(
            resolv_conf(&spec()),
            "nameserver 10.89.0.1\nsearch skiff.internal\n"
        );
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        type Change = fn(&mut NetworkSpec);
        let cases: [(Change, &str); 9] = [
            (|s| s.interface = "a/b".into(), "interface name"),
            (|s| s.interface = "x".repeat(16), "interface name"),
            (|s| s.mac = "02:00:00:00:00".into(), "six hex pairs"),
            (|s| s.mac = "03:00:00:00:00:01".into(), "multicast"),
            (|s| s.address = "10.89.0.5".into(), "ADDRESS/PREFIX"),
            (|s| s.address = "10.89.0.5/33".into(), "prefix"),
            (|s| s.address = "fd00::1/64".into(), "not IPv4"),
            (|s| s.gateway = Some("10.90.0.1".into()), "outside"),
            (|s| s.mtu = 20, "MTU"),
        ];
        for (change, why) in cases {
            let mut s = spec();
            change(&mut s);
            let e = plan(&s).unwrap_err();
            assert!(e.contains(why), "{e} (expected {why})");
        }
    }

    /// The ioctls on a real interface: a veth named eth0 in a network namespace of this
    /// test's own (root needed; CI runs as root).
    #[test]
    fn apply_configures_a_real_interface() {
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "needs root");
            eprintln!("skipped: needs root");
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: unshare on this thread only (a thread of its own that ends here).
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
            let ip = |args: &[&str]| {
                let o = std::process::Command::new("ip")
                    .args(args)
                    .output()
                    .unwrap();
                assert!(o.status.success(), "ip {args:?}: {o:?}");
                String::from_utf8_lossy(&o.stdout).into_owned()
            };
            ip(&[
                "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
            ]);
            ip(&["link", "set", "peer0", "up"]);
            apply(&plan(&spec()).unwrap()).unwrap();
            link_up("lo").unwrap();
            let lo = ip(&["-o", "link", "show", "lo"]);
            assert!(lo.contains(",UP"), "{lo}");
            let link = ip(&["-o", "link", "show", "eth0"]);
            assert!(link.contains("02:1a:6a:e7:2a:ba"), "{link}");
            assert!(link.contains("mtu 1500") && link.contains(",UP"), "{link}");
            let addr = ip(&["-o", "-4", "addr", "show", "eth0"]);
            assert!(addr.contains("inet 10.89.0.5/24"), "{addr}");
            let route = ip(&["route", "show", "default"]);
            assert!(route.contains("default via 10.89.0.1 dev eth0"), "{route}");
        })
        .join()
        .unwrap();
    }
}
