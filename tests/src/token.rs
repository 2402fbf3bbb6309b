//! A small bearer-token service for the registry's `auth: token` mode: it checks a basic
//! auth user and issues RS256 JWTs signed with `openssl` (x5c header holding the signing
//! certificate, which the registry trusts through its `rootcertbundle`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::json;

pub const SERVICE: &str = "skiff-registry";
pub const ISSUER: &str = "skiff-token-issuer";

/// Signs registry tokens.
pub struct Issuer {
    key: PathBuf,
    pub cert: PathBuf,
    cert_der_b64: String,
}

impl Issuer {
    pub fn new(dir: &Path) -> Result<Issuer> {
        let (key, cert) = (dir.join("token.key"), dir.join("token.pem"));
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=skiff token issuer",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()?;
        if !out.status.success() {
            bail!("openssl: {}", String::from_utf8_lossy(&out.stderr));
        }
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()?;
        Ok(Issuer {
            key,
            cert,
            cert_der_b64: STANDARD.encode(der.stdout),
        })
    }

    /// A JWT granting `actions` on repository `name`.
    pub fn token(&self, subject: &str, name: &str, actions: &[&str]) -> Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let header = json!({"alg": "RS256", "typ": "JWT", "x5c": [self.cert_der_b64]});
        let claims = json!({"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300, "nbf": now - 10,
            "iat": now, "jti": format!("{now}-{}", rand_id()),
            "access": [{"type": "repository", "name": name, "actions": actions}]});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("openssl dgst failed");
        }
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(out.stdout)))
    }
}

fn rand_id() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed) as u64 * 7919 + std::process::id() as u64
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let v = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?');
                out.push(v);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The token endpoint, served on 127.0.0.1 by a thread.
pub struct TokenServer {
    pub realm: String,
    pub requests: Arc<AtomicUsize>,
}

impl TokenServer {
    pub fn start(issuer: Arc<Issuer>, user: (&str, &str)) -> Result<TokenServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let realm = format!("http://{}/token", listener.local_addr()?);
        let requests = Arc::new(AtomicUsize::new(0));
        let expected = format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", user.0, user.1))
        );
        let count = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(&stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut authorized = false;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).map(|n| n == 0).unwrap_or(true)
                        || h.trim().is_empty()
                    {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("authorization") && v.trim() == expected {
                            authorized = true;
                        }
                    }
                }
                let scope = path
                    .split_once('?')
                    .map(|(_, q)| q)
                    .unwrap_or("")
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("scope="))
                    .map(percent_decode)
                    .unwrap_or_default();
                let mut parts = scope.splitn(3, ':');
                let (_, name, actions) = (
                    parts.next(),
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or(""),
                );
                let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
                let response = match (authorized, issuer.token("alice", name, &actions)) {
                    (true, Ok(t)) => {
                        let body = json!({"token": t, "access_token": t, "expires_in": 300}).to_string();
                        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                    }
                    _ => "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                };
                let _ = (&stream).write_all(response.as_bytes());
            }
        });
        Ok(TokenServer { realm, requests })
    }
}
