//! Kicking a vCPU thread out of `KVM_RUN`, race-free (Firecracker's scheme): each vCPU
//! thread publishes its `kvm_run` in a thread-local; the kick signal's handler sets
//! `immediate_exit` there. A kick that lands just before the thread enters `KVM_RUN` makes
//! that `KVM_RUN` return `EINTR` at once (after KVM completes any pending port or MMIO
//! access); one that lands inside it interrupts it with `EINTR` too.

use std::cell::Cell;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    /// The `kvm_run` of the vCPU running on this thread, or null.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `try_with` never allocates for a const-initialised Cell; a thread without a vCPU
    // (null pointer) is left alone.
    let _ = KVM_RUN.try_with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer was published by this very thread from its live VcpuFd
            // (see `publish`), and is withdrawn before that VcpuFd is dropped; a signal
            // handler runs on the thread it interrupts, so the mapping is alive here.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick handler (process-wide; idempotent).
pub fn install_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), on_kick)
}

/// Publishes the calling thread's `kvm_run` for the kick handler. The returned guard
/// withdraws it; it must be dropped before the VcpuFd that owns `run`.
pub fn publish(run: &mut kvm_run) -> Published {
    KVM_RUN.with(|p| p.set(run as *mut kvm_run));
    Published(())
}

pub struct Published(());

impl Drop for Published {
    fn drop(&mut self) {
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    }
}

/// Sends the kick signal to `thread`.
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: pthread_kill only sends a signal; `thread` is a vCPU thread id that stays
    // valid while the VM lives (vCPU threads are never joined before the process exits).
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}
