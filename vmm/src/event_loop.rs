//! The device event loop thread (event-manager): host-side events for devices. Today it
//! carries console input from a terminal to the serial port; virtio devices join it.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

use crate::devices::serial::SerialPort;
use crate::exit::{ExitReason, ExitSignal};
use crate::seccomp::{self, SeccompMode, ThreadKind};

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Feeds bytes typed on stdin into the guest's serial port.
pub struct StdinToSerial {
    serial: Arc<Mutex<SerialPort>>,
}

impl StdinToSerial {
    pub fn new(serial: Arc<Mutex<SerialPort>>) -> Self {
        Self { serial }
    }
}

impl MutEventSubscriber for StdinToSerial {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&std::io::stdin(), EventSet::IN)) {
            tracing::warn!("console input unavailable: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let n = if events.event_set().contains(EventSet::IN) {
            std::io::stdin().lock().read(&mut buf).unwrap_or(0)
        } else {
            0
        };
        if n == 0 {
            // EOF or hang-up: stop listening, the guest keeps running.
            let _ = ops.remove(Events::new(&std::io::stdin(), EventSet::IN));
            return;
        }
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = serial.0.enqueue_raw_bytes(&buf[..n]) {
            tracing::debug!("serial input dropped: {e:?}");
        }
    }
}

/// Ends the loop when the VM exits.
struct ExitWatch {
    exit: Arc<ExitSignal>,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl MutEventSubscriber for ExitWatch {
    fn init(&mut self, ops: &mut EventOps) {
        let fd = self.exit.event_fd().as_raw_fd();
        if let Err(e) = ops.add(Events::with_data_raw(fd, 0, EventSet::IN)) {
            tracing::warn!("event loop cannot watch VM exit: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Spawns the event loop thread with `subscribers`; it installs its seccomp filter first
/// (`seccomp`), and stops when the VM exits.
pub fn spawn(
    subscribers: Vec<Subscriber>,
    exit: Arc<ExitSignal>,
    seccomp: SeccompMode,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut mgr: EventManager<Subscriber> =
        EventManager::new().map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    for s in subscribers {
        mgr.add_subscriber(s);
    }
    mgr.add_subscriber(Arc::new(Mutex::new(ExitWatch {
        exit: exit.clone(),
        done: done.clone(),
    })));
    std::thread::Builder::new()
        .name("event-loop".into())
        .spawn(move || {
            if let Err(e) = seccomp::install(ThreadKind::EventLoop, seccomp) {
                exit.signal(ExitReason::VmmError(e.to_string()));
                return;
            }
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if let Err(e) = mgr.run_with_timeout(1000) {
                    exit.signal(ExitReason::VmmError(format!("event loop failed: {e:?}")));
                    return;
                }
            }
        })
}
