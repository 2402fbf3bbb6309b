//! virtio-net over a host TAP device (opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, its
//! vnet header set to the 12-byte virtio 1.x header). No offloads: the guest sends and gets
//! plain, fully checksummed Ethernet frames, one per descriptor chain. Files: `config.rs`
//! (the `--net` flag and MAC addresses), `frame.rs` (pure descriptor-chain handling,
//! unit- and property-tested), `tap.rs` (the TAP), `device.rs`, `persist.rs`.

mod config;
mod device;
pub mod frame;
pub mod persist;
mod tap;

pub use config::{check_ifname, MacAddr, NetConfig};
pub use device::{Net, NetCounters};
pub use tap::{interface_exists, Tap, TapError};

use virtio_bindings::virtio_ids::VIRTIO_ID_NET as ID_NET;
use virtio_bindings::virtio_net as vn;

/// virtio device ID of a network card.
pub const VIRTIO_ID_NET: u32 = ID_NET;
/// The device has a MAC address in its config space.
pub const VIRTIO_NET_F_MAC: u64 = 1 << vn::VIRTIO_NET_F_MAC;
/// The device reports its link status in its config space.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << vn::VIRTIO_NET_F_STATUS;
/// The link-up bit of the config space's status field.
pub const VIRTIO_NET_S_LINK_UP: u16 = vn::VIRTIO_NET_S_LINK_UP as u16;
/// Header flag: the packet's checksum is partial (only with VIRTIO_NET_F_CSUM).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
/// Header GSO type of a plain packet.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = vn::VIRTIO_NET_HDR_GSO_NONE as u8;

/// Queue indices: one receive and one transmit queue (no multiqueue, no control queue).
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Largest size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1`: the header before every frame, both ways (virtio 1.x).
pub const HDR_LEN: usize = std::mem::size_of::<vn::virtio_net_hdr_v1>();
/// An Ethernet header: no frame is shorter.
pub const ETH_HLEN: usize = 14;
/// Largest frame (after the header) either way: a 64 KiB IP packet, Ethernet and VLAN
/// headers, as Firecracker allows. Anything longer is dropped.
pub const MAX_FRAME: usize = 65562;
/// Frames moved from the TAP per readiness event, so that one busy TAP cannot hold the
/// event loop; the TAP is level-triggered, so the rest comes on the next round.
pub const RX_BATCH: usize = 64;

const _: () = assert!(HDR_LEN == 12);
