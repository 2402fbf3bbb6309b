//! Decompression on its own thread: a layer is inflated a few MiB ahead of the unpacker,
//! so decompressing (CPU) and writing files (the kernel) overlap instead of taking turns.

use std::fs::File;
use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver};

use super::compression::decompressed;

/// Bytes per message.
const CHUNK: usize = 1 << 20;
/// Messages in flight: how far decompression may run ahead.
const AHEAD: usize = 4;

enum Msg {
    Data(Vec<u8>),
    Err(io::Error),
    End,
}

/// Reads what the decompressing thread sends.
pub struct Inflated {
    rx: Receiver<Msg>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
}

/// Decompresses `file` (gzip, zstd or plain, by its magic number) on a new thread and
/// returns a reader of the result. Dropping the reader stops the thread.
pub fn decompressed_ahead(file: File) -> io::Result<Inflated> {
    let (tx, rx) = sync_channel(AHEAD);
    std::thread::Builder::new()
        .name("skiff-inflate".into())
        .spawn(move || {
            let mut reader = match decompressed(file) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Msg::Err(io::Error::other(e)));
                    return;
                }
            };
            loop {
                let mut buf = vec![0u8; CHUNK];
                let mut n = 0;
                while n < CHUNK {
                    match reader.read(&mut buf[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.send(Msg::Err(e));
                            return;
                        }
                    }
                }
                buf.truncate(n);
                let last = n < CHUNK;
                if n > 0 && tx.send(Msg::Data(buf)).is_err() {
                    return; // the reader is gone
                }
                if last {
                    let _ = tx.send(Msg::End);
                    return;
                }
            }
        })?;
    Ok(Inflated {
        rx,
        cur: Vec::new(),
        pos: 0,
        done: false,
    })
}

impl Read for Inflated {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Data(buf)) => (self.cur, self.pos) = (buf, 0),
                Ok(Msg::Err(e)) => return Err(e),
                Ok(Msg::End) => self.done = true,
                // The thread ended without saying so (it panicked): not a clean end.
                Err(_) => return Err(io::Error::other("the decompressing thread stopped")),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(data: &[u8], compress: impl Fn(&[u8]) -> Vec<u8>) -> io::Result<Vec<u8>> {
        let mut f = tempfile::tempfile()?;
        f.write_all(&compress(data))?;
        use std::io::Seek;
        f.rewind()?;
        let mut out = Vec::new();
        decompressed_ahead(f)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn gzip_zstd_and_plain_come_out_whole() {
        let data: Vec<u8> = (0..(3 * CHUNK + 12345) as u32)
            .map(|i| (i % 7 + i / 5000) as u8)
            .collect();
        let gz = |d: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(d).unwrap();
            e.finish().unwrap()
        };
        assert!(roundtrip(&data, gz).unwrap() == data);
        assert!(roundtrip(&data, |d| zstd::encode_all(d, 1).unwrap()).unwrap() == data);
        assert!(roundtrip(&data, |d| d.to_vec()).unwrap() == data);
        assert!(roundtrip(b"", |d| d.to_vec()).unwrap().is_empty());
        assert!(roundtrip(&[7u8; CHUNK], |d| d.to_vec()).unwrap() == vec![7u8; CHUNK]);
    }

    #[test]
    fn a_broken_stream_is_an_error_not_an_early_end() {
        let data = vec![1u8; 100_000];
        let err = roundtrip(&data, |d| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(d).unwrap();
            let mut z = e.finish().unwrap();
            z.truncate(z.len() / 2);
            z
        })
        .unwrap_err();
        assert_ne!(err.kind(), io::ErrorKind::Other, "{err}");
    }
}
