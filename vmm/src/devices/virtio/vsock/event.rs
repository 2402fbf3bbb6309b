//! The vsock event queue: its only event, the transport reset a restored guest is sent so
//! that it drops every connection (their host ends belonged to the old process) and
//! re-reads its CID.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

use crate::devices::virtio::{DeviceBroken, Interrupt, INTERRUPT_USED_RING};

/// `struct virtio_vsock_event { le32 id; }` with id = TRANSPORT_RESET.
pub const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
const EVENT_LEN: u32 = 4;

/// Puts one transport-reset event in the guest's event queue and interrupts it. A guest
/// with no event buffer posted cannot be told; that is logged, not fatal.
pub fn send_transport_reset(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    irq: &Interrupt,
) -> Result<(), DeviceBroken> {
    let broken = |e: virtio_queue::Error| DeviceBroken(format!("vsock event queue: {e}"));
    crate::devices::virtio::check_avail(q, mem, "vsock")?;
    let Some(chain) = q.pop_descriptor_chain(mem) else {
        tracing::warn!("vsock: no event buffer from the guest; transport reset not sent");
        return Ok(());
    };
    let head = chain.head_index();
    let desc = chain
        .clone()
        .find(|d| d.is_write_only() && d.len() >= EVENT_LEN);
    let used = match desc {
        Some(d) => {
            mem.write_obj(VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le(), d.addr())
                .map_err(|e| DeviceBroken(format!("vsock event buffer: {e}")))?;
            EVENT_LEN
        }
        None => {
            tracing::warn!("vsock: event buffer too small; transport reset not sent");
            0
        }
    };
    q.add_used(mem, head, used).map_err(broken)?;
    if q.needs_notification(mem).map_err(broken)? {
        irq.trigger(INTERRUPT_USED_RING);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    const F_WRITE: u16 = 2;
    const BUF: u64 = 0x10_0000;

    fn setup() -> (GuestMemoryMmap, Interrupt) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        (mem, irq)
    }

    #[test]
    fn transport_reset_fills_one_event_buffer_and_interrupts() {
        let (mem, irq) = setup();
        mem.write_obj(0xffff_ffff_u32, GuestAddress(BUF)).unwrap();
        let mq = MockSplitQueue::new(&mem, 16);
        let descs = [
            RawDescriptor::from(Descriptor::new(BUF, 4, F_WRITE, 0)),
            RawDescriptor::from(Descriptor::new(BUF + 0x100, 4, F_WRITE, 0)),
        ];
        mq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        send_transport_reset(&mut q, &mem, &irq).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(BUF)).unwrap(), 0);
        assert_eq!(
            q.next_used(),
            1,
            "one buffer used, the other left for later"
        );
        let used_len: u32 = mem.read_obj(mq.used_addr().unchecked_add(4 + 4)).unwrap();
        assert_eq!(used_len, EVENT_LEN);
        assert_ne!(irq.status() & INTERRUPT_USED_RING, 0);
    }

    #[test]
    fn no_buffer_or_a_read_only_one_is_not_an_error() {
        let (mem, irq) = setup();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().unwrap();
        send_transport_reset(&mut q, &mem, &irq).unwrap();
        assert_eq!(q.next_used(), 0);
        let ro = [RawDescriptor::from(Descriptor::new(BUF, 4, 0, 0))];
        mq.add_desc_chains(&ro, 0).unwrap();
        send_transport_reset(&mut q, &mem, &irq).unwrap();
        // Returned unused (length 0), never written.
        assert_eq!(q.next_used(), 1);
        assert_eq!(mem.read_obj::<u32>(GuestAddress(BUF)).unwrap(), 0);
    }
}
