//! Limits on what an image may make the host do, with defaults a user can raise
//! (`ImageStore::with_limits`; the `--max-image-size`, `--max-image-entries`,
//! `--max-config-size` and `--max-manifest-size` flags of `skiff serve`, `skiff run --local`
//! and `skiff image pull`).

/// Caps on one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Uncompressed bytes of all its layers together (the tar streams, headers included).
    pub max_image_bytes: u64,
    /// Tar entries of all its layers together.
    pub max_image_entries: u64,
    /// Size of its config blob (read whole into memory).
    pub max_config_bytes: u64,
    /// Size of each manifest or index (read whole into memory).
    pub max_manifest_bytes: u64,
}

/// 16 GiB uncompressed.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 16 << 30;
/// A million entries.
pub const DEFAULT_MAX_IMAGE_ENTRIES: u64 = 1_000_000;
/// 8 MiB of config (real ones are a few KiB; long histories reach a few hundred).
pub const DEFAULT_MAX_CONFIG_BYTES: u64 = 8 << 20;
/// 4 MiB of manifest (an index of every platform is a few KiB).
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 4 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_image_entries: DEFAULT_MAX_IMAGE_ENTRIES,
            max_config_bytes: DEFAULT_MAX_CONFIG_BYTES,
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
        }
    }
}
