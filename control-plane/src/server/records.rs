//! Task records as the server writes them: every change is a read-modify-write of one
//! task under one lock, state changes go through [`Task::apply`], and a task that stops
//! feeds the metrics. The pipeline, stop requests and recovery all write through here.

use std::sync::Mutex;

use super::metrics::Metrics;
use super::ServerError;
use crate::tasks::{now_ms, Task, TaskStore, Transition};

pub struct TaskRecords {
    pub store: TaskStore,
    pub metrics: Metrics,
    /// Serialises read-modify-write of task records.
    update_lock: Mutex<()>,
}

impl TaskRecords {
    pub fn new(store: TaskStore, metrics: Metrics) -> Self {
        Self {
            store,
            metrics,
            update_lock: Mutex::new(()),
        }
    }

    pub fn get(&self, id: &str) -> Result<Task, ServerError> {
        self.store.get(id)?.ok_or_else(|| ServerError::Io {
            what: format!("task {id}"),
            source: std::io::ErrorKind::NotFound.into(),
        })
    }

    /// Changes fields other than the state (phase times, the VMM's pid, the start mode)
    /// of one record, atomically with respect to other updates; returns it as written.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Task)) -> Result<Task, ServerError> {
        self.modify(id, |t| {
            f(t);
            Ok(())
        })
    }

    /// Moves a task through its state machine; an invalid transition writes nothing.
    pub fn transition(&self, id: &str, tr: Transition) -> Result<Task, ServerError> {
        let stopping = matches!(tr, Transition::Stopped(_));
        let t = self.modify(id, |t| t.apply(tr, now_ms()).map_err(ServerError::from))?;
        if stopping {
            self.metrics.observe_stopped(&t);
        }
        Ok(t)
    }

    fn modify(
        &self,
        id: &str,
        f: impl FnOnce(&mut Task) -> Result<(), ServerError>,
    ) -> Result<Task, ServerError> {
        let _g = self.update_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut t = self.get(id)?;
        f(&mut t)?;
        self.store.update(&t)?;
        Ok(t)
    }

    /// Appends to a task's event history; a failure is logged, not fatal.
    pub fn event(&self, id: &str, message: &str) {
        tracing::info!(task = id, "{message}");
        if let Err(e) = self.store.add_event(id, now_ms(), message) {
            tracing::warn!(task = id, "cannot record event: {e}");
        }
    }
}
