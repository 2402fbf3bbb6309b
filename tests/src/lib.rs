//! The one harness of Skiff's end-to-end tests (`tests/tests/*.rs`, a file per feature):
//! the KVM check, where the binaries are, static guest programs, deadline-based waiting, a
//! real `skiff serve` on its own state dir, a real `docker-registry` with a small push
//! client and layer builders, an authenticating token server and a connection-cutting
//! proxy.
#![allow(dead_code)]

pub mod containerd;
pub mod guest;
pub mod inject;
pub mod install;
pub mod kvm;
pub mod layers;
pub mod netns;
pub mod paths;
pub mod proxy;
pub mod registry;
pub mod serve;
pub mod token;

pub use kvm::kvm_available;
pub use registry::*;
