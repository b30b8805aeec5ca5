//! From a parsed request to reply bytes.
//!
//! Three steps, so that a node can run the middle one on another core:
//!
//! 1. [`Dispatcher::plan`] looks at a [`Request`]: commands that need no
//!    key (PING, ECHO, COMMAND) and every error a request can earn before
//!    reaching a shard (unknown command, wrong arity, syntax, bad numbers)
//!    are answered at once into the output; anything else becomes a
//!    [`Plan`]: one [`ShardOp`] for one shard, or several and a [`Merge`].
//! 2. [`execute_into`] runs a [`ShardOp`] against the shard's [`Store`] (on
//!    the core that owns it) and writes the reply; [`execute`] gives the
//!    answer as a [`ShardReply`] instead, for a [`Merge`]. A planned op
//!    borrows keys and values from the request; `kv::pipeline` packs the
//!    ops for other cores into one batch per core (`ShardReply` is `Send`,
//!    to travel back).
//! 3. [`Merge::write`] (several shards) turns the answers into one reply,
//!    keys in the order the client gave them.
//!
//! A connection must write replies in request order: with pipelining and
//! forwarding, [`super::pipeline::Turn`] keeps the place of each reply.
//!
//! Multi-key writes (`MSET`, `DEL`) spanning several shards are atomic per
//! shard, not across shards; keys sharing a hash tag share a shard.
//!
//! ```
//! use ringwire_examples::kv::dispatch::Dispatcher;
//! use ringwire_examples::kv::resp::{Limits, RequestParser};
//! use ringwire_examples::kv::store::Store;
//!
//! let dispatcher = Dispatcher::new(2);
//! let mut stores = [Store::new(), Store::new()];
//! let mut parser = RequestParser::new(Limits::default());
//! parser.feed(b"MSET a 1 b 2\r\nMGET b nope a\r\nFOO bar\r\n");
//! let mut out = Vec::new();
//! while let Some(request) = parser.next().unwrap() {
//!     dispatcher.run_local(&mut stores, &request, 0, &mut out);
//! }
//! assert_eq!(
//!     String::from_utf8(out).unwrap(),
//!     "+OK\r\n*3\r\n$1\r\n2\r\n$-1\r\n$1\r\n1\r\n\
//!      -ERR unknown command 'FOO', with args beginning with: 'bar' \r\n"
//! );
//! ```

use std::borrow::Cow;

use super::resp::{self, parse_i64, Request};
use super::shard::{shard_of, Split};
use super::store::{Cas, Condition, Expiry, SetOptions, Store, StoreError};

/// A key or value in a [`ShardOp`]: borrowed (from the request, or from a
/// batch that came from another core), or owned.
pub type Bytes<'a> = Cow<'a, [u8]>;

/// What one shard runs. Planned ops borrow from the request
/// ([`Dispatcher::plan`]); `kv::pipeline` packs those for other cores'
/// shards into a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardOp<'a> {
    /// `GET key`.
    Get {
        /// The key.
        key: Bytes<'a>,
    },
    /// `SET key value ...`.
    Set {
        /// The key.
        key: Bytes<'a>,
        /// The value.
        value: Bytes<'a>,
        /// `NX`/`XX`, expiry, `GET`.
        options: SetOptions,
    },
    /// `INCRBY key delta` (also INCR, DECR, DECRBY).
    IncrBy {
        /// The key.
        key: Bytes<'a>,
        /// The amount added.
        delta: i64,
    },
    /// `DEL key...`: the count of keys removed.
    Del {
        /// The keys, in command order.
        keys: Vec<Bytes<'a>>,
    },
    /// `EXISTS key...`: the count of keys present (repeats count again).
    Exists {
        /// The keys, in command order.
        keys: Vec<Bytes<'a>>,
    },
    /// `MGET key...`: values in key order.
    MGet {
        /// The keys, in command order.
        keys: Vec<Bytes<'a>>,
    },
    /// `MSET key value...`.
    MSet {
        /// The pairs, in command order (a later pair for the same key wins).
        pairs: Vec<(Bytes<'a>, Bytes<'a>)>,
    },
    /// `DBSIZE`: the shard's key count.
    DbSize,
    /// `FLUSHALL`.
    FlushAll,
    /// Compare-and-set (the typed protocol's; no Redis command plans it):
    /// [`ShardReply::Swapped`] or [`ShardReply::Mismatch`].
    Cas {
        /// The key.
        key: Bytes<'a>,
        /// The value it must have, `None` for absent.
        expected: Option<Bytes<'a>>,
        /// The new value.
        new: Bytes<'a>,
    },
}

/// One shard's answer to a [`ShardOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardReply {
    /// `+OK`.
    Ok,
    /// Null bulk: a conditional `SET` that did not write.
    Nil,
    /// An integer.
    Int(i64),
    /// A value or null.
    Value(Option<Vec<u8>>),
    /// Values or nulls, in the order of the op's keys.
    Values(Vec<Option<Vec<u8>>>),
    /// A failed command.
    Error(StoreError),
    /// A compare-and-set that matched and wrote.
    Swapped,
    /// A compare-and-set that did not match: the current value.
    Mismatch(Option<Vec<u8>>),
}

/// Runs `op` on the shard's store at time `now` (milliseconds); the answer
/// as a value, for a [`Merge`] with other shards' answers. To reply from a
/// single shard, [`execute_into`] writes the reply without copying values
/// out of the store first.
pub fn execute(store: &mut Store, op: ShardOp<'_>, now: u64) -> ShardReply {
    match op {
        ShardOp::Get { key } => ShardReply::Value(store.get(&key, now).map(<[u8]>::to_vec)),
        ShardOp::Set {
            key,
            value,
            options,
        } => {
            let outcome = store.set(&key, value, options, now);
            if options.get {
                ShardReply::Value(outcome.old)
            } else if outcome.written {
                ShardReply::Ok
            } else {
                ShardReply::Nil
            }
        }
        ShardOp::IncrBy { key, delta } => match store.increment(&key, delta, now) {
            Ok(n) => ShardReply::Int(n),
            Err(e) => ShardReply::Error(e),
        },
        ShardOp::Del { keys } => {
            ShardReply::Int(keys.iter().filter(|k| store.delete(k, now)).count() as i64)
        }
        ShardOp::Exists { keys } => {
            ShardReply::Int(keys.iter().filter(|k| store.exists(k, now)).count() as i64)
        }
        ShardOp::MGet { keys } => ShardReply::Values(
            keys.iter()
                .map(|k| store.get(k, now).map(<[u8]>::to_vec))
                .collect(),
        ),
        ShardOp::MSet { pairs } => {
            for (key, value) in pairs {
                store.put(&key, value, None, now);
            }
            ShardReply::Ok
        }
        ShardOp::DbSize => ShardReply::Int(store.len() as i64),
        ShardOp::FlushAll => {
            store.clear();
            ShardReply::Ok
        }
        ShardOp::Cas { key, expected, new } => {
            match store.compare_and_set(&key, expected.as_deref(), new, now) {
                Cas::Swapped => ShardReply::Swapped,
                Cas::Mismatch { current } => ShardReply::Mismatch(current),
            }
        }
    }
}

/// Runs `op` on the shard's store at time `now` and appends its reply to
/// `out`: the same bytes as [`write_reply`] of [`execute`], with values
/// copied once, from the store into `out`.
pub fn execute_into(store: &mut Store, op: ShardOp<'_>, now: u64, out: &mut Vec<u8>) {
    match op {
        ShardOp::Get { key } => resp::write_optional_bulk(out, store.get(&key, now)),
        ShardOp::MGet { keys } => {
            resp::write_array(out, keys.len());
            for key in keys {
                resp::write_optional_bulk(out, store.get(&key, now));
            }
        }
        op => write_reply(execute(store, op, now), out),
    }
}

/// Writes one shard's answer as the reply to the whole request.
pub fn write_reply(reply: ShardReply, out: &mut Vec<u8>) {
    match reply {
        ShardReply::Ok => resp::write_simple(out, b"OK"),
        ShardReply::Nil => resp::write_null_bulk(out),
        ShardReply::Int(n) => resp::write_integer(out, n),
        ShardReply::Value(v) => resp::write_optional_bulk(out, v.as_deref()),
        ShardReply::Values(values) => {
            resp::write_array(out, values.len());
            for v in values {
                resp::write_optional_bulk(out, v.as_deref());
            }
        }
        ShardReply::Error(e) => resp::write_error(out, e.to_string().as_bytes()),
        // No Redis command compares and sets; should one, it reads as
        // SETNX's answer: 1 written, 0 not.
        ShardReply::Swapped => resp::write_integer(out, 1),
        ShardReply::Mismatch(_) => resp::write_integer(out, 0),
    }
}

/// How the answers of several shards combine into one reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Merge {
    /// The sum of integer answers (`DEL`, `EXISTS`, `DBSIZE`).
    Sum,
    /// `+OK` once every shard answered OK (`MSET`, `FLUSHALL`).
    AllOk,
    /// Values scattered back into key order (`MGET`).
    Values(Split),
}

impl Merge {
    /// Writes the reply from `replies`, one per op of the plan, in the
    /// plan's order. Answers that do not fit the merge (not possible from
    /// [`execute`]) give an error reply rather than a panic.
    pub fn write(self, replies: Vec<ShardReply>, out: &mut Vec<u8>) {
        match self {
            Merge::Sum => {
                let mut sum: i64 = 0;
                for reply in replies {
                    match reply {
                        ShardReply::Int(n) => sum = sum.saturating_add(n),
                        other => return mismatch(other, out),
                    }
                }
                resp::write_integer(out, sum);
            }
            Merge::AllOk => {
                for reply in replies {
                    if reply != ShardReply::Ok {
                        return mismatch(reply, out);
                    }
                }
                resp::write_simple(out, b"OK");
            }
            Merge::Values(split) => {
                let mut per_part = Vec::with_capacity(replies.len());
                for reply in replies {
                    match reply {
                        ShardReply::Values(values) => per_part.push(values),
                        other => return mismatch(other, out),
                    }
                }
                match split.merge(per_part) {
                    Some(values) => write_reply(ShardReply::Values(values), out),
                    None => {
                        resp::write_error(out, b"ERR internal error: shard answers do not match")
                    }
                }
            }
        }
    }
}

fn mismatch(reply: ShardReply, out: &mut Vec<u8>) {
    match reply {
        // A shard's own error is the reply.
        ShardReply::Error(e) => resp::write_error(out, e.to_string().as_bytes()),
        _ => resp::write_error(out, b"ERR internal error: shard answers do not match"),
    }
}

/// What a request needs after [`Dispatcher::plan`]; its ops borrow from the
/// request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan<'a> {
    /// The reply has been written.
    Done,
    /// One shard runs `op`; its answer, through [`write_reply`], is the
    /// reply.
    One {
        /// The shard.
        shard: usize,
        /// What it runs.
        op: ShardOp<'a>,
    },
    /// Each listed shard runs its op; `merge` combines their answers (in
    /// this order).
    Many {
        /// Shard and op, at most one op per shard, in shard order.
        ops: Vec<(usize, ShardOp<'a>)>,
        /// How the answers combine.
        merge: Merge,
    },
}

/// Plans requests for a node of `shards` shards. See the [module
/// docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dispatcher {
    shards: usize,
    read_only: bool,
}

impl Dispatcher {
    /// A dispatcher for `shards` shards (at least 1; 0 is taken as 1).
    pub fn new(shards: usize) -> Dispatcher {
        Dispatcher {
            shards: shards.max(1),
            read_only: false,
        }
    }

    /// The same, refusing every command that writes with Redis's
    /// `-READONLY` error when `on` (a replica's).
    pub fn read_only(self, on: bool) -> Dispatcher {
        Dispatcher {
            read_only: on,
            ..self
        }
    }

    /// Whether commands that write are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Plans `request` at time `now` (milliseconds, the stores' clock:
    /// relative expiry times are made absolute here). Writes the reply
    /// into `out` and returns [`Plan::Done`] when no shard is needed.
    pub fn plan<'a>(&self, request: &Request<'a>, now: u64, out: &mut Vec<u8>) -> Plan<'a> {
        let Some(command) = lookup(request.name()) else {
            unknown_command(request, out);
            return Plan::Done;
        };
        let argc = request.len();
        let info = command.info();
        if !arity_ok(info.arity, argc) {
            arity_error(info.name, out);
            return Plan::Done;
        }
        if self.read_only && info.flags.contains(&"write") {
            resp::write_error(out, READONLY);
            return Plan::Done;
        }
        let arg = |i: usize| request.arg(i).unwrap_or_default();
        let one = |op: ShardOp<'a>, key: &[u8]| Plan::One {
            shard: shard_of(key, self.shards),
            op,
        };
        match command {
            Cmd::Ping => {
                if argc > 2 {
                    arity_error(info.name, out);
                } else if argc == 2 {
                    resp::write_bulk(out, arg(1));
                } else {
                    resp::write_simple(out, b"PONG");
                }
                Plan::Done
            }
            Cmd::Echo => {
                resp::write_bulk(out, arg(1));
                Plan::Done
            }
            Cmd::Command => {
                command_command(request, out);
                Plan::Done
            }
            Cmd::Config => {
                config_command(request, out);
                Plan::Done
            }
            Cmd::Get => one(ShardOp::Get { key: arg(1).into() }, arg(1)),
            Cmd::Set => match set_options(request, now) {
                Ok(options) => one(
                    ShardOp::Set {
                        key: arg(1).into(),
                        value: arg(2).into(),
                        options,
                    },
                    arg(1),
                ),
                Err(message) => {
                    resp::write_error(out, message);
                    Plan::Done
                }
            },
            Cmd::Incr | Cmd::Decr | Cmd::IncrBy | Cmd::DecrBy => {
                let delta = match command {
                    Cmd::Incr => Ok(1),
                    Cmd::Decr => Ok(-1),
                    Cmd::IncrBy => parse_i64(arg(2)).ok_or(NOT_INTEGER),
                    _ => match parse_i64(arg(2)) {
                        None => Err(NOT_INTEGER),
                        Some(i64::MIN) => Err(&b"ERR decrement would overflow"[..]),
                        Some(n) => Ok(-n),
                    },
                };
                match delta {
                    Ok(delta) => one(
                        ShardOp::IncrBy {
                            key: arg(1).into(),
                            delta,
                        },
                        arg(1),
                    ),
                    Err(message) => {
                        resp::write_error(out, message);
                        Plan::Done
                    }
                }
            }
            Cmd::Del | Cmd::Exists | Cmd::MGet => {
                let make = |keys| match command {
                    Cmd::Del => ShardOp::Del { keys },
                    Cmd::Exists => ShardOp::Exists { keys },
                    _ => ShardOp::MGet { keys },
                };
                if let Some(shard) = self.one_shard(request.args().skip(1)) {
                    // The common case (always, on one core): no split.
                    let keys = request.args().skip(1).map(Cow::from).collect();
                    return Plan::One {
                        shard,
                        op: make(keys),
                    };
                }
                let keys: Vec<&'a [u8]> = request.args().skip(1).collect();
                let split = Split::new(keys.iter().copied(), self.shards);
                let op = |positions: &[usize]| {
                    make(positions.iter().map(|&p| Cow::from(keys[p])).collect())
                };
                self.fan_out(split, op, |split| match command {
                    Cmd::MGet => Merge::Values(split),
                    _ => Merge::Sum,
                })
            }
            Cmd::MSet => {
                if argc % 2 == 0 {
                    arity_error(info.name, out);
                    return Plan::Done;
                }
                let pairs = || {
                    request
                        .args()
                        .skip(1)
                        .step_by(2)
                        .zip(request.args().skip(2).step_by(2))
                };
                if let Some(shard) = self.one_shard(pairs().map(|(k, _)| k)) {
                    let pairs = pairs().map(|(k, v)| (Cow::from(k), Cow::from(v))).collect();
                    return Plan::One {
                        shard,
                        op: ShardOp::MSet { pairs },
                    };
                }
                let pairs: Vec<(&'a [u8], &'a [u8])> = pairs().collect();
                let split = Split::new(pairs.iter().map(|(k, _)| *k), self.shards);
                let op = |positions: &[usize]| ShardOp::MSet {
                    pairs: positions
                        .iter()
                        .map(|&p| (Cow::from(pairs[p].0), Cow::from(pairs[p].1)))
                        .collect(),
                };
                self.fan_out(split, op, |_| Merge::AllOk)
            }
            Cmd::DbSize => self.all(ShardOp::DbSize, Merge::Sum),
            Cmd::FlushAll => {
                let mode_ok = argc == 1
                    || (argc == 2
                        && (arg(1).eq_ignore_ascii_case(b"sync")
                            || arg(1).eq_ignore_ascii_case(b"async")));
                if !mode_ok {
                    resp::write_error(out, SYNTAX);
                    return Plan::Done;
                }
                self.all(ShardOp::FlushAll, Merge::AllOk)
            }
        }
    }

    /// One op per shard of `split`; a single shard answers alone.
    fn fan_out<'a>(
        &self,
        split: Split,
        op: impl Fn(&[usize]) -> ShardOp<'a>,
        merge: impl FnOnce(Split) -> Merge,
    ) -> Plan<'a> {
        if let [part] = split.parts() {
            // All keys on one shard: its answer is in key order already.
            return Plan::One {
                shard: part.shard,
                op: op(&part.positions),
            };
        }
        let ops = split
            .parts()
            .iter()
            .map(|part| (part.shard, op(&part.positions)))
            .collect();
        Plan::Many {
            ops,
            merge: merge(split),
        }
    }

    /// The shard owning every one of `keys`, if they share one (with one
    /// shard, without hashing them).
    fn one_shard<'k>(&self, mut keys: impl Iterator<Item = &'k [u8]>) -> Option<usize> {
        if self.shards == 1 {
            return Some(0);
        }
        let first = shard_of(keys.next()?, self.shards);
        keys.all(|k| shard_of(k, self.shards) == first)
            .then_some(first)
    }

    /// The same op on every shard.
    fn all(&self, op: ShardOp<'static>, merge: Merge) -> Plan<'static> {
        if self.shards == 1 {
            return Plan::One { shard: 0, op };
        }
        Plan::Many {
            ops: (0..self.shards).map(|shard| (shard, op.clone())).collect(),
            merge,
        }
    }

    /// Plans `request` and runs it on `stores` (one per shard, indexed by
    /// shard) in this thread: the whole path for a node (or a test) whose
    /// shards are all at hand.
    ///
    /// # Panics
    ///
    /// If `stores.len()` is not the dispatcher's shard count (a setup
    /// error, not something a request can cause).
    pub fn run_local(
        &self,
        stores: &mut [Store],
        request: &Request<'_>,
        now: u64,
        out: &mut Vec<u8>,
    ) {
        assert_eq!(stores.len(), self.shards, "one store per shard");
        match self.plan(request, now, out) {
            Plan::Done => {}
            Plan::One { shard, op } => execute_into(&mut stores[shard], op, now, out),
            Plan::Many { ops, merge } => {
                let replies = ops
                    .into_iter()
                    .map(|(shard, op)| execute(&mut stores[shard], op, now))
                    .collect();
                merge.write(replies, out);
            }
        }
    }
}

const NOT_INTEGER: &[u8] = b"ERR value is not an integer or out of range";
/// Redis's answer to a write sent to a read-only replica.
pub const READONLY: &[u8] = b"READONLY You can't write against a read only replica.";
const SYNTAX: &[u8] = b"ERR syntax error";
const INVALID_EXPIRE: &[u8] = b"ERR invalid expire time in 'set' command";

/// Parses SET's options as Redis 7 does: `NX`/`XX`, `GET`, one of
/// `EX`/`PX`/`EXAT`/`PXAT`/`KEEPTTL` (repeating the same one is allowed,
/// the last wins); then checks the expire time.
fn set_options(request: &Request<'_>, now: u64) -> Result<SetOptions, &'static [u8]> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Unit {
        Ex,
        Px,
        ExAt,
        PxAt,
        KeepTtl,
    }
    let mut options = SetOptions::default();
    let mut expire: Option<(Unit, &[u8])> = None;
    let mut j = 3;
    while j < request.len() {
        let opt = request.arg(j).unwrap_or_default();
        let next = request.arg(j + 1);
        let is = |name: &str| opt.eq_ignore_ascii_case(name.as_bytes());
        // Another expiry kind already chosen rules this one out.
        let other_unit = |unit: Unit| expire.is_some_and(|(u, _)| u != unit);
        if is("nx") && options.condition != Condition::IfPresent {
            options.condition = Condition::IfAbsent;
        } else if is("xx") && options.condition != Condition::IfAbsent {
            options.condition = Condition::IfPresent;
        } else if is("get") {
            options.get = true;
        } else if is("keepttl") && !other_unit(Unit::KeepTtl) {
            expire = Some((Unit::KeepTtl, &[]));
        } else if let Some(unit) = [
            ("ex", Unit::Ex),
            ("px", Unit::Px),
            ("exat", Unit::ExAt),
            ("pxat", Unit::PxAt),
        ]
        .into_iter()
        .find(|(name, _)| is(name))
        .map(|(_, unit)| unit)
        .filter(|&unit| !other_unit(unit) && next.is_some())
        {
            expire = Some((unit, next.unwrap_or_default()));
            j += 1;
        } else {
            return Err(SYNTAX);
        }
        j += 1;
    }
    options.expiry = match expire {
        None => Expiry::Clear,
        Some((Unit::KeepTtl, _)) => Expiry::Keep,
        Some((unit, text)) => {
            let n = parse_i64(text).ok_or(NOT_INTEGER)?;
            let seconds = matches!(unit, Unit::Ex | Unit::ExAt);
            if n <= 0 || (seconds && n > i64::MAX / 1000) {
                return Err(INVALID_EXPIRE);
            }
            let ms = if seconds { n * 1000 } else { n };
            let at = match unit {
                Unit::Ex | Unit::Px => {
                    let now = i64::try_from(now).unwrap_or(i64::MAX);
                    ms.checked_add(now).ok_or(INVALID_EXPIRE)?
                }
                _ => ms,
            };
            Expiry::At(at as u64)
        }
    };
    Ok(options)
}

/// The commands served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Get,
    Set,
    Del,
    Exists,
    Incr,
    IncrBy,
    Decr,
    DecrBy,
    MGet,
    MSet,
    DbSize,
    FlushAll,
    Ping,
    Echo,
    Command,
    Config,
}

impl Cmd {
    const ALL: [Cmd; 16] = [
        Cmd::Get,
        Cmd::Set,
        Cmd::Del,
        Cmd::Exists,
        Cmd::Incr,
        Cmd::IncrBy,
        Cmd::Decr,
        Cmd::DecrBy,
        Cmd::MGet,
        Cmd::MSet,
        Cmd::DbSize,
        Cmd::FlushAll,
        Cmd::Ping,
        Cmd::Echo,
        Cmd::Command,
        Cmd::Config,
    ];

    fn info(self) -> &'static Info {
        &TABLE[self as usize]
    }
}

fn lookup(name: &[u8]) -> Option<Cmd> {
    Cmd::ALL
        .into_iter()
        .find(|c| c.info().name.as_bytes().eq_ignore_ascii_case(name))
}

/// Redis's arity rule: positive is exact, negative is a minimum.
fn arity_ok(arity: i64, argc: usize) -> bool {
    let argc = argc as i64;
    if arity > 0 {
        argc == arity
    } else {
        argc >= -arity
    }
}

fn arity_error(name: &str, out: &mut Vec<u8>) {
    let message = format!("ERR wrong number of arguments for '{name}' command");
    resp::write_error(out, message.as_bytes());
}

/// `text` cut as C's `%.*s` cuts it: at the first NUL, at most `max` bytes.
fn c_str(text: &[u8], max: usize) -> &[u8] {
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    &text[..end.min(max)]
}

/// Redis 7's reply to an unknown command: the name (at most 128 bytes) and
/// the first arguments, quoted, while they fit in 128 bytes.
fn unknown_command(request: &Request<'_>, out: &mut Vec<u8>) {
    let mut message = b"ERR unknown command '".to_vec();
    message.extend_from_slice(c_str(request.name(), 128));
    message.extend_from_slice(b"', with args beginning with: ");
    let mut args = Vec::new();
    for arg in request.args().skip(1) {
        if args.len() >= 128 {
            break;
        }
        let budget = 128 - args.len();
        args.push(b'\'');
        args.extend_from_slice(c_str(arg, budget));
        args.extend_from_slice(b"' ");
    }
    message.extend_from_slice(&args);
    resp::write_error(out, &message);
}

/// A command's entry for COMMAND and COMMAND DOCS.
struct Info {
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    first_key: i64,
    last_key: i64,
    step: i64,
    categories: &'static [&'static str],
    summary: &'static str,
    since: &'static str,
    group: &'static str,
    complexity: &'static str,
    args: &'static [Arg],
    subcommands: &'static [Info],
}

/// An argument as COMMAND DOCS describes it.
struct Arg {
    name: &'static str,
    kind: &'static str,
    token: Option<&'static str>,
    optional: bool,
    multiple: bool,
    args: &'static [Arg],
}

const fn arg(name: &'static str, kind: &'static str) -> Arg {
    Arg {
        name,
        kind,
        token: None,
        optional: false,
        multiple: false,
        args: &[],
    }
}

const fn token(name: &'static str, kind: &'static str, token: &'static str) -> Arg {
    Arg {
        token: Some(token),
        ..arg(name, kind)
    }
}

const KEY: Arg = arg("key", "key");
const KEYS: Arg = Arg {
    multiple: true,
    ..arg("key", "key")
};

const TABLE: [Info; 16] = [
    Info {
        name: "get",
        subcommands: &[],
        arity: 2,
        flags: &["readonly", "fast"],
        first_key: 1,
        last_key: 1,
        step: 1,
        categories: &["@read", "@string", "@fast"],
        summary: "Returns the string value of a key.",
        since: "1.0.0",
        group: "string",
        complexity: "O(1)",
        args: &[KEY],
    },
    Info {
        name: "set",
        subcommands: &[],
        arity: -3,
        flags: &["write", "denyoom"],
        first_key: 1,
        last_key: 1,
        step: 1,
        categories: &["@write", "@string", "@slow"],
        summary: "Sets the string value of a key, optionally only if it is absent or present, \
                  with a time to live, returning the old value.",
        since: "1.0.0",
        group: "string",
        complexity: "O(1)",
        args: &[
            KEY,
            arg("value", "string"),
            Arg {
                optional: true,
                args: &[
                    token("nx", "pure-token", "NX"),
                    token("xx", "pure-token", "XX"),
                ],
                ..arg("condition", "oneof")
            },
            Arg {
                optional: true,
                ..token("get", "pure-token", "GET")
            },
            Arg {
                optional: true,
                args: &[
                    token("seconds", "integer", "EX"),
                    token("milliseconds", "integer", "PX"),
                    token("unix-time-seconds", "unix-time", "EXAT"),
                    token("unix-time-milliseconds", "unix-time", "PXAT"),
                    token("keepttl", "pure-token", "KEEPTTL"),
                ],
                ..arg("expiration", "oneof")
            },
        ],
    },
    Info {
        name: "del",
        subcommands: &[],
        arity: -2,
        flags: &["write"],
        first_key: 1,
        last_key: -1,
        step: 1,
        categories: &["@keyspace", "@write", "@slow"],
        summary: "Deletes one or more keys.",
        since: "1.0.0",
        group: "generic",
        complexity: "O(N) where N is the number of keys",
        args: &[KEYS],
    },
    Info {
        name: "exists",
        subcommands: &[],
        arity: -2,
        flags: &["readonly", "fast"],
        first_key: 1,
        last_key: -1,
        step: 1,
        categories: &["@keyspace", "@read", "@fast"],
        summary: "Counts how many of the given keys exist.",
        since: "1.0.0",
        group: "generic",
        complexity: "O(N) where N is the number of keys",
        args: &[KEYS],
    },
    Info {
        name: "incr",
        subcommands: &[],
        arity: 2,
        flags: &["write", "denyoom", "fast"],
        first_key: 1,
        last_key: 1,
        step: 1,
        categories: &["@write", "@string", "@fast"],
        summary: "Increments the integer value of a key by one (a missing key counts as 0).",
        since: "1.0.0",
        group: "string",
        complexity: "O(1)",
        args: &[KEY],
    },
    Info {
        name: "incrby",
        subcommands: &[],
        arity: 3,
        flags: &["write", "denyoom", "fast"],
        first_key: 1,
        last_key: 1,
        step: 1,
        categories: &["@write", "@string", "@fast"],
        summary: "Increments the integer value of a key by a number (a missing key counts as 0).",
        since: "1.0.0",
        group: "string",
        complexity: "O(1)",
        args: &[KEY, arg("increment", "integer")],
    },
    Info {
        name: "decr",
        subcommands: &[],
        arity: 2,
        flags: &["write", "denyoom", "fast"],
        first_key: 1,
        last_key: 1,
        step: 1,
        categories: &["@write", "@string", "@fast"],
        summary: "Decrements the integer value of a key by one (a missing key counts as 0).",
        since: "1.0.0",
        group: "string",
        complexity: "O(1)",
        args: &[KEY],
    },
    Info {
        name: "decrby",
        subcommands: &[],
        arity: 3,
        flags: &["write", "denyoom", "fast"],
        first_key: 1,
        last_key: 1,
        step: 1,
        categories: &["@write", "@string", "@fast"],
        summary: "Decrements the integer value of a key by a number (a missing key counts as 0).",
        since: "1.0.0",
        group: "string",
        complexity: "O(1)",
        args: &[KEY, arg("decrement", "integer")],
    },
    Info {
        name: "mget",
        subcommands: &[],
        arity: -2,
        flags: &["readonly", "fast"],
        first_key: 1,
        last_key: -1,
        step: 1,
        categories: &["@read", "@string", "@fast"],
        summary: "Returns the values of one or more keys.",
        since: "1.0.0",
        group: "string",
        complexity: "O(N) where N is the number of keys",
        args: &[KEYS],
    },
    Info {
        name: "mset",
        subcommands: &[],
        arity: -3,
        flags: &["write", "denyoom"],
        first_key: 1,
        last_key: -1,
        step: 2,
        categories: &["@write", "@string", "@slow"],
        summary: "Sets the values of one or more keys (atomic per shard, not across shards).",
        since: "1.0.1",
        group: "string",
        complexity: "O(N) where N is the number of keys",
        args: &[Arg {
            multiple: true,
            args: &[KEY, arg("value", "string")],
            ..arg("data", "block")
        }],
    },
    Info {
        name: "dbsize",
        subcommands: &[],
        arity: 1,
        flags: &["readonly", "fast"],
        first_key: 0,
        last_key: 0,
        step: 0,
        categories: &["@keyspace", "@read", "@fast"],
        summary: "Returns the number of keys (expired keys not yet reclaimed included).",
        since: "1.0.0",
        group: "server",
        complexity: "O(S) where S is the number of shards",
        args: &[],
    },
    Info {
        name: "flushall",
        subcommands: &[],
        arity: -1,
        flags: &["write"],
        first_key: 0,
        last_key: 0,
        step: 0,
        categories: &["@keyspace", "@write", "@slow", "@dangerous"],
        summary: "Removes all keys.",
        since: "1.0.0",
        group: "server",
        complexity: "O(N) where N is the number of keys",
        args: &[Arg {
            optional: true,
            args: &[
                token("async", "pure-token", "ASYNC"),
                token("sync", "pure-token", "SYNC"),
            ],
            ..arg("flush-type", "oneof")
        }],
    },
    Info {
        name: "ping",
        subcommands: &[],
        arity: -1,
        flags: &["fast"],
        first_key: 0,
        last_key: 0,
        step: 0,
        categories: &["@fast", "@connection"],
        summary: "Returns PONG, or the message given.",
        since: "1.0.0",
        group: "connection",
        complexity: "O(1)",
        args: &[Arg {
            optional: true,
            ..arg("message", "string")
        }],
    },
    Info {
        name: "echo",
        subcommands: &[],
        arity: 2,
        flags: &["fast"],
        first_key: 0,
        last_key: 0,
        step: 0,
        categories: &["@fast", "@connection"],
        summary: "Returns the message given.",
        since: "1.0.0",
        group: "connection",
        complexity: "O(1)",
        args: &[arg("message", "string")],
    },
    Info {
        name: "command",
        subcommands: &COMMAND_SUBCOMMANDS,
        arity: -1,
        flags: &["loading", "stale"],
        first_key: 0,
        last_key: 0,
        step: 0,
        categories: &["@slow", "@connection"],
        summary: "Returns detailed information about all commands.",
        since: "2.8.13",
        group: "server",
        complexity: "O(N) where N is the number of commands",
        args: &[],
    },
    Info {
        name: "config",
        subcommands: &CONFIG_SUBCOMMANDS,
        arity: -2,
        flags: &[],
        first_key: 0,
        last_key: 0,
        step: 0,
        categories: &["@slow"],
        summary: "A container for server configuration commands (GET: what kv-node can tell).",
        since: "2.0.0",
        group: "server",
        complexity: "Depends on subcommand.",
        args: &[],
    },
];

const COMMAND_NAMES: Arg = Arg {
    optional: true,
    multiple: true,
    ..arg("command-name", "string")
};

/// COMMAND's subcommands.
const COMMAND_SUBCOMMANDS: [Info; 5] = [
    sub("command|count", 2, "Returns a count of commands.", &[]),
    sub(
        "command|docs",
        -2,
        "Returns documentary information about one, multiple or all commands.",
        &[COMMAND_NAMES],
    ),
    sub(
        "command|info",
        -2,
        "Returns information about one, multiple or all commands.",
        &[COMMAND_NAMES],
    ),
    sub("command|list", -2, "Returns a list of command names.", &[]),
    sub(
        "command|help",
        2,
        "Returns helpful text about the different subcommands.",
        &[],
    ),
];

const fn sub(name: &'static str, arity: i64, summary: &'static str, args: &'static [Arg]) -> Info {
    Info {
        name,
        arity,
        flags: &["loading", "stale"],
        first_key: 0,
        last_key: 0,
        step: 0,
        categories: &["@slow", "@connection"],
        summary,
        since: "7.0.0",
        group: "server",
        complexity: "O(N) where N is the number of commands",
        args,
        subcommands: &[],
    }
}

/// CONFIG's subcommands.
const CONFIG_SUBCOMMANDS: [Info; 2] = [
    Info {
        name: "config|get",
        arity: -3,
        flags: &["admin", "noscript", "loading", "stale"],
        first_key: 0,
        last_key: 0,
        step: 0,
        categories: &["@admin", "@slow", "@dangerous"],
        summary: "Returns the effective values of configuration parameters (those kv-node has).",
        since: "2.0.0",
        group: "server",
        complexity: "O(N) when N is the number of configuration parameters provided",
        args: &[Arg {
            multiple: true,
            ..arg("parameter", "string")
        }],
        subcommands: &[],
    },
    Info {
        name: "config|help",
        arity: 2,
        flags: &["loading", "stale"],
        first_key: 0,
        last_key: 0,
        step: 0,
        categories: &["@slow"],
        summary: "Returns helpful text about the different subcommands.",
        since: "5.0.0",
        group: "server",
        complexity: "O(1)",
        args: &[],
        subcommands: &[],
    },
];

/// The configuration parameters `CONFIG GET` reports, with kv-node's
/// values: it keeps nothing on disk. (redis-benchmark asks for these two.)
const CONFIG_PARAMETERS: [(&str, &str); 2] = [("save", ""), ("appendonly", "no")];

const CONFIG_HELP: [&str; 5] = [
    "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GET <pattern>",
    "    Return parameters matching the glob-like <pattern> and their values.",
    "HELP",
    "    Print this help.",
];

/// CONFIG GET and CONFIG HELP.
fn config_command(request: &Request<'_>, out: &mut Vec<u8>) {
    let subcommand = request.arg(1).unwrap_or_default();
    let Some(info) = find_subcommand(&CONFIG_SUBCOMMANDS, subcommand) else {
        return unknown_subcommand(subcommand, "CONFIG", out);
    };
    if !arity_ok(info.arity, request.len()) {
        return arity_error(info.name, out);
    }
    if info.name == "config|help" {
        return write_statuses(&CONFIG_HELP, out);
    }
    let patterns: Vec<&[u8]> = request.args().skip(2).collect();
    let matching: Vec<&(&str, &str)> = CONFIG_PARAMETERS
        .iter()
        .filter(|(name, _)| patterns.iter().any(|p| glob_match(p, name.as_bytes())))
        .collect();
    resp::write_array(out, matching.len() * 2);
    for (name, value) in matching {
        resp::write_bulk(out, name.as_bytes());
        resp::write_bulk(out, value.as_bytes());
    }
}

/// Whether `text` matches the glob `pattern`, ignoring ASCII case, as
/// Redis matches configuration names: `*` any run, `?` any byte, `[abc]`,
/// `[a-z]` and `[^...]` classes, `\x` a literal `x`. Linear in the product
/// of the lengths (no exponential backtracking).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern after it, text position).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let c = text[t].to_ascii_lowercase();
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => match_class(pattern, p + 1, c),
            Some(b'\\') if p + 1 < pattern.len() => {
                (pattern[p + 1].to_ascii_lowercase() == c).then_some(p + 2)
            }
            Some(&b) => (b.to_ascii_lowercase() == c).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                t += 1;
            }
            (None, Some((after, from))) => {
                // Let the last `*` take one more byte.
                p = after;
                t = from + 1;
                star = Some((after, from + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&b| b == b'*')
}

/// Matches `c` against the class starting at `pattern[from]` (after its
/// `[`): the pattern position after the class if it matches. An unclosed
/// class runs to the end of the pattern, as in Redis.
fn match_class(pattern: &[u8], from: usize, c: u8) -> Option<usize> {
    let mut i = from;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            i += 1;
            matched |= pattern[i].to_ascii_lowercase() == c;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (mut lo, mut hi) = (
                pattern[i].to_ascii_lowercase(),
                pattern[i + 2].to_ascii_lowercase(),
            );
            if lo > hi {
                std::mem::swap(&mut lo, &mut hi);
            }
            matched |= (lo..=hi).contains(&c);
            i += 2;
        } else {
            matched |= pattern[i].to_ascii_lowercase() == c;
        }
        i += 1;
    }
    (matched != negate).then_some((i + 1).min(pattern.len()))
}

fn find_subcommand(table: &'static [Info], name: &[u8]) -> Option<&'static Info> {
    table.iter().find(|s| {
        s.name
            .split_once('|')
            .is_some_and(|(_, sub)| sub.as_bytes().eq_ignore_ascii_case(name))
    })
}

/// Redis's reply to an unknown subcommand of `command`.
fn unknown_subcommand(subcommand: &[u8], command: &str, out: &mut Vec<u8>) {
    let mut message = b"ERR unknown subcommand '".to_vec();
    message.extend_from_slice(c_str(subcommand, 128));
    message.extend_from_slice(format!("'. Try {command} HELP.").as_bytes());
    resp::write_error(out, &message);
}

const COMMAND_HELP: [&str; 13] = [
    "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "(no subcommand)",
    "    Return details about all commands.",
    "COUNT",
    "    Return the total number of commands in this server.",
    "LIST",
    "    Return a list of all command names.",
    "INFO [<command-name> ...]",
    "    Return details about multiple commands.",
    "DOCS [<command-name> ...]",
    "    Return documentation details about multiple commands.",
    "HELP",
    "    Print this help.",
];

/// COMMAND and its subcommands.
fn command_command(request: &Request<'_>, out: &mut Vec<u8>) {
    let Some(subcommand) = request.arg(1) else {
        resp::write_array(out, TABLE.len());
        for info in &TABLE {
            write_info(info, out);
        }
        return;
    };
    let Some(info) = find_subcommand(&COMMAND_SUBCOMMANDS, subcommand) else {
        return unknown_subcommand(subcommand, "COMMAND", out);
    };
    if !arity_ok(info.arity, request.len()) {
        return arity_error(info.name, out);
    }
    let names: Vec<&[u8]> = request.args().skip(2).collect();
    match info.name {
        "command|count" => resp::write_integer(out, TABLE.len() as i64),
        "command|list" => {
            if !names.is_empty() {
                // FILTERBY is not supported.
                return resp::write_error(out, SYNTAX);
            }
            resp::write_array(out, TABLE.len());
            for info in &TABLE {
                resp::write_bulk(out, info.name.as_bytes());
            }
        }
        "command|info" => {
            if names.is_empty() {
                resp::write_array(out, TABLE.len());
                TABLE.iter().for_each(|info| write_info(info, out));
            } else {
                resp::write_array(out, names.len());
                for name in names {
                    match lookup(name) {
                        Some(command) => write_info(command.info(), out),
                        None => resp::write_null_bulk(out),
                    }
                }
            }
        }
        "command|docs" => {
            let chosen: Vec<&Info> = if names.is_empty() {
                TABLE.iter().collect()
            } else {
                names
                    .iter()
                    .filter_map(|name| lookup(name).map(Cmd::info))
                    .collect()
            };
            resp::write_array(out, chosen.len() * 2);
            for info in chosen {
                resp::write_bulk(out, info.name.as_bytes());
                write_docs(info, out);
            }
        }
        _ => write_statuses(&COMMAND_HELP, out),
    }
}

/// COMMAND INFO's ten fields for one command.
fn write_info(info: &Info, out: &mut Vec<u8>) {
    resp::write_array(out, 10);
    resp::write_bulk(out, info.name.as_bytes());
    resp::write_integer(out, info.arity);
    write_statuses(info.flags, out);
    resp::write_integer(out, info.first_key);
    resp::write_integer(out, info.last_key);
    resp::write_integer(out, info.step);
    write_statuses(info.categories, out);
    resp::write_array(out, 0); // tips
    resp::write_array(out, 0); // key specifications
    resp::write_array(out, info.subcommands.len());
    info.subcommands.iter().for_each(|s| write_info(s, out));
}

fn write_statuses(items: &[&str], out: &mut Vec<u8>) {
    resp::write_array(out, items.len());
    for item in items {
        resp::write_simple(out, item.as_bytes());
    }
}

/// COMMAND DOCS's map for one command (a flat array in RESP2).
fn write_docs(info: &Info, out: &mut Vec<u8>) {
    let has_subcommands = !info.subcommands.is_empty();
    let fields = 4 + usize::from(!info.args.is_empty()) + usize::from(has_subcommands);
    resp::write_array(out, fields * 2);
    for (key, value) in [
        ("summary", info.summary),
        ("since", info.since),
        ("group", info.group),
        ("complexity", info.complexity),
    ] {
        resp::write_bulk(out, key.as_bytes());
        resp::write_bulk(out, value.as_bytes());
    }
    if !info.args.is_empty() {
        resp::write_bulk(out, b"arguments");
        write_args(info.args, out);
    }
    if has_subcommands {
        resp::write_bulk(out, b"subcommands");
        resp::write_array(out, info.subcommands.len() * 2);
        for sub in info.subcommands {
            resp::write_bulk(out, sub.name.as_bytes());
            write_docs(sub, out);
        }
    }
}

fn write_args(args: &[Arg], out: &mut Vec<u8>) {
    resp::write_array(out, args.len());
    for arg in args {
        let flags: Vec<&str> = [("optional", arg.optional), ("multiple", arg.multiple)]
            .into_iter()
            .filter_map(|(flag, on)| on.then_some(flag))
            .collect();
        let fields = 2
            + usize::from(arg.token.is_some())
            + usize::from(!flags.is_empty())
            + usize::from(!arg.args.is_empty());
        resp::write_array(out, fields * 2);
        resp::write_bulk(out, b"name");
        resp::write_bulk(out, arg.name.as_bytes());
        resp::write_bulk(out, b"type");
        resp::write_bulk(out, arg.kind.as_bytes());
        if let Some(token) = arg.token {
            resp::write_bulk(out, b"token");
            resp::write_bulk(out, token.as_bytes());
        }
        if !flags.is_empty() {
            resp::write_bulk(out, b"flags");
            write_statuses(&flags, out);
        }
        if !arg.args.is_empty() {
            resp::write_bulk(out, b"arguments");
            write_args(arg.args, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::resp::{Limits, RequestParser};

    /// A node's engine in one thread: parser, dispatcher, one store per
    /// shard.
    struct Node {
        dispatcher: Dispatcher,
        stores: Vec<Store>,
    }

    impl Node {
        fn new(shards: usize) -> Node {
            Node {
                dispatcher: Dispatcher::new(shards),
                stores: (0..shards).map(|_| Store::new()).collect(),
            }
        }

        /// Runs every request in `input` (then the protocol error, if any)
        /// at time `now`; the replies as text.
        fn run(&mut self, input: &[u8], now: u64) -> String {
            let mut parser = RequestParser::new(Limits::default());
            parser.feed(input);
            let mut out = Vec::new();
            loop {
                match parser.next() {
                    Ok(Some(request)) => {
                        self.dispatcher
                            .run_local(&mut self.stores, &request, now, &mut out)
                    }
                    Ok(None) => break,
                    Err(e) => {
                        e.write_reply(&mut out);
                        break;
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        }

        /// Runs one inline command; the reply.
        fn cmd(&mut self, line: &str, now: u64) -> String {
            self.run(format!("{line}\r\n").as_bytes(), now)
        }
    }

    fn arity(name: &str) -> String {
        format!("-ERR wrong number of arguments for '{name}' command\r\n")
    }

    const NOT_INT: &str = "-ERR value is not an integer or out of range\r\n";
    const SYNTAX_ERR: &str = "-ERR syntax error\r\n";
    const BAD_EXPIRE: &str = "-ERR invalid expire time in 'set' command\r\n";

    #[test]
    fn ping_and_echo() {
        let mut n = Node::new(1);
        assert_eq!(n.cmd("PING", 0), "+PONG\r\n");
        assert_eq!(n.cmd("ping hello", 0), "$5\r\nhello\r\n");
        assert_eq!(n.cmd("PING a b", 0), arity("ping"));
        assert_eq!(n.cmd("ECHO \"a b\"", 0), "$3\r\na b\r\n");
        assert_eq!(n.cmd("echo", 0), arity("echo"));
        assert_eq!(n.cmd("ECHO a b", 0), arity("echo"));
    }

    #[test]
    fn get_and_set() {
        let mut n = Node::new(1);
        assert_eq!(n.cmd("GET k", 0), "$-1\r\n");
        assert_eq!(n.cmd("SET k v", 0), "+OK\r\n");
        assert_eq!(n.cmd("get k", 0), "$1\r\nv\r\n");
        assert_eq!(n.cmd("SET k v2 NX", 0), "$-1\r\n");
        assert_eq!(n.cmd("SET k2 v XX", 0), "$-1\r\n");
        assert_eq!(n.cmd("SET k2 v nx", 0), "+OK\r\n");
        assert_eq!(n.cmd("SET k2 w XX GET", 0), "$1\r\nv\r\n");
        assert_eq!(n.cmd("SET k2 x NX GET", 0), "$1\r\nw\r\n");
        assert_eq!(n.cmd("SET k3 x GET", 0), "$-1\r\n");
        assert_eq!(n.cmd("SET k3 \"\"", 0), "+OK\r\n");
        assert_eq!(n.cmd("GET k3", 0), "$0\r\n\r\n");
        assert_eq!(n.cmd("GET", 0), arity("get"));
        assert_eq!(n.cmd("GET a b", 0), arity("get"));
        assert_eq!(n.cmd("SET k", 0), arity("set"));
    }

    #[test]
    fn set_expiry_with_a_fake_clock() {
        let mut n = Node::new(1);
        assert_eq!(n.cmd("SET a 1 EX 10", 1_000), "+OK\r\n");
        assert_eq!(n.cmd("SET b 1 px 500", 1_000), "+OK\r\n");
        assert_eq!(n.cmd("SET c 1 EXAT 3", 1_000), "+OK\r\n");
        assert_eq!(n.cmd("SET d 1 PXAT 1700", 1_000), "+OK\r\n");
        assert_eq!(n.cmd("DBSIZE", 1_000), ":4\r\n");
        assert_eq!(n.cmd("GET b", 1_499), "$1\r\n1\r\n");
        assert_eq!(n.cmd("GET b", 1_500), "$-1\r\n");
        assert_eq!(n.cmd("GET d", 1_700), "$-1\r\n");
        assert_eq!(n.cmd("GET c", 2_999), "$1\r\n1\r\n");
        assert_eq!(n.cmd("EXISTS c", 3_000), ":0\r\n");
        // a: 11_000. KEEPTTL keeps it, a plain SET drops it.
        assert_eq!(n.cmd("SET a 2 KEEPTTL", 5_000), "+OK\r\n");
        assert_eq!(n.cmd("GET a", 10_999), "$1\r\n2\r\n");
        assert_eq!(n.cmd("GET a", 11_000), "$-1\r\n");
        assert_eq!(n.cmd("SET a 3 EX 1", 20_000), "+OK\r\n");
        assert_eq!(n.cmd("SET a 4", 20_000), "+OK\r\n");
        assert_eq!(n.cmd("GET a", 1_000_000), "$1\r\n4\r\n");
        // The same option twice: the last wins.
        assert_eq!(n.cmd("SET e 1 EX 1 EX 2", 0), "+OK\r\n");
        assert_eq!(n.cmd("GET e", 1_999), "$1\r\n1\r\n");
        // A time already past deletes the key (after GET read it).
        assert_eq!(n.cmd("SET e 2 PXAT 1 GET", 5), "$1\r\n1\r\n");
        assert_eq!(n.cmd("GET e", 5), "$-1\r\n");
        // INCR keeps the deadline.
        assert_eq!(n.cmd("SET n 1 PX 100", 0), "+OK\r\n");
        assert_eq!(n.cmd("INCR n", 50), ":2\r\n");
        assert_eq!(n.cmd("GET n", 99), "$1\r\n2\r\n");
        assert_eq!(n.cmd("GET n", 100), "$-1\r\n");
    }

    #[test]
    fn set_errors() {
        let mut n = Node::new(1);
        for (line, reply) in [
            ("SET k v EX", SYNTAX_ERR),
            ("SET k v NX XX", SYNTAX_ERR),
            ("SET k v XX NX", SYNTAX_ERR),
            ("SET k v EX 1 PX 1", SYNTAX_ERR),
            ("SET k v KEEPTTL EX 1", SYNTAX_ERR),
            ("SET k v PXAT 1 KEEPTTL", SYNTAX_ERR),
            ("SET k v FOO", SYNTAX_ERR),
            ("SET k v EX abc", NOT_INT),
            ("SET k v EX 1.5", NOT_INT),
            ("SET k v EX 0", BAD_EXPIRE),
            ("SET k v PX -1", BAD_EXPIRE),
            ("SET k v EXAT 0", BAD_EXPIRE),
            ("SET k v EX 9223372036854776", BAD_EXPIRE),
            ("SET k v PX 9223372036854775807", BAD_EXPIRE),
        ] {
            assert_eq!(n.cmd(line, 1), reply, "{line}");
        }
        // Syntax is checked before the time, as Redis does.
        assert_eq!(n.cmd("SET k v EX 0 FOO", 1), SYNTAX_ERR);
        // Nothing was written.
        assert_eq!(n.cmd("DBSIZE", 1), ":0\r\n");
        // The largest EX that fits.
        assert_eq!(n.cmd("SET k v EX 9223372036854775", 0), "+OK\r\n");
    }

    #[test]
    fn counters() {
        let mut n = Node::new(1);
        assert_eq!(n.cmd("INCR c", 0), ":1\r\n");
        assert_eq!(n.cmd("INCRBY c 10", 0), ":11\r\n");
        assert_eq!(n.cmd("DECR c", 0), ":10\r\n");
        assert_eq!(n.cmd("DECRBY c 20", 0), ":-10\r\n");
        assert_eq!(n.cmd("GET c", 0), "$3\r\n-10\r\n");
        assert_eq!(n.cmd("INCRBY c abc", 0), NOT_INT);
        assert_eq!(n.cmd("INCRBY c 01", 0), NOT_INT);
        assert_eq!(
            n.cmd("DECRBY c -9223372036854775808", 0),
            "-ERR decrement would overflow\r\n"
        );
        assert_eq!(
            n.cmd("DECRBY c -9223372036854775807", 0),
            ":9223372036854775797\r\n"
        );
        assert_eq!(
            n.cmd("INCRBY c 100", 0),
            "-ERR increment or decrement would overflow\r\n"
        );
        assert_eq!(n.cmd("SET s hello", 0), "+OK\r\n");
        assert_eq!(n.cmd("INCR s", 0), NOT_INT);
        assert_eq!(n.cmd("INCR", 0), arity("incr"));
        assert_eq!(n.cmd("INCRBY c", 0), arity("incrby"));
        assert_eq!(n.cmd("DECR a b", 0), arity("decr"));
        assert_eq!(n.cmd("DECRBY c", 0), arity("decrby"));
    }

    #[test]
    fn multi_key_commands_across_shards() {
        let mut n = Node::new(4);
        assert_eq!(n.cmd("MSET a 1 b 2 c 3 d 4 a 5", 0), "+OK\r\n");
        assert_eq!(
            n.cmd("MGET d nope a c b a", 0),
            "*6\r\n$1\r\n4\r\n$-1\r\n$1\r\n5\r\n$1\r\n3\r\n$1\r\n2\r\n$1\r\n5\r\n"
        );
        assert_eq!(n.cmd("EXISTS a a nope b", 0), ":3\r\n");
        assert_eq!(n.cmd("DBSIZE", 0), ":4\r\n");
        assert_eq!(n.cmd("DEL a nope a c", 0), ":2\r\n");
        assert_eq!(n.cmd("DBSIZE", 0), ":2\r\n");
        assert_eq!(n.cmd("FLUSHALL", 0), "+OK\r\n");
        assert_eq!(n.cmd("DBSIZE", 0), ":0\r\n");
        assert_eq!(n.cmd("MSET a 1 b", 0), arity("mset"));
        assert_eq!(n.cmd("MSET a", 0), arity("mset"));
        assert_eq!(n.cmd("MGET", 0), arity("mget"));
        assert_eq!(n.cmd("DEL", 0), arity("del"));
        assert_eq!(n.cmd("EXISTS", 0), arity("exists"));
        assert_eq!(n.cmd("DBSIZE x", 0), arity("dbsize"));
        assert_eq!(n.cmd("FLUSHALL async", 0), "+OK\r\n");
        assert_eq!(n.cmd("FLUSHALL SYNC", 0), "+OK\r\n");
        assert_eq!(n.cmd("FLUSHALL now", 0), SYNTAX_ERR);
        assert_eq!(n.cmd("FLUSHALL SYNC SYNC", 0), SYNTAX_ERR);
        // The keys really were spread over several shards.
        n.cmd("MSET a 1 b 2 c 3 d 4 e 5 f 6", 0);
        assert!(n.stores.iter().filter(|s| !s.is_empty()).count() > 1);
    }

    #[test]
    fn plans_name_the_owning_shards() {
        let d = Dispatcher::new(4);
        let mut parser = RequestParser::new(Limits::default());
        let mut out = Vec::new();
        parser.feed(b"GET somekey\r\n");
        let plan = d.plan(&parser.next().unwrap().unwrap(), 0, &mut out);
        assert_eq!(
            plan,
            Plan::One {
                shard: shard_of(b"somekey", 4),
                op: ShardOp::Get {
                    key: Cow::from(&b"somekey"[..])
                }
            }
        );
        parser.feed(b"MGET a b c d e f\r\n");
        let Plan::Many { ops, merge } = d.plan(&parser.next().unwrap().unwrap(), 0, &mut out)
        else {
            panic!("MGET over six keys and four shards runs on several shards");
        };
        assert!(ops.windows(2).all(|w| w[0].0 < w[1].0));
        for (shard, op) in &ops {
            let ShardOp::MGet { keys } = op else {
                panic!("{op:?}");
            };
            assert!(keys.iter().all(|k| shard_of(k, 4) == *shard));
        }
        assert!(matches!(merge, Merge::Values(_)));
        // Keys sharing a hash tag run on one shard.
        parser.feed(b"MGET {u}a {u}b {u}c\r\n");
        let plan = d.plan(&parser.next().unwrap().unwrap(), 0, &mut out);
        assert!(matches!(
            plan,
            Plan::One {
                op: ShardOp::MGet { .. },
                ..
            }
        ));
        parser.feed(b"DBSIZE\r\n");
        let Plan::Many { ops, merge } = d.plan(&parser.next().unwrap().unwrap(), 0, &mut out)
        else {
            panic!("DBSIZE asks every shard");
        };
        assert_eq!(
            ops.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(merge, Merge::Sum);
        assert!(out.is_empty());
    }

    #[test]
    fn merges_never_panic_on_answers_that_do_not_fit() {
        let mut out = Vec::new();
        Merge::Sum.write(vec![ShardReply::Int(2), ShardReply::Int(3)], &mut out);
        Merge::Sum.write(vec![ShardReply::Int(2), ShardReply::Ok], &mut out);
        Merge::Sum.write(vec![ShardReply::Error(StoreError::NotInteger)], &mut out);
        Merge::AllOk.write(vec![ShardReply::Ok, ShardReply::Nil], &mut out);
        let keys: [&[u8]; 2] = [b"a", b"b"];
        let split = Split::new(keys, 1);
        Merge::Values(split.clone()).write(vec![ShardReply::Values(vec![None])], &mut out);
        Merge::Values(split).write(vec![ShardReply::Int(1)], &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            ":5\r\n\
             -ERR internal error: shard answers do not match\r\n\
             -ERR value is not an integer or out of range\r\n\
             -ERR internal error: shard answers do not match\r\n\
             -ERR internal error: shard answers do not match\r\n\
             -ERR internal error: shard answers do not match\r\n"
        );
    }

    #[test]
    fn unknown_commands_get_redis_wording_and_the_connection_goes_on() {
        let mut n = Node::new(1);
        assert_eq!(
            n.cmd("FOO", 0),
            "-ERR unknown command 'FOO', with args beginning with: \r\n"
        );
        assert_eq!(
            n.cmd("foo a \"b c\"", 0),
            "-ERR unknown command 'foo', with args beginning with: 'a' 'b c' \r\n"
        );
        // CR and LF become spaces; a NUL ends a name, as in C.
        assert_eq!(
            n.run(b"*3\r\n$4\r\nX\r\nY\r\n$3\r\na\x00b\r\n$2\r\n\r\n\r\n", 0),
            "-ERR unknown command 'X  Y', with args beginning with: 'a' '  ' \r\n"
        );
        // The name is cut at 128 bytes, the arguments once 128 bytes are used.
        let long = "n".repeat(200);
        let arg = "a".repeat(100);
        let reply = n.cmd(&format!("{long} {arg} {arg} {arg}"), 0);
        let expected = format!(
            "-ERR unknown command '{}', with args beginning with: '{arg}' '{}' \r\n",
            "n".repeat(128),
            "a".repeat(128 - 103)
        );
        assert_eq!(reply, expected);
        assert_eq!(n.cmd("PING", 0), "+PONG\r\n");
    }

    #[test]
    fn pipelines_and_protocol_errors() {
        let mut n = Node::new(2);
        let replies = n.run(
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\nGET k\r\nNOPE\r\nGET\r\n*1\r\n$x\r\nPING\r\n",
            0,
        );
        assert_eq!(
            replies,
            "+OK\r\n$1\r\nv\r\n\
             -ERR unknown command 'NOPE', with args beginning with: \r\n\
             -ERR wrong number of arguments for 'get' command\r\n\
             -ERR Protocol error: invalid bulk length\r\n"
        );
    }

    /// A decoded reply, for checking the structure of COMMAND's answers.
    #[derive(Debug, PartialEq)]
    enum Value {
        Status(String),
        Error(String),
        Int(i64),
        Bulk(Option<Vec<u8>>),
        Array(Option<Vec<Value>>),
    }

    fn decode(input: &[u8]) -> (Value, &[u8]) {
        let line_end = input.windows(2).position(|w| w == b"\r\n").expect("CRLF");
        let line = std::str::from_utf8(&input[1..line_end]).expect("UTF-8 line");
        let rest = &input[line_end + 2..];
        match input[0] {
            b'+' => (Value::Status(line.to_owned()), rest),
            b'-' => (Value::Error(line.to_owned()), rest),
            b':' => (Value::Int(line.parse().expect("integer")), rest),
            b'$' => {
                let len: i64 = line.parse().expect("length");
                if len < 0 {
                    return (Value::Bulk(None), rest);
                }
                let len = len as usize;
                assert_eq!(&rest[len..len + 2], b"\r\n");
                (Value::Bulk(Some(rest[..len].to_vec())), &rest[len + 2..])
            }
            b'*' => {
                let len: i64 = line.parse().expect("length");
                if len < 0 {
                    return (Value::Array(None), rest);
                }
                let mut items = Vec::new();
                let mut rest = rest;
                for _ in 0..len {
                    let (item, after) = decode(rest);
                    items.push(item);
                    rest = after;
                }
                (Value::Array(Some(items)), rest)
            }
            other => panic!("unexpected type byte {other}"),
        }
    }

    fn decode_all(text: &str) -> Value {
        let (value, rest) = decode(text.as_bytes());
        assert!(rest.is_empty(), "trailing bytes");
        value
    }

    fn items(value: &Value) -> &[Value] {
        match value {
            Value::Array(Some(items)) => items,
            other => panic!("not an array: {other:?}"),
        }
    }

    fn bulk(value: &Value) -> &str {
        match value {
            Value::Bulk(Some(b)) => std::str::from_utf8(b).unwrap(),
            other => panic!("not a bulk string: {other:?}"),
        }
    }

    /// Checks a COMMAND DOCS map the way redis-cli reads it: string keys,
    /// string summary / since / group, arguments with a name and a type,
    /// flags as status replies, subcommands named `parent|name`.
    fn check_docs(map: &Value) {
        let map = items(map);
        assert_eq!(map.len() % 2, 0);
        let keys: Vec<&str> = map.iter().step_by(2).map(bulk).collect();
        for required in ["summary", "since", "group"] {
            assert!(keys.contains(&required), "{keys:?}");
        }
        for pair in map.chunks(2) {
            match bulk(&pair[0]) {
                "summary" | "since" | "group" | "complexity" => {
                    bulk(&pair[1]);
                }
                "arguments" => items(&pair[1]).iter().for_each(check_arg),
                "subcommands" => {
                    for sub in items(&pair[1]).chunks(2) {
                        assert!(bulk(&sub[0]).contains('|'));
                        check_docs(&sub[1]);
                    }
                }
                other => panic!("unexpected docs field {other}"),
            }
        }
    }

    fn check_arg(arg: &Value) {
        let fields = items(arg);
        let keys: Vec<&str> = fields.iter().step_by(2).map(bulk).collect();
        assert!(keys.contains(&"name") && keys.contains(&"type"), "{keys:?}");
        for pair in fields.chunks(2) {
            match bulk(&pair[0]) {
                "name" | "type" | "token" => {
                    bulk(&pair[1]);
                }
                "flags" => {
                    for flag in items(&pair[1]) {
                        assert!(
                            matches!(flag, Value::Status(f) if f == "optional" || f == "multiple")
                        );
                    }
                }
                "arguments" => items(&pair[1]).iter().for_each(check_arg),
                other => panic!("unexpected argument field {other}"),
            }
        }
    }

    fn check_info(info: &Value) {
        let fields = items(info);
        assert_eq!(fields.len(), 10);
        let name = bulk(&fields[0]);
        assert!(lookup(name.as_bytes()).is_some() || name.contains('|'));
        assert!(matches!(fields[1], Value::Int(_)));
        for i in [2, 6] {
            assert!(items(&fields[i])
                .iter()
                .all(|f| matches!(f, Value::Status(_))));
        }
        for i in [3, 4, 5] {
            assert!(matches!(fields[i], Value::Int(_)));
        }
        items(&fields[9]).iter().for_each(check_info);
    }

    #[test]
    fn command_and_its_subcommands() {
        let mut n = Node::new(1);
        let all = decode_all(&n.cmd("COMMAND", 0));
        assert_eq!(items(&all).len(), 16);
        items(&all).iter().for_each(check_info);
        let get = &items(&all)[0];
        assert_eq!(bulk(&items(get)[0]), "get");
        assert_eq!(items(get)[1], Value::Int(2));
        // Every command listed is served, with the arity it states.
        for info in items(&all) {
            let fields = items(info);
            let name = bulk(&fields[0]);
            let Value::Int(arity) = fields[1] else {
                unreachable!()
            };
            let command = lookup(name.as_bytes()).expect("listed commands exist");
            assert_eq!(command.info().arity, arity);
        }
        assert_eq!(n.cmd("command count", 0), ":16\r\n");
        let docs = decode_all(&n.cmd("COMMAND DOCS", 0));
        assert_eq!(items(&docs).len(), 32);
        for pair in items(&docs).chunks(2) {
            lookup(bulk(&pair[0]).as_bytes()).expect("documented commands exist");
            check_docs(&pair[1]);
        }
        let docs = decode_all(&n.cmd("COMMAND DOCS set nope GET", 0));
        let names: Vec<&str> = items(&docs).iter().step_by(2).map(bulk).collect();
        assert_eq!(names, ["set", "get"]);
        let info = decode_all(&n.cmd("COMMAND INFO mget nope", 0));
        assert_eq!(items(&info).len(), 2);
        check_info(&items(&info)[0]);
        assert_eq!(items(&info)[1], Value::Bulk(None));
        let list = decode_all(&n.cmd("COMMAND LIST", 0));
        assert_eq!(items(&list).len(), 16);
        let help = decode_all(&n.cmd("COMMAND HELP", 0));
        assert!(items(&help).iter().all(|l| matches!(l, Value::Status(_))));
        assert_eq!(
            n.cmd("COMMAND FOO", 0),
            "-ERR unknown subcommand 'FOO'. Try COMMAND HELP.\r\n"
        );
        assert_eq!(n.cmd("COMMAND COUNT x", 0), arity("command|count"));
        assert_eq!(n.cmd("COMMAND LIST FILTERBY x", 0), SYNTAX_ERR);
    }

    #[test]
    fn config_get_reports_what_the_node_has() {
        let mut n = Node::new(2);
        // What redis-benchmark asks at start.
        assert_eq!(
            n.cmd("CONFIG GET save", 0),
            "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
        );
        assert_eq!(
            n.cmd("config get APPENDONLY", 0),
            "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"
        );
        // Patterns; each parameter once however many patterns match it.
        assert_eq!(
            n.cmd("CONFIG GET * s*", 0),
            "*4\r\n$4\r\nsave\r\n$0\r\n\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"
        );
        assert_eq!(n.cmd("CONFIG GET maxmemory", 0), "*0\r\n");
        assert_eq!(n.cmd("CONFIG GET", 0), arity("config|get"));
        assert_eq!(n.cmd("CONFIG", 0), arity("config"));
        assert_eq!(
            n.cmd("CONFIG SET save x", 0),
            "-ERR unknown subcommand 'SET'. Try CONFIG HELP.\r\n"
        );
        let help = decode_all(&n.cmd("CONFIG HELP", 0));
        assert!(items(&help).iter().all(|l| matches!(l, Value::Status(_))));
        // CONFIG is documented with its subcommands.
        let docs = decode_all(&n.cmd("COMMAND DOCS config", 0));
        assert_eq!(bulk(&items(&docs)[0]), "config");
        check_docs(&items(&docs)[1]);
    }

    #[test]
    fn glob_patterns_match_as_redis_does() {
        for (pattern, text, matches) in [
            ("*", "save", true),
            ("", "", true),
            ("", "a", false),
            ("save", "SAVE", true),
            ("sa?e", "save", true),
            ("sa?e", "sae", false),
            ("*only", "appendonly", true),
            ("*only*", "appendonly", true),
            ("a*d*y", "appendonly", true),
            ("a*d*x", "appendonly", false),
            ("[ab]ppendonly", "appendonly", true),
            ("[^a]ppendonly", "appendonly", false),
            ("[b-z]ave", "save", true),
            ("[z-b]ave", "save", true),
            ("[a-c]ave", "save", false),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("s[a", "sa", true),
            ("**a**", "a", true),
        ] {
            assert_eq!(
                glob_match(pattern.as_bytes(), text.as_bytes()),
                matches,
                "{pattern:?} against {text:?}"
            );
        }
        // Many stars against a long text stay fast (no backtracking blow-up).
        let pattern = "*a".repeat(30) + "b";
        assert!(!glob_match(pattern.as_bytes(), "a".repeat(2000).as_bytes()));
    }

    /// A deterministic mix of commands over a few keys.
    fn workload() -> Vec<u8> {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut input = Vec::new();
        for _ in 0..2_000 {
            let key = |r: u64| format!("key{r}");
            let line = match next(10) {
                0 => format!("SET {} v{} PX {}", key(next(20)), next(100), 1 + next(50)),
                1 => format!("SET {} {}", key(next(20)), next(1000)),
                2 => format!("GET {}", key(next(20))),
                3 => format!("INCRBY {} {}", key(next(20)), next(10)),
                4 => format!(
                    "MGET {} {} {} {}",
                    key(next(20)),
                    key(next(20)),
                    key(next(20)),
                    key(next(20))
                ),
                5 => format!(
                    "MSET {} a {} b {} c",
                    key(next(20)),
                    key(next(20)),
                    key(next(20))
                ),
                6 => format!("DEL {} {} {}", key(next(20)), key(next(20)), key(next(20))),
                7 => format!(
                    "EXISTS {} {} {}",
                    key(next(20)),
                    key(next(20)),
                    key(next(20))
                ),
                8 => "DBSIZE".to_owned(),
                _ => format!("SET {} x NX GET", key(next(20))),
            };
            input.extend_from_slice(line.as_bytes());
            input.extend_from_slice(b"\r\n");
        }
        input
    }

    #[test]
    fn any_shard_count_gives_the_same_replies() {
        let input = workload();
        let replies: Vec<String> = [1, 2, 3, 4, 8]
            .into_iter()
            .map(|shards| {
                let mut n = Node::new(shards);
                // Advance the clock through the stream so that keys expire.
                input
                    .split_inclusive(|&b| b == b'\n')
                    .enumerate()
                    .map(|(i, line)| n.run(line, i as u64 / 4))
                    .collect()
            })
            .collect();
        assert!(replies[0].contains(":1\r\n") && replies[0].contains("*4\r\n"));
        for (i, other) in replies.iter().enumerate().skip(1) {
            assert!(replies[0] == *other, "shard count #{i} differs");
        }
    }
}
