//! Images: references, the registry client, the blob store, layer unpacking and the
//! read-only root filesystem images that microVMs mount.

pub mod auth;
pub mod auth_file;
pub mod busybox;
pub mod config;
pub mod digest;
pub mod error_text;
pub mod gc;
pub mod import;
pub mod manifest;
pub mod pull;
pub mod readahead;
pub mod reference;
pub mod registry;
pub mod rootfs;
pub mod run;
pub mod store;
pub mod unpack;
pub mod workdir;

pub use digest::Digest;
pub use pull::{Image, ImageStore, PullError, PullEvent};
pub use reference::Reference;
