//! What is left of an image's limits while its layers are unpacked, and the reader that
//! counts and hashes a layer's uncompressed stream (for the limit and its diff_id).

use std::cell::Cell;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use crate::images::digest::Digest;
use crate::images::limits::Limits;

/// Which limit an image went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Bytes(u64),
    Entries(u64),
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Bytes(n) => write!(f, "the limit of {n} uncompressed bytes per image"),
            Limit::Entries(n) => write!(f, "the limit of {n} entries per image"),
        }
    }
}

/// A `Limit` as the error of a read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LimitError(pub Limit);

/// The rest of one image's allowance, shared by its layers (bottom first).
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    bytes_used: Cell<u64>,
    entries_used: Cell<u64>,
}

impl Budget {
    pub fn new(limits: Limits) -> Self {
        Budget {
            limits,
            bytes_used: Cell::new(0),
            entries_used: Cell::new(0),
        }
    }

    /// Counts one more entry; Err when that is over the limit.
    pub fn entry(&self) -> Result<(), Limit> {
        self.entries_used.set(self.entries_used.get() + 1);
        if self.entries_used.get() > self.limits.max_image_entries {
            return Err(Limit::Entries(self.limits.max_image_entries));
        }
        Ok(())
    }

    fn bytes_left(&self) -> u64 {
        self.limits
            .max_image_bytes
            .saturating_sub(self.bytes_used.get())
    }
}

/// Reads a layer's uncompressed stream, hashing it and stopping with an error at the
/// image's byte limit (so a small gzip of zeros cannot fill the disk).
pub struct Metered<'b, R> {
    inner: R,
    budget: &'b Budget,
    sha: Sha256,
    /// Set when the byte limit stopped the stream.
    pub over: Option<Limit>,
}

impl<'b, R: Read> Metered<'b, R> {
    pub fn new(inner: R, budget: &'b Budget) -> Self {
        Metered {
            inner,
            budget,
            sha: Sha256::new(),
            over: None,
        }
    }

    /// Reads what is left of the stream (the tar's end padding), and returns its digest.
    pub fn finish(mut self) -> io::Result<Digest> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(Digest::from_hasher(self.sha))
    }
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.budget.bytes_left();
        if left == 0 {
            // One byte more tells a stream that ends exactly at the limit from a longer one.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    let limit = Limit::Bytes(self.budget.limits.max_image_bytes);
                    self.over = Some(limit);
                    Err(io::Error::other(LimitError(limit)))
                }
            };
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.sha.update(&buf[..n]);
        self.budget
            .bytes_used
            .set(self.budget.bytes_used.get() + n as u64);
        Ok(n)
    }
}
