//! Property tests of virtio-net frame handling against guest memory a hostile driver
//! controls: arbitrary transmit and receive chains (zero-length, shorter than the header,
//! longer than the largest frame, wrong directions, looping, outside guest memory) never
//! panic the VMM, are refused with a reason or carry exactly the right bytes.

use proptest::prelude::*;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::net::frame::{rx_fill, rx_writer, tx_packet, FrameError, NetHdr};
use vmm::devices::virtio::net::{ETH_HLEN, HDR_LEN, MAX_FRAME};

const MEM_SIZE: usize = 1 << 20;
const DATA_BASE: u64 = 0x1_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

fn tx_buf() -> Vec<u8> {
    vec![0u8; HDR_LEN + MAX_FRAME]
}

#[test]
fn tx_refuses_short_long_writable_and_offloaded_chains() {
    let mem = mem();
    let q = MockSplitQueue::new(&mem, 16);
    let mut out = tx_buf();
    let cases: Vec<(Vec<RawDescriptor>, FrameError)> = vec![
        (vec![desc(DATA_BASE, 0, 0)], FrameError::NoHeader),
        (vec![desc(DATA_BASE, 11, 0)], FrameError::NoHeader),
        (
            vec![desc(DATA_BASE, 12, 0), desc(DATA_BASE + 0x100, 13, 0)],
            FrameError::FrameTooShort,
        ),
        (
            vec![
                desc(DATA_BASE, 12, 0),
                desc(DATA_BASE, MAX_FRAME as u32 + 1, 0),
            ],
            FrameError::FrameTooLong,
        ),
        (
            vec![desc(DATA_BASE, 12, 0), desc(DATA_BASE + 0x100, 64, F_WRITE)],
            FrameError::WriteOnlyInTx,
        ),
        (
            vec![desc(DATA_BASE, 12, 0), desc(MEM_SIZE as u64 - 8, 64, 0)],
            FrameError::BadAddress,
        ),
    ];
    for (raw, want) in cases {
        let chain = q.build_desc_chain(&raw).unwrap();
        assert_eq!(tx_packet(&mem, chain, &mut out), Err(want), "{raw:?}");
    }
    // A header asking for checksum offload (not negotiated).
    mem.write_slice(&[1u8], GuestAddress(DATA_BASE)).unwrap();
    let chain = q.build_desc_chain(&[desc(DATA_BASE, 12 + 60, 0)]).unwrap();
    assert_eq!(tx_packet(&mem, chain, &mut out), Err(FrameError::Offload));
    // The largest frame passes.
    mem.write_slice(&[0u8], GuestAddress(DATA_BASE)).unwrap();
    let chain = q
        .build_desc_chain(&[desc(DATA_BASE, (HDR_LEN + MAX_FRAME) as u32, 0)])
        .unwrap();
    assert_eq!(tx_packet(&mem, chain, &mut out), Ok(HDR_LEN + MAX_FRAME));
}

#[test]
fn rx_fills_only_chains_that_hold_the_whole_frame() {
    let mem = mem();
    let q = MockSplitQueue::new(&mem, 16);
    let mut packet = vec![0u8; HDR_LEN];
    packet.extend((0..1500u32).map(|i| (i * 13) as u8));
    // 1512 bytes of room for a 1512-byte packet, in three pieces.
    let chain = q
        .build_desc_chain(&[
            desc(DATA_BASE, 100, F_WRITE),
            desc(DATA_BASE + 0x1000, 1000, F_WRITE),
            desc(DATA_BASE + 0x2000, 412, F_WRITE),
        ])
        .unwrap();
    let mut w = rx_writer(&mem, chain).unwrap();
    assert_eq!(rx_fill(&mut w, &packet), Ok(packet.len() as u32));
    let mut got = vec![0u8; 1512];
    mem.read_slice(&mut got[..100], GuestAddress(DATA_BASE))
        .unwrap();
    mem.read_slice(&mut got[100..1100], GuestAddress(DATA_BASE + 0x1000))
        .unwrap();
    mem.read_slice(&mut got[1100..], GuestAddress(DATA_BASE + 0x2000))
        .unwrap();
    let mut hdr = NetHdr::default();
    vm_memory::ByteValued::as_mut_slice(&mut hdr).copy_from_slice(&got[..HDR_LEN]);
    assert_eq!(hdr, NetHdr::plain_rx());
    assert_eq!(&got[HDR_LEN..], &packet[HDR_LEN..]);
    // One byte short: dropped whole, nothing written.
    let chain = q
        .build_desc_chain(&[desc(DATA_BASE + 0x4000, 1511, F_WRITE)])
        .unwrap();
    let mut w = rx_writer(&mem, chain).unwrap();
    assert_eq!(rx_fill(&mut w, &packet), Err(FrameError::BufferTooSmall));
    assert_eq!(w.bytes_written(), 0);
}

fn arb_desc() -> impl Strategy<Value = (u64, u32, u16)> {
    (
        prop_oneof![
            Just(DATA_BASE),
            DATA_BASE..(MEM_SIZE as u64),
            (MEM_SIZE as u64 - 64)..(MEM_SIZE as u64 + 64),
            any::<u64>(),
        ],
        prop_oneof![
            Just(0u32),
            0u32..64,
            0u32..70_000,
            Just(u32::MAX),
            any::<u32>()
        ],
        prop_oneof![Just(0u16), Just(F_WRITE), Just(F_INDIRECT), any::<u16>()],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    /// Whatever a transmit chain looks like, the VMM does not panic; a frame it accepts is
    /// within bounds and is exactly the bytes of the chain after the header.
    #[test]
    fn arbitrary_tx_chains_never_panic(
        descs in proptest::collection::vec(arb_desc(), 1..8),
        hdr in proptest::collection::vec(any::<u8>(), HDR_LEN),
    ) {
        let mem = mem();
        mem.write_slice(&hdr, GuestAddress(DATA_BASE)).unwrap();
        let raw: Vec<RawDescriptor> = descs.iter().map(|(a, l, f)| desc(*a, *l, *f)).collect();
        let q = MockSplitQueue::new(&mem, 16);
        let Ok(chain) = q.build_desc_chain(&raw) else { return Ok(()); };
        let mut out = tx_buf();
        // The descriptors as virtio-queue walks them (it ends a chain past 4 GiB in all).
        let walked: Vec<_> = chain.clone().collect();
        if let Ok(n) = tx_packet(&mem, chain, &mut out) {
            prop_assert!((HDR_LEN + ETH_HLEN..=HDR_LEN + MAX_FRAME).contains(&n));
            prop_assert!(out[..HDR_LEN].iter().all(|&b| b == 0));
            prop_assert!(walked.iter().all(|d| !d.is_write_only()));
            prop_assert_eq!(walked.iter().map(|d| d.len() as usize).sum::<usize>(), n);
        }
    }

    /// Whatever a receive chain looks like, the VMM does not panic, never writes more than
    /// the chain holds, and writes nothing when it refuses.
    #[test]
    fn arbitrary_rx_chains_never_panic(
        descs in proptest::collection::vec(arb_desc(), 1..8),
        frame_len in prop_oneof![0usize..64, 0usize..2000, Just(MAX_FRAME), Just(MAX_FRAME + 1)],
    ) {
        let mem = mem();
        let raw: Vec<RawDescriptor> = descs.iter().map(|(a, l, f)| desc(*a, *l, *f)).collect();
        let q = MockSplitQueue::new(&mem, 16);
        let Ok(chain) = q.build_desc_chain(&raw) else { return Ok(()); };
        let packet = vec![0u8; HDR_LEN + frame_len];
        if let Ok(mut w) = rx_writer(&mem, chain) {
            let room = w.available_bytes();
            match rx_fill(&mut w, &packet) {
                Ok(n) => {
                    prop_assert_eq!(n as usize, packet.len());
                    prop_assert!(n as usize <= room);
                    prop_assert!(frame_len <= MAX_FRAME);
                }
                Err(_) => prop_assert_eq!(w.bytes_written(), 0),
            }
        }
    }

    /// A driver that loops its descriptors (next pointing back) gets the chain refused or
    /// read; the walk is bounded by the queue size, both ways.
    #[test]
    fn descriptor_loops_end(len in 0u32..4096, back in 0u16..3, write in any::<bool>()) {
        let mem = mem();
        let f = if write { F_WRITE } else { 0 };
        let q = MockSplitQueue::new(&mem, 16);
        let raw = [
            RawDescriptor::from(Descriptor::new(DATA_BASE, 12, F_NEXT | f, 1)),
            RawDescriptor::from(Descriptor::new(DATA_BASE + 0x1000, len, F_NEXT | f, 2)),
            RawDescriptor::from(Descriptor::new(DATA_BASE + 0x4000, 64, F_NEXT | f, back)),
        ];
        q.add_desc_chains(&raw, 0).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        if let Some(chain) = queue.pop_descriptor_chain(&mem) {
            if write {
                if let Ok(mut w) = rx_writer(&mem, chain) {
                    let _ = rx_fill(&mut w, &[0u8; 100]);
                }
            } else {
                let _ = tx_packet(&mem, chain, &mut tx_buf());
            }
        }
    }
}
