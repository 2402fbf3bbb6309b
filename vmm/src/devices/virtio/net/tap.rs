//! The host end of a guest's network card: an existing TAP device, attached with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, non-blocking. All set-up ioctls happen in
//! [`Tap::open`], before any seccomp filter; at run time the device only reads and writes
//! the fd.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::config::check_ifname;
use super::HDR_LEN;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("--net tap={0}: {1}")]
    Name(String, String),
    #[error("--net tap={0}: no such network interface (create it first, e.g. `ip tuntap add {0} mode tap`)")]
    NoSuchDevice(String),
    #[error("--net tap={name}: cannot open /dev/net/tun: {source}")]
    OpenTun {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--net tap={name}: not allowed to attach (the TAP's owner or CAP_NET_ADMIN is needed): {source}")]
    Permission {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--net tap={name}: already in use by another process: {source}")]
    Busy {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--net tap={name}: not a single-queue TAP device: {source}")]
    NotTap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--net tap={name}: cannot {what}: {source}")]
    Ioctl {
        name: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Whether a network interface `name` exists in this network namespace.
pub fn interface_exists(name: &str) -> bool {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads the NUL-terminated string it is given, which lives
    // until the call returns.
    unsafe { libc::if_nametoindex(cname.as_ptr()) != 0 }
}

/// An attached TAP device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the rest of the union
/// is padding for TUNSETIFF).
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReqFlags>() == std::mem::size_of::<libc::ifreq>());

impl Tap {
    /// Attaches to the existing TAP `name` in this network namespace. The TAP must exist:
    /// TUNSETIFF would otherwise create one, which is not ours to do.
    pub fn open(name: &str) -> Result<Self, TapError> {
        check_ifname(name).map_err(|e| TapError::Name(name.to_owned(), e))?;
        if !interface_exists(name) {
            return Err(TapError::NoSuchDevice(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::OpenTun {
                name: name.to_owned(),
                source,
            })?;
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads a `struct ifreq` (same size and layout as IfReqFlags,
        // checked above) from the pointer, which is valid for the call; the fd is ours.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            let source = std::io::Error::last_os_error();
            let name = name.to_owned();
            return Err(match source.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission { name, source },
                Some(libc::EBUSY) => TapError::Busy { name, source },
                Some(libc::EINVAL) => TapError::NotTap { name, source },
                _ => TapError::Ioctl {
                    name,
                    what: "attach (TUNSETIFF)",
                    source,
                },
            });
        }
        let tap = Self {
            file,
            name: name.to_owned(),
        };
        tap.set_int(
            libc::TUNSETVNETHDRSZ,
            HDR_LEN as libc::c_int,
            "set the vnet header size",
        )?;
        // No offloads: the kernel checksums and segments before the frame reaches us.
        // TUNSETOFFLOAD takes its argument by value.
        // SAFETY: TUNSETOFFLOAD takes an integer argument, no memory; the fd is ours.
        let rc = unsafe {
            libc::ioctl(
                tap.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                0 as libc::c_ulong,
            )
        };
        if rc < 0 {
            return Err(tap.ioctl_err("turn offloads off"));
        }
        Ok(tap)
    }

    fn set_int(
        &self,
        request: libc::Ioctl,
        value: libc::c_int,
        what: &'static str,
    ) -> Result<(), TapError> {
        // SAFETY: the request reads one c_int through the pointer, which points to a live
        // local for the duration of the call; the fd is ours.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request, &value) };
        if rc < 0 {
            return Err(self.ioctl_err(what));
        }
        Ok(())
    }

    fn ioctl_err(&self, what: &'static str) -> TapError {
        TapError::Ioctl {
            name: self.name.clone(),
            what,
            source: std::io::Error::last_os_error(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet (vnet header + frame); `WouldBlock` when none is queued.
    pub fn read_packet(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one packet (vnet header + frame).
    pub fn write_packet(&self, packet: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(packet)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
