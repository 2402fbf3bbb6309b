//! Panics end the whole process, on any thread.
//!
//! Release builds unwind (so that `cargo test` reuses their dependencies instead of
//! building every crate a second time), but a half-dead control plane or jailer is worse
//! than a dead one: a panic on a worker thread must not leave the process serving with
//! that thread's locks and tasks gone. The binaries that run in VMs and jails (`skiff-vmm`,
//! `skiff-agent`) are built with `-C panic=abort` by `scripts/setup.sh` instead.

/// Installs a panic hook that prints the panic as the default hook does, then aborts
/// (SIGABRT), as `panic = "abort"` would.
pub fn abort_on_panic() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        std::process::abort();
    }));
}
