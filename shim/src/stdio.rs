//! The FIFOs containerd hands over for a process's stdio: output is written to them as the
//! agent sends it; stdin is read from its FIFO and sent to the agent, its end (or CloseIO,
//! after what was written before it) closing the process's stdin. A reader that goes away
//! (a `ctr` that was killed) loses the output, never the task.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;

use control_plane::launcher::TaskControl;

/// One process's output FIFOs (either may be absent: `ctr run --null-io`).
pub struct Outputs {
    stdout: Option<File>,
    stderr: Option<File>,
}

fn open_fifo_for_writing(path: &str) -> Option<File> {
    if path.is_empty() {
        return None;
    }
    match OpenOptions::new().write(true).open(path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!("opening {path}: {e}; that output is dropped");
            None
        }
    }
}

impl Outputs {
    /// Opens both FIFOs (containerd holds their reading ends open already).
    pub fn open(stdout: &str, stderr: &str) -> Self {
        Self {
            stdout: open_fifo_for_writing(stdout),
            stderr: open_fifo_for_writing(stderr),
        }
    }

    pub fn stdout(&mut self, data: &[u8]) {
        write(&mut self.stdout, data);
    }

    pub fn stderr(&mut self, data: &[u8]) {
        write(&mut self.stderr, data);
    }
}

fn write(f: &mut Option<File>, data: &[u8]) {
    if let Some(file) = f {
        if file.write_all(data).is_err() {
            // The reader is gone (EPIPE): nobody will read the rest.
            *f = None;
        }
    }
}

/// The container's stdin: its FIFO, read on a thread of its own once the VM starts.
pub struct StdinForward {
    path: String,
    /// Becomes readable (at its end) when the matching [`StdinCloser`] goes.
    close_requested: UnixStream,
}

/// containerd's CloseIO for a stdin: dropping it tells the forwarder to send what is
/// already in the FIFO and then close the process's stdin.
///
/// The FIFO's own end is not enough, and CloseIO alone is too early: `ctr` calls CloseIO
/// as soon as its own input ends, while the bytes it wrote just before may still sit in
/// the FIFO; runc's shim gets the order right because the process reads the FIFO itself.
pub struct StdinCloser(#[allow(dead_code)] UnixStream);

/// A forwarder for the stdin FIFO at `path` and the CloseIO that ends it.
pub fn stdin_link(path: &str) -> io::Result<(StdinForward, StdinCloser)> {
    // A socket pair (std::io::pipe needs Rust 1.87, past our MSRV): the end that goes
    // wakes the other with its EOF.
    let (close_requested, closer) = UnixStream::pair()?;
    Ok((
        StdinForward {
            path: path.to_owned(),
            close_requested,
        },
        StdinCloser(closer),
    ))
}

impl StdinForward {
    /// Copies the FIFO to the task until every writer has closed it or CloseIO came and
    /// what was written before it is sent; then closes the process's stdin.
    pub fn spawn(self, control: TaskControl) {
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                if let Err(e) = self.copy(&control) {
                    tracing::warn!("stdin {}: {e}", self.path);
                }
                let _ = control.close_stdin();
            })
            .expect("spawning the stdin thread");
    }

    fn copy(&self, control: &TaskControl) -> io::Result<()> {
        // Non-blocking: the open does not wait for a writer, and a CloseIO can end a FIFO
        // that never gets one.
        let mut fifo = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut closing = false;
        loop {
            if !closing {
                let (data, close) = wait_readable(fifo.as_fd(), self.close_requested.as_fd())?;
                closing = close;
                if !data && !closing {
                    continue;
                }
            }
            match fifo.read(&mut buf) {
                // Every writer has gone (a FIFO reports that only after one came).
                Ok(0) => return Ok(()),
                Ok(n) => {
                    if control.write_stdin(&buf[..n]).is_err() {
                        return Ok(());
                    }
                }
                // Drained: after a CloseIO, that is the end.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if closing {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Waits until `fifo` has data or its end (first) and whether `close` did (second).
fn wait_readable(fifo: BorrowedFd<'_>, close: BorrowedFd<'_>) -> io::Result<(bool, bool)> {
    let mut fds = [fifo, close].map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: `fds` is an array of two initialised pollfds that lives across the call,
        // and its length is passed with it; both descriptors are borrowed, so still open.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n >= 0 {
            return Ok((fds[0].revents != 0, fds[1].revents != 0));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
