//! OCI and Docker schema2 manifests and indexes (manifest lists), and picking the
//! linux/amd64 entry of an index.

use serde::{Deserialize, Serialize};

use crate::images::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest type we can read, for the `Accept` header.
pub const ACCEPTED: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("malformed manifest: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported manifest media type {0:?} (schema1 and others are not supported)")]
    MediaType(String),
    #[error("no linux/amd64 image in the index (it has: {0})")]
    NoPlatform(String),
    #[error("unsupported layer media type {0:?}")]
    LayerType(String),
}

/// A content descriptor: what a manifest says about a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker schema2; they share this shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// An index or manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// A parsed manifest of either kind.
#[derive(Debug, Clone)]
pub enum Manifest {
    Image(ImageManifest),
    Index(Index),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

impl Manifest {
    /// Parses manifest bytes; `content_type` is what the server said (may be empty), the
    /// `mediaType` field wins when present.
    pub fn parse(bytes: &[u8], content_type: &str) -> Result<Manifest, ManifestError> {
        let probe: Probe = serde_json::from_slice(bytes)?;
        let ct = content_type.split(';').next().unwrap_or("").trim();
        let media = probe
            .media_type
            .as_deref()
            .filter(|m| !m.is_empty())
            .unwrap_or(ct);
        match media {
            OCI_INDEX | DOCKER_LIST => Ok(Manifest::Index(serde_json::from_slice(bytes)?)),
            OCI_MANIFEST | DOCKER_MANIFEST => Ok(Manifest::Image(check_layers(
                serde_json::from_slice(bytes)?,
            )?)),
            // An OCI manifest may omit mediaType and be served as plain JSON.
            "" | "application/json" if probe.manifests.is_some() => {
                Ok(Manifest::Index(serde_json::from_slice(bytes)?))
            }
            "" | "application/json" => Ok(Manifest::Image(check_layers(serde_json::from_slice(
                bytes,
            )?)?)),
            other => Err(ManifestError::MediaType(other.to_string())),
        }
    }
}

fn check_layers(m: ImageManifest) -> Result<ImageManifest, ManifestError> {
    for l in &m.layers {
        let ok = l.media_type.is_empty()
            || [OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_GZIP]
                .contains(&l.media_type.as_str())
            || l.media_type == "application/vnd.docker.image.rootfs.diff.tar"
            || l.media_type
                .starts_with("application/vnd.oci.image.layer.nondistributable.v1.tar");
        if !ok {
            return Err(ManifestError::LayerType(l.media_type.clone()));
        }
    }
    Ok(m)
}

impl Index {
    /// The linux/amd64 manifest of the index, as Docker picks it on an x86-64 host.
    pub fn pick_linux_amd64(&self) -> Result<&Descriptor, ManifestError> {
        self.manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .ok_or_else(|| {
                let have: Vec<String> = self
                    .manifests
                    .iter()
                    .map(|d| match &d.platform {
                        Some(p) => format!("{}/{}", p.os, p.architecture),
                        None => "unknown".to_string(),
                    })
                    .collect();
                ManifestError::NoPlatform(if have.is_empty() {
                    "nothing".into()
                } else {
                    have.join(", ")
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(media: &str, data: &[u8], platform: Option<(&str, &str)>) -> serde_json::Value {
        let mut v = serde_json::json!({"mediaType": media, "digest": Digest::of(data).to_string(), "size": data.len()});
        if let Some((os, arch)) = platform {
            v["platform"] = serde_json::json!({"os": os, "architecture": arch});
        }
        v
    }

    #[test]
    fn parses_oci_and_docker_manifests() {
        for (mt, cfg, layer) in [
            (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_ZSTD),
            (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP),
        ] {
            let m = serde_json::json!({"schemaVersion": 2, "mediaType": mt,
                "config": desc(cfg, b"c", None), "layers": [desc(layer, b"l", None)]});
            match Manifest::parse(&serde_json::to_vec(&m).unwrap(), "").unwrap() {
                Manifest::Image(i) => assert_eq!(i.layers[0].digest, Digest::of(b"l")),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn picks_linux_amd64_from_an_index() {
        let idx = serde_json::json!({"schemaVersion": 2, "manifests": [
            desc(OCI_MANIFEST, b"arm", Some(("linux", "arm64"))),
            desc(OCI_MANIFEST, b"amd", Some(("linux", "amd64")))]});
        let Manifest::Index(i) =
            Manifest::parse(&serde_json::to_vec(&idx).unwrap(), OCI_INDEX).unwrap()
        else {
            panic!("not an index")
        };
        assert_eq!(i.pick_linux_amd64().unwrap().digest, Digest::of(b"amd"));
        let only_arm = Index {
            manifests: i.manifests[..1].to_vec(),
            ..i.clone()
        };
        let err = only_arm.pick_linux_amd64().unwrap_err().to_string();
        assert!(err.contains("linux/arm64"), "{err}");
    }

    #[test]
    fn rejects_schema1_garbage_and_foreign_layers() {
        let s1 = br#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#;
        assert!(matches!(
            Manifest::parse(s1, ""),
            Err(ManifestError::MediaType(_))
        ));
        assert!(matches!(
            Manifest::parse(b"{nope", ""),
            Err(ManifestError::Json(_))
        ));
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": desc(OCI_CONFIG, b"c", None), "layers": [desc("application/x-helm", b"l", None)]});
        assert!(matches!(
            Manifest::parse(&serde_json::to_vec(&m).unwrap(), ""),
            Err(ManifestError::LayerType(_))
        ));
    }
}
