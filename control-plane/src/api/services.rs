//! `/v1/services`: services kept at their desired state (issue 15).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;

use super::error::{parse_json, ApiError};
use crate::server::services::ServicesError;
use crate::server::Server;
use crate::services::{ServicePatch, ServiceRequest};

fn api_error(e: ServicesError) -> ApiError {
    let msg = e.to_string();
    match e {
        ServicesError::Invalid(_) => ApiError::bad_request(msg),
        ServicesError::Exists(_) | ServicesError::Draining(_) => {
            ApiError::new(StatusCode::CONFLICT, "conflict", msg)
        }
        ServicesError::PortTaken { .. } => ApiError::new(StatusCode::CONFLICT, "port_taken", msg),
        ServicesError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", msg),
        e => ApiError::internal(e),
    }
}

pub async fn create(
    State(srv): State<Arc<Server>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let req: ServiceRequest = parse_json(&body?)?;
    let view = srv.create_service(req).map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(view)))
}

pub async fn list(State(srv): State<Arc<Server>>) -> Result<impl IntoResponse, ApiError> {
    let all = srv.services_list().map_err(api_error)?;
    Ok(Json(serde_json::json!({ "services": all })))
}

pub async fn get_one(
    State(srv): State<Arc<Server>>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(srv.service_view(&name).map_err(api_error)?))
}

pub async fn patch(
    State(srv): State<Arc<Server>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let p: ServicePatch = parse_json(&body?)?;
    Ok(Json(srv.patch_service(&name, p).map_err(api_error)?))
}

pub async fn remove(
    State(srv): State<Arc<Server>>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let view = srv.delete_service(&name).map_err(api_error)?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}
