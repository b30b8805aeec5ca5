//! kv-node's typed messages: the operations a [`KvClient`](super::client::KvClient)
//! calls and their replies, and the replication stream between a primary
//! and its replicas. All are rkyv archives carried by ringwire's typed
//! transports, validated once on arrival and read in place.
//!
//! Two protocols, each with its own [`Config`] (the handshake checks that
//! both sides list the same types):
//!
//! - **operations** ([`typed_config`]): the client calls with a
//!   [`KvRequest`] and gets a [`KvReply`] (`Connection::call`; many calls
//!   may be in flight on one connection);
//! - **replication** ([`replication_config`]): the replica sends one
//!   [`ReplHello`]; the primary answers with a full resync ([`ReplBegin`],
//!   then per shard [`ReplSnapshot`] chunks and a [`ReplSnapshotDone`]) and
//!   then streams every applied write as [`ReplOps`], in order per shard
//!   (see [`super::replica`] for the whole design).
//!
//! A batch of changes ([`Changes`]) is a list of fixed-size [`OpRec`]s and
//! one arena holding their keys and values back to back, in op order: one
//! allocation per batch rather than two per change, copied as it is into
//! the send buffer. [`super::journal`] builds and reads them.

use std::time::Duration;

use ringwire::proto::rkyv;
use ringwire::transports::{type_id, Config, Message};

/// Largest typed request or reply payload (key and value with their
/// framing): 64 MiB. Each side announces it in the handshake; a frame that
/// spans receive buffers is received into a buffer of up to this size.
pub const MAX_TYPED_PAYLOAD: u32 = 64 << 20;

/// Largest replication message: 1.5 GiB, room for one change carrying a
/// key and a value of Redis's largest size (512 MiB each). Changes are
/// otherwise packed into batches of about [`super::journal::CHUNK_BYTES`].
pub const MAX_REPLICATION_PAYLOAD: u32 = 1536 << 20;

pub use ops::*;

/// The operations' messages. rkyv's derive leaves the fields of the
/// archived and resolver enums' variants undocumented (they mirror the
/// native ones, documented here): hence their own module.
mod ops {
    #![allow(missing_docs)]

    use ringwire::proto::rkyv;
    use ringwire::transports::{type_id, Message};

    /// An operation of kv-node's typed protocol, sent with `Connection::call`;
    /// the reply is a [`KvReply`].
    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    #[rkyv(crate = rkyv)]
    pub enum KvRequest {
        /// The value of `key`: [`KvReply::Value`].
        Get {
            /// The key.
            key: Vec<u8>,
        },
        /// Sets `key` to `value`, expiring after `ttl_ms` milliseconds if given
        /// (at least 1): [`KvReply::Stored`].
        Put {
            /// The key.
            key: Vec<u8>,
            /// The value.
            value: Vec<u8>,
            /// Time to live in milliseconds; `None` never expires.
            ttl_ms: Option<u64>,
        },
        /// Compare-and-set: replaces the value of `key` with `new` if it is
        /// `expected` now (`None`: only if the key is absent):
        /// [`KvReply::Swapped`] or [`KvReply::Mismatch`]. A replaced value
        /// keeps its time to live; a created key has none.
        Cas {
            /// The key.
            key: Vec<u8>,
            /// The value it must have, or `None` for absent.
            expected: Option<Vec<u8>>,
            /// The new value.
            new: Vec<u8>,
        },
        /// Adds `delta` to the decimal integer value of `key` (absent counts as
        /// 0): [`KvReply::Int`] with the sum. The key keeps its time to live.
        Incr {
            /// The key.
            key: Vec<u8>,
            /// The amount added (negative to decrement).
            delta: i64,
        },
        /// Deletes `key`: [`KvReply::Deleted`].
        Delete {
            /// The key.
            key: Vec<u8>,
        },
    }

    impl Message for KvRequest {
        const TYPE_ID: u32 = type_id("ringwire.kv.Request");
        const NAME: &'static str = "ringwire.kv.Request";
    }

    impl KvRequest {
        /// The key the request is about.
        pub fn key(&self) -> &[u8] {
            match self {
                KvRequest::Get { key }
                | KvRequest::Put { key, .. }
                | KvRequest::Cas { key, .. }
                | KvRequest::Incr { key, .. }
                | KvRequest::Delete { key } => key,
            }
        }
    }

    /// Why the node refused or failed an operation.
    #[derive(
        Debug, Clone, Copy, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
    )]
    #[rkyv(crate = rkyv, derive(Debug, Clone, Copy, PartialEq, Eq))]
    pub enum ErrorKind {
        /// The value is not a 64-bit signed decimal integer (increment).
        NotInteger,
        /// The increment would leave the 64-bit signed range.
        Overflow,
        /// The node is a replica: it serves reads only.
        ReadOnly,
        /// The request is not valid (a time to live of 0, or one so large the
        /// deadline overflows; a message that is not a request).
        BadRequest,
        /// The core owning the key could not answer (it is shutting down).
        Unavailable,
    }

    impl std::fmt::Display for ErrorKind {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(match self {
                ErrorKind::NotInteger => "not an integer",
                ErrorKind::Overflow => "overflow",
                ErrorKind::ReadOnly => "read only",
                ErrorKind::BadRequest => "bad request",
                ErrorKind::Unavailable => "unavailable",
            })
        }
    }

    impl ArchivedErrorKind {
        /// The native value.
        pub fn to_native(self) -> ErrorKind {
            match self {
                ArchivedErrorKind::NotInteger => ErrorKind::NotInteger,
                ArchivedErrorKind::Overflow => ErrorKind::Overflow,
                ArchivedErrorKind::ReadOnly => ErrorKind::ReadOnly,
                ArchivedErrorKind::BadRequest => ErrorKind::BadRequest,
                ArchivedErrorKind::Unavailable => ErrorKind::Unavailable,
            }
        }
    }

    /// The answer to a [`KvRequest`].
    #[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    #[rkyv(crate = rkyv)]
    pub enum KvReply {
        /// [`KvRequest::Get`]: the value, or `None` if the key is absent.
        Value(Option<Vec<u8>>),
        /// [`KvRequest::Put`]: written.
        Stored,
        /// [`KvRequest::Cas`]: the value was as expected and was replaced.
        Swapped,
        /// [`KvRequest::Cas`]: the value was not as expected; this is what it
        /// is (`None`: absent). Nothing was written.
        Mismatch(Option<Vec<u8>>),
        /// [`KvRequest::Incr`]: the sum.
        Int(i64),
        /// [`KvRequest::Delete`]: whether the key existed.
        Deleted(bool),
        /// The operation failed; nothing was written.
        Error {
            /// Why, as a kind a program can match.
            kind: ErrorKind,
            /// Why, for people (Redis's wording where there is one).
            message: String,
        },
    }

    impl Message for KvReply {
        const TYPE_ID: u32 = type_id("ringwire.kv.Reply");
        const NAME: &'static str = "ringwire.kv.Reply";
    }
}

/// One change in a [`Changes`] batch. Its key, then its value, lie in the
/// batch's arena right after those of the changes before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct OpRec {
    /// [`OpRec::PUT`], [`OpRec::PUT_EXPIRING`], [`OpRec::DELETE`] or
    /// [`OpRec::CLEAR`].
    pub kind: u8,
    /// Key length in bytes (0 for a clear).
    pub key_len: u64,
    /// Value length in bytes (0 unless a put).
    pub value_len: u64,
    /// The key's deadline in milliseconds since the Unix epoch
    /// ([`OpRec::PUT_EXPIRING`] only; 0 otherwise).
    pub deadline: u64,
}

impl OpRec {
    /// The key now holds the value and never expires.
    pub const PUT: u8 = 1;
    /// The key now holds the value and expires at `deadline`.
    pub const PUT_EXPIRING: u8 = 2;
    /// The key is gone.
    pub const DELETE: u8 = 3;
    /// Every key of the shard is gone.
    pub const CLEAR: u8 = 4;
}

/// A batch of changes: each one's [`OpRec`], and their keys and values back
/// to back in `arena` (see the [module docs](self)).
#[derive(Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize)]
#[rkyv(crate = rkyv)]
pub struct Changes {
    /// The changes, in the order they were applied.
    pub ops: Vec<OpRec>,
    /// Their keys and values.
    pub arena: Vec<u8>,
}

/// Replica to primary: "stream to me". Sent once per session: on the first
/// connection and after the primary lost the session (it restarted), so
/// that a new session starts with a full resync.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize)]
#[rkyv(crate = rkyv)]
pub struct ReplHello {
    /// The replica's number of shards (for the primary's logs).
    pub shards: u32,
}

impl Message for ReplHello {
    const TYPE_ID: u32 = type_id("ringwire.kv.ReplHello");
    const NAME: &'static str = "ringwire.kv.ReplHello";
}

/// Primary to replica: a full resync starts. The replica drops every key;
/// what the primary holds follows as snapshots, one per primary shard.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize)]
#[rkyv(crate = rkyv)]
pub struct ReplBegin {
    /// The primary's epoch: a random number drawn when its process
    /// started (a restarted primary has another).
    pub epoch: u64,
    /// The primary's number of shards; snapshots and streams are numbered
    /// `0..shards`.
    pub shards: u32,
}

impl Message for ReplBegin {
    const TYPE_ID: u32 = type_id("ringwire.kv.ReplBegin");
    const NAME: &'static str = "ringwire.kv.ReplBegin";
}

/// Primary to replica: part of primary shard `shard`'s snapshot (puts).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize)]
#[rkyv(crate = rkyv)]
pub struct ReplSnapshot {
    /// The primary shard.
    pub shard: u32,
    /// Keys with their values and deadlines.
    pub changes: Changes,
}

impl Message for ReplSnapshot {
    const TYPE_ID: u32 = type_id("ringwire.kv.ReplSnapshot");
    const NAME: &'static str = "ringwire.kv.ReplSnapshot";
}

/// Primary to replica: primary shard `shard`'s snapshot is complete; it
/// holds every write up to and including sequence number `seq`, and the
/// shard's stream goes on at `seq + 1`.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize)]
#[rkyv(crate = rkyv)]
pub struct ReplSnapshotDone {
    /// The primary shard.
    pub shard: u32,
    /// The last sequence number the snapshot includes.
    pub seq: u64,
}

impl Message for ReplSnapshotDone {
    const TYPE_ID: u32 = type_id("ringwire.kv.ReplSnapshotDone");
    const NAME: &'static str = "ringwire.kv.ReplSnapshotDone";
}

/// Primary to replica: writes applied on primary shard `shard`, numbered
/// `first_seq`, `first_seq + 1`, ... in the order they were applied.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize)]
#[rkyv(crate = rkyv)]
pub struct ReplOps {
    /// The primary shard.
    pub shard: u32,
    /// Sequence number of the first change.
    pub first_seq: u64,
    /// The changes, as the keys stand after each write.
    pub changes: Changes,
}

impl Message for ReplOps {
    const TYPE_ID: u32 = type_id("ringwire.kv.ReplOps");
    const NAME: &'static str = "ringwire.kv.ReplOps";
}

/// The configuration of typed-operation connections, client and server.
pub fn typed_config() -> Config {
    // Two distinct, registered-once types: the schema cannot refuse them.
    Config::with_types::<(KvRequest, KvReply)>()
        .unwrap_or_else(|e| unreachable!("kv-node's typed schema: {e}"))
        .max_payload(MAX_TYPED_PAYLOAD)
}

/// The configuration of replication connections, before the side's own
/// settings (the primary adds [`Config::resume`], the replica
/// [`Config::reconnect`]).
pub fn replication_config() -> Config {
    Config::with_types::<(
        ReplHello,
        ReplBegin,
        ReplSnapshot,
        ReplSnapshotDone,
        ReplOps,
    )>()
    .unwrap_or_else(|e| unreachable!("kv-node's replication schema: {e}"))
    .max_payload(MAX_REPLICATION_PAYLOAD)
    // A replica far behind may hold many megabytes in flight.
    .send_queue(65_536, 64 << 20)
    .recv_queue(65_536, 64 << 20)
    .call_timeout(Some(Duration::from_secs(30)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_are_built() {
        // Each registers distinct type ids (a clash would panic here).
        assert_eq!(typed_config().schema().type_ids().len(), 2);
        assert_eq!(replication_config().schema().type_ids().len(), 5);
    }

    #[test]
    fn requests_name_their_key() {
        let key = b"k".to_vec();
        for r in [
            KvRequest::Get { key: key.clone() },
            KvRequest::Put {
                key: key.clone(),
                value: vec![],
                ttl_ms: None,
            },
            KvRequest::Cas {
                key: key.clone(),
                expected: None,
                new: vec![],
            },
            KvRequest::Incr {
                key: key.clone(),
                delta: 1,
            },
            KvRequest::Delete { key: key.clone() },
        ] {
            assert_eq!(r.key(), b"k");
        }
    }
}
