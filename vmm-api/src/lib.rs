//! What callers of `skiff-vmm` need to know without linking the VMM: the control socket's
//! requests and replies (`--api-sock PATH`: one JSON object per line each way) and the
//! process's exit codes.
//!
//! ```text
//! {"action":"pause"}                                         -> {"ok":true}
//! {"action":"resume"}                                        -> {"ok":true}
//! {"action":"snapshot","state_path":"S","memory_path":"M"}   -> {"ok":true,"state_bytes":…}
//! {"action":"shutdown"}                                      -> {"ok":true}
//! anything else                                              -> {"ok":false,"error":"…"}
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Longest request line the VMM accepts.
pub const MAX_REQUEST_LINE: u64 = 64 * 1024;

/// One request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    // Struct variants, so that deny_unknown_fields refuses `{"action":"pause","x":1}`.
    Pause {},
    Resume {},
    /// Pauses a running VM first and leaves it paused.
    Snapshot {
        state_path: PathBuf,
        memory_path: PathBuf,
    },
    Shutdown {},
}

/// What a snapshot wrote and how long it took.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotReport {
    pub state_bytes: u64,
    pub memory_data_bytes: u64,
    pub memory_file_bytes: u64,
    pub millis: f64,
    pub msrs: usize,
    pub pvm_msrs: usize,
}

/// One reply line: `ok`, an error when not, and a snapshot's report when one was taken.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotReport>,
}

impl Reply {
    pub fn ok() -> Self {
        Reply {
            ok: true,
            ..Default::default()
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(message.into()),
            snapshot: None,
        }
    }

    pub fn snapshot(report: SnapshotReport) -> Self {
        Reply {
            ok: true,
            error: None,
            snapshot: Some(report),
        }
    }

    /// The reply as one line of JSON (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"ok":false}"#.to_owned())
    }
}

impl Request {
    /// The request as one line of JSON (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Process exit codes of `skiff-vmm`.
pub mod exit_code {
    /// The guest reset or powered off, or a shutdown was asked for.
    pub const OK: i32 = 0;
    /// The VMM itself failed.
    pub const VMM_ERROR: i32 = 1;
    /// Bad input (flags, config, a damaged or foreign snapshot): nothing was started.
    pub const BAD_INPUT: i32 = 2;
    pub const GUEST_PANIC: i32 = 3;
    pub const VCPU_FAILED: i32 = 4;
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

    #[test]
    fn requests_and_replies_round_trip_on_the_wire() {
        for r in [
            Request::Pause {},
            Request::Resume {},
            Request::Shutdown {},
            Request::Snapshot {
                state_path: "s".into(),
                memory_path: "m".into(),
            },
        ] {
            assert_eq!(serde_json::from_str::<Request>(&r.to_line()).unwrap(), r);
        }
        assert_eq!(Request::Pause {}.to_line(), r#"{"action":"pause"}"#);
        assert_eq!(Reply::ok().to_line(), r#"{"ok":true}"#);
        assert_eq!(Reply::error("no").to_line(), r#"{"ok":false,"error":"no"}"#);
        let rep = Reply::snapshot(SnapshotReport {
            state_bytes: 1,
            memory_data_bytes: 2,
            memory_file_bytes: 3,
            millis: 4.5,
            msrs: 5,
            pvm_msrs: 0,
        });
        let back: Reply = serde_json::from_str(&rep.to_line()).unwrap();
        assert_eq!(back, rep);
        assert!(rep.to_line().contains(r#""state_bytes":1"#));
    }
}
