//! Images: references, the registry client, the blob store, layer unpacking and the
//! read-only root filesystem images that microVMs mount.
//!
//! Sub-modules by concern, each depending only on those listed before it (no circles):
//! - `digest`, `error_text`, `limits`: shared primitives;
//! - `oci`: the manifest and config formats;
//! - `registry`: references, auth and the registry client;
//! - `unpack`: applying layers (tar, gzip, zstd, whiteouts) onto a folder;
//! - `rootfs`: the unpack work folder and the read-only image built from the layers;
//! - `store`: the blob store, `ImageStore` (pull, lookup), its lock and gc;
//! - `import`: OCI layouts, `docker save` archives and the bundled busybox;
//! - `run`: a task's command from the image config; `source`: where a run's image comes from.

pub mod cancel;
pub mod digest;
pub mod error_text;
pub mod import;
pub mod limits;
pub mod oci;
pub mod push;
pub mod registry;
pub mod rootfs;
pub mod run;
pub mod source;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use limits::Limits;
pub use registry::Reference;
pub use store::{Image, ImageStore, PullError, PullEvent};
