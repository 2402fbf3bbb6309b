//! The container's root: the image disk mounted read-only (EROFS, else ext4), an upper for
//! writes (a size-limited tmpfs, or for a build step an ext4 scratch disk the host made),
//! overlayfs over both, and the kernel file systems inside it.

use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;

use guest_agent::{FailureKind, RunSpec};

pub const ROOT: &str = "/run/container/root";
/// The image, read-only.
pub const LOWER: &str = "/run/container/image";
const RW: &str = "/run/container/rw";
/// The container's writes (overlayfs's upper folder).
pub const UPPER: &str = "/run/container/rw/upper";

fn mkdir_all(p: &str) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(|e| format!("mkdir {p}: {e}"))
}

// BLKFLSBUF = _IO(0x12, 97): write back and drop the block device's cached blocks.
nix::ioctl_none!(blk_flush_buffers, 0x12, 97);

/// A VM restored from a snapshot may hold blocks of the disk that was attached when the
/// snapshot was taken (the partition scan at boot reads some); the disk behind /dev/vda
/// is another one now, so those blocks must go before the file system is mounted.
fn drop_cached_blocks(disk: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(disk).map_err(|e| format!("open {disk}: {e}"))?;
    // SAFETY: BLKFLSBUF takes no argument; the fd is an open block device that lives
    // across the call.
    unsafe { blk_flush_buffers(f.as_raw_fd()) }.map_err(|e| format!("BLKFLSBUF {disk}: {e}"))?;
    Ok(())
}

fn fail(kind: FailureKind, message: String) -> (FailureKind, String) {
    (kind, message)
}

/// Where the container's writes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upper<'a> {
    /// A tmpfs of this many MiB (a task's: its writes live in its memory).
    Memory { size_mib: u64 },
    /// An ext4 file system on this block device, made by the host (a build step's, whose
    /// writes may be larger than its memory). `/tmp` is then part of the root, as in a
    /// Docker build, so what a step leaves there is in its layer.
    Disk { device: &'a str },
    /// As `Disk`, already mounted at [`RW`] before the VM's snapshot was taken
    /// ([`mount_scratch`]); the disk now behind the device is a copy of that one.
    MountedDisk,
}

impl<'a> Upper<'a> {
    /// The upper a run spec asks for, in a VM whose agent mounted the scratch disk on
    /// `mounted` before (a restored build snapshot's). A spec naming another device than
    /// the one mounted is refused: the kernel's cached blocks are of that one.
    pub fn of(spec: &'a RunSpec, mounted: Option<&str>) -> Result<Self, (FailureKind, String)> {
        match (spec.scratch_disk.as_str(), mounted) {
            ("", _) => Ok(Upper::Memory {
                size_mib: spec.upper_size_mib,
            }),
            (device, None) => Ok(Upper::Disk { device }),
            (device, Some(m)) if device == m => Ok(Upper::MountedDisk),
            (device, Some(m)) => Err(fail(
                FailureKind::Internal,
                format!("the run spec's scratch disk is {device}, this VM has {m} mounted"),
            )),
        }
    }
}

/// ext4 mount options for a scratch disk. The host made the file system on a fresh sparse
/// file, so its inode tables already read as zeros: the kernel need not write them
/// (noinit_itable). It lives as long as the VM: no background reading of the block
/// bitmaps, no map of every group's metadata to check block numbers against (work per
/// block group at mount, which an emulating host makes slow), no access times.
const SCRATCH_OPTIONS: &str =
    "noinit_itable,no_prefetch_block_bitmaps,noblock_validity,errors=remount-ro";

/// Mounts the ext4 file system on `device` at [`RW`].
fn mount_scratch_disk(device: &str) -> Result<(), (FailureKind, String)> {
    if !std::path::Path::new(device).exists() {
        return Err(fail(
            FailureKind::Internal,
            format!("scratch disk {device} does not exist in the guest"),
        ));
    }
    // As for the image disk: a restored VM may hold the placeholder's blocks.
    if let Err(e) = drop_cached_blocks(device) {
        eprintln!("skiff-agent: {e}");
    }
    mount(
        Some(device),
        RW,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
        Some(SCRATCH_OPTIONS),
    )
    .map_err(|e| {
        fail(
            FailureKind::Internal,
            format!("scratch disk {device} as ext4: {e}"),
        )
    })
}

/// Mounts the scratch disk on `device` at [`RW`] with the upper's folders in it, and
/// writes it all back to the disk: a build shape's snapshot is taken next, and the VMs
/// restored from it get a copy of the disk as it is now, which must be what this kernel
/// believes is on it.
pub fn mount_scratch(device: &str) -> Result<(), (FailureKind, String)> {
    mkdir_all(RW).map_err(|m| fail(FailureKind::Internal, m))?;
    mount_scratch_disk(device)?;
    for d in ["upper", "work"] {
        mkdir_all(&format!("{RW}/{d}")).map_err(|m| fail(FailureKind::Internal, m))?;
    }
    let rw = std::fs::File::open(RW)
        .map_err(|e| fail(FailureKind::Internal, format!("open {RW}: {e}")))?;
    nix::unistd::syncfs(&rw).map_err(|e| fail(FailureKind::Internal, format!("syncfs {RW}: {e}")))
}

/// Mounts the upper's file system at [`RW`].
fn mount_upper(upper: Upper<'_>) -> Result<(), (FailureKind, String)> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    match upper {
        Upper::Memory { size_mib } => {
            let size = format!("size={}m,mode=0755", size_mib.max(1));
            mount(Some("upper"), RW, Some("tmpfs"), flags, Some(size.as_str()))
                .map_err(|e| fail(FailureKind::Internal, format!("tmpfs upper: {e}")))
        }
        Upper::Disk { device } => mount_scratch_disk(device),
        Upper::MountedDisk => Ok(()),
    }
}

/// Builds the root at [`ROOT`] from the image on `disk`, with `upper` for its writes; the
/// error says which step failed and why. The task's own files go in later
/// ([`personalize`]), so a warm snapshot can hold a root mounted this far.
pub fn mount_root(disk: &str, upper: Upper<'_>) -> Result<(), (FailureKind, String)> {
    if !std::path::Path::new(disk).exists() {
        return Err(fail(
            FailureKind::ImageDisk,
            format!("image disk {disk} does not exist in the guest"),
        ));
    }
    for d in [LOWER, RW, ROOT] {
        mkdir_all(d).map_err(|m| fail(FailureKind::Internal, m))?;
    }
    if let Err(e) = drop_cached_blocks(disk) {
        eprintln!("skiff-agent: {e}");
    }
    let ro = MsFlags::MS_RDONLY;
    let mut last = String::new();
    let mounted = ["erofs", "ext4"].iter().any(|fs| {
        match mount(Some(disk), LOWER, Some(*fs), ro, None::<&str>) {
            Ok(()) => true,
            Err(e) => {
                last = format!("{fs}: {e}");
                false
            }
        }
    });
    if !mounted {
        return Err(fail(
            FailureKind::ImageDisk,
            format!("cannot mount image disk {disk} read-only as EROFS or ext4 ({last})"),
        ));
    }
    mount_upper(upper)?;
    for d in ["upper", "work"] {
        mkdir_all(&format!("{RW}/{d}")).map_err(|m| fail(FailureKind::Internal, m))?;
    }
    let opts = format!("lowerdir={LOWER},upperdir={UPPER},workdir={RW}/work");
    mount(
        Some("overlay"),
        ROOT,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| fail(FailureKind::Internal, format!("overlay: {e}")))?;

    let bind = |src: &str, dst: &str, recursive: bool| -> Result<(), (FailureKind, String)> {
        let target = format!("{ROOT}{dst}");
        mkdir_all(&target).map_err(|m| fail(FailureKind::Internal, m))?;
        let mut flags = MsFlags::MS_BIND;
        if recursive {
            flags |= MsFlags::MS_REC;
        }
        mount(
            Some(src),
            target.as_str(),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(|e| {
            fail(
                FailureKind::Internal,
                format!("bind {src} on {target}: {e}"),
            )
        })
    };
    bind("/dev", "/dev", true)?;
    bind("/proc", "/proc", false)?;
    bind("/sys", "/sys", true)?;
    let _ = nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    if !matches!(upper, Upper::Memory { .. }) {
        return Ok(());
    }
    let tmp = format!("{ROOT}/tmp");
    mkdir_all(&tmp).map_err(|m| fail(FailureKind::Internal, m))?;
    mount(
        Some("tmp"),
        tmp.as_str(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(|e| fail(FailureKind::Internal, format!("tmpfs /tmp: {e}")))?;
    Ok(())
}

/// Gives the upper layer of a root mounted earlier (a warm snapshot's) the size a task asks.
pub fn resize_upper(upper_size_mib: u64) -> Result<(), (FailureKind, String)> {
    let size = format!("size={}m", upper_size_mib.max(1));
    mount(
        None::<&str>,
        RW,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(size.as_str()),
    )
    .map_err(|e| {
        fail(
            FailureKind::Internal,
            format!("resize the upper layer: {e}"),
        )
    })
}

/// Writes the task's own files into the root: its hostname, hosts and resolver.
pub fn personalize(spec: &RunSpec) -> Result<(), (FailureKind, String)> {
    mkdir_all(&format!("{ROOT}/etc")).map_err(|m| fail(FailureKind::Internal, m))?;
    let hostname = if spec.hostname.is_empty() {
        "skiff"
    } else {
        &spec.hostname
    };
    // The task's own address names it; without a network, a loopback one does.
    let own = spec
        .network
        .as_ref()
        .and_then(|n| n.address.split('/').next())
        .unwrap_or("127.0.1.1");
    let resolv = match &spec.network {
        Some(n) => super::network::resolv_conf(n),
        None => "# no network in this task\n".to_owned(),
    };
    let files = [
        ("etc/hostname", format!("{hostname}\n")),
        (
            "etc/hosts",
            format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n{own}\t{hostname}\n"),
        ),
        ("etc/resolv.conf", resolv),
    ];
    for (path, text) in files {
        let p = format!("{ROOT}/{path}");
        std::fs::write(&p, text)
            .map_err(|e| fail(FailureKind::Internal, format!("write {p}: {e}")))?;
    }
    Ok(())
}

/// Reads a file of the container root, empty when missing.
pub fn read_root_file(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}{path}")).unwrap_or_default()
}
