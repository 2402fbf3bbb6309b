//! `/v1/images`: pull an image into the server's store, list the stored images.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::error::{parse_json, ApiError};
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
