//! Writes a layer canonically, so that the same entries always give the same bytes and so
//! the same digests on any machine: entries sorted bytewise by path, ustar headers with a
//! PAX record only where a field does not fit, numeric owners without names, no atime or
//! ctime, mtimes clamped to `SOURCE_DATE_EPOCH` when one is given, and gzip at a fixed
//! level with a zero header mtime.
//!
//! Written here rather than with `tar::Builder::append_data`, whose GNU long-name headers
//! and own choices of fields are not the canonical form this needs.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use flate2::{Compression, GzBuilder};
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use super::entry::{Content, EntryKind, LayerEntry};
use super::LayerError;
use crate::images::digest::Digest;

/// The gzip level of every layer Skiff writes (the level changes the bytes, so it is fixed).
const GZIP_LEVEL: u32 = 6;
/// Largest value of an 11-digit octal header field (size, mtime).
const MAX_OCTAL_11: u64 = 0o77777777777;
/// Largest value of a 7-digit octal header field (uid, gid, device numbers).
const MAX_OCTAL_7: u64 = 0o7777777;

/// What a written layer is known by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDigests {
    /// sha256 of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// sha256 of the gzip blob (the manifest's layer digest).
    pub digest: Digest,
    /// Bytes of the gzip blob.
    pub size: u64,
    /// Bytes of the uncompressed tar.
    pub uncompressed_size: u64,
}

/// Writes `entries` as a gzip-compressed tar to `out`. File contents come from where each
/// entry says (`spool` for spooled ones). With `epoch`, no mtime is later than it.
pub fn write_layer(
    mut entries: Vec<LayerEntry>,
    spool: Option<&File>,
    epoch: Option<u64>,
    out: impl Write,
) -> Result<LayerDigests, LayerError> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(w) = entries.windows(2).find(|w| w[0].path == w[1].path) {
        return Err(LayerError::BadEntry {
            entry: String::from_utf8_lossy(&w[0].path).into_owned(),
            why: "twice in one layer".into(),
        });
    }
    first_name_holds_the_content(&mut entries)?;
    let gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Counted::new(out), Compression::new(GZIP_LEVEL));
    let mut tar = tar::Builder::new(Counted::new(gz));
    for e in &entries {
        let mtime = epoch.map_or(e.mtime, |n| e.mtime.min(n));
        let (header, pax) = header_for(e, mtime)?;
        if !pax.is_empty() {
            let mut h = Header::new_ustar();
            h.set_entry_type(EntryType::XHeader);
            set_name(&mut h, &pax_name(&e.path));
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(mtime.min(MAX_OCTAL_11));
            h.set_size(pax.len() as u64);
            h.set_cksum();
            tar.append(&h, pax.as_slice()).map_err(LayerError::Write)?;
        }
        match &e.kind {
            EntryKind::File { size, content } => {
                let data =
                    open_content(content, *size, spool).map_err(|source| LayerError::Content {
                        entry: String::from_utf8_lossy(&e.path).into_owned(),
                        source,
                    })?;
                tar.append(&header, Exact::new(data, *size))
                    .map_err(|err| content_or_write(&e.path, err))?;
            }
            _ => tar
                .append(&header, io::empty())
                .map_err(LayerError::Write)?,
        }
    }
    let tar_out = tar.into_inner().map_err(LayerError::Write)?;
    let (diff_id, uncompressed_size) = (Digest::from_hasher(tar_out.sha), tar_out.bytes);
    let blob = tar_out.inner.finish().map_err(LayerError::Write)?;
    Ok(LayerDigests {
        diff_id,
        digest: Digest::from_hasher(blob.sha),
        size: blob.bytes,
        uncompressed_size,
    })
}

/// A read error of a file's content (it changed or went) told apart from a write error.
fn content_or_write(entry: &[u8], e: io::Error) -> LayerError {
    if e.get_ref().is_some_and(|r| r.is::<ContentChanged>()) {
        LayerError::Content {
            entry: String::from_utf8_lossy(entry).into_owned(),
            source: e,
        }
    } else {
        LayerError::Write(e)
    }
}

/// Hard links name the first of their names in the layer's order, and that one holds the
/// content: a reader unpacking in order then always finds a link's target already made.
fn first_name_holds_the_content(entries: &mut [LayerEntry]) -> Result<(), LayerError> {
    let index: HashMap<Vec<u8>, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.path.clone(), i))
        .collect();
    // Each link's file: links to links are followed, a bounded number of times.
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let EntryKind::Hardlink(target) = &e.kind else {
            continue;
        };
        let mut at = *index.get(target).ok_or_else(|| LayerError::BadEntry {
            entry: String::from_utf8_lossy(&e.path).into_owned(),
            why: format!(
                "hard link to {:?}, which the layer does not hold",
                String::from_utf8_lossy(target)
            ),
        })?;
        for _ in 0..entries.len() {
            match &entries[at].kind {
                EntryKind::Hardlink(t) => at = index[t],
                _ => break,
            }
        }
        if !matches!(entries[at].kind, EntryKind::File { .. }) || at == i {
            return Err(LayerError::BadEntry {
                entry: String::from_utf8_lossy(&e.path).into_owned(),
                why: "hard link to something that is not a regular file".into(),
            });
        }
        groups.entry(at).or_default().push(i);
    }
    for (file, links) in groups {
        // Entries are sorted, so the smallest index is the first name.
        let first = links.iter().copied().chain([file]).min().unwrap_or(file);
        if first != file {
            let content = entries[file].clone();
            entries[first] = LayerEntry {
                path: entries[first].path.clone(),
                ..content
            };
        }
        let target = entries[first].path.clone();
        for i in links.into_iter().chain([file]).filter(|&i| i != first) {
            let meta = entries[first].clone();
            entries[i] = LayerEntry {
                path: entries[i].path.clone(),
                kind: EntryKind::Hardlink(target.clone()),
                xattrs: Vec::new(),
                ..meta
            };
        }
    }
    Ok(())
}

/// The entry's ustar header and the PAX records it needs (empty when none).
fn header_for(e: &LayerEntry, mtime: u64) -> Result<(Header, Vec<u8>), LayerError> {
    let mut h = Header::new_ustar();
    let mut pax = Vec::new();
    let mut name = e.path.clone();
    let (kind, size) = match &e.kind {
        EntryKind::Dir => {
            name.push(b'/');
            (EntryType::Directory, 0)
        }
        EntryKind::File { size, .. } => (EntryType::Regular, *size),
        EntryKind::Symlink(_) => (EntryType::Symlink, 0),
        EntryKind::Hardlink(_) => (EntryType::Link, 0),
        EntryKind::Char { .. } => (EntryType::Char, 0),
        EntryKind::Block { .. } => (EntryType::Block, 0),
        EntryKind::Fifo => (EntryType::Fifo, 0),
    };
    h.set_entry_type(kind);
    if !set_name(&mut h, &name) {
        pax_record(&mut pax, "path", &name);
    }
    h.set_mode(e.mode & 0o7777);
    for (key, value, set) in [
        ("uid", e.uid, Header::set_uid as fn(&mut Header, u64)),
        ("gid", e.gid, Header::set_gid),
    ] {
        if value > MAX_OCTAL_7 {
            pax_record(&mut pax, key, value.to_string().as_bytes());
            set(&mut h, 0);
        } else {
            set(&mut h, value);
        }
    }
    if mtime > MAX_OCTAL_11 {
        pax_record(&mut pax, "mtime", mtime.to_string().as_bytes());
        h.set_mtime(0);
    } else {
        h.set_mtime(mtime);
    }
    if size > MAX_OCTAL_11 {
        pax_record(&mut pax, "size", size.to_string().as_bytes());
        h.set_size(0);
    } else {
        h.set_size(size);
    }
    if let EntryKind::Symlink(target) | EntryKind::Hardlink(target) = &e.kind {
        if h.set_link_name_literal(target).is_err() {
            pax_record(&mut pax, "linkpath", target);
            h.set_link_name_literal(&target[..target.len().min(100)])
                .map_err(LayerError::Write)?;
        }
    }
    // Sorted when the entry was made; written in that order.
    for (name, value) in &e.xattrs {
        pax_record(&mut pax, &format!("SCHILY.xattr.{name}"), value);
    }
    if let EntryKind::Char { major, minor } | EntryKind::Block { major, minor } = e.kind {
        let bad = |_| LayerError::BadEntry {
            entry: String::from_utf8_lossy(&e.path).into_owned(),
            why: format!("device number {major}:{minor} does not fit a tar header"),
        };
        h.set_device_major(major).map_err(bad)?;
        h.set_device_minor(minor).map_err(bad)?;
    }
    h.set_cksum();
    Ok((h, pax))
}

/// Puts `name` in the header's name field, or its prefix and name fields split at a `/`.
/// False when it fits neither way (the header then holds the first 100 bytes, and a PAX
/// `path` record the whole name).
fn set_name(h: &mut Header, name: &[u8]) -> bool {
    let Some(u) = h.as_ustar_mut() else {
        return false;
    };
    if name.len() <= u.name.len() {
        u.name[..name.len()].copy_from_slice(name);
        return true;
    }
    let split = name.iter().enumerate().rev().find(|&(i, &b)| {
        b == b'/' && i <= u.prefix.len() && name.len() - i - 1 <= u.name.len() && i > 0
    });
    if let Some((i, _)) = split {
        u.prefix[..i].copy_from_slice(&name[..i]);
        let rest = &name[i + 1..];
        u.name[..rest.len()].copy_from_slice(rest);
        return true;
    }
    let n = u.name.len();
    u.name.copy_from_slice(&name[..n]);
    false
}

/// The name of an entry's PAX header: `PaxHeaders/` and the entry's last component, cut
/// to fit the name field.
fn pax_name(path: &[u8]) -> Vec<u8> {
    let base = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    let mut name = b"PaxHeaders/".to_vec();
    name.extend_from_slice(&base[..base.len().min(100 - name.len())]);
    name
}

/// Appends one PAX record: `LEN KEY=VALUE\n`, where LEN counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A file's bytes, from where they are.
fn open_content<'a>(
    content: &Content,
    size: u64,
    spool: Option<&'a File>,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match content {
        Content::Empty if size == 0 => Box::new(io::empty()),
        Content::Empty => return Err(io::Error::other("an empty content with a size")),
        Content::Spooled { offset } => {
            let spool = spool.ok_or_else(|| io::Error::other("no spool file was given"))?;
            Box::new(At {
                file: spool,
                offset: *offset,
            })
        }
        Content::Host(path) => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)?;
            if !f.metadata()?.is_file() {
                return Err(io::Error::other("not a regular file"));
            }
            Box::new(f)
        }
    })
}

/// Reads a file from an offset on, without moving a shared position.
struct At<'a> {
    file: &'a File,
    offset: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// A file that ended before its size or went on after it.
#[derive(Debug, thiserror::Error)]
#[error("its size changed while the layer was written")]
struct ContentChanged;

/// Exactly `size` bytes of a reader, or an error: a tar entry must hold what its header
/// says.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Exact<R> {
    fn new(inner: R, size: u64) -> Self {
        Exact { inner, left: size }
    }
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::other(ContentChanged));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts what goes through it.
struct Counted<W> {
    inner: W,
    sha: Sha256,
    bytes: u64,
}

impl<W> Counted<W> {
    fn new(inner: W) -> Self {
        Counted {
            inner,
            sha: Sha256::new(),
            bytes: 0,
        }
    }
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
