//! The first step of every task's pipeline (prepare → admit → launch → report): what the
//! user asked for becomes what the launcher needs — the image's root filesystem and the
//! agent's run spec with the image's defaults under the user's overrides. The server's
//! tasks and `skiff run --local` both come through here.

use std::path::PathBuf;

use guest_agent::RunSpec;

use crate::images::oci::RunDefaults;
use crate::images::registry::RegistryOptions;
use crate::images::run::{resolve, RunError, RunOverrides};
use crate::images::source::{get_image, ImageSourceError};
use crate::images::{ImageStore, PullEvent, Reference};

/// Where the task's root filesystem comes from.
#[derive(Debug, Clone)]
pub enum RootSource {
    /// An image: from the store, the bundled busybox, or its registry.
    Image(Reference),
    /// A filesystem image file used as it is (`skiff run --local --rootfs`), no defaults.
    Disk(PathBuf),
}

/// What a task asks to run, from whichever front end it came.
#[derive(Debug, Clone)]
pub struct TaskInput {
    pub root: RootSource,
    pub overrides: RunOverrides,
    /// The VM's memory: the writable upper layer is a quarter of it (at least 16 MiB).
    pub memory_mib: u64,
    pub hostname: String,
    /// The task's stdin comes from the host (else /dev/null).
    pub stdin: bool,
}

/// Everything the launcher needs that depends on the image.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub rootfs: PathBuf,
    pub spec: RunSpec,
    /// The image's manifest digest (none for a bare disk).
    pub image_digest: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("image not found: {0}")]
    NotFound(#[source] Box<ImageSourceError>),
    #[error("cannot get image {reference}: {source}")]
    Image {
        reference: Reference,
        #[source]
        source: Box<ImageSourceError>,
    },
    #[error("cannot build the root filesystem of {reference}: {source}")]
    Rootfs {
        reference: Reference,
        #[source]
        source: Box<crate::images::PullError>,
    },
    #[error("image {reference}: {source}")]
    Run {
        reference: String,
        #[source]
        source: RunError,
    },
}

/// Resolves `input` against `images` (pulling with `registry` when needed; `progress`
/// hears the pull). Blocking: call it off the async workers.
pub fn prepare(
    images: &ImageStore,
    registry: &RegistryOptions,
    input: &TaskInput,
    progress: &(dyn Fn(PullEvent) + Sync),
) -> Result<Prepared, PrepareError> {
    let (rootfs, defaults, image_digest, name) = match &input.root {
        RootSource::Disk(path) => (
            path.clone(),
            RunDefaults::default(),
            None,
            path.display().to_string(),
        ),
        RootSource::Image(r) => {
            let image = get_image(images, r, registry, progress).map_err(|e| {
                if e.is_not_found() {
                    PrepareError::NotFound(Box::new(e))
                } else {
                    PrepareError::Image {
                        reference: r.clone(),
                        source: Box::new(e),
                    }
                }
            })?;
            let fs = images
                .rootfs(&image)
                .map_err(|source| PrepareError::Rootfs {
                    reference: r.clone(),
                    source: Box::new(source),
                })?;
            (
                fs.path,
                image.config.run_defaults(),
                Some(image.manifest_digest.to_string()),
                r.to_string(),
            )
        }
    };
    let process = resolve(&defaults, &input.overrides).map_err(|source| PrepareError::Run {
        reference: name,
        source,
    })?;
    Ok(Prepared {
        rootfs,
        spec: RunSpec {
            image_disk: "/dev/vda".into(),
            upper_size_mib: (input.memory_mib / 4).max(16),
            hostname: input.hostname.clone(),
            stdin: input.stdin,
            ..process
        },
        image_digest,
    })
}
