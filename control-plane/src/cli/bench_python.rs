//! The real-interpreter image of `skiff bench cold-start --python`: a Debian root made by
//! `debootstrap` (variant minbase, plus python3), written once as an OCI layout in a cache
//! directory (one uncompressed layer, numeric owners, no device nodes, no downloaded
//! packages) and imported into each server the benchmark starts.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::json;
use sha2::{Digest, Sha256};

/// What each task runs.
pub const COMMAND: [&str; 3] = ["python3", "-c", "import json, hashlib, sqlite3"];

/// Where the layouts are kept between runs (one per Debian suite).
pub const DEFAULT_CACHE: &str = "/var/cache/skiff/bench";

/// The image: its OCI layout and the reference it is imported as.
pub struct PythonImage {
    pub layout: PathBuf,
    pub reference: String,
}

/// The image for `suite`, made with `debootstrap` from `mirror` unless the cache has it.
pub fn ensure(cache: &Path, suite: &str, mirror: &str) -> anyhow::Result<PythonImage> {
    if suite.is_empty() || !suite.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("--python-suite {suite:?}: a Debian suite name (letters, digits, -)");
    }
    let layout = cache.join(format!("python-{suite}"));
    let reference = format!("local/python-{suite}:latest");
    if layout.join("index.json").is_file() {
        return Ok(PythonImage { layout, reference });
    }
    if Command::new("debootstrap")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("debootstrap is not installed (scripts/setup.sh installs it; or apt-get install debootstrap)");
    }
    let work = cache.join(format!("python-{suite}.building"));
    let _ = std::fs::remove_dir_all(&work);
    let root = work.join("rootfs");
    std::fs::create_dir_all(&root).with_context(|| format!("cannot make {}", root.display()))?;
    eprintln!(
        "python: debootstrap {suite} (minbase + python3) from {mirror} into {} …",
        root.display()
    );
    let status = Command::new("debootstrap")
        .args(["--variant=minbase", "--include=python3", suite])
        .arg(&root)
        .arg(mirror)
        .status()
        .context("cannot run debootstrap")?;
    if !status.success() {
        bail!(
            "debootstrap {suite} failed ({status}); its log is in {}",
            root.join("debootstrap/debootstrap.log").display()
        );
    }
    let out = work.join("layout");
    write_layout(&root, &out, &reference)?;
    let _ = std::fs::remove_dir_all(&layout);
    std::fs::rename(&out, &layout)
        .with_context(|| format!("cannot move the layout to {}", layout.display()))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(PythonImage { layout, reference })
}

/// sha256 of a file, as an OCI digest, and its size.
fn digest_of(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((format!("sha256:{}", hex::encode(h.finalize())), n))
}

/// Moves `file` into the layout's blobs under its digest; returns its descriptor.
fn add_blob(blobs: &Path, file: &Path, media_type: &str) -> anyhow::Result<serde_json::Value> {
    let (digest, size) = digest_of(file)?;
    let name = digest.trim_start_matches("sha256:");
    std::fs::rename(file, blobs.join(name))?;
    Ok(json!({"mediaType": media_type, "digest": digest, "size": size}))
}

/// An OCI layout of `root` as one layer, tagged `reference`.
fn write_layout(root: &Path, out: &Path, reference: &str) -> anyhow::Result<()> {
    let blobs = out.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let layer = out.join("layer.tar");
    let status = Command::new("tar")
        .args([
            "--numeric-owner",
            "--sort=name",
            "--exclude=./dev/*",
            "--exclude=./proc/*",
        ])
        .args([
            "--exclude=./sys/*",
            "--exclude=./var/cache/apt/archives/*.deb",
        ])
        .arg("-C")
        .arg(root)
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()
        .context("cannot run tar")?;
    if !status.success() {
        bail!("tar of {} failed ({status})", root.display());
    }
    let layer_desc = add_blob(&blobs, &layer, "application/vnd.oci.image.layer.v1.tar")?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["python3"],
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    });
    let write = |name: &str, v: &serde_json::Value| -> anyhow::Result<PathBuf> {
        let p = out.join(name);
        std::fs::write(&p, serde_json::to_vec(v)?)?;
        Ok(p)
    };
    let config_desc = add_blob(
        &blobs,
        &write("config.json", &config)?,
        "application/vnd.oci.image.config.v1+json",
    )?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    });
    let mut manifest_desc = add_blob(
        &blobs,
        &write("manifest.json", &manifest)?,
        "application/vnd.oci.image.manifest.v1+json",
    )?;
    manifest_desc["annotations"] = json!({"org.opencontainers.image.ref.name": reference});
    write(
        "index.json",
        &json!({"schemaVersion": 2, "manifests": [manifest_desc]}),
    )?;
    write("oci-layout", &json!({"imageLayoutVersion": "1.0.0"}))?;
    Ok(())
}

/// Imports the image into the store of the server whose state dir is `state_dir`.
pub fn import_into(image: &PythonImage, state_dir: &Path) -> anyhow::Result<()> {
    let store = control_plane::images::ImageStore::open(state_dir, None)?;
    control_plane::images::import::import_oci_layout(&store, &image.layout, None)
        .with_context(|| format!("cannot import {}", image.layout.display()))?;
    Ok(())
}
