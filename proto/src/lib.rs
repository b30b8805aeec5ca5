//! ringwire-proto: ringwire's sans-IO wire protocol.
//!
//! This crate is pure logic: no sockets, no io_uring, no clock reads. Bytes
//! and the current time go in; frames, events, bytes to send and deadlines
//! come out. That makes it testable with two in-memory peers on virtual time,
//! fuzzable, and checkable under miri.
//!
//! # Layers, bottom up
//!
//! - **Frames** ([`header`], [`encoder`], [`decoder`]): a fixed 32-byte
//!   header ([`FrameHeader`], byte layout in `docs/WIRE.md`) and a payload
//!   padded to 16 bytes, so payloads in an aligned receive buffer are aligned
//!   for rkyv. [`Decoder`] turns arbitrary chunks into [`Frame`]s (borrowed
//!   when the frame lies in one chunk, assembled once otherwise) and
//!   [`BulkPiece`]s. The encoders write into caller-provided `&mut [u8]`
//!   (the runtime's registered send buffers).
//! - **Messages** ([`Message`], [`Schema`], [`access()`]): user types derive
//!   rkyv's `Archive`/`Serialize` and carry a stable type id. Peer bytes are
//!   validated once at ingress ([`Schema::validate`]); the unchecked
//!   [`access_trusted`] path is for bytes this process wrote.
//! - **Session** ([`Session`]): handshake with schema fingerprint, sequence
//!   numbers, acknowledgements and resume, heartbeats and idle timeout,
//!   orderly close, request/reply and streams, two-phase bulk.
//!
//! # Driving a session
//!
//! In the order a transport calls them (quinn-proto style):
//!
//! 1. create: [`Session::connect`] (the dialing side) or [`Session::accept`];
//! 2. feed received bytes: [`Session::handle_input`] until it returns no
//!    message; answer bulk offers with [`Session::accept_bulk`] /
//!    [`Session::discard_bulk`];
//! 3. produce data frames: [`Session::send`], [`Session::call`],
//!    [`Session::reply`], [`Session::send_bulk`] + [`Session::encode_bulk_segment`];
//! 4. drain control frames with [`Session::poll_transmit`] and events with
//!    [`Session::poll_event`];
//! 5. arm a timer for [`Session::poll_timeout`] and call
//!    [`Session::handle_timeout`] when it fires.

pub mod access;
pub mod bulk;
mod close_reason;
pub mod control;
pub mod decoder;
pub mod encoder;
pub mod error;
pub mod format;
pub mod header;
pub mod hello;
pub mod message;
mod mismatch;
pub mod replay;
pub mod schema;
pub mod session;
pub mod time;
pub mod writer;

/// The rkyv this crate is built against; derive through it
/// (`#[rkyv(crate = ringwire_proto::rkyv)]`) to be sure the versions match.
pub use rkyv;

pub use access::{access, access_trusted, PAYLOAD_ALIGN};
pub use bulk::{bulk_body, BulkSizes};
pub use control::CloseReason;
pub use decoder::{BulkPiece, Decoded, Decoder, Frame, Item};
pub use encoder::{encode_bulk_header, encode_frame, encode_message, encode_message_with_bulk};
pub use error::ProtoError;
pub use format::ArchiveFormat;
pub use header::{frame_len, padded_len, FrameHeader, FrameKind, HEADER_LEN, WIRE_VERSION};
pub use hello::{Hello, Mismatch};
pub use message::{type_id, Message};

pub use replay::ReplayBuffer;
pub use schema::Schema;
pub use session::{
    capabilities, peek_hello, BulkHeader, BulkTarget, CallId, Config, Event, Input, LostReason,
    PeerInfo, Received, ReplyTo, Role, Sent, Session, SessionState, StreamId,
};
pub use time::Instant;
