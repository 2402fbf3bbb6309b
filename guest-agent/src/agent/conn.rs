//! The agent's vsock connection to the host: frames out (blocking writes), frames in
//! (buffered, decoded as they complete).

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use guest_agent::{Frame, FrameError};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};

const HOST_CID: u32 = 2;

pub struct Conn {
    sock: std::fs::File,
    buf: Vec<u8>,
}

impl Conn {
    /// Dials the host, retrying while the vsock device comes up.
    pub fn dial(port: u32, patience: Duration) -> Result<Self, String> {
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
                Ok(()) => {
                    return Ok(Self {
                        sock: std::fs::File::from(fd),
                        buf: Vec::new(),
                    })
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("cannot reach the host on vsock port {port}: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    pub fn send(&mut self, f: &Frame) -> Result<(), FrameError> {
        self.sock.write_all(&f.encode()?)?;
        Ok(())
    }

    /// One read from the socket into the buffer; the host closing is an error.
    pub fn fill(&mut self) -> Result<(), FrameError> {
        let mut b = [0u8; 64 * 1024];
        let n = self.sock.read(&mut b)?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        self.buf.extend_from_slice(&b[..n]);
        Ok(())
    }

    /// The next complete frame already received, if any.
    pub fn next_buffered(&mut self) -> Result<Option<Frame>, FrameError> {
        match Frame::decode_from(&self.buf)? {
            Some((f, n)) => {
                self.buf.drain(..n);
                Ok(Some(f))
            }
            None => Ok(None),
        }
    }

    /// Blocks until a whole frame has arrived.
    pub fn recv(&mut self) -> Result<Frame, FrameError> {
        loop {
            if let Some(f) = self.next_buffered()? {
                return Ok(f);
            }
            self.fill()?;
        }
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
