//! What a service's load balancer adds to a request: the same HTTP/1.0 request, each on a
//! new connection as a health check or a simple client makes it, sent straight to a
//! backend on loopback and through `Proxy` in front of it. Prints medians and p90 of each
//! and the difference. `cargo bench -p control-plane --bench lb [-- N]`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use control_plane::server::services::proxy::Proxy;
use control_plane::server::services::ServiceMetrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ANSWER: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello";

async fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let _ = s.write_all(ANSWER).await;
            });
        }
    });
    a
}

async fn request(addr: SocketAddr) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(out.ends_with(b"hello"), "{out:?}");
    t.elapsed()
}

fn percentile(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let b = backend().await;
        let p = Proxy::bind(
            "127.0.0.1:0".parse().unwrap(),
            "bench".into(),
            ServiceMetrics::default(),
        )
        .unwrap();
        p.set_backends(vec![b]);
        // Warm both paths, then interleave so that both see the same host.
        for _ in 0..100 {
            request(b).await;
            request(p.addr).await;
        }
        let (mut direct, mut proxied) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            direct.push(request(b).await);
            proxied.push(request(p.addr).await);
        }
        let (d50, d90) = (percentile(&mut direct, 0.5), percentile(&mut direct, 0.9));
        let (p50, p90) = (percentile(&mut proxied, 0.5), percentile(&mut proxied, 0.9));
        println!("requests: {n} each, a new connection per request, loopback");
        println!("direct:  p50 {d50:.0} µs  p90 {d90:.0} µs");
        println!("proxied: p50 {p50:.0} µs  p90 {p90:.0} µs");
        println!(
            "the load balancer adds {:.0} µs at the median ({:.2}x)",
            p50 - d50,
            p50 / d50
        );
    });
}
