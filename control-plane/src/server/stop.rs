//! `POST /v1/tasks/{id}/stop`: SIGTERM, SIGKILL after the task's stop timeout, then the VM
//! ends. A task that has no VM yet ends at the pipeline's next step.

use std::sync::Arc;
use std::time::Duration;

use super::pipeline::record_end;
use super::{Server, ServerError};
use crate::tasks::{Ending, StopCode, Task, Transition};

/// After SIGKILL, how long the agent has to report before the VM is ended.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// What a stop request found.
pub enum StopOutcome {
    NotFound,
    AlreadyStopped(Task),
    /// Stopping (or stopped by this request); the record as it is now.
    Stopping(Task),
}

pub fn request_stop(srv: &Arc<Server>, id: &str) -> Result<StopOutcome, ServerError> {
    let Some(task) = srv.records.store.get(id)? else {
        return Ok(StopOutcome::NotFound);
    };
    if task.is_stopped() {
        return Ok(StopOutcome::AlreadyStopped(task));
    }
    let Some(live) = srv.live(id) else {
        // Not supervised (it is just ending): record it as stopped.
        record_end(
            srv,
            id,
            Ending::new(StopCode::UserInitiated, "stopped by request"),
        );
        return Ok(srv
            .records
            .store
            .get(id)?
            .map_or(StopOutcome::NotFound, StopOutcome::Stopping));
    };
    let first = !task.stop_requested;
    let vm_running = live.has_vm();
    let task = match srv
        .records
        .transition(id, Transition::StopRequested { vm_running })
    {
        Ok(t) => t,
        // It stopped meanwhile.
        Err(ServerError::Transition(_)) => {
            return Ok(StopOutcome::AlreadyStopped(srv.records.get(id)?))
        }
        Err(e) => return Err(e),
    };
    live.request_stop();
    if !vm_running {
        // Between admission and the VM's start no select sees the request: marking the
        // control killed makes the launcher end the VM the moment it exists.
        live.control.kill_vm();
    }
    if first && vm_running {
        srv.records.event(id, "stop requested: SIGTERM");
        let grace = Duration::from_secs(task.stop_timeout_seconds);
        let (srv, id, live) = (srv.clone(), id.to_owned(), live.clone());
        tokio::spawn(async move {
            let mut done = live.subscribe_done();
            // A signal before the process exists ends the VM (the launcher's rule).
            let _ = live.control.signal(15);
            if tokio::time::timeout(grace, done.wait_for(|d| *d))
                .await
                .is_ok()
            {
                return;
            }
            srv.records.event(
                &id,
                &format!("still running {} s after SIGTERM: SIGKILL", grace.as_secs()),
            );
            let _ = live.control.signal(9);
            if tokio::time::timeout(KILL_GRACE, done.wait_for(|d| *d))
                .await
                .is_ok()
            {
                return;
            }
            srv.records
                .event(&id, "no report after SIGKILL: ending the VM");
            live.control.kill_vm();
        });
    }
    Ok(StopOutcome::Stopping(task))
}
