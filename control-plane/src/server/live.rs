//! What the server holds for a task that has not stopped yet: the launcher's control
//! handle, a stop request flag, and the progress of its output log (log followers wait on
//! it).

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::launcher::TaskControl;

pub struct Live {
    pub control: TaskControl,
    stop: watch::Sender<bool>,
    log_bytes: watch::Sender<u64>,
    done: watch::Sender<bool>,
    vm: AtomicBool,
    /// The last two usage reports: (guest ms, CPU µs).
    usage: std::sync::Mutex<[Option<(u64, u64)>; 2]>,
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

impl Live {
    pub fn new() -> Self {
        Self {
            control: TaskControl::new(),
            stop: watch::channel(false).0,
            log_bytes: watch::channel(0).0,
            done: watch::channel(false).0,
            vm: AtomicBool::new(false),
            usage: std::sync::Mutex::new([None, None]),
        }
    }

    pub fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves once a stop was requested.
    pub async fn stop_requested(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn set_vm_started(&self) {
        self.vm.store(true, Ordering::SeqCst);
    }

    /// The task's VM has been started (a stop must go through the VM).
    pub fn has_vm(&self) -> bool {
        self.vm.load(Ordering::SeqCst)
    }

    /// A usage report from the task's agent; one that goes back in time or uses more CPU
    /// than time passed on 64 vCPUs is the guest's nonsense and resets the measure.
    pub fn record_usage(&self, cpu_usec: u64, at_ms: u64) {
        let mut u = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        let sane = u[1].is_none_or(|(t, c)| {
            at_ms > t && cpu_usec >= c && (cpu_usec - c) <= (at_ms - t) * 1000 * 64
        });
        *u = if sane {
            [u[1], Some((at_ms, cpu_usec))]
        } else {
            [None, Some((at_ms, cpu_usec))]
        };
    }

    /// CPUs the task used between its last two usage reports (1.0: one vCPU all the time).
    pub fn cpu_use(&self) -> Option<f64> {
        let u = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        match *u {
            [Some((t0, c0)), Some((t1, c1))] if t1 > t0 => {
                Some((c1 - c0) as f64 / ((t1 - t0) as f64 * 1000.0))
            }
            _ => None,
        }
    }

    pub fn log_written(&self, total: u64) {
        self.log_bytes.send_replace(total);
    }

    pub fn subscribe_log(&self) -> watch::Receiver<u64> {
        self.log_bytes.subscribe()
    }

    pub fn subscribe_done(&self) -> watch::Receiver<bool> {
        self.done.subscribe()
    }

    pub fn mark_done(&self) {
        self.done.send_replace(true);
        // Wake log followers so they see the end.
        self.log_bytes.send_modify(|_| {});
    }

    pub async fn done(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }
}
