//! Skiff's control plane library: the image store and registry client (`images`), the
//! launcher that runs a task in a microVM (`launcher`), and the state dir every part shares
//! (`state_dir`).
#![forbid(unsafe_code)]

pub mod images;
pub mod launcher;
pub mod state_dir;
