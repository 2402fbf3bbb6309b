//! Where `skiff serve` listens. By default a Unix socket in the state directory
//! (`<state>/skiff.sock`, mode 0660, like `docker.sock`): only the server's user and group
//! reach it. A TCP listener, loopback included, needs a bearer token (any local user can
//! connect to loopback), and can speak TLS (`--tls-cert`, `--tls-key`, rustls).

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The socket file's name in the state directory.
pub const SOCKET_NAME: &str = "skiff.sock";

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `unix:///path/skiff.sock`
    Unix(PathBuf),
    /// `HOST:PORT`
    Tcp(SocketAddr),
}

impl ListenAddr {
    /// The default: the Unix socket in `state_dir`.
    pub fn default_for(state_dir: &Path) -> Self {
        ListenAddr::Unix(state_dir.join(SOCKET_NAME))
    }
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix://") {
            if !p.starts_with('/') {
                return Err(format!(
                    "{s}: a Unix socket needs an absolute path (unix:///…)"
                ));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(p)));
        }
        s.parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("{s}: expected HOST:PORT or unix:///PATH"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("listening on TCP ({0}) needs a bearer token: give --token-file or SKIFF_TOKEN (or leave --listen out to use the Unix socket)")]
    TokenRequired(SocketAddr),
    #[error("TLS needs both --tls-cert and --tls-key")]
    TlsHalf,
    #[error("TLS is for TCP listeners; {0} is a Unix socket")]
    TlsOnUnix(PathBuf),
    #[error("cannot read {what} {path}: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Certificate chain and key files for TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Both files or neither.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<Self>, ListenError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
            (None, None) => Ok(None),
            _ => Err(ListenError::TlsHalf),
        }
    }

    fn acceptor(&self) -> Result<TlsAcceptor, ListenError> {
        let pem = |what, path: &Path, e: &dyn fmt::Display| ListenError::Pem {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| pem("certificate", &self.cert, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| pem("certificate", &self.cert, &e))?;
        if certs.is_empty() {
            return Err(pem(
                "certificate",
                &self.cert,
                &"no certificate in the file",
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| pem("key", &self.key, &e))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ListenError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| ListenError::Tls(e.to_string()))?;
        Ok(TlsAcceptor::from(Arc::new(cfg)))
    }
}

/// A bound listener of one of the three kinds.
pub enum Bound {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
    Tls(TlsListener),
}

impl Bound {
    /// What to print: the URL clients use (`SKIFF_API`).
    pub fn url(&self) -> String {
        match self {
            Bound::Unix(_, p) => format!("unix://{}", p.display()),
            Bound::Tcp(l) => format!("http://{}", addr_of(l)),
            Bound::Tls(l) => format!("https://{}", l.local),
        }
    }
}

fn addr_of(l: &TcpListener) -> String {
    l.local_addr().map_or("?".into(), |a| a.to_string())
}

/// Binds `addr`. A TCP address needs `token`; a Unix socket file left by an earlier
/// server (the caller holds the state directory's lock) is replaced.
pub async fn bind(
    addr: &ListenAddr,
    token: Option<&str>,
    tls: Option<&TlsFiles>,
) -> Result<Bound, ListenError> {
    let bind_err = |source| ListenError::Bind {
        addr: addr.to_string(),
        source,
    };
    match addr {
        ListenAddr::Unix(path) => {
            if tls.is_some() {
                return Err(ListenError::TlsOnUnix(path.clone()));
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(bind_err)?;
            }
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(bind_err(e)),
            }
            let l = UnixListener::bind(path).map_err(bind_err)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
                .map_err(bind_err)?;
            Ok(Bound::Unix(l, path.clone()))
        }
        ListenAddr::Tcp(a) => {
            if token.is_none() {
                return Err(ListenError::TokenRequired(*a));
            }
            let acceptor = tls.map(TlsFiles::acceptor).transpose()?;
            let l = TcpListener::bind(a).await.map_err(bind_err)?;
            Ok(match acceptor {
                Some(acc) => Bound::Tls(TlsListener::start(l, acc)),
                None => Bound::Tcp(l),
            })
        }
    }
}

/// TLS connections whose handshake is done, fed by a task that accepts and hands each
/// new connection to a handshake task of its own (bounded in number and time), so a
/// client that never finishes its handshake holds up nobody.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn start(l: TcpListener, acceptor: TlsAcceptor) -> Self {
        let local = l.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match l.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer}: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    }
                });
            }
        });
        TlsListener { rx, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accepting task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "unix:///run/skiff.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/skiff.sock".into())
        );
        assert_eq!(
            "127.0.0.1:0".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:0".parse().unwrap())
        );
        assert!("unix://relative".parse::<ListenAddr>().is_err());
        assert!("nowhere".parse::<ListenAddr>().is_err());
        assert_eq!(
            ListenAddr::default_for(Path::new("/var/lib/skiff")).to_string(),
            "unix:///var/lib/skiff/skiff.sock"
        );
    }

    #[tokio::test]
    async fn tcp_without_a_token_is_refused_and_a_unix_socket_is_private() {
        let e = bind(&"127.0.0.1:0".parse().unwrap(), None, None)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("needs a bearer token"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join(SOCKET_NAME);
        std::fs::write(&sock, b"stale").unwrap();
        let b = bind(&ListenAddr::Unix(sock.clone()), None, None)
            .await
            .unwrap();
        assert_eq!(b.url(), format!("unix://{}", sock.display()));
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        assert!(matches!(
            TlsFiles::from_flags(Some("c".into()), None),
            Err(ListenError::TlsHalf)
        ));
    }
}
