//! The VMM's own log (tracing, on stderr) with a size cap: a guest that makes the VMM warn
//! on every request must not fill the host's disk through the log file. Past the cap one
//! marker line is written and later lines are dropped. The exit line (`skiff-vmm: …`,
//! printed without tracing) is not counted, so whoever reads the log's last line still
//! learns why the VMM ended.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;

/// Default cap: 4 MiB.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 4 << 20;

/// Makes writers that share one byte budget and write to `W`s from `open`.
#[derive(Clone)]
pub struct CappedLog<F> {
    written: Arc<AtomicU64>,
    max: u64,
    open: F,
}

impl<F> CappedLog<F> {
    pub fn new(max: u64, open: F) -> Self {
        Self {
            written: Arc::new(AtomicU64::new(0)),
            max,
            open,
        }
    }
}

/// One event's writer.
pub struct CappedWriter<W> {
    written: Arc<AtomicU64>,
    max: u64,
    inner: W,
}

impl<W: Write> Write for CappedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let len = buf.len() as u64;
        let before = self.written.fetch_add(len, Ordering::Relaxed);
        if before.saturating_add(len) <= self.max {
            self.inner.write_all(buf)?;
        } else if before <= self.max {
            // The write that crosses the cap: the marker instead of a cut line.
            let note = format!(
                "skiff-vmm: log capped at {} bytes; later lines are dropped\n",
                self.max
            );
            self.inner.write_all(note.as_bytes())?;
        }
        // Dropped bytes are reported as written: logging must not fail the VMM.
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<'a, F, W> MakeWriter<'a> for CappedLog<F>
where
    F: Fn() -> W + 'static,
    W: Write + 'a,
{
    type Writer = CappedWriter<W>;

    fn make_writer(&'a self) -> Self::Writer {
        CappedWriter {
            written: self.written.clone(),
            max: self.max,
            inner: (self.open)(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_past_the_cap_are_dropped_after_one_marker() {
        let out = Shared::default();
        let sink = out.clone();
        let log = CappedLog::new(25, move || sink.clone());
        for i in 0..100 {
            // As tracing's formatter does: one write per event.
            let line = format!("line {i:04}\n");
            log.make_writer().write_all(line.as_bytes()).unwrap();
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "line 0000\nline 0001\nskiff-vmm: log capped at 25 bytes; later lines are dropped\n"
        );
    }
}
