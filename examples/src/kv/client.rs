//! [`KvClient`]: kv-node's typed operations over a ringwire connection.
//!
//! Each method is one call ([`KvRequest`] out, [`KvReply`] back, matched by
//! call id), so any number may be in flight on one client: start several
//! from different tasks of its core (clones share the connection), or join
//! them. The client belongs to the core it connected on, like its
//! [`Connection`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), ringwire_examples::kv::client::KvError> {
//! use ringwire::transports::Endpoint;
//! use ringwire_examples::kv::client::{CasOutcome, KvClient};
//!
//! let endpoint: Endpoint = "tcp://127.0.0.1:7380".parse().unwrap();
//! let kv = KvClient::connect(&endpoint).await?;
//! kv.put(b"greeting", b"hello", None).await?;
//! assert_eq!(kv.get(b"greeting").await?.as_deref(), Some(&b"hello"[..]));
//! assert_eq!(kv.cas(b"greeting", Some(b"hello"), b"bye").await?, CasOutcome::Swapped);
//! assert_eq!(kv.incr(b"visits", 1).await?, 1);
//! assert!(kv.delete(b"greeting").await?);
//! kv.close().await;
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use ringwire::transports::{self, connect, Connection, Endpoint, Msg};

use super::messages::{typed_config, ArchivedKvReply, ErrorKind, KvReply, KvRequest};

/// What a [`KvClient`] call can fail with.
#[derive(Clone, Debug)]
pub enum KvError {
    /// The connection failed (or the call timed out); whether the
    /// operation ran is unknown if it was a write.
    Transport(transports::Error),
    /// The node refused or failed the operation; nothing was written.
    Node {
        /// Why, for programs.
        kind: ErrorKind,
        /// Why, for people.
        message: String,
    },
    /// The node answered with a reply that does not answer the request
    /// (a broken or foreign node).
    UnexpectedReply {
        /// The operation.
        request: &'static str,
        /// What came back.
        reply: String,
    },
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::Transport(e) => write!(f, "{e}"),
            KvError::Node { message, .. } => write!(f, "{message}"),
            KvError::UnexpectedReply { request, reply } => {
                write!(f, "the node answered a {request} with {reply}")
            }
        }
    }
}

impl std::error::Error for KvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KvError::Transport(e) => Some(e),
            _ => None,
        }
    }
}

impl From<transports::Error> for KvError {
    fn from(e: transports::Error) -> KvError {
        KvError::Transport(e)
    }
}

/// What a compare-and-set did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The value was as expected and has been replaced.
    Swapped,
    /// It was not; this is the value (`None`: absent). Nothing was written.
    Mismatch(Option<Vec<u8>>),
}

/// kv-node's typed operations on one connection; see the [module
/// docs](self). Cheap to clone (clones share the connection).
#[derive(Clone, Debug)]
pub struct KvClient {
    conn: Connection,
}

impl KvClient {
    /// Connects to a node's typed listener (`--listen-typed`) from the
    /// current core.
    ///
    /// # Panics
    ///
    /// Off a ringwire core thread.
    pub async fn connect(endpoint: &Endpoint) -> Result<KvClient, KvError> {
        Ok(KvClient::new(connect(endpoint, &typed_config()).await?))
    }

    /// Wraps a connection made with [`typed_config`] (or one like it, with
    /// its own timeouts or reconnect policy).
    pub fn new(conn: Connection) -> KvClient {
        KvClient { conn }
    }

    /// The connection underneath.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Closes the connection in an orderly way (calls in flight finish).
    pub async fn close(&self) {
        let _ = self.conn.close().await;
    }

    async fn call(&self, request: &KvRequest) -> Result<Msg<KvReply>, KvError> {
        let reply = self.conn.call::<KvRequest, KvReply>(request).await?;
        if let ArchivedKvReply::Error { kind, message } = &*reply {
            return Err(KvError::Node {
                kind: kind.to_native(),
                message: message.as_str().to_string(),
            });
        }
        Ok(reply)
    }

    /// The value of `key`, or `None` if it is absent.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let reply = self.call(&KvRequest::Get { key: key.to_vec() }).await?;
        match &*reply {
            ArchivedKvReply::Value(v) => Ok(v.as_ref().map(|v| v.as_slice().to_vec())),
            other => Err(unexpected("get", other)),
        }
    }

    /// Sets `key` to `value`, expiring after `ttl` if given (at least 1 ms;
    /// rounded down to milliseconds).
    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        let ttl_ms = ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        let request = KvRequest::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            ttl_ms,
        };
        match &*self.call(&request).await? {
            ArchivedKvReply::Stored => Ok(()),
            other => Err(unexpected("put", other)),
        }
    }

    /// Replaces the value of `key` with `new` if it is `expected` now
    /// (`None`: only if the key is absent).
    pub async fn cas(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<CasOutcome, KvError> {
        let request = KvRequest::Cas {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.to_vec(),
        };
        match &*self.call(&request).await? {
            ArchivedKvReply::Swapped => Ok(CasOutcome::Swapped),
            ArchivedKvReply::Mismatch(current) => Ok(CasOutcome::Mismatch(
                current.as_ref().map(|v| v.as_slice().to_vec()),
            )),
            other => Err(unexpected("cas", other)),
        }
    }

    /// Adds `delta` to the integer value of `key` (absent counts as 0);
    /// returns the sum.
    pub async fn incr(&self, key: &[u8], delta: i64) -> Result<i64, KvError> {
        let request = KvRequest::Incr {
            key: key.to_vec(),
            delta,
        };
        match &*self.call(&request).await? {
            ArchivedKvReply::Int(n) => Ok(n.to_native()),
            other => Err(unexpected("incr", other)),
        }
    }

    /// Deletes `key`; whether it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, KvError> {
        let request = KvRequest::Delete { key: key.to_vec() };
        match &*self.call(&request).await? {
            ArchivedKvReply::Deleted(existed) => Ok(*existed),
            other => Err(unexpected("delete", other)),
        }
    }
}

fn unexpected(request: &'static str, reply: &ArchivedKvReply) -> KvError {
    let reply = match reply {
        ArchivedKvReply::Value(_) => "a value",
        ArchivedKvReply::Stored => "stored",
        ArchivedKvReply::Swapped => "swapped",
        ArchivedKvReply::Mismatch(_) => "a mismatch",
        ArchivedKvReply::Int(_) => "an integer",
        ArchivedKvReply::Deleted(_) => "deleted",
        ArchivedKvReply::Error { .. } => "an error",
    };
    KvError::UnexpectedReply {
        request,
        reply: reply.to_string(),
    }
}
