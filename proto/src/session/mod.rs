//! The session state machine: handshake, sequencing and acknowledgement,
//! resume, heartbeats and idle timeout, orderly close, request/reply, and
//! two-phase bulk.
//!
//! A [`Session`] is sans-IO. Its methods, grouped in the order a transport
//! calls them:
//!
//! - **create**: [`Session::connect`], [`Session::accept`];
//!   [`peek_hello`] routes a new connection to an existing session before
//!   [`Session::reconnect`] resumes it;
//! - **input**: [`Session::handle_input`] (one item per call; loop until the
//!   chunk is consumed), [`Session::accept_bulk`], [`Session::discard_bulk`],
//!   [`Session::handle_timeout`], [`Session::connection_lost`];
//! - **data frames out** (encoded straight into the caller's buffer):
//!   [`Session::send`], [`Session::call`], [`Session::reply`],
//!   [`Session::send_bulk`], then [`Session::encode_bulk_segment`] or
//!   [`Session::bulk_segment_header`] per segment; [`Session::close`];
//! - **poll**: [`Session::poll_transmit`] (control frames: hello, ack,
//!   heartbeat, close), [`Session::poll_event`], [`Session::poll_timeout`].
//!
//! Control frames from `poll_transmit` must be sent before data frames
//! produced after them; in particular the hello goes first on every new
//! connection.

mod config;
mod event;
mod input;
mod output;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

pub use config::{capabilities, Config, Role};
pub use event::{
    BulkHeader, BulkTarget, CallId, Event, Input, LostReason, PeerInfo, Received, ReplyTo, Sent,
    SessionState, StreamId,
};

use crate::bulk::{BulkIn, BulkOut, Dests};
use crate::control::CloseReason;
use crate::decoder::Decoder;
use crate::error::ProtoError;
use crate::header::{FrameHeader, FrameKind, HEADER_LEN};
use crate::hello::Hello;
use crate::schema::Schema;
use crate::time::Instant;

/// A control frame waiting for [`Session::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Hello,
    Ack,
    Heartbeat,
    Close(CloseReason),
    CloseAck,
}

/// One connection's protocol state. `B` is the type of bulk destinations
/// (for the runtime: registered buffers).
#[derive(Debug)]
pub struct Session<B = Vec<u8>> {
    decoder: Decoder,
    core: Core<B>,
}

/// Everything but the decoder, so that a decoded frame (which may borrow the
/// decoder) can be processed with `&mut Core`.
#[derive(Debug)]
struct Core<B> {
    config: Config,
    schema: Arc<Schema>,
    role: Role,
    state: SessionState,
    session_id: u64,
    /// Whether a handshake ever completed: reconnects then ask to resume.
    established_once: bool,
    /// Whether this connection's hello asks to resume.
    resuming: bool,
    hello_received: bool,
    peer: Option<PeerInfo>,
    // Sending side.
    tx_next: u64,
    tx_acked: u64,
    bulk_out: Option<BulkOut>,
    next_call: u64,
    calls: BTreeMap<u64, Option<Instant>>,
    // Receiving side.
    rx_last: u64,
    rx_unacked: u32,
    ack_deadline: Option<Instant>,
    bulk_in: BulkIn<B>,
    dup_bulk: bool,
    peer_close: Option<u64>,
    // Timers.
    last_rx: Instant,
    last_tx: Instant,
    handshake_deadline: Option<Instant>,
    close_deadline: Option<Instant>,
    // Outputs.
    control: VecDeque<Control>,
    events: VecDeque<Event<B>>,
}

impl<B: AsMut<[u8]>> Session<B> {
    /// Starts a session as the dialing side. `session_id` must be non-zero
    /// and should be unique (the runtime draws it at random); the hello is
    /// queued at once.
    pub fn connect(config: Config, schema: Arc<Schema>, now: Instant, session_id: u64) -> Self {
        Self::new(config, schema, now, Role::Client, session_id.max(1))
    }

    /// Starts a session on an accepted connection; the session id comes from
    /// the client's hello.
    pub fn accept(config: Config, schema: Arc<Schema>, now: Instant) -> Self {
        Self::new(config, schema, now, Role::Server, 0)
    }

    fn new(config: Config, schema: Arc<Schema>, now: Instant, role: Role, session_id: u64) -> Self {
        let decoder = Decoder::new(config.max_payload, config.max_bulk_segment);
        let mut core = Core {
            config,
            schema,
            role,
            state: SessionState::Handshaking,
            session_id,
            established_once: false,
            resuming: false,
            hello_received: false,
            peer: None,
            tx_next: 1,
            tx_acked: 0,
            bulk_out: None,
            next_call: 1,
            calls: BTreeMap::new(),
            rx_last: 0,
            rx_unacked: 0,
            ack_deadline: None,
            bulk_in: BulkIn::Idle,
            dup_bulk: false,
            peer_close: None,
            last_rx: now,
            last_tx: now,
            handshake_deadline: None,
            close_deadline: None,
            control: VecDeque::new(),
            events: VecDeque::new(),
        };
        core.start_handshake(now);
        Session { decoder, core }
    }

    /// Starts a new connection for this session after a cut (from any state
    /// but closed or failed): forgets partial input, queues a hello asking to
    /// resume (if a handshake ever completed) at the current position. On
    /// the server, call it on the session found with [`peek_hello`].
    pub fn reconnect(&mut self, now: Instant) -> Result<(), ProtoError> {
        if matches!(self.core.state, SessionState::Closed | SessionState::Failed) {
            return Err(self.core.invalid("reconnect"));
        }
        self.decoder.reset();
        let core = &mut self.core;
        core.dup_bulk = false;
        core.control.clear();
        core.ack_deadline = None;
        core.rx_unacked = 0;
        core.last_rx = now;
        core.last_tx = now;
        core.start_handshake(now);
        Ok(())
    }

    /// The transport holds input back on purpose (flow control: the
    /// application is not reading). Silence since `now` is not the peer's
    /// doing, so the idle timeout restarts from `now`; call it again while
    /// input stays held.
    pub fn input_held(&mut self, now: Instant) {
        if self.core.last_rx < now {
            self.core.last_rx = now;
        }
    }

    /// The transport saw the connection end (EOF, reset). The session stays
    /// resumable.
    pub fn connection_lost(&mut self, _now: Instant) {
        self.core.lose(LostReason::Transport);
    }

    /// Decodes at most one item from the front of `input` and acts on it.
    ///
    /// Call repeatedly on the rest of the chunk (`&input[consumed..]`) until
    /// it is empty; every call on non-empty input consumes at least one byte.
    /// Control frames are handled inside; messages come out validated in
    /// [`Input::received`]. A fatal error ends the connection (a close frame
    /// is queued for `poll_transmit`); the only non-fatal one is
    /// [`ProtoError::BulkDecisionPending`], which consumes nothing.
    pub fn handle_input<'a>(
        &'a mut self,
        now: Instant,
        input: &'a [u8],
    ) -> Result<Input<'a>, ProtoError> {
        let core = &mut self.core;
        match core.state {
            SessionState::Closed => return Ok(Input::consumed(input.len())),
            SessionState::Failed | SessionState::Disconnected => {
                return Err(core.invalid("handling input"))
            }
            _ => {}
        }
        if matches!(core.bulk_in, BulkIn::Offered { .. }) {
            return Err(ProtoError::BulkDecisionPending);
        }
        if input.is_empty() {
            return Ok(Input::consumed(0));
        }
        core.last_rx = now;
        let decoded = match self.decoder.decode(input) {
            Ok(decoded) => decoded,
            Err(err) => return Err(core.fail(err)),
        };
        let mut out = Input::consumed(decoded.consumed);
        match decoded.item {
            None => {}
            Some(crate::decoder::Item::Frame(frame)) => match core.on_frame(now, frame, false) {
                Ok(received) => out.received = received,
                Err(err) if err.is_rejection() => out.rejected = Some(err),
                Err(err) => return Err(core.fail(err)),
            },
            Some(crate::decoder::Item::Bulk(piece)) => match core.on_bulk(now, piece) {
                Ok(external) => out.bulk = external,
                Err(err) => return Err(core.fail(err)),
            },
        }
        Ok(out)
    }

    /// Checks a frame header against this side's limits before its payload
    /// is read: the largest payload (bulk segments: the largest segment). A
    /// transport that does its own framing calls this as soon as a header is
    /// complete, so that nothing is allocated for an oversized frame. An error
    /// is fatal.
    pub fn check_header(&mut self, header: &FrameHeader) -> Result<(), ProtoError> {
        let limit = if header.kind == FrameKind::Bulk {
            self.core.config.max_bulk_segment
        } else {
            self.core.config.max_payload
        };
        if header.payload_len > limit {
            return Err(self.core.fail(ProtoError::FrameTooLarge {
                announced: u64::from(header.payload_len),
                limit: u64::from(limit),
            }));
        }
        Ok(())
    }

    /// Fails the session with `err`, a fatal error the transport found in the
    /// peer's bytes before the session saw them (a frame header that does
    /// not parse, in a transport that does its own framing). As for errors
    /// found by the session itself, a `Close` saying why is queued for
    /// [`poll_transmit`](Session::poll_transmit) (`Incompatible` or
    /// `ProtocolError`) and the state becomes [`SessionState::Failed`].
    /// Returns `err`.
    pub fn abort(&mut self, err: ProtoError) -> ProtoError {
        self.core.fail(err)
    }

    /// Acts on one complete frame of any kind but [`FrameKind::Bulk`], for
    /// transports that split the byte stream into frames themselves (so that
    /// they can read frames in place across their own buffers, or receive
    /// large ones straight into their destination). `payload` is the frame's
    /// payload without padding and must be 16-byte aligned for messages.
    ///
    /// Returns a validated message, or `None` for control frames and
    /// duplicates. Errors: [`ProtoError::Validation`] and
    /// [`ProtoError::UnknownType`] drop that message only (the session goes
    /// on, see [`ProtoError::is_rejection`]); any other error is fatal, as in
    /// [`handle_input`](Session::handle_input). Bulk segment frames go
    /// through [`bulk_segment_start`](Session::bulk_segment_start).
    pub fn handle_frame<'a>(
        &mut self,
        now: Instant,
        header: &FrameHeader,
        payload: &'a [u8],
    ) -> Result<Option<Received<'a>>, ProtoError> {
        self.frame_in(now, header, payload, false)
    }

    /// [`handle_frame`](Session::handle_frame) without bytecheck validation of
    /// message archives, for in-process transports whose peer is this same
    /// process.
    ///
    /// # Safety
    ///
    /// Every message frame passed here must have been encoded by this binary
    /// (for example by [`Session::send`] of a session in this process) as the
    /// Rust type this session's schema registers for its type id, and its
    /// payload must be 16-byte aligned: [`Received::get`] then reads it
    /// without validation.
    pub unsafe fn handle_frame_trusted<'a>(
        &mut self,
        now: Instant,
        header: &FrameHeader,
        payload: &'a [u8],
    ) -> Result<Option<Received<'a>>, ProtoError> {
        self.frame_in(now, header, payload, true)
    }

    fn frame_in<'a>(
        &mut self,
        now: Instant,
        header: &FrameHeader,
        payload: &'a [u8],
        trusted: bool,
    ) -> Result<Option<Received<'a>>, ProtoError> {
        let core = &mut self.core;
        match core.state {
            SessionState::Closed => return Ok(None),
            SessionState::Failed | SessionState::Disconnected => {
                return Err(core.invalid("handling input"))
            }
            _ => {}
        }
        if header.kind == FrameKind::Bulk {
            return Err(core.invalid("handling a bulk segment as a frame"));
        }
        if matches!(core.bulk_in, BulkIn::Offered { .. }) {
            return Err(ProtoError::BulkDecisionPending);
        }
        if payload.len() != header.payload_len as usize {
            return Err(core.fail(ProtoError::Malformed {
                what: "frame",
                detail: "payload length differs from its header",
            }));
        }
        core.last_rx = now;
        let frame = crate::decoder::Frame::new(*header, payload);
        match core.on_frame(now, frame, trusted) {
            Ok(received) => Ok(received),
            Err(err) if err.is_rejection() => Err(err),
            Err(err) => Err(core.fail(err)),
        }
    }

    /// Starts a bulk segment frame whose header a framing transport just read
    /// (after [`check_header`](Session::check_header)): checks that it is the
    /// segment the transfer expects and says where its
    /// `header.payload_len` bytes go. Once they are in place (or skipped),
    /// call [`bulk_segment_end`](Session::bulk_segment_end). Errors are fatal.
    pub fn bulk_segment_start(
        &mut self,
        now: Instant,
        header: &FrameHeader,
    ) -> Result<BulkTarget, ProtoError> {
        let core = &mut self.core;
        if !matches!(
            core.state,
            SessionState::Handshaking
                | SessionState::Established
                | SessionState::Draining
                | SessionState::Closing
        ) {
            return Err(core.invalid("handling a bulk segment"));
        }
        if matches!(core.bulk_in, BulkIn::Offered { .. }) {
            return Err(ProtoError::BulkDecisionPending);
        }
        core.last_rx = now;
        match core.bulk_start(header) {
            Ok(target) => Ok(target),
            Err(err) => Err(core.fail(err)),
        }
    }

    /// Ends the bulk segment started with
    /// [`bulk_segment_start`](Session::bulk_segment_start): its bytes are in
    /// their destination. After the last segment, [`Event::BulkComplete`]
    /// follows.
    pub fn bulk_segment_end(&mut self, now: Instant, header: &FrameHeader) {
        self.core.last_rx = now;
        self.core.bulk_end(now, header);
    }

    /// Accepts the pending bulk offer: one destination per announced
    /// segment, each exactly the announced size. The segment bytes are
    /// written into them as they arrive and they come back in
    /// [`Event::BulkComplete`]. On a size mismatch the destinations are
    /// handed back and the offer stays pending.
    pub fn accept_bulk(&mut self, mut dests: Vec<B>) -> Result<(), (ProtoError, Vec<B>)> {
        let core = &mut self.core;
        let BulkIn::Offered { msg_seq, sizes } = &core.bulk_in else {
            return Err((core.invalid("accepting bulk without an offer"), dests));
        };
        let msg_seq = *msg_seq;
        if dests.len() != sizes.len() {
            return Err((
                ProtoError::BulkSize {
                    index: dests.len().min(sizes.len()),
                    expected: sizes.len() as u64,
                    found: dests.len() as u64,
                },
                dests,
            ));
        }
        for (index, (dest, &size)) in dests.iter_mut().zip(sizes).enumerate() {
            let found = dest.as_mut().len() as u64;
            if found != u64::from(size) {
                return Err((
                    ProtoError::BulkSize {
                        index,
                        expected: u64::from(size),
                        found,
                    },
                    dests,
                ));
            }
        }
        core.bulk_in = BulkIn::Receiving {
            msg_seq,
            dests: Dests::Owned(dests),
            next: 0,
        };
        Ok(())
    }

    /// Accepts the pending bulk offer with destinations the caller holds and
    /// fills itself, each exactly the announced size (see
    /// [`bulk_offer`](Session::bulk_offer)): segment bytes then come back as
    /// [`Input::bulk`] pieces from `handle_input`, or, for a transport that
    /// frames the stream itself, are placed between
    /// [`bulk_segment_start`](Session::bulk_segment_start) and
    /// [`bulk_segment_end`](Session::bulk_segment_end) (for example received
    /// straight into the destination). [`Event::BulkComplete`] comes with no
    /// segments.
    pub fn accept_bulk_external(&mut self) -> Result<(), ProtoError> {
        let core = &mut self.core;
        match core::mem::replace(&mut core.bulk_in, BulkIn::Idle) {
            BulkIn::Offered { msg_seq, sizes } => {
                core.bulk_in = BulkIn::Receiving {
                    msg_seq,
                    dests: Dests::External(sizes),
                    next: 0,
                };
                Ok(())
            }
            other => {
                core.bulk_in = other;
                Err(core.invalid("accepting bulk without an offer"))
            }
        }
    }

    /// Declines the pending bulk offer; its segments are skipped.
    pub fn discard_bulk(&mut self) -> Result<(), ProtoError> {
        let core = &mut self.core;
        match core::mem::replace(&mut core.bulk_in, BulkIn::Idle) {
            BulkIn::Offered { msg_seq, sizes } => {
                core.bulk_in = BulkIn::Discarding {
                    msg_seq,
                    sizes,
                    next: 0,
                };
                Ok(())
            }
            other => {
                core.bulk_in = other;
                Err(core.invalid("discarding bulk without an offer"))
            }
        }
    }

    /// The pending bulk offer, if any: the message's sequence number and the
    /// segment sizes.
    pub fn bulk_offer(&self) -> Option<(u64, &[u32])> {
        match &self.core.bulk_in {
            BulkIn::Offered { msg_seq, sizes } => Some((*msg_seq, sizes)),
            _ => None,
        }
    }

    /// Current state.
    pub fn state(&self) -> SessionState {
        self.core.state
    }

    /// Session id (0 on a server before the client's hello).
    pub fn session_id(&self) -> u64 {
        self.core.session_id
    }

    /// Which side this is.
    pub fn role(&self) -> Role {
        self.core.role
    }

    /// The peer, once its hello arrived.
    pub fn peer(&self) -> Option<PeerInfo> {
        self.core.peer
    }

    /// Sequence number of the last sequenced frame sent (0: none yet).
    pub fn last_sent(&self) -> u64 {
        self.core.tx_next - 1
    }

    /// Highest sequence number the peer acknowledged.
    pub fn acked(&self) -> u64 {
        self.core.tx_acked
    }

    /// Sequence number of the last frame received in order.
    pub fn last_received(&self) -> u64 {
        self.core.rx_last
    }

    /// Number of calls waiting for a reply.
    pub fn outstanding_calls(&self) -> usize {
        self.core.calls.len()
    }

    /// The schema this session validates with.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.core.schema
    }
}

impl<B> Core<B> {
    fn start_handshake(&mut self, now: Instant) {
        self.state = SessionState::Handshaking;
        self.hello_received = false;
        self.resuming = self.established_once;
        self.handshake_deadline = Some(now + self.config.handshake_timeout);
        self.control.push_back(Control::Hello);
    }

    fn invalid(&self, operation: &'static str) -> ProtoError {
        ProtoError::InvalidState {
            state: self.state.name(),
            operation,
        }
    }

    /// Ends the connection after a fatal error: best-effort close frame,
    /// state failed. Returns the error for the caller.
    fn fail(&mut self, err: ProtoError) -> ProtoError {
        if err.is_fatal() && self.state != SessionState::Failed {
            self.state = SessionState::Failed;
            self.control.clear();
            let reason = match err {
                ProtoError::Incompatible(_) => Some(CloseReason::Incompatible),
                // The peer already closed; answering is pointless.
                ProtoError::PeerClosed(_) => None,
                _ => Some(CloseReason::ProtocolError),
            };
            if let Some(reason) = reason {
                self.control.push_back(Control::Close(reason));
            }
        }
        err
    }

    fn lose(&mut self, reason: LostReason) {
        if matches!(
            self.state,
            SessionState::Closed | SessionState::Failed | SessionState::Disconnected
        ) {
            return;
        }
        self.state = SessionState::Disconnected;
        self.control.clear();
        self.handshake_deadline = None;
        self.ack_deadline = None;
        self.events.push_back(Event::ConnectionLost(reason));
    }

    fn hello(&self) -> Hello {
        Hello {
            protocol_version: crate::hello::PROTOCOL_VERSION,
            resume: self.resuming,
            capabilities: self.config.capabilities,
            node_id: self.config.node_id,
            session_id: self.session_id,
            rx_seq: self.rx_last,
            max_payload: self.config.max_payload,
            format: self.schema.format(),
            type_ids: self.schema.type_ids().collect(),
        }
    }
}

/// Reads the hello at the start of a new connection's first bytes without
/// consuming them, so a server can route a resuming client to the session
/// it already holds (`hello.resume` and `hello.session_id`). `Ok(None)`:
/// not enough bytes yet.
pub fn peek_hello(input: &[u8]) -> Result<Option<Hello>, ProtoError> {
    let Some(head) = input.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = FrameHeader::parse(head)?;
    if header.kind != FrameKind::Hello {
        return Err(ProtoError::ExpectedHello(header.kind.name()));
    }
    let len = header.payload_len as usize;
    if len > crate::hello::HELLO_FIXED_LEN + 4 * crate::hello::MAX_HELLO_TYPES {
        return Err(ProtoError::FrameTooLarge {
            announced: len as u64,
            limit: (crate::hello::HELLO_FIXED_LEN + 4 * crate::hello::MAX_HELLO_TYPES) as u64,
        });
    }
    match input.get(HEADER_LEN..HEADER_LEN + len) {
        Some(payload) => Hello::parse(payload).map(Some),
        None => Ok(None),
    }
}
