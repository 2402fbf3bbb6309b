//! One vsock stream between a guest port and a host Unix socket: state, buffered guest
//! data, and the credit counters of both sides.

use std::collections::VecDeque;

use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use super::defs::{CONN_BUF_ALLOC, HOST_CID};
use super::packet::*;
use super::queues::{Control, ControlQueue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host dialled in; waiting for its `CONNECT <port>\n` line.
    AwaitingConnectLine,
    /// We sent the guest a REQUEST; waiting for its RESPONSE.
    Connecting,
    Established,
    /// The guest shut down both directions; flushing what it sent, then RST.
    Closing,
}

pub struct Connection {
    pub stream: UnixStream,
    pub local_port: u32,
    pub peer_port: u32,
    pub state: State,
    /// Control packets for the guest, each kind at most once.
    pub controls: ControlQueue,
    /// Guest data not yet written to the host socket.
    pub tx_buf: VecDeque<u8>,
    /// Bytes received from the host before the connection was established.
    pub rx_prebuf: Vec<u8>,
    /// Guest bytes written to the host socket (advertised to the guest).
    pub fwd_cnt: Wrapping<u32>,
    pub last_fwd_cnt_sent: Wrapping<u32>,
    /// Host bytes sent to the guest.
    pub rx_cnt: Wrapping<u32>,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: Wrapping<u32>,
    pub host_eof: bool,
    /// The guest will send no more; the host socket's write side is shut after the flush.
    pub guest_done_sending: bool,
    pub connect_line: Vec<u8>,
    /// Events currently registered in the muxer's epoll.
    pub interest: u32,
}

impl Connection {
    pub fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            controls: ControlQueue::default(),
            tx_buf: VecDeque::new(),
            rx_prebuf: Vec::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            host_eof: false,
            guest_done_sending: false,
            connect_line: Vec::new(),
            interest: 0,
        }
    }

    /// Bytes the guest can still take from us.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Records the credit fields every guest packet carries.
    pub fn update_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
    }

    /// Takes guest data: writes what the socket accepts, buffers the rest. Err when the
    /// guest sent more than the credit we gave it.
    pub fn push_guest_data(&mut self, data: &[u8]) -> Result<(), ()> {
        if self.tx_buf.len() + data.len() > CONN_BUF_ALLOC as usize {
            return Err(());
        }
        let mut written = 0;
        if self.tx_buf.is_empty() {
            written = match self.stream.write(data) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                Err(_) => return Err(()),
            };
            self.fwd_cnt += Wrapping(written as u32);
        }
        self.tx_buf.extend(&data[written..]);
        self.maybe_credit_update();
        Ok(())
    }

    /// Writes buffered guest data to the socket. Err on a broken socket.
    pub fn flush_tx(&mut self) -> Result<(), ()> {
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(()),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return Err(()),
            }
        }
        self.maybe_credit_update();
        Ok(())
    }

    /// Queues a CREDIT_UPDATE once half our buffer has been forwarded since the last one.
    fn maybe_credit_update(&mut self) {
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CONN_BUF_ALLOC / 2 {
            self.controls.push(Control::CreditUpdate);
        }
    }

    /// Reads host data for the guest into `buf` (at most the peer's credit).
    pub fn read_host(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.peer_credit() as usize);
        if n == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        if !self.rx_prebuf.is_empty() {
            let k = n.min(self.rx_prebuf.len());
            buf[..k].copy_from_slice(&self.rx_prebuf[..k]);
            self.rx_prebuf.drain(..k);
            return Ok(k);
        }
        self.stream.read(&mut buf[..n])
    }

    /// Reads the host's `CONNECT <port>\n` line. Ok(Some(port)) when complete, Ok(None)
    /// when more bytes are needed, Err when the line is malformed or the socket closed.
    pub fn read_connect_line(&mut self) -> Result<Option<u32>, ()> {
        let mut b = [0u8; 64];
        let n = match self.stream.read(&mut b) {
            Ok(0) => return Err(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
            Err(_) => return Err(()),
        };
        self.connect_line.extend_from_slice(&b[..n]);
        let Some(nl) = self.connect_line.iter().position(|c| *c == b'\n') else {
            return if self.connect_line.len() > 32 {
                Err(())
            } else {
                Ok(None)
            };
        };
        let rest = self.connect_line.split_off(nl + 1);
        let line = std::str::from_utf8(&self.connect_line).map_err(|_| ())?;
        let port = parse_connect_line(line).ok_or(())?;
        self.rx_prebuf = rest;
        Ok(Some(port))
    }

    /// A header from us to the guest for this connection.
    pub fn header(&mut self, guest_cid: u64, op: u16, len: u32, flags: u32) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }
}

/// `CONNECT 1234\n` → 1234.
pub fn parse_connect_line(line: &str) -> Option<u32> {
    let rest = line.strip_prefix("CONNECT ")?.trim_end_matches('\n');
    rest.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line() {
        assert_eq!(parse_connect_line("CONNECT 52\n"), Some(52));
        assert_eq!(parse_connect_line("CONNECT x\n"), None);
        assert_eq!(parse_connect_line("HELLO 52\n"), None);
    }

    #[test]
    fn credit_accounts_for_bytes_in_flight() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Connection::new(a, 1, 2, State::Established);
        c.peer_buf_alloc = 1000;
        c.rx_cnt = Wrapping(u32::MAX - 10); // wraps around
        c.peer_fwd_cnt = Wrapping(u32::MAX - 110);
        assert_eq!(c.peer_credit(), 900);
        c.peer_fwd_cnt = Wrapping(u32::MAX - 2000); // guest claims less than nothing free
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn guest_over_credit_is_refused() {
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Connection::new(a, 1, 2, State::Established);
        let chunk = vec![7u8; 64 * 1024];
        let mut pushed = 0usize;
        while c.push_guest_data(&chunk).is_ok() {
            pushed += chunk.len();
            assert!(pushed < 64 << 20, "never refused");
        }
        assert!(c.tx_buf.len() <= CONN_BUF_ALLOC as usize);
    }
}
