//! The host↔agent protocol, shared by `skiff-agent` (in the guest) and the control plane.
//!
//! One vsock stream per task. Every message is a frame: a 4-byte little-endian length
//! (of what follows), a 1-byte kind, then the payload. Control messages are JSON of one
//! versioned enum ([`Message`]); process output travels as raw bytes in their own frame
//! kinds, never JSON-escaped, so binary output costs nothing extra and nothing is lost.
#![forbid(unsafe_code)]

pub mod conn;
pub mod frame;
pub mod message;

pub use conn::{FrameDecoder, FramedConn};
pub use frame::{Frame, FrameError, MAX_FRAME_LEN, MAX_OUTPUT_CHUNK};
pub use message::*;

/// Bumped on every incompatible change of [`Message`] or the frame format.
pub const PROTOCOL_VERSION: u32 = 8;

/// Stdin bytes the host may have sent that the agent has not yet reported as consumed
/// ([`Message::StdinConsumed`]). Stdin never piles up in the connection, so a signal sent
/// after it is never stuck behind it.
pub const STDIN_WINDOW: u64 = 1 << 20;

/// The vsock port on the host (CID 2) that agents dial when they are ready.
pub const HOST_PORT: u32 = 1024;
