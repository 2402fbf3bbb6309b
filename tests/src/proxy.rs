//! A TCP proxy on loopback that breaks blob downloads: a connection that carries a blob GET
//! is cut (or stalled) once `cut_after` response bytes have gone back, until `cuts` cuts
//! were made. It counts the response bytes it forwards and records the `Range` header of
//! each blob GET; it can also strip `Range` headers, like a registry that ignores them,
//! and cut one blob upload on its way to the registry.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;

/// What the proxy does to blob downloads (by default: nothing).
#[derive(Debug, Clone, Copy, Default)]
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
    /// Break an upload: the chosen blob `PATCH` or `PUT` is cut on its way to the
    /// registry (once, counted in `cuts_done` too).
    pub cut_upload: Option<UploadCut>,
    /// Pause this long after each 16 KiB of request (a slow uplink).
    pub upload_pace: Option<std::time::Duration>,
}

/// Which upload request to cut, and where.
#[derive(Debug, Clone, Copy)]
pub struct UploadCut {
    /// Cut the request with this index (0-based) among the blob-carrying `PATCH`/`PUT`
    /// requests (those with a body of at least `min_body` bytes).
    pub request: usize,
    /// Body bytes forwarded before the cut (0: the head only).
    pub body_bytes: usize,
    /// Requests with a smaller `Content-Length` are not counted (manifests, final PUTs).
    pub min_body: usize,
}

/// The `Content-Length` of a request head, if any.
fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

pub struct CutProxy {
    pub addr: String,
    pub cuts_done: Arc<AtomicUsize>,
    /// Response bytes forwarded to clients (headers included).
    pub served: Arc<AtomicU64>,
    /// The `Range` header of every blob GET ("" when it had none), in order.
    pub ranges: Arc<Mutex<Vec<String>>>,
    /// Request bytes forwarded to the registry (heads included).
    pub uploaded: Arc<AtomicU64>,
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
                cut_upload: None,
                upload_pace: None,
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
            uploaded: Arc::new(AtomicU64::new(0)),
        };
        let upload_requests = Arc::new(AtomicUsize::new(0));
        let uploaded = proxy.uploaded.clone();
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
                let (uploads, up_bytes) = (upload_requests.clone(), uploaded.clone());
                std::thread::spawn(move || {
                    let mut buf =
                        vec![0u8; if opts.upload_pace.is_some() { 16 } else { 64 } * 1024];
                    // Body bytes still to forward before this request is cut.
                    let mut cut_in: Option<usize> = None;
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut chunk = buf[..n].to_vec();
                        if let Some(cut) = opts.cut_upload {
                            let is_upload =
                                chunk.starts_with(b"PATCH ") || chunk.starts_with(b"PUT ");
                            let head_end = chunk.windows(4).position(|w| w == b"\r\n\r\n");
                            if let (true, Some(end)) = (is_upload, head_end) {
                                let head = String::from_utf8_lossy(&chunk[..end]).into_owned();
                                let big = content_length(&head).unwrap_or(0) >= cut.min_body;
                                if big
                                    && head.contains("/blobs/uploads/")
                                    && uploads.fetch_add(1, Ordering::SeqCst) == cut.request
                                {
                                    cut_in = Some(end + 4 + cut.body_bytes);
                                }
                            }
                            if let Some(left) = cut_in {
                                if chunk.len() >= left {
                                    up_bytes.fetch_add(left as u64, Ordering::SeqCst);
                                    let _ = s_out.write_all(&chunk[..left]);
                                    done_a.fetch_add(1, Ordering::SeqCst);
                                    let _ = s_out.shutdown(Shutdown::Both);
                                    let _ = c_in.shutdown(Shutdown::Both);
                                    return;
                                }
                                cut_in = Some(left - chunk.len());
                            }
                        }
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
                        up_bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                        if s_out.write_all(&chunk).is_err() {
                            break;
                        }
                        if let Some(pause) = opts.upload_pace {
                            std::thread::sleep(pause);
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

    /// Request bytes forwarded so far.
    pub fn uploaded(&self) -> u64 {
        self.uploaded.load(Ordering::SeqCst)
    }

    /// The `Range` headers of the blob GETs so far.
    pub fn ranges(&self) -> Vec<String> {
        self.ranges.lock().unwrap().clone()
    }
}
