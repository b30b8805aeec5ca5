//! Wire modes shared by the echo servers and the load generator.
//!
//! * `raw`: bytes are echoed back as they arrive, with no framing.
//! * `lenprefix`: each message is a 4-byte little-endian payload length
//!   followed by the payload, and the server echoes whole messages.
//!
//! [`FrameBuf`] is the receive buffer both peer servers use in `lenprefix`
//! mode, and [`Pattern`] generates the load generator's verifiable payloads.

use std::fmt;
use std::str::FromStr;

/// Size of the length prefix of a `lenprefix` message.
pub const LEN_PREFIX: usize = 4;

/// Largest payload a `lenprefix` peer accepts (16 MiB); a larger announced
/// length is a protocol error and closes the connection.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// How messages are laid out on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// Unframed bytes, echoed back as-is.
    Raw,
    /// 4-byte little-endian length, then the payload; echoed back whole.
    LenPrefix,
}

impl Wire {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Wire::Raw => "raw",
            Wire::LenPrefix => "lenprefix",
        }
    }

    /// Bytes on the wire for one message carrying `payload` bytes.
    pub fn frame_len(self, payload: usize) -> usize {
        match self {
            Wire::Raw => payload,
            Wire::LenPrefix => LEN_PREFIX + payload,
        }
    }
}

impl fmt::Display for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Wire {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(Wire::Raw),
            "lenprefix" => Ok(Wire::LenPrefix),
            _ => Err("expected `raw` or `lenprefix`".to_owned()),
        }
    }
}

/// A `lenprefix` header announced a payload longer than [`MAX_PAYLOAD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTooLarge {
    /// The announced payload length.
    pub len: usize,
}

impl fmt::Display for FrameTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frame announces {} payload bytes, more than the {} allowed",
            self.len, MAX_PAYLOAD
        )
    }
}

impl std::error::Error for FrameTooLarge {}

impl From<FrameTooLarge> for std::io::Error {
    fn from(e: FrameTooLarge) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// Reads the payload length announced by the header at the start of `buf`,
/// if `buf` holds a whole header.
pub fn announced_len(buf: &[u8]) -> Option<usize> {
    match buf {
        [a, b, c, d, ..] => Some(u32::from_le_bytes([*a, *b, *c, *d]) as usize),
        _ => None,
    }
}

/// Length of the longest prefix of `buf` made only of complete `lenprefix`
/// messages.
pub fn complete_frames_len(buf: &[u8]) -> Result<usize, FrameTooLarge> {
    let mut pos = 0;
    while let Some(len) = announced_len(&buf[pos..]) {
        if len > MAX_PAYLOAD {
            return Err(FrameTooLarge { len });
        }
        let end = pos + LEN_PREFIX + len;
        if end > buf.len() {
            break;
        }
        pos = end;
    }
    Ok(pos)
}

/// Receive buffer of a `lenprefix` echo connection: bytes are read into its
/// free tail, complete messages are taken from its head, and an incomplete
/// message is kept (and the buffer grown if that message needs it).
#[derive(Debug)]
pub struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameBuf {
    /// A buffer of `capacity` bytes (it grows for larger messages).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity.max(LEN_PREFIX)],
            start: 0,
            end: 0,
        }
    }

    /// Free space to read into; never empty. Moves a kept partial message to
    /// the front, or grows the buffer when that message does not fit. Call
    /// [`complete`](Self::complete) after every read: it rejects oversized
    /// headers, which bounds the growth.
    pub fn read_space(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                // The header was checked against `MAX_PAYLOAD` by `complete`.
                let want = announced_len(&self.buf[..self.end]).map_or(0, |len| LEN_PREFIX + len);
                self.buf.resize((self.buf.len() * 2).max(want), 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`read_space`](Self::read_space).
    pub fn filled(&mut self, n: usize) {
        assert!(self.end + n <= self.buf.len(), "filled past the read space");
        self.end += n;
    }

    /// All complete messages at the head of the buffer (possibly empty).
    pub fn complete(&self) -> Result<&[u8], FrameTooLarge> {
        let pending = &self.buf[self.start..self.end];
        let n = complete_frames_len(pending)?;
        Ok(&pending[..n])
    }

    /// Drops `n` bytes from the head, after they were echoed.
    pub fn consume(&mut self, n: usize) {
        assert!(self.start + n <= self.end, "consumed more than buffered");
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Bytes buffered and not yet consumed.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }
}

/// Span of start offsets into the pattern table.
const PATTERN_SPAN: usize = 4096;

/// Bytes of the per-message header inside the payload: connection id (u32 LE)
/// and sequence number (u64 LE), truncated for payloads shorter than this.
pub const PAYLOAD_HEADER: usize = 12;

/// Generator of verifiable payloads.
///
/// The payload of message `seq` on connection `conn` starts with `conn` and
/// `seq` and continues with a slice of a pseudo-random table whose start
/// depends on both, so an echo that is reordered, duplicated, truncated or
/// corrupted differs from what [`Pattern::write_frame`] predicts.
#[derive(Debug, Clone)]
pub struct Pattern {
    table: Vec<u8>,
    payload: usize,
    wire: Wire,
}

impl Pattern {
    /// A generator for `payload`-byte messages framed as `wire`.
    pub fn new(wire: Wire, payload: usize) -> Self {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let table = (0..PATTERN_SPAN + payload)
            .map(|_| {
                // xorshift64*
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect();
        Self {
            table,
            payload,
            wire,
        }
    }

    /// Bytes on the wire per message.
    pub fn frame_len(&self) -> usize {
        self.wire.frame_len(self.payload)
    }

    /// Appends the whole wire frame of message (`conn`, `seq`) to `out`.
    pub fn write_frame(&self, conn: u32, seq: u64, out: &mut Vec<u8>) {
        if self.wire == Wire::LenPrefix {
            out.extend_from_slice(&(self.payload as u32).to_le_bytes());
        }
        let mut header = [0u8; PAYLOAD_HEADER];
        header[..4].copy_from_slice(&conn.to_le_bytes());
        header[4..].copy_from_slice(&seq.to_le_bytes());
        let head = self.payload.min(PAYLOAD_HEADER);
        out.extend_from_slice(&header[..head]);
        let rest = self.payload - head;
        let off =
            (seq.wrapping_mul(131) ^ u64::from(conn).wrapping_mul(7919)) as usize % PATTERN_SPAN;
        out.extend_from_slice(&self.table[off..off + rest]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn complete_prefix() {
        let mut buf = frame(b"hello");
        buf.extend(frame(b""));
        let whole = buf.len();
        buf.extend(&frame(b"partial")[..6]);
        assert_eq!(complete_frames_len(&buf).unwrap(), whole);
        assert_eq!(complete_frames_len(&buf[..3]).unwrap(), 0);
        let huge = ((MAX_PAYLOAD + 1) as u32).to_le_bytes();
        assert!(complete_frames_len(&huge).is_err());
    }

    #[test]
    fn framebuf_keeps_partial_and_grows() {
        let mut fb = FrameBuf::with_capacity(8);
        let big = frame(&[7u8; 20]);
        let mut fed = 0;
        let mut echoed = Vec::new();
        while fed < big.len() {
            let space = fb.read_space();
            let n = space.len().min(big.len() - fed).min(5);
            space[..n].copy_from_slice(&big[fed..fed + n]);
            fed += n;
            fb.filled(n);
            let done = fb.complete().unwrap().to_vec();
            fb.consume(done.len());
            echoed.extend(done);
        }
        assert_eq!(echoed, big);
        assert_eq!(fb.pending(), 0);
    }

    #[test]
    fn patterns_differ_per_message() {
        for wire in [Wire::Raw, Wire::LenPrefix] {
            for size in [0, 1, 12, 13, 1024] {
                let p = Pattern::new(wire, size);
                let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
                p.write_frame(3, 10, &mut a);
                p.write_frame(3, 11, &mut b);
                p.write_frame(4, 10, &mut c);
                assert_eq!(a.len(), p.frame_len());
                if size > 4 {
                    assert_ne!(a, b);
                    assert_ne!(a, c);
                }
                let mut again = Vec::new();
                p.write_frame(3, 10, &mut again);
                assert_eq!(a, again);
            }
        }
    }
}
