//! The HTTP API (axum): routes, JSON errors `{"error":{"code","message"}}`, bearer-token
//! auth, body limits. Handlers are thin: they validate and call into `crate::server`.

mod builds;
mod error;
mod images;
pub mod listen;
mod logs;
mod networks;
mod registry_auth;
mod services;
mod tasks;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use subtle::ConstantTimeEq;

pub use error::ApiError;

use crate::server::Server;

/// Largest request body accepted (a task request is a few KiB).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Largest build context manifest (a million entries of about 200 bytes).
pub const MAX_CONTEXT_MANIFEST: usize = 256 << 20;

/// The OpenAPI document, kept in the repo at docs/openapi.json.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

pub fn router(srv: Arc<Server>) -> Router {
    let api = Router::new()
        .route("/v1/tasks", post(tasks::create).get(tasks::list))
        .route("/v1/tasks/{id}", get(tasks::get_one))
        .route("/v1/tasks/{id}/stop", post(tasks::stop))
        .route("/v1/tasks/{id}/logs", get(logs::logs))
        .route("/v1/images", post(images::pull).get(images::list))
        .route("/v1/images/{reference}/push", post(images::push))
        .route(
            "/v1/build-contexts",
            post(builds::create_context).layer(DefaultBodyLimit::max(MAX_CONTEXT_MANIFEST)),
        )
        .route("/v1/build-contexts/{id}", get(builds::get_context))
        .route(
            "/v1/build-contexts/{id}/files",
            put(builds::put_files).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/builds",
            post(builds::create_build).get(builds::list_builds),
        )
        .route("/v1/builds/{id}", get(builds::get_build))
        .route("/v1/builds/{id}/cancel", post(builds::cancel_build))
        .route("/v1/builds/{id}/events", get(builds::build_events))
        .route("/v1/networks", post(networks::create).get(networks::list))
        .route(
            "/v1/networks/{name}",
            get(networks::get_one).delete(networks::remove),
        )
        .route("/v1/services", post(services::create).get(services::list))
        .route(
            "/v1/services/{name}",
            get(services::get_one)
                .patch(services::patch)
                .delete(services::remove),
        )
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(srv.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(srv)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn metrics(State(srv): State<Arc<Server>>) -> Result<Response, ApiError> {
    let counts = srv
        .records
        .store
        .count_by_state()
        .map_err(ApiError::internal)?;
    let text = srv.records.metrics.render(
        &counts,
        srv.sched.capacity(),
        srv.sched.in_use(),
        srv.waiting(),
        crate::server::metrics::SnapshotFigures {
            ready: srv.snapshots.ready(),
            warm: srv.snapshots.warm_usage(),
            warm_budget: srv.snapshots.warm_budget(),
        },
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// With a token configured, every route but /healthz needs `Authorization: Bearer TOKEN`,
/// compared in constant time.
async fn auth(State(srv): State<Arc<Server>>, req: Request, next: Next) -> Response {
    let Some(token) = srv.cfg.token.as_deref() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        next.run(req).await
    } else {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer …)",
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        r
    }
}
