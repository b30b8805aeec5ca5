//! The send half of the session: data frames into caller buffers, control
//! frames, events, timers.

use crate::bulk::BulkOut;
use crate::control::{close_payload, CloseReason, CLOSE_ACK_LEN};
use crate::encoder::{encode_bulk_header, encode_frame, encode_message_with_bulk};
use crate::error::ProtoError;
use crate::header::{frame_len, FrameHeader, FrameKind, HEADER_LEN};
use crate::message::Message;
use crate::time::Instant;

use super::config::capabilities;
use super::event::{BulkHeader, CallId, Event, LostReason, ReplyTo, Sent, SessionState, StreamId};
use super::{Control, Core, Session};

impl<B: AsMut<[u8]>> Session<B> {
    /// Encodes a one-way message on `stream` into `buf`.
    pub fn send<T: Message>(
        &mut self,
        now: Instant,
        stream: StreamId,
        value: &T,
        buf: &mut [u8],
    ) -> Result<Sent, ProtoError> {
        let header = FrameHeader {
            stream: stream.0,
            ..FrameHeader::new(FrameKind::Message)
        };
        self.core.encode_data(now, header, value, &[], buf)
    }

    /// Encodes a request on `stream` into `buf`; its reply will arrive as a
    /// [`Received`](crate::Received) whose [`call`](crate::Received::call) is
    /// the returned id (or [`Event::CallTimedOut`]).
    pub fn call<T: Message>(
        &mut self,
        now: Instant,
        stream: StreamId,
        value: &T,
        buf: &mut [u8],
    ) -> Result<(Sent, CallId), ProtoError> {
        let id = self.core.next_call;
        let header = FrameHeader {
            stream: stream.0,
            correlation: id,
            ..FrameHeader::new(FrameKind::Request)
        };
        let sent = self.core.encode_data(now, header, value, &[], buf)?;
        self.core.next_call += 1;
        let deadline = self.core.config.call_timeout.map(|t| now + t);
        self.core.calls.insert(id, deadline);
        Ok((sent, CallId(id)))
    }

    /// Encodes the reply to a request into `buf`.
    pub fn reply<T: Message>(
        &mut self,
        now: Instant,
        to: ReplyTo,
        value: &T,
        buf: &mut [u8],
    ) -> Result<Sent, ProtoError> {
        let header = FrameHeader {
            stream: to.stream.0,
            correlation: to.call.0,
            ..FrameHeader::new(FrameKind::Reply)
        };
        self.core.encode_data(now, header, value, &[], buf)
    }

    /// Writes only the 32-byte header of a one-way message on `stream` whose
    /// payload, an archive of `T` without bulk segments, was encoded
    /// elsewhere: once for many connections (broadcast), with
    /// [`encode_message`](crate::encode_message) into a shared buffer. Send
    /// these header bytes, then the shared frame's bytes after its own
    /// header (payload and padding). `payload_len` is the shared frame's
    /// payload length (its header's `payload_len`).
    pub fn send_header<T: Message>(
        &mut self,
        now: Instant,
        stream: StreamId,
        payload_len: u32,
        buf: &mut [u8],
    ) -> Result<Sent, ProtoError> {
        self.write_header(
            now,
            FrameKind::Message,
            stream,
            0,
            T::TYPE_ID,
            payload_len,
            buf,
        )
    }

    /// Like [`send_header`](Session::send_header) for a message whose type is
    /// known only by its id: a payload archived earlier (for example one
    /// handed back after another session ended) sent again on this session.
    /// The type must be in this session's schema
    /// ([`ProtoError::UnknownType`] otherwise); the payload is not validated
    /// again, since this process archived it.
    pub fn send_header_of(
        &mut self,
        now: Instant,
        stream: StreamId,
        type_id: u32,
        payload_len: u32,
        buf: &mut [u8],
    ) -> Result<Sent, ProtoError> {
        if !self.schema().contains(type_id) {
            return Err(ProtoError::UnknownType(type_id));
        }
        self.write_header(
            now,
            FrameKind::Message,
            stream,
            0,
            type_id,
            payload_len,
            buf,
        )
    }

    /// Like [`send_header`](Session::send_header), for a request: writes only
    /// the header of a request whose payload (an archive of `T`) was encoded
    /// elsewhere (for example on another thread), and registers the call.
    pub fn call_header<T: Message>(
        &mut self,
        now: Instant,
        stream: StreamId,
        payload_len: u32,
        buf: &mut [u8],
    ) -> Result<(Sent, CallId), ProtoError> {
        let id = self.core.next_call;
        let sent = self.write_header(
            now,
            FrameKind::Request,
            stream,
            id,
            T::TYPE_ID,
            payload_len,
            buf,
        )?;
        self.core.next_call += 1;
        let deadline = self.core.config.call_timeout.map(|t| now + t);
        self.core.calls.insert(id, deadline);
        Ok((sent, CallId(id)))
    }

    #[allow(clippy::too_many_arguments)]
    fn write_header(
        &mut self,
        now: Instant,
        kind: FrameKind,
        stream: StreamId,
        correlation: u64,
        type_id: u32,
        payload_len: u32,
        buf: &mut [u8],
    ) -> Result<Sent, ProtoError> {
        let core = &mut self.core;
        core.check_can_send()?;
        if core.bulk_out.is_some() {
            return Err(ProtoError::BulkInProgress);
        }
        let limit = core.peer.map_or(core.config.max_payload, |p| p.max_payload);
        if payload_len > limit {
            return Err(ProtoError::PeerLimit {
                len: payload_len as usize,
                limit,
            });
        }
        let available = buf.len();
        let out = buf
            .first_chunk_mut::<HEADER_LEN>()
            .ok_or(ProtoError::BufferTooSmall {
                needed: HEADER_LEN,
                available,
            })?;
        let header = FrameHeader {
            stream: stream.0,
            type_id,
            payload_len,
            correlation,
            seq: core.tx_next,
            ..FrameHeader::new(kind)
        };
        header.write(out);
        core.tx_next += 1;
        core.last_tx = now;
        Ok(Sent {
            seq: header.seq,
            len: HEADER_LEN,
        })
    }

    /// Encodes a message announcing bulk segments of `segment_lens` bytes.
    /// Until every segment was produced with
    /// [`encode_bulk_segment`](Session::encode_bulk_segment) or
    /// [`bulk_segment_header`](Session::bulk_segment_header), other data
    /// frames are refused with [`ProtoError::BulkInProgress`].
    pub fn send_bulk<T: Message>(
        &mut self,
        now: Instant,
        stream: StreamId,
        value: &T,
        segment_lens: &[u32],
        buf: &mut [u8],
    ) -> Result<Sent, ProtoError> {
        if segment_lens.is_empty() {
            return Err(self.core.invalid("sending a bulk message without segments"));
        }
        if let Some(peer) = self.core.peer {
            if peer.capabilities & capabilities::BULK == 0 {
                return Err(ProtoError::MissingCapability(capabilities::BULK));
            }
        }
        let header = FrameHeader {
            stream: stream.0,
            ..FrameHeader::new(FrameKind::Message)
        };
        let sent = self
            .core
            .encode_data(now, header, value, segment_lens, buf)?;
        self.core.bulk_out = Some(BulkOut {
            msg_seq: sent.seq,
            lens: segment_lens.to_vec(),
            next: 0,
        });
        Ok(sent)
    }

    /// Encodes the next bulk segment, copying `data` into `buf` after the
    /// header. `data` must have the announced length.
    pub fn encode_bulk_segment(
        &mut self,
        now: Instant,
        data: &[u8],
        buf: &mut [u8],
    ) -> Result<Sent, ProtoError> {
        let needed = frame_len(data.len());
        if buf.len() < needed {
            return Err(ProtoError::BufferTooSmall {
                needed,
                available: buf.len(),
            });
        }
        if let Some(out) = &self.core.bulk_out {
            let expected = out.lens[out.next] as usize;
            if expected != data.len() {
                return Err(ProtoError::BulkSize {
                    index: out.next,
                    expected: expected as u64,
                    found: data.len() as u64,
                });
            }
        }
        let head = self.bulk_segment_header(now, buf)?;
        let body = &mut buf[HEADER_LEN..needed];
        body[..data.len()].copy_from_slice(data);
        body[data.len()..].fill(0);
        Ok(Sent {
            seq: head.seq,
            len: needed,
        })
    }

    /// Writes the header of the next bulk segment into `buf` for a gather
    /// send (header, then the segment from its own memory, then padding).
    pub fn bulk_segment_header(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<BulkHeader, ProtoError> {
        let core = &mut self.core;
        core.check_can_send()?;
        let Some(out) = core.bulk_out.as_mut() else {
            return Err(core.invalid("sending a bulk segment without a bulk message"));
        };
        let index = out.next;
        let data_len = out.lens[index];
        let seq = core.tx_next;
        let header = FrameHeader {
            type_id: index as u32,
            seq,
            correlation: out.msg_seq,
            ..FrameHeader::new(FrameKind::Bulk)
        };
        let pad = encode_bulk_header(buf, header, data_len)?;
        out.next += 1;
        if out.next == out.lens.len() {
            core.bulk_out = None;
        }
        core.tx_next += 1;
        core.last_tx = now;
        Ok(BulkHeader {
            seq,
            header_len: HEADER_LEN,
            data_len: data_len as usize,
            pad,
        })
    }

    /// Starts an orderly close: a close frame naming the last sequence
    /// number sent is queued; once the peer has received everything it
    /// answers, and [`Event::Closed`] reports whether everything was
    /// acknowledged.
    pub fn close(&mut self, now: Instant) -> Result<(), ProtoError> {
        let core = &mut self.core;
        if !matches!(
            core.state,
            SessionState::Established | SessionState::Draining
        ) {
            return Err(core.invalid("closing"));
        }
        if core.bulk_out.is_some() {
            return Err(ProtoError::BulkInProgress);
        }
        if core.state == SessionState::Established {
            core.state = SessionState::Closing;
        }
        // Acknowledge what arrived before closing, so that the peer learns
        // its last messages were received rather than seeing them
        // unacknowledged at the close.
        if core.rx_unacked > 0 {
            core.queue_ack();
        }
        core.close_deadline = Some(now + core.config.close_timeout);
        core.control.push_back(Control::Close(CloseReason::Normal));
        Ok(())
    }

    /// Writes the next queued control frame into `buf` and returns its
    /// length, or `None` if nothing is queued. A too-small buffer leaves the
    /// frame queued (every control frame fits in 64 bytes except the hello,
    /// which needs 96 + 4 per message type).
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<usize>, ProtoError> {
        let core = &mut self.core;
        let Some(&control) = core.control.front() else {
            return Ok(None);
        };
        let len = match control {
            Control::Hello => {
                let hello = core.hello();
                let payload_len = hello.encoded_len();
                let total = frame_len(payload_len);
                let available = buf.len();
                let out = buf.get_mut(..total).ok_or(ProtoError::BufferTooSmall {
                    needed: total,
                    available,
                })?;
                let (head, body) = out.split_at_mut(HEADER_LEN);
                hello.write(&mut body[..payload_len])?;
                body[payload_len..].fill(0);
                let header = FrameHeader {
                    payload_len: u32::try_from(payload_len)
                        .map_err(|_| ProtoError::Violation("hello larger than 4 GiB"))?,
                    ..FrameHeader::new(FrameKind::Hello)
                };
                let mut bytes = [0u8; HEADER_LEN];
                header.write(&mut bytes);
                head.copy_from_slice(&bytes);
                total
            }
            Control::Ack => {
                let header = FrameHeader {
                    seq: core.rx_last,
                    ..FrameHeader::new(FrameKind::Ack)
                };
                let n = encode_frame(buf, header, &[])?;
                core.rx_unacked = 0;
                core.ack_deadline = None;
                n
            }
            Control::Heartbeat => encode_frame(buf, FrameHeader::new(FrameKind::Heartbeat), &[])?,
            Control::Close(reason) => encode_frame(
                buf,
                FrameHeader::new(FrameKind::Close),
                &close_payload(reason, core.tx_next - 1),
            )?,
            Control::CloseAck => {
                let payload: [u8; CLOSE_ACK_LEN] = core.rx_last.to_le_bytes();
                encode_frame(buf, FrameHeader::new(FrameKind::CloseAck), &payload)?
            }
        };
        core.control.pop_front();
        core.last_tx = now;
        Ok(Some(len))
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event<B>> {
        self.core.events.pop_front()
    }

    /// The earliest instant at which [`handle_timeout`](Session::handle_timeout)
    /// has something to do, or `None`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let core = &self.core;
        // Call deadlines increase with the call id (one timeout for all), so
        // the first is the earliest.
        let calls = core.calls.values().flatten().next().copied();
        let live = match core.state {
            SessionState::Handshaking => core.handshake_deadline,
            SessionState::Established | SessionState::Draining | SessionState::Closing => [
                Some(core.last_rx + core.config.idle_timeout),
                Some(core.last_tx + core.config.heartbeat_interval),
                core.ack_deadline,
                core.close_deadline,
            ]
            .into_iter()
            .flatten()
            .min(),
            SessionState::Disconnected | SessionState::Closed | SessionState::Failed => None,
        };
        [live, calls].into_iter().flatten().min()
    }

    /// Acts on every deadline that has passed: handshake and idle timeouts
    /// (connection lost), delayed acks, heartbeats, call timeouts, close
    /// timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        let core = &mut self.core;
        // Call deadlines increase with the call id (one timeout for all), so
        // the expired ones are a prefix of the map.
        while let Some((&id, &deadline)) = core.calls.first_key_value() {
            match deadline {
                Some(d) if d <= now => {
                    core.calls.remove(&id);
                    core.events.push_back(Event::CallTimedOut(CallId(id)));
                }
                _ => break,
            }
        }
        match core.state {
            SessionState::Handshaking => {
                if core.handshake_deadline.is_some_and(|d| d <= now) {
                    core.lose(LostReason::HandshakeTimeout);
                }
            }
            SessionState::Established | SessionState::Draining | SessionState::Closing => {
                if core.close_deadline.is_some_and(|d| d <= now) {
                    core.close_deadline = None;
                    core.state = SessionState::Closed;
                    core.control.clear();
                    core.events.push_back(Event::Closed {
                        reason: CloseReason::Normal,
                        by_peer: false,
                        clean: false,
                    });
                    return;
                }
                if core.last_rx + core.config.idle_timeout <= now {
                    core.lose(LostReason::IdleTimeout);
                    return;
                }
                if core.ack_deadline.is_some_and(|d| d <= now) {
                    core.queue_ack();
                }
                if core.last_tx + core.config.heartbeat_interval <= now {
                    if core.control.is_empty() {
                        core.control.push_back(Control::Heartbeat);
                    }
                    // Sending is the transport's job; count the heartbeat as
                    // sent now so the deadline moves on.
                    core.last_tx = now;
                }
            }
            SessionState::Disconnected | SessionState::Closed | SessionState::Failed => {}
        }
    }
}

impl<B> Core<B> {
    fn check_can_send(&self) -> Result<(), ProtoError> {
        match self.state {
            SessionState::Handshaking | SessionState::Established | SessionState::Disconnected => {
                Ok(())
            }
            _ => Err(self.invalid("sending data")),
        }
    }

    fn encode_data<T: Message>(
        &mut self,
        now: Instant,
        mut header: FrameHeader,
        value: &T,
        segment_lens: &[u32],
        buf: &mut [u8],
    ) -> Result<Sent, ProtoError> {
        self.check_can_send()?;
        if self.bulk_out.is_some() {
            return Err(ProtoError::BulkInProgress);
        }
        header.seq = self.tx_next;
        let len = encode_message_with_bulk(buf, header, value, segment_lens)?;
        let limit = self.peer.map_or(self.config.max_payload, |p| p.max_payload);
        // The header holds the exact payload length (bytes 4..8).
        let payload = buf
            .get(4..8)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if payload > limit {
            return Err(ProtoError::PeerLimit {
                len: payload as usize,
                limit,
            });
        }
        self.tx_next += 1;
        self.last_tx = now;
        Ok(Sent {
            seq: header.seq,
            len,
        })
    }
}
