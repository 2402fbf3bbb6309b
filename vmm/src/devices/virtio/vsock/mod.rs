//! virtio-vsock with a Unix-socket backend, compatible with Firecracker's hybrid vsock:
//! a guest connection to the host (CID 2) port P is forwarded to the Unix socket
//! `<path>_P`; a host process connects to `<path>`, writes `CONNECT <port>\n`, gets
//! `OK <hostport>\n`, then streams. Credit-based flow control in both directions.

mod connection;
mod defs;
mod device;
pub mod event;
mod muxer;
pub mod packet;
pub mod persist;
mod queues;

pub use defs::*;
pub use device::{Vsock, VsockConfig, VsockError};
