//! A build step's changes: the overlay's upper folder as a tar, sent to the host in
//! [`Frame::Upper`] frames once the step's process has ended.
//!
//! Overlayfs marks a deleted lower file with a whiteout (a character device 0:0) and a
//! folder that hides all of the lower one with the `trusted.overlay.opaque` xattr; a layer
//! says the same with `.wh.NAME` and `.wh..wh..opq` entries. A file's capabilities
//! (`security.capability`, set by `setcap`) go as a PAX `SCHILY.xattr.` record, as Docker
//! and containerd write them; no other extended attribute goes. The host trusts none of
//! this: it reads the tar as a hostile layer and writes its own canonical one.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use guest_agent::{Frame, FrameError, MAX_OUTPUT_CHUNK};
use tar::{EntryType, Header, HeaderMode};

use super::conn::Conn;
use super::rootfs::{LOWER, UPPER};

/// Files the agent writes into every root; Docker bind-mounts them into a build step and
/// never commits them, and neither does this.
const AGENT_FILES: [&str; 3] = ["etc/hostname", "etc/hosts", "etc/resolv.conf"];

/// Sends the upper folder's tar. Any process still running is ended first, so that
/// nothing changes under the walk.
pub fn export(conn: &mut Conn) -> Result<(), String> {
    // SAFETY: kill(2) with pid -1 and SIGKILL takes no pointers; from PID 1 it ends every
    // other process of the VM and never the caller.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    while nix::sys::wait::wait().is_ok() {}
    let mut tar = tar::Builder::new(FrameSink {
        conn,
        buf: Vec::with_capacity(MAX_OUTPUT_CHUNK),
        failed: None,
    });
    let mut walk = Walk {
        links: HashMap::new(),
    };
    let walked = walk.dir(&mut tar, Path::new(UPPER), Path::new(""));
    let finished = walked.and_then(|_| tar.into_inner()).and_then(|mut s| {
        s.flush()?;
        match s.failed.take() {
            Some(e) => Err(io::Error::other(e.to_string())),
            None => Ok(()),
        }
    });
    finished.map_err(|e| format!("exporting the upper layer: {e}"))
}

/// Writes the tar into frames of at most [`MAX_OUTPUT_CHUNK`] bytes.
struct FrameSink<'c> {
    conn: &'c mut Conn,
    buf: Vec<u8>,
    failed: Option<FrameError>,
}

impl Write for FrameSink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(MAX_OUTPUT_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == MAX_OUTPUT_CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buf);
        if let Err(e) = self.conn.send(&Frame::Upper(chunk)) {
            let shown = io::Error::other(e.to_string());
            self.failed = Some(e);
            return Err(shown);
        }
        Ok(())
    }
}

struct Walk {
    /// Files with more than one name: (device, inode) → the first name sent.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Walk {
    /// Sends the entries under `abs` (at `rel` in the root); true when it sent any.
    fn dir<W: Write>(
        &mut self,
        tar: &mut tar::Builder<W>,
        abs: &Path,
        rel: &Path,
    ) -> io::Result<bool> {
        let mut names: Vec<_> = fs::read_dir(abs)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        let mut sent = false;
        for name in names {
            let (abs, rel) = (abs.join(&name), rel.join(&name));
            if AGENT_FILES
                .iter()
                .any(|f| rel.as_os_str().as_bytes() == f.as_bytes())
            {
                continue;
            }
            sent |= self.entry(tar, &abs, &rel)?;
        }
        Ok(sent)
    }

    fn entry<W: Write>(
        &mut self,
        tar: &mut tar::Builder<W>,
        abs: &Path,
        rel: &Path,
    ) -> io::Result<bool> {
        let meta = fs::symlink_metadata(abs)?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            let name = rel.file_name().map(|n| n.as_bytes()).unwrap_or_default();
            let mut wh = b".wh.".to_vec();
            wh.extend_from_slice(name);
            let path = rel.with_file_name(std::ffi::OsStr::from_bytes(&wh));
            empty_file(tar, &path, &meta)?;
            return Ok(true);
        }
        if ft.is_dir() {
            let opaque = is_opaque(abs);
            let children = self.dir(tar, abs, rel)?;
            if opaque {
                empty_file(tar, &rel.join(".wh..wh..opq"), &meta)?;
            }
            // A folder only copied up for what changed inside it comes along with that;
            // one that is new or changed its owner or mode comes on its own.
            let changed = match fs::symlink_metadata(Path::new(LOWER).join(rel)) {
                Ok(lower) => {
                    !lower.is_dir()
                        || (lower.mode(), lower.uid(), lower.gid())
                            != (meta.mode(), meta.uid(), meta.gid())
                }
                Err(_) => true,
            };
            if !(children || opaque || changed) {
                return Ok(false);
            }
            file_caps(tar, abs)?;
            let mut h = header(&meta);
            tar.append_data(&mut h, rel, io::empty())?;
            return Ok(true);
        }
        if ft.is_socket() {
            return Ok(false); // a socket is no file content; Docker leaves them out too
        }
        let mut h = header(&meta);
        if ft.is_symlink() {
            let target = fs::read_link(abs)?;
            tar.append_link(&mut h, rel, target)?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key) {
                    h.set_entry_type(EntryType::Link);
                    h.set_size(0);
                    tar.append_link(&mut h, rel, first)?;
                    return Ok(true);
                }
                self.links.insert(key, rel.to_path_buf());
            }
            file_caps(tar, abs)?;
            let file = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(abs)?;
            tar.append_data(&mut h, rel, exactly(file, meta.len()))?;
        } else {
            // Device nodes and FIFOs: the header is all there is.
            let rdev = meta.rdev();
            h.set_device_major(nix::sys::stat::major(rdev) as u32)?;
            h.set_device_minor(nix::sys::stat::minor(rdev) as u32)?;
            h.set_size(0);
            tar.append_data(&mut h, rel, io::empty())?;
        }
        Ok(true)
    }
}

/// A header with the entry's kind, owner, mode, mtime and size.
fn header(meta: &Metadata) -> Header {
    let mut h = Header::new_gnu();
    h.set_metadata_in_mode(meta, HeaderMode::Complete);
    h
}

/// A whiteout: an empty regular file with the hidden entry's times.
fn empty_file<W: Write>(tar: &mut tar::Builder<W>, path: &Path, meta: &Metadata) -> io::Result<()> {
    let mut h = Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o600);
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(0);
    tar.append_data(&mut h, path, io::empty())
}

/// The extended attribute that goes with an entry: its capabilities.
const FILE_CAPS: &std::ffi::CStr = c"security.capability";
/// Largest `vfs_cap_data` (revision 3).
const MAX_FILE_CAPS: usize = 24;

/// Writes a PAX record with the capabilities of the file at `path`, if it has any, for
/// the entry that follows.
fn file_caps<W: Write>(tar: &mut tar::Builder<W>, path: &Path) -> io::Result<()> {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return Ok(());
    };
    let mut value = [0u8; MAX_FILE_CAPS];
    // SAFETY: both names are NUL-terminated strings that live across the call, and the
    // value buffer is writable for the length passed with it.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            FILE_CAPS.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    if n <= 0 {
        return Ok(()); // none (ENODATA), or not one the kernel would take (ERANGE)
    }
    let record = ("SCHILY.xattr.security.capability", &value[..n as usize]);
    tar.append_pax_extensions([record])
}

/// Whether overlayfs marked the folder opaque (it hides the whole lower one).
fn is_opaque(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut value = [0u8; 4];
    // SAFETY: both names are NUL-terminated strings that live across the call, and the
    // value buffer is writable for the length passed with it.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    n == 1 && value[0] == b'y'
}

/// The file's first `size` bytes, padded with zeros if it shrank: a tar entry must hold
/// what its header says.
fn exactly(file: File, size: u64) -> impl Read {
    file.take(size).chain(io::repeat(0)).take(size)
}
