//! One framed connection, used by both ends: the agent on its vsock socket and the host on
//! the Unix socket the VMM hands it. Sending writes a whole frame; receiving decodes frames
//! as they complete, with an optional deadline, in time linear in the bytes received.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::frame::{Frame, FrameError, MAX_FRAME_LEN};

/// Bytes taken from the stream per read.
const READ_CHUNK: usize = 64 * 1024;

/// Incoming bytes turned into frames. Frames are taken from the front by moving an offset
/// and the consumed part is dropped only once it is large, so a flood of small frames
/// costs linear time; at most one partial frame (≤ [`MAX_FRAME_LEN`]) plus one read is
/// ever held.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start >= READ_CHUNK {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        match Frame::decode_from(&self.buf[self.start..])? {
            Some((f, n)) => {
                self.start += n;
                Ok(Some(f))
            }
            None => Ok(None),
        }
    }

    /// Bytes received and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether [`Self::next_frame`] would return without more bytes: a whole frame is
    /// buffered, or a header that is already known to be bad.
    pub fn has_frame(&self) -> bool {
        let b = &self.buf[self.start..];
        let Some(header) = b.first_chunk::<4>() else {
            return false;
        };
        let len = u32::from_le_bytes(*header) as usize;
        len == 0 || len > MAX_FRAME_LEN || b.len() >= 4 + len
    }
}

/// A stream that carries frames both ways.
#[derive(Debug)]
pub struct FramedConn<S> {
    stream: S,
    decoder: FrameDecoder,
}

impl<S: Read + Write + AsFd> FramedConn<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::default(),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Writes one whole frame.
    pub fn send(&mut self, frame: &Frame) -> Result<(), FrameError> {
        self.stream.write_all(&frame.encode()?)?;
        Ok(())
    }

    /// One read from the stream into the decoder (blocks until data or the end).
    pub fn fill(&mut self) -> Result<(), FrameError> {
        let mut b = [0u8; READ_CHUNK];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => {
                    return Err(FrameError::Closed {
                        mid_frame: self.decoder.buffered() > 0,
                    })
                }
                Ok(n) => {
                    self.decoder.push(&b[..n]);
                    debug_assert!(self.decoder.buffered() <= MAX_FRAME_LEN + 4 + READ_CHUNK);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next complete frame already received, if any.
    pub fn next_buffered(&mut self) -> Result<Option<Frame>, FrameError> {
        self.decoder.next_frame()
    }

    /// Whether a frame is waiting in the buffer: one that arrived in the same read as an
    /// earlier frame is not signalled by the stream again.
    pub fn has_buffered_frame(&self) -> bool {
        self.decoder.has_frame()
    }

    /// The next frame, waiting until `deadline` if one is given ([`FrameError::TimedOut`]
    /// after it). The peer closing is [`FrameError::Closed`].
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<Frame, FrameError> {
        loop {
            if let Some(f) = self.decoder.next_frame()? {
                return Ok(f);
            }
            if let Some(d) = deadline {
                if !self.wait_readable(d)? {
                    return Err(FrameError::TimedOut);
                }
            }
            self.fill()?;
        }
    }

    /// Waits until the stream is readable (true) or `deadline` passes (false).
    fn wait_readable(&self, deadline: Instant) -> Result<bool, FrameError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            // Waits are sliced so that a far deadline fits poll's millisecond timeout.
            let ms = left.as_millis().clamp(1, 60_000) as u16;
            let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => {}
                Ok(_) => return Ok(true),
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    #[test]
    fn frames_cross_a_socket_and_the_end_is_reported() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (FramedConn::new(a), FramedConn::new(b));
        a.send(&Frame::Stdout(b"x".to_vec())).unwrap();
        a.send(&Frame::Control(Message::Signal { signal: 2 }))
            .unwrap();
        assert_eq!(b.recv(None).unwrap(), Frame::Stdout(b"x".to_vec()));
        assert_eq!(
            b.recv(Some(Instant::now() + Duration::from_secs(5)))
                .unwrap(),
            Frame::Control(Message::Signal { signal: 2 })
        );
        drop(a);
        assert!(matches!(
            b.recv(None),
            Err(FrameError::Closed { mid_frame: false })
        ));
    }

    #[test]
    fn a_deadline_passes_without_a_frame() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut b = FramedConn::new(b);
        let t = Instant::now();
        let r = b.recv(Some(t + Duration::from_millis(50)));
        assert!(matches!(r, Err(FrameError::TimedOut)), "{r:?}");
        assert!(t.elapsed() >= Duration::from_millis(50));
        // Half a frame, then the peer goes: that is not a clean end.
        (&a).write_all(&[9, 0, 0, 0, 1]).unwrap();
        drop(a);
        assert!(matches!(
            b.recv(None),
            Err(FrameError::Closed { mid_frame: true })
        ));
    }

    #[test]
    fn has_frame_tells_a_whole_or_bad_frame_from_a_partial_one() {
        let wire = Frame::Stdin(b"from-stdin".to_vec()).encode().unwrap();
        let mut d = FrameDecoder::default();
        for b in &wire[..wire.len() - 1] {
            d.push(std::slice::from_ref(b));
            assert!(!d.has_frame());
        }
        d.push(&wire[wire.len() - 1..]);
        assert!(d.has_frame());
        assert!(d.next_frame().unwrap().is_some());
        assert!(!d.has_frame());
        d.push(&0u32.to_le_bytes());
        assert!(d.has_frame(), "an empty frame is an error to report now");
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn a_flood_of_small_frames_decodes_in_linear_time_with_a_bounded_buffer() {
        let one = Frame::Stdout(vec![7]).encode().unwrap();
        let mut d = FrameDecoder::default();
        let mut n = 0;
        // 2 M frames in 64 KiB pushes: quadratic draining would take minutes.
        let chunk: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * 10_000)
            .collect();
        for _ in 0..200 {
            d.push(&chunk);
            while d.next_frame().unwrap().is_some() {
                n += 1;
            }
            assert!(d.buf.len() <= 2 * chunk.len() + READ_CHUNK);
        }
        assert_eq!(n, 2_000_000);
    }
}
