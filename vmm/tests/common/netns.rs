//! A network namespace of the test's own, with TAP devices in it, removed on drop (even
//! when the test fails). Only addresses inside it are used.

use std::os::fd::AsRawFd;
use std::process::Command;

/// `ip netns add skiff-nettest-<pid>-<tag>`, with `lo` up; deleted on drop.
pub struct NetNs {
    pub name: String,
}

fn run_ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (install iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    pub fn create(tag: &str) -> Self {
        let name = format!("skiff-nettest-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run_ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        // No IPv6: its neighbour discovery would put frames of its own on the TAPs.
        let _ = ns
            .command("sysctl")
            .args([
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ])
            .output();
        ns
    }

    /// `ip -n NS args…`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_ip(&all);
    }

    /// A persistent TAP named `tap` in the namespace, up, with `addr` (CIDR) on it.
    pub fn add_tap(&self, tap: &str, addr: &str) {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"]);
        self.ip(&["addr", "add", addr, "dev", tap]);
        self.ip(&["link", "set", tap, "up"]);
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Moves the calling thread into namespace `name`: its sockets live there from now on.
    pub fn enter_this_thread(name: &str) {
        let f = std::fs::File::open(format!("/var/run/netns/{name}")).unwrap();
        // SAFETY: setns only reads the namespace fd, which is open for the call; it
        // changes the calling thread's network namespace and nothing in our memory.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Whether this process may create network namespaces (root, iproute2 present); like
/// `kvm_available`, a failure with CI=true and a skip with a message otherwise.
pub fn netns_available(test: &str) -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && ip {
        return true;
    }
    let why = if root {
        "iproute2 (ip) is missing"
    } else {
        "not root"
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {why}; network namespaces cannot be made (CI=true: not skipping)");
    }
    eprintln!("SKIPPED {test}: {why}: network namespaces cannot be made");
    false
}
