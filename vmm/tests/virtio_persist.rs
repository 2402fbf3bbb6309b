//! Saving and restoring a virtio-mmio device: a transport driven to DRIVER_OK comes back
//! from its saved state with the same registers and queues; a saved state that lies (queue
//! sizes, device type, queue count, read-only flag) is refused, and arbitrary saved states
//! never panic the restore.

use proptest::prelude::*;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::devices::mmio_bus::MmioDevice;
use vmm::devices::persist::DeviceState;
use vmm::devices::virtio::block::persist::{BlockConstructorArgs, BlockState};
use vmm::devices::virtio::block::{Block, BlockConfig};
use vmm::devices::virtio::mmio::{MmioConstructorArgs, MmioTransport};
use vmm::devices::virtio::persist::{QueueSnapshot, TransportState};
use vmm::devices::virtio::Interrupt;
use vmm::persist::Persist;
use vmm_sys_util::eventfd::EventFd;

fn disk(read_only: bool) -> BlockConfig {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "persist-{}-{}.img",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, vec![0u8; 64 * 1024]).unwrap();
    BlockConfig { path, read_only }
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

fn irq() -> Interrupt {
    Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
}

fn w32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn restore_block(index: usize, config: &BlockConfig, s: &BlockState) -> Result<Block, String> {
    Block::restore(BlockConstructorArgs { index, config }, s).map_err(|e| e.to_string())
}

fn restore_transport(
    dev: Block,
    mem: GuestMemoryMmap,
    s: &TransportState,
) -> Result<MmioTransport, String> {
    let args = MmioConstructorArgs {
        device: Box::new(dev),
        mem,
        irq: irq(),
    };
    MmioTransport::restore(args, s).map_err(|e| e.to_string())
}

fn r32(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// A block transport the way a driver leaves it: features acked, one queue, DRIVER_OK.
fn active_transport(cfg: &BlockConfig, mem: &GuestMemoryMmap) -> MmioTransport {
    let dev = Block::open(cfg, "skiff-disk0-test").unwrap();
    let mut t = MmioTransport::new(Box::new(dev), mem.clone(), irq());
    w32(&mut t, 0x70, 1 | 2);
    w32(&mut t, 0x24, 1);
    w32(&mut t, 0x20, 1); // VIRTIO_F_VERSION_1
    w32(&mut t, 0x70, 1 | 2 | 8);
    w32(&mut t, 0x30, 0);
    w32(&mut t, 0x38, 128);
    w32(&mut t, 0x80, 0x10000);
    w32(&mut t, 0x90, 0x20000);
    w32(&mut t, 0xa0, 0x30000);
    w32(&mut t, 0x44, 1);
    w32(&mut t, 0x70, 1 | 2 | 8 | 4);
    assert_eq!(r32(&mut t, 0x70), 1 | 2 | 8 | 4);
    t
}

#[test]
fn an_active_transport_comes_back_the_same() {
    let mem = mem();
    let cfg = disk(true);
    let mut t = active_transport(&cfg, &mem);
    let saved = t.save();
    let Some(DeviceState::Block(bs)) = DeviceState::of(t.device()) else {
        panic!("a block device saves block state");
    };
    assert_eq!(bs.serial, "skiff-disk0-test");
    assert!(bs.read_only);
    assert_eq!(saved.queues[0].size, 128);
    assert!(saved.queues[0].ready);

    let other = disk(true);
    let dev = restore_block(0, &other, &bs).unwrap();
    let mut back = restore_transport(dev, mem.clone(), &saved).unwrap();
    assert_eq!(back.save(), saved);
    assert_eq!(DeviceState::of(back.device()), Some(DeviceState::Block(bs)));
    for off in [0x70, 0x34, 0x44, 0x60] {
        assert_eq!(r32(&mut back, off), r32(&mut t, off), "register {off:#x}");
    }
    let _ = std::fs::remove_file(cfg.path);
    let _ = std::fs::remove_file(other.path);
}

#[test]
fn lies_in_a_saved_state_are_refused() {
    let mem = mem();
    let cfg = disk(false);
    let saved = active_transport(&cfg, &mem).save();
    let bs = BlockState {
        read_only: false,
        serial: "x".into(),
        capacity_sectors: 128,
    };
    let restore = |s: &TransportState| {
        let dev = restore_block(0, &cfg, &bs).unwrap();
        restore_transport(dev, mem.clone(), s).map(|_| ())
    };
    let mut bad = saved.clone();
    bad.queues[0].size = 100; // not a power of two
    assert!(restore(&bad).is_err());
    let mut bad = saved.clone();
    bad.queues[0].max_size = 1024;
    assert!(restore(&bad).is_err());
    let mut bad = saved.clone();
    bad.device_type = 19;
    assert!(restore(&bad).is_err());
    let mut bad = saved.clone();
    bad.queues.push(bad.queues[0].clone());
    assert!(restore(&bad).is_err());
    let ro = BlockState {
        read_only: true,
        ..bs.clone()
    };
    let e = restore_block(0, &cfg, &ro)
        .err()
        .expect("ro mismatch refused");
    assert!(e.contains("saved read-only"), "{e}");
    let _ = std::fs::remove_file(cfg.path);
}

fn any_queue() -> impl Strategy<Value = QueueSnapshot> {
    (
        any::<u16>(),
        any::<u16>(),
        any::<bool>(),
        any::<u16>(),
        any::<u16>(),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(max_size, size, ready, na, nu, ei, d, a, u)| QueueSnapshot {
                max_size,
                size,
                ready,
                next_avail: na,
                next_used: nu,
                event_idx: ei,
                desc_table: d,
                avail_ring: a,
                used_ring: u,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn any_saved_transport_state_is_refused_or_restored_without_panic(
        status in any::<u32>(),
        acked in any::<u64>(),
        sel in any::<u32>(),
        irq_status in any::<u32>(),
        mut queues in proptest::collection::vec(any_queue(), 0..3),
        real_sizes in any::<bool>(),
    ) {
        if real_sizes {
            for q in &mut queues {
                q.max_size = 256;
                q.size = 1 << (q.size % 9);
            }
        }
        let mem = mem();
        let cfg = disk(false);
        let s = TransportState {
            device_type: 2,
            status,
            acked_features: acked,
            device_features_sel: sel,
            driver_features_sel: sel,
            queue_sel: sel,
            config_generation: 0,
            interrupt_status: irq_status,
            queues,
        };
        let bs = BlockState { read_only: false, serial: "p".into(), capacity_sectors: 1 };
        let dev = restore_block(0, &cfg, &bs).unwrap();
        if let Ok(mut t) = restore_transport(dev, mem, &s) {
            t.after_restore();
            w32(&mut t, 0x50, 0); // a notify on whatever was restored
            let _ = r32(&mut t, 0x70);
        }
        let _ = std::fs::remove_file(cfg.path);
    }
}
