//! The push side of the registry API. A blob is checked with `HEAD`; an upload session is
//! opened with `POST …/blobs/uploads/` (with `?mount=&from=` when another repository of
//! the same registry is known to hold it: `201` means mounted, `202` an ordinary session);
//! a small blob goes in one `PUT ?digest=`, a large one in `PATCH` chunks with
//! `Content-Range` and then an empty `PUT ?digest=`. After a cut, the session's `GET`
//! tells how much the registry kept (`Range: 0-N`). Each answer's `Location` is taken
//! against its request and used for the next request, as the registry may put state in
//! it. The manifest goes last (`PUT …/manifests/TAG` with its media type, the registry's
//! `Docker-Content-Digest` checked). Tokens are asked for with the scope
//! `repository:R:pull,push` (and `repository:FROM:pull` is the registry's business: a
//! mount it refuses is answered with a plain session).

use reqwest::blocking::Response;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{StatusCode, Url};
use tracing::debug;

use super::client::{quote, RegistryClient, RegistryError};
use super::reference::Reference;
use crate::images::digest::Digest;

/// How an upload began.
#[derive(Debug, Clone)]
pub enum UploadStart {
    /// The registry mounted the blob from another repository: nothing to send.
    Mounted,
    /// An upload session, at this URL.
    Session(Url),
}

/// Where a session stands, as the registry tells it.
#[derive(Debug, Clone)]
pub struct SessionStatus {
    /// Bytes the registry holds (the next chunk starts here).
    pub offset: u64,
    /// The session's URL for the next request.
    pub url: Url,
}

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

    /// Sends a push request and checks its answer.
    fn push_send(
        &self,
        r: &Reference,
        url: &str,
        build: &dyn Fn(&reqwest::blocking::Client) -> reqwest::blocking::RequestBuilder,
    ) -> Result<Response, RegistryError> {
        self.send(r, true, build)
            .and_then(|resp| self.check_answer(r, resp, url, || not_found(r)))
            .map_err(|e| Self::push_error(r, e))
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

    /// Opens an upload session for `r`, first asking for a mount of `mount`'s blob from the
    /// repository it names (same registry) when one is given.
    pub fn start_upload(
        &self,
        r: &Reference,
        mount: Option<(&Digest, &str)>,
    ) -> Result<UploadStart, RegistryError> {
        let mut start = Url::parse(&self.push_url(r, "blobs/uploads/")?).map_err(|e| {
            RegistryError::Status {
                registry: r.registry.clone(),
                status: 0,
                url: r.to_string(),
                body: e.to_string(),
            }
        })?;
        if let Some((digest, from)) = mount {
            start
                .query_pairs_mut()
                .append_pair("mount", &digest.to_string())
                .append_pair("from", from);
        }
        let resp = self.push_send(r, start.as_str(), &|http| {
            http.post(start.clone()).header(CONTENT_LENGTH, 0)
        })?;
        if mount.is_some() && resp.status() == StatusCode::CREATED {
            return Ok(UploadStart::Mounted);
        }
        Ok(UploadStart::Session(self.next_location(r, &start, &resp)?))
    }

    /// Sends a whole blob in one request, ending the session.
    pub fn put_blob(
        &self,
        r: &Reference,
        session: &Url,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<(), RegistryError> {
        let mut put = session.clone();
        put.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        self.push_send(r, put.as_str(), &|http| {
            http.put(put.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, bytes.len())
                .body(self.upload_body(bytes))
        })?;
        debug!(%digest, size = bytes.len(), "blob pushed");
        Ok(())
    }

    /// Sends `bytes` as the chunk starting at `offset`; returns the session's next URL.
    pub fn patch_chunk(
        &self,
        r: &Reference,
        session: &Url,
        offset: u64,
        bytes: &[u8],
    ) -> Result<Url, RegistryError> {
        let end = offset + bytes.len() as u64 - 1;
        let resp = self.push_send(r, session.as_str(), &|http| {
            http.patch(session.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, bytes.len())
                .header("Content-Range", format!("{offset}-{end}"))
                .body(self.upload_body(bytes))
        })?;
        self.next_location(r, session, &resp)
    }

    /// Ends a chunked session: the registry checks the whole blob against `digest`.
    pub fn finish_upload(
        &self,
        r: &Reference,
        session: &Url,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        let mut put = session.clone();
        put.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        self.push_send(r, put.as_str(), &|http| {
            http.put(put.clone()).header(CONTENT_LENGTH, 0)
        })?;
        debug!(%digest, "chunked blob pushed");
        Ok(())
    }

    /// Asks where a session stands. `None`: the registry no longer knows it (or will not
    /// resume it), so the blob starts again in a new session.
    pub fn upload_status(
        &self,
        r: &Reference,
        session: &Url,
    ) -> Result<Option<SessionStatus>, RegistryError> {
        let resp = self.send(r, true, &|http| http.get(session.clone()))?;
        if resp.status() != StatusCode::NO_CONTENT && resp.status() != StatusCode::OK {
            if resp.status().is_client_error() {
                return Ok(None);
            }
            self.check_answer(r, resp, session.as_str(), || not_found(r))
                .map_err(|e| Self::push_error(r, e))?;
            return Ok(None);
        }
        let offset = resp
            .headers()
            .get("Range")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_received)
            .unwrap_or(0);
        let url = self
            .next_location(r, session, &resp)
            .unwrap_or_else(|_| session.clone());
        Ok(Some(SessionStatus { offset, url }))
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
        let resp = self.push_send(r, &url, &|http| {
            http.put(&url)
                .header(CONTENT_TYPE, media_type)
                .body(bytes.to_vec())
        })?;
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

impl RegistryClient {
    /// The answer's `Location`, taken against the request's URL. It may lead to another
    /// host (a registry's storage front); that host gets no credentials (`send`), and is
    /// followed over plain HTTP only when the user allowed it (`--insecure`).
    fn next_location(
        &self,
        r: &Reference,
        request: &Url,
        resp: &Response,
    ) -> Result<Url, RegistryError> {
        let bad = |body: String| RegistryError::Status {
            registry: r.registry.clone(),
            status: resp.status().as_u16(),
            url: request.to_string(),
            body,
        };
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| bad("an upload session answer without a Location".into()))?;
        let url = request
            .join(location)
            .map_err(|e| bad(format!("bad Location {:?}: {e}", quote(location))))?;
        let elsewhere = self.elsewhere(r, &url);
        match (url.scheme(), elsewhere) {
            ("https", _) | ("http", None) => Ok(url),
            ("http", Some(host)) if self.may_use_http(&host) => Ok(url),
            ("http", Some(_)) => {
                let mut shown = url.clone();
                shown.set_query(None);
                Err(RegistryError::PlainHttpElsewhere {
                    registry: r.registry.clone(),
                    url: shown.to_string(),
                })
            }
            (scheme, _) => Err(bad(format!(
                "a Location with scheme {:?}, not https or http",
                quote(scheme)
            ))),
        }
    }
}

/// Bytes held from a session's `Range: 0-N` (the registry says `0-0` for an empty
/// session as well as for one byte; taking it as 0 costs one byte sent again).
fn parse_received(range: &str) -> Option<u64> {
    let (start, end) = range.trim().trim_start_matches("bytes=").split_once('-')?;
    if start != "0" {
        return None;
    }
    let end: u64 = end.parse().ok()?;
    Some(if end == 0 { 0 } else { end + 1 })
}

fn not_found(r: &Reference) -> RegistryError {
    RegistryError::NameUnknown {
        registry: r.registry.clone(),
        repository: r.repository.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_received;

    #[test]
    fn session_ranges_read_as_bytes_held() {
        assert_eq!(parse_received("0-0"), Some(0));
        assert_eq!(parse_received("0-8388607"), Some(8 << 20));
        assert_eq!(parse_received("bytes=0-99"), Some(100));
        assert_eq!(parse_received("5-9"), None);
        assert_eq!(parse_received("junk"), None);
        assert_eq!(parse_received("0-"), None);
    }
}
