//! A task's output, kept on disk as it arrives: records
//! `[stream: u8][time_ms: u64 LE][len: u32 LE][bytes]`, so stdout and stderr stay apart,
//! in order, byte for byte, and a reader can follow the file while it grows.
//!
//! Bounded: the current file (`output.log`) holds at most a cap of bytes; when a record
//! would pass it, the file is renamed to `output.log.1` (replacing the one before) and a
//! new one starts, so a task keeps its newest output, at most twice the cap, and the
//! oldest is dropped. A torn record at the end (a crash mid-write) is cut off when the
//! file is opened for writing again, so it never hides what follows.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::launcher::Output;

const HEADER: usize = 1 + 8 + 4;

/// The default cap of one log file.
pub const DEFAULT_LOG_CAP: u64 = 64 << 20;

/// One chunk of output.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub stream: Output,
    pub time_ms: u64,
    pub data: Vec<u8>,
}

/// The file the current one becomes when it is rotated.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Bytes written to the task's log in all (across rotations): followers wait on it.
    pub total: u64,
    /// The file was rotated for this record: older output was dropped.
    pub rotated: bool,
}

/// Appends records; each record is one write, so readers never see half of one unless
/// the disk fills up (a reader stops at an incomplete record and waits for the rest).
pub struct LogWriter {
    path: PathBuf,
    file: File,
    /// Bytes in the current file.
    written: u64,
    total: u64,
    cap: u64,
}

impl LogWriter {
    /// Opens `path` for appending with a cap per file (0: no cap), cutting off a torn
    /// record at its end.
    pub fn create(path: &Path, cap: u64) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let (_, whole) = scan(&file, 0, u64::MAX)?;
        if whole < file.metadata()?.len() {
            file.set_len(whole)?;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            written: whole,
            total: whole,
            cap,
        })
    }

    pub fn append(
        &mut self,
        stream: Output,
        time_ms: u64,
        data: &[u8],
    ) -> std::io::Result<Appended> {
        let mut rec = Vec::with_capacity(HEADER + data.len());
        rec.push(match stream {
            Output::Stdout => 1,
            Output::Stderr => 2,
        });
        rec.extend_from_slice(&time_ms.to_le_bytes());
        rec.extend_from_slice(&(data.len() as u32).to_le_bytes());
        rec.extend_from_slice(data);
        let rotated =
            self.cap > 0 && self.written > 0 && self.written + rec.len() as u64 > self.cap;
        if rotated {
            std::fs::rename(&self.path, rotated_path(&self.path))?;
            self.file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.written = 0;
        }
        self.file.write_all(&rec)?;
        self.written += rec.len() as u64;
        self.total += rec.len() as u64;
        Ok(Appended {
            total: self.total,
            rotated,
        })
    }
}

/// Complete records of `file` from `offset` on, at most about `max_bytes` of them (at
/// least one), and the offset after the last.
pub fn scan(file: &File, offset: u64, max_bytes: u64) -> std::io::Result<(Vec<Record>, u64)> {
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(offset))?;
    let mut r = BufReader::new(f);
    let mut out = Vec::new();
    let (mut at, mut taken) = (offset, 0u64);
    while taken < max_bytes {
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
        taken += (HEADER + len) as u64;
        out.push(Record {
            stream,
            time_ms,
            data,
        });
    }
    Ok((out, at))
}

/// A reader of a task's log that follows rotations: it reads the rotated file first (if
/// any), then the current one, and when the current one is rotated under it, finishes it
/// through its open handle and moves on to the new one.
pub struct LogReader {
    path: PathBuf,
    file: Option<File>,
    offset: u64,
}

impl LogReader {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            file: None,
            offset: 0,
        }
    }

    fn open(path: &Path) -> std::io::Result<Option<File>> {
        match File::open(path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The next records, at most about `max_bytes`; empty when nothing new is there yet.
    pub fn next(&mut self, max_bytes: u64) -> std::io::Result<Vec<Record>> {
        loop {
            if self.file.is_none() {
                // Start with the rotated file when there is one.
                self.file = Self::open(&rotated_path(&self.path))?;
                if self.file.is_none() {
                    self.file = Self::open(&self.path)?;
                }
                self.offset = 0;
                if self.file.is_none() {
                    return Ok(Vec::new());
                }
            }
            let Some(f) = self.file.as_ref() else {
                return Ok(Vec::new());
            };
            let (recs, at) = scan(f, self.offset, max_bytes)?;
            self.offset = at;
            if !recs.is_empty() {
                return Ok(recs);
            }
            // At the end of this file: move on if the current log is another file.
            let ours = f.metadata()?.ino();
            let current = match std::fs::metadata(&self.path) {
                Ok(m) => m.ino(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            if current == ours {
                return Ok(Vec::new());
            }
            self.file = Self::open(&self.path)?;
            self.offset = 0;
        }
    }
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

    fn all(r: &mut LogReader) -> Vec<Record> {
        let mut out = Vec::new();
        loop {
            let recs = r.next(10).unwrap();
            if recs.is_empty() {
                return out;
            }
            out.extend(recs);
        }
    }

    #[test]
    fn records_round_trip_and_partial_tails_wait() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.log");
        let mut w = LogWriter::create(&p, 0).unwrap();
        w.append(Output::Stdout, 1, b"hello\n").unwrap();
        let end = w.append(Output::Stderr, 2, &[0, 255, 10]).unwrap().total;
        let f = File::open(&p).unwrap();
        let (recs, at) = scan(&f, 0, u64::MAX).unwrap();
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
        let (recs, at2) = scan(&f, at, u64::MAX).unwrap();
        assert!(recs.is_empty());
        assert_eq!(at2, at);
        // Reads come in bounded batches.
        let (recs, _) = scan(&f, 0, 1).unwrap();
        assert_eq!(recs.len(), 1);
    }

    #[test]
    fn a_torn_tail_is_cut_when_writing_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.log");
        let mut w = LogWriter::create(&p, 0).unwrap();
        w.append(Output::Stdout, 1, b"before\n").unwrap();
        drop(w);
        // A crash in the middle of a record.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(&[1, 9, 9, 9])
            .unwrap();
        let mut w = LogWriter::create(&p, 0).unwrap();
        w.append(Output::Stdout, 2, b"after\n").unwrap();
        let got: Vec<_> = all(&mut LogReader::new(&p))
            .into_iter()
            .map(|r| r.data)
            .collect();
        assert_eq!(got, [b"before\n".to_vec(), b"after\n".to_vec()]);
    }

    #[test]
    fn a_capped_log_keeps_the_newest_output_and_followers_cross_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.log");
        let mut w = LogWriter::create(&p, 100).unwrap();
        let mut follower = LogReader::new(&p);
        let mut followed = Vec::new();
        let mut rotations = 0;
        for i in 0..50u8 {
            // 13 + 20 bytes a record: 3 fit in a file.
            let a = w.append(Output::Stdout, i as u64, &[i; 20]).unwrap();
            rotations += a.rotated as u32;
            if i % 2 == 0 {
                followed.extend(all(&mut follower));
            }
        }
        followed.extend(all(&mut follower));
        assert_eq!(rotations, 16);
        assert!(std::fs::metadata(&p).unwrap().len() <= 100);
        assert!(std::fs::metadata(rotated_path(&p)).unwrap().len() <= 100);
        // The follower saw everything, in order.
        let seen: Vec<u8> = followed.iter().map(|r| r.data[0]).collect();
        assert_eq!(seen, (0..50).collect::<Vec<u8>>());
        // A new reader sees the newest output only: the last two files' records.
        let kept: Vec<u8> = all(&mut LogReader::new(&p))
            .iter()
            .map(|r| r.data[0])
            .collect();
        assert_eq!(kept, (45..50).collect::<Vec<u8>>());
    }
}
