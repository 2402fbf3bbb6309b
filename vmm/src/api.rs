//! The control socket: `skiff-vmm --api-sock PATH`. A Unix stream socket; each request is
//! one JSON line, each reply one JSON line; the types are in the `vmm-api` crate, shared
//! with callers. A snapshot pauses a running VM first and leaves it paused. Each connection
//! has its own thread; operations are serialised by the [`Controller`].

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

pub use vmm_api::{Reply, Request};

use crate::controller::Controller;

/// Answers one request line. A shutdown is only answered here; the caller ends the VM
/// after the reply is written (else the process could end before the caller hears back).
pub fn handle(ctl: &Controller, line: &str) -> (Reply, bool) {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return (Reply::error(format!("bad request: {e}")), false),
    };
    let shutdown = req == Request::Shutdown {};
    tracing::info!(?req, "control request");
    let r = match req {
        Request::Pause {} => ctl.pause().map(|_| Reply::ok()),
        Request::Resume {} => ctl.resume().map(|_| Reply::ok()),
        Request::Snapshot {
            state_path,
            memory_path,
        } => ctl.snapshot(&state_path, &memory_path).map(Reply::snapshot),
        Request::Shutdown {} => Ok(Reply::ok()),
    };
    (r.unwrap_or_else(|e| Reply::error(e.to_string())), shutdown)
}

fn serve_conn(ctl: &Controller, stream: UnixStream) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match (&mut reader)
            .take(vmm_api::MAX_REQUEST_LINE)
            .read_line(&mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with('\n') && line.len() as u64 >= vmm_api::MAX_REQUEST_LINE => {
                let _ = writeln!(out, "{}", Reply::error("request line too long").to_line());
                return;
            }
            Ok(_) => {}
        }
        if line.trim().is_empty() {
            continue;
        }
        let (reply, shutdown) = handle(ctl, line.trim());
        let written = writeln!(out, "{}", reply.to_line()).and_then(|_| out.flush());
        if shutdown {
            ctl.shutdown();
            return;
        }
        if written.is_err() {
            return;
        }
    }
}

/// Listens on `path` (replacing a stale socket) and serves each connection on a thread.
pub fn serve(path: &Path, ctl: Arc<Controller>) -> std::io::Result<std::thread::JoinHandle<()>> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let c = ctl.clone();
                let spawned = std::thread::Builder::new()
                    .name("api-conn".into())
                    .spawn(move || serve_conn(&c, stream));
                if let Err(e) = spawned {
                    tracing::warn!("control socket: cannot serve a connection: {e}");
                }
            }
        })
}
