//! The one shape every saved part of a VM has, after Firecracker's `Persist`: a device
//! (or the transport, or COM1) saves a plain `State` that goes into the snapshot, and is
//! rebuilt from that state plus what only the new process can give (`ConstructorArgs`:
//! the disk to open, the socket to listen on, the interrupt, guest memory).
//!
//! This module imports nothing of the crate, so anything may implement it.

/// A part of the VM that can be saved in a snapshot and rebuilt from it.
pub trait Persist<'a>
where
    Self: Sized,
{
    /// What is written to the snapshot.
    type State;
    /// What the restoring process provides besides the state.
    type ConstructorArgs;
    /// Why a saved state was refused.
    type Error;

    /// The state to write to the snapshot.
    fn save(&self) -> Self::State;
    /// Rebuilds the part from a saved state.
    fn restore(args: Self::ConstructorArgs, state: &Self::State) -> Result<Self, Self::Error>;
}
