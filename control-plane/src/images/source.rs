//! Where a run's image comes from: the local store, else the bundled busybox (made on
//! first use), else a pull from its registry. Shared by `skiff run --local` and the server.

use std::path::Path;

use crate::images::import::busybox::{self, BusyboxError};
use crate::images::registry::{Reference, RegistryClient, RegistryOptions};
use crate::images::store::{Image, ImageStore, PullError, PullEvent};

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
        // One builder at a time, across processes too: concurrent first runs would
        // otherwise build it side by side and trip over each other's files.
        let _lock = lock_file(&store.state_dir().join("busybox.lock"))?;
        if let Some(i) = store.lookup(r)? {
            return Ok(i);
        }
        return Ok(busybox::build_busybox_image(
            store,
            Path::new(busybox::DEFAULT_BUSYBOX),
        )?);
    }
    pull(store, r, opts, progress)
}

/// An exclusive `flock` held until the file is dropped.
fn lock_file(path: &Path) -> Result<std::fs::File, ImageSourceError> {
    let io = |source| {
        ImageSourceError::Pull(PullError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io)?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).map_err(|e| io(e.into()))?;
    Ok(f)
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
