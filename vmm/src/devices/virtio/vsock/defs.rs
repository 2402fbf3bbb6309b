//! virtio-vsock's numbers (virtio 1.x, 5.10) and our limits. Imports nothing.

pub const VIRTIO_ID_VSOCK: u32 = 19;
pub const HOST_CID: u64 = 2;
pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
/// Bytes of guest data we buffer per connection (what we advertise as buf_alloc).
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload of one packet, in either direction.
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;
/// Host-side ports handed out for host-initiated connections start here.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// At most this many connections at once per VM.
pub const MAX_CONNECTIONS: usize = 1024;
