//! `skiff image …`: the local image store (pull, list, remove, prune, import).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::Subcommand;
use control_plane::images::push::{push_image, PushEvent};
use control_plane::images::registry::{RegistryClient, RegistryOptions};
use control_plane::images::source as image_source;
use control_plane::images::{ImageStore, PullEvent, Reference};

use super::short;

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Pull an image from its registry.
    Pull {
        reference: String,
        /// Registries (host[:port]) allowed over plain HTTP.
        #[arg(long)]
        insecure: Vec<String>,
        /// Extra CA certificates (PEM).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        #[command(flatten)]
        limits: super::limits::LimitArgs,
    },
    /// Push a stored image to its registry (or to --dest), with the credentials of the
    /// registry auth file.
    Push {
        reference: String,
        /// Where to push it instead (REGISTRY/REPO:TAG).
        #[arg(long)]
        dest: Option<String>,
        /// Registries (host[:port]) allowed over plain HTTP.
        #[arg(long)]
        insecure: Vec<String>,
        /// Extra CA certificates (PEM).
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// List stored images.
    Ls,
    /// Remove an image's tag.
    Rm { reference: String },
    /// Delete blobs and root filesystems no tag uses.
    Prune,
    /// Import an OCI layout directory or a `docker save` tarball.
    Import { path: PathBuf },
}

pub fn store(state_dir: &Path) -> anyhow::Result<ImageStore> {
    ImageStore::open(state_dir, None).context("cannot open the image store")
}

/// Pull progress on stderr, as `docker pull` prints it.
pub fn progress(r: String) -> impl Fn(PullEvent) + Sync {
    move |e: PullEvent| match e {
        PullEvent::Resolved { manifest, layers } => {
            eprintln!("{r}: resolved {manifest} ({layers} layers)")
        }
        PullEvent::LayerCached { digest, .. } => {
            eprintln!("{}: already exists", short(&digest.to_string()))
        }
        PullEvent::LayerDone { digest, size } => eprintln!(
            "{}: pull complete ({size} bytes)",
            short(&digest.to_string())
        ),
        PullEvent::LayerRetry {
            digest,
            attempt,
            error,
        } => {
            eprintln!("{}: retry {attempt} ({error})", short(&digest.to_string()))
        }
        _ => {}
    }
}

/// Push progress on stderr, one line per blob and per retry (as `docker push` prints).
pub fn push_progress(e: PushEvent) {
    match e {
        PushEvent::Exists { digest, .. } => {
            eprintln!("{}: already exists", short(&digest.to_string()))
        }
        PushEvent::Mounted { digest, from, .. } => {
            eprintln!("{}: mounted from {from}", short(&digest.to_string()))
        }
        PushEvent::Uploading { digest, size } => {
            eprintln!("{}: uploading {size} bytes", short(&digest.to_string()))
        }
        PushEvent::Retry {
            digest,
            attempt,
            offset,
            error,
        } => eprintln!(
            "{}: retry {attempt} from byte {offset} ({error})",
            short(&digest.to_string())
        ),
        PushEvent::Pushed { digest, .. } => {
            eprintln!("{}: pushed", short(&digest.to_string()))
        }
        PushEvent::Progress { .. } => {}
    }
}

pub fn image(state_dir: &Path, c: ImageCmd) -> anyhow::Result<i32> {
    let st = store(state_dir)?;
    match c {
        ImageCmd::Pull {
            reference,
            insecure,
            ca_file,
            limits,
        } => {
            let st = st.with_limits(limits.limits());
            let r: Reference = reference.parse().map_err(|e| anyhow!("{reference}: {e}"))?;
            let opts = RegistryOptions {
                insecure,
                ca_file,
                ..Default::default()
            };
            let image = image_source::pull(&st, &r, &opts, &progress(r.to_string()))?;
            let fs = st.rootfs(&image)?;
            crate::outln!(
                "{r}: {} (rootfs {})",
                image.manifest_digest,
                fs.path.display()
            );
        }
        ImageCmd::Push {
            reference,
            dest,
            insecure,
            ca_file,
        } => {
            let src: Reference = reference.parse().map_err(|e| anyhow!("{reference}: {e}"))?;
            let dest: Reference = match &dest {
                Some(d) => d.parse().map_err(|e| anyhow!("--dest {d}: {e}"))?,
                None => src.clone(),
            };
            let client = RegistryClient::new(RegistryOptions {
                insecure,
                ca_file,
                ..Default::default()
            })?;
            let digest = push_image(&st, &client, &src, &dest, &push_progress)?;
            crate::outln!("{dest}: {digest}");
        }
        ImageCmd::Ls => {
            crate::outln!("{:<48} {:<20} {:>12}", "REFERENCE", "IMAGE ID", "SIZE");
            for i in st.list()? {
                crate::outln!(
                    "{:<48} {:<20} {:>12}",
                    i.reference.to_string(),
                    short(&i.id.to_string()),
                    i.size
                );
            }
        }
        ImageCmd::Rm { reference } => {
            let r: Reference = reference.parse().map_err(|e| anyhow!("{reference}: {e}"))?;
            st.remove(&r)?;
            crate::outln!("untagged {r}");
        }
        ImageCmd::Prune => crate::outln!("{}", st.prune()?),
        ImageCmd::Import { path } => {
            let images = if path.is_dir() {
                control_plane::images::import::import_oci_layout(&st, &path, None)?
            } else {
                control_plane::images::import::import_docker_save(&st, &path)?
            };
            for i in images {
                crate::outln!("imported {} ({})", i.reference, i.manifest_digest);
            }
        }
    }
    Ok(0)
}
