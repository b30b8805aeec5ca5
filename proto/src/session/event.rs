//! What a session hands back: received messages, events, send receipts.

use core::any::TypeId;

use crate::access::{access, access_trusted};
use crate::bulk::BulkSizes;
use crate::control::CloseReason;
use crate::decoder::BulkPiece;
use crate::error::ProtoError;
use crate::header::{FrameHeader, FrameKind};
use crate::message::Message;
use crate::schema::ValidatedAs;

/// A logical stream on a connection. Streams are tags: frames of different
/// streams share one sequence space and one connection, and the application
/// demultiplexes on [`Received::stream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId(pub u32);

/// Identifies an outstanding call (the request's correlation id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub u64);

/// Where to send the reply to a request: copy it out of the [`Received`]
/// before releasing the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    /// The request's stream.
    pub stream: StreamId,
    /// The request's correlation id.
    pub call: CallId,
}

/// What a data frame encoder produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Sequence number assigned to the frame (retain it until acknowledged).
    pub seq: u64,
    /// Bytes of the caller's buffer to send.
    pub len: usize,
}

/// Header of a bulk segment, written for a gather send: send `header_len`
/// bytes of the buffer, then the segment's `data_len` bytes from wherever
/// they live, then `pad` zero bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkHeader {
    /// Sequence number of the segment frame.
    pub seq: u64,
    /// Header bytes written into the caller's buffer.
    pub header_len: usize,
    /// Segment bytes to send after the header.
    pub data_len: usize,
    /// Zero bytes to send after the data.
    pub pad: usize,
}

/// Information about the peer, from its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's node id.
    pub node_id: u64,
    /// The peer's capabilities.
    pub capabilities: u32,
    /// The largest payload the peer accepts.
    pub max_payload: u32,
}

/// Why a connection (not the session) was lost. The session can be resumed
/// with [`Session::reconnect`](crate::Session::reconnect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// Nothing received for `idle_timeout`.
    IdleTimeout,
    /// The peer's hello did not arrive within `handshake_timeout`.
    HandshakeTimeout,
    /// The transport reported the connection closed or reset.
    Transport,
}

/// Lifecycle and completion notifications, from
/// [`Session::poll_event`](crate::Session::poll_event).
#[derive(Debug)]
pub enum Event<B> {
    /// The handshake completed.
    Connected {
        /// The peer.
        peer: PeerInfo,
        /// Whether an existing session was resumed.
        resumed: bool,
        /// The peer has every frame up to this sequence number: resend the
        /// retained frames above it (only non-trivial when `resumed`).
        resend_after: u64,
    },
    /// The peer acknowledged every sequenced frame up to `up_to`; their
    /// send buffers may be released.
    Acked {
        /// Highest acknowledged sequence number.
        up_to: u64,
    },
    /// A call got no reply in time. A late reply is dropped.
    CallTimedOut(CallId),
    /// Every segment of an accepted bulk transfer arrived; here are the
    /// destinations back, filled.
    BulkComplete {
        /// Sequence number of the message the segments belong to.
        msg_seq: u64,
        /// The destinations passed to `accept_bulk`, filled (empty after
        /// `accept_bulk_external`: the caller holds them).
        segments: Vec<B>,
    },
    /// The connection was lost; the session may be resumed.
    ConnectionLost(LostReason),
    /// The session ended.
    Closed {
        /// The close reason.
        reason: CloseReason,
        /// Whether the peer started the close.
        by_peer: bool,
        /// Whether every frame sent was acknowledged (the close flushed).
        clean: bool,
    },
}

/// Lifecycle state of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Hello sent, waiting for the peer's.
    Handshaking,
    /// Exchanging messages.
    Established,
    /// The peer asked to close; waiting for its remaining frames.
    Draining,
    /// We sent a close; waiting for the peer's close-ack.
    Closing,
    /// The connection was lost; [`reconnect`](crate::Session::reconnect)
    /// resumes.
    Disconnected,
    /// Ended in an orderly way.
    Closed,
    /// Ended by an error.
    Failed,
}

impl SessionState {
    /// Lowercase name, for errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            SessionState::Handshaking => "handshaking",
            SessionState::Established => "established",
            SessionState::Draining => "draining",
            SessionState::Closing => "closing",
            SessionState::Disconnected => "disconnected",
            SessionState::Closed => "closed",
            SessionState::Failed => "failed",
        }
    }
}

/// A message received from the peer, validated at ingress, borrowed from the
/// receive buffer (or the decoder's assembly buffer).
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub(crate) header: FrameHeader,
    pub(crate) archive: &'a [u8],
    pub(crate) bulk: Option<BulkSizes<'a>>,
    pub(crate) validated: ValidatedAs,
}

impl<'a> Received<'a> {
    /// The archived message as `T`.
    ///
    /// Free when `T` is the type that validated the payload at ingress (the
    /// normal case); falls back to full validation otherwise (another Rust
    /// type sharing the type id). A different type id is
    /// [`ProtoError::WrongType`].
    pub fn get<T: Message>(&self) -> Result<&'a T::Archived, ProtoError> {
        if self.header.type_id != T::TYPE_ID {
            return Err(ProtoError::WrongType {
                expected: T::TYPE_ID,
                found: self.header.type_id,
            });
        }
        if self.validated.0 == TypeId::of::<T>() {
            // SAFETY: the session validated exactly these bytes with
            // `rkyv::access::<T::Archived>` at ingress (the token records the
            // Rust type whose validator ran), so they are a valid, aligned
            // archive of `T`.
            Ok(unsafe { access_trusted::<T>(self.archive) })
        } else {
            access::<T>(self.archive)
        }
    }

    /// The frame header.
    pub fn header(&self) -> &FrameHeader {
        &self.header
    }

    /// Message, request or reply.
    pub fn kind(&self) -> FrameKind {
        self.header.kind
    }

    /// The message's type id.
    pub fn type_id(&self) -> u32 {
        self.header.type_id
    }

    /// The stream it arrived on.
    pub fn stream(&self) -> StreamId {
        StreamId(self.header.stream)
    }

    /// Its sequence number.
    pub fn seq(&self) -> u64 {
        self.header.seq
    }

    /// For a reply: the call it answers.
    pub fn call(&self) -> Option<CallId> {
        (self.header.kind == FrameKind::Reply).then_some(CallId(self.header.correlation))
    }

    /// For a request: where to send the reply.
    pub fn reply_to(&self) -> Option<ReplyTo> {
        (self.header.kind == FrameKind::Request).then_some(ReplyTo {
            stream: StreamId(self.header.stream),
            call: CallId(self.header.correlation),
        })
    }

    /// The announced bulk segment sizes, if bulk segments follow. The
    /// session then waits for `accept_bulk` or `discard_bulk`.
    pub fn bulk(&self) -> Option<BulkSizes<'a>> {
        self.bulk
    }

    /// The raw archive bytes.
    pub fn archive_bytes(&self) -> &'a [u8] {
        self.archive
    }
}

/// Result of one [`Session::handle_input`](crate::Session::handle_input)
/// call.
#[derive(Debug)]
#[non_exhaustive]
pub struct Input<'a> {
    /// Bytes consumed from the front of the input.
    pub consumed: usize,
    /// A message, if the consumed bytes completed one.
    pub received: Option<Received<'a>>,
    /// A message that arrived in order but was dropped because its archive
    /// failed validation or its type id is unknown
    /// ([`ProtoError::Validation`], [`ProtoError::UnknownType`]). It costs
    /// that message only: the session goes on.
    pub rejected: Option<ProtoError>,
    /// Bytes of a bulk segment accepted with
    /// [`accept_bulk_external`](crate::Session::accept_bulk_external): the
    /// caller copies them to their place in the segment.
    pub bulk: Option<BulkPiece<'a>>,
}

impl<'a> Input<'a> {
    pub(crate) fn consumed(consumed: usize) -> Self {
        Input {
            consumed,
            received: None,
            rejected: None,
            bulk: None,
        }
    }
}

/// Where the bytes of a bulk segment frame go, from
/// [`Session::bulk_segment_start`](crate::Session::bulk_segment_start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkTarget {
    /// Into segment `index` of the destinations the caller accepted the
    /// transfer with.
    Place {
        /// Segment index.
        index: usize,
    },
    /// Nowhere: a duplicate resent after a resume, or a discarded transfer.
    /// Read and drop the bytes.
    Skip,
}
