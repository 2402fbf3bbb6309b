//! The last step of the pipeline: how the launch ended, in ECS's terms (a stop code, a
//! reason, the exit code and what the process used).

use crate::launcher::TaskEnd;
use crate::tasks::{Ending, StopCode, Task, Usage};

pub fn ending(task: &Task, end: TaskEnd) -> Ending {
    let stop_asked = task.stop_requested;
    match end {
        TaskEnd::Exited(r) => {
            let (code, reason) = if r.oom_killed {
                (
                    StopCode::OutOfMemory,
                    format!(
                        "out of memory: the task needed more than its {} MiB",
                        task.memory_mib
                    ),
                )
            } else if stop_asked {
                (
                    StopCode::UserInitiated,
                    format!("stopped by request (exit code {})", r.exit_code),
                )
            } else if let Some(sig) = r.signal {
                (
                    StopCode::EssentialContainerExited,
                    format!("killed by signal {sig}"),
                )
            } else {
                (
                    StopCode::EssentialContainerExited,
                    format!("exited with code {}", r.exit_code),
                )
            };
            Ending {
                code,
                reason,
                exit_code: Some(r.exit_code),
                usage: Some(Usage {
                    cpu_user_ms: r.cpu_user_ms,
                    cpu_system_ms: r.cpu_system_ms,
                    max_rss_kib: r.max_rss_kib,
                }),
            }
        }
        TaskEnd::Failed {
            message, exit_code, ..
        } => Ending {
            exit_code: Some(exit_code),
            ..Ending::new(StopCode::TaskFailedToStart, message)
        },
        TaskEnd::TimedOut(d) => Ending {
            exit_code: Some(124),
            ..Ending::new(
                StopCode::Timeout,
                format!("timed out after {} s", d.as_secs()),
            )
        },
        TaskEnd::Killed if stop_asked => Ending::new(
            StopCode::UserInitiated,
            "stopped by request; the VM was ended",
        ),
        TaskEnd::Killed => Ending::new(StopCode::TaskLost, "the VM was ended"),
        TaskEnd::Lost(why) => Ending::new(StopCode::TaskLost, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_agent::{ExitReport, FailureKind};
    use std::time::Duration;

    fn task(stop_requested: bool) -> Task {
        let mut t: Task = serde_json::from_value(serde_json::json!({
            "id": "t", "state": "RUNNING", "image": "i", "env": {}, "cpu": 1,
            "memoryMiB": 128, "stopTimeoutSeconds": 1, "labels": {},
            "phases": {"acceptedMs": 1}
        }))
        .unwrap();
        t.stop_requested = stop_requested;
        t
    }

    fn exited(code: i32, signal: Option<i32>, oom: bool) -> TaskEnd {
        TaskEnd::Exited(ExitReport {
            exit_code: code,
            signal,
            cpu_user_ms: 3,
            oom_killed: oom,
            ..Default::default()
        })
    }

    #[test]
    fn each_end_maps_to_its_stop_code() {
        let cases = [
            (
                false,
                exited(0, None, false),
                StopCode::EssentialContainerExited,
                Some(0),
                "exited with code 0",
            ),
            (
                false,
                exited(137, Some(9), false),
                StopCode::EssentialContainerExited,
                Some(137),
                "killed by signal 9",
            ),
            (
                false,
                exited(137, Some(9), true),
                StopCode::OutOfMemory,
                Some(137),
                "out of memory: the task needed more than its 128 MiB",
            ),
            (
                true,
                exited(143, Some(15), false),
                StopCode::UserInitiated,
                Some(143),
                "stopped by request (exit code 143)",
            ),
            (
                false,
                TaskEnd::TimedOut(Duration::from_secs(5)),
                StopCode::Timeout,
                Some(124),
                "timed out after 5 s",
            ),
            (
                true,
                TaskEnd::Killed,
                StopCode::UserInitiated,
                None,
                "stopped by request; the VM was ended",
            ),
            (
                false,
                TaskEnd::Killed,
                StopCode::TaskLost,
                None,
                "the VM was ended",
            ),
            (
                false,
                TaskEnd::Lost("gone".into()),
                StopCode::TaskLost,
                None,
                "gone",
            ),
            (
                false,
                TaskEnd::Failed {
                    kind: FailureKind::CommandNotFound,
                    message: "nope".into(),
                    exit_code: 127,
                },
                StopCode::TaskFailedToStart,
                Some(127),
                "nope",
            ),
        ];
        for (stop, end, code, exit_code, reason) in cases {
            let e = ending(&task(stop), end);
            assert_eq!(
                (e.code, e.exit_code, e.reason.as_str()),
                (code, exit_code, reason)
            );
        }
        let e = ending(&task(false), exited(0, None, false));
        assert_eq!(e.usage.unwrap().cpu_user_ms, 3);
    }
}
