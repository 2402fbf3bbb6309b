//! `/v1/networks`: named task networks (issue 14).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;

use super::error::{parse_json, ApiError};
use crate::network::registry::RegistryError;
use crate::server::named_networks::NetworksError;
use crate::server::Server;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNetwork {
    name: String,
    /// IPv4 CIDR; the server's pool gives one when absent.
    subnet: Option<String>,
}

fn api_error(e: NetworksError) -> ApiError {
    let msg = e.to_string();
    match e {
        NetworksError::Registry(RegistryError::Invalid { .. }) => ApiError::bad_request(msg),
        NetworksError::Registry(RegistryError::Exists(_)) | NetworksError::InUse { .. } => {
            ApiError::new(StatusCode::CONFLICT, "conflict", msg)
        }
        NetworksError::Registry(RegistryError::NotFound(_)) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", msg)
        }
        NetworksError::Registry(RegistryError::Builtin(_)) => {
            ApiError::new(StatusCode::CONFLICT, "builtin", msg)
        }
        NetworksError::Unavailable(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_networks", msg)
        }
        e => ApiError::internal(e),
    }
}

pub async fn create(
    State(srv): State<Arc<Server>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = body?;
    let req: CreateNetwork = parse_json(&body)?;
    let n = srv
        .create_network(req.name, req.subnet)
        .await
        .map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(n)))
}

pub async fn list(State(srv): State<Arc<Server>>) -> Result<impl IntoResponse, ApiError> {
    let all = srv.networks().map_err(api_error)?;
    Ok(Json(serde_json::json!({ "networks": all })))
}

pub async fn get_one(
    State(srv): State<Arc<Server>>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    match srv.network(&name).map_err(api_error)? {
        Some(n) => Ok(Json(n)),
        None => Err(ApiError::not_found(format!("network {name:?}"))),
    }
}

pub async fn remove(
    State(srv): State<Arc<Server>>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    srv.remove_network(name).await.map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT)
}
