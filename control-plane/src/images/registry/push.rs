//! The push side of the registry API: is a blob there (`HEAD`), an upload session
//! (`POST …/blobs/uploads/`, its `Location` taken against the request) finished with one
//! `PUT ?digest=` holding the blob, and the manifest last (`PUT …/manifests/TAG` with its
//! media type, the registry's `Docker-Content-Digest` checked). Tokens are asked for with
//! the scope `repository:R:pull,push`.

use std::fs::File;
use std::path::Path;

use reqwest::blocking::Body;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;
use tracing::debug;

use super::client::{RegistryClient, RegistryError};
use super::reference::Reference;
use crate::images::digest::Digest;

impl RegistryClient {
    fn push_url(&self, r: &Reference, rest: &str) -> Result<String, RegistryError> {
        Ok(format!(
            "{}/v2/{}/{rest}",
            self.endpoint_for(&r.registry)?,
            r.repository
        ))
    }

    /// A push refused for lack of rights reads as such.
    fn push_error(r: &Reference, e: RegistryError) -> RegistryError {
        match e {
            RegistryError::Denied { .. } => RegistryError::PushDenied {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
            },
            e => e,
        }
    }

    /// Whether `r`'s repository already has the blob `digest`.
    pub fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<bool, RegistryError> {
        let url = self.push_url(r, &format!("blobs/{digest}"))?;
        let resp = self.send(r, true, &|http| http.head(&url))?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(false),
            _ => self
                .check_answer(r, resp, &url, || not_found(r))
                .map(|_| true)
                .map_err(|e| Self::push_error(r, e)),
        }
    }

    /// Uploads the blob `digest` of `size` bytes from the file at `path`.
    pub fn upload_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        path: &Path,
    ) -> Result<(), RegistryError> {
        let start = self.push_url(r, "blobs/uploads/")?;
        let resp = self
            .send(r, true, &|http| http.post(&start).header(CONTENT_LENGTH, 0))
            .and_then(|resp| self.check_answer(r, resp, &start, || not_found(r)))
            .map_err(|e| Self::push_error(r, e))?;
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Status {
                registry: r.registry.clone(),
                status: resp.status().as_u16(),
                url: start.clone(),
                body: "an upload session without a Location".into(),
            })?;
        let base = reqwest::Url::parse(&start).map_err(|e| RegistryError::Status {
            registry: r.registry.clone(),
            status: 0,
            url: start.clone(),
            body: e.to_string(),
        })?;
        let mut put = base.join(location).map_err(|e| RegistryError::Status {
            registry: r.registry.clone(),
            status: resp.status().as_u16(),
            url: start.clone(),
            body: format!("bad Location {location:?}: {e}"),
        })?;
        put.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let file = File::open(path).map_err(|source| RegistryError::Transfer {
            registry: r.registry.clone(),
            source,
        })?;
        // The session's credentials are known by now; a body can be sent only once.
        let auth = self.auth_for(&format!("{}#push", r.name()));
        let creds = self.credentials_for(&r.registry);
        let req = self
            .http_client()
            .put(put.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(Body::sized(file, size));
        let resp = super::client::apply(req, auth.as_ref(), creds)
            .send()
            .map_err(|source| RegistryError::Unreachable {
                registry: r.registry.clone(),
                source,
            })?;
        self.check_answer(r, resp, put.as_str(), || not_found(r))
            .map_err(|e| Self::push_error(r, e))?;
        debug!(%digest, size, "blob pushed");
        Ok(())
    }

    /// Puts the manifest `bytes` of media type `media_type` under `tag`; returns its digest
    /// once the registry's answer agrees.
    pub fn put_manifest(
        &self,
        r: &Reference,
        tag: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let url = self.push_url(r, &format!("manifests/{tag}"))?;
        let resp = self
            .send(r, true, &|http| {
                http.put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.to_vec())
            })
            .and_then(|resp| self.check_answer(r, resp, &url, || not_found(r)))
            .map_err(|e| Self::push_error(r, e))?;
        let digest = Digest::of(bytes);
        let answered = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        if let Some(theirs) = answered {
            if theirs != digest {
                return Err(RegistryError::ManifestDigest {
                    registry: r.registry.clone(),
                    expected: digest,
                    actual: theirs,
                });
            }
        }
        Ok(digest)
    }
}

fn not_found(r: &Reference) -> RegistryError {
    RegistryError::NameUnknown {
        registry: r.registry.clone(),
        repository: r.repository.clone(),
    }
}
