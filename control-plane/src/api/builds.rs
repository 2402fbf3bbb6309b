//! `/v1/build-contexts` and `/v1/builds`: a client's context manifest and the files the
//! server lacks, then builds of it (state, steps, result, NDJSON events, cancel).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;

use super::error::{parse_json, ApiError};
use super::registry_auth;
use crate::build::context::Entry;
use crate::build::context_store::{ContextLimits, ContextStoreError};
use crate::build::dockerfile::{parse_bytes, plan};
use crate::build::image_config::Format;
use crate::build::{BuildRequest, StepNetworkMode};
use crate::images::registry::RegistryClient;
use crate::images::Reference;
use crate::server::builds::builder_of;
use crate::server::Server;

fn context_error(e: ContextStoreError) -> ApiError {
    match &e {
        ContextStoreError::TooLarge { .. } | ContextStoreError::TooManyFiles { .. } => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "context_too_large",
                e.to_string(),
            )
        }
        ContextStoreError::NotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
        }
        ContextStoreError::Incomplete { .. } => {
            ApiError::new(StatusCode::CONFLICT, "context_incomplete", e.to_string())
        }
        ContextStoreError::Io(_) => ApiError::internal(e),
        _ => ApiError::bad_request(e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextRequest {
    files: Vec<Entry>,
}

/// `POST /v1/build-contexts`: 201 `{"id","missing"}`.
pub async fn create_context(
    State(srv): State<Arc<Server>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let req: ContextRequest = parse_json(&body?)?;
    let store = srv.contexts.clone();
    let (id, missing) =
        tokio::task::spawn_blocking(move || store.create(req.files, ContextLimits::default()))
            .await
            .map_err(ApiError::internal)?
            .map_err(context_error)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"id": id, "missing": missing})),
    ))
}

/// `GET /v1/build-contexts/{id}`: what it still lacks.
pub async fn get_context(
    State(srv): State<Arc<Server>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let store = srv.contexts.clone();
    let id2 = id.clone();
    let missing = tokio::task::spawn_blocking(move || store.missing(&id2))
        .await
        .map_err(ApiError::internal)?
        .map_err(context_error)?;
    Ok(Json(serde_json::json!({"id": id, "missing": missing})))
}

/// `PUT /v1/build-contexts/{id}/files`: a tar of missing files, spooled to disk (at most
/// the context's own size and some tar overhead), then checked file by file.
pub async fn put_files(
    State(srv): State<Arc<Server>>,
    Path(id): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let limit = ContextLimits::default().max_bytes + (64 << 20);
    let tmp_dir = srv.cfg.state_dir.join("tmp");
    std::fs::create_dir_all(&tmp_dir).map_err(ApiError::internal)?;
    let mut spool = tempfile::tempfile_in(&tmp_dir).map_err(ApiError::internal)?;
    let mut stream = body.into_data_stream();
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("request body: {e}")))?;
        got += chunk.len() as u64;
        if got > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "context_too_large",
                format!("the upload is over {limit} bytes"),
            ));
        }
        spool.write_all(&chunk).map_err(ApiError::internal)?;
    }
    let store = srv.contexts.clone();
    let id2 = id.clone();
    let missing = tokio::task::spawn_blocking(move || {
        use std::io::Seek;
        spool.rewind()?;
        store.receive(&id2, std::io::BufReader::new(spool))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(context_error)?;
    Ok(Json(serde_json::json!({"id": id, "missing": missing})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BuildBody {
    context_id: String,
    dockerfile: String,
    #[serde(default)]
    dockerignore: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    build_args: BTreeMap<String, String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    no_cache: bool,
    #[serde(default)]
    source_date_epoch: Option<u64>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    cpu: Option<u32>,
    #[serde(default, rename = "memoryMiB")]
    memory_mib: Option<u64>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    #[serde(default)]
    push: bool,
}

/// `POST /v1/builds`: 202 with the build (QUEUED).
pub async fn create_build(
    State(srv): State<Arc<Server>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let b: BuildBody = parse_json(&body?)?;
    let mut tags = Vec::new();
    for (i, t) in b.tags.iter().enumerate() {
        tags.push(
            t.parse::<Reference>()
                .map_err(|e| ApiError::bad_request(format!("tags[{i}]: {t:?}: {e}")))?,
        );
    }
    let format = match b.format.as_deref() {
        None | Some("oci") => Format::Oci,
        Some("docker") => Format::Docker,
        Some(f) => {
            return Err(ApiError::bad_request(format!(
                "format: {f:?} is not oci or docker"
            )))
        }
    };
    let network = match b.network.as_deref() {
        None | Some("none") => StepNetworkMode::None,
        Some("default") => {
            if let Err(why) = &srv.networks {
                return Err(ApiError::bad_request(format!(
                    "network: this server has no networks for RUN steps: {why}"
                )));
            }
            StepNetworkMode::Default
        }
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "network: {n:?} is not none or default"
            )))
        }
    };
    // With `push`, the client's credentials (`X-Registry-Config`, or `X-Registry-Auth`)
    // are kept in memory for this build only, each for its own registry among its tags'.
    let push = if b.push {
        if tags.is_empty() {
            return Err(ApiError::bad_request(
                "push: give tags naming a registry (REGISTRY/REPO:TAG)",
            ));
        }
        if let Some((i, t)) = tags.iter().enumerate().find(|(_, t)| t.is_local()) {
            return Err(ApiError::bad_request(format!(
                "tags[{i}]: {t} is a local-only name and cannot be pushed"
            )));
        }
        let mut opts = srv.cfg.registry.clone();
        let registries = tags.iter().map(|t| t.registry.clone()).collect();
        opts.credentials
            .extend(registry_auth::for_registries(&headers, &registries)?);
        Some(RegistryClient::new(opts).map_err(ApiError::internal)?)
    } else {
        None
    };
    let cpu = b.cpu.unwrap_or(1);
    let memory_mib = b.memory_mib.unwrap_or(512);
    let limits = srv.limits();
    if cpu == 0 || cpu > limits.max_cpu {
        return Err(ApiError::bad_request(format!(
            "cpu: {cpu} is not between 1 and {}",
            limits.max_cpu
        )));
    }
    if !(64..=limits.max_memory_mib).contains(&memory_mib) {
        return Err(ApiError::bad_request(format!(
            "memoryMiB: {memory_mib} is not between 64 and {}",
            limits.max_memory_mib
        )));
    }
    // A Dockerfile that cannot be planned is refused now, with its line.
    let planned = parse_bytes(b.dockerfile.as_bytes())
        .and_then(|df| plan(&df, &b.build_args))
        .and_then(|p| p.target(b.target.as_deref()).map(drop));
    if let Err(e) = planned {
        let line = e.line();
        let mut err = ApiError::new(StatusCode::BAD_REQUEST, "dockerfile_invalid", e.to_string());
        err.line = line;
        return Err(err);
    }
    let store = srv.contexts.clone();
    let (id, ignore) = (b.context_id.clone(), b.dockerignore.clone());
    let ctx = tokio::task::spawn_blocking(move || store.context(&id, ignore.as_deref()))
        .await
        .map_err(ApiError::internal)?
        .map_err(context_error)?;
    let req = BuildRequest {
        dockerfile: b.dockerfile.into_bytes(),
        tags,
        build_args: b.build_args,
        target: b.target,
        labels: b.labels,
        no_cache: b.no_cache,
        source_date_epoch: b.source_date_epoch,
        format,
        cpu,
        memory_mib,
        timeout: b.timeout_seconds.map(Duration::from_secs),
        network,
    };
    let record = srv
        .builds
        .start(builder_of(&srv), req, ctx, b.context_id, push);
    Ok((StatusCode::ACCEPTED, Json(record)))
}

pub async fn list_builds(State(srv): State<Arc<Server>>) -> impl IntoResponse {
    Json(serde_json::json!({"builds": srv.builds.list()}))
}

pub async fn get_build(
    State(srv): State<Arc<Server>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let b = srv
        .builds
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("build {id}")))?;
    Ok(Json(b.snapshot()))
}

/// `POST /v1/builds/{id}/cancel`: its VMs end and it becomes CANCELLED.
pub async fn cancel_build(
    State(srv): State<Arc<Server>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let b = srv
        .builds
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("build {id}")))?;
    if b.snapshot().state.is_done() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "build_finished",
            format!("build {id} has already ended"),
        ));
    }
    b.control.cancel();
    Ok((StatusCode::ACCEPTED, Json(b.snapshot())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    #[serde(default)]
    follow: bool,
}

/// `GET /v1/builds/{id}/events[?follow=true]`: NDJSON, one event per line; following
/// ends after the `result` event.
pub async fn build_events(
    State(srv): State<Arc<Server>>,
    Path(id): Path<String>,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let b = srv
        .builds
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("build {id}")))?;
    let rx = b.subscribe();
    let follow = p.follow;
    let is_result =
        |l: &str| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["type"] == "result");
    let stream = futures_util::stream::unfold((b, rx, 0usize, false), move |st| async move {
        let (b, mut rx, at, ended) = st;
        if ended {
            return None;
        }
        loop {
            rx.borrow_and_update();
            let lines = b.events_from(at);
            if !lines.is_empty() {
                let end = !follow || lines.iter().any(|l| is_result(l));
                let mut text = lines.join("\n");
                text.push('\n');
                let next = at + lines.len();
                return Some((
                    Ok::<Bytes, std::io::Error>(Bytes::from(text)),
                    (b, rx, next, end),
                ));
            }
            if !follow || rx.changed().await.is_err() {
                return None;
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
