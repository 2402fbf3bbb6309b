//! Skiff's control plane library: the image store and registry client (`images`) and the
//! state dir every part shares (`state_dir`).
#![forbid(unsafe_code)]

pub mod images;
pub mod state_dir;
