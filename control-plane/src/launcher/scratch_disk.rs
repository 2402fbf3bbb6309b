//! A VM's scratch disk: a sparse file with an ext4 file system that the host makes with
//! `mkfs.ext4` and never mounts. The guest mounts it as its upper layer (a build step's
//! writes), so those writes take host disk as they are made, not guest memory, and never
//! more than the file's size: the VMM refuses requests past its end.
//!
//! `mkfs.ext4` is run rather than written here: ext4's on-disk format (checksums, flex
//! groups) is not ours to reimplement, and the host only writes it, never reads it back.
//!
//! A VM restored from a build shape's snapshot had its scratch disk mounted when the
//! snapshot was taken: it gets a copy of that disk (the snapshot's template), whose
//! blocks are what its kernel has cached; the copy takes only the blocks written.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The guest device a scratch disk shows as: the second disk, after the image's.
pub const GUEST_DEVICE: &str = "/dev/vdb";

/// The smallest scratch disk: room for ext4's own metadata and a little more.
pub const MIN_BYTES: u64 = 64 << 20;

/// ext4 features, named in full so that a host whose `mke2fs.conf` turns on newer ones
/// still makes a file system the guest kernel (6.1) mounts. No journal: the disk lives as
/// long as one VM. `uninit_bg` lets block groups stay uninitialised, so `mkfs` writes a
/// few hundred KiB whatever the size; it checksums only the group descriptors, where
/// `metadata_csum` would checksum every metadata block the guest writes (a cost on every
/// file operation, and guest kernel code is expensive on an emulating host).
const FEATURES: &str = "none,ext_attr,dir_index,filetype,extent,flex_bg,sparse_super,\
large_file,huge_file,dir_nlink,extra_isize,64bit,uninit_bg";

#[derive(Debug, thiserror::Error)]
pub enum ScratchDiskError {
    #[error("scratch disk {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("scratch disk of {0} bytes: at least {MIN_BYTES} are needed")]
    TooSmall(u64),
    #[error("mkfs.ext4 on {path}: {why} (is e2fsprogs installed?)")]
    Mkfs { path: PathBuf, why: String },
    #[error("scratch disk template {path} holds {found} bytes, the disk is to hold {wanted}")]
    TemplateSize {
        path: PathBuf,
        found: u64,
        wanted: u64,
    },
}

/// A VM's scratch disk: its file on the host and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchDisk {
    pub path: PathBuf,
    pub bytes: u64,
}

impl ScratchDisk {
    /// The disk's size as made: whole 4 KiB blocks.
    pub fn made_bytes(&self) -> u64 {
        self.bytes & !4095
    }

    /// Makes the disk: an empty ext4 file system ([`make_scratch_disk`]).
    pub fn make(&self) -> Result<(), ScratchDiskError> {
        make_scratch_disk(&self.path, self.bytes)
    }

    /// Makes the disk a copy of `template` (a snapshot's, of the same size), copying only
    /// its written ranges, so the copy is as sparse as the template.
    pub fn copy_of(&self, template: &Path) -> Result<(), ScratchDiskError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ScratchDiskError::Io { path, source }
        };
        let src = std::fs::File::open(template).map_err(io(template))?;
        let found = src.metadata().map_err(io(template))?.len();
        if found != self.made_bytes() {
            return Err(ScratchDiskError::TemplateSize {
                path: template.to_owned(),
                found,
                wanted: self.made_bytes(),
            });
        }
        let _ = std::fs::remove_file(&self.path);
        let dst = std::fs::File::create(&self.path).map_err(io(&self.path))?;
        dst.set_len(found).map_err(io(&self.path))?;
        copy_written_ranges(&src, &dst, found).map_err(|e| {
            let _ = std::fs::remove_file(&self.path);
            ScratchDiskError::Io {
                path: self.path.clone(),
                source: e,
            }
        })
    }
}

/// Copies the data ranges of `src` (as `SEEK_DATA` and `SEEK_HOLE` find them, up to
/// `len`) to the same offsets of `dst`, leaving its holes as holes. Written here rather
/// than taken from a crate: it is a short loop over two calls rustix already has.
fn copy_written_ranges(src: &std::fs::File, dst: &std::fs::File, len: u64) -> std::io::Result<()> {
    use rustix::fs::{copy_file_range, seek, SeekFrom};
    let mut at = 0u64;
    while at < len {
        let start = match seek(src, SeekFrom::Data(at)) {
            Ok(s) => s,
            // No data past `at`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = seek(src, SeekFrom::Hole(start))?.min(len);
        let (mut from, mut to) = (start, start);
        while from < end {
            let chunk = usize::try_from(end - from)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            let n = copy_file_range(src, Some(&mut from), dst, Some(&mut to), chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the template ended while being copied",
                ));
            }
        }
        at = end;
    }
    Ok(())
}

/// Makes `path` a sparse file of `bytes` (rounded down to 4 KiB blocks) holding an empty
/// ext4 file system whose root is owned by root. An existing file is replaced.
pub fn make_scratch_disk(path: &Path, bytes: u64) -> Result<(), ScratchDiskError> {
    if bytes < MIN_BYTES {
        return Err(ScratchDiskError::TooSmall(bytes));
    }
    let io = |source| ScratchDiskError::Io {
        path: path.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(path);
    std::fs::File::create(path)
        .and_then(|f| f.set_len(bytes & !4095))
        .map_err(io)?;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-m", "0", "-O", FEATURES])
        .args(["-E", "nodiscard,lazy_itable_init=1,root_owner=0:0"])
        .args(["-L", "skiff-scratch"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| ScratchDiskError::Mkfs {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(path);
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(ScratchDiskError::Mkfs {
            path: path.to_owned(),
            why: format!(
                "{} ({})",
                err.trim().lines().last().unwrap_or("no message"),
                out.status
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("skiff-scratch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_large_disk_is_sparse_and_holds_ext4() {
        let d = dir("large");
        let p = d.join("scratch.img");
        make_scratch_disk(&p, 8 << 30).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 8 << 30);
        // A few hundred KiB of metadata, not the inode tables of 8 GiB.
        assert!(
            m.blocks() * 512 < 8 << 20,
            "{} bytes written",
            m.blocks() * 512
        );
        let mut sb = [0u8; 2048];
        use std::io::Read;
        std::fs::File::open(&p)
            .unwrap()
            .read_exact(&mut sb)
            .unwrap();
        // ext4's magic at byte 0x38 of the superblock, which starts at 1024.
        assert_eq!(&sb[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_copy_holds_the_templates_bytes_and_stays_sparse() {
        use std::io::{Seek, SeekFrom, Write};
        let d = dir("copy");
        let template = d.join("template.img");
        make_scratch_disk(&template, 256 << 20).unwrap();
        // Data far from mkfs's own, as a guest's mount leaves in other groups.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&template)
            .unwrap();
        f.seek(SeekFrom::Start(200 << 20)).unwrap();
        f.write_all(b"written by the guest").unwrap();
        drop(f);
        let disk = ScratchDisk {
            path: d.join("copy.img"),
            bytes: 256 << 20,
        };
        disk.copy_of(&template).unwrap();
        let (a, b) = (
            std::fs::read(&template).unwrap(),
            std::fs::read(&disk.path).unwrap(),
        );
        assert!(a == b, "the copy differs from its template");
        let m = std::fs::metadata(&disk.path).unwrap();
        assert!(
            m.blocks() * 512 < 8 << 20,
            "{} bytes taken",
            m.blocks() * 512
        );
        // A template of another size is refused, naming both.
        let other = ScratchDisk {
            path: d.join("other.img"),
            bytes: 512 << 20,
        };
        let e = other.copy_of(&template).unwrap_err().to_string();
        assert!(e.contains("268435456") && e.contains("536870912"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn too_small_a_disk_is_refused_with_the_minimum() {
        let d = dir("small");
        let e = make_scratch_disk(&d.join("s.img"), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("at least"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
