//! Everything the guest needs in memory and in registers before its first instruction:
//! the kernel image, the initramfs, the command line, `boot_params` with the e820 map,
//! the MP table, and the long-mode CPU state.

mod mptable;
mod params;
mod regs;

pub use mptable::{setup_mptable, MpTableError};
pub use params::{e820_map, E820Entry, E820_RAM, E820_RESERVED};
pub use regs::{setup_fpu, setup_long_mode_regs, setup_page_tables_and_sregs, RegsError};

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{self, KernelLoader};
use thiserror::Error;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::layout::{
    self, CMDLINE_ADDR, CMDLINE_MAX, HIMEM_START, SETUP_DATA_ADDR, ZERO_PAGE_ADDR,
};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;
/// 64-bit entry point of a bzImage, relative to where its protected-mode part is loaded.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Boot protocol 2.15: the version our ELF boot speaks (setup_data needs 2.09).
const BOOT_PROTOCOL_VERSION: u16 = 0x020f;
/// `setup_data` type for a boot-time RNG seed.
const SETUP_RNG_SEED: u32 = 9;
/// Bytes of host entropy handed to the guest at boot.
pub const RNG_SEED_LEN: usize = 32;

#[derive(Debug, Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a kernel image (neither an x86_64 ELF vmlinux nor a bzImage)")]
    NotAKernel { path: PathBuf },
    #[error("cannot load kernel {path}: {source}")]
    LoadKernel {
        path: PathBuf,
        #[source]
        source: loader::Error,
    },
    #[error("cannot read initramfs {path}: {source}")]
    Initrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "initramfs {path} ({size} bytes) does not fit in guest memory below the kernel's limit"
    )]
    InitrdTooLarge { path: PathBuf, size: u64 },
    #[error("kernel command line is {len} bytes; the guest accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("cannot write boot data into guest memory: {0}")]
    GuestMemory(String),
    #[error(transparent)]
    MpTable(#[from] MpTableError),
    #[error("cannot get entropy for the guest's RNG seed: {0}")]
    Entropy(#[source] std::io::Error),
}

/// Fills `buf` from the host kernel's CSPRNG.
pub fn host_entropy(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let r = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += r as usize;
    }
    Ok(())
}

/// Writes a SETUP_RNG_SEED `setup_data` node: the kernel mixes the seed into its pool at
/// boot (and credits it with RANDOM_TRUST_BOOTLOADER), so it never waits for entropy.
fn write_rng_seed(mem: &GuestMemoryMmap, seed: &[u8; RNG_SEED_LEN]) -> Result<(), BootError> {
    let mut node = Vec::with_capacity(16 + RNG_SEED_LEN);
    node.extend_from_slice(&0u64.to_le_bytes()); // next: end of list
    node.extend_from_slice(&SETUP_RNG_SEED.to_le_bytes());
    node.extend_from_slice(&(RNG_SEED_LEN as u32).to_le_bytes());
    node.extend_from_slice(seed);
    mem.write_slice(&node, GuestAddress(SETUP_DATA_ADDR))
        .map_err(|e| BootError::GuestMemory(format!("setup_data: {e}")))
}

/// The kind of image found at `--kernel`, judged by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Looks at the first bytes of a file to tell an ELF vmlinux from a bzImage.
pub fn detect_kernel_format(path: &Path) -> Result<KernelFormat, BootError> {
    let mut f = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.to_owned(),
        source,
    })?;
    let mut head = [0u8; 0x208];
    let n = read_up_to(&mut f, &mut head).map_err(|source| BootError::OpenKernel {
        path: path.to_owned(),
        source,
    })?;
    // ELF64, little-endian, x86_64 (e_machine 62).
    if n >= 20 && head[..4] == *b"\x7fELF" && head[4] == 2 && head[5] == 1 && head[18] == 62 {
        return Ok(KernelFormat::Elf);
    }
    // bzImage: "HdrS" at 0x202, boot flag 0xaa55 at 0x1fe.
    if n >= 0x206 && head[0x1fe..0x200] == [0x55, 0xaa] && head[0x202..0x206] == *b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::NotAKernel {
        path: path.to_owned(),
    })
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Where the loaded kernel starts executing, and the setup header a bzImage carries.
pub struct LoadedKernel {
    pub entry: GuestAddress,
    pub setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

/// Loads the kernel image into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let format = detect_kernel_format(path)?;
    let mut f = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.to_owned(),
        source,
    })?;
    let load_err = |source| BootError::LoadKernel {
        path: path.to_owned(),
        source,
    };
    match format {
        KernelFormat::Elf => {
            let r = loader::Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            Ok(LoadedKernel {
                entry: r.kernel_load,
                setup_header: None,
            })
        }
        KernelFormat::BzImage => {
            let r = loader::BzImage::load(
                mem,
                Some(GuestAddress(layout::KERNEL_LOAD_ADDR)),
                &mut f,
                Some(GuestAddress(HIMEM_START)),
            )
            .map_err(load_err)?;
            Ok(LoadedKernel {
                entry: r.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
                setup_header: r.setup_header,
            })
        }
    }
}

/// Guest address and size of a loaded initramfs.
#[derive(Debug, Clone, Copy)]
pub struct LoadedInitrd {
    pub addr: GuestAddress,
    pub size: u64,
}

/// Copies the initramfs to the top of low RAM (below the MMIO hole), page aligned.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end_guard: u64,
) -> Result<LoadedInitrd, BootError> {
    let io_err = |source| BootError::Initrd {
        path: path.to_owned(),
        source,
    };
    let mut f = File::open(path).map_err(io_err)?;
    let size = f.seek(SeekFrom::End(0)).map_err(io_err)?;
    f.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let low_end = mem
        .iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .filter(|end| *end <= layout::MMIO_HOLE_START)
        .max()
        .unwrap_or(0);
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_owned(),
        size,
    };
    let addr = low_end.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end_guard {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|e| BootError::GuestMemory(format!("initramfs: {e}")))?;
    Ok(LoadedInitrd {
        addr: GuestAddress(addr),
        size,
    })
}

/// Writes the command line and the zero page (`boot_params`) with the e820 map.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<LoadedInitrd>,
    mem_size: u64,
) -> Result<(), BootError> {
    if cmdline.len() + 1 > CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX - 1,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(|e| BootError::GuestMemory(format!("command line: {e}")))?;

    let mut params = boot_params::default();
    match kernel.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => params.hdr.version = BOOT_PROTOCOL_VERSION,
    }
    let mut seed = [0u8; RNG_SEED_LEN];
    host_entropy(&mut seed).map_err(BootError::Entropy)?;
    write_rng_seed(mem, &seed)?;
    params.hdr.setup_data = SETUP_DATA_ADDR;
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline.len() as u32;
    if let Some(rd) = initrd {
        params.hdr.ramdisk_image = rd.addr.raw_value() as u32;
        params.hdr.ramdisk_size = rd.size as u32;
        params.ext_ramdisk_image = (rd.addr.raw_value() >> 32) as u32;
        params.ext_ramdisk_size = (rd.size >> 32) as u32;
    }
    let map = e820_map(mem_size);
    for (i, e) in map.iter().enumerate() {
        params.e820_table[i].addr = e.addr;
        params.e820_table[i].size = e.size;
        params.e820_table[i].r#type = e.kind;
    }
    params.e820_entries = map.len() as u8;

    let bp = BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_ADDR));
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem)
        .map_err(|e| BootError::GuestMemory(format!("boot_params: {e}")))
}
