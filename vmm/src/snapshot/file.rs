//! The two snapshot files.
//!
//! State file: a 32-byte header, then a JSON payload.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `SKIFFSNP` |
//! | 8 | 4 | format version (little-endian u32), now 1 |
//! | 12 | 4 | reserved, 0 |
//! | 16 | 8 | payload length in bytes (LE u64) |
//! | 24 | 4 | CRC-32 (IEEE) of bytes 0..24 and the payload (LE u32) |
//! | 28 | 4 | reserved, 0 |
//!
//! Memory file: guest RAM, the regions one after the other in guest-address order, pages
//! that are all zero left as holes (a sparse file).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion, GuestRegionMmap,
};

pub const MAGIC: &[u8; 8] = b"SKIFFSNP";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 32;
/// Far above any real state (a 64-vCPU VM's is well under 2 MiB); a bigger length is a lie.
pub const MAX_PAYLOAD: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not a skiff-vmm snapshot state file (bad magic)")]
    Magic(PathBuf),
    #[error(
        "{path}: snapshot format version {found}; this skiff-vmm reads version {FORMAT_VERSION}"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: truncated state file ({len} bytes, the header says {want})")]
    Truncated { path: PathBuf, len: u64, want: u64 },
    #[error("{path}: {extra} bytes after the state payload")]
    Trailing { path: PathBuf, extra: u64 },
    #[error("{path}: payload length {len} is not believable")]
    Length { path: PathBuf, len: u64 },
    #[error("{0}: checksum mismatch: the state file is corrupted")]
    Checksum(PathBuf),
    #[error("{path}: state payload does not parse: {source}")]
    Payload {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("memory file {path} is {len} bytes; the snapshot's guest RAM needs {want}: truncated or not this snapshot's")]
    MemoryTooShort { path: PathBuf, len: u64, want: u64 },
    #[error("memory file {path}: cannot map guest RAM: {reason}")]
    Map { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_owned(),
        source,
    }
}

fn header(payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[..24]);
    crc.update(payload);
    h[24..28].copy_from_slice(&crc.finalize().to_le_bytes());
    h
}

/// Writes `value` as a state file: to a temporary name beside `path`, then renamed, so a
/// reader never sees half a file.
pub fn write_state<T: serde::Serialize>(path: &Path, value: &T) -> Result<u64, FileError> {
    let payload = serde_json::to_vec(value).map_err(|source| FileError::Payload {
        path: path.to_owned(),
        source,
    })?;
    let tmp = path.with_extension("partial");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&header(&payload)).map_err(io(&tmp))?;
    f.write_all(&payload).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok((HEADER_LEN + payload.len()) as u64)
}

/// Checks a state file's bytes (magic, version, length, checksum) and returns its payload.
pub fn check_state_bytes<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], FileError> {
    let p = || path.to_owned();
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        if bytes.len() < 8 && MAGIC.starts_with(bytes) {
            return Err(FileError::Truncated {
                path: p(),
                len: bytes.len() as u64,
                want: HEADER_LEN as u64,
            });
        }
        return Err(FileError::Magic(p()));
    }
    if bytes.len() < HEADER_LEN {
        return Err(FileError::Truncated {
            path: p(),
            len: bytes.len() as u64,
            want: HEADER_LEN as u64,
        });
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(FileError::Version {
            path: p(),
            found: version,
        });
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[16..24]);
    let len = u64::from_le_bytes(len8);
    if len > MAX_PAYLOAD {
        return Err(FileError::Length { path: p(), len });
    }
    let have = (bytes.len() - HEADER_LEN) as u64;
    if have < len {
        return Err(FileError::Truncated {
            path: p(),
            len: bytes.len() as u64,
            want: HEADER_LEN as u64 + len,
        });
    }
    if have > len {
        return Err(FileError::Trailing {
            path: p(),
            extra: have - len,
        });
    }
    let payload = &bytes[HEADER_LEN..];
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[..24]);
    crc.update(payload);
    if crc.finalize() != u32_at(24) {
        return Err(FileError::Checksum(p()));
    }
    Ok(payload)
}

/// Reads, checks and parses a state file.
pub fn read_state<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let payload = check_state_bytes(path, &bytes)?;
    serde_json::from_slice(payload).map_err(|source| FileError::Payload {
        path: path.to_owned(),
        source,
    })
}

const PAGE: usize = 4096;
const CHUNK: usize = 1 << 20;

/// Writes guest RAM to `path`, regions in order, zero pages as holes. Returns the bytes
/// of data actually written (the rest are holes).
pub fn write_memory(path: &Path, mem: &GuestMemoryMmap) -> Result<u64, FileError> {
    let tmp = path.with_extension("partial");
    let f = File::create(&tmp).map_err(io(&tmp))?;
    let mut buf = vec![0u8; CHUNK];
    let (mut file_off, mut written) = (0u64, 0u64);
    for region in mem.iter() {
        let len = region.len();
        let mut off = 0u64;
        while off < len {
            let n = (len - off).min(CHUNK as u64) as usize;
            let addr = region.start_addr().unchecked_add(off);
            mem.read_slice(&mut buf[..n], addr)
                .map_err(|e| FileError::Map {
                    path: path.to_owned(),
                    reason: format!("read guest RAM at {:#x}: {e}", addr.0),
                })?;
            // Runs of non-zero pages, each written with one pwrite.
            let mut p = 0;
            while p < n {
                let end = (p + PAGE).min(n);
                if buf[p..end].iter().all(|&b| b == 0) {
                    p = end;
                    continue;
                }
                let start = p;
                while p < n && !buf[p..(p + PAGE).min(n)].iter().all(|&b| b == 0) {
                    p = (p + PAGE).min(n);
                }
                f.write_all_at(&buf[start..p], file_off + off + start as u64)
                    .map_err(io(&tmp))?;
                written += (p - start) as u64;
            }
            off += n as u64;
        }
        file_off += len;
    }
    f.set_len(file_off).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(written)
}

/// Maps a memory file as guest RAM: private (copy-on-write) mappings of the file, paged in
/// by the kernel as the guest touches them, so every VM restored from one file shares its
/// unchanged pages through the page cache.
pub fn map_memory(
    path: &Path,
    ranges: &[(GuestAddress, usize)],
) -> Result<GuestMemoryMmap, FileError> {
    let file = File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    let want: u64 = ranges.iter().map(|r| r.1 as u64).sum();
    if len < want {
        return Err(FileError::MemoryTooShort {
            path: path.to_owned(),
            len,
            want,
        });
    }
    let map_err = |reason: String| FileError::Map {
        path: path.to_owned(),
        reason,
    };
    let mut regions = Vec::with_capacity(ranges.len());
    let mut offset = 0u64;
    for &(addr, size) in ranges {
        let fd = file.try_clone().map_err(io(path))?;
        let mapping = MmapRegionBuilder::new(size)
            .with_file_offset(FileOffset::new(fd, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_err(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, addr)
            .ok_or_else(|| map_err(format!("region at {:#x} overflows", addr.0)))?;
        regions.push(region);
        offset += size as u64;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_bytes(payload: &[u8]) -> Vec<u8> {
        let mut v = header(payload).to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let p = Path::new("s");
        let good = file_bytes(b"{\"a\":1}");
        assert_eq!(check_state_bytes(p, &good).unwrap(), b"{\"a\":1}");
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            check_state_bytes(p, &flipped),
            Err(FileError::Checksum(_))
        ));
        let mut v = good.clone();
        v[8] = 9;
        assert!(matches!(
            check_state_bytes(p, &v),
            Err(FileError::Version { found: 9, .. })
        ));
        let mut m = good.clone();
        m[0] = b'X';
        assert!(matches!(check_state_bytes(p, &m), Err(FileError::Magic(_))));
        for cut in [0, 5, 20, good.len() - 1] {
            let r = check_state_bytes(p, &good[..cut]);
            assert!(
                matches!(r, Err(FileError::Truncated { .. })),
                "cut at {cut}: {r:?}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            check_state_bytes(p, &long),
            Err(FileError::Trailing { .. })
        ));
        let mut huge = good.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            check_state_bytes(p, &huge),
            Err(FileError::Length { .. })
        ));
        assert!(matches!(
            check_state_bytes(p, b"hello, world, I am text"),
            Err(FileError::Magic(_))
        ));
    }

    #[test]
    fn memory_round_trips_sparse_and_private() {
        let dir = std::env::temp_dir().join(format!("skiff-mem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mem");
        let ranges = [(GuestAddress(0), 1 << 20), (GuestAddress(1 << 30), 2 << 20)];
        let mem = GuestMemoryMmap::from_ranges(&ranges).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(0x1234_u32, GuestAddress((1 << 30) + 0x10_0000))
            .unwrap();
        let written = write_memory(&path, &mem).unwrap();
        assert_eq!(written, 2 * PAGE as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 << 20);
        let back = map_memory(&path, &ranges).unwrap();
        assert_eq!(
            back.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(
            back.read_obj::<u32>(GuestAddress((1 << 30) + 0x10_0000))
                .unwrap(),
            0x1234
        );
        // Writes stay private to the mapping.
        back.write_obj(7_u32, GuestAddress(0x1000)).unwrap();
        let again = map_memory(&path, &ranges).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        let short = dir.join("short");
        std::fs::write(&short, [0u8; 4096]).unwrap();
        assert!(matches!(
            map_memory(&short, &ranges),
            Err(FileError::MemoryTooShort { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
