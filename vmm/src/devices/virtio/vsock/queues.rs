//! The packets that wait for the guest's RX buffers, bounded: a guest that withholds its
//! buffers while it keeps sending can grow neither queue (Firecracker bounds its muxer's
//! RX queue the same way). Imports only the packet header.
//!
//! - [`LooseRsts`]: RSTs answering packets of no connection (a request to a port nobody
//!   listens on, data for a closed connection). One per connection key, at most
//!   [`MAX_LOOSE_RSTS`]; past that they are dropped, and the guest's connect times out
//!   instead of being refused at once.
//! - [`ControlQueue`]: one connection's control packets. Each kind is queued at most once
//!   (a second RST or CREDIT_UPDATE says nothing the first does not), so it never holds
//!   more than [`MAX_CONTROLS`].

use std::collections::{HashSet, VecDeque};

use super::packet::Header;

/// RSTs for packets of no connection that wait for RX buffers, at most.
pub const MAX_LOOSE_RSTS: usize = 256;

/// A control packet waiting for a free RX buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Request,
    Response,
    Rst,
    CreditUpdate,
}

/// One of each [`Control`] kind.
pub const MAX_CONTROLS: usize = 4;

/// One connection's control packets for the guest, each kind at most once, oldest first.
#[derive(Debug, Default)]
pub struct ControlQueue(VecDeque<Control>);

impl ControlQueue {
    /// Queues `c` unless a `c` is already waiting.
    pub fn push(&mut self, c: Control) {
        if !self.0.contains(&c) {
            self.0.push_back(c);
        }
        debug_assert!(self.0.len() <= MAX_CONTROLS);
    }

    pub fn pop(&mut self) -> Option<Control> {
        self.0.pop_front()
    }

    pub fn contains(&self, c: Control) -> bool {
        self.0.contains(&c)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// RSTs for packets of no connection, waiting for RX buffers: one per (source port,
/// destination port), at most [`MAX_LOOSE_RSTS`].
#[derive(Debug, Default)]
pub struct LooseRsts {
    queue: VecDeque<Header>,
    keys: HashSet<(u32, u32)>,
    dropped: u64,
}

impl LooseRsts {
    /// Queues `rst` unless one for the same ports waits already or the queue is full.
    pub fn push(&mut self, rst: Header) {
        let key = (rst.src_port, rst.dst_port);
        if self.keys.contains(&key) {
            return;
        }
        if self.queue.len() >= MAX_LOOSE_RSTS {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "vsock: the guest takes no packets; RSTs for unknown connections dropped"
                );
            }
            return;
        }
        self.keys.insert(key);
        self.queue.push_back(rst);
    }

    pub fn pop(&mut self) -> Option<Header> {
        let h = self.queue.pop_front()?;
        self.keys.remove(&(h.src_port, h.dst_port));
        Some(h)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// RSTs dropped because the queue was full.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.keys.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rst(src: u32, dst: u32) -> Header {
        Header {
            src_port: src,
            dst_port: dst,
            ..Default::default()
        }
    }

    #[test]
    fn a_reset_already_queued_is_not_queued_again_and_the_queue_is_bounded() {
        let mut q = LooseRsts::default();
        q.push(rst(1, 2));
        q.push(rst(1, 2));
        assert_eq!(q.len(), 1);
        for p in 0..10 * MAX_LOOSE_RSTS as u32 {
            q.push(rst(p, 7));
        }
        assert_eq!(q.len(), MAX_LOOSE_RSTS);
        assert!(q.dropped() > 0);
        let first = q.pop().unwrap();
        assert_eq!({ first.src_port }, 1);
        // Once sent, the same reset may be queued again.
        q.push(rst(1, 2));
        assert_eq!(q.len(), MAX_LOOSE_RSTS);
        q.clear();
        assert!(q.is_empty() && q.pop().is_none());
    }

    #[test]
    fn controls_hold_each_kind_once_in_order() {
        let mut q = ControlQueue::default();
        for _ in 0..100 {
            q.push(Control::Rst);
            q.push(Control::CreditUpdate);
        }
        q.push(Control::Response);
        assert_eq!(q.len(), 3);
        assert!(q.len() <= MAX_CONTROLS);
        assert_eq!(q.pop(), Some(Control::Rst));
        assert_eq!(q.pop(), Some(Control::CreditUpdate));
        assert_eq!(q.pop(), Some(Control::Response));
        assert!(q.is_empty());
    }
}
