//! virtio-blk's numbers (virtio 1.x, 5.2) and our limits. Imports nothing.

pub const VIRTIO_ID_BLOCK: u32 = 2;
pub const SECTOR_SHIFT: u64 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
/// Largest request queue a driver may use.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments one request may have (offered as `seg_max`): two of the largest requests
/// fit in the queue at once. Without the feature Linux sends one segment, i.e. one 4 KiB
/// page, per request; measured on PVM, where every request is emulated guest kernel work,
/// a busybox task's start issued 339 reads of 5 KiB on average and spent 2 s in them.
pub const SEG_MAX: u32 = (QUEUE_SIZE as u32) / 2 - 2;

pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Length of the GET_ID answer.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;
