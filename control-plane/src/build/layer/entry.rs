//! One entry of a layer as the canonical writer takes it: a clean relative path, what it
//! is, and the metadata a layer keeps (numeric owner, permission bits, mtime). Nothing
//! else from the source survives: no user or group names, no atime or ctime.

use std::path::PathBuf;

use super::LayerError;

/// What an entry is, with what that kind carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    /// A regular file of `size` bytes, read from `content` when it is written.
    File {
        size: u64,
        content: Content,
    },
    /// A symbolic link and its target, as written (never resolved).
    Symlink(Vec<u8>),
    /// A hard link to another entry of the same layer (its clean path).
    Hardlink(Vec<u8>),
    Char {
        major: u32,
        minor: u32,
    },
    Block {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// Where a file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// No bytes (an empty file, a whiteout).
    Empty,
    /// At this offset of the spool file the writer is given.
    Spooled { offset: u64 },
    /// A host file, opened without following a symlink in its last component.
    Host(PathBuf),
}

/// One layer entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Relative, `/`-separated, without `.`/`..` components or a trailing `/`.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits with set-uid, set-gid and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch.
    pub mtime: u64,
    /// Extended attributes the layer keeps (PAX `SCHILY.xattr.NAME` records), sorted by
    /// name: only the ones [`check_xattr`] lets through.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Longest path a layer entry may have (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

/// The extended attribute a build keeps from a `RUN` step's changes: a file's
/// capabilities, the one Docker's and containerd's layer writers keep too (`setcap` in a
/// step works; the overlay's own `trusted.*` marks and `user.*` notes stay behind).
pub const FILE_CAPS_XATTR: &str = "security.capability";

/// Whether a layer may keep the extended attribute `name` with `value`: only
/// [`FILE_CAPS_XATTR`], 4 to 24 bytes (`vfs_cap_data` revisions 1 to 3).
pub fn check_xattr(name: &str, value: &[u8]) -> Result<(), String> {
    if name != FILE_CAPS_XATTR {
        return Err(format!(
            "extended attribute {name:?}: a build keeps only {FILE_CAPS_XATTR}"
        ));
    }
    if !(4..=24).contains(&value.len()) {
        return Err(format!(
            "extended attribute {name} of {} bytes (4 to 24 expected)",
            value.len()
        ));
    }
    Ok(())
}

/// The capabilities of the file at `path` on the host (a stage's tree, which only checked
/// layers made), when it has valid ones; the path's last component is not followed.
pub fn file_caps(path: &std::path::Path) -> Option<Vec<u8>> {
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(path, FILE_CAPS_XATTR, &mut buf[..]).ok()?;
    let caps = buf.get(..n)?;
    check_xattr(FILE_CAPS_XATTR, caps).ok()?;
    Some(caps.to_vec())
}

/// `name` as a clean relative layer path: separators collapsed, `.` dropped; absolute
/// names, `..` components, NUL bytes and over-long names are refused. `None` for the root
/// itself (`./`).
pub fn clean_path(name: &[u8]) -> Result<Option<Vec<u8>>, LayerError> {
    let shown = || String::from_utf8_lossy(name).into_owned();
    let bad = |why: &'static str| LayerError::BadEntry {
        entry: shown(),
        why: why.into(),
    };
    if name.first() == Some(&b'/') {
        return Err(bad("absolute path"));
    }
    if name.contains(&0) {
        return Err(bad("NUL byte in the name"));
    }
    if name.len() > MAX_PATH_BYTES {
        return Err(bad("name longer than 4096 bytes"));
    }
    let mut out: Vec<u8> = Vec::with_capacity(name.len());
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(bad("\"..\" component")),
            p => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(p);
            }
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_or_refused() {
        assert_eq!(clean_path(b"./a//b/./c/").unwrap(), Some(b"a/b/c".to_vec()));
        assert_eq!(clean_path(b"./").unwrap(), None);
        for bad in [&b"/etc/passwd"[..], b"a/../../x", b"a\0b"] {
            assert!(clean_path(bad).is_err(), "{bad:?}");
        }
        assert!(clean_path(&vec![b'a'; MAX_PATH_BYTES + 1]).is_err());
    }
}
