//! Registry credentials a client sends with a request, as Docker Engine takes them. They
//! live only as long as the request or the build that uses them; the server never
//! writes them anywhere.
//!
//! - `X-Registry-Auth`: base64 (URL-safe or standard, padded or not) of a JSON object with
//!   `username` and `password`, or `auth` (base64 of `username:password`, as an auth file
//!   holds them); `serveraddress` names the registry they are for, and `email` is allowed
//!   and ignored. An `identitytoken` or `registrytoken` is refused with a 400 rather than
//!   dropped (the push would go anonymous). A push takes it for its destination.
//! - `X-Registry-Config`: base64 of a JSON object from registry address to such an
//!   object, as `docker build` sends: a build whose tags name several registries gives
//!   each its own credentials, so no registry ever sees another's password.

use std::collections::{BTreeSet, HashMap};

use axum::http::HeaderMap;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::ApiError;
use crate::images::registry::auth_file::registry_of;
use crate::images::registry::Credentials;

/// The header's name.
pub const HEADER: &str = "x-registry-auth";
/// The per-registry header's name.
pub const CONFIG_HEADER: &str = "x-registry-config";
/// A longer `X-Registry-Auth` is refused (Docker's are a few hundred bytes).
const MAX_HEADER_BYTES: usize = 8 << 10;
/// A longer `X-Registry-Config` is refused (a hundred registries' entries fit).
const MAX_CONFIG_BYTES: usize = 64 << 10;

#[derive(Deserialize)]
struct AuthConfig {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    /// Base64 of `username:password`, used when those two are not given.
    #[serde(default)]
    auth: String,
    #[serde(default, rename = "identitytoken")]
    identity_token: String,
    #[serde(default, rename = "registrytoken")]
    registry_token: String,
    #[serde(default, rename = "serveraddress")]
    server_address: Option<String>,
    #[serde(default, rename = "email")]
    _email: Option<String>,
}

impl AuthConfig {
    /// The credentials, None when none are given; `name` says which header or entry.
    fn credentials(self, name: &str) -> Result<Option<Credentials>, ApiError> {
        if !self.identity_token.is_empty() || !self.registry_token.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{name}: identity and registry tokens are not supported; send username and \
                 password (or auth)"
            )));
        }
        match (self.username.is_empty(), self.password.is_empty()) {
            (true, true) if !self.auth.is_empty() => {
                user_password(&self.auth).map(Some).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{name}: auth is not base64 of username:password"
                    ))
                })
            }
            (true, true) => Ok(None),
            (false, false) => Ok(Some(Credentials {
                username: self.username,
                password: self.password,
            })),
            _ => Err(ApiError::bad_request(format!(
                "{name}: give both username and password"
            ))),
        }
    }
}

/// `auth`'s `username:password` (standard base64, padded or not).
fn user_password(auth: &str) -> Option<Credentials> {
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(auth.trim().trim_end_matches('='))
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (username, password) = text.split_once(':')?;
    (!username.is_empty() && !password.is_empty()).then(|| Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

/// The JSON in header `name` (base64), None when it is missing or empty.
fn decoded<T: DeserializeOwned>(
    headers: &HeaderMap,
    header: &str,
    name: &str,
    max_bytes: usize,
) -> Result<Option<T>, ApiError> {
    let invalid = |why: &str| ApiError::bad_request(format!("{name}: {why}"));
    let Some(value) = headers.get(header) else {
        return Ok(None);
    };
    if value.len() > max_bytes {
        return Err(invalid(&format!("longer than {} KiB", max_bytes >> 10)));
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
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| invalid(&format!("not a JSON auth object: {e}")))
}

/// The credentials in `X-Registry-Auth`, if the header is there; a malformed one is a 400.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<Credentials>, ApiError> {
    Ok(auth_with_address(headers)?.map(|(c, _)| c))
}

/// `X-Registry-Auth`'s credentials and the registry its `serveraddress` names, if any.
fn auth_with_address(
    headers: &HeaderMap,
) -> Result<Option<(Credentials, Option<String>)>, ApiError> {
    let Some(cfg) = decoded::<AuthConfig>(headers, HEADER, "X-Registry-Auth", MAX_HEADER_BYTES)?
    else {
        return Ok(None);
    };
    let address = cfg
        .server_address
        .as_deref()
        .filter(|a| !a.is_empty())
        .map(registry_of);
    Ok(cfg.credentials("X-Registry-Auth")?.map(|c| (c, address)))
}

/// The credentials for each of `registries` (a build's tags' registries) that the client
/// sent: `X-Registry-Config`'s entry for it, else `X-Registry-Auth` when that names it
/// (`serveraddress`) or when it is the only registry. `X-Registry-Auth` without an
/// address is refused when the tags name several registries: whose it is cannot be told.
pub fn for_registries(
    headers: &HeaderMap,
    registries: &BTreeSet<String>,
) -> Result<HashMap<String, Credentials>, ApiError> {
    let mut out = HashMap::new();
    let config: HashMap<String, AuthConfig> = decoded(
        headers,
        CONFIG_HEADER,
        "X-Registry-Config",
        MAX_CONFIG_BYTES,
    )?
    .unwrap_or_default();
    for (address, cfg) in config {
        let registry = registry_of(&address);
        let name = format!("X-Registry-Config: {address:?}");
        if let Some(c) = cfg.credentials(&name)? {
            if registries.contains(&registry) {
                out.insert(registry, c);
            }
        }
    }
    if let Some((c, address)) = auth_with_address(headers)? {
        let registry = match address {
            Some(a) => a,
            None if registries.len() == 1 => registries.iter().next().cloned().unwrap_or_default(),
            None => {
                let names: Vec<&str> = registries.iter().map(String::as_str).collect();
                return Err(ApiError::bad_request(format!(
                    "X-Registry-Auth: the tags name several registries ({}) and the header \
                     names none (serveraddress); send X-Registry-Config with an entry for each",
                    names.join(", ")
                )));
            }
        };
        if registries.contains(&registry) {
            out.entry(registry).or_insert(c);
        }
    }
    Ok(out)
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

    fn encoded(v: serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE.encode(v.to_string())
    }

    #[test]
    fn each_registry_gets_only_its_own_credentials() {
        let regs =
            |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| n.to_string()).collect() };
        let mut h = HeaderMap::new();
        h.insert(
            CONFIG_HEADER,
            encoded(serde_json::json!({
                "a.example:5000": {"username": "ua", "password": "pa"},
                "https://index.docker.io/v1/": {"username": "uh", "password": "ph"},
                "unused.example": {"username": "uu", "password": "pu"},
            }))
            .parse()
            .unwrap(),
        );
        let got = for_registries(&h, &regs(&["a.example:5000", "docker.io", "b.example"])).unwrap();
        let mut pairs: Vec<(String, String)> = got
            .iter()
            .map(|(r, c)| (r.clone(), c.username.clone()))
            .collect();
        pairs.sort();
        assert_eq!(
            pairs,
            [
                ("a.example:5000".to_owned(), "ua".to_owned()),
                ("docker.io".to_owned(), "uh".to_owned())
            ]
        );
        // X-Registry-Auth goes to the registry it names, or to the only one.
        let mut h = HeaderMap::new();
        let named = serde_json::json!({"username": "u", "password": "p",
            "serveraddress": "b.example"});
        h.insert(HEADER, encoded(named).parse().unwrap());
        let got = for_registries(&h, &regs(&["a.example:5000", "b.example"])).unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), ["b.example"]);
        let plain = encoded(serde_json::json!({"username": "u", "password": "p"}));
        let got = for_registries(&headers(&plain), &regs(&["a.example:5000"])).unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), ["a.example:5000"]);
        let e =
            for_registries(&headers(&plain), &regs(&["a.example:5000", "b.example"])).unwrap_err();
        assert!(
            e.message
                .contains("several registries (a.example:5000, b.example)"),
            "{}",
            e.message
        );
        let mut h = HeaderMap::new();
        h.insert(
            CONFIG_HEADER,
            encoded(serde_json::json!({"a.example:5000": {"username": "ua"}}))
                .parse()
                .unwrap(),
        );
        let e = for_registries(&h, &regs(&["a.example:5000"])).unwrap_err();
        assert!(
            e.message
                .contains("X-Registry-Config: \"a.example:5000\": give both"),
            "{}",
            e.message
        );
    }

    #[test]
    fn an_auth_field_is_a_user_and_password_and_tokens_are_refused() {
        let regs: BTreeSet<String> = ["a.example:5000".to_owned()].into();
        let config = |entry: serde_json::Value| {
            let mut h = HeaderMap::new();
            let v = encoded(serde_json::json!({ "a.example:5000": entry }));
            h.insert(CONFIG_HEADER, v.parse().unwrap());
            for_registries(&h, &regs)
        };
        // "ua:p:w" in standard base64, padded and not.
        for auth in ["dWE6cDp3", "dWE6cDp3==="] {
            let got = config(serde_json::json!({ "auth": auth })).unwrap();
            let c = &got["a.example:5000"];
            assert_eq!((c.username.as_str(), c.password.as_str()), ("ua", "p:w"));
        }
        // As X-Registry-Auth too.
        let h = headers(&encoded(serde_json::json!({ "auth": "dWE6cDp3" })));
        assert_eq!(from_headers(&h).unwrap().unwrap().username, "ua");
        for (entry, why) in [
            (serde_json::json!({ "auth": "%%" }), "auth is not base64"),
            // "nocolon"
            (
                serde_json::json!({ "auth": "bm9jb2xvbg==" }),
                "auth is not base64",
            ),
            (
                serde_json::json!({ "identitytoken": "t" }),
                "tokens are not supported",
            ),
            (
                serde_json::json!({ "username": "u", "registrytoken": "t" }),
                "tokens are not supported",
            ),
        ] {
            let e = config(entry.clone()).unwrap_err();
            assert!(e.message.contains(why), "{entry}: {}", e.message);
        }
    }
}
