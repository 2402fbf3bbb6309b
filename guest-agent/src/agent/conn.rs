//! The agent's vsock connection to the host: dialled here, framed by the protocol crate's
//! [`FramedConn`] (the same type the host uses).

use std::time::{Duration, Instant};

use guest_agent::FramedConn;
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

const HOST_CID: u32 = 2;

pub type Conn = FramedConn<std::fs::File>;

/// Dials the host, retrying while the vsock device comes up.
pub fn dial(port: u32, patience: Duration) -> Result<Conn, String> {
    let deadline = Instant::now() + patience;
    loop {
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| format!("vsock socket: {e}"))?;
        match connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &VsockAddr::new(HOST_CID, port),
        ) {
            Ok(()) => return Ok(FramedConn::new(std::fs::File::from(fd))),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("cannot reach the host on vsock port {port}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
