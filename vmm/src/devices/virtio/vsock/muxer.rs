//! The host side of vsock: a private epoll over the listening socket and every
//! connection's Unix stream, the connection table, and the packets waiting for the guest.
//! The event loop sees only the epoll fd (Firecracker's design); the device calls in here
//! with the virtqueues.

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, State};
use super::defs::{FIRST_LOCAL_PORT, HOST_CID, MAX_CONNECTIONS, MAX_PKT_PAYLOAD};
use super::packet::*;
use super::queues::{Control, LooseRsts};

const LISTENER_TOKEN: u64 = 0;

/// (host-side port, guest-side port)
pub type Key = (u32, u32);

/// One packet for the guest: a header, and data for RW packets.
pub struct OutPacket {
    pub header: Header,
    pub data: Vec<u8>,
}

pub struct Muxer {
    pub guest_cid: u64,
    uds_path: PathBuf,
    epoll: Epoll,
    listener: UnixListener,
    conns: HashMap<Key, Connection>,
    tokens: HashMap<u64, Key>,
    conn_tokens: HashMap<Key, u64>,
    awaiting: HashMap<u64, Connection>,
    /// RSTs for packets that belong to no connection (bounded).
    loose: LooseRsts,
    /// Connections whose socket has data for the guest (or hung up).
    readable: std::collections::HashSet<Key>,
    next_token: u64,
    next_local_port: u32,
    /// The RX queue had no buffer the last time we had something to send.
    pub rx_blocked: bool,
}

impl Muxer {
    pub fn new(guest_cid: u64, uds_path: &Path) -> std::io::Result<Self> {
        if uds_path.exists() {
            std::fs::remove_file(uds_path)?;
        }
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_owned(),
            epoll,
            listener,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            conn_tokens: HashMap::new(),
            awaiting: HashMap::new(),
            loose: LooseRsts::default(),
            readable: Default::default(),
            next_token: 1,
            next_local_port: FIRST_LOCAL_PORT,
            rx_blocked: false,
        })
    }

    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.awaiting.len()
    }

    /// Forgets every connection (device reset).
    pub fn reset(&mut self) {
        for (_, c) in self.conns.drain() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        for (_, c) in self.awaiting.drain() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.tokens.clear();
        self.conn_tokens.clear();
        self.loose.clear();
        self.readable.clear();
        self.rx_blocked = false;
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn rst_for(&self, h: &Header) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Default::default()
        }
    }

    fn insert_conn(&mut self, c: Connection) {
        let key = (c.local_port, c.peer_port);
        let t = self.token();
        self.tokens.insert(t, key);
        self.conn_tokens.insert(key, t);
        self.conns.insert(key, c);
    }

    fn remove_conn(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            if c.interest != 0 {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    c.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
        if let Some(t) = self.conn_tokens.remove(&key) {
            self.tokens.remove(&t);
        }
        self.readable.remove(&key);
    }

    /// Handles one packet the guest sent (already validated) with its payload.
    pub fn on_guest_packet(&mut self, h: &Header, payload: &[u8]) {
        let key = (h.dst_port, h.src_port);
        let op = h.op;
        if op == OP_REQUEST {
            self.on_guest_request(h);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if op != OP_RST {
                self.loose.push(self.rst_for(h));
            }
            return;
        };
        c.update_peer_credit(h);
        match op {
            OP_RESPONSE if c.state == State::Connecting => {
                c.state = State::Established;
                let line = format!("OK {}\n", c.local_port);
                if c.stream.write_all(line.as_bytes()).is_err() {
                    c.controls.push(Control::Rst);
                } else if !c.rx_prebuf.is_empty() {
                    self.readable.insert(key);
                }
            }
            OP_RW if c.state == State::Established || c.state == State::Closing => {
                if c.guest_done_sending || c.push_guest_data(payload).is_err() {
                    c.controls.push(Control::Rst);
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                c.controls.push(Control::CreditUpdate);
            }
            OP_SHUTDOWN => {
                let flags = h.flags;
                if flags & SHUTDOWN_SEND != 0 {
                    c.guest_done_sending = true;
                }
                if flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == (SHUTDOWN_SEND | SHUTDOWN_RCV) {
                    c.state = State::Closing;
                }
                self.finish_if_flushed(key);
            }
            OP_RST => self.remove_conn(key),
            _ => c.controls.push(Control::Rst),
        }
    }

    fn on_guest_request(&mut self, h: &Header) {
        let key = (h.dst_port, h.src_port);
        if self.conns.contains_key(&key) || self.connection_count() >= MAX_CONNECTIONS {
            self.loose.push(self.rst_for(h));
            return;
        }
        let (dst_port, src_port) = (h.dst_port, h.src_port);
        let path = format!("{}_{}", self.uds_path.display(), dst_port);
        let stream =
            match UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|_| s)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!("vsock: guest port {src_port} → {path}: {e}");
                    self.loose.push(self.rst_for(h));
                    return;
                }
            };
        let mut c = Connection::new(stream, h.dst_port, h.src_port, State::Established);
        c.update_peer_credit(h);
        c.controls.push(Control::Response);
        self.insert_conn(c);
    }

    /// After the guest's data is flushed: half-close, or for a closing connection, close
    /// and tell the guest with RST.
    fn finish_if_flushed(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if !c.tx_buf.is_empty() {
            return;
        }
        if c.guest_done_sending {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        if c.state == State::Closing && !c.controls.contains(Control::Rst) {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
            c.controls.push(Control::Rst);
        }
    }

    /// Handles what the private epoll reports. Returns after one non-blocking pass.
    pub fn on_host_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("vsock epoll: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let token = ev.data();
            let set = ev.event_set();
            if token == LISTENER_TOKEN {
                self.accept_all();
            } else if self.awaiting.contains_key(&token) {
                self.on_connect_line(token);
            } else if let Some(&key) = self.tokens.get(&token) {
                if set.intersects(
                    EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR,
                ) {
                    self.readable.insert(key);
                }
                if set.contains(EventSet::OUT) {
                    let broken = self.conns.get_mut(&key).map(|c| c.flush_tx().is_err());
                    if broken == Some(true) {
                        if let Some(c) = self.conns.get_mut(&key) {
                            c.tx_buf.clear();
                            c.controls.push(Control::Rst);
                        }
                    }
                    self.finish_if_flushed(key);
                }
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    if self.connection_count() >= MAX_CONNECTIONS
                        || s.set_nonblocking(true).is_err()
                    {
                        continue; // dropped: closing it tells the host
                    }
                    let t = self.token();
                    let mut c = Connection::new(s, 0, 0, State::AwaitingConnectLine);
                    c.interest = EventSet::IN.bits();
                    if self
                        .epoll
                        .ctl(
                            ControlOperation::Add,
                            c.stream.as_raw_fd(),
                            EpollEvent::new(EventSet::IN, t),
                        )
                        .is_ok()
                    {
                        self.awaiting.insert(t, c);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("vsock accept: {e}");
                    return;
                }
            }
        }
    }

    fn on_connect_line(&mut self, token: u64) {
        let Some(mut c) = self.awaiting.remove(&token) else {
            return;
        };
        match c.read_connect_line() {
            Ok(None) => {
                self.awaiting.insert(token, c);
            }
            Err(()) => {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    c.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
            Ok(Some(port)) => {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    c.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
                c.interest = 0;
                let mut local = self.next_local_port;
                while self.conns.keys().any(|k| k.0 == local) {
                    local = local.wrapping_add(1).max(FIRST_LOCAL_PORT);
                }
                self.next_local_port = local.wrapping_add(1).max(FIRST_LOCAL_PORT);
                c.local_port = local;
                c.peer_port = port;
                c.state = State::Connecting;
                c.controls.push(Control::Request);
                self.insert_conn(c);
            }
        }
    }

    /// Whether anything is waiting to go to the guest.
    pub fn has_rx_work(&self) -> bool {
        !self.loose.is_empty()
            || self.conns.iter().any(|(k, c)| {
                !c.controls.is_empty()
                    || (c.state == State::Established
                        && c.peer_credit() > 0
                        && (self.readable.contains(k) || !c.rx_prebuf.is_empty()))
            })
    }

    /// The next packet for the guest, with at most `room` payload bytes.
    pub fn next_packet(&mut self, room: usize) -> Option<OutPacket> {
        if let Some(h) = self.loose.pop() {
            return Some(OutPacket {
                header: h,
                data: Vec::new(),
            });
        }
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        let cid = self.guest_cid;
        for key in keys {
            let c = self.conns.get_mut(&key)?;
            if let Some(ctl) = c.controls.pop() {
                let op = match ctl {
                    Control::Request => OP_REQUEST,
                    Control::Response => OP_RESPONSE,
                    Control::Rst => OP_RST,
                    Control::CreditUpdate => OP_CREDIT_UPDATE,
                };
                let header = c.header(cid, op, 0, 0);
                if ctl == Control::Rst {
                    self.remove_conn(key);
                }
                return Some(OutPacket {
                    header,
                    data: Vec::new(),
                });
            }
            let wants = c.state == State::Established
                && c.peer_credit() > 0
                && (self.readable.contains(&key) || !c.rx_prebuf.is_empty());
            if !wants || room == 0 {
                continue;
            }
            let mut buf = vec![0u8; room.min(MAX_PKT_PAYLOAD)];
            match c.read_host(&mut buf) {
                Ok(0) => {
                    self.readable.remove(&key);
                    c.host_eof = true;
                    // The host closed its write side: it sends no more, but may still read.
                    let header = c.header(cid, OP_SHUTDOWN, 0, SHUTDOWN_SEND);
                    return Some(OutPacket {
                        header,
                        data: Vec::new(),
                    });
                }
                Ok(n) => {
                    buf.truncate(n);
                    c.rx_cnt += Wrapping(n as u32);
                    let header = c.header(cid, OP_RW, n as u32, 0);
                    return Some(OutPacket { header, data: buf });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable.remove(&key);
                }
                Err(_) => {
                    let header = c.header(cid, OP_RST, 0, 0);
                    self.remove_conn(key);
                    return Some(OutPacket {
                        header,
                        data: Vec::new(),
                    });
                }
            }
        }
        None
    }

    /// Registers in epoll exactly the events each connection can act on now, so that a
    /// level-triggered socket never spins while the guest cannot take its data.
    pub fn update_interests(&mut self) {
        for (key, c) in self.conns.iter_mut() {
            let mut want = EventSet::empty();
            if c.state != State::AwaitingConnectLine
                && !c.host_eof
                && c.state == State::Established
                && c.peer_credit() > 0
                && !self.rx_blocked
                && !self.readable.contains(key)
            {
                want |= EventSet::IN;
            }
            if !c.tx_buf.is_empty() {
                want |= EventSet::OUT;
            }
            if want.bits() == c.interest {
                continue;
            }
            let fd = c.stream.as_raw_fd();
            let token = self.conn_tokens[key];
            let r = if c.interest == 0 {
                self.epoll
                    .ctl(ControlOperation::Add, fd, EpollEvent::new(want, token))
            } else if want.is_empty() {
                self.epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default())
            } else {
                self.epoll
                    .ctl(ControlOperation::Modify, fd, EpollEvent::new(want, token))
            };
            if let Err(e) = r {
                tracing::warn!("vsock epoll_ctl: {e}");
            }
            c.interest = want.bits();
        }
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[cfg(test)]
#[path = "muxer_tests.rs"]
mod tests;
