//! Frames: `len: u32 LE` (kind byte + payload), `kind: u8`, payload. Bounded: a frame
//! longer than [`MAX_FRAME_LEN`] is an error, so a broken or hostile peer cannot make the
//! reader allocate without limit.

use std::io::{self, Read, Write};

use crate::message::Message;

/// Largest frame (kind byte + payload).
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Largest output chunk the agent puts in one frame.
pub const MAX_OUTPUT_CHUNK: usize = 64 * 1024;

const KIND_CONTROL: u8 = 0;
const KIND_STDOUT: u8 = 1;
const KIND_STDERR: u8 = 2;
const KIND_STDIN: u8 = 3;
const KIND_STDIN_EOF: u8 = 4;

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Control(Message),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Stdin(Vec<u8>),
    StdinEof,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes is over the {MAX_FRAME_LEN} byte limit")]
    TooLong(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("bad control message: {0}")]
    BadMessage(#[from] serde_json::Error),
}

impl Frame {
    /// The frame as bytes on the wire.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let (kind, payload): (u8, std::borrow::Cow<[u8]>) = match self {
            Frame::Control(m) => (KIND_CONTROL, serde_json::to_vec(m)?.into()),
            Frame::Stdout(b) => (KIND_STDOUT, b.as_slice().into()),
            Frame::Stderr(b) => (KIND_STDERR, b.as_slice().into()),
            Frame::Stdin(b) => (KIND_STDIN, b.as_slice().into()),
            Frame::StdinEof => (KIND_STDIN_EOF, (&[][..]).into()),
        };
        let len = payload.len() + 1;
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLong(len));
        }
        let mut out = Vec::with_capacity(4 + len);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.push(kind);
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Decodes one frame from the front of `buf`: Ok(None) when `buf` holds only part of
    /// a frame, else the frame and how many bytes it took.
    pub fn decode_from(buf: &[u8]) -> Result<Option<(Self, usize)>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLong(len));
        }
        if buf.len() < 4 + len {
            return Ok(None);
        }
        let frame = Self::decode(buf[4], buf[5..4 + len].to_vec())?;
        Ok(Some((frame, 4 + len)))
    }

    fn decode(kind: u8, payload: Vec<u8>) -> Result<Self, FrameError> {
        Ok(match kind {
            KIND_CONTROL => Frame::Control(serde_json::from_slice(&payload)?),
            KIND_STDOUT => Frame::Stdout(payload),
            KIND_STDERR => Frame::Stderr(payload),
            KIND_STDIN => Frame::Stdin(payload),
            KIND_STDIN_EOF => Frame::StdinEof,
            k => return Err(FrameError::UnknownKind(k)),
        })
    }
}

pub struct FrameWriter<W: Write> {
    inner: W,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner }
    }

    pub fn send(&mut self, frame: &Frame) -> Result<(), FrameError> {
        self.inner.write_all(&frame.encode()?)?;
        self.inner.flush()?;
        Ok(())
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

pub struct FrameReader<R: Read> {
    inner: R,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner }
    }

    /// The next frame, or None on a clean end of stream between frames.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.inner.read(&mut len[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLong(len));
        }
        let mut buf = vec![0u8; len];
        self.inner.read_exact(&mut buf)?;
        let kind = buf[0];
        buf.remove(0);
        Frame::decode(kind, buf).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_binary_stays_raw() {
        let bin: Vec<u8> = (0..=255).collect();
        let frames = vec![
            Frame::Stdout(bin.clone()),
            Frame::Stderr(b"err\n".to_vec()),
            Frame::Stdin(vec![]),
            Frame::StdinEof,
            Frame::Control(Message::Signal { signal: 15 }),
        ];
        let mut wire = Vec::new();
        let mut w = FrameWriter::new(&mut wire);
        for f in &frames {
            w.send(f).unwrap();
        }
        // Raw output costs 5 bytes of framing, no escaping.
        assert_eq!(&wire[..5], &[1, 1, 0, 0, KIND_STDOUT]);
        assert_eq!(&wire[5..5 + 256], bin.as_slice());
        let mut r = FrameReader::new(&wire[..]);
        for f in &frames {
            assert_eq!(r.next_frame().unwrap().as_ref(), Some(f));
        }
        assert!(r.next_frame().unwrap().is_none());
    }

    #[test]
    fn decode_from_a_buffer_in_pieces() {
        let mut wire = Frame::Stdout(b"abc".to_vec()).encode().unwrap();
        wire.extend(Frame::StdinEof.encode().unwrap());
        for cut in 0..8 {
            assert!(Frame::decode_from(&wire[..cut]).unwrap().is_none(), "{cut}");
        }
        let (f, n) = Frame::decode_from(&wire).unwrap().unwrap();
        assert_eq!((f, n), (Frame::Stdout(b"abc".to_vec()), 8));
        let (f, _) = Frame::decode_from(&wire[n..]).unwrap().unwrap();
        assert_eq!(f, Frame::StdinEof);
    }

    #[test]
    fn oversized_truncated_and_unknown_frames_are_errors() {
        let huge = ((MAX_FRAME_LEN + 1) as u32).to_le_bytes();
        assert!(matches!(
            FrameReader::new(&huge[..]).next_frame(),
            Err(FrameError::TooLong(_))
        ));
        assert!(FrameReader::new(&[5u8, 0, 0, 0, 1, 2][..])
            .next_frame()
            .is_err());
        assert!(matches!(
            FrameReader::new(&[1u8, 0, 0, 0, 9][..]).next_frame(),
            Err(FrameError::UnknownKind(9))
        ));
        assert!(matches!(
            FrameReader::new(&[3u8, 0, 0, 0, 0, b'{', b'x'][..]).next_frame(),
            Err(FrameError::BadMessage(_))
        ));
        assert!(matches!(
            Frame::Stdout(vec![0; MAX_FRAME_LEN]).encode(),
            Err(FrameError::TooLong(_))
        ));
    }
}
