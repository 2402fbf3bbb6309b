//! Property tests of virtio-blk request handling against guest memory a hostile driver
//! controls: arbitrary descriptor chains (bad addresses, huge lengths, wrong directions,
//! indirect flags) never panic the VMM and always end in an error status or a dropped
//! request; well-formed requests read and write exactly the right bytes.

use std::io::Write;

use proptest::prelude::*;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::block::*;

const MEM_SIZE: usize = 16 << 20;
const DATA_BASE: u64 = 0x10_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const DISK_SECTORS: u64 = 64;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn disk() -> (tempfile_path::TempFile, std::fs::File) {
    let t = tempfile_path::TempFile::new();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&t.0)
        .unwrap();
    let content: Vec<u8> = (0..DISK_SECTORS * SECTOR_SIZE)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    f.write_all(&content).unwrap();
    (t, f)
}

/// A scratch file removed on drop (no extra crate for one helper).
mod tempfile_path {
    pub struct TempFile(pub std::path::PathBuf);
    impl TempFile {
        pub fn new() -> Self {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
                "blk-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::File::create(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

const ID: [u8; VIRTIO_BLK_ID_BYTES] = *b"skiff-test-disk-id!!";

#[test]
fn read_request_returns_file_bytes_and_ok() {
    let mem = mem();
    let (_t, f) = disk();
    header(&mem, DATA_BASE, VIRTIO_BLK_T_IN, 3);
    let q = MockSplitQueue::new(&mem, 16);
    let chain = q
        .build_desc_chain(&[
            desc(DATA_BASE, 16, 0),
            desc(DATA_BASE + 0x1000, 1024, F_WRITE),
            desc(DATA_BASE + 0x2000, 1, F_WRITE),
        ])
        .unwrap();
    let out = execute(&mem, chain, &f, DISK_SECTORS, false, &ID);
    assert_eq!(
        out,
        RequestOutcome::Done {
            status: VIRTIO_BLK_S_OK,
            used: 1025
        }
    );
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(DATA_BASE + 0x1000))
        .unwrap();
    let want: Vec<u8> = (3 * 512..3 * 512 + 1024u64)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(DATA_BASE + 0x2000))
            .unwrap(),
        0
    );
}

/// What a driver sends once `seg_max` is offered: one request whose data lies in several
/// scattered pages, filled in order from consecutive sectors.
#[test]
fn a_read_scattered_over_many_segments_fills_each_in_order() {
    let mem = mem();
    let (_t, f) = disk();
    header(&mem, DATA_BASE, VIRTIO_BLK_T_IN, 2);
    let q = MockSplitQueue::new(&mem, 16);
    // Five segments of different sizes, out of address order, 5 KiB in all.
    let segments = [
        (0x5000u64, 1024u32),
        (0x1000, 512),
        (0x9000, 2048),
        (0x3000, 512),
        (0x7000, 1024),
    ];
    let mut chain = vec![desc(DATA_BASE, 16, 0)];
    chain.extend(
        segments
            .iter()
            .map(|&(off, len)| desc(DATA_BASE + off, len, F_WRITE)),
    );
    chain.push(desc(DATA_BASE + 0xb000, 1, F_WRITE));
    assert!(u32::try_from(chain.len() - 2).unwrap() <= SEG_MAX);
    let out = execute(
        &mem,
        q.build_desc_chain(&chain).unwrap(),
        &f,
        DISK_SECTORS,
        false,
        &ID,
    );
    assert_eq!(
        out,
        RequestOutcome::Done {
            status: VIRTIO_BLK_S_OK,
            used: 5 * 1024 + 1
        }
    );
    let mut at = 2 * SECTOR_SIZE;
    for (off, len) in segments {
        let mut got = vec![0u8; len as usize];
        mem.read_slice(&mut got, GuestAddress(DATA_BASE + off))
            .unwrap();
        let want: Vec<u8> = (at..at + u64::from(len))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        assert_eq!(got, want, "segment at {off:#x}");
        at += u64::from(len);
    }
}

#[test]
fn write_past_the_end_and_write_to_read_only_fail_without_touching_the_file() {
    let mem = mem();
    let (t, f) = disk();
    let before = std::fs::read(&t.0).unwrap();
    for (sector, ro) in [(DISK_SECTORS - 1, false), (0, true), (u64::MAX, false)] {
        header(&mem, DATA_BASE, VIRTIO_BLK_T_OUT, sector);
        let q = MockSplitQueue::new(&mem, 16);
        let chain = q
            .build_desc_chain(&[
                desc(DATA_BASE, 16, 0),
                desc(DATA_BASE + 0x1000, 1024, 0),
                desc(DATA_BASE + 0x2000, 1, F_WRITE),
            ])
            .unwrap();
        let out = execute(&mem, chain, &f, DISK_SECTORS, ro, &ID);
        assert_eq!(
            out,
            RequestOutcome::Done {
                status: VIRTIO_BLK_S_IOERR,
                used: 1
            }
        );
    }
    assert_eq!(std::fs::read(&t.0).unwrap(), before);
}

#[test]
fn get_id_and_unknown_type() {
    let mem = mem();
    let (_t, f) = disk();
    header(&mem, DATA_BASE, VIRTIO_BLK_T_GET_ID, 0);
    let q = MockSplitQueue::new(&mem, 16);
    let chain = q
        .build_desc_chain(&[
            desc(DATA_BASE, 16, 0),
            desc(DATA_BASE + 0x1000, 20, F_WRITE),
            desc(DATA_BASE + 0x2000, 1, F_WRITE),
        ])
        .unwrap();
    assert_eq!(
        execute(&mem, chain, &f, DISK_SECTORS, true, &ID),
        RequestOutcome::Done {
            status: VIRTIO_BLK_S_OK,
            used: 21
        }
    );
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA_BASE + 0x1000))
        .unwrap();
    assert_eq!(id, ID);
    header(&mem, DATA_BASE, 0x77, 0);
    let q = MockSplitQueue::new(&mem, 16);
    let chain = q
        .build_desc_chain(&[desc(DATA_BASE, 16, 0), desc(DATA_BASE + 0x2000, 1, F_WRITE)])
        .unwrap();
    assert_eq!(
        execute(&mem, chain, &f, DISK_SECTORS, true, &ID),
        RequestOutcome::Done {
            status: VIRTIO_BLK_S_UNSUPP,
            used: 1
        }
    );
}

fn arb_desc() -> impl Strategy<Value = (u64, u32, u16)> {
    (
        prop_oneof![
            Just(DATA_BASE),
            DATA_BASE..(MEM_SIZE as u64),
            (MEM_SIZE as u64 - 64)..(MEM_SIZE as u64 + 64),
            any::<u64>(),
        ],
        prop_oneof![0u32..64, 0u32..8192, Just(u32::MAX), any::<u32>()],
        prop_oneof![Just(0u16), Just(F_WRITE), Just(F_INDIRECT), any::<u16>()],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    /// Whatever the chain looks like, the VMM does not panic, writes at most a status byte
    /// of a known value, and never claims more bytes used than the chain could hold.
    #[test]
    fn arbitrary_chains_never_panic(
        descs in proptest::collection::vec(arb_desc(), 1..8),
        kind in prop_oneof![Just(0u32), Just(1), Just(4), Just(8), any::<u32>()],
        sector in prop_oneof![0u64..DISK_SECTORS, any::<u64>()],
        read_only in any::<bool>(),
    ) {
        let mem = mem();
        let (_t, f) = disk();
        header(&mem, DATA_BASE, kind, sector);
        let raw: Vec<RawDescriptor> = descs.iter().map(|(a, l, fl)| desc(*a, *l, *fl)).collect();
        let q = MockSplitQueue::new(&mem, 16);
        let Ok(chain) = q.build_desc_chain(&raw) else { return Ok(()); };
        let writable: u64 = descs
            .iter()
            .filter(|(_, _, fl)| fl & F_WRITE != 0)
            .map(|(_, l, _)| *l as u64)
            .sum();
        match execute(&mem, chain, &f, DISK_SECTORS, read_only, &ID) {
            RequestOutcome::Done { status, used } => {
                prop_assert!(status <= VIRTIO_BLK_S_UNSUPP);
                prop_assert!(used as u64 <= writable.max(1));
            }
            RequestOutcome::Dropped(_) => {}
        }
    }

    /// A guest that loops its descriptors (next pointing back) gets its request dropped or
    /// answered; the walk is bounded by the queue size.
    #[test]
    fn descriptor_loops_end(len in 1u32..4096, back in 0u16..3) {
        let mem = mem();
        let (_t, f) = disk();
        header(&mem, DATA_BASE, VIRTIO_BLK_T_IN, 0);
        let q = MockSplitQueue::new(&mem, 16);
        let raw = [
            RawDescriptor::from(Descriptor::new(DATA_BASE, 16, F_NEXT, 1)),
            RawDescriptor::from(Descriptor::new(DATA_BASE + 0x1000, len, F_WRITE | F_NEXT, 2)),
            RawDescriptor::from(Descriptor::new(DATA_BASE + 0x4000, 1, F_WRITE | F_NEXT, back)),
        ];
        q.add_desc_chains(&raw, 0).unwrap();
        let mut queue: virtio_queue::Queue = q.create_queue().unwrap();
        use virtio_queue::QueueT;
        if let Some(chain) = queue.pop_descriptor_chain(&mem) {
            let _ = execute(&mem, chain, &f, DISK_SECTORS, false, &ID);
        }
    }
}
