//! The transports layer's error type: one enum for everything `listen`,
//! `connect` and a [`Connection`](crate::Connection) can report.
//!
//! It is `Clone` (I/O and protocol errors are shared behind an `Arc`) so
//! that every task waiting on a connection that failed can be told why.
//! Errors a peer causes ([`Error::Protocol`], [`Error::Refused`],
//! [`Error::Rejected`], [`Error::Closed`] by the peer) are kept apart from
//! misuse by the caller ([`Error::WrongType`], [`Error::Usage`]).

use std::sync::Arc;
use std::time::Duration;

use ringwire_proto::{Mismatch, ProtoError};

/// What [`Error::Timeout`] names for a call without a reply in time: the
/// one timeout that costs the call only, not the connection.
pub(crate) const CALL_TIMEOUT: &str = "call";

/// Everything that can go wrong in the transports layer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint string does not parse, or names something unusable.
    #[error("endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The endpoint's scheme exists but this build does not serve it.
    #[error("{scheme}:// is not enabled in this build{hint}")]
    NotEnabled {
        /// The scheme.
        scheme: &'static str,
        /// How to get it (a feature to enable), or empty.
        hint: &'static str,
    },
    /// A system call failed (socket, bind, connect, send, receive).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the endpoint.
        context: String,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The peer broke the wire protocol; the connection is closed.
    #[error("protocol error: {0}")]
    Protocol(#[source] Arc<ProtoError>),
    /// The handshake found the two sides incompatible; says what differs.
    #[error("handshake refused: {0}")]
    Refused(Arc<Mismatch>),
    /// One received message was dropped: its archive failed validation or
    /// its type is unknown. The connection goes on.
    #[error("message rejected: {0}")]
    Rejected(#[source] Arc<ProtoError>),
    /// The message is of another type than the one asked for (use
    /// `recv_any` on connections that carry several types). The message is
    /// consumed; the connection goes on.
    #[error("expected a {expected} message, got type id {found:#010x}")]
    WrongType {
        /// Name of the type asked for.
        expected: &'static str,
        /// Type id of the message that arrived.
        found: u32,
    },
    /// The connection is closed: orderly (by either side), lost, or failed
    /// earlier with the error in `reason`.
    #[error("connection closed: {reason}")]
    Closed {
        /// Why.
        reason: Arc<str>,
    },
    /// A deadline passed (a call's reply, a handshake, a close).
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// The connection's send queue is at its high-water mark and its
    /// back-pressure policy is to fail. Nothing was queued; the caller still
    /// holds the message.
    #[error("send queue full: {queued_messages} messages / {queued_bytes} bytes queued")]
    BackPressure {
        /// Messages queued at the time.
        queued_messages: usize,
        /// Bytes queued at the time.
        queued_bytes: usize,
    },
    /// The caller used the API in a way it does not allow (says how).
    #[error("{0}")]
    Usage(&'static str),
    /// A message does not fit one datagram (`udp://` neither fragments nor
    /// reassembles); nothing was sent.
    #[error("the message needs a datagram of at least {needed} bytes; the limit is {limit}")]
    DatagramTooLarge {
        /// A lower bound of the datagram's length.
        needed: usize,
        /// The socket's largest datagram.
        limit: usize,
    },
    /// `tls://`: the TLS handshake or record layer failed on this connection,
    /// or this side's TLS settings are unusable; `kind` says which.
    #[error("TLS {kind}: {detail}")]
    Tls {
        /// What failed.
        kind: TlsFailure,
        /// The details (the name checked, the alert received, the file...).
        detail: Arc<str>,
    },
}

/// What went wrong in a [`Error::Tls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The peer's certificate does not chain to a trusted authority (unknown
    /// issuer, bad signature, expired, not yet valid, revoked, wrong usage).
    UntrustedCertificate,
    /// The server's certificate is valid but not for the name this side
    /// asked for (`servername=`, or the endpoint's host).
    WrongName,
    /// Mutual TLS: the client presented no certificate although the server
    /// requires one.
    NoClientCertificate,
    /// The peer ended the connection with a fatal TLS alert (it refused this
    /// side's certificate, or found nothing in common); the detail names the
    /// alert.
    PeerAlert,
    /// The handshake failed otherwise: the peer does not speak TLS 1.3, sent
    /// malformed messages, has no cipher suite in common, or did not finish
    /// in time.
    Handshake,
    /// After the handshake: a record failed authentication, or the peer broke
    /// the TLS record protocol.
    Record,
    /// This side's TLS settings are unusable: a certificate, key or CA file
    /// missing or invalid, no trust roots, no certificate for a listener.
    Settings,
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsFailure::UntrustedCertificate => "untrusted certificate",
            TlsFailure::WrongName => "certificate for the wrong name",
            TlsFailure::NoClientCertificate => "client certificate required",
            TlsFailure::PeerAlert => "refused by the peer",
            TlsFailure::Handshake => "handshake failed",
            TlsFailure::Record => "record protocol error",
            TlsFailure::Settings => "settings unusable",
        })
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    pub(crate) fn tls(kind: TlsFailure, detail: impl Into<Arc<str>>) -> Error {
        Error::Tls {
            kind,
            detail: detail.into(),
        }
    }

    pub(crate) fn closed(reason: impl Into<Arc<str>>) -> Error {
        Error::Closed {
            reason: reason.into(),
        }
    }

    /// Sorts a session error into the variant that says whose fault it is.
    pub(crate) fn from_proto(err: ProtoError) -> Error {
        if err.is_rejection() {
            return Error::Rejected(Arc::new(err));
        }
        match err {
            ProtoError::Incompatible(m) => Error::Refused(Arc::from(m)),
            other => Error::Protocol(Arc::new(other)),
        }
    }

    /// Whether the connection this error came from is finished (no further
    /// operation on it can succeed). A [`Error::Timeout`] is, except a
    /// call's: the idle and handshake timeouts end the connection.
    pub fn is_connection_fatal(&self) -> bool {
        match self {
            Error::Timeout { what, .. } => *what != CALL_TIMEOUT,
            _ => matches!(
                self,
                Error::Io { .. }
                    | Error::Protocol(_)
                    | Error::Refused(_)
                    | Error::Closed { .. }
                    | Error::Tls { .. }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_calls_timeout_leaves_the_connection_alive() {
        let call = Error::Timeout {
            what: CALL_TIMEOUT,
            after: Duration::from_secs(1),
        };
        let idle = Error::Timeout {
            what: "the idle timeout (nothing received from the peer)",
            after: Duration::from_secs(5),
        };
        assert!(!call.is_connection_fatal());
        assert!(idle.is_connection_fatal());
        assert!(!Error::Usage("x").is_connection_fatal());
    }
}
