//! Skiff's control plane library: the HTTP API (`api`) over the server core (`server`),
//! tasks and their durable store (`tasks`), admission by capacity (`scheduler`), the
//! launcher that runs a task in a microVM (`launcher`), images (`images`), and the state
//! dir every part shares (`state_dir`).
#![forbid(unsafe_code)]

pub mod api;
pub mod build;
pub mod images;
pub mod install;
pub mod launcher;
pub mod network;
pub mod prepare;
pub mod scheduler;
pub mod server;
pub mod services;
pub mod state_dir;
pub mod tasks;
