//! One virtio-blk request, from descriptor chain to status byte. Pure logic over guest
//! memory and a backing file: no event loop, so it is tested (and fuzzed by property tests)
//! on its own. Everything the guest wrote is untrusted: a short header, a missing status
//! byte, data past the end of the disk, a huge declared length — each ends in an error
//! status or a dropped request, never a panic or an unbounded allocation.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::defs::*;

/// Bytes moved between the file and guest memory per step.
const CHUNK: usize = 64 * 1024;

#[derive(Clone, Copy, Default, Debug)]
#[repr(C)]
struct RequestHeader {
    kind: u32,
    _reserved: u32,
    sector: u64,
}

// SAFETY: RequestHeader is plain old data with no padding (u32, u32, u64) and every bit
// pattern is a valid value.
unsafe impl ByteValued for RequestHeader {}

/// What became of one request.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Completed with this status; `used` bytes were written to the guest (data + status).
    Done { status: u8, used: u32 },
    /// Malformed beyond answering (no room for a status byte): returned with 0 bytes used.
    Dropped(&'static str),
}

fn status_only(status: u8, data_written: usize) -> RequestOutcome {
    RequestOutcome::Done {
        status,
        used: data_written as u32 + 1,
    }
}

/// Executes the request in `chain` against `disk`.
pub fn execute<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    disk: &File,
    capacity_sectors: u64,
    read_only: bool,
    device_id: &[u8; VIRTIO_BLK_ID_BYTES],
) -> RequestOutcome
where
    M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
{
    let Ok(mut reader) = Reader::new(mem, chain.clone()) else {
        return RequestOutcome::Dropped("bad readable descriptors");
    };
    let Ok(mut writer) = Writer::new(mem, chain) else {
        return RequestOutcome::Dropped("bad writable descriptors");
    };
    let writable = writer.available_bytes();
    if writable == 0 {
        return RequestOutcome::Dropped("no status byte");
    }
    // The status byte is the last writable byte; everything before it is data space.
    let Ok(mut status_writer) = writer.split_at(writable - 1) else {
        return RequestOutcome::Dropped("bad writable descriptors");
    };
    let outcome = match reader.read_obj::<RequestHeader>() {
        Err(_) => status_only(VIRTIO_BLK_S_IOERR, 0),
        Ok(hdr) => run(
            &hdr,
            &mut reader,
            &mut writer,
            disk,
            capacity_sectors,
            read_only,
            device_id,
        ),
    };
    if let RequestOutcome::Done { status, .. } = outcome {
        if status_writer.write_all(&[status]).is_err() {
            return RequestOutcome::Dropped("status byte not writable");
        }
    }
    outcome
}

fn run(
    hdr: &RequestHeader,
    reader: &mut Reader<'_>,
    writer: &mut Writer<'_>,
    disk: &File,
    capacity_sectors: u64,
    read_only: bool,
    device_id: &[u8; VIRTIO_BLK_ID_BYTES],
) -> RequestOutcome {
    let in_range = |len: usize| -> Option<u64> {
        if len as u64 % SECTOR_SIZE != 0 {
            return None;
        }
        let sectors = len as u64 >> SECTOR_SHIFT;
        let end = hdr.sector.checked_add(sectors)?;
        (end <= capacity_sectors).then_some(hdr.sector << SECTOR_SHIFT)
    };
    match hdr.kind {
        VIRTIO_BLK_T_IN => {
            let len = writer.available_bytes();
            let Some(offset) = in_range(len) else {
                return status_only(VIRTIO_BLK_S_IOERR, 0);
            };
            match copy_file_to_guest(disk, offset, len, writer) {
                Ok(()) => status_only(VIRTIO_BLK_S_OK, len),
                Err(done) => status_only(VIRTIO_BLK_S_IOERR, done),
            }
        }
        VIRTIO_BLK_T_OUT => {
            let len = reader.available_bytes();
            if read_only {
                return status_only(VIRTIO_BLK_S_IOERR, 0);
            }
            let Some(offset) = in_range(len) else {
                return status_only(VIRTIO_BLK_S_IOERR, 0);
            };
            match copy_guest_to_file(reader, disk, offset, len) {
                Ok(()) => status_only(VIRTIO_BLK_S_OK, 0),
                Err(()) => status_only(VIRTIO_BLK_S_IOERR, 0),
            }
        }
        VIRTIO_BLK_T_FLUSH => {
            if read_only {
                return status_only(VIRTIO_BLK_S_OK, 0);
            }
            match disk.sync_data() {
                Ok(()) => status_only(VIRTIO_BLK_S_OK, 0),
                Err(e) => {
                    tracing::warn!("virtio-blk flush failed: {e}");
                    status_only(VIRTIO_BLK_S_IOERR, 0)
                }
            }
        }
        VIRTIO_BLK_T_GET_ID => {
            let n = writer.available_bytes().min(VIRTIO_BLK_ID_BYTES);
            match writer.write_all(&device_id[..n]) {
                Ok(()) => status_only(VIRTIO_BLK_S_OK, n),
                Err(_) => status_only(VIRTIO_BLK_S_IOERR, 0),
            }
        }
        _ => status_only(VIRTIO_BLK_S_UNSUPP, 0),
    }
}

/// Copies `len` bytes at `offset` of the file into the guest; on failure, how many bytes
/// reached the guest.
fn copy_file_to_guest(
    disk: &File,
    offset: u64,
    len: usize,
    w: &mut Writer<'_>,
) -> Result<(), usize> {
    let mut buf = vec![0u8; CHUNK.min(len)];
    let mut done = 0usize;
    while done < len {
        let n = CHUNK.min(len - done);
        if let Err(e) = disk.read_exact_at(&mut buf[..n], offset + done as u64) {
            tracing::warn!("virtio-blk read at {} failed: {e}", offset + done as u64);
            return Err(done);
        }
        if w.write_all(&buf[..n]).is_err() {
            return Err(done);
        }
        done += n;
    }
    Ok(())
}

fn copy_guest_to_file(r: &mut Reader<'_>, disk: &File, offset: u64, len: usize) -> Result<(), ()> {
    let mut buf = vec![0u8; CHUNK.min(len)];
    let mut done = 0usize;
    while done < len {
        let n = CHUNK.min(len - done);
        r.read_exact(&mut buf[..n]).map_err(|_| ())?;
        if let Err(e) = disk.write_all_at(&buf[..n], offset + done as u64) {
            tracing::warn!("virtio-blk write at {} failed: {e}", offset + done as u64);
            return Err(());
        }
        done += n;
    }
    Ok(())
}
