//! kv-node's typed operations on the shards: a [`KvRequest`] becomes the
//! [`ShardOp`] its key's shard runs (through the same execution and
//! forwarding as the Redis commands, `kv::dispatch` and `kv::pipeline`),
//! and that shard's [`ShardReply`] becomes the [`KvReply`].
//!
//! ```
//! use ringwire_examples::kv::dispatch::execute;
//! use ringwire_examples::kv::messages::{KvReply, KvRequest};
//! use ringwire_examples::kv::store::Store;
//! use ringwire_examples::kv::typed::{plan, reply, Plan, View};
//!
//! let mut store = Store::new();
//! let put = KvRequest::Put { key: b"n".to_vec(), value: b"41".to_vec(), ttl_ms: None };
//! let incr = KvRequest::Incr { key: b"n".to_vec(), delta: 1 };
//! for (request, expected) in [(put, KvReply::Stored), (incr, KvReply::Int(42))] {
//!     match plan(View::of(&request), 1, false, 0) {
//!         Plan::Run { shard: 0, op, kind } => {
//!             assert_eq!(reply(kind, execute(&mut store, op, 0)), expected);
//!         }
//!         other => panic!("{other:?}"),
//!     }
//! }
//! ```

use std::borrow::Cow;

use super::dispatch::{ShardOp, ShardReply};
use super::messages::{ArchivedKvRequest, ErrorKind, KvReply, KvRequest};
use super::shard::shard_of;
use super::store::{Expiry, SetOptions, StoreError};

/// A request's fields, borrowed from its archived form (as received) or
/// from a native value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View<'a> {
    /// [`KvRequest::Get`].
    Get {
        /// The key.
        key: &'a [u8],
    },
    /// [`KvRequest::Put`].
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// Time to live in milliseconds.
        ttl_ms: Option<u64>,
    },
    /// [`KvRequest::Cas`].
    Cas {
        /// The key.
        key: &'a [u8],
        /// The value it must have (`None`: absent).
        expected: Option<&'a [u8]>,
        /// The new value.
        new: &'a [u8],
    },
    /// [`KvRequest::Incr`].
    Incr {
        /// The key.
        key: &'a [u8],
        /// The amount added.
        delta: i64,
    },
    /// [`KvRequest::Delete`].
    Delete {
        /// The key.
        key: &'a [u8],
    },
}

impl<'a> View<'a> {
    /// The fields of a native request.
    pub fn of(request: &'a KvRequest) -> View<'a> {
        match request {
            KvRequest::Get { key } => View::Get { key },
            KvRequest::Put { key, value, ttl_ms } => View::Put {
                key,
                value,
                ttl_ms: *ttl_ms,
            },
            KvRequest::Cas { key, expected, new } => View::Cas {
                key,
                expected: expected.as_deref(),
                new,
            },
            KvRequest::Incr { key, delta } => View::Incr { key, delta: *delta },
            KvRequest::Delete { key } => View::Delete { key },
        }
    }

    /// The fields of a received request, read in place.
    pub fn archived(request: &'a ArchivedKvRequest) -> View<'a> {
        match request {
            ArchivedKvRequest::Get { key } => View::Get {
                key: key.as_slice(),
            },
            ArchivedKvRequest::Put { key, value, ttl_ms } => View::Put {
                key: key.as_slice(),
                value: value.as_slice(),
                ttl_ms: ttl_ms.as_ref().map(|t| t.to_native()),
            },
            ArchivedKvRequest::Cas { key, expected, new } => View::Cas {
                key: key.as_slice(),
                expected: expected.as_ref().map(|e| e.as_slice()),
                new: new.as_slice(),
            },
            ArchivedKvRequest::Incr { key, delta } => View::Incr {
                key: key.as_slice(),
                delta: delta.to_native(),
            },
            ArchivedKvRequest::Delete { key } => View::Delete {
                key: key.as_slice(),
            },
        }
    }

    /// The key.
    pub fn key(&self) -> &'a [u8] {
        match *self {
            View::Get { key }
            | View::Put { key, .. }
            | View::Cas { key, .. }
            | View::Incr { key, .. }
            | View::Delete { key } => key,
        }
    }

    /// Whether the operation writes.
    pub fn writes(&self) -> bool {
        !matches!(self, View::Get { .. })
    }
}

/// Which operation a shard's answer is for (the answer alone does not
/// say: a delete and an increment both answer with an integer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Get.
    Get,
    /// Put.
    Put,
    /// Compare-and-set.
    Cas,
    /// Increment.
    Incr,
    /// Delete.
    Delete,
}

/// What a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan<'a> {
    /// Shard `shard` runs `op`; [`reply`] turns its answer into the reply.
    Run {
        /// The shard owning the key.
        shard: usize,
        /// What it runs.
        op: ShardOp<'a>,
        /// For [`reply`].
        kind: OpKind,
    },
    /// Answered without a shard (refused).
    Done(KvReply),
}

/// Plans `request` on a node of `shards` shards at time `now`
/// (milliseconds since the Unix epoch). A node that is a replica
/// (`read_only`) refuses writes.
pub fn plan(request: View<'_>, shards: usize, read_only: bool, now: u64) -> Plan<'_> {
    if read_only && request.writes() {
        return Plan::Done(error(
            ErrorKind::ReadOnly,
            "READONLY You can't write against a read only replica.",
        ));
    }
    let key = request.key();
    let (op, kind) = match request {
        View::Get { key } => (ShardOp::Get { key: key.into() }, OpKind::Get),
        View::Put { key, value, ttl_ms } => {
            let expiry = match ttl_ms {
                None => Expiry::Clear,
                Some(0) => {
                    return Plan::Done(error(
                        ErrorKind::BadRequest,
                        "ERR invalid expire time: the time to live must be at least 1 ms",
                    ))
                }
                Some(ttl) => match now.checked_add(ttl).filter(|&at| at <= i64::MAX as u64) {
                    Some(at) => Expiry::At(at),
                    None => {
                        return Plan::Done(error(
                            ErrorKind::BadRequest,
                            "ERR invalid expire time: the deadline overflows",
                        ))
                    }
                },
            };
            let options = SetOptions {
                expiry,
                ..SetOptions::default()
            };
            (
                ShardOp::Set {
                    key: key.into(),
                    value: value.into(),
                    options,
                },
                OpKind::Put,
            )
        }
        View::Cas { key, expected, new } => (
            ShardOp::Cas {
                key: key.into(),
                expected: expected.map(Cow::from),
                new: new.into(),
            },
            OpKind::Cas,
        ),
        View::Incr { key, delta } => (
            ShardOp::IncrBy {
                key: key.into(),
                delta,
            },
            OpKind::Incr,
        ),
        View::Delete { key } => (
            ShardOp::Del {
                keys: vec![key.into()],
            },
            OpKind::Delete,
        ),
    };
    Plan::Run {
        shard: shard_of(key, shards),
        op,
        kind,
    }
}

/// The reply to an operation of kind `kind` from its shard's answer. An
/// answer that does not fit the operation (not possible from
/// [`execute`](super::dispatch::execute)) is an error reply, not a panic.
pub fn reply(kind: OpKind, answer: ShardReply) -> KvReply {
    match (kind, answer) {
        (OpKind::Get, ShardReply::Value(v)) => KvReply::Value(v),
        (OpKind::Put, ShardReply::Ok) => KvReply::Stored,
        (OpKind::Cas, ShardReply::Swapped) => KvReply::Swapped,
        (OpKind::Cas, ShardReply::Mismatch(current)) => KvReply::Mismatch(current),
        (OpKind::Incr, ShardReply::Int(n)) => KvReply::Int(n),
        (OpKind::Delete, ShardReply::Int(n)) => KvReply::Deleted(n > 0),
        (_, ShardReply::Error(e)) => error(
            match e {
                StoreError::NotInteger => ErrorKind::NotInteger,
                StoreError::Overflow => ErrorKind::Overflow,
            },
            &e.to_string(),
        ),
        (kind, other) => error(
            ErrorKind::Unavailable,
            &format!("ERR internal error: {other:?} does not answer a {kind:?}"),
        ),
    }
}

/// An error reply.
pub fn error(kind: ErrorKind, message: &str) -> KvReply {
    KvReply::Error {
        kind,
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::dispatch::execute;
    use crate::kv::store::Store;

    fn run(store: &mut Store, request: KvRequest, now: u64) -> KvReply {
        match plan(View::of(&request), 1, false, now) {
            Plan::Run { op, kind, .. } => reply(kind, execute(store, op, now)),
            Plan::Done(r) => r,
        }
    }

    fn key(k: &str) -> Vec<u8> {
        k.as_bytes().to_vec()
    }

    #[test]
    fn every_operation() {
        let mut s = Store::new();
        let get = |k: &str| KvRequest::Get { key: key(k) };
        assert_eq!(run(&mut s, get("a"), 0), KvReply::Value(None));
        let put = KvRequest::Put {
            key: key("a"),
            value: key("1"),
            ttl_ms: Some(100),
        };
        assert_eq!(run(&mut s, put, 0), KvReply::Stored);
        assert_eq!(run(&mut s, get("a"), 99), KvReply::Value(Some(key("1"))));
        assert_eq!(run(&mut s, get("a"), 100), KvReply::Value(None));
        let cas = |expected: Option<&str>, new: &str| KvRequest::Cas {
            key: key("c"),
            expected: expected.map(key),
            new: key(new),
        };
        assert_eq!(run(&mut s, cas(Some("x"), "y"), 0), KvReply::Mismatch(None));
        assert_eq!(run(&mut s, cas(None, "x"), 0), KvReply::Swapped);
        assert_eq!(
            run(&mut s, cas(None, "z"), 0),
            KvReply::Mismatch(Some(key("x")))
        );
        assert_eq!(run(&mut s, cas(Some("x"), "7"), 0), KvReply::Swapped);
        let incr = |delta| KvRequest::Incr {
            key: key("c"),
            delta,
        };
        assert_eq!(run(&mut s, incr(-10), 0), KvReply::Int(-3));
        assert_eq!(
            run(&mut s, incr(i64::MIN), 0),
            error(
                ErrorKind::Overflow,
                "ERR increment or decrement would overflow"
            )
        );
        let del = KvRequest::Delete { key: key("c") };
        assert_eq!(run(&mut s, del.clone(), 0), KvReply::Deleted(true));
        assert_eq!(run(&mut s, del, 0), KvReply::Deleted(false));
        let put = KvRequest::Put {
            key: key("t"),
            value: key("text"),
            ttl_ms: None,
        };
        run(&mut s, put, 0);
        match run(
            &mut s,
            KvRequest::Incr {
                key: key("t"),
                delta: 1,
            },
            0,
        ) {
            KvReply::Error { kind, .. } => assert_eq!(kind, ErrorKind::NotInteger),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_ttls_and_read_only() {
        let put = |ttl_ms| KvRequest::Put {
            key: key("a"),
            value: key("1"),
            ttl_ms,
        };
        for ttl in [Some(0), Some(u64::MAX), Some(i64::MAX as u64)] {
            match plan(View::of(&put(ttl)), 1, false, 5) {
                Plan::Done(KvReply::Error { kind, .. }) => assert_eq!(kind, ErrorKind::BadRequest),
                other => panic!("{ttl:?}: {other:?}"),
            }
        }
        let get = KvRequest::Get { key: key("a") };
        assert!(matches!(
            plan(View::of(&get), 4, true, 0),
            Plan::Run {
                kind: OpKind::Get,
                ..
            }
        ));
        for w in [
            put(None),
            KvRequest::Delete { key: key("a") },
            KvRequest::Incr {
                key: key("a"),
                delta: 1,
            },
            KvRequest::Cas {
                key: key("a"),
                expected: None,
                new: key("b"),
            },
        ] {
            match plan(View::of(&w), 4, true, 0) {
                Plan::Done(KvReply::Error { kind, .. }) => assert_eq!(kind, ErrorKind::ReadOnly),
                other => panic!("{w:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn requests_go_to_their_keys_shard() {
        for i in 0..100 {
            let k = format!("key{i}");
            let r = KvRequest::Get { key: key(&k) };
            match plan(View::of(&r), 4, false, 0) {
                Plan::Run { shard, .. } => assert_eq!(shard, shard_of(k.as_bytes(), 4)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn archived_requests_read_like_native_ones() {
        use ringwire::proto::rkyv;
        let requests = [
            KvRequest::Put {
                key: key("k"),
                value: key("v"),
                ttl_ms: Some(9),
            },
            KvRequest::Cas {
                key: key("k"),
                expected: Some(key("v")),
                new: key("w"),
            },
            KvRequest::Cas {
                key: key("k"),
                expected: None,
                new: key("w"),
            },
            KvRequest::Incr {
                key: key("k"),
                delta: -4,
            },
            KvRequest::Delete { key: key("k") },
            KvRequest::Get { key: key("k") },
        ];
        for r in &requests {
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(r).unwrap();
            let a = rkyv::access::<ArchivedKvRequest, rkyv::rancor::Error>(&bytes).unwrap();
            assert_eq!(View::archived(a), View::of(r));
        }
    }

    #[test]
    fn answers_that_do_not_fit_are_errors() {
        match reply(OpKind::Get, ShardReply::Ok) {
            KvReply::Error { kind, .. } => assert_eq!(kind, ErrorKind::Unavailable),
            other => panic!("{other:?}"),
        }
    }
}
