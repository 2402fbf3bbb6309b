//! Layers as Skiff writes them: canonical tar streams, the same bytes for the same entries
//! on any machine (see `writer`), made from entries the host holds or from a tar it was
//! handed and checks as hostile (see `spool`).

pub mod entry;
pub mod spool;
pub mod writer;

use std::io;

pub use entry::{clean_path, file_caps, Content, EntryKind, LayerEntry, FILE_CAPS_XATTR};
pub use spool::{spool_tar, Spooled};
pub use writer::{write_layer, LayerDigests};

use crate::images::unpack::Limit;

/// Why a layer could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer entry {entry:?}: {why}")]
    BadEntry { entry: String, why: String },
    #[error("the layer is over {0}")]
    Limit(Limit),
    #[error("reading the layer: {0}")]
    Read(#[source] io::Error),
    #[error("reading {entry:?} for the layer: {source}")]
    Content {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("writing the layer: {0}")]
    Write(#[source] io::Error),
    #[error("spooling the layer: {0}")]
    Spool(#[source] io::Error),
}
