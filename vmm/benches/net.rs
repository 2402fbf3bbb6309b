//! Network benchmark: TCP throughput both ways and request/response round trips between a
//! guest and the host, through skiff-vmm's virtio-net and through QEMU microvm's
//! `virtio-net-device` (its user-space model, vhost=off), in one run: the same kernel,
//! kernel command line, initramfs, guest program, memory and 1 vCPU.
//!
//!   cargo bench -p vmm --bench net -- [--mib N] [--rounds R] [--msg BYTES] [--runs N]
//!       [--memory-mib M] [--timeout-secs S] [--no-qemu] [--qemu-plain] [--host-only]
//!
//! Everything happens in a network namespace of the benchmark's own, deleted at the end
//! (also on a panic): a TAP with 10.201.0.1/24, the VMMs started inside it with `ip netns
//! exec`, the guest at 10.201.0.2. The host side is a TCP server on a thread of this
//! process, listening on a socket made inside the namespace. The guest program
//! (`tests/guest/net-test.c`) opens three connections: UP (guest → host), DOWN (host →
//! guest), ECHO (round trips with TCP_NODELAY).
//!
//! Timing: throughput is timed on the host (its clock; UP from the command to EOF, DOWN
//! from the command to the guest's answer after EOF), the guest's own figures are printed
//! beside them as a check of its clock; round trips are timed in the guest, from the
//! write of a message to the last byte of its echo (the host's view, the interval between
//! two arrivals, is printed beside them).
//!
//! Where /dev/vhost-net exists, QEMU also runs with vhost=on (the device model in the
//! host kernel). `--qemu-plain` adds a QEMU run with the offloads and mergeable buffers
//! off, the feature set skiff-vmm offers, to tell the device loop apart from the features.
//! `--host-only` runs the guest program on the host inside the namespace (no VM): a check
//! of the harness in seconds.
//!
//! The default sizes are small because on PVM hosts (software nested virtualisation, the
//! guest kernel emulated) TCP in the guest moves ~0.1 MB/s and a round trip takes ~30 ms;
//! each VM run is ~60 s of boot plus ~40 s of traffic.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmm::initramfs::{write_skeleton, CpioWriter};

mod common;
// The namespace helper of the integration tests: a namespace of our own, deleted on drop.
#[path = "../tests/common/netns.rs"]
#[allow(dead_code)]
mod netns;

#[path = "net/host.rs"]
mod host;

use host::{listen_in, HostSide, Server};
use netns::{netns_available, NetNs};

const TAP: &str = "sknb0";
const HOST_CIDR: &str = "10.201.0.1/24";
const HOST_IP: &str = "10.201.0.1";
const GUEST_CIDR: &str = "10.201.0.2/24";
const PORT: u16 = 5201;
const MAC: &str = "02:5c:1f:01:00:02";
/// The guest program's pattern repeats every PERIOD bytes (the same function as in
/// net-test.c), so one table checks any offset.
const PERIOD: usize = 1 << 19;
/// Round trips the guest runs before the measured ones (WARMUP in net-test.c).
const WARMUP: usize = 10;

struct Options {
    mib: u64,
    rounds: u64,
    msg: u64,
    runs: u64,
    memory_mib: u64,
    timeout: Duration,
    qemu: bool,
    qemu_plain: bool,
    host_only: bool,
}

impl Options {
    fn parse() -> Self {
        let args: Vec<String> = std::env::args().collect();
        let num = |name: &str, default: u64| {
            let Some(i) = args.iter().position(|a| a == name) else {
                return default;
            };
            let v = args.get(i + 1).map(String::as_str).unwrap_or("");
            v.parse()
                .unwrap_or_else(|_| panic!("{name} wants a number, got '{v}'"))
        };
        let flag = |name: &str| args.iter().any(|a| a == name);
        Self {
            mib: num("--mib", 2),
            rounds: num("--rounds", 200).max(1),
            msg: num("--msg", 64).clamp(1, PERIOD as u64),
            runs: num("--runs", 3).max(1),
            memory_mib: num("--memory-mib", 256),
            timeout: Duration::from_secs(num("--timeout-secs", 900)),
            qemu: !flag("--no-qemu"),
            qemu_plain: flag("--qemu-plain"),
            host_only: flag("--host-only"),
        }
    }

    fn bytes(&self) -> u64 {
        self.mib << 20
    }

    /// The arguments of net-test after the program name.
    fn guest_args(&self) -> [String; 5] {
        [
            HOST_IP.into(),
            PORT.to_string(),
            self.bytes().to_string(),
            self.rounds.to_string(),
            self.msg.to_string(),
        ]
    }
}

// ---- the guest -----------------------------------------------------------------------

/// Busybox as the shell, eth0 addressed by `ip`, then net-test, then a reset that ends
/// either VMM.
fn initramfs(dir: &Path, tool: &Path, opts: &Options) -> PathBuf {
    let script = format!(
        "#!/bin/sh\nmount -t proc proc /proc\nmount -t devtmpfs dev /dev\n\
         ip link set eth0 up\nip addr add {GUEST_CIDR} dev eth0\n\
         /bin/net-test {}\necho \"NET-TEST: exit=$?\"\nreboot -f\n",
        opts.guest_args().join(" ")
    );
    let path = dir.join("net.cpio");
    let mut w = CpioWriter::new(std::fs::File::create(&path).expect("create the initramfs"));
    write_skeleton(&mut w).unwrap();
    w.host_file("bin/busybox", Path::new("/bin/busybox"))
        .expect("/bin/busybox (Debian's busybox-static) is needed");
    for a in ["sh", "mount", "ip", "echo", "reboot"] {
        w.symlink(&format!("bin/{a}"), "busybox").unwrap();
    }
    w.host_file("bin/net-test", tool).unwrap();
    w.file("init", 0o755, script.as_bytes()).unwrap();
    w.finish().unwrap();
    path
}

// ---- the VMMs ------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Vmm {
    Skiff,
    /// QEMU's virtio-net-device: user-space (vhost=off) or in the host kernel (vhost=on);
    /// `plain`: with skiff-vmm's feature set (no offloads, no mergeable buffers, no
    /// control queue).
    Qemu {
        plain: bool,
        vhost: bool,
    },
    /// net-test run on the host in the namespace: no VM, no virtio-net.
    HostOnly,
}

impl Vmm {
    fn label(self) -> &'static str {
        match self {
            Vmm::Skiff => "skiff-vmm",
            Vmm::Qemu { vhost: true, .. } => "qemu-vhost",
            Vmm::Qemu { plain: false, .. } => "qemu",
            Vmm::Qemu { plain: true, .. } => "qemu-plain",
            Vmm::HostOnly => "host-only",
        }
    }

    fn command(self, kernel: &Path, initrd: &Path, opts: &Options, tool: &Path) -> Command {
        match self {
            Vmm::Skiff => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_skiff-vmm"));
                c.arg("--kernel").arg(kernel).arg("--initrd").arg(initrd);
                c.args(["--vcpus", "1", "--memory-mib", &opts.memory_mib.to_string()]);
                c.args([
                    "--net",
                    &format!("tap={TAP},mac={MAC}"),
                    "--cmdline",
                    "quiet",
                ]);
                c
            }
            Vmm::Qemu { plain, vhost } => {
                let mut c = common::qemu_microvm(kernel, initrd, opts.memory_mib);
                let vhost = if vhost { "on" } else { "off" };
                c.args([
                    "-netdev",
                    &format!("tap,id=n0,ifname={TAP},script=no,downscript=no,vhost={vhost}"),
                ]);
                let mut dev = format!("virtio-net-device,netdev=n0,mac={MAC}");
                if plain {
                    dev.push_str(QEMU_PLAIN);
                }
                c.args(["-device", &dev]);
                c
            }
            Vmm::HostOnly => {
                let mut c = Command::new(tool);
                c.args(opts.guest_args());
                c
            }
        }
    }
}

/// QEMU virtio-net properties that leave the features skiff-vmm offers: MAC, STATUS,
/// EVENT_IDX (and VERSION_1). Every control-queue feature goes with the queue: Linux
/// refuses a card that offers one without it.
const QEMU_PLAIN: &str = ",csum=off,guest_csum=off,gso=off,guest_tso4=off,guest_tso6=off,\
guest_ecn=off,guest_ufo=off,host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off,\
mrg_rxbuf=off,ctrl_vq=off,ctrl_rx=off,ctrl_vlan=off,ctrl_rx_extra=off,ctrl_mac_addr=off,\
ctrl_guest_offloads=off,guest_announce=off,indirect_desc=off";

/// `cmd`, run inside the namespace: `ip netns exec` execs the program, so the child is the
/// VMM itself (killing it kills the VMM).
fn in_namespace(ns: &NetNs, cmd: &Command) -> Command {
    let mut c = ns.command(cmd.get_program().to_str().expect("program path"));
    c.args(cmd.get_args());
    c
}

/// The figures of one run.
#[derive(Debug, Clone, Copy)]
struct Figures {
    /// Host-timed.
    send_mbps: f64,
    recv_mbps: f64,
    /// Guest-timed.
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    /// Cross-checks: the guest's clock for throughput, the host's for round trips.
    guest_send_mbps: f64,
    guest_recv_mbps: f64,
    host_rtt_p50_us: f64,
}

/// Starts `vmm`, serves its guest, waits for it to end (killed at the deadline) and
/// returns the figures, or why there are none.
fn run_once(
    vmm: Vmm,
    ns: &NetNs,
    listener: &TcpListener,
    opts: &Options,
    paths: (&Path, &Path, &Path),
) -> (Result<Figures, String>, Losses) {
    let (kernel, initrd, tool) = paths;
    let before = Losses::read(ns);
    let server = Server::start(listener);
    let cmd = in_namespace(ns, &vmm.command(kernel, initrd, opts, tool));
    let child = spawn(cmd);
    let (console, stderr) = match child {
        Ok(child) => wait(child, opts.timeout),
        Err(e) => (Vec::new(), e),
    };
    let host = server.finish();
    let mut losses = Losses::read(ns).since(&before);
    losses.guest_retrans = console
        .iter()
        .find_map(|l| field(l.split_once("NET-TEST: tcp ")?.1, "retrans_segs"))
        .map(|v| v as u64);
    let figures = figures(&console, &host, opts).map_err(|why| {
        let tail: Vec<&str> = console
            .iter()
            .rev()
            .take(15)
            .rev()
            .map(|l| l.as_str())
            .collect();
        format!(
            "{why}\n  host side: {:?}\n  console (last lines):\n    {}\n  stderr: {}",
            host.errors,
            tail.join("\n    "),
            stderr.trim()
        )
    });
    (figures, losses)
}

/// Frames lost on the TAP and TCP retransmissions during a run: a slow figure with none
/// is a slow path, not a stall.
#[derive(Debug, Default, Clone, Copy)]
struct Losses {
    /// Frames for the guest that the TAP dropped (its queue full: the VMM did not read).
    tap_to_guest: u64,
    /// Frames from the guest that the TAP dropped.
    tap_from_guest: u64,
    /// TCP segments the host side (the namespace) sent again.
    host_retrans: u64,
    /// The same in the guest, from net-test's last lines.
    guest_retrans: Option<u64>,
}

impl Losses {
    /// The namespace's counters now (zeros where they cannot be read).
    fn read(ns: &NetNs) -> Self {
        let out = |c: &mut Command| {
            c.output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let link = out(Command::new("ip").args(["-n", &ns.name, "-s", "-j", "link", "show", TAP]));
        let stats: serde_json::Value = serde_json::from_str(&link).unwrap_or_default();
        let dropped = |dir: &str| stats[0]["stats64"][dir]["dropped"].as_u64().unwrap_or(0);
        let snmp = out(ns.command("cat").arg("/proc/net/snmp"));
        Self {
            // The TAP's transmit side is what goes to the VMM.
            tap_to_guest: dropped("tx"),
            tap_from_guest: dropped("rx"),
            host_retrans: tcp_counter(&snmp, "RetransSegs").unwrap_or(0),
            guest_retrans: None,
        }
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            tap_to_guest: self.tap_to_guest.saturating_sub(before.tap_to_guest),
            tap_from_guest: self.tap_from_guest.saturating_sub(before.tap_from_guest),
            host_retrans: self.host_retrans.saturating_sub(before.host_retrans),
            guest_retrans: None,
        }
    }
}

/// A field of the `Tcp:` lines of /proc/net/snmp (a header line, then a value line).
fn tcp_counter(snmp: &str, name: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let i = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

fn spawn(mut cmd: Command) -> Result<Child, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start {:?}: {e}", cmd.get_program()))
}

/// Waits for `child` to end, killing it after `timeout`; returns its console lines and
/// stderr. Both pipes are read on threads so a chatty guest cannot block on a full pipe.
fn wait(mut child: Child, timeout: Duration) -> (Vec<String>, String) {
    let out = child.stdout.take().expect("stdout is piped");
    let err = child.stderr.take().expect("stderr is piped");
    let console = std::thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(err).read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let mut killed = false;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let console = console.join().unwrap_or_default();
    let mut stderr = stderr.join().unwrap_or_default();
    if killed {
        stderr.push_str(&format!("\n(killed after {timeout:?})"));
    }
    (console, stderr)
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// The guest's summary line and the host's transfers, checked, as one run's figures.
fn figures(console: &[String], host: &HostSide, opts: &Options) -> Result<Figures, String> {
    let summary = console
        .iter()
        .find_map(|l| {
            l.split_once("NET-TEST: send_mbps=")
                .map(|(_, v)| format!("send_mbps={v}"))
        })
        .ok_or("no NET-TEST summary from the guest")?;
    let get = |key| field(&summary, key).ok_or(format!("no {key} in {summary:?}"));
    let (up, down) = match (host.up, host.down) {
        (Some(u), Some(d)) => (u, d),
        _ => return Err("the host side saw no complete UP and DOWN".into()),
    };
    for (what, t) in [("UP", up), ("DOWN", down)] {
        if t.bytes != opts.bytes() || t.bad != 0 {
            return Err(format!(
                "{what}: {} of {} bytes, {} bad chunks",
                t.bytes,
                opts.bytes(),
                t.bad
            ));
        }
    }
    Ok(Figures {
        send_mbps: up.mbps(),
        recv_mbps: down.mbps(),
        rtt_p50_us: get("rtt_p50_us")?,
        rtt_p99_us: get("rtt_p99_us")?,
        guest_send_mbps: get("send_mbps")?,
        guest_recv_mbps: get("recv_mbps")?,
        host_rtt_p50_us: host_rtt_p50(&host.arrivals, opts.rounds as usize).unwrap_or(f64::NAN),
    })
}

/// The median interval between consecutive echo arrivals over the measured rounds: one
/// guest loop (round trip plus the guest program's own turn) as the host sees it.
fn host_rtt_p50(arrivals: &[Instant], rounds: usize) -> Option<f64> {
    if arrivals.len() != WARMUP + rounds {
        return None;
    }
    // From the last warm-up arrival on: one gap per measured round.
    let measured = &arrivals[WARMUP - 1..];
    let gaps = measured
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e6)
        .collect();
    median(gaps)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

// ---- report --------------------------------------------------------------------------

fn print_run(run: u64, vmm: Vmm, r: &Result<Figures, String>, losses: &Losses, secs: f64) {
    match r {
        Ok(f) => println!(
            "run {run} {:<10} up {:7.3} MB/s (guest clock {:.3}), down {:7.3} MB/s (guest clock {:.3}), \
             rtt p50 {:.0} us p99 {:.0} us (host-seen p50 {:.0} us); {secs:.0} s",
            vmm.label(),
            f.send_mbps,
            f.guest_send_mbps,
            f.recv_mbps,
            f.guest_recv_mbps,
            f.rtt_p50_us,
            f.rtt_p99_us,
            f.host_rtt_p50_us
        ),
        Err(e) => println!("run {run} {:<10} FAILED after {secs:.0} s: {e}", vmm.label()),
    }
    let guest = losses
        .guest_retrans
        .map_or("?".to_owned(), |n| n.to_string());
    println!(
        "      TCP retransmissions: guest {guest}, host {}; TAP drops: to the guest {}, from it {}",
        losses.host_retrans, losses.tap_to_guest, losses.tap_from_guest
    );
}

/// Medians per VMM, and skiff-vmm's against each other column.
fn report(vmms: &[Vmm], results: &[Vec<Figures>]) {
    type Get = fn(&Figures) -> f64;
    // Name, decimals, figure.
    let rows: [(&str, usize, Get); 4] = [
        ("TCP guest -> host (MB/s)", 3, |f| f.send_mbps),
        ("TCP host -> guest (MB/s)", 3, |f| f.recv_mbps),
        ("round trip p50 (us)", 0, |f| f.rtt_p50_us),
        ("round trip p99 (us)", 0, |f| f.rtt_p99_us),
    ];
    let others = 1..vmms.len();
    print!("\n{:<26}", "medians");
    for (v, r) in vmms.iter().zip(results) {
        print!("{:>20}", format!("{} ({} ok)", v.label(), r.len()));
    }
    for i in others.clone() {
        print!("{:>18}", format!("skiff/{}", vmms[i].label()));
    }
    println!();
    for (name, decimals, get) in rows {
        let meds: Vec<Option<f64>> = results
            .iter()
            .map(|r| median(r.iter().map(get).collect()))
            .collect();
        print!("{name:<26}");
        for m in &meds {
            let text = m.map_or("failed".into(), |v| format!("{v:.decimals$}"));
            print!("{text:>20}");
        }
        for i in others.clone() {
            let ratio = meds[0].zip(meds[i]).map(|(a, b)| format!("{:.2}x", a / b));
            print!("{:>18}", ratio.unwrap_or("-".into()));
        }
        println!();
    }
    println!("(throughput: a ratio above 1 means skiff-vmm is faster; round trips: below 1)");
}

fn main() {
    let opts = Options::parse();
    if !netns_available("net benchmark") {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("net-bench");
    std::fs::create_dir_all(&dir).expect("create the bench directory");
    let tool = common::static_guest_program(&dir, "net-test");
    let vmms = plan(&opts);
    let kernel = if opts.host_only {
        PathBuf::new()
    } else {
        common::kernel()
    };
    let initrd = if opts.host_only {
        PathBuf::new()
    } else {
        initramfs(&dir, &tool, &opts)
    };

    // Dropped last (declared before everything that uses it): the namespace goes away
    // on every exit, a panic included.
    let ns = NetNs::create("netbench");
    ns.add_tap(TAP, HOST_CIDR);
    let listener = listen_in(&ns);

    println!(
        "net benchmark: {} MiB each way, {} round trips of {} bytes, {} runs per VMM, \
         {} MiB guest, 1 vCPU, namespace {}",
        opts.mib, opts.rounds, opts.msg, opts.runs, opts.memory_mib, ns.name
    );
    let started = Instant::now();
    let mut results: Vec<Vec<Figures>> = vec![Vec::new(); vmms.len()];
    // VMMs alternate within each run, so load from elsewhere falls on all alike.
    for run in 1..=opts.runs {
        for (i, &vmm) in vmms.iter().enumerate() {
            let t = Instant::now();
            let (r, losses) = run_once(vmm, &ns, &listener, &opts, (&kernel, &initrd, &tool));
            print_run(run, vmm, &r, &losses, t.elapsed().as_secs_f64());
            if let Ok(f) = r {
                results[i].push(f);
            }
        }
    }
    report(&vmms, &results);
    println!(
        "total {:.0} s. On PVM hosts the guest kernel's share of every packet is emulated.",
        started.elapsed().as_secs_f64()
    );
}

/// Which VMMs this run compares: skiff-vmm first (the ratios are against it).
fn plan(opts: &Options) -> Vec<Vmm> {
    if opts.host_only {
        return vec![Vmm::HostOnly];
    }
    let mut v = vec![Vmm::Skiff];
    if !opts.qemu {
        return v;
    }
    if !common::qemu_available() {
        println!("qemu-system-x86_64 not found (apt-get install qemu-system-x86): skiff-vmm only");
        return v;
    }
    v.push(Vmm::Qemu {
        plain: false,
        vhost: false,
    });
    if opts.qemu_plain {
        v.push(Vmm::Qemu {
            plain: true,
            vhost: false,
        });
    }
    // QEMU with the device model in the host kernel, where the host has vhost-net.
    if Path::new("/dev/vhost-net").exists() {
        v.push(Vmm::Qemu {
            plain: false,
            vhost: true,
        });
    } else {
        println!("qemu vhost=on: not run (/dev/vhost-net is missing on this host)");
    }
    v
}
