//! Applying image layers (tar, optionally gzip- or zstd-compressed) onto a root folder.

pub mod apply;
pub mod at;
pub mod budget;
pub mod compression;
pub mod error;
pub mod readahead;

pub use apply::{apply_layer, apply_layer_file, LayerStats};
pub use budget::{Budget, Limit};
pub use compression::{decompressed, detect, Compression};
pub use error::UnpackError;
