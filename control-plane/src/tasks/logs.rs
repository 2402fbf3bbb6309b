//! A task's output, kept on disk as it arrives: one file per task of records
//! `[stream: u8][time_ms: u64 LE][len: u32 LE][bytes]`, so stdout and stderr stay apart,
//! in order, byte for byte, and a reader can follow the file while it grows.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::launcher::Output;

const HEADER: usize = 1 + 8 + 4;

/// One chunk of output.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub stream: Output,
    pub time_ms: u64,
    pub data: Vec<u8>,
}

/// Appends records; each record is one write, so readers never see half of one unless
/// the disk fills up (a reader stops at an incomplete record and waits for the rest).
pub struct LogWriter {
    file: File,
    written: u64,
}

impl LogWriter {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let written = file.metadata()?.len();
        Ok(Self { file, written })
    }

    pub fn append(&mut self, stream: Output, time_ms: u64, data: &[u8]) -> std::io::Result<u64> {
        let mut rec = Vec::with_capacity(HEADER + data.len());
        rec.push(match stream {
            Output::Stdout => 1,
            Output::Stderr => 2,
        });
        rec.extend_from_slice(&time_ms.to_le_bytes());
        rec.extend_from_slice(&(data.len() as u32).to_le_bytes());
        rec.extend_from_slice(data);
        self.file.write_all(&rec)?;
        self.written += rec.len() as u64;
        Ok(self.written)
    }
}

/// Reads the complete records from `offset` on; returns them and the offset after the last.
pub fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<Record>, u64)> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(offset))?;
    let mut r = BufReader::new(f);
    let mut out = Vec::new();
    let mut at = offset;
    loop {
        let mut head = [0u8; HEADER];
        if !read_full(&mut r, &mut head)? {
            break;
        }
        let stream = match head[0] {
            1 => Output::Stdout,
            2 => Output::Stderr,
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("log record at {at} has stream byte {other}"),
                ))
            }
        };
        let time_ms = u64::from_le_bytes(head[1..9].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(head[9..13].try_into().unwrap_or_default()) as usize;
        let mut data = vec![0u8; len];
        if !read_full(&mut r, &mut data)? {
            break;
        }
        at += (HEADER + len) as u64;
        out.push(Record {
            stream,
            time_ms,
            data,
        });
    }
    Ok((out, at))
}

/// Fills `buf` entirely (true), or finds the end of the file first (false).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_partial_tails_wait() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.log");
        let mut w = LogWriter::create(&p).unwrap();
        w.append(Output::Stdout, 1, b"hello\n").unwrap();
        let end = w.append(Output::Stderr, 2, &[0, 255, 10]).unwrap();
        let (recs, at) = read_from(&p, 0).unwrap();
        assert_eq!(at, end);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].stream, Output::Stderr);
        assert_eq!(recs[1].data, [0, 255, 10]);
        // Half a record at the end is not returned yet.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(&[1, 0, 0])
            .unwrap();
        let (recs, at2) = read_from(&p, at).unwrap();
        assert!(recs.is_empty());
        assert_eq!(at2, at);
    }
}
