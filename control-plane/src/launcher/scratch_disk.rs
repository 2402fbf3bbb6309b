//! A VM's scratch disk: a sparse file with an ext4 file system that the host makes with
//! `mkfs.ext4` and never mounts. The guest mounts it as its upper layer (a build step's
//! writes), so those writes take host disk as they are made, not guest memory, and never
//! more than the file's size: the VMM refuses requests past its end.
//!
//! `mkfs.ext4` is run rather than written here: ext4's on-disk format (checksums, flex
//! groups) is not ours to reimplement, and the host only writes it, never reads it back.

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
    fn too_small_a_disk_is_refused_with_the_minimum() {
        let d = dir("small");
        let e = make_scratch_disk(&d.join("s.img"), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("at least"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
