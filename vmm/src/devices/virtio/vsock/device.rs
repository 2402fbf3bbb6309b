//! The virtio-vsock device: moves packets between the virtqueues and the [`Muxer`].

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::path::PathBuf;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::defs::*;
use super::event;
use super::muxer::Muxer;
use super::packet::{self, Header, HEADER_LEN};
use crate::devices::virtio::{
    check_avail, DeviceBroken, Interrupt, VirtioDevice, INTERRUPT_USED_RING,
    VIRTIO_RING_F_EVENT_IDX,
};

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock: cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `--vsock cid=N,uds=PATH`
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

impl std::str::FromStr for VsockConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut cid, mut uds) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("cid", v)) => {
                    cid = Some(
                        v.parse::<u64>()
                            .map_err(|_| format!("--vsock: bad cid '{v}'"))?,
                    )
                }
                Some(("uds", v)) if !v.is_empty() => uds = Some(PathBuf::from(v)),
                _ => return Err(format!("--vsock '{s}': expected cid=N,uds=PATH")),
            }
        }
        let guest_cid = cid.ok_or_else(|| format!("--vsock '{s}': cid=N missing"))?;
        // 0-2 are reserved (hypervisor, local, host); u32::MAX is VMADDR_CID_ANY.
        if guest_cid < 3 || guest_cid >= u32::MAX as u64 {
            return Err(format!(
                "--vsock: cid {guest_cid} is reserved; use 3 or more"
            ));
        }
        Ok(Self {
            guest_cid,
            uds_path: uds.ok_or_else(|| format!("--vsock '{s}': uds=PATH missing"))?,
        })
    }
}

pub struct Vsock {
    muxer: Muxer,
    queue_sizes: [u16; 3],
    active: bool,
}

impl Vsock {
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        let muxer = Muxer::new(config.guest_cid, &config.uds_path).map_err(|source| {
            VsockError::Listen {
                path: config.uds_path.clone(),
                source,
            }
        })?;
        Ok(Self {
            muxer,
            queue_sizes: [QUEUE_SIZE; 3],
            active: false,
        })
    }

    /// The CID the guest reads from the config space.
    pub fn guest_cid(&self) -> u64 {
        self.muxer.guest_cid
    }

    /// Guest → host: every packet on the TX queue.
    fn process_tx(&mut self, q: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, DeviceBroken> {
        let broken = |e: virtio_queue::Error| DeviceBroken(format!("vsock tx queue: {e}"));
        let mut any = false;
        loop {
            q.disable_notification(mem).map_err(broken)?;
            check_avail(q, mem, "vsock")?;
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                any = true;
                if let Ok(mut r) = Reader::new(mem, chain) {
                    match r.read_obj::<Header>() {
                        Ok(h) => {
                            let avail = r.available_bytes();
                            match packet::validate(&h, avail, self.muxer.guest_cid) {
                                Ok(()) => {
                                    tracing::trace!(?h, "vsock: from guest");
                                    let mut payload = vec![0u8; h.len as usize];
                                    if r.read_exact(&mut payload).is_ok() {
                                        self.muxer.on_guest_packet(&h, &payload);
                                    }
                                }
                                Err(e) => tracing::debug!("vsock: dropped guest packet: {e}"),
                            }
                        }
                        Err(_) => tracing::debug!("vsock: {}", packet::PacketError::ShortHeader),
                    }
                }
                q.add_used(mem, head, 0).map_err(broken)?;
            }
            if !q.enable_notification(mem).map_err(broken)? {
                break;
            }
        }
        Ok(any)
    }

    /// Host → guest: fills RX buffers while the muxer has packets.
    fn process_rx(&mut self, q: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, DeviceBroken> {
        let broken = |e: virtio_queue::Error| DeviceBroken(format!("vsock rx queue: {e}"));
        let mut any = false;
        self.muxer.rx_blocked = false;
        q.disable_notification(mem).map_err(broken)?;
        check_avail(q, mem, "vsock")?;
        while self.muxer.has_rx_work() {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                // Out of buffers: ask to be told when the guest adds some, unless it
                // already did in the meantime.
                if q.enable_notification(mem).map_err(broken)? {
                    q.disable_notification(mem).map_err(broken)?;
                    continue;
                }
                self.muxer.rx_blocked = true;
                return Ok(any);
            };
            let head = chain.head_index();
            let mut w = match Writer::new(mem, chain) {
                Ok(w) if w.available_bytes() >= HEADER_LEN => w,
                _ => {
                    // A buffer too small or bad: return it unused.
                    q.add_used(mem, head, 0).map_err(broken)?;
                    any = true;
                    continue;
                }
            };
            let room = w.available_bytes() - HEADER_LEN;
            let Some(pkt) = self.muxer.next_packet(room) else {
                q.go_to_previous_position();
                break;
            };
            tracing::trace!(header = ?pkt.header, "vsock: to guest");
            let ok = w.write_obj(pkt.header).is_ok() && w.write_all(&pkt.data).is_ok();
            let used = if ok {
                (HEADER_LEN + pkt.data.len()) as u32
            } else {
                0
            };
            q.add_used(mem, head, used).map_err(broken)?;
            any = true;
        }
        q.enable_notification(mem).map_err(broken)?;
        Ok(any)
    }

    fn run(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        irq: &Interrupt,
        tx_first: bool,
    ) -> Result<(), DeviceBroken> {
        let mut tx_used = false;
        if tx_first {
            tx_used = self.process_tx(&mut queues[TX_QUEUE], mem)?;
        }
        let rx_used = self.process_rx(&mut queues[RX_QUEUE], mem)?;
        self.muxer.update_interests();
        let broken = |e: virtio_queue::Error| DeviceBroken(format!("vsock queue: {e}"));
        if (tx_used && queues[TX_QUEUE].needs_notification(mem).map_err(broken)?)
            || (rx_used && queues[RX_QUEUE].needs_notification(mem).map_err(broken)?)
        {
            irq.trigger(INTERRUPT_USED_RING);
        }
        Ok(())
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(
            &self.muxer.guest_cid.to_le_bytes(),
            offset,
            data,
        );
    }

    fn activate(&mut self, _acked_features: u64) -> Result<(), DeviceBroken> {
        self.active = true;
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        irq: &Interrupt,
    ) -> Result<(), DeviceBroken> {
        if queues.len() < 3 {
            return Err(DeviceBroken("vsock needs three queues".into()));
        }
        match index {
            RX_QUEUE | TX_QUEUE => self.run(queues, mem, irq, index == TX_QUEUE),
            // The event queue only carries transport resets, sent on snapshot restore.
            _ => Ok(()),
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.muxer.epoll_fd())
    }

    fn process_backend(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        irq: &Interrupt,
        active: bool,
    ) -> Result<(), DeviceBroken> {
        self.muxer.on_host_events();
        if !(active && self.active) {
            self.muxer.update_interests();
            return Ok(());
        }
        self.run(queues, mem, irq, false)
    }

    fn reset(&mut self) {
        self.active = false;
        self.muxer.reset();
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn after_restore(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        irq: &Interrupt,
    ) -> Result<bool, DeviceBroken> {
        let q = queues
            .get_mut(EVENT_QUEUE)
            .ok_or_else(|| DeviceBroken("vsock needs three queues".into()))?;
        event::send_transport_reset(q, mem, irq)?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_flag_parses() {
        let v: VsockConfig = "cid=3,uds=/tmp/v.sock".parse().unwrap();
        assert_eq!(
            (v.guest_cid, v.uds_path.to_str().unwrap()),
            (3, "/tmp/v.sock")
        );
        assert!("cid=2,uds=/x"
            .parse::<VsockConfig>()
            .unwrap_err()
            .contains("reserved"));
        assert!("cid=3".parse::<VsockConfig>().unwrap_err().contains("uds"));
        assert!("uds=/x".parse::<VsockConfig>().unwrap_err().contains("cid"));
        assert!("cid=x,uds=/x".parse::<VsockConfig>().is_err());
    }
}
