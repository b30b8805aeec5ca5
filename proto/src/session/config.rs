//! Session configuration and roles.

use core::time::Duration;

/// Capability bits exchanged in the hello.
pub mod capabilities {
    /// Two-phase bulk transfers.
    pub const BULK: u32 = 0x0001;
    /// Session resume after a cut.
    pub const RESUME: u32 = 0x0002;
    /// Everything this build implements.
    pub const ALL: u32 = BULK | RESUME;
}

/// Which end of the connection this session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The dialing side; chooses the session id.
    Client,
    /// The accepting side.
    Server,
}

/// Knobs of a session. Memory costs are per connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id, sent in the hello.
    pub node_id: u64,
    /// Capabilities this side supports (default [`capabilities::ALL`]).
    pub capabilities: u32,
    /// Capabilities the peer must support, or the handshake is refused
    /// (default none).
    pub required_capabilities: u32,
    /// Largest frame payload accepted. Memory: a frame spanning receive
    /// buffers is assembled into a buffer of up to this size (default 1 MiB).
    pub max_payload: u32,
    /// Largest bulk segment accepted. Segments are never buffered by the
    /// session, so this costs no memory here; it bounds what the receiver is
    /// asked to provide (default 1 GiB).
    pub max_bulk_segment: u32,
    /// Most segments in one bulk message (default 64).
    pub max_bulk_segments: u32,
    /// Send a heartbeat when nothing was sent for this long (default 1 s).
    pub heartbeat_interval: Duration,
    /// Declare the connection lost when nothing was received for this long
    /// (default 5 s; keep it a few heartbeat intervals).
    pub idle_timeout: Duration,
    /// Declare the connection lost if the peer's hello does not arrive in
    /// time (default 5 s).
    pub handshake_timeout: Duration,
    /// Give up waiting for the peer's close-ack after this long (default 5 s).
    pub close_timeout: Duration,
    /// Acknowledge after this many received sequenced frames (default 32).
    pub ack_every: u32,
    /// ...or when the oldest unacknowledged frame is this old (default 5 ms).
    pub ack_delay: Duration,
    /// Fail calls without a reply after this long; `None` waits forever
    /// (default 30 s). Memory: one map entry per outstanding call.
    pub call_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 0,
            capabilities: capabilities::ALL,
            required_capabilities: 0,
            max_payload: 1 << 20,
            max_bulk_segment: 1 << 30,
            max_bulk_segments: 64,
            heartbeat_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
            ack_every: 32,
            ack_delay: Duration::from_millis(5),
            call_timeout: Some(Duration::from_secs(30)),
        }
    }
}
