//! Which files of the container's root a task opens, noted with fanotify on the root's
//! mount (the kernel queues an event per open; the agent reads them later, off the task's
//! path). The host reads those files ahead in the image's warm snapshot, so later tasks of
//! the image find their start-up files in the page cache. fanotify is the kernel's own
//! record of opens: nothing in the task's path changes, and no tracing is needed.

use std::collections::HashSet;
use std::os::fd::AsRawFd;

use guest_agent::{valid_opened_path, MAX_OPENED_FILES};
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};

/// Most reads of the event queue in one drain (each returns up to ~170 events); the
/// kernel's queue holds 16384 at most, so this drains it.
const MAX_READS: usize = 128;

/// A recording in progress.
pub struct OpenRecorder {
    fan: Fanotify,
    root: String,
}

impl OpenRecorder {
    /// Starts noting opens of files on the mount at `root`.
    pub fn start(root: &str) -> Result<Self, String> {
        let fan = Fanotify::init(
            InitFlags::FAN_CLASS_NOTIF | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .map_err(|e| format!("fanotify_init: {e}"))?;
        let dir = std::fs::File::open(root).map_err(|e| format!("open {root}: {e}"))?;
        fan.mark(
            MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT,
            MaskFlags::FAN_OPEN,
            &dir,
            None::<&std::path::Path>,
        )
        .map_err(|e| format!("fanotify_mark {root}: {e}"))?;
        Ok(Self {
            fan,
            root: root.trim_end_matches('/').to_owned(),
        })
    }

    /// Ends the recording: the paths opened (as the task saw them), first opens first,
    /// each once, at most [`MAX_OPENED_FILES`].
    pub fn finish(self) -> Vec<String> {
        let mut paths = Vec::new();
        let mut seen = HashSet::new();
        for _ in 0..MAX_READS {
            let Ok(events) = self.fan.read_events() else {
                break; // EAGAIN: the queue is empty
            };
            if events.is_empty() {
                break;
            }
            for ev in &events {
                let Some(fd) = ev.fd() else { continue }; // a queue overflow
                if paths.len() >= MAX_OPENED_FILES {
                    continue; // still read, so every event's descriptor is closed
                }
                let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
                let Ok(target) = std::fs::read_link(&link) else {
                    continue;
                };
                let Some(path) = self.in_root(&target.to_string_lossy()) else {
                    continue;
                };
                if seen.insert(path.clone()) {
                    paths.push(path);
                }
            }
        }
        paths
    }

    /// `target` (a path in the agent's view) as the task sees it, if it is a file of the
    /// root that still exists.
    fn in_root(&self, target: &str) -> Option<String> {
        let inside = target.strip_prefix(&self.root)?;
        (inside.starts_with('/') && !inside.ends_with(" (deleted)") && valid_opened_path(inside))
            .then(|| inside.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder_at(root: &str) -> Option<OpenRecorder> {
        match OpenRecorder::start(root) {
            Ok(r) => Some(r),
            Err(e) => {
                // fanotify needs CAP_SYS_ADMIN: unit tests run as root on our hosts.
                eprintln!("skipping: {e}");
                None
            }
        }
    }

    #[test]
    fn opens_on_the_mount_are_listed_once_in_order_without_the_prefix() {
        let dir = std::env::temp_dir().join(format!("skiff-opens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["a", "b"] {
            std::fs::write(dir.join(f), f).unwrap();
        }
        let Some(r) = recorder_at(dir.to_str().unwrap()) else {
            return;
        };
        for f in ["b", "a", "b"] {
            std::fs::read(dir.join(f)).unwrap();
        }
        let paths = r.finish();
        let ours: Vec<_> = paths.iter().filter(|p| *p == "/a" || *p == "/b").collect();
        assert_eq!(ours, ["/b", "/a"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn paths_outside_the_root_or_deleted_are_left_out() {
        let Some(r) = recorder_at("/") else { return };
        let r = OpenRecorder {
            root: "/run/container/root".into(),
            ..r
        };
        assert_eq!(
            r.in_root("/run/container/root/usr/bin/python3").as_deref(),
            Some("/usr/bin/python3")
        );
        assert_eq!(r.in_root("/run/container/rootless/x"), None);
        assert_eq!(r.in_root("/etc/passwd"), None);
        assert_eq!(r.in_root("/run/container/root/tmp/x (deleted)"), None);
        assert_eq!(r.in_root("/run/container/root"), None);
    }
}
