//! The virtio-net device: its config space (MAC, link status), and the two queue loops
//! that move frames between the guest and the TAP through `frame.rs`.
//!
//! Receive (TAP → guest) runs only on TAP readiness ([`VirtioDevice::process_backend`]),
//! and only while the guest has a receive buffer: a buffer is taken before a frame is
//! read, so no frame is ever held by the VMM. With no buffer left the device says it no
//! longer wants TAP readiness ([`VirtioDevice::backend_wanted`]): the event loop stops
//! watching the TAP (the kernel's TAP queue, bounded by its txqueuelen, holds or drops
//! what comes meanwhile) until the guest notifies the receive queue.
//!
//! Transmit (guest → TAP) runs on the transmit queue's notification; each frame is one
//! `write` to the TAP. A frame the TAP refuses is dropped, as a wire would.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::config::{MacAddr, NetConfig};
use super::frame::{self, FrameError};
use super::tap::{Tap, TapError};
use super::*;
use crate::devices::virtio::{
    check_avail, DeviceBroken, Interrupt, VirtioDevice, INTERRUPT_USED_RING,
    VIRTIO_RING_F_EVENT_IDX,
};

/// What the device moved and dropped, for logs and tests.
#[derive(Debug, Default)]
pub struct NetCounters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames from the TAP that did not fit the guest's buffer or were malformed.
    pub rx_dropped: AtomicU64,
    /// Frames from the guest that were malformed or that the TAP refused.
    pub tx_dropped: AtomicU64,
    /// Receive chains returned unused because they were unusable (read-only, too short,
    /// outside guest memory).
    pub rx_bad_buffers: AtomicU64,
}

fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

pub struct Net {
    tap: Tap,
    pub(super) mac: MacAddr,
    /// The config space's status field.
    pub(super) status: u16,
    active: bool,
    /// Out of receive buffers: TAP readiness is not wanted until the guest adds some.
    rx_waiting: bool,
    queue_sizes: [u16; 2],
    /// One packet (header + largest frame), reused both ways.
    buf: Vec<u8>,
    pub counters: NetCounters,
}

impl Net {
    /// Attaches to the TAP of `config`, with its MAC or a random one.
    pub fn open(config: &NetConfig) -> Result<Self, TapError> {
        let tap = Tap::open(&config.tap)?;
        Ok(Self::with_tap(
            tap,
            config.mac.unwrap_or_else(MacAddr::random),
        ))
    }

    pub fn with_tap(tap: Tap, mac: MacAddr) -> Self {
        tracing::info!(tap = tap.name(), %mac, "virtio-net attached");
        Self {
            tap,
            mac,
            status: VIRTIO_NET_S_LINK_UP,
            active: false,
            rx_waiting: false,
            queue_sizes: [QUEUE_SIZE; 2],
            buf: vec![0u8; HDR_LEN + MAX_FRAME],
            counters: NetCounters::default(),
        }
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// `struct virtio_net_config` up to the status field (the only ones offered).
    fn config_bytes(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&self.mac.0);
        c[6..].copy_from_slice(&self.status.to_le_bytes());
        c
    }

    /// TAP → guest, at most [`RX_BATCH`] frames. Returns whether a buffer was used.
    fn process_rx(&mut self, q: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, DeviceBroken> {
        let broken = |e: virtio_queue::Error| DeviceBroken(format!("virtio-net rx queue: {e}"));
        let mut used = false;
        q.disable_notification(mem).map_err(broken)?;
        check_avail(q, mem, "virtio-net rx")?;
        let mut frames = 0;
        // Unusable buffers do not count as frames; a guest that keeps adding them still
        // meets an end here (the TAP stays readable, so the loop comes back).
        let mut chains = 0;
        while frames < RX_BATCH && chains < 2 * QUEUE_SIZE as usize {
            chains += 1;
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                // Out of buffers: ask to be told when the guest adds some, unless it
                // already did in the meantime.
                if q.enable_notification(mem).map_err(broken)? {
                    q.disable_notification(mem).map_err(broken)?;
                    // An index that lies ends here rather than in an endless loop.
                    check_avail(q, mem, "virtio-net rx")?;
                    continue;
                }
                tracing::trace!("virtio-net: no receive buffer; TAP unwatched");
                self.rx_waiting = true;
                return Ok(used);
            };
            let head = chain.head_index();
            let mut w = match frame::rx_writer(mem, chain) {
                Ok(w) => w,
                Err(e) => {
                    tracing::debug!("virtio-net: unusable receive buffer: {e}");
                    bump(&self.counters.rx_bad_buffers, 1);
                    q.add_used(mem, head, 0).map_err(broken)?;
                    used = true;
                    continue;
                }
            };
            let n = match self.tap.read_packet(&mut self.buf) {
                Ok(n) => n,
                Err(e) => {
                    // Nothing queued (or the TAP failed): the buffer stays the guest's.
                    if e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::Interrupted {
                        tracing::warn!(tap = self.tap.name(), "virtio-net: TAP read failed: {e}");
                    }
                    q.go_to_previous_position();
                    break;
                }
            };
            frames += 1;
            let len = match frame::rx_fill(&mut w, &self.buf[..n]) {
                Ok(len) => {
                    bump(&self.counters.rx_frames, 1);
                    bump(&self.counters.rx_bytes, (n - HDR_LEN) as u64);
                    len
                }
                Err(e) => {
                    tracing::debug!("virtio-net: dropped a frame from the TAP: {e}");
                    bump(&self.counters.rx_dropped, 1);
                    0
                }
            };
            q.add_used(mem, head, len).map_err(broken)?;
            used = true;
        }
        // Notifications stay off while the device has buffers: the guest's refills need
        // no exit until the device runs out.
        Ok(used)
    }

    /// Guest → TAP: every chain on the transmit queue. Returns whether one was used.
    fn process_tx(&mut self, q: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, DeviceBroken> {
        let broken = |e: virtio_queue::Error| DeviceBroken(format!("virtio-net tx queue: {e}"));
        let mut used = false;
        loop {
            q.disable_notification(mem).map_err(broken)?;
            check_avail(q, mem, "virtio-net tx")?;
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                match frame::tx_packet(mem, chain, &mut self.buf) {
                    Ok(n) => self.send(n),
                    Err(e) => self.tx_drop(e),
                }
                q.add_used(mem, head, 0).map_err(broken)?;
                used = true;
            }
            if !q.enable_notification(mem).map_err(broken)? {
                break;
            }
        }
        Ok(used)
    }

    fn send(&mut self, n: usize) {
        match self.tap.write_packet(&self.buf[..n]) {
            Ok(_) => {
                bump(&self.counters.tx_frames, 1);
                bump(&self.counters.tx_bytes, (n - HDR_LEN) as u64);
            }
            Err(e) => {
                tracing::debug!(
                    tap = self.tap.name(),
                    "virtio-net: TAP refused a frame: {e}"
                );
                bump(&self.counters.tx_dropped, 1);
            }
        }
    }

    fn tx_drop(&mut self, e: FrameError) {
        tracing::debug!("virtio-net: dropped a frame from the guest: {e}");
        bump(&self.counters.tx_dropped, 1);
    }

    fn notify_used(
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        irq: &Interrupt,
        rx_used: bool,
        tx_used: bool,
    ) -> Result<(), DeviceBroken> {
        let broken = |e: virtio_queue::Error| DeviceBroken(format!("virtio-net queue: {e}"));
        if (rx_used && queues[RX_QUEUE].needs_notification(mem).map_err(broken)?)
            || (tx_used && queues[TX_QUEUE].needs_notification(mem).map_err(broken)?)
        {
            irq.trigger(INTERRUPT_USED_RING);
        }
        Ok(())
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn activate(&mut self, _acked_features: u64) -> Result<(), DeviceBroken> {
        self.active = true;
        self.rx_waiting = false;
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        irq: &Interrupt,
    ) -> Result<(), DeviceBroken> {
        if queues.len() < 2 {
            return Err(DeviceBroken("virtio-net needs two queues".into()));
        }
        match index {
            // New receive buffers: watch the TAP again. Frames are read only on TAP
            // readiness, on the event loop thread.
            RX_QUEUE => {
                self.rx_waiting = false;
                Ok(())
            }
            TX_QUEUE => {
                let used = self.process_tx(&mut queues[TX_QUEUE], mem)?;
                Self::notify_used(queues, mem, irq, false, used)
            }
            _ => Ok(()),
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.tap.as_raw_fd())
    }

    fn backend_wanted(&self) -> bool {
        self.active && !self.rx_waiting
    }

    fn process_backend(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        irq: &Interrupt,
        active: bool,
    ) -> Result<(), DeviceBroken> {
        // Not running (or put out of service by the transport): leave the frames in the
        // TAP, and stop wanting its readiness until the driver activates the device again.
        if !(active && self.active) || queues.len() < 2 {
            self.active = false;
            return Ok(());
        }
        let used = self.process_rx(&mut queues[RX_QUEUE], mem)?;
        Self::notify_used(queues, mem, irq, used, false)
    }

    fn reset(&mut self) {
        self.active = false;
        self.rx_waiting = false;
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
