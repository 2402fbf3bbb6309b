//! The virtio-mmio transport, version 2 ("modern") registers: feature negotiation, queue
//! set-up, status, interrupts, config space. One 4 KiB window per device in the MMIO hole,
//! announced to the guest with `virtio_mmio.device=4K@ADDR:IRQ`.
//!
//! Queue notifications normally arrive as ioeventfds on the event loop thread
//! ([`MmioSubscriber`]); a notify that reaches the register anyway is processed inline.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::persist::{PersistError, TransportState};
use super::*;
use crate::devices::mmio_bus::MmioDevice;
use crate::persist::Persist;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4646_4b53; // "SKFF"

pub const REG_QUEUE_NOTIFY: u64 = 0x50;
const CONFIG_SPACE: u64 = 0x100;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    queues: Vec<Queue>,
    mem: GuestMemoryMmap,
    irq: Interrupt,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    config_generation: u32,
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, irq: Interrupt) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("device queue sizes are powers of two"))
            .collect();
        Self {
            device,
            queues,
            mem,
            irq,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            config_generation: 0,
        }
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// Lets the device act once after a restore (see [`VirtioDevice::after_restore`]).
    pub fn after_restore(&mut self) {
        if !self.active() {
            return;
        }
        match self
            .device
            .after_restore(&mut self.queues, &self.mem, &self.irq)
        {
            Ok(true) => {
                self.config_generation = self.config_generation.wrapping_add(1);
                self.irq.trigger(INTERRUPT_CONFIG);
            }
            Ok(false) => {}
            Err(e) => self.mark_broken(&e.0),
        }
    }

    fn active(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_DEVICE_NEEDS_RESET == 0
    }

    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue set-up is allowed between FEATURES_OK and DRIVER_OK only.
    fn queue_writable(&self) -> bool {
        self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.irq.clear();
    }

    /// Puts the device out of service until the driver resets it, and tells the driver.
    fn mark_broken(&mut self, why: &str) {
        tracing::warn!(
            device = self.device.device_type(),
            "guest misused virtio device: {why}; it needs a reset"
        );
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        self.irq.trigger(INTERRUPT_CONFIG);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value & 0xff;
        if value & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let offered = self.offered_features();
            if self.acked_features & !offered != 0 || self.acked_features & VIRTIO_F_VERSION_1 == 0
            {
                // Refuse: the driver sees FEATURES_OK unset and gives up on the device.
                value &= !STATUS_FEATURES_OK;
            }
        }
        if value & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0 {
            let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
            for q in &mut self.queues {
                q.set_event_idx(event_idx);
            }
            let bad = self
                .queues
                .iter()
                .position(|q| q.ready() && !q.is_valid(&self.mem));
            if let Some(i) = bad {
                self.status = value;
                self.mark_broken(&format!("queue {i} is not valid"));
                return;
            }
            tracing::debug!(
                device = self.device.device_type(),
                features = format_args!("{:#x}", self.acked_features),
                "virtio device activated"
            );
            if let Err(e) = self.device.activate(self.acked_features) {
                self.status = value;
                self.mark_broken(&e.0);
                return;
            }
        }
        self.status = value | (self.status & STATUS_DEVICE_NEEDS_RESET);
    }

    /// The guest notified queue `index`.
    pub fn notify(&mut self, index: usize) {
        if self.status & STATUS_DRIVER_OK == 0 || self.status & STATUS_DEVICE_NEEDS_RESET != 0 {
            return;
        }
        if index >= self.queues.len() || !self.queues[index].ready() {
            return;
        }
        if let Err(e) = self
            .device
            .process_queue(index, &mut self.queues, &self.mem, &self.irq)
        {
            self.mark_broken(&e.0);
        }
    }

    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.device.backend_fd()
    }

    /// Whether the backend fd should be watched now (see [`VirtioDevice::backend_wanted`]).
    pub fn backend_wanted(&self) -> bool {
        self.device.backend_wanted()
    }

    /// The device's backend fd is ready.
    pub fn process_backend(&mut self) {
        let active = self.active();
        if let Err(e) = self
            .device
            .process_backend(&mut self.queues, &self.mem, &self.irq, active)
        {
            self.mark_broken(&e.0);
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let f = self.offered_features();
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self.selected_queue().map_or(0, |q| q.max_size() as u32),
            0x44 => self.selected_queue().map_or(0, |q| q.ready() as u32),
            0x60 => self.irq.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.device_features_sel = v,
            // Features are fixed once FEATURES_OK is set.
            0x20 if self.status & STATUS_FEATURES_OK == 0 => match self.driver_features_sel {
                0 => self.acked_features = (self.acked_features & !0xffff_ffff) | v as u64,
                1 => self.acked_features = (self.acked_features & 0xffff_ffff) | ((v as u64) << 32),
                _ => {}
            },
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 | 0x44 | 0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                if !self.queue_writable() {
                    return;
                }
                let Some(q) = self.selected_queue() else {
                    return;
                };
                match offset {
                    0x38 => q.set_size(v as u16),
                    0x44 => q.set_ready(v == 1),
                    0x80 => q.set_desc_table_address(Some(v), None),
                    0x84 => q.set_desc_table_address(None, Some(v)),
                    0x90 => q.set_avail_ring_address(Some(v), None),
                    0x94 => q.set_avail_ring_address(None, Some(v)),
                    0xa0 => q.set_used_ring_address(Some(v), None),
                    _ => q.set_used_ring_address(None, Some(v)),
                }
            }
            REG_QUEUE_NOTIFY => self.notify(v as usize),
            0x64 => self.irq.ack(v),
            0x70 => self.set_status(v),
            _ => {}
        }
    }
}

/// What a restored transport gets from the new process: the device made for it, guest
/// memory and its interrupt.
pub struct MmioConstructorArgs {
    pub device: Box<dyn VirtioDevice>,
    pub mem: GuestMemoryMmap,
    pub irq: Interrupt,
}

impl Persist<'_> for MmioTransport {
    type State = TransportState;
    type ConstructorArgs = MmioConstructorArgs;
    type Error = PersistError;

    /// The transport's registers and queues for a snapshot.
    fn save(&self) -> TransportState {
        TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            acked_features: self.acked_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            interrupt_status: self.irq.status(),
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
        }
    }

    /// Rebuilds a transport from a snapshot around a device made for the new process; an
    /// active device is activated again with the features the driver acked.
    fn restore(args: MmioConstructorArgs, state: &TransportState) -> Result<Self, PersistError> {
        let MmioConstructorArgs { device, mem, irq } = args;
        if state.device_type != device.device_type() {
            return Err(PersistError::DeviceType {
                saved: state.device_type,
                device: device.device_type(),
            });
        }
        let max_sizes = device.queue_max_sizes();
        if state.queues.len() != max_sizes.len() {
            return Err(PersistError::QueueCount {
                saved: state.queues.len(),
                device: max_sizes.len(),
            });
        }
        let mut queues = Vec::with_capacity(state.queues.len());
        for (q, &max) in state.queues.iter().zip(max_sizes) {
            if q.max_size != max {
                return Err(PersistError::Queue(format!(
                    "max size {} where the device has {max}",
                    q.max_size
                )));
            }
            queues.push(q.to_queue()?);
        }
        irq.set_status(state.interrupt_status);
        let mut t = Self {
            device,
            queues,
            mem,
            irq,
            status: state.status,
            device_features_sel: state.device_features_sel,
            driver_features_sel: state.driver_features_sel,
            acked_features: state.acked_features,
            queue_sel: state.queue_sel,
            config_generation: state.config_generation,
        };
        if t.active() {
            let bad = t
                .queues
                .iter()
                .position(|q| q.ready() && !q.is_valid(&t.mem));
            if let Some(i) = bad {
                t.mark_broken(&format!("restored queue {i} is not valid"));
            } else if let Err(e) = t.device.activate(t.acked_features) {
                t.mark_broken(&e.0);
            }
        }
        Ok(t)
    }
}

impl MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            if self.status & STATUS_DRIVER != 0 {
                self.device.write_config(offset - CONFIG_SPACE, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_reg(offset, v);
    }
}

/// Serves a transport's queue notifications (ioeventfds) and its device's backend fd on the
/// event loop thread. The backend fd is watched (level-triggered) only while the device
/// wants it ([`MmioTransport::backend_wanted`], asked after every event), so a readable
/// fd the device cannot serve (virtio-net without receive buffers) never spins the loop.
pub struct MmioSubscriber {
    transport: Arc<Mutex<MmioTransport>>,
    queue_evts: Vec<EventFd>,
    backend_fd: Option<std::os::fd::RawFd>,
    /// Whether the backend fd is watched for input now.
    backend_armed: bool,
}

/// Event data that marks the device's backend fd.
const BACKEND_EVENT: u32 = u32::MAX;

impl MmioSubscriber {
    pub fn new(transport: Arc<Mutex<MmioTransport>>, queue_evts: Vec<EventFd>) -> Self {
        let backend_fd = transport
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .backend_fd();
        Self {
            transport,
            queue_evts,
            backend_fd,
            backend_armed: false,
        }
    }

    /// Watches the backend fd, or stops, as the device now wants.
    fn sync_backend(&mut self, wanted: bool, ops: &mut EventOps) {
        let Some(fd) = self.backend_fd else {
            return;
        };
        if wanted == self.backend_armed {
            return;
        }
        let set = if wanted {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        match ops.modify(Events::with_data_raw(fd, BACKEND_EVENT, set)) {
            Ok(()) => self.backend_armed = wanted,
            Err(e) => tracing::error!("cannot change the watch on a virtio backend: {e:?}"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MmioTransport> {
        self.transport.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MutEventSubscriber for MmioSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                tracing::error!("cannot watch virtio queue {i}: {e:?}");
            }
        }
        if let Some(fd) = self.backend_fd {
            let wanted = self.lock().backend_wanted();
            let set = if wanted {
                EventSet::IN
            } else {
                EventSet::empty()
            };
            match ops.add(Events::with_data_raw(fd, BACKEND_EVENT, set)) {
                Ok(()) => self.backend_armed = wanted,
                Err(e) => {
                    tracing::error!("cannot watch a virtio backend: {e:?}");
                    self.backend_fd = None;
                }
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let wanted = if events.data() == BACKEND_EVENT {
            if events
                .event_set()
                .intersects(EventSet::ERROR | EventSet::HANG_UP)
            {
                // A backend that failed (a TAP deleted under us) would report so forever:
                // stop watching it for good.
                tracing::warn!("a virtio backend failed; no longer watched");
                let _ = ops.remove(Events::with_data_raw(
                    events.fd(),
                    BACKEND_EVENT,
                    EventSet::empty(),
                ));
                self.backend_fd = None;
                return;
            }
            let mut t = self.lock();
            t.process_backend();
            t.backend_wanted()
        } else {
            let i = events.data() as usize;
            let Some(evt) = self.queue_evts.get(i) else {
                return;
            };
            debug_assert_eq!(evt.as_raw_fd(), events.fd());
            // Drain the counter; several notifies may have been coalesced into one.
            let _ = evt.read();
            let mut t = self.lock();
            t.notify(i);
            t.backend_wanted()
        };
        self.sync_backend(wanted, ops);
    }
}
