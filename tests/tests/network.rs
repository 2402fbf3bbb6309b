//! A task's network, host side (issue 14), with Debian's real CNI plugins: inside a test
//! host namespace of its own, `Networks::attach` gives a task a namespace with the bridge
//! plugin's `eth0` (address from host-local), and `plug_vm` a TAP owned by the VM's uid
//! with the tc redirect between them. Frames written into the TAP, as the VM would send them, reach
//! the bridge: an ARP request for the gateway and a ping of it are answered back through
//! the TAP. `detach` frees the address and removes the namespace. No VM is needed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use control_plane::network::{default_conf, firewall, Networks, TaskNetwork};
use skiff_tests::netns::{in_netns, TestNetns};

const VM_UID: u32 = 900_123;

/// Opens TAP `name` of the current thread's namespace for raw frames (no packet info,
/// no virtio header), non-blocking.
fn open_tap(name: &str) -> std::fs::File {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_nonblock()
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq-sized struct we own, on our own fd.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    f
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let v: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn arp_request(mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(mac);
    f.extend([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend(mac);
    f.extend(ip.octets());
    f.extend([0; 6]);
    f.extend(target.octets());
    f
}

fn ping(mac: [u8; 6], dst_mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend(b"skiff network test payload......");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut iph = vec![0x45, 0];
    iph.extend(total.to_be_bytes());
    iph.extend([0, 1, 0x40, 0, 64, 1, 0, 0]);
    iph.extend(ip.octets());
    iph.extend(target.octets());
    let c = checksum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = dst_mac.to_vec();
    f.extend(mac);
    f.extend([0x08, 0x00]);
    f.extend(iph);
    f.extend(icmp);
    f
}

/// Writes `frame` into the TAP, again every half second (as a guest's ARP and ping do:
/// a bridge port that has just come up may drop the first), until `want` accepts a frame
/// read back (5 s at most).
fn exchange(tap: &mut std::fs::File, frame: &[u8], want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 2048];
    let mut resend = Instant::now();
    loop {
        if Instant::now() >= resend {
            tap.write_all(frame).unwrap();
            resend = Instant::now() + Duration::from_millis(500);
        }
        match tap.read(&mut buf) {
            Ok(n) if want(&buf[..n]) => return buf[..n].to_vec(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no answer through the TAP");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("reading the TAP: {e}"),
        }
    }
}

/// The gateway's MAC (from its ARP reply) and that a ping of it is answered.
fn exchange_through_tap(net: &TaskNetwork) -> [u8; 6] {
    let mac = mac_bytes(&net.guest.mac);
    let ip: Ipv4Addr = net
        .guest
        .address
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let gw = match net.guest.gateway {
        Some(std::net::IpAddr::V4(g)) => g,
        other => panic!("gateway {other:?}"),
    };
    in_netns(&net.netns_path(), || {
        let mut tap = open_tap(&net.tap);
        let reply = exchange(&mut tap, &arp_request(mac, ip, gw), |f| {
            f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 2] && f[28..32] == gw.octets()
        });
        let gw_mac: [u8; 6] = reply[22..28].try_into().unwrap();
        exchange(&mut tap, &ping(mac, gw_mac, ip, gw), |f| {
            f.len() >= 42
                && f[12..14] == [8, 0]
                && f[23] == 1
                && f[26..30] == gw.octets()
                && f[34] == 0
        });
        gw_mac
    })
}

fn leases(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("skiff"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<Ipv4Addr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_task_network_carries_frames_between_its_tap_and_the_bridge() {
    let host = TestNetns::new("nethost");
    let ipam = tempfile::tempdir().unwrap();
    let nets = Networks::new(
        Path::new(control_plane::network::DEFAULT_PLUGIN_DIR),
        default_conf("10.89.0.0/24", ipam.path()),
        control_plane::network::DEFAULT_BRIDGE,
        true,
    )
    .unwrap();
    host.run(|| {
        let net = nets.attach("0123456789abcdef", vec![]).unwrap();
        Networks::plug_vm(&net, VM_UID, VM_UID).unwrap();
        assert!(net.netns_path().exists());
        assert!(net.guest.address.starts_with("10.89.0."), "{:?}", net.guest);
        assert!(net.guest.address.ends_with("/24"), "{:?}", net.guest);
        assert_eq!(net.guest.gateway, Some("10.89.0.1".parse().unwrap()));
        assert_eq!(net.guest.mtu, 1500);
        assert_eq!(net.guest.mac.len(), 17, "{:?}", net.guest);
        let ip = net.guest.address.split('/').next().unwrap().to_owned();
        assert_eq!(leases(ipam.path()), [ip]);
        // The TAP belongs to the VM's uid, so the jailed VMM can open it.
        let tap = std::process::Command::new("ip")
            .args(["-n", &net.netns, "-d", "link", "show", "dev", &net.tap])
            .output()
            .unwrap();
        let tap = String::from_utf8_lossy(&tap.stdout);
        assert!(tap.contains(&format!("user {VM_UID}")), "{tap}");
        assert!(tap.contains("vnet_hdr"), "{tap}");
        // Its bridge port on the host is isolated from other tasks'.
        let port = net.result.host_ports("skiff0").next().unwrap().to_owned();
        let link = std::process::Command::new("ip")
            .args(["-d", "link", "show", "dev", &port])
            .output()
            .unwrap();
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(link.contains("isolated on"), "{link}");

        let gw_mac = exchange_through_tap(&net);
        eprintln!(
            "task {} at {} (mac {}), gateway {:?} at {:02x?}",
            net.netns, net.guest.address, net.guest.mac, net.guest.gateway, gw_mac
        );

        nets.detach(&net).unwrap();
        assert!(!net.netns_path().exists());
        assert!(leases(ipam.path()).is_empty(), "{:?}", leases(ipam.path()));
        // A second detach (a retry after a crash) is harmless.
        nets.detach(&net).unwrap();
    });
}

#[test]
fn a_plugin_failure_is_named_and_leaves_nothing_behind() {
    let host = TestNetns::new("netfail");
    let ipam = tempfile::tempdir().unwrap();
    // A subnet host-local cannot use: ADD fails in the first plugin.
    let nets = Networks::new(
        Path::new(control_plane::network::DEFAULT_PLUGIN_DIR),
        default_conf("10.89.1.0/33", ipam.path()),
        control_plane::network::DEFAULT_BRIDGE,
        true,
    )
    .unwrap();
    host.run(|| {
        let e = nets
            .attach("fedcba9876543210", vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bridge"), "{e}");
        assert!(!Path::new("/run/netns")
            .join(Networks::netns_name("fedcba9876543210"))
            .exists());
    });
}

/// Accepts on `listener` until the test ends, answering each connection with the peer's
/// address as the listener saw it.
fn echo_peer(listener: TcpListener) {
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let peer = c
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = c.write_all(peer.as_bytes());
        }
    });
}

/// Connects to `addr` from the current thread's namespace: what the far end says, or None
/// when nothing answers within 2 s (dropped) or the connection is refused.
fn try_connect(addr: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Issue 14's isolation, performed against the real rules with the tasks' own CNI
/// interfaces (no VM is needed to send from a task's namespace): inside a test "host"
/// joined to a test "internet", with Skiff's nftables table installed, a task reaches the
/// internet through NAT, and nothing else: not another task on the default network, not a
/// service of the host on any of its addresses, not a link-local metadata address. The
/// host reaches the tasks, and a published port answers on the host's address and on
/// 127.0.0.1. Without the table and the port isolation, every one of these attempts
/// succeeds (the first version of this test showed it).
#[test]
fn a_task_reaches_the_internet_and_nothing_else() {
    let host = TestNetns::new("isohost");
    let inet = TestNetns::new("isoinet");
    host.link(&inet, "uplink", "10.200.0.1/24", "10.200.0.2/24");
    // A metadata service at the usual link-local address, beyond the uplink.
    inet.ip(&["addr", "add", "169.254.169.254/32", "dev", "lo"]);
    host.ip(&["route", "add", "169.254.169.254/32", "via", "10.200.0.2"]);
    let ipam = tempfile::tempdir().unwrap();
    let nets = Networks::new(
        Path::new(control_plane::network::DEFAULT_PLUGIN_DIR),
        default_conf("10.89.3.0/24", ipam.path()),
        control_plane::network::DEFAULT_BRIDGE,
        true,
    )
    .unwrap();
    // A named network beside it (its tasks may reach each other).
    let named = Networks::new(
        Path::new(control_plane::network::DEFAULT_PLUGIN_DIR),
        control_plane::network::named::conf("skiff-web", "skiff1", "10.90.3.0/24", ipam.path()),
        "skiff1",
        false,
    )
    .unwrap();
    let published = serde_json::json!({"hostPort": 18088, "containerPort": 80, "protocol": "tcp"});
    let pid = std::process::id();
    let (mut tasks, mut on_web) = host.run(|| {
        host_sysctl_forwarding();
        firewall::install(&[
            firewall::TaskBridge {
                bridge: control_plane::network::DEFAULT_BRIDGE.into(),
                gateway: "10.89.3.1".parse().unwrap(),
            },
            firewall::TaskBridge {
                bridge: "skiff1".into(),
                gateway: "10.90.3.1".parse().unwrap(),
            },
        ])
        .unwrap();
        let mut tasks = Attached {
            nets: &nets,
            host: host.path(),
            list: Vec::new(),
        };
        for (id, ports) in [
            (format!("a{pid:015}"), vec![published.clone()]),
            (format!("b{pid:015}"), vec![]),
        ] {
            tasks.list.push(nets.attach(&id, ports).unwrap());
        }
        let mut on_web = Attached {
            nets: &named,
            host: host.path(),
            list: Vec::new(),
        };
        for id in [format!("c{pid:015}"), format!("d{pid:015}")] {
            on_web.list.push(named.attach(&id, vec![]).unwrap());
        }
        echo_peer(TcpListener::bind("0.0.0.0:18081").unwrap());
        (tasks, on_web)
    });
    let (a, b) = (tasks.list[0].clone(), tasks.list[1].clone());
    let (c, d) = (on_web.list[0].clone(), on_web.list[1].clone());
    echo_peer(inet.run(|| TcpListener::bind("0.0.0.0:18080").unwrap()));
    echo_peer(inet.run(|| TcpListener::bind("169.254.169.254:80").unwrap()));
    echo_peer(in_netns(&a.netns_path(), || {
        TcpListener::bind("0.0.0.0:80").unwrap()
    }));
    let ip_of = |n: &TaskNetwork| n.guest.address.split('/').next().unwrap().to_owned();
    let a_ip = ip_of(&a);
    echo_peer(in_netns(&d.netns_path(), || {
        TcpListener::bind("0.0.0.0:80").unwrap()
    }));
    let (c_ip, d_ip) = (ip_of(&c), ip_of(&d));
    // On the named network, C reaches D (this host has br_netfilter: the traffic between
    // two ports of one bridge passes the IP forward hook too); not A on the default one,
    // nor does B reach D.
    in_netns(&c.netns_path(), || {
        assert_eq!(try_connect(&format!("{d_ip}:80")), Some(c_ip.clone()));
        assert_eq!(try_connect(&format!("{a_ip}:80")), None, "C reached A");
    });
    in_netns(&b.netns_path(), || {
        assert_eq!(try_connect(&format!("{d_ip}:80")), None, "B reached D");
    });

    in_netns(&b.netns_path(), || {
        // The internet, through NAT: the far end sees the host's uplink address.
        assert_eq!(
            try_connect("10.200.0.2:18080").as_deref(),
            Some("10.200.0.1")
        );
        for (what, addr) in [
            ("another task", format!("{a_ip}:80")),
            ("the host, on the gateway", "10.89.3.1:18081".to_owned()),
            ("the host, on its uplink", "10.200.0.1:18081".to_owned()),
            (
                "a link-local metadata address",
                "169.254.169.254:80".to_owned(),
            ),
        ] {
            assert_eq!(try_connect(&addr), None, "task B reached {what} at {addr}");
        }
    });
    host.run(|| {
        assert_eq!(
            try_connect(&format!("{a_ip}:80")).as_deref(),
            Some("10.89.3.1")
        );
        // A's published port, on 127.0.0.1 too.
        assert!(try_connect("127.0.0.1:18088").is_some(), "127.0.0.1:18088");
        assert!(
            try_connect("10.200.0.1:18088").is_some(),
            "10.200.0.1:18088"
        );
    });
    inet.run(|| {
        assert!(
            try_connect("10.200.0.1:18088").is_some(),
            "from the internet"
        );
    });
    host.run(|| {
        tasks.detach();
        on_web.detach();
        // The published port's rules went with A.
        assert_eq!(try_connect("127.0.0.1:18088"), None);
    });
    assert!(leases(ipam.path()).is_empty());
}

/// Attached task networks, detached on drop (also when an assertion fails).
struct Attached<'a> {
    nets: &'a Networks,
    /// The test host's namespace, where the plugins must run.
    host: std::path::PathBuf,
    list: Vec<TaskNetwork>,
}

impl Attached<'_> {
    fn detach(&mut self) {
        for n in self.list.drain(..) {
            self.nets.detach(&n).unwrap();
        }
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        let list: Vec<_> = self.list.drain(..).collect();
        let nets = self.nets;
        in_netns(&self.host, || {
            for n in list {
                let _ = nets.detach(&n);
            }
        });
    }
}

/// A namespace starts with forwarding off; the bridge plugin turns it on for its gateway,
/// but the uplink must forward too.
fn host_sysctl_forwarding() {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
}
