//! `ADD` of a local tar archive: as Docker does, a context file that is a tar (plain,
//! gzip or zstd) is unpacked into the destination folder instead of copied. Its entries
//! are read as hostile input, like a layer a guest sent (`spool_tar`: names cleaned and
//! kept inside the destination, the image limits applied), and written again in the
//! step's canonical layer. Owners and modes come from the archive, as in Docker.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::layer::{spool_tar, EntryKind, LayerEntry, Spooled};
use crate::images::limits::Limits;
use crate::images::unpack::{decompressed, Budget};

/// What a file is, as far as `ADD` cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// A tar Skiff can unpack (plain, gzip or zstd).
    Tar,
    /// A tar in a compression Docker unpacks and Skiff does not (`bzip2`, `xz`).
    Unsupported(&'static str),
}

/// Whether the file at `path` is an archive `ADD` unpacks; None: it is copied as it is.
pub fn archive_kind(path: &Path) -> io::Result<Option<ArchiveKind>> {
    let mut head = [0u8; 6];
    let n = File::open(path)?.take(6).read(&mut head)?;
    let head = &head[..n];
    if head.starts_with(b"BZh") {
        return Ok(Some(ArchiveKind::Unsupported("bzip2")));
    }
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Ok(Some(ArchiveKind::Unsupported("xz")));
    }
    // A compressed file is an archive only when what it holds is a tar.
    let Ok(mut inner) = decompressed(File::open(path)?) else {
        return Ok(None);
    };
    let mut block = vec![0u8; 512];
    let mut got = 0;
    while got < block.len() {
        match inner.read(&mut block[got..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    Ok((got == 512 && &block[257..262] == b"ustar").then_some(ArchiveKind::Tar))
}

/// Unpacks the archive at `path` into entries under `dest` (clean, relative, no trailing
/// `/`; empty for the root), within `limits`, spooled in `spool_dir`.
pub fn unpack_archive(
    path: &Path,
    dest: &str,
    limits: Limits,
    spool_dir: &Path,
) -> Result<Spooled, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let tar = decompressed(file).map_err(|e| e.to_string())?;
    let mut spooled =
        spool_tar(tar, &Budget::new(limits), spool_dir).map_err(|e| format!("the archive: {e}"))?;
    let under = |p: &[u8]| -> Vec<u8> {
        if dest.is_empty() {
            p.to_vec()
        } else {
            [dest.as_bytes(), b"/", p].concat()
        }
    };
    for e in &mut spooled.entries {
        let name = e.path.rsplit(|b| *b == b'/').next().unwrap_or(&[]);
        if name.starts_with(b".wh.") {
            return Err(format!(
                "the archive holds {:?}: names starting with .wh. are layer whiteouts",
                String::from_utf8_lossy(&e.path)
            ));
        }
        e.path = under(&e.path);
        if let EntryKind::Hardlink(target) = &mut e.kind {
            *target = under(target);
        }
    }
    Ok(spooled)
}

/// The folders above `unpacked` entries that neither `entries` (the step's other entries)
/// nor `unpacked` nor the image (`in_image`, a clean relative path) has: an archive may
/// leave out its inner parent folders, and Docker makes them, root's and `0755`. The
/// layer gets them with `mtime`, so its tree needs no implicit folders.
pub fn missing_parents(
    entries: &[LayerEntry],
    unpacked: &[LayerEntry],
    in_image: &dyn Fn(&str) -> bool,
    mtime: u64,
) -> Vec<LayerEntry> {
    let have: HashSet<&[u8]> = entries
        .iter()
        .chain(unpacked)
        .map(|e| e.path.as_slice())
        .collect();
    let mut made: BTreeSet<Vec<u8>> = BTreeSet::new();
    for e in unpacked {
        let p = &e.path;
        for (i, _) in p.iter().enumerate().filter(|(_, b)| **b == b'/') {
            let parent = &p[..i];
            if parent.is_empty() || have.contains(parent) || made.contains(parent) {
                continue;
            }
            // Names come cleaned from `spool_tar`; a non-UTF-8 one cannot be in the image's
            // tree lookup, so it is made.
            let known = std::str::from_utf8(parent).is_ok_and(in_image);
            if !known {
                made.insert(parent.to_vec());
            }
        }
    }
    made.into_iter()
        .map(|path| LayerEntry {
            path,
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: Vec::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o640);
            h.set_uid(7);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn tars_are_unpacked_under_the_destination_and_other_files_are_not_archives() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.tar");
        std::fs::write(&plain, tar_of(&[("x/y.txt", b"y"), ("z", b"zz")])).unwrap();
        let gz = dir.path().join("a.tar.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&tar_of(&[("in-gz", b"g")])).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        let text_gz = dir.path().join("notes.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"just text, not a tar").unwrap();
        std::fs::write(&text_gz, enc.finish().unwrap()).unwrap();
        let bz = dir.path().join("a.tar.bz2");
        std::fs::write(&bz, b"BZh91AY&SY").unwrap();
        let text = dir.path().join("t.txt");
        std::fs::write(&text, b"hello").unwrap();

        assert_eq!(archive_kind(&plain).unwrap(), Some(ArchiveKind::Tar));
        assert_eq!(archive_kind(&gz).unwrap(), Some(ArchiveKind::Tar));
        assert_eq!(archive_kind(&text_gz).unwrap(), None);
        assert_eq!(archive_kind(&text).unwrap(), None);
        assert_eq!(
            archive_kind(&bz).unwrap(),
            Some(ArchiveKind::Unsupported("bzip2"))
        );

        let s = unpack_archive(&plain, "opt/app", Limits::default(), dir.path()).unwrap();
        let names: Vec<String> = s
            .entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        assert_eq!(names, ["opt/app/x/y.txt", "opt/app/z"]);
        assert_eq!((s.entries[1].mode, s.entries[1].uid), (0o640, 7));
        let s = unpack_archive(&gz, "", Limits::default(), dir.path()).unwrap();
        assert_eq!(s.entries[0].path, b"in-gz");
    }

    #[test]
    fn an_archives_inner_parent_folders_are_made_when_nothing_has_them() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.tar");
        // No entries for `x`, `x/y` or `k`; `opt` is the image's, `opt/app` the step's.
        std::fs::write(
            &plain,
            tar_of(&[("x/y/z.txt", b"z"), ("x/y/w", b"w"), ("k/v", b"")]),
        )
        .unwrap();
        let s = unpack_archive(&plain, "opt/app", Limits::default(), dir.path()).unwrap();
        let dest = LayerEntry {
            path: b"opt/app".to_vec(),
            kind: EntryKind::Dir,
            mode: 0o700,
            uid: 0,
            gid: 0,
            mtime: 5,
            xattrs: Vec::new(),
        };
        let made = missing_parents(&[dest], &s.entries, &|p| p == "opt", 9);
        let made: Vec<(String, u32, u64)> = made
            .iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.path).into_owned(),
                    e.mode,
                    e.mtime,
                )
            })
            .collect();
        assert_eq!(
            made,
            [
                ("opt/app/k".to_owned(), 0o755, 9),
                ("opt/app/x".to_owned(), 0o755, 9),
                ("opt/app/x/y".to_owned(), 0o755, 9),
            ]
        );
    }

    #[test]
    fn hostile_archives_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let wh = dir.path().join("wh.tar");
        std::fs::write(&wh, tar_of(&[("etc/.wh.passwd", b"")])).unwrap();
        let e = unpack_archive(&wh, "app", Limits::default(), dir.path()).unwrap_err();
        assert!(e.contains(".wh."), "{e}");
        // `tar::Builder` refuses `..` itself: write the name into the header by hand.
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..12].copy_from_slice(b"../../escape");
        h.set_size(1);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(&[b'x'; 512]);
        raw.extend_from_slice(&[0u8; 1024]);
        let up = dir.path().join("up.tar");
        std::fs::write(&up, raw).unwrap();
        let e = unpack_archive(&up, "app", Limits::default(), dir.path()).unwrap_err();
        assert!(e.contains("../../escape"), "{e}");
    }
}
