//! What the reconciler knows of a service's tasks between passes, in memory: health, who
//! stopped them, and the back-off of replacements. After a restart it is rebuilt from the
//! task records (health starts over).

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use crate::services::{Health, HealthCheck};

/// The first replacement after a failure waits this long; each failure in a row doubles
/// it, up to [`BACKOFF_CAP_MS`].
pub const BACKOFF_BASE_MS: u64 = 1000;
pub const BACKOFF_CAP_MS: u64 = 60_000;
/// A task that became healthy after the last failure and stayed so this long ends a run of
/// failures (the back-off starts over); tasks healthy from before do not.
pub const HEALTHY_RESET_MS: u64 = 10_000;

#[derive(Default)]
pub struct ServiceRuntime {
    pub tasks: HashMap<String, TaskRuntime>,
    /// Failures in a row: tasks that ended or failed their health check.
    pub failures: u32,
    /// No task starts before this (ms since the epoch).
    pub next_start_ms: u64,
    /// When the last failure was noted (ms).
    pub last_failure_ms: u64,
    /// Tasks that answer to the service's name on their network now.
    pub dns: HashSet<String>,
    pub scaled: super::autoscale::LastScaled,
}

impl ServiceRuntime {
    /// Counts a failure; returns how long replacements now wait (ms).
    pub fn failed(&mut self, now_ms: u64) -> u64 {
        self.failures = self.failures.saturating_add(1);
        let shift = (self.failures - 1).min(16);
        let delay = (BACKOFF_BASE_MS << shift).min(BACKOFF_CAP_MS);
        self.next_start_ms = now_ms + delay;
        self.last_failure_ms = now_ms;
        delay
    }

    /// Ends the run of failures when a task healthy since after the last one has stayed so.
    pub fn forgive(&mut self, now_ms: u64) {
        let last = self.last_failure_ms;
        let proven = self.tasks.values().any(|k| {
            k.serving().is_some()
                && k.healthy_since_ms
                    .is_some_and(|s| s > last && now_ms >= s + HEALTHY_RESET_MS)
        });
        if proven {
            self.failures = 0;
        }
    }
}

pub struct TaskRuntime {
    pub revision: u64,
    /// Its revision's health check, as it was when the task was first seen (a task of a
    /// revision since rolled away keeps the check it was started with).
    pub check: Option<HealthCheck>,
    pub health: Health,
    /// The reconciler asked for its stop: its end is no failure.
    pub stopped_by_us: bool,
    /// A stop was asked for (by anyone): it serves no more.
    pub stopping: bool,
    pub addr: Option<Ipv4Addr>,
    /// The named network it is on (where the service's name resolves to it).
    pub network: Option<String>,
    /// A health checker runs for it.
    pub watching: bool,
    /// When it last became healthy (ms).
    pub healthy_since_ms: Option<u64>,
    pub ever_healthy: bool,
    pub last_error: Option<String>,
}

impl TaskRuntime {
    pub fn new(revision: u64, check: Option<HealthCheck>) -> Self {
        Self {
            revision,
            check,
            health: Health::Starting,
            stopped_by_us: false,
            stopping: false,
            addr: None,
            network: None,
            watching: false,
            healthy_since_ms: None,
            ever_healthy: false,
            last_error: None,
        }
    }

    /// Marks it healthy; true if it was not.
    pub fn became_healthy(&mut self, now_ms: u64) -> bool {
        if self.health == Health::Healthy {
            return false;
        }
        self.health = Health::Healthy;
        self.healthy_since_ms = Some(now_ms);
        self.ever_healthy = true;
        self.last_error = None;
        true
    }

    /// Serves: healthy, not being stopped, with an address.
    pub fn serving(&self) -> Option<Ipv4Addr> {
        (self.health == Health::Healthy && !self.stopping)
            .then_some(self.addr)
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_up_to_its_cap() {
        let mut rt = ServiceRuntime::default();
        let delays: Vec<u64> = (0..9).map(|_| rt.failed(0)).collect();
        assert_eq!(
            delays,
            [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
        );
        assert_eq!(rt.next_start_ms, 60000);
    }

    #[test]
    fn only_a_task_healthy_since_the_last_failure_ends_the_run() {
        let mut rt = ServiceRuntime::default();
        let mut old = TaskRuntime::new(1, None);
        old.addr = Some(Ipv4Addr::LOCALHOST);
        old.became_healthy(1_000);
        rt.tasks.insert("old".into(), old);
        rt.failed(50_000);
        rt.failed(51_000);
        // Healthy for long, but from before the failures: the back-off keeps growing.
        rt.forgive(100_000);
        assert_eq!(rt.failures, 2);
        let mut new = TaskRuntime::new(1, None);
        new.addr = Some(Ipv4Addr::LOCALHOST);
        new.became_healthy(60_000);
        rt.tasks.insert("new".into(), new);
        rt.forgive(65_000);
        assert_eq!(rt.failures, 2, "not healthy long enough yet");
        rt.forgive(70_000);
        assert_eq!(rt.failures, 0);
    }
}
