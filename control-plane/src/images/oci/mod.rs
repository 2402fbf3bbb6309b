//! The OCI / Docker image formats: manifests, indexes and image configs.

pub mod config;
pub mod manifest;

pub use config::{ImageConfig, RunDefaults};
