//! Cancelling a transfer from another thread: the task that asked for an image was
//! stopped, a push's client left, or its build was cancelled. The registry client checks
//! the flag before each request and between reads of a blob (a download's body, or an
//! upload's), so a moving transfer stops within one read; a stalled one ends at the read
//! timeout. What was downloaded stays as a partial blob for the next pull to resume.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A flag shared between whoever may cancel and the pull that watches it.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Cancels when dropped: held by the future waiting for a pull, so dropping that future
/// (the task was stopped, the server is shutting down) cancels the pull behind it.
#[derive(Debug)]
pub struct CancelOnDrop(pub Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A reader that fails once `cancel` is set, so a copy loop stops at its next read.
pub struct CancellableRead<R> {
    pub inner: R,
    pub cancel: Option<Cancel>,
}

impl<R: std::io::Read> std::io::Read for CancellableRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.as_ref().is_some_and(Cancel::is_cancelled) {
            return Err(std::io::Error::other("the transfer was cancelled"));
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_cancelled_reader_fails_at_its_next_read_and_drop_cancels() {
        let cancel = Cancel::new();
        let data = [7u8; 100];
        let mut r = CancellableRead {
            inner: &data[..],
            cancel: Some(cancel.clone()),
        };
        let mut buf = [0u8; 10];
        assert_eq!(r.read(&mut buf).unwrap(), 10);
        drop(CancelOnDrop(cancel.clone()));
        assert!(cancel.is_cancelled());
        assert!(r.read(&mut buf).is_err());
    }
}
