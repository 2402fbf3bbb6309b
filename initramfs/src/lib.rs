#![forbid(unsafe_code)]
//! A writer for initramfs images: the `newc` cpio format the kernel unpacks into its root.
//! Written here rather than taken from a crate: the format is a 110-byte ASCII header per
//! entry, and we want exact control over device nodes, modes and streaming from files.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("initramfs path '{0}' must be relative, without '..' or empty parts")]
    BadPath(String),
    #[error("cannot read {path}: {source}")]
    ReadSource {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the initramfs: {0}")]
    Write(#[from] io::Error),
}

/// Streams a newc archive to `out`. Parent directories are added on demand.
pub struct CpioWriter<W: Write> {
    out: W,
    offset: u64,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

fn check_path(path: &str) -> Result<String, InitramfsError> {
    let p = path.trim_start_matches('/');
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(InitramfsError::BadPath(path.to_owned()));
    }
    Ok(p.to_owned())
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            offset: 0,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (4 - (self.offset % 4)) % 4;
        self.out.write_all(&[0u8; 3][..rem as usize])?;
        self.offset += rem;
        Ok(())
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, rdev: (u32, u32)) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut h = String::with_capacity(110);
        h.push_str(MAGIC);
        for f in fields {
            h.push_str(&format!("{f:08x}"));
        }
        self.out.write_all(h.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.offset += h.len() as u64 + name.len() as u64 + 1;
        self.pad()
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut acc = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(c);
            if self.dirs.insert(acc.clone()) {
                let a = acc.clone();
                self.header(&a, S_IFDIR | 0o755, 0, (0, 0))?;
            }
        }
        Ok(())
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), InitramfsError> {
        let p = check_path(path)?;
        self.parents(&p)?;
        if self.dirs.insert(p.clone()) {
            self.header(&p, S_IFDIR | (perm & 0o7777), 0, (0, 0))?;
        }
        Ok(())
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<(), InitramfsError> {
        self.file_from_reader(path, perm, data.len() as u64, &mut &data[..])
    }

    /// Adds a regular file whose `size` bytes come from `src`.
    pub fn file_from_reader(
        &mut self,
        path: &str,
        perm: u32,
        size: u64,
        src: &mut dyn Read,
    ) -> Result<(), InitramfsError> {
        let p = check_path(path)?;
        self.parents(&p)?;
        self.header(&p, S_IFREG | (perm & 0o7777), size, (0, 0))?;
        let copied = io::copy(&mut src.take(size), &mut self.out)?;
        if copied != size {
            return Err(InitramfsError::ReadSource {
                path: p,
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while copied"),
            });
        }
        self.offset += size;
        self.pad()?;
        Ok(())
    }

    /// Adds the host file `src` at `path`, keeping its permission bits.
    pub fn host_file(&mut self, path: &str, src: &Path) -> Result<(), InitramfsError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |source| InitramfsError::ReadSource {
            path: src.display().to_string(),
            source,
        };
        let mut f = File::open(src).map_err(err)?;
        let meta = f.metadata().map_err(err)?;
        if !meta.is_file() {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        self.file_from_reader(path, meta.permissions().mode(), meta.len(), &mut f)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), InitramfsError> {
        let p = check_path(path)?;
        self.parents(&p)?;
        self.header(&p, S_IFLNK | 0o777, target.len() as u64, (0, 0))?;
        self.out.write_all(target.as_bytes())?;
        self.offset += target.len() as u64;
        self.pad()?;
        Ok(())
    }

    pub fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), InitramfsError> {
        let p = check_path(path)?;
        self.parents(&p)?;
        self.header(&p, S_IFCHR | (perm & 0o7777), 0, (major, minor))?;
        Ok(())
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, InitramfsError> {
        self.header(TRAILER, 0, 0, (0, 0))?;
        // Pad the archive to 512 bytes, as cpio(1) does.
        let rem = (512 - (self.offset % 512)) % 512;
        self.out.write_all(&vec![0u8; rem as usize])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The skeleton every Skiff initramfs starts with: /dev/console (so init has a console
/// before devtmpfs is mounted) and the usual mount points.
pub fn write_skeleton<W: Write>(w: &mut CpioWriter<W>) -> Result<(), InitramfsError> {
    w.dir("dev", 0o755)?;
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    for d in ["proc", "sys", "run", "tmp", "mnt"] {
        w.dir(d, 0o755)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(buf: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = vec![];
        let mut off = 0usize;
        loop {
            let h = std::str::from_utf8(&buf[off..off + 110]).unwrap();
            assert_eq!(&h[..6], MAGIC);
            let field = |i: usize| u32::from_str_radix(&h[6 + i * 8..14 + i * 8], 16).unwrap();
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&buf[off + 110..off + 110 + namesize - 1]).unwrap();
            off = (off + 110 + namesize + 3) & !3;
            let data = buf[off..off + size].to_vec();
            off = (off + size + 3) & !3;
            if name == TRAILER {
                return out;
            }
            out.push((name.to_owned(), mode, data));
        }
    }

    #[test]
    fn round_trips_entries_with_parents() {
        let mut w = CpioWriter::new(Vec::new());
        write_skeleton(&mut w).unwrap();
        w.file("bin/init", 0o755, b"#!/bin/sh\n").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        let buf = w.finish().unwrap();
        assert_eq!(buf.len() % 512, 0);
        let e = parse(&buf);
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "dev/null",
                "proc",
                "sys",
                "run",
                "tmp",
                "mnt",
                "bin",
                "bin/init",
                "bin/sh"
            ]
        );
        assert_eq!(e[1].1, S_IFCHR | 0o600);
        assert_eq!(e[9].2, b"#!/bin/sh\n");
        assert_eq!(e[10].2, b"busybox");
    }

    #[test]
    fn rejects_escaping_paths() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("../etc/passwd", 0o644, b"").is_err());
        assert!(w.file("a//b", 0o644, b"").is_err());
        assert!(w.dir("/", 0o755).is_err());
    }
}
