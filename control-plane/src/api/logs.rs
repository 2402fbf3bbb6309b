//! `GET /v1/tasks/{id}/logs`: the task's output as NDJSON, one object per chunk:
//! `{"stream":"stdout","timeMs":…,"data":"…"}` (or `"dataBase64"` for bytes that are not
//! UTF-8). With `follow=true` the response stays open until the task has stopped.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use tokio::sync::watch;

use super::error::ApiError;
use crate::launcher::Output;
use crate::server::Server;
use crate::tasks::logs::{LogReader, Record};

/// Most log bytes read per chunk of the response.
const CHUNK_BYTES: u64 = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    #[serde(default)]
    follow: bool,
    /// `stdout` or `stderr`; both when absent.
    stream: Option<String>,
}

pub async fn logs(
    State(srv): State<Arc<Server>>,
    Path(id): Path<String>,
    params: Result<Query<LogParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let only = match p.stream.as_deref() {
        None | Some("all") => None,
        Some("stdout") => Some(Output::Stdout),
        Some("stderr") => Some(Output::Stderr),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "stream: {other:?} is not stdout, stderr or all"
            )))
        }
    };
    if srv
        .records
        .store
        .get(&id)
        .map_err(ApiError::internal)?
        .is_none()
    {
        return Err(ApiError::not_found(format!("task {id}")));
    }
    // Subscribe before the first read, so no write between the two goes unnoticed.
    let rx = if p.follow {
        srv.live(&id).map(|l| l.subscribe_log())
    } else {
        None
    };
    let follower = Follower {
        reader: Some(LogReader::new(&srv.log_path(&id))),
        rx,
        only,
        finished: false,
    };
    let stream = futures_util::stream::unfold(follower, |mut f| async move {
        let chunk = f.next_chunk().await?;
        Some((Ok::<Bytes, std::io::Error>(chunk), f))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

struct Follower {
    /// Taken while a blocking read has it.
    reader: Option<LogReader>,
    /// Present while following a task that has not stopped.
    rx: Option<watch::Receiver<u64>>,
    only: Option<Output>,
    finished: bool,
}

impl Follower {
    /// The next batch of log records, read off the async workers.
    async fn read(&mut self) -> Option<Vec<Record>> {
        let mut reader = self.reader.take()?;
        let (reader, recs) = tokio::task::spawn_blocking(move || {
            let recs = reader.next(CHUNK_BYTES);
            (reader, recs)
        })
        .await
        .ok()?;
        self.reader = Some(reader);
        match recs {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("reading a task log: {e}");
                None
            }
        }
    }

    /// The next batch of NDJSON lines (about a MiB of output at most), or `None` at the
    /// end.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(rx) = self.rx.as_mut() {
                rx.borrow_and_update();
            }
            let records = self.read().await?;
            if !records.is_empty() {
                let text = self.render(&records);
                if !text.is_empty() {
                    return Some(Bytes::from(text));
                }
                continue;
            }
            let Some(rx) = self.rx.as_mut() else {
                self.finished = true;
                return None;
            };
            // Sender gone = the task's live state was dropped: read what is left, then end.
            if rx.changed().await.is_err() {
                self.rx = None;
            }
        }
    }

    fn render(&self, records: &[Record]) -> String {
        let mut out = String::new();
        for r in records {
            if self.only.is_some_and(|o| o != r.stream) {
                continue;
            }
            let stream = match r.stream {
                Output::Stdout => "stdout",
                Output::Stderr => "stderr",
            };
            let line = match std::str::from_utf8(&r.data) {
                Ok(text) => {
                    serde_json::json!({"stream": stream, "timeMs": r.time_ms, "data": text})
                }
                Err(_) => serde_json::json!({
                    "stream": stream,
                    "timeMs": r.time_ms,
                    "dataBase64": base64::engine::general_purpose::STANDARD.encode(&r.data),
                }),
            };
            out.push_str(&line.to_string());
            out.push('\n');
        }
        out
    }
}
