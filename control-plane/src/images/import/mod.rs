//! Images that come from files instead of a registry: OCI layout folders and `docker save`
//! archives (`archive`), and the bundled busybox image (`busybox`).

pub mod archive;
pub mod busybox;

pub use archive::{import_docker_save, import_oci_layout, ImportError};
