//! The virtio-blk device: configuration, feature bits, and the queue loop that runs
//! requests (see `request.rs`) and returns them to the guest.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::defs::*;
use super::request::{execute, RequestOutcome};
use crate::devices::virtio::{
    check_avail, DeviceBroken, Interrupt, VirtioDevice, INTERRUPT_USED_RING,
    VIRTIO_RING_F_EVENT_IDX,
};

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk {0} is smaller than one 512-byte sector")]
    TooSmall(PathBuf),
}

/// A disk as given on the command line: `--disk PATH[,ro]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

impl std::str::FromStr for BlockConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (path, opts) = match s.split_once(',') {
            Some((p, o)) => (p, Some(o)),
            None => (s, None),
        };
        if path.is_empty() {
            return Err(format!("--disk '{s}': empty path"));
        }
        let read_only = match opts {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(o) => return Err(format!("--disk '{s}': unknown option '{o}' (ro, rw)")),
        };
        Ok(Self {
            path: path.into(),
            read_only,
        })
    }
}

pub struct Block {
    file: File,
    pub(super) read_only: bool,
    pub(super) capacity_sectors: u64,
    pub(super) id: [u8; VIRTIO_BLK_ID_BYTES],
    /// Capacity the guest saw before a restore, until `after_restore` compares it.
    pub(super) saved_capacity: Option<u64>,
    acked: u64,
    queue_sizes: [u16; 1],
    /// Requests the guest sent that could not even be answered.
    pub dropped: std::sync::atomic::AtomicU64,
}

impl Block {
    pub fn open(config: &BlockConfig, id: &str) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(&config.path)
            .map_err(|source| BlockError::Open {
                path: config.path.clone(),
                source,
            })?;
        let len = file
            .metadata()
            .map_err(|source| BlockError::Open {
                path: config.path.clone(),
                source,
            })?
            .len();
        if len < SECTOR_SIZE {
            return Err(BlockError::TooSmall(config.path.clone()));
        }
        let mut idb = [0u8; VIRTIO_BLK_ID_BYTES];
        let n = id.len().min(VIRTIO_BLK_ID_BYTES);
        idb[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            read_only: config.read_only,
            capacity_sectors: len >> SECTOR_SHIFT,
            id: idb,
            saved_capacity: None,
            acked: 0,
            queue_sizes: [QUEUE_SIZE],
            dropped: Default::default(),
        })
    }

    pub fn path_id(path: &Path, index: usize) -> String {
        format!("skiff-disk{index}")
            + &path
                .file_name()
                .map(|n| format!("-{}", n.to_string_lossy()))
                .unwrap_or_default()
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// `virtio_blk_config` up to `seg_max`: capacity, size_max (not offered: 0), seg_max.
    fn config_bytes(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        c[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
        c
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX | VIRTIO_RING_F_EVENT_IDX;
        if self.read_only {
            f |= VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn activate(&mut self, acked_features: u64) -> Result<(), DeviceBroken> {
        self.acked = acked_features;
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        irq: &Interrupt,
    ) -> Result<(), DeviceBroken> {
        let broken = |e: virtio_queue::Error| DeviceBroken(format!("virtio-blk queue: {e}"));
        let queue = queues
            .get_mut(index)
            .ok_or_else(|| DeviceBroken(format!("virtio-blk has no queue {index}")))?;
        let mut completed = false;
        loop {
            queue.disable_notification(mem).map_err(broken)?;
            check_avail(queue, mem, "virtio-blk")?;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let used = match execute(
                    mem,
                    chain,
                    &self.file,
                    self.capacity_sectors,
                    self.read_only,
                    &self.id,
                ) {
                    RequestOutcome::Done { used, .. } => used,
                    RequestOutcome::Dropped(why) => {
                        tracing::debug!("virtio-blk dropped a request: {why}");
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        0
                    }
                };
                queue.add_used(mem, head, used).map_err(broken)?;
                completed = true;
            }
            if !queue.enable_notification(mem).map_err(broken)? {
                break;
            }
        }
        if completed && queue.needs_notification(mem).map_err(broken)? {
            irq.trigger(INTERRUPT_USED_RING);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.acked = 0;
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn after_restore(
        &mut self,
        _queues: &mut [Queue],
        _mem: &GuestMemoryMmap,
        _irq: &Interrupt,
    ) -> Result<bool, DeviceBroken> {
        // Another disk size: tell the driver, which re-reads the capacity.
        Ok(self
            .saved_capacity
            .take()
            .is_some_and(|c| c != self.capacity_sectors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_flag_parses() {
        let d: BlockConfig = "/a/b.img,ro".parse().unwrap();
        assert_eq!((d.path.to_str().unwrap(), d.read_only), ("/a/b.img", true));
        let d: BlockConfig = "/a/b.img".parse().unwrap();
        assert!(!d.read_only);
        assert!("/a,rx"
            .parse::<BlockConfig>()
            .unwrap_err()
            .contains("unknown option"));
        assert!(",ro".parse::<BlockConfig>().is_err());
    }
}
