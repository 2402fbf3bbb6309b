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
