//! The real `skiff-jailer` binary jailing Debian's static busybox: what the program sees
//! from inside, what the host sees of it from outside (/proc, cgroups), its limits, and
//! what the jailer refuses. Needs root and cgroups (CI has both); no VM.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use jailer::cgroup::{Cgroup, Layout};
use jailer::{Bind, JailSpec, Limits};

const BUSYBOX: &str = "/bin/busybox";
const UID: u32 = 990_123;

fn ready() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let msg = if !root {
        "the jail tests need root"
    } else if !Path::new(BUSYBOX).is_file() {
        "the jail tests need busybox-static (scripts/setup.sh installs it)"
    } else {
        return true;
    };
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("skipped: {msg}");
    false
}

/// A scratch directory of this test's own.
fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("jail-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("root")).unwrap();
    std::fs::create_dir_all(d.join("rw")).unwrap();
    std::fs::write(d.join("ro.txt"), "read only\n").unwrap();
    std::os::unix::fs::chown(d.join("rw"), Some(UID), Some(UID)).unwrap();
    d
}

/// A jail running busybox's shell on `script`. The jail holds no busybox binary (the
/// program is executed by descriptor), so scripts use shell builtins only.
fn spec(id: &str, dir: &Path, script: &str) -> JailSpec {
    applet(id, dir, &["sh", "-c", script])
}

/// A jail running busybox applet `args[0]` directly.
fn applet(id: &str, dir: &Path, args: &[&str]) -> JailSpec {
    JailSpec {
        id: id.into(),
        uid: UID,
        gid: UID,
        root: dir.join("root"),
        exec: BUSYBOX.into(),
        read_only: vec![Bind {
            host: dir.join("ro.txt"),
            jail: "/data/ro.txt".into(),
        }],
        writable: vec![Bind {
            host: dir.join("rw"),
            jail: "/run".into(),
        }],
        devices: vec!["/dev/null".into(), "/dev/zero".into()],
        netns: None,
        limits: Limits {
            cgroup_parent: "skiff-test".into(),
            cpus: Some(1),
            memory_bytes: Some(64 << 20),
            pids_max: Some(8),
            file_bytes: Some(4096),
            ..Limits::default()
        },
        env: vec![("ONLY".into(), "this".into())],
        args: std::iter::once("busybox")
            .chain(args.iter().copied())
            .map(Into::into)
            .collect(),
    }
}

fn jailer(spec: &JailSpec) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_skiff-jailer"));
    c.args(spec.to_args());
    c
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn cgroup(id: &str) -> Cgroup {
    Cgroup::new(Layout::detect().unwrap(), "skiff-test", id)
}

#[test]
fn the_program_sees_only_its_own_files_as_an_unprivileged_user() {
    if !ready() {
        return;
    }
    let dir = scratch("inside");
    let script = "echo pid=$$; export -p; echo tree: /* /*/*; \
                  read line < /data/ro.txt; echo \"$line\"; \
                  echo x > /data/ro.txt && echo WROTE-RO; echo y > /run/out && echo WROTE-RW; \
                  echo z > /new && echo WROTE-ROOT; \
                  printf '%8192s' x > /run/big; echo big=$?";
    let o = jailer(&spec("t-inside", &dir, script)).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        out.contains("pid=1\n"),
        "not pid 1 of its own namespace: {out}"
    );
    assert!(out.contains("export ONLY='this'"), "{out}");
    // (ash makes up a PATH of its own; the test runner's CARGO_* variables must not be there)
    assert!(
        !out.contains("CARGO"),
        "the host's environment leaked: {out}"
    );
    // The whole tree: the spec's files and nothing else.
    assert!(
        out.contains("tree: /data /dev /run /data/ro.txt /dev/null /dev/zero\n"),
        "{out}"
    );
    assert!(out.contains("read only"), "{out}");
    assert!(
        !out.contains("WROTE-RO") && !out.contains("WROTE-ROOT"),
        "{out}"
    );
    assert!(out.contains("WROTE-RW"), "{out}");
    assert_eq!(std::fs::read_to_string(dir.join("rw/out")).unwrap(), "y\n");
    // RLIMIT_FSIZE (4096) stops the 8192-byte write with an error, not a kill.
    assert!(out.contains("big=1"), "{out}");
    assert_eq!(std::fs::metadata(dir.join("rw/big")).unwrap().len(), 4096);
    assert_eq!(
        std::fs::read_to_string(dir.join("ro.txt")).unwrap(),
        "read only\n"
    );
    // The host's mount point stays empty.
    assert_eq!(std::fs::read_dir(dir.join("root")).unwrap().count(), 0);
    let cg = cgroup("t-inside");
    cg.kill();
    cg.remove().unwrap();
}

/// The jailed process's /proc status line `key`.
fn status_line(pid: i32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn from_the_host_it_has_its_own_namespaces_cgroup_and_no_privileges() {
    if !ready() {
        return;
    }
    let dir = scratch("outside");
    let id = "t-outside";
    // A descriptor the jailer inherits without close-on-exec must not reach the program.
    let leak = std::fs::File::open(dir.join("ro.txt")).unwrap();
    let leak_fd = std::os::fd::AsRawFd::as_raw_fd(&leak);
    // SAFETY: clears FD_CLOEXEC on a descriptor this test owns.
    unsafe { libc::fcntl(leak_fd, libc::F_SETFD, 0) };
    let mut child = jailer(&applet(id, &dir, &["sleep", "30"])).spawn().unwrap();
    let cg = cgroup(id);
    // The jailer and its child (pid 1 inside) are in the group; find the child.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        let procs = cg.procs();
        let inner: Vec<i32> = procs
            .into_iter()
            .filter(|p| *p != child.id() as i32)
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.starts_with(b"busybox\0sleep"))
            })
            .collect();
        if let Some(p) = inner.first() {
            break *p;
        }
        assert!(
            Instant::now() < deadline,
            "the jailed program never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status_line(pid, "Uid:").contains(&UID.to_string()));
    assert!(!status_line(pid, "Uid:").contains("\t0\t"));
    assert_eq!(status_line(pid, "NoNewPrivs:"), "NoNewPrivs:\t1");
    for caps in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"] {
        assert_eq!(
            status_line(pid, caps),
            format!("{caps}\t0000000000000000"),
            "{caps}"
        );
    }
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace shared with the host");
    }
    // Its root is not ours: /proc/PID/root lists only the jail.
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    assert_eq!(root, ["data", "dev", "run"]);
    // Only stdin, stdout and stderr are open.
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"]);
    assert!(std::fs::read(format!("/proc/{pid}/environ")).unwrap() == b"ONLY=this\0");
    // Its cgroup, with the limits.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroups.contains(&format!("skiff-test/{id}")), "{cgroups}");
    assert_eq!(cg.memory_limit(), Some(64 << 20));
    // Killing the group ends the program and the jailer with it.
    cg.kill();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    cg.remove().unwrap();
    drop(leak);
}

#[test]
fn the_memory_limit_kills_the_program_and_the_jailer_ends_the_same_way() {
    if !ready() {
        return;
    }
    let dir = scratch("oom");
    let id = "t-oom";
    // dd with a 200 MiB block size allocates and fills a 200 MiB buffer: over 64 MiB.
    let dd = ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"];
    let o = jailer(&applet(id, &dir, &dd)).output().unwrap();
    assert_eq!(o.status.signal(), Some(libc::SIGKILL), "{}", text(&o));
    let cg = cgroup(id);
    assert!(cg.oom_kills() >= 1, "no OOM kill was counted");
    cg.kill();
    cg.remove().unwrap();
}

#[test]
fn the_process_limit_holds() {
    if !ready() {
        return;
    }
    let dir = scratch("pids");
    // pids.max 8: the jailer, the shell and six more; the rest of 20 forks fail. The shell
    // is pid 1 of the jail: when it exits, the kernel ends the rest.
    let script =
        "i=0; while [ $i -lt 20 ]; do (while :; do :; done) & i=$((i+1)); done; echo spawned";
    let o = jailer(&spec("t-pids", &dir, script)).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("can't fork"), "{}", text(&o));
    let cg = cgroup("t-pids");
    cg.kill();
    cg.remove().unwrap();
}

/// Deletes the named network namespace when dropped (also when the test fails).
struct NetnsGuard<'a>(&'a str);

impl Drop for NetnsGuard<'_> {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).output();
    }
}

/// `ip ARGS` on the host, which must succeed.
fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(o.status.success(), "ip {args:?}: {}", text(&o));
}

#[test]
fn a_given_network_namespace_is_joined_and_tun_is_there() {
    if !ready() {
        return;
    }
    let dir = scratch("netns");
    let ns = format!("skiff-t-jail-{}", std::process::id());
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    ip(&["netns", "add", &ns]);
    let _gone = NetnsGuard(&ns);
    ip(&[
        "-n",
        &ns,
        "link",
        "add",
        "skiffprobe0",
        "type",
        "veth",
        "peer",
        "name",
        "skiffprobe1",
    ]);
    let with_netns = |mut s: JailSpec| {
        s.netns = Some(Path::new("/run/netns").join(&ns));
        s.devices.push("/dev/net/tun".into());
        s
    };
    // busybox's `ip` (netlink, no /proc needed) sees the namespace's links.
    let o = jailer(&with_netns(applet("t-netns", &dir, &["ip", "link"])))
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&o.stdout).into_owned();
    let seen = jailer(&with_netns(spec("t-netns", &dir, "echo /dev/net/*")))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(links.contains("skiffprobe0"), "{links}");
    assert!(
        String::from_utf8_lossy(&seen.stdout).contains("/dev/net/tun"),
        "{}",
        text(&seen)
    );
    // Without one, the jail's namespace is new and empty: loopback only.
    let o = jailer(&applet("t-netns", &dir, &["ip", "link"]))
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&o.stdout);
    assert!(
        !links.contains("skiffprobe0") && links.contains("lo:"),
        "{links}"
    );
    let cg = cgroup("t-netns");
    cg.kill();
    cg.remove().unwrap();
}

#[test]
fn a_dynamic_program_or_a_bad_spec_is_refused_with_one_line() {
    if !ready() {
        return;
    }
    let dir = scratch("refused");
    let mut s = spec("t-refused", &dir, "true");
    s.exec = "/bin/ls".into();
    let o = jailer(&s).output().unwrap();
    assert_eq!(o.status.code(), Some(jailer::JAIL_FAILED), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("dynamically linked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let _ = cgroup("t-refused").remove();

    let o = Command::new(env!("CARGO_BIN_EXE_skiff-jailer"))
        .args(["--id", "x", "--uid", "0", "--gid", "5", "--root", "/tmp"])
        .args(["--exec", BUSYBOX, "--", "busybox", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("must not be 0"));
}
