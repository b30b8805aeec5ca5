//! Length-prefixed echo framing: a 4-byte little-endian length, then that
//! many payload bytes.

use std::io;

/// Size of the length header.
pub const HEADER: usize = 4;

/// Finds whole messages in a byte stream that arrives in arbitrary chunks
/// and appends each complete message (header included) to an output buffer.
pub struct Reassembler {
    max_message: usize,
    /// Bytes of an incomplete message carried over from earlier chunks.
    partial: Vec<u8>,
}

impl Reassembler {
    /// A reassembler refusing messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> Reassembler {
        Reassembler {
            max_message,
            partial: Vec::new(),
        }
    }

    /// Bytes of an incomplete message held back.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Consumes `chunk`; appends every message it completes to `out`.
    ///
    /// A length above the maximum is an `InvalidData` error (the connection
    /// should be closed; nothing is allocated for it).
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        // Finish a message started in an earlier chunk.
        if !self.partial.is_empty() {
            if self.partial.len() < HEADER {
                let take = (HEADER - self.partial.len()).min(chunk.len());
                self.partial.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                if self.partial.len() < HEADER {
                    return Ok(());
                }
            }
            let len = self.check_len(&self.partial[..HEADER])?;
            let need = HEADER + len - self.partial.len();
            let take = need.min(chunk.len());
            self.partial.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if take < need {
                return Ok(());
            }
            out.extend_from_slice(&self.partial);
            self.partial.clear();
        }
        // Whole messages inside this chunk are copied in one go.
        let (pos, _) = self.complete_prefix(chunk)?;
        out.extend_from_slice(&chunk[..pos]);
        self.partial.extend_from_slice(&chunk[pos..]);
        Ok(())
    }

    /// With nothing pending, the length of the longest prefix of `chunk` made
    /// of whole messages, and how many messages that is: those bytes can be
    /// used in place. Checks every length it reads.
    pub fn complete_prefix(&self, chunk: &[u8]) -> io::Result<(usize, u64)> {
        debug_assert_eq!(self.pending(), 0);
        let (mut pos, mut count) = (0, 0);
        while chunk.len() - pos >= HEADER {
            let len = self.check_len(&chunk[pos..pos + HEADER])?;
            if chunk.len() - pos < HEADER + len {
                break;
            }
            pos += HEADER + len;
            count += 1;
        }
        Ok((pos, count))
    }

    fn check_len(&self, header: &[u8]) -> io::Result<usize> {
        check_len(self.max_message, header)
    }
}

/// Finds where whole messages end in a byte stream that arrives in arbitrary
/// chunks, without keeping the bytes: for a server that sends whole messages
/// straight from the buffers they arrived in. Only a length header split
/// across chunks is kept (at most three bytes).
pub struct Boundaries {
    max_message: usize,
    /// Header bytes of the current message seen so far (while `body == 0`).
    header: [u8; HEADER],
    have: usize,
    /// Body bytes of the current message still to come.
    body: usize,
}

impl Boundaries {
    /// A scanner refusing messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> Boundaries {
        Boundaries {
            max_message,
            header: [0; HEADER],
            have: 0,
            body: 0,
        }
    }

    /// Whether the bytes scanned so far end at a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.body == 0
    }

    /// Scans the next `chunk` of the stream: the offset just past the last
    /// message that ends inside it (`None` when none does) and how many
    /// messages end inside it.
    ///
    /// A length above the maximum is an `InvalidData` error (the connection
    /// should be closed); the scanner must not be used after one.
    pub fn scan(&mut self, chunk: &[u8]) -> io::Result<(Option<usize>, u64)> {
        let (mut pos, mut last, mut count) = (0, None, 0);
        while pos < chunk.len() {
            if self.body > 0 {
                let take = self.body.min(chunk.len() - pos);
                pos += take;
                self.body -= take;
                if self.body == 0 {
                    last = Some(pos);
                    count += 1;
                }
                continue;
            }
            if self.have == 0 && chunk.len() - pos >= HEADER {
                // The common case: a whole header in this chunk.
                let len = check_len(self.max_message, &chunk[pos..pos + HEADER])?;
                pos += HEADER;
                self.body = len;
            } else {
                let take = (HEADER - self.have).min(chunk.len() - pos);
                self.header[self.have..self.have + take].copy_from_slice(&chunk[pos..pos + take]);
                self.have += take;
                pos += take;
                if self.have < HEADER {
                    break;
                }
                self.have = 0;
                self.body = check_len(self.max_message, &self.header)?;
            }
            if self.body == 0 {
                last = Some(pos);
                count += 1;
            }
        }
        Ok((last, count))
    }
}

fn check_len(max_message: usize, header: &[u8]) -> io::Result<usize> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > max_message {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("peer announced a {len}-byte message; the limit is {max_message} bytes"),
        ));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn any_chunking_yields_the_same_messages() {
        let mut stream = Vec::new();
        for i in 0..50u32 {
            stream.extend(msg(&vec![i as u8; (i * 37 % 300) as usize]));
        }
        for chunk_size in [1, 2, 3, 4, 5, 7, 64, 1000, stream.len()] {
            let mut r = Reassembler::new(1 << 20);
            let mut out = Vec::new();
            for c in stream.chunks(chunk_size) {
                r.feed(c, &mut out).unwrap();
            }
            assert_eq!(out, stream, "chunk size {chunk_size}");
            assert_eq!(r.pending(), 0);
        }
    }

    #[test]
    fn partial_message_is_held_back() {
        let m = msg(b"hello");
        let mut r = Reassembler::new(100);
        let mut out = Vec::new();
        r.feed(&m[..6], &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(r.pending(), 6);
        r.feed(&m[6..], &mut out).unwrap();
        assert_eq!(out, m);
    }

    #[test]
    fn complete_prefix_stops_at_the_first_partial_message() {
        let mut s = msg(b"ab");
        s.extend(msg(b"cde"));
        let whole = s.len();
        s.extend(&msg(b"fghij")[..5]);
        let r = Reassembler::new(100);
        assert_eq!(r.complete_prefix(&s).unwrap(), (whole, 2));
        assert_eq!(r.complete_prefix(&s[..3]).unwrap(), (0, 0));
    }

    #[test]
    fn oversized_length_is_an_error() {
        let mut r = Reassembler::new(10);
        let mut out = Vec::new();
        let err = r.feed(&msg(&[0; 11]), &mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut r = Reassembler::new(10);
        r.feed(&[11, 0], &mut out).unwrap();
        assert!(r.feed(&[0, 0, 1], &mut out).is_err());
    }

    /// Every message end the scanner reports, as offsets into the stream.
    fn ends(stream: &[u8], chunk_size: usize, max: usize) -> (Vec<usize>, u64) {
        let mut b = Boundaries::new(max);
        let (mut ends, mut total, mut base) = (Vec::new(), 0, 0);
        for c in stream.chunks(chunk_size) {
            let (last, n) = b.scan(c).unwrap();
            if let Some(e) = last {
                ends.push(base + e);
            }
            total += n;
            base += c.len();
        }
        (ends, total)
    }

    #[test]
    fn boundaries_agree_with_the_reassembler_for_any_chunking() {
        let mut stream = Vec::new();
        let mut true_ends = Vec::new();
        for i in 0..60u32 {
            // Includes empty messages (i * 37 % 300 == 0 for i == 0).
            stream.extend(msg(&vec![i as u8; (i * 37 % 300) as usize]));
            true_ends.push(stream.len());
        }
        for chunk_size in [1, 2, 3, 4, 5, 7, 64, 1000, stream.len()] {
            let (ends, total) = ends(&stream, chunk_size, 1 << 20);
            assert_eq!(total, 60, "chunk size {chunk_size}");
            // Each reported end is the last message end inside its chunk.
            let mut expected = Vec::new();
            let mut base = 0;
            for c in stream.chunks(chunk_size) {
                if let Some(&e) = true_ends
                    .iter()
                    .rev()
                    .find(|&&e| e > base && e <= base + c.len())
                {
                    expected.push(e);
                }
                base += c.len();
            }
            assert_eq!(ends, expected, "chunk size {chunk_size}");
        }
    }

    #[test]
    fn boundaries_report_nothing_inside_a_message() {
        let m = msg(&[7; 100]);
        let mut b = Boundaries::new(1000);
        assert_eq!(b.scan(&m[..2]).unwrap(), (None, 0));
        assert!(!b.at_boundary());
        assert_eq!(b.scan(&m[2..50]).unwrap(), (None, 0));
        assert_eq!(b.scan(&m[50..]).unwrap(), (Some(54), 1));
        assert!(b.at_boundary());
    }

    #[test]
    fn boundaries_refuse_an_oversized_length_even_split() {
        let mut b = Boundaries::new(10);
        assert_eq!(
            b.scan(&msg(&[0; 11])).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut b = Boundaries::new(10);
        b.scan(&[11, 0]).unwrap();
        assert!(b.scan(&[0, 0, 1]).is_err());
    }
}
