//! One frame between a descriptor chain and a TAP buffer, both ways. Pure logic over guest
//! memory: no TAP, no event loop, so it is tested (and fuzzed by property tests) on its
//! own. Everything the guest wrote is untrusted: a chain too short for the header, a
//! frame over [`MAX_FRAME`], write-only buffers where the device reads (and read-only
//! ones where it writes), addresses outside guest memory, looping chains (virtio-queue
//! stops a chain after queue-size descriptors) — each ends in an error the device
//! counts, never a panic or an unbounded allocation.
//!
//! A TAP packet here is what the TAP reads and writes with `IFF_VNET_HDR` and a vnet
//! header size of [`HDR_LEN`]: the header, then the Ethernet frame.

use std::io::{Read, Write};
use std::ops::Deref;

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::{ETH_HLEN, HDR_LEN, MAX_FRAME, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE};

/// `struct virtio_net_hdr_v1` (virtio 1.x, 5.1.6), little endian, without its union.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct NetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

const _: () = assert!(std::mem::size_of::<NetHdr>() == HDR_LEN);

// SAFETY: NetHdr is plain old data with no padding (u8, u8, then five u16 at even
// offsets: 12 bytes, checked above) and every bit pattern is a valid value.
unsafe impl ByteValued for NetHdr {}

impl NetHdr {
    /// The header of a frame the device hands the guest: no offload, one buffer.
    pub fn plain_rx() -> Self {
        Self {
            num_buffers: 1u16.to_le(),
            ..Default::default()
        }
    }

    /// Whether the header asks for an offload (checksum or segmentation) that nobody
    /// negotiated.
    pub fn wants_offload(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 || self.gso_type != VIRTIO_NET_HDR_GSO_NONE
    }
}

/// Why a chain carried no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a buffer lies outside guest memory")]
    BadAddress,
    #[error("a transmit chain has a device-writable buffer")]
    WriteOnlyInTx,
    #[error("a receive chain has a device-readable buffer")]
    ReadOnlyInRx,
    #[error("the chain is shorter than the {HDR_LEN}-byte header")]
    NoHeader,
    #[error("the frame is shorter than an Ethernet header")]
    FrameTooShort,
    #[error("the frame is longer than {MAX_FRAME} bytes")]
    FrameTooLong,
    #[error("the header asks for an offload that was not negotiated")]
    Offload,
    #[error("the receive buffer is smaller than the frame")]
    BufferTooSmall,
    #[error("the TAP gave a packet without a whole header")]
    ShortPacket,
}

/// Copies the frame of a transmit chain into `out` as a TAP packet: a zeroed header (the
/// guest's header is checked, not passed on), then the frame. `out` must hold
/// `HDR_LEN + MAX_FRAME` bytes. Returns the packet's length.
pub fn tx_packet<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    out: &mut [u8],
) -> Result<usize, FrameError>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    assert!(out.len() >= HDR_LEN + MAX_FRAME, "tx buffer too small");
    if chain.clone().any(|d| d.is_write_only()) {
        return Err(FrameError::WriteOnlyInTx);
    }
    let mut r = Reader::new(mem, chain).map_err(|_| FrameError::BadAddress)?;
    let total = r.available_bytes();
    if total < HDR_LEN {
        return Err(FrameError::NoHeader);
    }
    let len = total - HDR_LEN;
    if len > MAX_FRAME {
        return Err(FrameError::FrameTooLong);
    }
    if len < ETH_HLEN {
        return Err(FrameError::FrameTooShort);
    }
    let hdr: NetHdr = r.read_obj().map_err(|_| FrameError::BadAddress)?;
    if hdr.wants_offload() {
        return Err(FrameError::Offload);
    }
    out[..HDR_LEN].fill(0);
    r.read_exact(&mut out[HDR_LEN..HDR_LEN + len])
        .map_err(|_| FrameError::BadAddress)?;
    Ok(HDR_LEN + len)
}

/// A receive chain checked for use: all of it device-writable, inside guest memory, with
/// room for at least the header.
pub fn rx_writer<'a, M>(
    mem: &'a GuestMemoryMmap,
    chain: DescriptorChain<M>,
) -> Result<Writer<'a>, FrameError>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    if chain.clone().any(|d| !d.is_write_only()) {
        return Err(FrameError::ReadOnlyInRx);
    }
    let w = Writer::new(mem, chain).map_err(|_| FrameError::BadAddress)?;
    if w.available_bytes() < HDR_LEN {
        return Err(FrameError::NoHeader);
    }
    Ok(w)
}

/// Writes the TAP `packet` (header + frame) into a checked receive chain, with the
/// header the guest expects (no offload, one buffer). Returns the bytes written (the used
/// length). A frame that does not fit is dropped whole: nothing is written.
pub fn rx_fill(w: &mut Writer<'_>, packet: &[u8]) -> Result<u32, FrameError> {
    if packet.len() < HDR_LEN {
        return Err(FrameError::ShortPacket);
    }
    let mut tap_hdr = NetHdr::default();
    tap_hdr.as_mut_slice().copy_from_slice(&packet[..HDR_LEN]);
    // Without offloads on the TAP the kernel hands over checksummed, unsegmented frames;
    // anything else could not be passed on correctly.
    if tap_hdr.wants_offload() {
        return Err(FrameError::Offload);
    }
    let frame = &packet[HDR_LEN..];
    if frame.len() > MAX_FRAME {
        return Err(FrameError::FrameTooLong);
    }
    if w.available_bytes() < packet.len() {
        return Err(FrameError::BufferTooSmall);
    }
    w.write_obj(NetHdr::plain_rx())
        .and_then(|()| w.write_all(frame))
        .map_err(|_| FrameError::BadAddress)?;
    Ok(packet.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const F_WRITE: u16 = 2;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    #[test]
    fn tx_frame_split_over_descriptors_is_copied_with_a_zero_header() {
        let mem = mem();
        let mut hdr = [0u8; HDR_LEN];
        hdr[10] = 7; // num_buffers: ignored on transmit
        mem.write_slice(&hdr, GuestAddress(0x1000)).unwrap();
        let frame: Vec<u8> = (0..100u8).collect();
        mem.write_slice(&frame[..40], GuestAddress(0x2000)).unwrap();
        mem.write_slice(&frame[40..], GuestAddress(0x3000)).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        let chain = q
            .build_desc_chain(&[
                desc(0x1000, HDR_LEN as u32, 0),
                desc(0x2000, 40, 0),
                desc(0x3000, 60, 0),
            ])
            .unwrap();
        let mut out = vec![0xffu8; HDR_LEN + MAX_FRAME];
        let n = tx_packet(&mem, chain, &mut out).unwrap();
        assert_eq!(n, HDR_LEN + 100);
        assert_eq!(&out[..HDR_LEN], &[0u8; HDR_LEN]);
        assert_eq!(&out[HDR_LEN..n], &frame[..]);
    }

    #[test]
    fn rx_fill_writes_a_plain_header_and_the_frame() {
        let mem = mem();
        let q = MockSplitQueue::new(&mem, 16);
        let chain = q
            .build_desc_chain(&[desc(0x1000, 8, F_WRITE), desc(0x2000, 2000, F_WRITE)])
            .unwrap();
        let mut packet = vec![0u8; HDR_LEN];
        packet.extend((0..60u8).map(|i| i ^ 0x5a));
        let mut w = rx_writer(&mem, chain).unwrap();
        assert_eq!(rx_fill(&mut w, &packet).unwrap(), (HDR_LEN + 60) as u32);
        let mut got = vec![0u8; 8];
        mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        let mut rest = vec![0u8; 4 + 60];
        mem.read_slice(&mut rest, GuestAddress(0x2000)).unwrap();
        got.extend(rest);
        assert_eq!(&got[..HDR_LEN], NetHdr::plain_rx().as_slice());
        assert_eq!(&got[HDR_LEN..], &packet[HDR_LEN..]);
    }

    #[test]
    fn rx_refuses_small_readonly_and_offloaded() {
        let mem = mem();
        let q = MockSplitQueue::new(&mem, 16);
        let small = q.build_desc_chain(&[desc(0x1000, 11, F_WRITE)]).unwrap();
        assert_eq!(rx_writer(&mem, small).err(), Some(FrameError::NoHeader));
        let ro = q
            .build_desc_chain(&[desc(0x1000, 100, F_WRITE), desc(0x2000, 100, 0)])
            .unwrap();
        assert_eq!(rx_writer(&mem, ro).err(), Some(FrameError::ReadOnlyInRx));
        let fits = q.build_desc_chain(&[desc(0x1000, 40, F_WRITE)]).unwrap();
        let mut w = rx_writer(&mem, fits).unwrap();
        assert_eq!(rx_fill(&mut w, &[0u8; 41]), Err(FrameError::BufferTooSmall));
        let mut gso = vec![0u8; 30];
        gso[1] = 1;
        assert_eq!(rx_fill(&mut w, &gso), Err(FrameError::Offload));
        assert_eq!(rx_fill(&mut w, &[0u8; 5]), Err(FrameError::ShortPacket));
        assert_eq!(w.bytes_written(), 0);
    }
}
