//! Skiff's control plane library.
#![forbid(unsafe_code)]
pub mod images;
