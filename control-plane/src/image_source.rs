//! Where a run's image comes from: the local store, else the bundled busybox (made on
//! first use), else a pull from its registry. Shared by `skiff run --local` and the server.

use std::path::Path;

use crate::images::busybox::{self, BusyboxError};
use crate::images::registry::{RegistryClient, RegistryOptions};
use crate::images::{Image, ImageStore, PullError, PullEvent, Reference};

#[derive(Debug, thiserror::Error)]
pub enum ImageSourceError {
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error("cannot make the bundled local/busybox:latest: {0}")]
    Busybox(#[from] BusyboxError),
}

impl ImageSourceError {
    /// The registry (or the store) does not know the image.
    pub fn is_not_found(&self) -> bool {
        use crate::images::registry::RegistryError as R;
        matches!(
            self,
            ImageSourceError::Pull(PullError::NotFound(_))
                | ImageSourceError::Pull(PullError::Registry(
                    R::ManifestUnknown { .. } | R::NameUnknown { .. }
                ))
        )
    }
}

/// The stored image, else the bundled busybox made on first use, else a pull.
pub fn get_image(
    store: &ImageStore,
    r: &Reference,
    opts: &RegistryOptions,
    progress: &(dyn Fn(PullEvent) + Sync),
) -> Result<Image, ImageSourceError> {
    if let Some(i) = store.lookup(r)? {
        return Ok(i);
    }
    if r.to_string() == busybox::BUSYBOX_REF {
        return Ok(busybox::build_busybox_image(
            store,
            Path::new(busybox::DEFAULT_BUSYBOX),
        )?);
    }
    pull(store, r, opts, progress)
}

/// Pulls `r` from its registry (the bundled busybox is made locally instead).
pub fn pull(
    store: &ImageStore,
    r: &Reference,
    opts: &RegistryOptions,
    progress: &(dyn Fn(PullEvent) + Sync),
) -> Result<Image, ImageSourceError> {
    if r.to_string() == busybox::BUSYBOX_REF {
        return get_image(store, r, opts, progress);
    }
    let client = RegistryClient::new(opts.clone()).map_err(PullError::from)?;
    Ok(store.pull(&client, r, progress)?)
}
