//! What differs between two incompatible peers ([`Mismatch`]), as found by
//! the handshake (`hello::check`) and carried by
//! [`ProtoError::Incompatible`](crate::ProtoError::Incompatible).
//!
//! A leaf module (it imports only [`ArchiveFormat`]), so that the error type
//! can name it without importing the handshake.

use core::fmt;

use crate::format::ArchiveFormat;

/// Everything that differs between two incompatible peers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mismatch {
    /// `(ours, theirs)` if the protocol versions differ.
    pub protocol_version: Option<(u16, u16)>,
    /// `(ours, theirs)` if the rkyv formats differ.
    pub format: Option<(ArchiveFormat, ArchiveFormat)>,
    /// Capability bits we require that the peer lacks.
    pub missing_capabilities: u32,
    /// Message types we have and the peer lacks: `(id, name)`.
    pub only_local: Vec<(u32, &'static str)>,
    /// Message type ids the peer has and we lack.
    pub only_peer: Vec<u32>,
}

impl Mismatch {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        *self == Mismatch::default()
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some((ours, theirs)) = self.protocol_version {
            parts.push(format!("protocol version: ours {ours}, peer {theirs}"));
        }
        if let Some((ours, theirs)) = self.format {
            parts.push(format!("rkyv format: ours {ours}, peer {theirs}"));
        }
        if self.missing_capabilities != 0 {
            parts.push(format!(
                "peer lacks required capabilities {:#x}",
                self.missing_capabilities
            ));
        }
        if !self.only_local.is_empty() {
            let list: Vec<String> = self
                .only_local
                .iter()
                .map(|(id, name)| format!("{name} ({id:#010x})"))
                .collect();
            parts.push(format!("message types only here: {}", list.join(", ")));
        }
        if !self.only_peer.is_empty() {
            let list: Vec<String> = self
                .only_peer
                .iter()
                .map(|id| format!("{id:#010x}"))
                .collect();
            parts.push(format!("message types only at peer: {}", list.join(", ")));
        }
        if parts.is_empty() {
            f.write_str("no difference")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}
