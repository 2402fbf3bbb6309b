//! The seccomp filters themselves, no VM needed. This test executable runs itself again as
//! a child (the role in `SKIFF_SECCOMP_ROLE`): the child installs the real filter of one
//! thread kind through `vmm::seccomp::install`, then makes a system call outside it
//! (`execve`, `socket(AF_INET)`, an ioctl no thread uses) — the parent sees it die of
//! SIGSYS — or only calls its kind is allowed — it exits 0.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

use vmm::seccomp::{self, SeccompMode, ThreadKind};

const ROLE: &str = "SKIFF_SECCOMP_ROLE";

fn kind_named(name: &str) -> ThreadKind {
    *ThreadKind::ALL
        .iter()
        .find(|k| k.name() == name)
        .unwrap_or_else(|| panic!("no thread kind {name}"))
}

/// Ends the child with `code` at once (exit_group, which every filter allows), past the
/// test harness, which the filter was not made for.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process; nothing is left to run.
    unsafe { libc::_exit(code) }
}

fn check(ok: bool, what: &str) {
    if !ok {
        eprintln!("child: {what}: {}", std::io::Error::last_os_error());
        exit_now(3);
    }
}

/// What the child does once its filter is on.
fn act(kind: ThreadKind, action: &str) -> ! {
    match action {
        "execve" => {
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: a NUL-terminated path and NULL-terminated argument and environment
            // arrays that outlive the call.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            exit_now(4);
        }
        "socket_inet" => {
            // SAFETY: socket takes plain integers.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            exit_now(4);
        }
        "ioctl" => {
            // KVM_CREATE_VM on no fd: no thread of a running VM makes it.
            // SAFETY: ioctl on an invalid fd with a plain integer argument touches no memory.
            unsafe { libc::ioctl(-1, 0xae01, 0) };
            exit_now(4);
        }
        "allowed" => allowed(kind),
        other => panic!("unknown action {other}"),
    }
}

/// Only what `kind` may do: allocate, log, take the time, and what is its own.
fn allowed(kind: ThreadKind) -> ! {
    let big: Vec<u8> = vec![7; 4 << 20];
    check(
        big.iter().map(|&b| b as u64).sum::<u64>() == 7 << 22,
        "big allocation",
    );
    drop(big);
    let t = std::time::Instant::now();
    eprintln!("child: {kind} filter on, {:?}", t.elapsed());
    // SAFETY: getpid takes no arguments.
    check(unsafe { libc::getpid() } > 0, "getpid");
    // Opens fail quietly with EPERM (the openat guard) except the API's file creation.
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    check(
        fd == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM),
        "a read-only open must fail with EPERM",
    );
    match kind {
        ThreadKind::Vcpu => {
            // SAFETY: ioctl on an invalid fd: EBADF, but the filter lets KVM_RUN through.
            let r = unsafe { libc::ioctl(-1, 0xae80, 0) };
            check(r == -1, "KVM_RUN on no fd fails with EBADF");
        }
        ThreadKind::EventLoop => {
            // SAFETY: socket and close take plain integers.
            let s =
                unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            check(s >= 0, "socket(AF_UNIX)");
            // SAFETY: `s` is our own socket.
            check(unsafe { libc::close(s) } == 0, "close");
        }
        ThreadKind::Api => {
            let path = std::env::temp_dir().join(format!("seccomp-api-{}", std::process::id()));
            let f = std::fs::File::create(&path);
            check(f.is_ok(), "the API thread creates snapshot files");
            drop(f);
            check(
                std::fs::rename(&path, path.with_extension("x")).is_ok(),
                "rename",
            );
        }
        ThreadKind::Profiler => std::thread::sleep(std::time::Duration::from_millis(1)),
        ThreadKind::Main => {}
    }
    exit_now(0)
}

/// The child's side: `kind:mode:action` in the environment.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let mut parts = role.split(':');
    let (kind, mode, action) = (
        kind_named(parts.next().unwrap()),
        parts.next().unwrap().parse::<SeccompMode>().unwrap(),
        parts.next().unwrap().to_owned(),
    );
    // A SIGSYS kill would dump core otherwise.
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct it is given.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    seccomp::install(kind, mode).unwrap();
    act(kind, &action)
}

fn run_child(kind: ThreadKind, mode: &str, action: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(ROLE, format!("{}:{mode}:{action}", kind.name()))
        .output()
        .unwrap()
}

fn describe(o: &Output) -> String {
    format!(
        "{:?}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr).trim_end()
    )
}

#[test]
fn forbidden_syscalls_kill_every_kind_and_allowed_ones_run() {
    for kind in ThreadKind::ALL {
        for action in ["execve", "socket_inet", "ioctl"] {
            let o = run_child(kind, "kill", action);
            assert_eq!(
                o.status.signal(),
                Some(libc::SIGSYS),
                "{kind} {action}: {}",
                describe(&o)
            );
        }
        let o = run_child(kind, "kill", "allowed");
        assert_eq!(o.status.code(), Some(0), "{kind} allowed: {}", describe(&o));
    }
}

#[test]
fn trap_names_the_syscall_and_thread_and_exits_31() {
    let o = run_child(ThreadKind::Api, "trap", "execve");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(seccomp::TRAP_EXIT_CODE),
        "{}",
        describe(&o)
    );
    assert!(
        stderr.contains("the api thread made system call 59,"),
        "{}",
        describe(&o)
    );
    let o = run_child(ThreadKind::Vcpu, "off", "execve");
    assert_eq!(
        o.status.code(),
        Some(0),
        "off: execve runs /bin/true: {}",
        describe(&o)
    );
}

#[test]
fn every_filter_compiles_and_none_allows_exec_fork_or_raw_sockets() {
    let forbidden = [
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_ptrace,
        libc::SYS_kill,
        libc::SYS_open,
        libc::SYS_mount,
        libc::SYS_setuid,
    ];
    for kind in ThreadKind::ALL {
        let f = seccomp::filters(kind, SeccompMode::Kill).unwrap();
        assert_eq!(f.len(), 2);
        let rules = seccomp::rules::rules(kind).unwrap();
        for nr in forbidden {
            assert!(!rules.contains_key(&nr), "{kind} allows syscall {nr}");
        }
        if let Some(socket) = rules.get(&libc::SYS_socket) {
            assert!(!socket.is_empty(), "{kind}: socket only with conditions");
        }
        assert!(
            !rules[&libc::SYS_tgkill].is_empty(),
            "{kind}: tgkill only to itself"
        );
        if let Some(ioctl) = rules.get(&libc::SYS_ioctl) {
            assert_eq!(ioctl.len(), seccomp::allowed_ioctls(kind).len(), "{kind}");
        }
        println!(
            "seccomp: {kind}: {} syscalls allowed; ioctls: {:?}",
            seccomp::allowed_syscalls(kind),
            seccomp::allowed_ioctls(kind)
        );
    }
}
