//! The bundled base image `local/busybox:latest`, made from Debian's busybox-static so a
//! task can run with no registry at all: one plain-tar layer with `/bin/busybox`, a symlink
//! per applet, a few base folders and `/etc/passwd`. Reproducible: fixed times, sorted names.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::images::digest::Digest;
use crate::images::oci::manifest::{OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};
use crate::images::registry::Reference;
use crate::images::store::{writer_lock, Image, ImageStore, PullError};

/// The name the bundled image gets.
pub const BUSYBOX_REF: &str = "local/busybox:latest";
/// Where Debian's busybox-static puts the binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// Why the base image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BusyboxError {
    #[error("{path} cannot be read ({source}): install busybox-static")]
    Missing {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} --list failed: {why}")]
    List { path: PathBuf, why: String },
    #[error("building the busybox layer: {0}")]
    Layer(#[source] io::Error),
    #[error(transparent)]
    Store(#[from] PullError),
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// Builds the one-layer tar of the image.
fn layer(binary: &[u8], applets: &[String]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("var", 0o755),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, format!("{dir}/"), io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    b.append_data(&mut h, "bin/busybox", binary)?;
    for applet in applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    for (name, text) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ] {
        let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64);
        b.append_data(&mut h, name, text.as_bytes())?;
    }
    b.into_inner()
}

/// Makes `local/busybox:latest` from the busybox binary at `busybox` (normally
/// `/bin/busybox`) and stores it. Running it again with the same binary gives the same digest.
pub fn build_busybox_image(store: &ImageStore, busybox: &Path) -> Result<Image, BusyboxError> {
    let binary = fs::read(busybox).map_err(|source| BusyboxError::Missing {
        path: busybox.into(),
        source,
    })?;
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| BusyboxError::List {
            path: busybox.into(),
            why: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(BusyboxError::List {
            path: busybox.into(),
            why: out.status.to_string(),
        });
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/') && *a != "." && *a != "..")
        .map(String::from)
        .collect();
    applets.sort();
    applets.dedup();
    let tar = layer(&binary, &applets).map_err(BusyboxError::Layer)?;
    let _gc = writer_lock(store.state_dir())?;
    let layer_digest = store.blobs().put_bytes(&tar).map_err(PullError::from)?;
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "skiff: the host's busybox-static and its applets"}],
    });
    let config = serde_json::to_vec(&config).map_err(|e| BusyboxError::Layer(e.into()))?;
    let config_digest = store.blobs().put_bytes(&config).map_err(PullError::from)?;
    let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": tar.len()}]});
    let manifest = serde_json::to_vec(&manifest).map_err(|e| BusyboxError::Layer(e.into()))?;
    let digest: Digest = store
        .blobs()
        .put_bytes(&manifest)
        .map_err(PullError::from)?;
    let r: Reference = BUSYBOX_REF
        .parse()
        .map_err(|e| BusyboxError::Layer(io::Error::other(e)))?;
    store.tag(&r, &digest)?;
    Ok(store.load(&r, &digest)?)
}
