//! `X-Registry-Auth`: registry credentials a client sends with a request, as Docker
//! Engine takes them: base64 (URL-safe or standard, padded or not) of a JSON object with
//! `username` and `password` (`serveraddress` and `email` are allowed and ignored). They
//! live only as long as the request or the build that uses them; the server never
//! writes them anywhere.

use axum::http::HeaderMap;
use base64::Engine;
use serde::Deserialize;

use super::error::ApiError;
use crate::images::registry::Credentials;

/// The header's name.
pub const HEADER: &str = "x-registry-auth";
/// A longer header is refused (Docker's are a few hundred bytes).
const MAX_HEADER_BYTES: usize = 8 << 10;

#[derive(Deserialize)]
struct AuthConfig {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default, rename = "serveraddress")]
    _server_address: Option<String>,
    #[serde(default, rename = "email")]
    _email: Option<String>,
}

fn invalid(why: &str) -> ApiError {
    ApiError::bad_request(format!("X-Registry-Auth: {why}"))
}

/// The credentials in `headers`, if the header is there; a malformed one is a 400.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<Credentials>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    if value.len() > MAX_HEADER_BYTES {
        return Err(invalid("longer than 8 KiB"));
    }
    let text = value
        .to_str()
        .map_err(|_| invalid("not base64"))?
        .trim()
        .trim_end_matches('=');
    if text.is_empty() {
        return Ok(None);
    }
    let engines = [
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
    ];
    let bytes = engines
        .iter()
        .find_map(|e| e.decode(text).ok())
        .ok_or_else(|| invalid("not base64"))?;
    let cfg: AuthConfig = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(&format!("not a JSON auth object: {e}")))?;
    if cfg.username.is_empty() && cfg.password.is_empty() {
        return Ok(None);
    }
    if cfg.username.is_empty() || cfg.password.is_empty() {
        return Err(invalid("give both username and password"));
    }
    Ok(Some(Credentials {
        username: cfg.username,
        password: cfg.password,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, v.parse().unwrap());
        h
    }

    #[test]
    fn docker_style_headers_are_read_and_bad_ones_named() {
        let json = br#"{"username":"u","password":"p?>","serveraddress":"r:5000"}"#;
        for e in [
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::STANDARD,
        ] {
            let c = from_headers(&headers(&e.encode(json))).unwrap().unwrap();
            assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p?>"));
        }
        assert!(from_headers(&HeaderMap::new()).unwrap().is_none());
        let empty = base64::engine::general_purpose::STANDARD.encode(b"{}");
        assert!(from_headers(&headers(&empty)).unwrap().is_none());
        for (bad, why) in [
            ("%%%", "not base64"),
            (
                &base64::engine::general_purpose::STANDARD.encode(b"[1]") as &str,
                "not a JSON auth object",
            ),
            (
                &base64::engine::general_purpose::STANDARD.encode(br#"{"username":"u"}"#),
                "give both",
            ),
        ] {
            let e = from_headers(&headers(bad)).err().unwrap();
            assert!(e.message.contains(why), "{bad}: {}", e.message);
        }
    }
}
