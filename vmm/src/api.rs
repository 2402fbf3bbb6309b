//! The control socket: `skiff-vmm --api-sock PATH`. A Unix stream socket; each request is
//! one JSON line, each reply one JSON line; the types are in the `vmm-api` crate, shared
//! with callers. A snapshot pauses a running VM first and leaves it paused. Connections are
//! served one at a time on the API thread, each request line within [`REQUEST_TIMEOUT`]
//! (the control plane sends one request per connection); operations are serialised by the
//! [`Controller`] anyway.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use vmm_api::{Reply, Request};

use crate::controller::Controller;
use crate::exit::ExitReason;
use crate::seccomp::{self, SeccompMode, ThreadKind};

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

/// How long a client gets to send each request line (from the connection, or from the
/// previous reply): a silent client cannot hold the control socket, which serves one
/// connection at a time. Replies are written with the same bound.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads from a connection with the time left until `deadline` as the socket's timeout.
struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// Serves one connection until the client closes it, is silent for [`REQUEST_TIMEOUT`],
/// or asks for a shutdown.
fn serve_conn(ctl: &Controller, stream: &UnixStream) {
    if stream.set_write_timeout(Some(REQUEST_TIMEOUT)).is_err() {
        return;
    }
    let mut out = stream;
    let mut reader = BufReader::new(DeadlineReader {
        stream,
        deadline: Instant::now() + REQUEST_TIMEOUT,
    });
    loop {
        reader.get_mut().deadline = Instant::now() + REQUEST_TIMEOUT;
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

/// Listens on `path` (replacing a stale socket) and serves its connections one at a time
/// on one thread, which installs its seccomp filter (`seccomp`) first; if it cannot, the
/// VM ends.
pub fn serve(
    path: &Path,
    ctl: Arc<Controller>,
    seccomp: SeccompMode,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            if let Err(e) = seccomp::install(ThreadKind::Api, seccomp) {
                ctl.vm().exit.signal(ExitReason::VmmError(e.to_string()));
                return;
            }
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => serve_conn(&ctl, &stream),
                    // Out of file descriptors, say: give it a moment instead of spinning.
                    Err(e) => {
                        tracing::warn!("control socket: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
}
