//! A client for the Docker Registry HTTP API v2 / OCI distribution spec (pull side; `push`
//! has the push side):
//! manifests, indexes and blobs, with anonymous, basic and bearer-token auth (credentials
//! given, or from the registry auth file: see `auth_file`).
//!
//! Built on `reqwest`'s blocking client (rustls, system roots plus an optional CA file).
//! From async code, call it inside `tokio::task::spawn_blocking`.
//! HTTPS is used for every registry; only registries the user marks insecure
//! (`RegistryOptions::insecure`, `--insecure-registry`) are probed over HTTPS first and fall
//! back to plain HTTP, as Docker does: a loopback address gets no exception. Connections and
//! reads time out (`RegistryOptions::connect_timeout` / `read_timeout`), and an error quotes
//! at most a short, sanitised piece of what a registry answered. Blob downloads
//! resume with a `Range` request from what the caller already has.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{ACCEPT, CONTENT_RANGE, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use tracing::{debug, info};

use super::auth::{parse_challenge, Challenge, Credentials};
use super::auth_file::{self, AuthFileError};
use super::reference::{Reference, DOCKER_HUB};
use crate::images::cancel::{Cancel, CancellableRead};
use crate::images::digest::Digest;
use crate::images::oci::manifest::ACCEPTED;

/// A download target that may already hold the first bytes of the blob.
pub trait ResumableWrite: Write {
    /// Bytes already there: a fetch sends the blob from here on.
    fn offset(&self) -> u64;
    /// Drops what is there, for a source that can only send the blob from its start.
    fn restart(&mut self) -> io::Result<()>;
}

/// A registry failure, named for the user.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("manifest unknown: {what} not found in registry {registry} (repository {repository})")]
    ManifestUnknown {
        what: String,
        registry: String,
        repository: String,
    },
    #[error("repository {repository} not found in registry {registry}")]
    NameUnknown {
        registry: String,
        repository: String,
    },
    #[error("blob unknown: {digest} not found in registry {registry} (repository {repository})")]
    BlobUnknown {
        digest: Digest,
        registry: String,
        repository: String,
    },
    #[error("authentication failed for registry {registry}: wrong username or password")]
    AuthFailed { registry: String },
    #[error("registry {registry} requires authentication for {repository} and no credentials were given")]
    AuthRequired {
        registry: String,
        repository: String,
    },
    #[error("access denied to {repository} in registry {registry}")]
    Denied {
        registry: String,
        repository: String,
    },
    #[error("registry {registry} denied push to {repository}")]
    PushDenied {
        registry: String,
        repository: String,
    },
    #[error("registry {registry} asks for an unsupported authentication scheme: {challenge}")]
    UnsupportedAuth { registry: String, challenge: String },
    #[error("registry {registry}: token service answered badly: {why}")]
    Token { registry: String, why: String },
    #[error("registry {registry}: HTTP {status} for {url}: {body}")]
    Status {
        registry: String,
        status: u16,
        url: String,
        body: String,
    },
    #[error("cannot reach registry {registry}: {source}")]
    Unreachable {
        registry: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("registry {registry}: manifest of {what} is larger than {limit} bytes (the limit)")]
    ManifestTooLarge {
        registry: String,
        what: String,
        limit: u64,
    },
    #[error("registry {registry}: manifest digest mismatch: asked for {expected}, got {actual}")]
    ManifestDigest {
        registry: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "registry {registry} sent the transfer on to {host}, which asks for credentials; \
         they go only to the registry"
    )]
    CredentialsElsewhere { registry: String, host: String },
    #[error(
        "registry {registry} sent the upload to plain-HTTP {url}; another host is followed \
         over plain HTTP only when it is allowed with --insecure"
    )]
    PlainHttpElsewhere { registry: String, url: String },
    #[error("the transfer with registry {registry} was cancelled")]
    Cancelled { registry: String },
    #[error("transfer from registry {registry} failed: {source}")]
    Transfer {
        registry: String,
        #[source]
        source: io::Error,
    },
    #[error("reading CA file {path}: {why}")]
    CaFile { path: PathBuf, why: String },
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("{0} is a local-only image and cannot be pulled")]
    LocalOnly(String),
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
}

/// How long a connection may take to open, unless `RegistryOptions` says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a response (its headers, or any read of its body) may keep us waiting.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this many characters of a registry's error answer go into a message.
pub const MAX_QUOTED_CHARS: usize = 200;
/// Bytes of an error answer read at most (to recognise `NAME_UNKNOWN` and quote it).
const MAX_ERROR_BODY: u64 = 16 << 10;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Registries (`host[:port]`) allowed over plain HTTP (HTTPS is still tried first).
    /// No registry is allowed plain HTTP unless listed here, loopback ones included.
    pub insecure: Vec<String>,
    /// Connect timeout (default `DEFAULT_CONNECT_TIMEOUT`).
    pub connect_timeout: Option<Duration>,
    /// Read timeout: the longest wait for response headers or for any read of a body
    /// (default `DEFAULT_READ_TIMEOUT`); a slow but moving download is never cut.
    pub read_timeout: Option<Duration>,
    /// A PEM file of extra CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// Credentials per registry (`host[:port]`); they win over the auth file's.
    pub credentials: HashMap<String, Credentials>,
    /// The registry auth file (Docker's `config.json` format); None: the usual places
    /// (`auth_file::default_path`).
    pub auth_file: Option<PathBuf>,
    /// Set for one pull or push: when cancelled, the next request or blob read fails
    /// with [`RegistryError::Cancelled`] (never retried).
    pub cancel: Option<Cancel>,
}

/// A manifest as fetched, with the digest of its exact bytes.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub content_type: String,
    pub digest: Digest,
}

#[derive(Debug, Clone)]
pub(super) enum Auth {
    Basic,
    Bearer(String),
}

/// The registry client; cheap to share between threads.
#[derive(Debug)]
pub struct RegistryClient {
    http: Client,
    opts: RegistryOptions,
    endpoints: Mutex<HashMap<String, String>>,
    auth: Mutex<HashMap<String, Auth>>,
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl RegistryClient {
    /// Cancels this client's transfers (a push's too) when `cancel` is set: the next
    /// request, or the next read of a blob downloaded or uploaded, fails with
    /// [`RegistryError::Cancelled`].
    pub fn set_cancel(&mut self, cancel: Cancel) {
        self.opts.cancel = Some(cancel);
    }

    pub fn new(mut opts: RegistryOptions) -> Result<Self, RegistryError> {
        if let Some(path) = opts.auth_file.clone().or_else(auth_file::default_path) {
            for (registry, creds) in auth_file::load(&path)? {
                opts.credentials.entry(registry).or_insert(creds);
            }
        }
        let mut builder = Client::builder()
            .use_rustls_tls()
            // The blocking client applies this to each wait (headers, each body read), not
            // to the whole transfer: a read timeout.
            .timeout(opts.read_timeout.unwrap_or(DEFAULT_READ_TIMEOUT))
            .connect_timeout(opts.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))
            .user_agent(concat!("skiff/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &opts.ca_file {
            let ca_err = |why: String| RegistryError::CaFile {
                path: path.clone(),
                why,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("no PEM certificates in it".into()));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder.build().map_err(RegistryError::Client)?;
        Ok(RegistryClient {
            http,
            opts,
            endpoints: Mutex::default(),
            auth: Mutex::default(),
        })
    }

    fn host(registry: &str) -> &str {
        if registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        }
    }

    pub(super) fn may_use_http(&self, registry: &str) -> bool {
        self.opts.insecure.iter().any(|r| r == registry)
    }

    /// `scheme://host`, probing HTTPS then HTTP where plain HTTP is allowed.
    fn endpoint(&self, registry: &str) -> Result<String, RegistryError> {
        if let Some(e) = self
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(registry)
        {
            return Ok(e.clone());
        }
        let host = Self::host(registry);
        let https = format!("https://{host}");
        let chosen = if !self.may_use_http(registry) {
            https
        } else {
            let probe = |base: &str| {
                self.http
                    .get(format!("{base}/v2/"))
                    .timeout(Duration::from_secs(15))
                    .send()
            };
            match probe(&https) {
                Ok(_) => https,
                Err(tls_err) => {
                    let http = format!("http://{host}");
                    match probe(&http) {
                        Ok(r)
                            if r.status().is_success()
                                || r.status() == StatusCode::UNAUTHORIZED =>
                        {
                            info!(registry, "using plain HTTP");
                            http
                        }
                        _ => {
                            return Err(RegistryError::Unreachable {
                                registry: registry.into(),
                                source: tls_err,
                            })
                        }
                    }
                }
            }
        };
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(registry.to_string(), chosen.clone());
        Ok(chosen)
    }

    /// Fetches the manifest `reference` (tag or digest) of `r`'s repository, refusing one
    /// longer than `max_bytes`.
    pub fn manifest(
        &self,
        r: &Reference,
        reference: &str,
        max_bytes: u64,
    ) -> Result<FetchedManifest, RegistryError> {
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.endpoint(&r.registry)?,
            r.repository,
            reference
        );
        let resp = self.get(r, &url, Some(ACCEPTED), None)?;
        let what = if reference.starts_with("sha256:") {
            reference.to_string()
        } else {
            format!("tag {reference}")
        };
        let resp = self.check(r, resp, &url, || RegistryError::ManifestUnknown {
            what: what.clone(),
            registry: r.registry.clone(),
            repository: r.repository.clone(),
        })?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut bytes = Vec::new();
        resp.take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|source| RegistryError::Transfer {
                registry: r.registry.clone(),
                source,
            })?;
        if bytes.len() as u64 > max_bytes {
            return Err(RegistryError::ManifestTooLarge {
                registry: r.registry.clone(),
                what,
                limit: max_bytes,
            });
        }
        let digest = Digest::of(&bytes);
        if let Ok(expected) = reference.parse::<Digest>() {
            if expected != digest {
                return Err(RegistryError::ManifestDigest {
                    registry: r.registry.clone(),
                    expected,
                    actual: digest,
                });
            }
        }
        debug!(image = %r, %digest, content_type, "manifest fetched");
        Ok(FetchedManifest {
            bytes,
            content_type,
            digest,
        })
    }

    /// Streams the blob `digest` into `out`, from `out.offset()` on with a `Range` request
    /// when `out` already holds its start. A registry that ignores the range (200) or
    /// refuses it (416) sends the whole blob, and `out` is restarted first. Returns the
    /// bytes copied by this call. The caller verifies.
    pub fn blob(
        &self,
        r: &Reference,
        digest: &Digest,
        out: &mut dyn ResumableWrite,
    ) -> Result<u64, RegistryError> {
        let url = format!(
            "{}/v2/{}/blobs/{}",
            self.endpoint(&r.registry)?,
            r.repository,
            digest
        );
        let offset = out.offset();
        let mut resp = self.get(r, &url, None, (offset > 0).then_some(offset))?;
        if offset > 0 && resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            debug!(%digest, offset, "range refused; fetching the whole blob");
            resp = self.get(r, &url, None, None)?;
        }
        let resp = self.check(r, resp, &url, || RegistryError::BlobUnknown {
            digest: digest.clone(),
            registry: r.registry.clone(),
            repository: r.repository.clone(),
        })?;
        let transfer = |source| RegistryError::Transfer {
            registry: r.registry.clone(),
            source,
        };
        if resp.status() == StatusCode::PARTIAL_CONTENT {
            let range = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !range.starts_with(&format!("bytes {offset}-")) {
                return Err(RegistryError::Status {
                    registry: r.registry.clone(),
                    status: 206,
                    url,
                    body: format!("asked for bytes {offset}- but got Content-Range {range:?}"),
                });
            }
            debug!(%digest, offset, "resuming the download");
        } else if out.offset() > 0 {
            debug!(%digest, offset, "the registry sends the whole blob; starting over");
            out.restart().map_err(transfer)?;
        }
        let mut body = CancellableRead {
            inner: resp,
            cancel: self.opts.cancel.clone(),
        };
        io::copy(&mut body, out).map_err(|e| {
            if self.cancelled() {
                RegistryError::Cancelled {
                    registry: r.registry.clone(),
                }
            } else {
                transfer(e)
            }
        })
    }

    /// A request body of `bytes` that fails at its next read once this client's
    /// transfers are cancelled, so a cancelled push stops inside a chunk.
    pub(super) fn upload_body(&self, bytes: &[u8]) -> reqwest::blocking::Body {
        let reader = CancellableRead {
            inner: io::Cursor::new(bytes.to_vec()),
            cancel: self.opts.cancel.clone(),
        };
        reqwest::blocking::Body::sized(reader, bytes.len() as u64)
    }

    fn cancelled(&self) -> bool {
        self.opts.cancel.as_ref().is_some_and(Cancel::is_cancelled)
    }

    fn check(
        &self,
        r: &Reference,
        resp: Response,
        url: &str,
        not_found: impl FnOnce() -> RegistryError,
    ) -> Result<Response, RegistryError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let mut raw = Vec::new();
        let _ = resp.take(MAX_ERROR_BODY).read_to_end(&mut raw);
        let body = String::from_utf8_lossy(&raw);
        let body = body.as_ref();
        Err(match status {
            StatusCode::NOT_FOUND if body.contains("NAME_UNKNOWN") => RegistryError::NameUnknown {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
            },
            StatusCode::NOT_FOUND => not_found(),
            StatusCode::FORBIDDEN => RegistryError::Denied {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
            },
            s => RegistryError::Status {
                registry: r.registry.clone(),
                status: s.as_u16(),
                url: url.into(),
                body: quote(body),
            },
        })
    }

    /// A GET that answers the registry's auth challenge once.
    fn get(
        &self,
        r: &Reference,
        url: &str,
        accept: Option<&str>,
        range_from: Option<u64>,
    ) -> Result<Response, RegistryError> {
        self.send(r, false, &|http| {
            let mut req = http.get(url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(from) = range_from {
                req = req.header(RANGE, format!("bytes={from}-"));
            }
            req
        })
    }

    /// Sends the request `build` makes, answering the registry's auth challenge once
    /// (`push`: a token for `pull,push`). `build` may be called twice, so its request must
    /// not carry a body that can be read only once.
    pub(super) fn send(
        &self,
        r: &Reference,
        push: bool,
        build: &dyn Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let key = if push {
            format!("{}#push", r.name())
        } else {
            r.name()
        };
        let creds = self.opts.credentials.get(&r.registry);
        for attempt in 0..2 {
            if self.cancelled() {
                return Err(RegistryError::Cancelled {
                    registry: r.registry.clone(),
                });
            }
            let auth = self.auth_for(&key);
            let unreachable = |source| RegistryError::Unreachable {
                registry: r.registry.clone(),
                source,
            };
            let (http, req) = build(&self.http).build_split();
            let req = req.map_err(unreachable)?;
            // Credentials go only to the registry's own origin: a request an upload's
            // `Location` sent to another host goes without them, as in Docker.
            let elsewhere = self.elsewhere(r, req.url());
            let req = RequestBuilder::from_parts(http, req);
            let req = match elsewhere {
                None => apply(req, auth.as_ref(), creds),
                Some(_) => req,
            };
            // An upload's body stops at its next read once cancelled (`upload_body`).
            let resp = req.send().map_err(|e| match self.cancelled() {
                true => RegistryError::Cancelled {
                    registry: r.registry.clone(),
                },
                false => unreachable(e),
            })?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            if let Some(host) = elsewhere {
                return Err(RegistryError::CredentialsElsewhere {
                    registry: r.registry.clone(),
                    host,
                });
            }
            // A second refusal, or a refusal of the password itself, is final.
            if attempt == 1 || (matches!(auth, Some(Auth::Basic)) && creds.is_some()) {
                break;
            }
            let header = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let new_auth = match parse_challenge(header) {
                Challenge::Basic if creds.is_some() => Auth::Basic,
                Challenge::Basic => {
                    return Err(RegistryError::AuthRequired {
                        registry: r.registry.clone(),
                        repository: r.repository.clone(),
                    })
                }
                Challenge::Bearer {
                    realm,
                    service,
                    scope,
                } => {
                    let wanted = if push { "pull,push" } else { "pull" };
                    let scope =
                        scope.unwrap_or_else(|| format!("repository:{}:{wanted}", r.repository));
                    Auth::Bearer(self.token(r, &realm, service.as_deref(), &scope, creds)?)
                }
                Challenge::Other(challenge) => {
                    return Err(RegistryError::UnsupportedAuth {
                        registry: r.registry.clone(),
                        challenge,
                    })
                }
            };
            let kind = match &new_auth {
                Auth::Basic => "basic",
                Auth::Bearer(_) => "bearer token",
            };
            debug!(
                registry = r.registry,
                repository = r.repository,
                kind,
                "authenticating"
            );
            self.auth
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone(), new_auth);
        }
        Err(match creds {
            Some(_) => RegistryError::AuthFailed {
                registry: r.registry.clone(),
            },
            None => RegistryError::AuthRequired {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
            },
        })
    }

    /// The host (`host[:port]`) of `url` when it is not on `r`'s registry's own origin
    /// (scheme, host and port of its endpoint); None when it is.
    pub(super) fn elsewhere(&self, r: &Reference, url: &reqwest::Url) -> Option<String> {
        let own = self
            .endpoint(&r.registry)
            .ok()
            .and_then(|e| reqwest::Url::parse(&e).ok());
        match own {
            Some(own) if own.origin() == url.origin() => None,
            _ => {
                let host = url.host_str().unwrap_or_default();
                Some(match url.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host.to_owned(),
                })
            }
        }
    }

    pub(super) fn endpoint_for(&self, registry: &str) -> Result<String, RegistryError> {
        self.endpoint(registry)
    }

    pub(super) fn check_answer(
        &self,
        r: &Reference,
        resp: Response,
        url: &str,
        not_found: impl FnOnce() -> RegistryError,
    ) -> Result<Response, RegistryError> {
        self.check(r, resp, url, not_found)
    }

    /// The credentials a request under `key` carries, once a challenge was answered.
    fn auth_for(&self, key: &str) -> Option<Auth> {
        self.auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn token(
        &self,
        r: &Reference,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        creds: Option<&Credentials>,
    ) -> Result<String, RegistryError> {
        let bad = |why: String| RegistryError::Token {
            registry: r.registry.clone(),
            why,
        };
        let realm_url =
            reqwest::Url::parse(realm).map_err(|e| bad(format!("realm {realm:?}: {e}")))?;
        let realm_host = realm_url.host_str().unwrap_or("");
        let realm_authority = match realm_url.port() {
            Some(p) => format!("{realm_host}:{p}"),
            None => realm_host.to_string(),
        };
        // Plain HTTP to the token service only where the user allowed plain HTTP: the
        // realm itself, or a loopback realm of a registry they marked insecure.
        if realm_url.scheme() != "https"
            && !(self.may_use_http(&realm_authority)
                || (self.may_use_http(&r.registry) && is_loopback(realm_host)))
        {
            return Err(bad(format!(
                "refusing to send credentials to plain-HTTP realm {realm}"
            )));
        }
        let mut query = vec![("scope", scope)];
        if let Some(s) = service {
            query.push(("service", s));
        }
        let mut req = self
            .http
            .get(realm_url)
            .query(&query)
            .timeout(Duration::from_secs(30));
        if let Some(c) = creds {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req.send().map_err(|source| RegistryError::Unreachable {
            registry: r.registry.clone(),
            source,
        })?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if creds.is_some() => {
                return Err(RegistryError::AuthFailed {
                    registry: r.registry.clone(),
                })
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(RegistryError::AuthRequired {
                    registry: r.registry.clone(),
                    repository: r.repository.clone(),
                })
            }
            s => return Err(bad(format!("HTTP {s}"))),
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: TokenResponse = serde_json::from_reader(resp.take(1 << 20))
            .map_err(|e| bad(format!("malformed token response: {e}")))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no token in the response".into()))
    }
}

/// At most `MAX_QUOTED_CHARS` of `text`, control characters (escape sequences, newlines)
/// replaced by spaces, for quoting what a registry said in an error message.
pub fn quote(text: &str) -> String {
    let mut out: String = text
        .trim()
        .chars()
        .take(MAX_QUOTED_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.trim().chars().count() > MAX_QUOTED_CHARS {
        out.push('…');
    }
    out
}

fn apply(req: RequestBuilder, auth: Option<&Auth>, creds: Option<&Credentials>) -> RequestBuilder {
    match (auth, creds) {
        (Some(Auth::Bearer(t)), _) => req.bearer_auth(t),
        (Some(Auth::Basic), Some(c)) => req.basic_auth(&c.username, Some(&c.password)),
        _ => req,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        for yes in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "docker.io",
            "10.0.0.1:5000",
            "registry.example:5000",
            "[2001:db8::1]:443",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }

    #[test]
    fn quotes_are_short_and_without_control_characters() {
        let q = quote("bad\x1b[31m news\r\nline");
        assert_eq!(q, "bad [31m news  line");
        let long = "x".repeat(5000);
        let q = quote(&long);
        assert_eq!(q.chars().count(), MAX_QUOTED_CHARS + 1);
        assert!(q.ends_with('…'));
    }

    #[test]
    fn loopback_registries_get_no_plain_http_unless_listed() {
        let plain = RegistryClient::new(RegistryOptions {
            auth_file: Some("/nonexistent/auth.json".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(!plain.may_use_http("127.0.0.1:5000"));
        assert!(!plain.may_use_http("localhost:5000"));
        let listed = RegistryClient::new(RegistryOptions {
            insecure: vec!["127.0.0.1:5000".into()],
            auth_file: Some("/nonexistent/auth.json".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(listed.may_use_http("127.0.0.1:5000"));
        assert!(!listed.may_use_http("127.0.0.1:5001"));
    }

    #[test]
    fn docker_hub_uses_its_api_host() {
        assert_eq!(RegistryClient::host("docker.io"), "registry-1.docker.io");
        assert_eq!(RegistryClient::host("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn a_missing_ca_file_is_a_clear_error() {
        let opts = RegistryOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = RegistryClient::new(opts).unwrap_err().to_string();
        assert!(
            err.starts_with("reading CA file /nonexistent/ca.pem"),
            "{err}"
        );
    }
}
