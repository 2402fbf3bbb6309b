//! `/v1/images`: pull an image into the server's store, list the stored images, push one
//! to a registry (`POST /v1/images/{ref}/push`, with the client's credentials in
//! `X-Registry-Auth`; progress streamed as NDJSON).

use std::sync::Arc;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{parse_json, ApiError};
use super::registry_auth;
use crate::images::cancel::{Cancel, CancelOnDrop};
use crate::images::push::{push_image, PushError, PushEvent};
use crate::images::registry::{RegistryClient, RegistryError};
use crate::images::source as image_source;
use crate::images::Reference;
use crate::server::Server;
use crate::tasks::now_ms;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PullRequest {
    reference: String,
}

pub async fn pull(
    State(srv): State<Arc<Server>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let req: PullRequest = parse_json(&body?)?;
    let r: Reference = req
        .reference
        .parse()
        .map_err(|e| ApiError::bad_request(format!("reference: {:?}: {e}", req.reference)))?;
    let srv2 = srv.clone();
    let r2 = r.clone();
    let image = tokio::task::spawn_blocking(move || {
        let image = image_source::pull(&srv2.images, &r2, &srv2.cfg.registry, &|_| {})?;
        srv2.images.rootfs(&image)?;
        Ok::<_, image_source::ImageSourceError>(image)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| {
        if e.is_not_found() {
            ApiError::new(StatusCode::NOT_FOUND, "image_not_found", e.to_string())
        } else {
            ApiError::new(StatusCode::BAD_GATEWAY, "pull_failed", e.to_string())
        }
    })?;
    let digest = image.manifest_digest.to_string();
    let _ = srv
        .records
        .store
        .record_image(&r.to_string(), &digest, now_ms());
    Ok((
        StatusCode::OK,
        Json(serde_json::json!({
            "reference": r.to_string(),
            "digest": digest,
            "id": image.id().to_string(),
            "size": image.manifest.layers.iter().map(|l| l.size).sum::<u64>(),
        })),
    ))
}

pub async fn list(State(srv): State<Arc<Server>>) -> Result<impl IntoResponse, ApiError> {
    let srv2 = srv.clone();
    let images = tokio::task::spawn_blocking(move || srv2.images.list())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let list: Vec<_> = images
        .iter()
        .map(|i| {
            serde_json::json!({
                "reference": i.reference.to_string(),
                "digest": i.manifest_digest.to_string(),
                "id": i.id.to_string(),
                "size": i.size,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "images": list })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PushRequest {
    /// Where to push instead of the image's own name (`REGISTRY/REPO:TAG`).
    #[serde(default)]
    destination: Option<String>,
    /// Allow plain HTTP to the destination's registry.
    #[serde(default)]
    insecure: bool,
}

/// The API error for a failed push.
pub fn push_error(e: PushError) -> ApiError {
    let message = e.to_string();
    match e {
        PushError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "image_not_found", message),
        PushError::NoTag { .. } | PushError::LocalDestination(_) => {
            ApiError::bad_request(format!("destination: {message}"))
        }
        PushError::Registry(RegistryError::AuthFailed { .. })
        | PushError::Registry(RegistryError::AuthRequired { .. }) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "registry_auth_failed", message)
        }
        PushError::Registry(RegistryError::PushDenied { .. }) => {
            ApiError::new(StatusCode::FORBIDDEN, "push_denied", message)
        }
        _ => ApiError::new(StatusCode::BAD_GATEWAY, "push_failed", message),
    }
}

/// `POST /v1/images/{ref}/push`: 200 and NDJSON lines per blob (`exists`, `mounted`,
/// `uploading`, `retry`, `pushed`) ending with `{"status":"done","digest"}`. A push that
/// fails before its first blob line gets an error status instead; one that fails later
/// ends the stream with `{"status":"error","code","message"}`.
pub async fn push(
    State(srv): State<Arc<Server>>,
    Path(reference): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let req: PushRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PushRequest::default()
    } else {
        parse_json(&body)?
    };
    let src: Reference = reference
        .parse()
        .map_err(|e| ApiError::bad_request(format!("reference: {reference:?}: {e}")))?;
    let dest: Reference = match &req.destination {
        Some(d) => d
            .parse()
            .map_err(|e| ApiError::bad_request(format!("destination: {d:?}: {e}")))?,
        None => src.clone(),
    };
    let creds = registry_auth::from_headers(&headers)?;
    let mut opts = srv.cfg.registry.clone();
    if req.insecure {
        opts.insecure.push(dest.registry.clone());
    }
    if let Some(c) = creds {
        opts.credentials.insert(dest.registry.clone(), c);
    }
    let mut client = RegistryClient::new(opts).map_err(ApiError::internal)?;
    // The push ends with its client: dropping this request (before the first line) or its
    // response stream (after) cancels it at its next registry request.
    let cancel = Cancel::new();
    client.set_cancel(cancel.clone());
    let guard = CancelOnDrop(cancel.clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Value, ApiError>>();
    tokio::task::spawn_blocking(move || {
        let sent = |e: PushEvent| {
            if tx.send(Ok(e.to_json())).is_err() {
                cancel.cancel();
            }
        };
        let line = match push_image(&srv.images, &client, &src, &dest, &sent) {
            Ok(d) => Ok(json!({"status": "done", "digest": d.to_string(),
                "destination": dest.to_string()})),
            Err(e) => Err(push_error(e)),
        };
        let _ = tx.send(line);
    });
    let first = rx
        .recv()
        .await
        .ok_or_else(|| ApiError::internal("the push ended without a result"))??;
    let line = |v: Value| Bytes::from(format!("{v}\n"));
    let head = futures_util::stream::once(async move { Ok::<_, std::io::Error>(line(first)) });
    let rest = futures_util::stream::unfold(Some((rx, guard)), move |state| async move {
        let (mut rx, guard) = state?;
        match rx.recv().await? {
            Ok(v) => Some((Ok(line(v)), Some((rx, guard)))),
            Err(e) => Some((
                Ok(line(
                    json!({"status": "error", "code": e.code, "message": e.message}),
                )),
                None,
            )),
        }
    });
    use futures_util::StreamExt;
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(head.chain(rest)),
    )
        .into_response())
}
