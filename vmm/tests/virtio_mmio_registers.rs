//! The virtio-mmio transport under a hostile driver: any sequence of register reads and
//! writes, of any width, leaves the VMM running; a queue placed outside guest memory puts
//! the device into DEVICE_NEEDS_RESET instead of being used; a reset brings it back.

use proptest::prelude::*;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::devices::mmio_bus::MmioDevice;
use vmm::devices::virtio::block::{Block, BlockConfig};
use vmm::devices::virtio::mmio::MmioTransport;
use vmm::devices::virtio::{Interrupt, STATUS_DEVICE_NEEDS_RESET};
use vmm_sys_util::eventfd::EventFd;

fn transport() -> (MmioTransport, std::path::PathBuf) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "mmio-{}-{}.img",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, vec![0u8; 64 * 1024]).unwrap();
    let cfg = BlockConfig {
        path: path.clone(),
        read_only: false,
    };
    let dev = Block::open(&cfg, "fuzz").unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    (MmioTransport::new(Box::new(dev), mem, irq), path)
}

fn w32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r32(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn queue_outside_memory_needs_reset_and_reset_recovers() {
    let (mut t, path) = transport();
    assert_eq!(r32(&mut t, 0), 0x7472_6976);
    assert_eq!(r32(&mut t, 8), 2); // block
    w32(&mut t, 0x70, 1 | 2); // ACKNOWLEDGE | DRIVER
    w32(&mut t, 0x24, 1);
    w32(&mut t, 0x20, 1); // VIRTIO_F_VERSION_1 (bit 32)
    w32(&mut t, 0x70, 1 | 2 | 8); // FEATURES_OK
    assert_ne!(r32(&mut t, 0x70) & 8, 0, "features accepted");
    w32(&mut t, 0x30, 0);
    w32(&mut t, 0x38, 256);
    w32(&mut t, 0x80, 0xffff_0000); // descriptor table far outside 16 MiB
    w32(&mut t, 0x84, 0x10);
    w32(&mut t, 0x44, 1);
    w32(&mut t, 0x70, 1 | 2 | 8 | 4); // DRIVER_OK
    assert_ne!(r32(&mut t, 0x70) & STATUS_DEVICE_NEEDS_RESET, 0);
    w32(&mut t, 0x50, 0); // notify: ignored while broken
    w32(&mut t, 0x70, 0);
    assert_eq!(r32(&mut t, 0x70), 0);
    let _ = std::fs::remove_file(path);
}

#[test]
fn unknown_features_are_refused() {
    let (mut t, path) = transport();
    w32(&mut t, 0x70, 1 | 2);
    w32(&mut t, 0x24, 0);
    w32(&mut t, 0x20, 1 << 31); // a feature we never offered
    w32(&mut t, 0x70, 1 | 2 | 8);
    assert_eq!(r32(&mut t, 0x70) & 8, 0);
    let _ = std::fs::remove_file(path);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn any_register_traffic_is_survived(
        ops in proptest::collection::vec(
            (any::<bool>(), 0u64..0x140, any::<u32>(), prop_oneof![Just(1usize), Just(2), Just(4), Just(8)]),
            1..200,
        )
    ) {
        let (mut t, path) = transport();
        for (write, off, v, len) in ops {
            let bytes = (v as u64).to_le_bytes();
            if write {
                t.write(off, &bytes[..len]);
            } else {
                let mut b = vec![0u8; len];
                t.read(off, &mut b);
            }
        }
        let _ = std::fs::remove_file(path);
    }
}
