//! Registry credentials from the auth file Docker, Podman and skopeo share: `{"auths":
//! {"HOST[:PORT]": {"auth": base64("user:password")}}}` (or `username` and `password`).
//!
//! Found as Podman does: `$REGISTRY_AUTH_FILE`, else `$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`. A missing file means no credentials; a malformed one is an error.
//! Credential helpers (`credsStore`, `credHelpers`) are not run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::auth::Credentials;
use super::reference::DOCKER_HUB;

/// A malformed auth file.
#[derive(Debug, thiserror::Error)]
#[error("registry auth file {path}: {why}")]
pub struct AuthFileError {
    pub path: PathBuf,
    pub why: String,
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The auth file to read, if the environment names one or the default exists.
pub fn default_path() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = env("REGISTRY_AUTH_FILE") {
        return Some(p.into());
    }
    if let Some(d) = env("DOCKER_CONFIG") {
        return Some(Path::new(&d).join("config.json"));
    }
    env("HOME").map(|h| Path::new(&h).join(".docker/config.json"))
}

/// The registry a key of `auths` names: `https://index.docker.io/v1/` is Docker Hub.
pub fn registry_of(key: &str) -> String {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_string(),
        h => h.to_string(),
    }
}

/// Reads the credentials in `path` by registry; a missing file is an empty map.
pub fn load(path: &Path) -> Result<HashMap<String, Credentials>, AuthFileError> {
    let bad = |why: String| AuthFileError {
        path: path.to_path_buf(),
        why,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(bad(e.to_string())),
    };
    let file: AuthFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = HashMap::new();
    for (key, entry) in file.auths {
        let creds = match (entry.username, entry.password, entry.auth) {
            (Some(username), Some(password), _) => Credentials { username, password },
            (_, _, Some(auth)) if !auth.is_empty() => {
                let text = base64_decode(auth.trim())
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| bad(format!("the auth of {key:?} is not base64 text")))?;
                let (u, p) = text
                    .split_once(':')
                    .ok_or_else(|| bad(format!("the auth of {key:?} is not user:password")))?;
                Credentials {
                    username: u.to_string(),
                    password: p.to_string(),
                }
            }
            _ => continue, // e.g. an identity token only: not supported, anonymous
        };
        out.insert(registry_of(&key), creds);
    }
    Ok(out)
}

/// Standard base64 with optional padding; None on any other character.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auth_and_username_password_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        // "alice:s3cr:et" and Docker Hub's historical key.
        std::fs::write(
            &path,
            r#"{"auths": {
                "127.0.0.1:5000": {"auth": "YWxpY2U6czNjcjpldA=="},
                "https://index.docker.io/v1/": {"username": "bob", "password": "pw"},
                "ghcr.io": {"identitytoken": "x"}
            }, "credsStore": "desktop"}"#,
        )
        .unwrap();
        let creds = load(&path).unwrap();
        assert_eq!(creds.len(), 2);
        assert_eq!(creds["127.0.0.1:5000"].username, "alice");
        assert_eq!(creds["127.0.0.1:5000"].password, "s3cr:et");
        assert_eq!(creds["docker.io"].username, "bob");
        assert!(load(&dir.path().join("none.json")).unwrap().is_empty());
    }

    #[test]
    fn malformed_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.starts_with("registry auth file "), "{err}");
        std::fs::write(&path, r#"{"auths": {"h": {"auth": "***"}}}"#).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.ends_with("the auth of \"h\" is not base64 text"),
            "{err}"
        );
    }

    #[test]
    fn base64_matches_known_values() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode("Zm9vYg").unwrap(), b"foob");
        assert!(base64_decode("Zm9v!").is_none());
    }
}
