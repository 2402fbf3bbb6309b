//! Tasks: what a user asks for (`TaskRequest`), what we keep about each (`Task`, with its
//! state machine), the durable store (SQLite) and the per-task output logs.

pub mod logs;
pub mod model;
pub mod ports;
pub mod request;
pub mod store;

pub use model::{
    Ending, InvalidTransition, NetworkInterface, NetworkMode, NetworkTimings, Phases, StartMode,
    StopCode, Task, TaskState, Transition, Usage,
};
pub use ports::{PortMapping, Protocol};
pub use request::{Limits, TaskRequest, ValidationError};
pub use store::{ListQuery, StoreError, TaskStore};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A new task id: 16 hex digits from the host's CRNG.
pub fn new_task_id() -> String {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        // No /dev/urandom: time and a counter still give unique ids within this host.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b = (now_ms() << 16 ^ n).to_le_bytes();
    }
    hex::encode(b)
}
