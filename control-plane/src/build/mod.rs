//! `skiff build`: images built from Dockerfiles, each `RUN` in a microVM of its own.
//! This part holds what the host does without a VM.

pub mod cache_key;
pub mod cache_store;
pub mod context;
pub mod copy;
pub mod dockerfile;
pub mod image_config;
pub mod layer;
pub mod step;
