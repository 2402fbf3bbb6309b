//! Crafted layers for the unpacking and limits tests: raw names, any mode, owner or type,
//! and images pushed with a config of the test's choosing.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use control_plane::images::Digest;
use serde_json::{json, Value};

use crate::registry::{Layer, Registry, Tar, OCI_MANIFEST};

/// A layer tar with full control over each header (any mode, type and link target): the
/// harness's [`Tar`] with its entries made by the caller.
pub struct Crafted(Tar);

impl Default for Crafted {
    fn default() -> Self {
        Self::new()
    }
}

impl Crafted {
    pub fn new() -> Self {
        Crafted(Tar::new())
    }

    /// Appends one entry; `name` and `link` up to 100 bytes.
    pub fn entry(
        self,
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        link: Option<&str>,
        data: &[u8],
    ) -> Self {
        Crafted(self.0.entry(name, kind, mode, link, data))
    }
    pub fn dir(self, name: &str, mode: u32) -> Self {
        self.entry(name, tar::EntryType::Directory, mode, None, b"")
    }
    pub fn file(self, name: &str, mode: u32, data: &str) -> Self {
        self.entry(name, tar::EntryType::Regular, mode, None, data.as_bytes())
    }
    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Symlink, 0o777, Some(target), b"")
    }
    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Link, 0o644, Some(target), b"")
    }
    pub fn build(self) -> Vec<u8> {
        self.0.build()
    }
}

/// A gzip layer holding one file `name` of `size` zero bytes, made without holding the
/// uncompressed tar in memory (its `tar` field is left empty); also returns its diff_id
/// (the tar's sha256, from `sha256sum`).
pub fn zeros_layer(name: &str, size: u64) -> Result<(Layer, Digest)> {
    let mut sum = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running sha256sum")?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    {
        let mut sum_in = sum.stdin.take().context("sha256sum stdin")?;
        let mut both = |b: &[u8]| -> Result<()> {
            gz.write_all(b)?;
            sum_in.write_all(b)?;
            Ok(())
        };
        let mut h = tar::Header::new_gnu();
        h.set_path(name)?;
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        both(h.as_bytes())?;
        let zeros = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            both(&zeros[..n])?;
            left -= n as u64;
        }
        let pad = (512 - size % 512) % 512;
        both(&vec![0u8; pad as usize + 1024])?;
    }
    let out = sum.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().context("sha256sum output")?;
    let diff_id = format!("sha256:{hex}").parse()?;
    let bytes = gz.finish()?;
    Ok((
        Layer {
            tar: Vec::new(),
            bytes,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        },
        diff_id,
    ))
}

/// Pushes an OCI image whose config is `config` as given (diff_ids and all), so tests can
/// make it lie or make it large. Returns the manifest digest.
pub fn push_with_config(
    reg: &Registry,
    repo: &str,
    tag: &str,
    layers: &[Layer],
    config: &[u8],
) -> Result<Digest> {
    let mut descs = Vec::new();
    for l in layers {
        let d = reg.push_blob(repo, &l.bytes)?;
        descs.push(
            json!({"mediaType": l.media_type, "digest": d.to_string(), "size": l.bytes.len()}),
        );
    }
    let config_digest = reg.push_blob(repo, config)?;
    let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.to_string(), "size": config.len()},
        "layers": descs});
    reg.push_manifest(repo, tag, OCI_MANIFEST, &manifest)
}

/// An image config with these diff_ids and an empty run section.
pub fn config_with_diff_ids(diff_ids: &[Digest]) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(|d| d.to_string()).collect();
    let v: Value = json!({"architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": ids}});
    serde_json::to_vec(&v).expect("json")
}

/// A registry client that may use plain HTTP with `registry` (`host:port`), as the test
/// registries and proxies on loopback need now that loopback gets no exception.
pub fn insecure_client(registry: &str) -> control_plane::images::registry::RegistryClient {
    control_plane::images::registry::RegistryClient::new(
        control_plane::images::registry::RegistryOptions {
            insecure: vec![registry.to_string()],
            ..Default::default()
        },
    )
    .expect("a registry client")
}

/// `len` bytes that gzip cannot shrink (a xorshift stream; each `seed` gives its own), so
/// a layer of them is as large as they are.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
