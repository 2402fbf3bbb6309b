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
        // A crash between the VMM's start and its record leaves a VMM nobody knows the pid
        // of: every VMM that works in this task's directory is ended, recorded or not.
        end_vmms_of(&srv.task_dir(&id), &srv.cfg.jail.cgroup_parent);
        if task.phases.vm_started_ms.is_some() {
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

/// Kills every jailed `skiff-vmm` left from the previous run that works in `task_dir`:
/// its jailer (whose command line names the directory; the VMM dies with it) and whatever
/// is in the VM's cgroup. A recycled pid is never hit and a VMM whose pid was never
/// recorded is found too.
pub(super) fn end_vmms_of(task_dir: &std::path::Path, cgroup_parent: &str) {
    if let Some(cg) = crate::launcher::jail::cgroup_of(task_dir, cgroup_parent) {
        if !cg.procs().is_empty() {
            tracing::warn!(
                "ending the VM of {} left from the previous run",
                task_dir.display()
            );
        }
        cg.kill();
        let _ = cg.remove();
    }
    let needle = format!("{}/", task_dir.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
        let is_vmm = args
            .next()
            .is_some_and(|a| a.ends_with("skiff-vmm") || a.ends_with("skiff-jailer"));
        if !is_vmm || !args.any(|a| a.contains(&needle)) {
            continue;
        }
        let Some(p) = rustix::process::Pid::from_raw(pid) else {
            continue;
        };
        if rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok() {
            tracing::warn!("ended skiff-vmm pid {pid} left from the previous run");
        }
    }
}
