//! `skiff image import`: images from an OCI layout folder or a `docker save` tarball, put
//! into the store (every blob verified) and tagged, with no registry involved.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::json;
use tracing::info;

use crate::images::digest::Digest;
use crate::images::oci::manifest::{
    Descriptor, Index, Manifest, ManifestError, DOCKER_CONFIG, DOCKER_MANIFEST, OCI_INDEX,
};
use crate::images::registry::reference::{Reference, ReferenceError, LOCAL_REGISTRY};
use crate::images::store::{writer_lock, Image, ImageStore, PullError, StoreError};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const MAX_JSON_BYTES: u64 = 16 << 20;

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path} is not an OCI layout: {why}")]
    NotLayout { path: PathBuf, why: String },
    #[error("{path} is not a docker save archive: {why}")]
    NotArchive { path: PathBuf, why: String },
    #[error("blob {digest} listed in {path} is missing from it")]
    MissingBlob { path: PathBuf, digest: Digest },
    #[error("bad image name {name:?} in {path}: {source}")]
    Name {
        path: PathBuf,
        name: String,
        #[source]
        source: ReferenceError,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error("import I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_reader(file.take(MAX_JSON_BYTES))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Copies `file` into the store as `digest` (verified) unless it is there.
fn store_file(
    store: &ImageStore,
    file: &Path,
    digest: &Digest,
    size: Option<u64>,
) -> Result<(), ImportError> {
    store.blobs().ensure(digest, size, |w| {
        File::open(file)
            .and_then(|mut f| io::copy(&mut f, w))
            .map(drop)
    })?;
    Ok(())
}

/// Stores a file whose digest is not known yet (it is computed on the way).
fn store_unknown(store: &ImageStore, file: &Path) -> Result<(Digest, u64), ImportError> {
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let size =
        io::copy(&mut File::open(file).map_err(io_at(file))?, &mut hasher).map_err(io_at(file))?;
    let digest = Digest::from_hasher(hasher);
    store_file(store, file, &digest, Some(size))?;
    Ok((digest, size))
}

/// Imports every image of the OCI layout at `dir`. A tag in `org.opencontainers.image.ref.name`
/// names the image `repo:<tag>` (`repo` defaults to `local/<folder name>`); a full reference
/// there, or in `io.containerd.image.name`, is used as it is.
pub fn import_oci_layout(
    store: &ImageStore,
    dir: &Path,
    repo: Option<&Reference>,
) -> Result<Vec<Image>, ImportError> {
    let not_layout = |why: String| ImportError::NotLayout {
        path: dir.to_path_buf(),
        why,
    };
    #[derive(Deserialize)]
    struct Layout {
        #[serde(rename = "imageLayoutVersion")]
        version: String,
    }
    let layout: Layout = read_json(&dir.join("oci-layout")).map_err(not_layout)?;
    let _gc = writer_lock(store.state_dir())?;
    if !layout.version.starts_with("1.") {
        return Err(not_layout(format!(
            "unsupported imageLayoutVersion {}",
            layout.version
        )));
    }
    #[derive(Deserialize)]
    struct TopIndex {
        manifests: Vec<AnnotatedDescriptor>,
    }
    #[derive(Deserialize)]
    struct AnnotatedDescriptor {
        #[serde(flatten)]
        desc: Descriptor,
        #[serde(default)]
        annotations: HashMap<String, String>,
    }
    let index: TopIndex = read_json(&dir.join("index.json")).map_err(not_layout)?;
    let default_repo = match repo {
        Some(r) => r.clone(),
        None => {
            let folder = dir
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_lowercase()));
            let clean: String = folder
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let name = format!(
                "local/{}",
                if clean.is_empty() {
                    "import".into()
                } else {
                    clean
                }
            );
            name.parse().map_err(|source| ImportError::Name {
                path: dir.to_path_buf(),
                name,
                source,
            })?
        }
    };
    let blob = |d: &Digest| dir.join("blobs").join("sha256").join(d.hex());
    let mut images = Vec::new();
    for entry in index.manifests {
        let mut desc = entry.desc;
        if !blob(&desc.digest).is_file() {
            return Err(ImportError::MissingBlob {
                path: dir.to_path_buf(),
                digest: desc.digest,
            });
        }
        if desc.media_type == OCI_INDEX || desc.media_type.ends_with("manifest.list.v2+json") {
            let bytes = fs::read(blob(&desc.digest)).map_err(io_at(&blob(&desc.digest)))?;
            let Manifest::Index(inner): Manifest = Manifest::parse(&bytes, &desc.media_type)?
            else {
                return Err(not_layout(format!("{} is not an index", desc.digest)));
            };
            store_file(store, &blob(&desc.digest), &desc.digest, Some(desc.size))?;
            desc = Index::pick_linux_amd64(&inner)?.clone();
        }
        let mpath = blob(&desc.digest);
        let bytes = fs::read(&mpath).map_err(|_| ImportError::MissingBlob {
            path: dir.to_path_buf(),
            digest: desc.digest.clone(),
        })?;
        let Manifest::Image(m) = Manifest::parse(&bytes, &desc.media_type)? else {
            return Err(not_layout(format!("{} is a nested index", desc.digest)));
        };
        for d in std::iter::once(&m.config).chain(&m.layers) {
            if !blob(&d.digest).is_file() {
                return Err(ImportError::MissingBlob {
                    path: dir.to_path_buf(),
                    digest: d.digest.clone(),
                });
            }
            store_file(store, &blob(&d.digest), &d.digest, Some(d.size))?;
        }
        store_file(store, &mpath, &desc.digest, Some(desc.size))?;
        let name = entry
            .annotations
            .get(CONTAINERD_NAME)
            .or(entry.annotations.get(REF_NAME));
        let reference = match name {
            Some(n) if n.contains('/') || n.contains('@') => {
                n.parse().map_err(|source| ImportError::Name {
                    path: dir.to_path_buf(),
                    name: n.clone(),
                    source,
                })?
            }
            Some(tag) => {
                let r = format!("{}:{tag}", default_repo.name());
                r.parse().map_err(|source| ImportError::Name {
                    path: dir.to_path_buf(),
                    name: tag.clone(),
                    source,
                })?
            }
            None => Reference {
                tag: None,
                digest: Some(desc.digest.clone()),
                ..default_repo.clone()
            },
        };
        store.tag(&reference, &desc.digest)?;
        info!(image = %reference, digest = %desc.digest, "imported from OCI layout");
        images.push(store.load(&reference, &desc.digest)?);
    }
    Ok(images)
}

/// Imports the images of a `docker save` tarball (the `manifest.json` format, as written by
/// Docker and by `skopeo copy … docker-archive:`), named by their `RepoTags`.
pub fn import_docker_save(store: &ImageStore, archive: &Path) -> Result<Vec<Image>, ImportError> {
    let not_archive = |why: String| ImportError::NotArchive {
        path: archive.to_path_buf(),
        why,
    };
    let _gc = writer_lock(store.state_dir())?;
    let tmp_root = store.state_dir().join("tmp");
    fs::create_dir_all(&tmp_root).map_err(io_at(&tmp_root))?;
    let work = tempfile::Builder::new()
        .prefix("import-")
        .tempdir_in(&tmp_root)
        .map_err(io_at(&tmp_root))?;
    // Only files and links that stay inside the archive are taken; it is not trusted.
    let file = File::open(archive).map_err(io_at(archive))?;
    let mut tar = tar::Archive::new(file);
    let mut files: HashMap<String, PathBuf> = HashMap::new();
    // Docker links a layer that appears twice to its first copy.
    let mut links: HashMap<String, String> = HashMap::new();
    for (i, entry) in tar
        .entries()
        .map_err(|e| not_archive(e.to_string()))?
        .enumerate()
    {
        let mut entry = entry.map_err(|e| not_archive(e.to_string()))?;
        let name = normalize("", &String::from_utf8_lossy(&entry.path_bytes()))
            .ok_or_else(|| not_archive("an entry name escapes the archive".into()))?;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let dest = work.path().join(format!("f{i}"));
                let mut out = File::create(&dest).map_err(io_at(&dest))?;
                io::copy(&mut entry, &mut out).map_err(|e| not_archive(e.to_string()))?;
                files.insert(name, dest);
            }
            kind @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                let target = String::from_utf8_lossy(&entry.link_name_bytes().unwrap_or_default())
                    .into_owned();
                let base = if kind == tar::EntryType::Symlink {
                    name.rsplit_once('/').map_or("", |(d, _)| d)
                } else {
                    ""
                };
                let target = normalize(base, &target)
                    .ok_or_else(|| not_archive(format!("link {name:?} escapes the archive")))?;
                links.insert(name, target);
            }
            _ => {}
        }
    }
    let lookup = |name: &str| -> Result<PathBuf, ImportError> {
        let mut n = normalize("", name).unwrap_or_default();
        for _ in 0..8 {
            if let Some(p) = files.get(&n) {
                return Ok(p.clone());
            }
            match links.get(&n) {
                Some(t) => n = t.clone(),
                None => break,
            }
        }
        Err(not_archive(format!(
            "{name} is listed in manifest.json but missing"
        )))
    };
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let manifest_path = lookup("manifest.json")?;
    let entries: Vec<Entry> = read_json(&manifest_path).map_err(not_archive)?;
    let mut images = Vec::new();
    for e in entries {
        let (config_digest, config_size) = store_unknown(store, &lookup(&e.config)?)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let (digest, size) = store_unknown(store, &lookup(l)?)?;
            layers.push(json!({"mediaType": "application/vnd.docker.image.rootfs.diff.tar", "digest": digest, "size": size}));
        }
        let manifest = json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": config_digest, "size": config_size},
            "layers": layers});
        let bytes = serde_json::to_vec(&manifest).map_err(|e| not_archive(e.to_string()))?;
        let digest = store.blobs().put_bytes(&bytes)?;
        let tags = e.repo_tags.unwrap_or_default();
        let mut first = None;
        for t in &tags {
            let r: Reference = t.parse().map_err(|source| ImportError::Name {
                path: archive.to_path_buf(),
                name: t.clone(),
                source,
            })?;
            store.tag(&r, &digest)?;
            info!(image = %r, %digest, "imported from docker save archive");
            first.get_or_insert(r);
        }
        let r = first.unwrap_or_else(|| Reference {
            registry: LOCAL_REGISTRY.into(),
            repository: "import".into(),
            tag: None,
            digest: Some(digest.clone()),
        });
        images.push(store.load(&r, &digest)?);
    }
    Ok(images)
}

/// Joins `name` to `base` inside an archive, resolving `.` and `..`; None if it leaves it.
fn normalize(base: &str, name: &str) -> Option<String> {
    let mut parts: Vec<&str> = if name.starts_with('/') {
        Vec::new()
    } else {
        base.split('/').filter(|p| !p.is_empty()).collect()
    };
    for p in name.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}
