//! Why a VM ended, how any thread reports it, and the process exit code for each reason.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// What ended the guest. The first reason reported wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset (i8042 0xFE, `reboot -f` with `reboot=k`).
    Reset,
    /// The guest powered off through KVM's system-event exit.
    PowerOff,
    /// The guest kernel panicked (seen on its console) and then reset.
    GuestPanic,
    /// The guest triple-faulted.
    TripleFault,
    /// A vCPU stopped in a way the guest cannot recover from.
    VcpuFailed(String),
    /// The VMM itself failed while the guest ran.
    VmmError(String),
    /// The VMM was asked to stop (SIGTERM or SIGINT).
    Stopped(i32),
    /// The control API asked for a shutdown.
    Shutdown,
}

static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_stop(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    STOP_SIGNAL.store(sig, std::sync::atomic::Ordering::SeqCst);
}

/// Makes SIGTERM and SIGINT end the VM through [`ExitSignal::wait`] (within a second), so
/// that the VMM still flushes the console and writes its profile.
pub fn install_stop_handlers() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGTERM, on_stop)?;
    vmm_sys_util::signal::register_signal_handler(libc::SIGINT, on_stop)
}

/// Ignores SIGXFSZ, so that a write past RLIMIT_FSIZE (a jail's file size limit) fails
/// with EFBIG, which the console and snapshot writers handle, instead of ending the VMM.
pub fn ignore_sigxfsz() {
    // SAFETY: setting a signal's disposition to SIG_IGN involves no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}

/// Process exit codes of `skiff-vmm`.
pub use vmm_api::exit_code as code;

impl ExitReason {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Reset | Self::PowerOff | Self::Shutdown => code::OK,
            Self::GuestPanic => code::GUEST_PANIC,
            Self::TripleFault | Self::VcpuFailed(_) => code::VCPU_FAILED,
            Self::VmmError(_) => code::VMM_ERROR,
            Self::Stopped(sig) => 128 + sig,
        }
    }

    /// One line for stderr, or None for a clean exit.
    pub fn message(&self) -> Option<String> {
        match self {
            Self::Reset | Self::PowerOff | Self::Shutdown => None,
            Self::GuestPanic => Some("guest kernel panicked".to_owned()),
            Self::TripleFault => Some("guest triple-faulted (KVM shutdown exit)".to_owned()),
            Self::VcpuFailed(m) => Some(format!("vCPU failed: {m}")),
            Self::VmmError(m) => Some(format!("VMM error: {m}")),
            Self::Stopped(sig) => Some(format!("stopped by signal {sig}")),
        }
    }
}

/// Shared by vCPUs and devices: records the first exit reason and wakes the VM's owner.
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
    panic_seen: std::sync::atomic::AtomicBool,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            panic_seen: Default::default(),
        })
    }

    /// Records `reason` unless one was recorded before, and wakes the waiter.
    pub fn signal(&self, mut reason: ExitReason) {
        if reason == ExitReason::Reset && self.panicked() {
            reason = ExitReason::GuestPanic;
        }
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::debug!(?reason, "VM exit");
            *slot = Some(reason);
            // A full eventfd counter still wakes the reader; nothing to do on error.
            let _ = self.evt.write(1);
        }
    }

    /// Marks that the guest's console showed a kernel panic.
    pub fn note_panic(&self) {
        self.panic_seen
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn panicked(&self) -> bool {
        self.panic_seen.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn event_fd(&self) -> &EventFd {
        &self.evt
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Blocks until some thread signals an exit, and returns its reason.
    pub fn wait(&self) -> ExitReason {
        loop {
            if let Some(r) = self.reason() {
                return r;
            }
            let sig = STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst);
            if sig != 0 {
                self.signal(ExitReason::Stopped(sig));
                continue;
            }
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&self.evt),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call and the count is 1.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_panic_turns_reset_into_panic() {
        let s = ExitSignal::new().unwrap();
        s.note_panic();
        s.signal(ExitReason::Reset);
        s.signal(ExitReason::PowerOff);
        assert_eq!(s.wait(), ExitReason::GuestPanic);
        assert_eq!(s.wait().exit_code(), code::GUEST_PANIC);
    }
}
