//! Why a connection is being closed ([`CloseReason`]), carried in a close
//! frame (payload layout in `control`).
//!
//! A leaf module, so that the error type can name it without importing the
//! control-frame codecs.

/// Why a connection is being closed, carried in a close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The application closed the session; nothing went wrong.
    Normal,
    /// The handshake found the peers incompatible.
    Incompatible,
    /// The sender received bytes it could not accept.
    ProtocolError,
    /// A reason code this build does not know.
    Other(u32),
}

impl CloseReason {
    /// The wire code.
    pub fn code(self) -> u32 {
        match self {
            CloseReason::Normal => 0,
            CloseReason::Incompatible => 1,
            CloseReason::ProtocolError => 2,
            CloseReason::Other(code) => code,
        }
    }

    /// Parses a wire code.
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => CloseReason::Normal,
            1 => CloseReason::Incompatible,
            2 => CloseReason::ProtocolError,
            other => CloseReason::Other(other),
        }
    }
}
