//! The OCI image config: what a run of the image does by default.

use serde::{Deserialize, Serialize};

use crate::images::digest::Digest;

/// An image config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("malformed image config: {0}")]
    Json(#[from] serde_json::Error),
    #[error("image is for {os}/{arch}, this host runs linux/amd64")]
    Platform { os: String, arch: String },
    #[error("image config lists {diff_ids} layer diff ids but the manifest has {layers} layers")]
    LayerCount { diff_ids: usize, layers: usize },
}

/// The parts of the OCI image config Skiff uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunDefaults>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

/// The `rootfs` section: uncompressed layer digests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// Defaults for a run of the image; run flags override them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl ImageConfig {
    /// Parses a config blob and checks it suits this host and the manifest's layer count.
    pub fn parse(bytes: &[u8], layers: usize) -> Result<ImageConfig, ConfigError> {
        let c: ImageConfig = serde_json::from_slice(bytes)?;
        let os_ok = c.os.is_empty() || c.os == "linux";
        let arch_ok = c.architecture.is_empty() || c.architecture == "amd64";
        if !os_ok || !arch_ok {
            return Err(ConfigError::Platform {
                os: c.os,
                arch: c.architecture,
            });
        }
        if let Some(r) = &c.rootfs {
            if !r.diff_ids.is_empty() && r.diff_ids.len() != layers {
                return Err(ConfigError::LayerCount {
                    diff_ids: r.diff_ids.len(),
                    layers,
                });
            }
        }
        Ok(c)
    }

    /// The run defaults (empty when the image has none).
    pub fn run_defaults(&self) -> RunDefaults {
        self.config.clone().unwrap_or_default()
    }
}

impl RunDefaults {
    /// The argv a run starts with, Docker's way: Entrypoint + Cmd, where `cmd` given by the
    /// user replaces the image's Cmd.
    pub fn argv(&self, cmd: Option<&[String]>) -> Vec<String> {
        let mut argv = self.entrypoint.clone().unwrap_or_default();
        match cmd {
            Some(c) => argv.extend_from_slice(c),
            None => argv.extend(self.cmd.clone().unwrap_or_default()),
        }
        argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"architecture":"amd64","os":"linux",
        "config":{"Entrypoint":["/bin/tini","--"],"Cmd":["sh"],"Env":["PATH=/bin","A=1"],
                  "WorkingDir":"/srv","User":"1000:1000","Labels":{"x":"y"}},
        "rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]},
        "history":[{"created_by":"test"}]}"#;

    #[test]
    fn keeps_entrypoint_cmd_env_workdir_user() {
        let c = ImageConfig::parse(CONFIG.as_bytes(), 1).unwrap();
        let d = c.run_defaults();
        assert_eq!(
            d.entrypoint.as_deref(),
            Some(&["/bin/tini".to_string(), "--".to_string()][..])
        );
        assert_eq!(d.env.as_ref().unwrap().len(), 2);
        assert_eq!(d.working_dir.as_deref(), Some("/srv"));
        assert_eq!(d.user.as_deref(), Some("1000:1000"));
        assert_eq!(d.argv(None), ["/bin/tini", "--", "sh"]);
        assert_eq!(
            d.argv(Some(&["echo".to_string()])),
            ["/bin/tini", "--", "echo"]
        );
    }

    #[test]
    fn rejects_other_platforms_bad_json_and_layer_count() {
        let arm = CONFIG.replace("amd64", "arm64");
        assert!(ImageConfig::parse(arm.as_bytes(), 1)
            .unwrap_err()
            .to_string()
            .contains("linux/arm64"));
        assert!(matches!(
            ImageConfig::parse(b"{", 0),
            Err(ConfigError::Json(_))
        ));
        assert!(matches!(
            ImageConfig::parse(CONFIG.as_bytes(), 2),
            Err(ConfigError::LayerCount { .. })
        ));
        let bare = ImageConfig::parse(b"{}", 3).unwrap();
        assert_eq!(bare.run_defaults(), RunDefaults::default());
    }
}
