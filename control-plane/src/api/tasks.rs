//! `/v1/tasks`: submit, list, inspect, stop.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::error::{parse_json, ApiError};
use crate::server::{Server, ServerError, StopOutcome};

/// What a 429 tells the client to wait before trying again.
const QUEUE_FULL_RETRY_AFTER_SECS: u64 = 5;
use crate::tasks::{new_task_id, now_ms, ListQuery, TaskRequest, TaskState};

pub async fn create(
    State(srv): State<Arc<Server>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body?;
    let req: TaskRequest = parse_json(&body)?;
    let task = req
        .validate(
            &srv.limits(),
            &srv.cfg.default_network,
            new_task_id(),
            now_ms(),
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let task = srv.submit(task).map_err(|e| match e {
        ServerError::QueueFull(_) => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", e.to_string())
                .retry_after(QUEUE_FULL_RETRY_AFTER_SECS)
        }
        ServerError::NoNetwork(_) | ServerError::UnknownNetwork(_) => {
            ApiError::bad_request(e.to_string())
        }
        ServerError::PortTaken(_) => {
            ApiError::new(StatusCode::CONFLICT, "port_taken", e.to_string())
        }
        e => ApiError::internal(e),
    })?;
    Ok((StatusCode::ACCEPTED, Json(task)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListParams {
    state: Option<String>,
    /// `KEY=VALUE`
    label: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

pub async fn list(
    State(srv): State<Arc<Server>>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let state = p
        .state
        .map(|s| {
            TaskState::parse(&s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "state: {s:?} is not one of PROVISIONING, PENDING, RUNNING, STOPPING, STOPPED"
                ))
            })
        })
        .transpose()?;
    let label = p
        .label
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(ApiError::bad_request(format!(
                "label: {l:?} is not KEY=VALUE"
            ))),
        })
        .transpose()?;
    let limit = p.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: {limit}: must be 1 to {MAX_PAGE}"
        )));
    }
    let before_seq = p
        .next_token
        .map(|t| {
            t.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("nextToken: {t:?} is not a token we gave"))
            })
        })
        .transpose()?;
    let q = ListQuery {
        state,
        label,
        limit,
        before_seq,
    };
    let (tasks, next) = srv.records.store.list(&q).map_err(ApiError::internal)?;
    let mut body = serde_json::json!({ "tasks": tasks });
    if let Some(n) = next {
        body["nextToken"] = n.to_string().into();
    }
    Ok(Json(body))
}

pub async fn get_one(
    State(srv): State<Arc<Server>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let task = srv
        .records
        .store
        .get(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("task {id}")))?;
    let events = srv.records.store.events(&id).map_err(ApiError::internal)?;
    let mut body = serde_json::to_value(&task).map_err(ApiError::internal)?;
    body["events"] = serde_json::to_value(events).map_err(ApiError::internal)?;
    Ok(Json(body))
}

pub async fn stop(
    State(srv): State<Arc<Server>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    match srv.stop(&id).map_err(ApiError::internal)? {
        StopOutcome::NotFound => Err(ApiError::not_found(format!("task {id}"))),
        StopOutcome::AlreadyStopped(_) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("task {id} has already stopped"),
        )),
        StopOutcome::Stopping(t) => Ok((StatusCode::ACCEPTED, Json(t))),
    }
}
