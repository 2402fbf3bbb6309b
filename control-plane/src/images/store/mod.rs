//! The image store in a state dir: content-addressed blobs (`blobs`), the registries
//! known to hold them (`blob_sources`), images pulled and tagged (`image_store`), the
//! writers' lock (`lock`) and listing / pruning (`gc`).

pub mod blob_sources;
pub mod blobs;
pub mod error;
pub mod gc;
pub mod image_store;
pub mod lock;

pub use blob_sources::BlobSources;
pub use blobs::{BlobStore, StoreError};
pub use error::PullError;
pub use gc::{ImageSummary, PruneReport};
pub use image_store::{Image, ImageStore, PullEvent};
pub use lock::{writer_lock, GcGuard};
