//! Start-up after a stop or a crash: every task the last run left unfinished is settled.
//! A task whose VM had started cannot be picked up again (its agent's connection died with
//! the old server, and the agent ends its VM when that happens), so its VM is made sure to
//! be gone and the task is STOPPED with a reason. A task that never got a VM is run now,
//! in the order it was submitted: nothing a user submitted is lost.

use std::sync::Arc;

use super::{Server, ServerError};
use crate::tasks::{Ending, StopCode, Transition};

pub fn recover(srv: &Arc<Server>) -> Result<(), ServerError> {
    for task in srv.records.store.unfinished()? {
        let id = task.id.clone();
        if task.phases.vm_started_ms.is_some() {
            if let Some(pid) = task.vmm_pid {
                end_leftover_vmm(pid, &srv.task_dir(&id));
            }
            let (code, reason) = if task.stop_requested {
                (
                    StopCode::UserInitiated,
                    "stopped by request; the control plane restarted before the VM ended",
                )
            } else {
                (
                    StopCode::ControlPlaneRestarted,
                    "the control plane restarted while the task's VM ran; the VM was ended",
                )
            };
            srv.records
                .transition(&id, Transition::Stopped(Ending::new(code, reason)))?;
            srv.records
                .event(&id, &format!("stopped at restart: {reason}"));
        } else if task.stop_requested {
            srv.records.transition(
                &id,
                Transition::Stopped(Ending::new(
                    StopCode::UserInitiated,
                    "stopped before it started",
                )),
            )?;
        } else {
            srv.records.transition(&id, Transition::Requeued)?;
            srv.records
                .event(&id, "resumed after a control-plane restart");
            srv.spawn_supervisor(id, srv.waiting_slot());
        }
    }
    Ok(())
}

/// Kills a `skiff-vmm` left from the previous run, if the pid still names it (its command
/// line holds the task's directory), so a recycled pid is never hit.
fn end_leftover_vmm(pid: u32, task_dir: &std::path::Path) {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return;
    };
    let needle = task_dir.to_string_lossy();
    let text = String::from_utf8_lossy(&cmdline);
    if !text.contains("skiff-vmm") || !text.contains(needle.as_ref()) {
        return;
    }
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    if rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok() {
        tracing::warn!("ended skiff-vmm pid {pid} left from the previous run");
    }
}
