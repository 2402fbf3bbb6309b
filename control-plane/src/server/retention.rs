//! Stopped tasks are kept for a retention (`skiff serve --task-retention`), then pruned:
//! their record, events and directory (output log, VM files) go, and the API answers 404
//! for them. A sweep runs on a blocking thread every tenth of the retention (at least every
//! second, at most every minute), a bounded batch at a time so the database lock is never
//! held long. Task directories with no record (a crash between the two deletions, or
//! between a record's insert and its first write) are removed at start-up.

use std::sync::Arc;
use std::time::Duration;

use super::Server;
use crate::tasks::now_ms;

/// Records deleted per transaction.
const BATCH: usize = 200;

/// How often to sweep for a given retention.
fn period(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Starts the sweeps; call from within the server's runtime.
pub fn spawn_pruner(srv: &Arc<Server>, retention: Duration) {
    let srv = srv.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period(retention));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let srv2 = srv.clone();
            let swept = tokio::task::spawn_blocking(move || prune(&srv2, retention)).await;
            if let Err(e) = swept {
                tracing::warn!("pruning stopped tasks failed: {e}");
            }
        }
    });
}

/// Prunes every task that stopped more than `retention` ago; returns how many.
pub fn prune(srv: &Server, retention: Duration) -> usize {
    let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
    let mut pruned = 0;
    loop {
        let ids = match srv.records.store.prune_stopped(cutoff, BATCH) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!("cannot prune stopped tasks: {e}");
                return pruned;
            }
        };
        for id in &ids {
            remove_task_dir(srv, id);
        }
        pruned += ids.len();
        srv.records.metrics.pruned.inc_by(ids.len() as u64);
        if ids.len() < BATCH {
            if pruned > 0 {
                tracing::info!(pruned, "pruned stopped tasks past their retention");
            }
            return pruned;
        }
    }
}

fn remove_task_dir(srv: &Server, id: &str) {
    let dir = srv.task_dir(id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(task = id, "cannot remove {}: {e}", dir.display()),
    }
}

/// Removes task directories that have no record. Only at start-up, before any task is
/// accepted, so that no directory of a task being created is taken for an orphan.
pub fn remove_orphan_dirs(srv: &Server) -> usize {
    let Ok(entries) = std::fs::read_dir(srv.cfg.state_dir.join("tasks")) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(id) = name.to_str() else { continue };
        if matches!(srv.records.store.contains(id), Ok(false)) {
            remove_task_dir(srv, id);
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed task directories with no record");
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::period;
    use std::time::Duration;

    #[test]
    fn sweeps_come_a_tenth_of_the_retention_apart_within_bounds() {
        assert_eq!(period(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(period(Duration::from_secs(300)), Duration::from_secs(30));
        assert_eq!(period(Duration::from_secs(86_400)), Duration::from_secs(60));
    }
}
