//! The control socket: `skiff-vmm --api-sock PATH`. A Unix stream socket; each request is
//! one JSON object on one line, each reply one JSON object on one line:
//!
//! ```text
//! {"action":"pause"}                                         -> {"ok":true}
//! {"action":"resume"}                                        -> {"ok":true}
//! {"action":"snapshot","state_path":"S","memory_path":"M"}   -> {"ok":true,"state_bytes":…}
//! {"action":"shutdown"}                                      -> {"ok":true}
//! anything else                                              -> {"ok":false,"error":"…"}
//! ```
//!
//! A snapshot pauses a running VM first and leaves it paused. Each connection has its own
//! thread; operations are serialised by the [`Controller`].

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::controller::Controller;

/// Longest request line accepted.
const MAX_LINE: u64 = 64 * 1024;

#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    // Struct variants, so that deny_unknown_fields refuses `{"action":"pause","x":1}`.
    Pause {},
    Resume {},
    Snapshot {
        state_path: PathBuf,
        memory_path: PathBuf,
    },
    Shutdown {},
}

/// Answers one request line. A shutdown is only answered here; the caller ends the VM
/// after the reply is written (else the process could end before the caller hears back).
pub fn handle(ctl: &Controller, line: &str) -> (Value, bool) {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => {
            return (
                json!({"ok": false, "error": format!("bad request: {e}")}),
                false,
            )
        }
    };
    let shutdown = req == Request::Shutdown {};
    tracing::info!(?req, "control request");
    let r = match req {
        Request::Pause {} => ctl.pause().map(|_| json!({"ok": true})),
        Request::Resume {} => ctl.resume().map(|_| json!({"ok": true})),
        Request::Snapshot {
            state_path,
            memory_path,
        } => ctl.snapshot(&state_path, &memory_path).map(|r| {
            json!({
                "ok": true,
                "state_bytes": r.state_bytes,
                "memory_data_bytes": r.memory_data_bytes,
                "memory_file_bytes": r.memory_file_bytes,
                "millis": r.millis,
                "msrs": r.msrs,
                "pvm_msrs": r.pvm_msrs,
            })
        }),
        Request::Shutdown {} => Ok(json!({"ok": true})),
    };
    (
        r.unwrap_or_else(|e| json!({"ok": false, "error": e.to_string()})),
        shutdown,
    )
}

fn serve_conn(ctl: &Controller, stream: UnixStream) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match (&mut reader).take(MAX_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with('\n') && line.len() as u64 >= MAX_LINE => {
                let _ = writeln!(
                    out,
                    "{}",
                    json!({"ok": false, "error": "request line too long"})
                );
                return;
            }
            Ok(_) => {}
        }
        if line.trim().is_empty() {
            continue;
        }
        let (reply, shutdown) = handle(ctl, line.trim());
        let written = writeln!(out, "{reply}").and_then(|_| out.flush());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_unknown_ones_do_not() {
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"action":"pause"}"#).unwrap(),
            Request::Pause {}
        );
        let s: Request =
            serde_json::from_str(r#"{"action":"snapshot","state_path":"a","memory_path":"b"}"#)
                .unwrap();
        assert_eq!(
            s,
            Request::Snapshot {
                state_path: "a".into(),
                memory_path: "b".into()
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"action":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"action":"snapshot"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"action":"pause","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>("not json").is_err());
    }
}
