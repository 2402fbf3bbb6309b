//! Network namespaces a test makes for itself (`ip netns add`), and running code inside
//! one: a "test host" stands for the machine (and the internet) so that network tests
//! only ever use addresses inside namespaces they created.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A named namespace, deleted on drop.
pub struct TestNetns {
    pub name: String,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

impl TestNetns {
    /// `skiff-t-TAG-PID`, with its loopback up.
    pub fn new(tag: &str) -> TestNetns {
        let name = format!("skiff-t-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        TestNetns { name }
    }

    /// Joins this namespace and `peer` with a veth pair (`NAME` here, `NAME` there too),
    /// addressed `mine`/`theirs` (CIDR), both up.
    pub fn link(&self, peer: &TestNetns, name: &str, mine: &str, theirs: &str) {
        ip(&[
            "-n", &self.name, "link", "add", name, "type", "veth", "peer", "name", name, "netns",
            &peer.name,
        ]);
        ip(&["-n", &self.name, "addr", "add", mine, "dev", name]);
        ip(&["-n", &peer.name, "addr", "add", theirs, "dev", name]);
        ip(&["-n", &self.name, "link", "set", name, "up"]);
        ip(&["-n", &peer.name, "link", "set", name, "up"]);
    }

    /// Runs `ip -n NAME ARGS…`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread inside this namespace (processes it starts are in it too).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.path(), f)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The named namespaces on the machine now (`/run/netns`).
pub fn names() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The namespaces starting with `prefix` that exist now but not in `before`: what a
/// test left, whatever an earlier, interrupted run left on the machine.
pub fn added_since(before: &BTreeSet<String>, prefix: &str) -> Vec<String> {
    names()
        .into_iter()
        .filter(|n| n.starts_with(prefix) && !before.contains(n))
        .collect()
}

/// Runs `f` on a new thread that has joined the network namespace pinned at `path`.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    let ns = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a descriptor we hold open, for this thread only (a thread
            // of our own, which ends with the scope), with the namespace type it is.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the thread in the namespace panicked")
    })
}
