//! Frames: `len: u32 LE` (kind byte + payload), `kind: u8`, payload. Bounded: a frame
//! longer than [`MAX_FRAME_LEN`] is an error, so a broken or hostile peer cannot make the
//! reader allocate without limit.

use std::io;

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
const KIND_UPPER: u8 = 5;

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Control(Message),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Stdin(Vec<u8>),
    StdinEof,
    /// A piece of the upper layer's tar (see [`crate::RunSpec::export_upper`]).
    Upper(Vec<u8>),
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
    #[error("the peer closed the connection{}", if *.mid_frame { " in the middle of a frame" } else { "" })]
    Closed { mid_frame: bool },
    #[error("no frame before the deadline")]
    TimedOut,
}

impl Frame {
    /// A short name of the frame's kind (and control message type), for logs and errors
    /// that must not quote a peer's payload.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Control(m) => m.type_name(),
            Frame::Stdout(_) => "stdout",
            Frame::Stderr(_) => "stderr",
            Frame::Stdin(_) => "stdin",
            Frame::StdinEof => "stdin_eof",
            Frame::Upper(_) => "upper",
        }
    }

    /// The frame as bytes on the wire.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let (kind, payload): (u8, std::borrow::Cow<[u8]>) = match self {
            Frame::Control(m) => (KIND_CONTROL, serde_json::to_vec(m)?.into()),
            Frame::Stdout(b) => (KIND_STDOUT, b.as_slice().into()),
            Frame::Stderr(b) => (KIND_STDERR, b.as_slice().into()),
            Frame::Stdin(b) => (KIND_STDIN, b.as_slice().into()),
            Frame::StdinEof => (KIND_STDIN_EOF, (&[][..]).into()),
            Frame::Upper(b) => (KIND_UPPER, b.as_slice().into()),
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
            KIND_UPPER => Frame::Upper(payload),
            k => return Err(FrameError::UnknownKind(k)),
        })
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
        for f in &frames {
            wire.extend(f.encode().unwrap());
        }
        // Raw output costs 5 bytes of framing, no escaping.
        assert_eq!(&wire[..5], &[1, 1, 0, 0, KIND_STDOUT]);
        assert_eq!(&wire[5..5 + 256], bin.as_slice());
        let mut r = crate::FrameDecoder::default();
        r.push(&wire);
        for f in &frames {
            assert_eq!(r.next_frame().unwrap().as_ref(), Some(f));
        }
        assert!(r.next_frame().unwrap().is_none());
        assert_eq!(r.buffered(), 0);
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
            Frame::decode_from(&huge[..]),
            Err(FrameError::TooLong(_))
        ));
        assert!(Frame::decode_from(&[5u8, 0, 0, 0, 1, 2][..])
            .unwrap()
            .is_none());
        assert!(matches!(
            Frame::decode_from(&[1u8, 0, 0, 0, 9][..]),
            Err(FrameError::UnknownKind(9))
        ));
        assert!(matches!(
            Frame::decode_from(&[3u8, 0, 0, 0, 0, b'{', b'x'][..]),
            Err(FrameError::BadMessage(_))
        ));
        assert!(matches!(
            Frame::Stdout(vec![0; MAX_FRAME_LEN]).encode(),
            Err(FrameError::TooLong(_))
        ));
    }
}
