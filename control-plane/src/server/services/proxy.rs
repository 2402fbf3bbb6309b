//! A service's load balancer: a TCP listener on the host whose connections are spread
//! round-robin over the service's healthy tasks, so clients see one address while tasks
//! come and go. A backend that refuses is skipped for the next; a connection with no
//! backend left is closed. Written here rather than taken from a crate: it is one accept
//! loop and `copy_bidirectional`, and the backend set changes under it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::metrics::{outcome, ServiceMetrics};

/// How long a backend has to accept a connection before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Client connections proxied at once; beyond it new ones wait in the listen queue.
const MAX_CONNECTIONS: usize = 1024;

/// Connections open to each backend.
type Active = Arc<std::sync::Mutex<std::collections::HashMap<SocketAddr, usize>>>;

pub struct Proxy {
    pub addr: SocketAddr,
    backends: Arc<RwLock<Vec<SocketAddr>>>,
    active: Active,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Proxy {
    /// Listens on `addr` (a taken port is an error now, not later; port 0 takes a free one).
    pub fn bind(
        addr: SocketAddr,
        service: String,
        metrics: ServiceMetrics,
    ) -> std::io::Result<Self> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = TcpListener::from_std(std_listener)?;
        let backends = Arc::new(RwLock::new(Vec::new()));
        let active = Active::default();
        let accept = tokio::spawn(accept_loop(
            listener,
            backends.clone(),
            active.clone(),
            service,
            metrics,
        ));
        Ok(Self {
            addr,
            backends,
            active,
            accept,
        })
    }

    /// The healthy tasks' addresses, as the reconciler last saw them.
    pub fn set_backends(&self, mut v: Vec<SocketAddr>) {
        v.sort();
        let mut b = self.backends.write().unwrap_or_else(|p| p.into_inner());
        if *b != v {
            *b = v;
        }
    }

    pub fn backends(&self) -> Vec<SocketAddr> {
        self.backends
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Connections open to `backend` now.
    pub fn active(&self, backend: SocketAddr) -> usize {
        let a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        a.get(&backend).copied().unwrap_or(0)
    }
}

/// Counts a connection to a backend while it lives.
struct ActiveGuard(Active, SocketAddr);

impl ActiveGuard {
    fn new(active: &Active, addr: SocketAddr) -> Self {
        *active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr)
            .or_default() += 1;
        Self(active.clone(), addr)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut a = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = a.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                a.remove(&self.1);
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    backends: Arc<RwLock<Vec<SocketAddr>>>,
    active: Active,
    service: String,
    metrics: ServiceMetrics,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let client = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!(service, "load balancer accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (backends, active, next, service, metrics) = (
            backends.clone(),
            active.clone(),
            next.clone(),
            service.clone(),
            metrics.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let list = backends.read().unwrap_or_else(|p| p.into_inner()).clone();
            let start = next.fetch_add(1, Ordering::Relaxed);
            match connect_any(&list, start, &active).await {
                Some((backend, _counted)) => {
                    metrics
                        .connections
                        .get_or_create(&outcome(&service, "proxied"))
                        .inc();
                    let (mut c, mut b) = (client, backend);
                    let _ = c.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
                }
                None => {
                    metrics
                        .connections
                        .get_or_create(&outcome(&service, "no_backend"))
                        .inc();
                }
            }
        });
    }
}

/// The first backend that accepts, trying each once from `start` on. A connection counts
/// as the backend's from the moment it is tried: a backend being drained is not stopped
/// under a connection still on its way.
async fn connect_any(
    list: &[SocketAddr],
    start: usize,
    active: &Active,
) -> Option<(TcpStream, ActiveGuard)> {
    for i in 0..list.len() {
        let addr = list[(start + i) % list.len()];
        let counted = ActiveGuard::new(active, addr);
        if let Ok(Ok(s)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            let _ = s.set_nodelay(true);
            return Some((s, counted));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers each connection with its name.
    async fn backend(name: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(name.as_bytes()).await;
            }
        });
        a
    }

    async fn ask(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    #[tokio::test]
    async fn connections_are_spread_and_dead_backends_skipped() {
        let m = ServiceMetrics::default();
        let p = Proxy::bind("127.0.0.1:0".parse().unwrap(), "web".into(), m.clone()).unwrap();
        let addr = p.addr;
        // No backend: the connection is closed at once.
        assert_eq!(ask(addr).await, "");
        let (a, b) = (backend("a").await, backend("b").await);
        // A port nobody listens on.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        p.set_backends(vec![a, dead, b]);
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(ask(addr).await);
        }
        assert!(seen.iter().all(|s| s == "a" || s == "b"), "{seen:?}");
        assert!(
            seen.contains(&"a".into()) && seen.contains(&"b".into()),
            "{seen:?}"
        );
        assert_eq!(
            m.connections
                .get_or_create(&outcome("web", "proxied"))
                .get(),
            6
        );
        assert_eq!(
            m.connections
                .get_or_create(&outcome("web", "no_backend"))
                .get(),
            1
        );
        // A second listener on the same port is refused.
        assert!(Proxy::bind(addr, "x".into(), m).is_err());
    }
}
