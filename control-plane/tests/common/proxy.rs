//! A TCP proxy on loopback that breaks blob downloads: a connection that carries a blob GET
//! is cut once `cut_after` response bytes have gone back, until `cuts` cuts were made.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;

pub struct CutProxy {
    pub addr: String,
    pub cuts_done: Arc<AtomicUsize>,
}

impl CutProxy {
    pub fn start(upstream: &str, cuts: usize, cut_after: usize) -> Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let cuts_done = Arc::new(AtomicUsize::new(0));
        let (upstream, done) = (upstream.to_string(), cuts_done.clone());
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
                let (arm, done_a) = (armed.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let chunk = &buf[..n];
                        let is_blob_get = chunk.starts_with(b"GET ")
                            && chunk.windows(14).any(|w| w == b"/blobs/sha256:");
                        if is_blob_get && done_a.load(Ordering::SeqCst) < cuts {
                            arm.store(true, Ordering::SeqCst);
                        }
                        if s_out.write_all(chunk).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                let (mut s_in, mut c_out, done_b) = (server, client, done.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut sent_armed = 0usize;
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut chunk = &buf[..n];
                        if armed.load(Ordering::SeqCst) {
                            let room = cut_after.saturating_sub(sent_armed);
                            if chunk.len() >= room {
                                chunk = &chunk[..room];
                                done_b.fetch_add(1, Ordering::SeqCst);
                                let _ = c_out.write_all(chunk);
                                let _ = c_out.shutdown(Shutdown::Both);
                                let _ = s_in.shutdown(Shutdown::Both);
                                return;
                            }
                            sent_armed += chunk.len();
                        }
                        if c_out.write_all(chunk).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(Shutdown::Write);
                });
            }
        });
        Ok(CutProxy { addr, cuts_done })
    }
}
