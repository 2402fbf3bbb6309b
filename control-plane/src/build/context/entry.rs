//! The manifest types: what the walk of a context produces.

use serde::{Deserialize, Serialize};

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// A character device node: only in the tree of another stage or image
    /// (`COPY --from`), never in a context a client sends.
    Char,
    /// A block device node, as `Char`.
    Block,
    /// A named pipe, as `Char`.
    Fifo,
}

impl EntryKind {
    /// The name used in JSON (`file`, `dir`, `symlink`, `char`, `block`, `fifo`).
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Char => "char",
            EntryKind::Block => "block",
            EntryKind::Fifo => "fifo",
        }
    }

    /// True for the kinds a client's context may hold: files, folders and symlinks.
    pub fn is_sendable(self) -> bool {
        matches!(self, EntryKind::File | EntryKind::Dir | EntryKind::Symlink)
    }
}

/// A device node's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNumbers {
    pub major: u32,
    pub minor: u32,
}

/// One file, directory or symbolic link of the context (or, in another stage's tree, a
/// device node or FIFO).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Path relative to the context root, `/`-separated, no leading `./`.
    pub path: String,
    /// File, directory or symbolic link.
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Permission bits, including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Size in bytes (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// SHA-256 of the contents, lowercase hex (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where the link points, verbatim (symbolic links only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// The numbers of a character or block device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceNumbers>,
    /// True for entries the ignore rules exclude but which are present
    /// anyway: always-included paths and the directories above re-included
    /// or always-included entries. `COPY` never sees them.
    #[serde(default, skip_serializing_if = "is_false")]
    pub excluded: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The walked context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The entries, sorted bytewise by path.
    pub entries: Vec<Entry>,
    /// Sum of the sizes of all file entries.
    pub total_bytes: u64,
}

impl Manifest {
    /// The entry at `path` (exact, context-relative), if any.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .and_then(|i| self.entries.get(i))
    }
}
