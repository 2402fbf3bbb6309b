//! The FIFOs containerd hands over for a process's stdio: output is written to them as the
//! agent sends it; stdin is read from its FIFO and sent to the agent, its end closing the
//! process's stdin. A reader that goes away (a `ctr` that was killed) loses the output,
//! never the task.

use std::fs::{File, OpenOptions};
use std::io::Write;

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

/// Copies the stdin FIFO at `path` to the task until its writer closes it.
pub fn forward_stdin(path: String, control: TaskControl) {
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let fifo = match File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!("opening stdin {path}: {e}");
                    let _ = control.close_stdin();
                    return;
                }
            };
            control.copy_stdin_from(fifo);
        })
        .expect("spawning the stdin thread");
}
