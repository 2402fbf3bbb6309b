//! `skiff-jailer`: runs one program (`skiff-vmm`) in a jail of its own, like Firecracker's
//! jailer. The control plane never starts a VMM any other way.
//!
//! The jail: mount, PID, IPC, UTS and network namespaces of its own; a root file system
//! holding only the files the spec names (read-only unless named writable) and its device
//! nodes; an unprivileged uid/gid with no capabilities and `no_new_privs`; a cgroup with
//! CPU, memory and process limits; rlimits; no inherited descriptors; only the spec's
//! environment. Seccomp filters are the program's own business (`skiff-vmm` installs one
//! per thread kind), installed after `no_new_privs`.
//!
//! Modules: [`spec`] (what the jail holds, its command line), [`cgroup`] (v2 or v1
//! hierarchies), [`mounts`] (the root), [`privileges`], [`elf`] (static check), [`run`]
//! (the sequence), [`sys`] (the system calls), [`panic`] (panics abort the process).

pub mod cgroup;
pub mod elf;
pub mod error;
pub mod mounts;
pub mod panic;
pub mod privileges;
pub mod run;
pub mod spec;
pub mod sys;

pub use error::JailError;
pub use run::{run, JAIL_FAILED};
pub use spec::{Bind, JailSpec, Limits};
