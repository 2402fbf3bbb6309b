//! Registries: image references, credentials (given or from the auth file) and the
//! Docker Registry HTTP API v2 client.

pub mod auth;
pub mod auth_file;
pub mod client;
pub mod push;
pub mod reference;

pub use auth::Credentials;
pub use client::{FetchedManifest, RegistryClient, RegistryError, RegistryOptions, ResumableWrite};
pub use reference::Reference;
