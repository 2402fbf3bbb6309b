//! A TCP proxy on loopback that breaks blob downloads: a connection that carries a blob GET
//! is cut (or stalled) once `cut_after` response bytes have gone back, until `cuts` cuts
//! were made. It counts the response bytes it forwards and records the `Range` header of
//! each blob GET; it can also strip `Range` headers, like a registry that ignores them.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;

/// What the proxy does to blob downloads.
#[derive(Debug, Clone, Copy)]
pub struct ProxyOptions {
    /// How many blob downloads to break.
    pub cuts: usize,
    /// Response bytes (headers included) a broken download gets before it breaks.
    pub cut_after: usize,
    /// Break by stalling (keep the connection open, send nothing more) instead of closing.
    pub stall: bool,
    /// Remove `Range` headers from requests.
    pub strip_range: bool,
    /// Pause this long after each 16 KiB of response (a slow registry).
    pub pace: Option<std::time::Duration>,
}

pub struct CutProxy {
    pub addr: String,
    pub cuts_done: Arc<AtomicUsize>,
    /// Response bytes forwarded to clients (headers included).
    pub served: Arc<AtomicU64>,
    /// The `Range` header of every blob GET ("" when it had none), in order.
    pub ranges: Arc<Mutex<Vec<String>>>,
}

/// The value of the `Range` header in a request head, if any.
fn range_of(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("range"))
        })
        .map(|(_, v)| v.trim().to_string())
}

fn without_range(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    text.split_inclusive("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("range:"))
        .collect::<String>()
        .into_bytes()
}

impl CutProxy {
    pub fn start(upstream: &str, cuts: usize, cut_after: usize) -> Result<CutProxy> {
        Self::start_with(
            upstream,
            ProxyOptions {
                cuts,
                cut_after,
                stall: false,
                strip_range: false,
                pace: None,
            },
        )
    }

    pub fn start_with(upstream: &str, opts: ProxyOptions) -> Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let proxy = CutProxy {
            addr,
            cuts_done: Arc::new(AtomicUsize::new(0)),
            served: Arc::new(AtomicU64::new(0)),
            ranges: Arc::new(Mutex::new(Vec::new())),
        };
        let (upstream, done, served, ranges) = (
            upstream.to_string(),
            proxy.cuts_done.clone(),
            proxy.served.clone(),
            proxy.ranges.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let armed = Arc::new(AtomicBool::new(false));
                let (mut c_in, mut s_out) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let (arm, done_a, ranges) = (armed.clone(), done.clone(), ranges.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut chunk = buf[..n].to_vec();
                        let is_blob_get = chunk.starts_with(b"GET ")
                            && chunk.windows(14).any(|w| w == b"/blobs/sha256:");
                        if is_blob_get {
                            let head = String::from_utf8_lossy(&chunk).into_owned();
                            ranges
                                .lock()
                                .unwrap()
                                .push(range_of(&head).unwrap_or_default());
                            if done_a.load(Ordering::SeqCst) < opts.cuts {
                                arm.store(true, Ordering::SeqCst);
                            }
                        }
                        if opts.strip_range && chunk.starts_with(b"GET ") {
                            chunk = without_range(&chunk);
                        }
                        if s_out.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                let (mut s_in, mut c_out, done_b, served) =
                    (server, client, done.clone(), served.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut sent_armed = 0usize;
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut chunk = &buf[..n];
                        if armed.load(Ordering::SeqCst) {
                            let room = opts.cut_after.saturating_sub(sent_armed);
                            if chunk.len() >= room {
                                chunk = &chunk[..room];
                                done_b.fetch_add(1, Ordering::SeqCst);
                                served.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                                let _ = c_out.write_all(chunk);
                                if opts.stall {
                                    // Hold both sockets open and send nothing more.
                                    loop {
                                        std::thread::park();
                                    }
                                }
                                let _ = c_out.shutdown(Shutdown::Both);
                                let _ = s_in.shutdown(Shutdown::Both);
                                return;
                            }
                            sent_armed += chunk.len();
                        }
                        served.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                        if c_out.write_all(chunk).is_err() {
                            break;
                        }
                        if let Some(pause) = opts.pace {
                            std::thread::sleep(pause);
                        }
                    }
                    let _ = c_out.shutdown(Shutdown::Write);
                });
            }
        });
        Ok(proxy)
    }

    /// Response bytes forwarded so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    /// The `Range` headers of the blob GETs so far.
    pub fn ranges(&self) -> Vec<String> {
        self.ranges.lock().unwrap().clone()
    }
}
