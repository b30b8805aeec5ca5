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
///
/// Start from [`Config::default`] and change what you need with the
/// setters, which take and return the config:
///
/// ```
/// use std::time::Duration;
/// use ringwire_proto::Config;
///
/// let config = Config::default()
///     .node_id(7)
///     .max_payload(64 * 1024)
///     .heartbeat_interval(Duration::from_millis(250));
/// assert_eq!(config.node_id, 7);
/// ```
///
/// The fields stay readable (and writable on a value you hold); the struct is
/// `#[non_exhaustive]` so that knobs can be added without breaking callers.
#[derive(Debug, Clone)]
#[non_exhaustive]
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

/// Setters, one per knob (see the field docs for meaning, default and
/// memory cost).
impl Config {
    /// This node's id, sent in the hello. See [`Config::node_id`](#structfield.node_id).
    pub fn node_id(mut self, value: u64) -> Self {
        self.node_id = value;
        self
    }

    /// Capabilities this side supports. See [`Config::capabilities`](#structfield.capabilities).
    pub fn capabilities(mut self, value: u32) -> Self {
        self.capabilities = value;
        self
    }

    /// Capabilities the peer must support, or the handshake is refused. See [`Config::required_capabilities`](#structfield.required_capabilities).
    pub fn required_capabilities(mut self, value: u32) -> Self {
        self.required_capabilities = value;
        self
    }

    /// Largest frame payload accepted (memory: a spanning frame is assembled into up to this many bytes). See [`Config::max_payload`](#structfield.max_payload).
    pub fn max_payload(mut self, value: u32) -> Self {
        self.max_payload = value;
        self
    }

    /// Largest bulk segment accepted. See [`Config::max_bulk_segment`](#structfield.max_bulk_segment).
    pub fn max_bulk_segment(mut self, value: u32) -> Self {
        self.max_bulk_segment = value;
        self
    }

    /// Most segments in one bulk message. See [`Config::max_bulk_segments`](#structfield.max_bulk_segments).
    pub fn max_bulk_segments(mut self, value: u32) -> Self {
        self.max_bulk_segments = value;
        self
    }

    /// Heartbeat after this long without sending. See [`Config::heartbeat_interval`](#structfield.heartbeat_interval).
    pub fn heartbeat_interval(mut self, value: Duration) -> Self {
        self.heartbeat_interval = value;
        self
    }

    /// Connection lost after this long without receiving. See [`Config::idle_timeout`](#structfield.idle_timeout).
    pub fn idle_timeout(mut self, value: Duration) -> Self {
        self.idle_timeout = value;
        self
    }

    /// Connection lost if the peer's hello takes longer. See [`Config::handshake_timeout`](#structfield.handshake_timeout).
    pub fn handshake_timeout(mut self, value: Duration) -> Self {
        self.handshake_timeout = value;
        self
    }

    /// Give up waiting for the close-ack after this long. See [`Config::close_timeout`](#structfield.close_timeout).
    pub fn close_timeout(mut self, value: Duration) -> Self {
        self.close_timeout = value;
        self
    }

    /// Acknowledge after this many received sequenced frames. See [`Config::ack_every`](#structfield.ack_every).
    pub fn ack_every(mut self, value: u32) -> Self {
        self.ack_every = value;
        self
    }

    /// ...or when the oldest unacknowledged frame is this old. See [`Config::ack_delay`](#structfield.ack_delay).
    pub fn ack_delay(mut self, value: Duration) -> Self {
        self.ack_delay = value;
        self
    }

    /// Fail calls without a reply after this long (`None`: wait forever). See [`Config::call_timeout`](#structfield.call_timeout).
    pub fn call_timeout(mut self, value: Option<Duration>) -> Self {
        self.call_timeout = value;
        self
    }
}
