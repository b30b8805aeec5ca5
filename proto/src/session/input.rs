//! Acting on decoded frames: the receive half of the session.

use crate::bulk::{split_body, BulkIn, Dests};
use crate::control::{parse_close, parse_close_ack, CloseReason};
use crate::decoder::{BulkPiece, Frame};
use crate::error::ProtoError;
use crate::header::{FrameHeader, FrameKind};
use crate::hello::{check, Hello};
use crate::time::Instant;

use super::config::{capabilities, Role};
use super::event::{BulkTarget, Event, PeerInfo, Received, SessionState};
use super::{Control, Core};

impl<B: AsMut<[u8]>> Core<B> {
    pub(super) fn on_frame<'a>(
        &mut self,
        now: Instant,
        frame: Frame<'a>,
        trusted: bool,
    ) -> Result<Option<Received<'a>>, ProtoError> {
        let kind = frame.kind();
        if !self.hello_received {
            if kind != FrameKind::Hello {
                return Err(ProtoError::ExpectedHello(kind.name()));
            }
            let hello = Hello::parse(frame.payload())?;
            self.on_hello(hello)?;
            return Ok(None);
        }
        match kind {
            FrameKind::Hello => Err(ProtoError::Violation("second hello on one connection")),
            FrameKind::Message | FrameKind::Request | FrameKind::Reply => {
                self.on_message(now, frame, trusted)
            }
            FrameKind::Ack => self.on_ack(frame.header().seq).map(|()| None),
            FrameKind::Heartbeat => Ok(None),
            FrameKind::Close => {
                let (reason, last_seq) = parse_close(frame.payload())?;
                self.on_close(reason, last_seq).map(|()| None)
            }
            FrameKind::CloseAck => {
                let rx = parse_close_ack(frame.payload())?;
                self.on_close_ack(rx).map(|()| None)
            }
            FrameKind::Bulk => Err(ProtoError::Violation("bulk frame outside the bulk path")),
        }
    }

    fn on_hello(&mut self, hello: Hello) -> Result<(), ProtoError> {
        check(&self.schema, self.config.required_capabilities, &hello)
            .map_err(ProtoError::Incompatible)?;
        if hello.resume != self.resuming {
            return Err(ProtoError::Resume(if self.resuming {
                "the peer no longer holds the session"
            } else {
                "the peer asks to resume a session this side does not hold"
            }));
        }
        if self.resuming {
            if hello.session_id != self.session_id {
                return Err(ProtoError::Resume("the peer's session id differs"));
            }
            // The peer can only have received what we sent, and we can only
            // resend what it has not acknowledged.
            if hello.rx_seq < self.tx_acked || hello.rx_seq >= self.tx_next {
                return Err(ProtoError::Resume(
                    "the peer's position is outside the unacknowledged window",
                ));
            }
        } else {
            if hello.rx_seq != 0 {
                return Err(ProtoError::Malformed {
                    what: "hello",
                    detail: "fresh session with a non-zero position",
                });
            }
            match self.role {
                Role::Server => {
                    if hello.session_id == 0 {
                        return Err(ProtoError::Malformed {
                            what: "hello",
                            detail: "client sent session id 0",
                        });
                    }
                    self.session_id = hello.session_id;
                }
                Role::Client => {}
            }
        }
        self.ack_up_to(hello.rx_seq)?;
        self.peer = Some(PeerInfo {
            node_id: hello.node_id,
            capabilities: hello.capabilities,
            max_payload: hello.max_payload,
        });
        self.hello_received = true;
        self.handshake_deadline = None;
        if self.state == SessionState::Handshaking {
            self.state = SessionState::Established;
        }
        self.established_once = true;
        self.events.push_back(Event::Connected {
            peer: PeerInfo {
                node_id: hello.node_id,
                capabilities: hello.capabilities,
                max_payload: hello.max_payload,
            },
            resumed: self.resuming,
            resend_after: hello.rx_seq,
        });
        Ok(())
    }

    /// Checks a sequenced frame's number. `Ok(false)`: a duplicate already
    /// delivered before a cut; drop it.
    fn check_seq(&self, seq: u64) -> Result<bool, ProtoError> {
        if seq <= self.rx_last {
            return Ok(false);
        }
        if seq != self.rx_last + 1 {
            return Err(ProtoError::SequenceGap {
                expected: self.rx_last + 1,
                found: seq,
            });
        }
        if let Some(last) = self.peer_close {
            if seq > last {
                return Err(ProtoError::Violation("data after the peer's close"));
            }
        }
        Ok(true)
    }

    fn on_message<'a>(
        &mut self,
        now: Instant,
        frame: Frame<'a>,
        trusted: bool,
    ) -> Result<Option<Received<'a>>, ProtoError> {
        let header = *frame.header();
        if !self.check_seq(header.seq)? {
            return Ok(None);
        }
        if !matches!(self.bulk_in, BulkIn::Idle) {
            return Err(ProtoError::Violation("message while bulk segments are due"));
        }
        let (bulk, archive) = split_body(&header, frame.payload())?;
        if let Some(sizes) = &bulk {
            if self.config.capabilities & capabilities::BULK == 0 {
                return Err(ProtoError::Violation(
                    "bulk sent to a peer without bulk support",
                ));
            }
            if sizes.len() > self.config.max_bulk_segments as usize {
                return Err(ProtoError::Violation("too many bulk segments"));
            }
            if let Some(big) = sizes.iter().find(|&s| s > self.config.max_bulk_segment) {
                return Err(ProtoError::FrameTooLarge {
                    announced: u64::from(big),
                    limit: u64::from(self.config.max_bulk_segment),
                });
            }
        }
        let mut deliver = true;
        match header.kind {
            FrameKind::Request if header.correlation == 0 => {
                return Err(ProtoError::Violation("request without a correlation id"));
            }
            FrameKind::Reply if self.calls.remove(&header.correlation).is_none() => {
                if header.correlation == 0 || header.correlation >= self.next_call {
                    return Err(ProtoError::Violation("reply to a call never made"));
                }
                // A late reply to a call that timed out.
                deliver = false;
            }
            _ => {}
        }
        // The frame is well formed and in sequence: from here on it counts as
        // received whatever its archive holds, so that a corrupt archive costs
        // that one message, not the connection.
        self.rx_last = header.seq;
        let validated = if trusted {
            self.schema.assume_valid(header.type_id)
        } else {
            self.schema.validate(header.type_id, archive)
        };
        if validated.is_err() {
            deliver = false;
        }
        if let Some(sizes) = &bulk {
            self.bulk_in = if deliver {
                BulkIn::Offered {
                    msg_seq: header.seq,
                    sizes: sizes.iter().collect(),
                }
            } else {
                BulkIn::Discarding {
                    msg_seq: header.seq,
                    sizes: sizes.iter().collect(),
                    next: 0,
                }
            };
        }
        self.note_received(now);
        let validated = validated?;
        Ok(deliver.then_some(Received {
            header,
            archive,
            bulk,
            validated,
        }))
    }

    /// Starts a bulk segment frame: checks its sequence number and that it is
    /// the segment the transfer expects, and says where its bytes go.
    pub(super) fn bulk_start(&mut self, header: &FrameHeader) -> Result<BulkTarget, ProtoError> {
        if !self.hello_received {
            return Err(ProtoError::ExpectedHello("bulk"));
        }
        if header.kind != FrameKind::Bulk {
            return Err(ProtoError::Violation("not a bulk segment frame"));
        }
        self.dup_bulk = !self.check_seq(header.seq)?;
        if self.dup_bulk {
            return Ok(BulkTarget::Skip);
        }
        let index = header.type_id as usize;
        let (expected, target) = match &mut self.bulk_in {
            BulkIn::Receiving {
                msg_seq,
                dests,
                next,
            } if *msg_seq == header.correlation && *next == index => {
                (dests.len_of(index), BulkTarget::Place { index })
            }
            BulkIn::Discarding {
                msg_seq,
                sizes,
                next,
            } if *msg_seq == header.correlation && *next == index => {
                (sizes.get(index).map(|&s| u64::from(s)), BulkTarget::Skip)
            }
            _ => (None, BulkTarget::Skip),
        };
        if expected != Some(u64::from(header.payload_len)) {
            return Err(ProtoError::Violation(
                "bulk segment does not match the announced transfer",
            ));
        }
        Ok(target)
    }

    /// Ends the bulk segment frame started with [`bulk_start`](Self::bulk_start).
    pub(super) fn bulk_end(&mut self, now: Instant, header: &FrameHeader) {
        if self.dup_bulk {
            self.dup_bulk = false;
            return;
        }
        self.rx_last = header.seq;
        self.finish_segment();
        self.note_received(now);
    }

    /// Acts on one piece of a bulk segment from the byte-level decoder.
    /// Returns the piece when its bytes are for the caller to place (external
    /// destinations).
    pub(super) fn on_bulk<'a>(
        &mut self,
        now: Instant,
        piece: BulkPiece<'a>,
    ) -> Result<Option<BulkPiece<'a>>, ProtoError> {
        let header = *piece.header();
        if piece.is_first() {
            self.bulk_start(&header)?;
        }
        let mut external = None;
        if !self.dup_bulk {
            if let BulkIn::Receiving { dests, next, .. } = &mut self.bulk_in {
                match dests {
                    Dests::Owned(dests) => {
                        let start = piece.offset() as usize;
                        let dst = dests
                            .get_mut(*next)
                            .and_then(|d| d.as_mut().get_mut(start..start + piece.bytes().len()))
                            .ok_or(ProtoError::Violation("bulk bytes outside the segment"))?;
                        dst.copy_from_slice(piece.bytes());
                    }
                    Dests::External(_) => external = Some(piece),
                }
            }
        }
        if piece.is_last() {
            self.bulk_end(now, &header);
        }
        Ok(external)
    }

    fn finish_segment(&mut self) {
        match core::mem::replace(&mut self.bulk_in, BulkIn::Idle) {
            BulkIn::Receiving {
                msg_seq,
                dests,
                next,
            } => {
                if next + 1 == dests.count() {
                    self.events.push_back(Event::BulkComplete {
                        msg_seq,
                        segments: dests.into_owned(),
                    });
                } else {
                    self.bulk_in = BulkIn::Receiving {
                        msg_seq,
                        dests,
                        next: next + 1,
                    };
                }
            }
            BulkIn::Discarding {
                msg_seq,
                sizes,
                next,
            } => {
                if next + 1 < sizes.len() {
                    self.bulk_in = BulkIn::Discarding {
                        msg_seq,
                        sizes,
                        next: next + 1,
                    };
                }
            }
            other => self.bulk_in = other,
        }
    }

    /// Bookkeeping after a sequenced frame was accepted: schedule an ack and
    /// finish a close the peer asked for once its last frame is in.
    fn note_received(&mut self, now: Instant) {
        self.rx_unacked += 1;
        if self.rx_unacked >= self.config.ack_every {
            self.queue_ack();
        } else if self.ack_deadline.is_none() {
            self.ack_deadline = Some(now + self.config.ack_delay);
        }
        self.maybe_finish_peer_close();
    }

    pub(super) fn queue_ack(&mut self) {
        self.ack_deadline = None;
        if !self.control.contains(&Control::Ack) {
            self.control.push_back(Control::Ack);
        }
    }

    fn on_ack(&mut self, seq: u64) -> Result<(), ProtoError> {
        self.ack_up_to(seq)
    }

    fn ack_up_to(&mut self, seq: u64) -> Result<(), ProtoError> {
        if seq >= self.tx_next {
            return Err(ProtoError::AckBeyondSent {
                acked: seq,
                sent: self.tx_next - 1,
            });
        }
        if seq > self.tx_acked {
            self.tx_acked = seq;
            self.events.push_back(Event::Acked { up_to: seq });
        }
        Ok(())
    }

    fn on_close(&mut self, reason: CloseReason, last_seq: u64) -> Result<(), ProtoError> {
        if reason != CloseReason::Normal {
            return Err(ProtoError::PeerClosed(reason));
        }
        if last_seq < self.rx_last {
            return Err(ProtoError::Violation(
                "close before frames already received",
            ));
        }
        self.peer_close = Some(last_seq);
        if self.state == SessionState::Established {
            self.state = SessionState::Draining;
        }
        self.maybe_finish_peer_close();
        Ok(())
    }

    fn maybe_finish_peer_close(&mut self) {
        let Some(last) = self.peer_close else {
            return;
        };
        if self.rx_last < last || !matches!(self.bulk_in, BulkIn::Idle) {
            return;
        }
        self.peer_close = None;
        self.queue_ack();
        self.control.push_back(Control::CloseAck);
        if self.state == SessionState::Draining {
            self.state = SessionState::Closed;
            self.events.push_back(Event::Closed {
                reason: CloseReason::Normal,
                by_peer: true,
                clean: self.tx_acked + 1 == self.tx_next,
            });
        }
    }

    fn on_close_ack(&mut self, rx: u64) -> Result<(), ProtoError> {
        if self.state != SessionState::Closing {
            return Err(ProtoError::Violation("close-ack without a close"));
        }
        self.ack_up_to(rx)?;
        self.close_deadline = None;
        self.state = SessionState::Closed;
        self.events.push_back(Event::Closed {
            reason: CloseReason::Normal,
            by_peer: false,
            clean: self.tx_acked + 1 == self.tx_next,
        });
        Ok(())
    }
}
