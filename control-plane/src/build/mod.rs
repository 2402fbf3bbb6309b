//! `skiff build`: images built from Dockerfiles, each `RUN` in a microVM of its own.
//! `executor` runs a whole build: its stages (`stage`) and the steps the cache lacks
//! (`execute`), on trees of the stages kept unpacked on the host (`tree`).

mod add_archive;
pub mod cache_key;
pub mod cache_store;
pub mod context;
pub mod context_store;
pub mod copy;
pub mod dockerfile;
mod execute;
pub mod executor;
pub mod image_config;
pub mod layer;
pub mod miss_reason;
pub mod request;
mod stage;
pub mod step;
pub mod tree;

pub use executor::{
    BuildControl, BuildNetworks, Builder, StepNetwork, VmParts, DEFAULT_STEP_DISK_BYTES,
};
pub use request::{
    BuildContext, BuildError, BuildEvent, BuildOutcome, BuildRequest, ContextFiles, RunPhases,
    StepNetworkMode, StepReport, StepStatus, Stream,
};
