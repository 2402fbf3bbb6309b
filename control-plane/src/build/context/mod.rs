//! The build context of `skiff build`: the directory whose files `COPY` and
//! `ADD` read, as Docker defines it.
//!
//! * [`dockerignore`] parses `.dockerignore` (or `<Dockerfile>.dockerignore`)
//!   with Docker's exact rules and says which line excluded a path;
//! * [`manifest`] walks the context directory (never following symbolic
//!   links) into a sorted list of entries with content hashes, reusing hashes
//!   from a [`StatCache`] when a file's stat fields are unchanged;
//! * [`checksum`] computes the cache key of what one `COPY`/`ADD` step reads.
//!
//! Choices where Docker is loose or where Skiff is stricter:
//!
//! * a pattern that cleans to `.` matches nothing (Docker never matches the
//!   context root either);
//! * classes follow Go's `filepath.Match`: only `^` negates, `[!a]` is the
//!   set `{!, a}` (as in Docker, whose regular expression does the same);
//! * `.dockerignore` is not read through a symbolic link, and a line that is
//!   not UTF-8 is an error (Docker compares raw bytes);
//! * names that are not UTF-8 are refused unless the rules exclude them.

mod clean;
mod entry;
mod glob;

pub mod checksum;
pub mod dockerignore;
pub mod manifest;
pub mod statcache;

pub use checksum::{checksum_sources, select_sources, ChecksumError};
pub use dockerignore::{
    select_ignore_file, Decision, IgnoreError, IgnoreFile, IgnoreFileKind, IgnoreMatcher,
};
pub use manifest::{walk_context, Entry, EntryKind, Manifest, WalkError, WalkOptions};
pub use statcache::{CachedHash, StatCache, StatKey};

/// Any failure of this module, for callers that do not need to tell the
/// stages apart.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
    #[error(transparent)]
    Walk(#[from] WalkError),
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
}
