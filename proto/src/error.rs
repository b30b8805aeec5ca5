//! The proto layer's error type.
//!
//! One enum for the whole crate, as the style guide asks: every fallible
//! function in `ringwire-proto` returns [`ProtoError`]. Each variant says
//! whether it ends the connection; [`ProtoError::is_fatal`] answers that
//! question for code that only needs to know whether to drop the connection.

use crate::close_reason::CloseReason;
use crate::mismatch::Mismatch;

/// Everything that can go wrong while encoding, decoding or running a
/// session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// A frame header announced a wire version this build does not speak.
    #[error("unsupported frame version {found} (this build speaks {expected})")]
    UnsupportedVersion {
        /// Version byte found in the header.
        found: u8,
        /// Version this build writes and accepts.
        expected: u8,
    },
    /// A frame header carried a kind byte that is not defined.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A frame header set flag bits that are reserved for future use.
    #[error("reserved flag bits set: {0:#06x}")]
    ReservedFlags(u16),
    /// A frame announced a payload larger than the configured maximum. The
    /// decoder refuses it before allocating anything.
    #[error("frame announces {announced} payload bytes, limit is {limit}")]
    FrameTooLarge {
        /// Length found in the header.
        announced: u64,
        /// Configured maximum.
        limit: u64,
    },
    /// A frame's payload does not have the shape its kind requires.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which structure was malformed (e.g. `"hello"`, `"bulk descriptor"`).
        what: &'static str,
        /// What was wrong with it.
        detail: &'static str,
    },
    /// The decoder failed earlier and will not decode anything else on this
    /// connection.
    #[error("decoder already failed on this connection")]
    DecoderFailed,
    /// The caller's buffer cannot hold the frame being encoded.
    #[error("buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall {
        /// Bytes needed (lower bound if serialization overflowed).
        needed: usize,
        /// Bytes available in the caller's buffer.
        available: usize,
    },
    /// rkyv failed to serialize a value (the caller's buffer overflowed or a
    /// type's serializer failed).
    #[error("serializing message type {type_id:#010x} failed: {source}")]
    Serialize {
        /// Type id of the message being serialized.
        type_id: u32,
        /// What failed.
        #[source]
        source: crate::writer::EncodeError,
    },
    /// A message's bytes failed rkyv/bytecheck validation.
    #[error("message of type {type_id:#010x} failed validation: {source}")]
    Validation {
        /// Type id from the frame header.
        type_id: u32,
        /// bytecheck's error.
        #[source]
        source: rkyv::rancor::Error,
    },
    /// A message arrived whose type id is not in the local schema.
    #[error("unknown message type id {0:#010x}")]
    UnknownType(u32),
    /// The caller asked for a message as a type other than the one it
    /// carries.
    #[error("message has type id {found:#010x}, caller expected {expected:#010x}")]
    WrongType {
        /// Type id the caller asked for.
        expected: u32,
        /// Type id in the frame header.
        found: u32,
    },
    /// The payload is not aligned for in-place access (the receive buffer
    /// was not 16-byte aligned).
    #[error("payload at address {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Address of the payload's first byte.
        addr: usize,
        /// Required alignment.
        align: usize,
    },
    /// Two message types in one schema share a type id.
    #[error("type id {type_id:#010x} registered twice ({first} and {second})")]
    DuplicateTypeId {
        /// The contested id.
        type_id: u32,
        /// Name of the type registered first.
        first: &'static str,
        /// Name of the type registered second.
        second: &'static str,
    },
    /// The peer is incompatible; the mismatch says what differs.
    #[error("peer refused: {0}")]
    Incompatible(Box<Mismatch>),
    /// The first frame on a connection was not a valid hello.
    #[error("expected a hello frame, got {0}")]
    ExpectedHello(&'static str),
    /// The peer sent a frame that is not allowed in the current state.
    #[error("protocol violation: {0}")]
    Violation(&'static str),
    /// A sequenced frame skipped ahead (frames were lost).
    #[error("sequence gap: expected {expected}, got {found}")]
    SequenceGap {
        /// Next sequence number this side expected.
        expected: u64,
        /// Sequence number received.
        found: u64,
    },
    /// The peer acknowledged a sequence number that was never sent.
    #[error("peer acknowledged {acked} but only {sent} frames were sent")]
    AckBeyondSent {
        /// Sequence number acknowledged by the peer.
        acked: u64,
        /// Highest sequence number sent.
        sent: u64,
    },
    /// A resume request named a session this side does not hold, or a
    /// position that cannot be resumed from.
    #[error("cannot resume: {0}")]
    Resume(&'static str),
    /// The operation needs a state the session is not in (for example
    /// sending after close).
    #[error("session is {state}; {operation} not allowed")]
    InvalidState {
        /// Current session state.
        state: &'static str,
        /// What the caller tried.
        operation: &'static str,
    },
    /// A bulk message's segments have not been fully sent yet; other data
    /// frames must wait.
    #[error("bulk transfer in progress: send its remaining segments first")]
    BulkInProgress,
    /// Bytes arrived for a bulk transfer whose destinations have not been
    /// chosen; call `accept_bulk` or `discard_bulk` first. No input was
    /// consumed; the session is still usable.
    #[error("bulk offer pending: call accept_bulk or discard_bulk first")]
    BulkDecisionPending,
    /// The destinations passed to `accept_bulk` do not match the announced
    /// segment sizes (a local usage error; the offer is still pending).
    #[error("bulk segment {index}: expected {expected} bytes, got {found}")]
    BulkSize {
        /// Segment index.
        index: usize,
        /// Size announced in the metadata.
        expected: u64,
        /// Size offered.
        found: u64,
    },
    /// A frame to send exceeds the largest payload the peer accepts.
    #[error("payload of {len} bytes exceeds the peer's limit of {limit}")]
    PeerLimit {
        /// Payload length.
        len: usize,
        /// The peer's `max_payload` from its hello.
        limit: u32,
    },
    /// The peer does not support a capability this operation needs.
    #[error("peer lacks capability {0:#x}")]
    MissingCapability(u32),
    /// The replay buffer holds its maximum of unacknowledged bytes.
    #[error("replay buffer full ({limit} bytes unacknowledged)")]
    ReplayFull {
        /// The configured limit.
        limit: usize,
    },
    /// The peer reported a protocol error and closed.
    #[error("peer closed the connection with reason {0:?}")]
    PeerClosed(CloseReason),
}

impl ProtoError {
    /// Whether this error rejects one received message and nothing else: a
    /// well-formed, in-sequence frame whose archive failed validation
    /// ([`ProtoError::Validation`]) or whose type id the schema does not
    /// know ([`ProtoError::UnknownType`]). The message is dropped (and
    /// acknowledged, so it is not resent); the connection goes on.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            ProtoError::Validation { .. } | ProtoError::UnknownType(_)
        )
    }

    /// Whether this error ends the connection.
    ///
    /// Non-fatal errors are local usage errors (wrong buffer size, wrong
    /// type requested, a call in the wrong order), after which the session
    /// and decoder are unchanged and the caller may retry, and
    /// [rejections](ProtoError::is_rejection) of one message. Fatal errors mean the byte
    /// stream can no longer be trusted; drop the connection (a resumable
    /// session may reconnect).
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            ProtoError::Validation { .. }
                | ProtoError::UnknownType(_)
                | ProtoError::BufferTooSmall { .. }
                | ProtoError::Serialize { .. }
                | ProtoError::WrongType { .. }
                | ProtoError::Misaligned { .. }
                | ProtoError::DuplicateTypeId { .. }
                | ProtoError::InvalidState { .. }
                | ProtoError::BulkInProgress
                | ProtoError::BulkDecisionPending
                | ProtoError::BulkSize { .. }
                | ProtoError::PeerLimit { .. }
                | ProtoError::MissingCapability(_)
                | ProtoError::ReplayFull { .. }
        )
    }
}
