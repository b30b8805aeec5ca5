//! [`ReplayBuffer`]: owned copies of unacknowledged frames, for resume.
//!
//! Sequenced frames stay the sender's responsibility until the peer
//! acknowledges them. A transport that keeps its registered send buffers
//! until [`Event::Acked`](crate::Event::Acked) needs nothing from here; one
//! that recycles send buffers at once copies each sequenced frame into a
//! `ReplayBuffer` and, on [`Event::Connected`](crate::Event::Connected) after
//! a reconnect, resends [`ReplayBuffer::resend_after`] the peer's position.
//! Frames are resent byte-identical: the receiver drops the ones it already
//! has by sequence number.

use std::collections::VecDeque;

use crate::error::ProtoError;

/// Copies of sent, not yet acknowledged frames, in sequence order.
///
/// Memory: at most `limit` bytes of frames plus a small per-frame record.
#[derive(Debug)]
pub struct ReplayBuffer {
    frames: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
    limit: usize,
}

impl ReplayBuffer {
    /// An empty buffer holding at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        ReplayBuffer {
            frames: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    /// Retains a copy of frame `seq`. Sequence numbers must increase. When
    /// the buffer is full the frame is not retained and the caller should
    /// stop sending until acknowledgements free space (back-pressure).
    pub fn push(&mut self, seq: u64, frame: &[u8]) -> Result<(), ProtoError> {
        if self.bytes + frame.len() > self.limit {
            return Err(ProtoError::ReplayFull { limit: self.limit });
        }
        if self.frames.back().is_some_and(|(last, _)| *last >= seq) {
            return Err(ProtoError::InvalidState {
                state: "replay buffer",
                operation: "pushing a sequence number out of order",
            });
        }
        self.bytes += frame.len();
        self.frames.push_back((seq, frame.to_vec()));
        Ok(())
    }

    /// Drops every frame up to and including `seq`.
    pub fn ack(&mut self, seq: u64) {
        while let Some((first, frame)) = self.frames.front() {
            if *first > seq {
                break;
            }
            self.bytes -= frame.len();
            self.frames.pop_front();
        }
    }

    /// Frames with a sequence number above `seq`, in order.
    pub fn resend_after(&self, seq: u64) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.frames
            .iter()
            .filter(move |(s, _)| *s > seq)
            .map(|(s, f)| (*s, f.as_slice()))
    }

    /// Number of retained frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes retained.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_ack_and_resend() {
        let mut replay = ReplayBuffer::new(10);
        replay.push(1, b"aaaa").unwrap();
        replay.push(2, b"bbbb").unwrap();
        assert!(matches!(
            replay.push(3, b"ccc"),
            Err(ProtoError::ReplayFull { limit: 10 })
        ));
        assert!(replay.push(2, b"x").is_err());
        assert_eq!(
            replay.resend_after(1).map(|(s, _)| s).collect::<Vec<_>>(),
            [2]
        );
        replay.ack(1);
        assert_eq!((replay.len(), replay.bytes()), (1, 4));
        replay.push(3, b"ccc").unwrap();
        replay.ack(9);
        assert!(replay.is_empty());
    }
}
