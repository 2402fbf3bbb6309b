//! Reads a tar that Skiff did not write (a build VM's upper directory) into layer entries,
//! as hostile input: names cleaned and refused when they would leave the root, the image's
//! byte and entry limits applied as the stream comes in, file contents copied to a spool
//! file so that the entries can be sorted and written canonically afterwards. A name that
//! comes twice keeps its last entry, as unpacking the tar would.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};

use tar::EntryType;

use super::entry::{check_xattr, clean_path, Content, EntryKind, LayerEntry, MAX_PATH_BYTES};
use super::LayerError;
use crate::images::unpack::budget::{Budget, LimitError, Metered};

/// A tar's entries, with the spool file their contents are in.
#[derive(Debug)]
pub struct Spooled {
    pub entries: Vec<LayerEntry>,
    pub spool: File,
}

/// Reads `tar` (uncompressed) into entries within `budget`, spooling file contents to an
/// unnamed temporary file in `spool_dir`.
pub fn spool_tar(
    tar: impl Read,
    budget: &Budget,
    spool_dir: &std::path::Path,
) -> Result<Spooled, LayerError> {
    let mut spool = tempfile::tempfile_in(spool_dir).map_err(LayerError::Spool)?;
    let mut at = 0u64;
    let mut entries: Vec<LayerEntry> = Vec::new();
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut metered = Metered::new(tar, budget);
    let read = (|| {
        let mut archive = tar::Archive::new(&mut metered);
        for entry in archive.entries().map_err(LayerError::Read)? {
            let mut entry = entry.map_err(LayerError::Read)?;
            let Some(e) = read_entry(&mut entry, budget, &mut spool, &mut at)? else {
                continue;
            };
            match index.get(&e.path) {
                Some(&i) => entries[i] = e,
                None => {
                    index.insert(e.path.clone(), entries.len());
                    entries.push(e);
                }
            }
        }
        Ok(())
    })();
    if let Some(limit) = metered.over {
        return Err(LayerError::Limit(limit));
    }
    read?;
    metered.finish().map_err(|e| {
        match e.get_ref().and_then(|r| r.downcast_ref::<LimitError>()) {
            Some(l) => LayerError::Limit(l.0),
            None => LayerError::Read(e),
        }
    })?;
    Ok(Spooled { entries, spool })
}

/// One tar entry as a layer entry (`None` for the root itself and for PAX/GNU headers,
/// which the tar reader has already applied to the entry after them).
fn read_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    budget: &Budget,
    spool: &mut File,
    at: &mut u64,
) -> Result<Option<LayerEntry>, LayerError> {
    let kind = entry.header().entry_type();
    if matches!(
        kind,
        EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink
    ) {
        return Ok(None);
    }
    let raw = entry.path_bytes().into_owned();
    let Some(path) = clean_path(&raw)? else {
        return Ok(None);
    };
    budget.entry().map_err(LayerError::Limit)?;
    let bad = |why: String| LayerError::BadEntry {
        entry: String::from_utf8_lossy(&path).into_owned(),
        why,
    };
    let header = entry.header().clone();
    // The reader has put a PAX `linkpath` or GNU long link into this (not into the header).
    let link_target = entry
        .link_name_bytes()
        .map(|b| b.into_owned())
        .filter(|b| !b.is_empty());
    // Extended attributes come as PAX records ahead of the entry; a hard link's belong to
    // the file it names.
    let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
    if kind != EntryType::Link {
        if let Some(records) = entry.pax_extensions().map_err(LayerError::Read)? {
            for r in records {
                let r = r.map_err(LayerError::Read)?;
                let Some(name) = r.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                    continue;
                };
                let name = String::from_utf8_lossy(name).into_owned();
                check_xattr(&name, r.value_bytes()).map_err(bad)?;
                xattrs.retain(|(n, _)| *n != name);
                xattrs.push((name, r.value_bytes().to_vec()));
            }
        }
        xattrs.sort();
    }
    let default_mode = if kind == EntryType::Directory {
        0o755
    } else {
        0o644
    };
    let link = || -> Result<Vec<u8>, LayerError> {
        let target = link_target
            .clone()
            .ok_or_else(|| bad("a link without a target".into()))?;
        if target.contains(&0) || target.len() > MAX_PATH_BYTES {
            return Err(bad(
                "a link target with a NUL byte or over 4096 bytes".into()
            ));
        }
        Ok(target)
    };
    let kind = match kind {
        EntryType::Directory => EntryKind::Dir,
        EntryType::Regular | EntryType::Continuous => {
            let offset = *at;
            let copied = io::copy(entry, spool).map_err(LayerError::Read)?;
            *at += copied;
            EntryKind::File {
                size: copied,
                content: if copied == 0 {
                    Content::Empty
                } else {
                    Content::Spooled { offset }
                },
            }
        }
        EntryType::Symlink => EntryKind::Symlink(link()?),
        EntryType::Link => {
            let target = link()?;
            let target =
                clean_path(&target)?.ok_or_else(|| bad("a hard link to the root".into()))?;
            EntryKind::Hardlink(target)
        }
        EntryType::Char | EntryType::Block => {
            let (major, minor) = match (header.device_major(), header.device_minor()) {
                (Ok(Some(a)), Ok(Some(b))) => (a, b),
                _ => return Err(bad("a device without readable numbers".into())),
            };
            if kind == EntryType::Char {
                EntryKind::Char { major, minor }
            } else {
                EntryKind::Block { major, minor }
            }
        }
        EntryType::Fifo => EntryKind::Fifo,
        other => {
            return Err(bad(format!(
                "unsupported entry type {:?}",
                other.as_byte() as char
            )))
        }
    };
    Ok(Some(LayerEntry {
        path,
        kind,
        mode: header.mode().unwrap_or(default_mode) & 0o7777,
        uid: header.uid().unwrap_or(0),
        gid: header.gid().unwrap_or(0),
        mtime: header.mtime().unwrap_or(0),
        xattrs,
    }))
}
