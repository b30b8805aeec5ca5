//! One connection's turn: the requests that arrived together, answered in
//! request order, with the work for shards owned by other cores gathered
//! into one [`Batch`] per shard.
//!
//! A node keeps one [`Turn`] per connection and, each time bytes arrive:
//!
//! 1. [`Turn::push`] every complete request (and [`Turn::push_error`] a
//!    protocol error). What the local shard can answer is answered at once,
//!    into the turn's output; what another shard owns becomes an op in that
//!    shard's batch and leaves a hole in the output where its reply goes.
//! 2. [`Turn::take_batches`] hands out the batches, at most one per shard,
//!    ops in request order. The node sends each to the core that owns the
//!    shard, which runs it with [`run_batch`] and sends the [`BatchReply`]
//!    back; [`Turn::complete`] (or [`Turn::fail`], if the shard could not
//!    answer) takes it in.
//! 3. [`Turn::take_output`] returns every reply of the turn, in request
//!    order, in one buffer: one send.
//!
//! Ordering: the local shard runs its ops while the requests are pushed,
//! and each other shard runs its batch in request order, so every key (it
//! lives on one shard) sees the connection's commands in the order they
//! were sent. A node must not start a turn's batches before the previous
//! turn's replies came back.
//!
//! ```
//! use ringwire_examples::kv::dispatch::Dispatcher;
//! use ringwire_examples::kv::pipeline::{run_batch, Turn};
//! use ringwire_examples::kv::resp::{Limits, RequestParser};
//! use ringwire_examples::kv::shard::shard_of;
//! use ringwire_examples::kv::store::Store;
//!
//! // Two shards: this core owns shard 0, another core owns shard 1.
//! let dispatcher = Dispatcher::new(2);
//! let (mut here, mut there) = (Store::new(), Store::new());
//! assert_eq!((shard_of(b"a", 2), shard_of(b"c", 2)), (1, 0));
//!
//! let mut parser = RequestParser::new(Limits::default());
//! parser.feed(b"SET a 1\r\nSET c 2\r\nMGET a c\r\nPING\r\n");
//! let mut turn = Turn::new(0, 2);
//! while let Some(request) = parser.next().unwrap() {
//!     turn.push(&dispatcher, &mut here, &request, 0);
//! }
//! for (shard, batch) in turn.take_batches() {
//!     assert_eq!(shard, 1);
//!     // On the core that owns shard 1:
//!     let reply = run_batch(&mut there, batch, 0);
//!     turn.complete(shard, reply);
//! }
//! let out = turn.take_output(Vec::new());
//! assert_eq!(
//!     String::from_utf8(out).unwrap(),
//!     "+OK\r\n+OK\r\n*2\r\n$1\r\n1\r\n$1\r\n2\r\n+PONG\r\n"
//! );
//! ```

use std::borrow::Cow;
use std::ops::Range;

use super::dispatch::{execute, execute_into, Dispatcher, Merge, Plan, ShardOp, ShardReply};
use super::resp::{self, ProtocolError, Request};
use super::store::{SetOptions, Store};

/// Buffers larger than this are not kept for the next turn (one huge
/// request must not pin its memory for the life of the connection).
const RETAIN: usize = 1 << 20;

/// A [`ShardOp`] packed into a batch: keys and values are spans of the
/// batch's arena; multi-key ops list their spans in `Batch::spans`.
#[derive(Clone, Debug)]
enum Packed {
    Get(Range<usize>),
    Set(Range<usize>, Range<usize>, SetOptions),
    IncrBy(Range<usize>, i64),
    Del(Range<usize>),
    Exists(Range<usize>),
    MGet(Range<usize>),
    /// Key and value spans alternate.
    MSet(Range<usize>),
    DbSize,
    FlushAll,
    /// Key, expected value (`None`: absent), new value.
    Cas(Range<usize>, Option<Range<usize>>, Range<usize>),
}

/// One op sent to another shard.
#[derive(Debug)]
struct Forwarded {
    op: Packed,
    /// `None`: the op's reply is the whole request's reply, written as
    /// bytes. `Some(i)`: its answer is part `i` of a merge.
    part: Option<usize>,
}

/// The ops one turn sends to one shard, in request order. `Send`: it
/// travels to the core that owns the shard, which runs it with
/// [`run_batch`], and comes back inside the [`BatchReply`] so that the
/// sender reuses its memory: in a steady state, forwarding allocates
/// nothing per op, and no core frees memory another core allocated.
#[derive(Debug, Default)]
pub struct Batch {
    /// The ops' keys and values, back to back.
    arena: Vec<u8>,
    /// Key (and value) spans of multi-key ops.
    spans: Vec<Range<usize>>,
    ops: Vec<Forwarded>,
    /// Room for the replies, lent by the sender: the whole-request replies
    /// back to back, and where each ends.
    out: Vec<u8>,
    ends: Vec<usize>,
}

impl Batch {
    /// Number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no op.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn bytes(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        start..self.arena.len()
    }

    fn span_list<'k>(&mut self, items: impl IntoIterator<Item = &'k [u8]>) -> Range<usize> {
        let first = self.spans.len();
        for item in items {
            let span = self.bytes(item);
            self.spans.push(span);
        }
        first..self.spans.len()
    }

    /// Appends `op`, copying its keys and values into the arena.
    fn push(&mut self, op: ShardOp<'_>, part: Option<usize>) {
        let op = match op {
            ShardOp::Get { key } => Packed::Get(self.bytes(&key)),
            ShardOp::Set {
                key,
                value,
                options,
            } => Packed::Set(self.bytes(&key), self.bytes(&value), options),
            ShardOp::IncrBy { key, delta } => Packed::IncrBy(self.bytes(&key), delta),
            ShardOp::Del { keys } => Packed::Del(self.span_list(keys.iter().map(|k| &k[..]))),
            ShardOp::Exists { keys } => Packed::Exists(self.span_list(keys.iter().map(|k| &k[..]))),
            ShardOp::MGet { keys } => Packed::MGet(self.span_list(keys.iter().map(|k| &k[..]))),
            ShardOp::MSet { pairs } => {
                Packed::MSet(self.span_list(pairs.iter().flat_map(|(k, v)| [&k[..], &v[..]])))
            }
            ShardOp::DbSize => Packed::DbSize,
            ShardOp::FlushAll => Packed::FlushAll,
            ShardOp::Cas { key, expected, new } => Packed::Cas(
                self.bytes(&key),
                expected.map(|e| self.bytes(&e)),
                self.bytes(&new),
            ),
        };
        self.ops.push(Forwarded { op, part });
    }

    /// Appends `op`, whose answer comes back as a [`ShardReply`] tagged
    /// `tag` ([`BatchReply::answers`]) rather than as reply bytes: for
    /// callers that build their own replies (kv-node's typed protocol).
    pub fn push_op(&mut self, op: ShardOp<'_>, tag: usize) {
        self.push(op, Some(tag));
    }

    /// The op `packed` as a [`ShardOp`] borrowing from the arena. Spans
    /// are the batch's own, so they are in range; should one not be, the
    /// op sees an empty key rather than panicking.
    fn unpack<'b>(arena: &'b [u8], spans: &[Range<usize>], packed: &Packed) -> ShardOp<'b> {
        let bytes =
            |span: &Range<usize>| Cow::Borrowed(arena.get(span.clone()).unwrap_or_default());
        let list = |range: &Range<usize>| -> Vec<Cow<'b, [u8]>> {
            spans
                .get(range.clone())
                .unwrap_or_default()
                .iter()
                .map(bytes)
                .collect()
        };
        match packed {
            Packed::Get(key) => ShardOp::Get { key: bytes(key) },
            Packed::Set(key, value, options) => ShardOp::Set {
                key: bytes(key),
                value: bytes(value),
                options: *options,
            },
            Packed::IncrBy(key, delta) => ShardOp::IncrBy {
                key: bytes(key),
                delta: *delta,
            },
            Packed::Del(keys) => ShardOp::Del { keys: list(keys) },
            Packed::Exists(keys) => ShardOp::Exists { keys: list(keys) },
            Packed::MGet(keys) => ShardOp::MGet { keys: list(keys) },
            Packed::MSet(items) => {
                let items = list(items);
                let mut pairs = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                ShardOp::MSet { pairs }
            }
            Packed::DbSize => ShardOp::DbSize,
            Packed::FlushAll => ShardOp::FlushAll,
            Packed::Cas(key, expected, new) => ShardOp::Cas {
                key: bytes(key),
                expected: expected.as_ref().map(bytes),
                new: bytes(new),
            },
        }
    }

    /// Empties the batch for reuse, dropping buffers grown too large.
    fn recycle(&mut self) {
        fn reset<T>(v: &mut Vec<T>, limit: usize) {
            if v.capacity() > limit {
                *v = Vec::new();
            } else {
                v.clear();
            }
        }
        reset(&mut self.arena, RETAIN);
        reset(&mut self.spans, RETAIN / 16);
        reset(&mut self.ops, RETAIN / 64);
        reset(&mut self.out, RETAIN);
        reset(&mut self.ends, RETAIN / 8);
    }
}

/// A shard's answers to a [`Batch`], to hand back to the turn that sent it
/// (with the batch's memory).
#[derive(Debug, Default)]
pub struct BatchReply {
    /// The batch, its ops run, its `out` and `ends` holding the replies.
    batch: Batch,
    /// Answers of the ops that are part of a merge: (part index, answer).
    parts: Vec<(usize, ShardReply)>,
}

impl BatchReply {
    /// The answers of the ops pushed with [`Batch::push_op`], with their
    /// tags, in batch order.
    pub fn answers(&mut self) -> std::vec::Drain<'_, (usize, ShardReply)> {
        self.parts.drain(..)
    }

    /// The batch, emptied, for the next one (its memory is kept).
    pub fn into_batch(self) -> Batch {
        let mut batch = self.batch;
        batch.recycle();
        batch
    }
}

/// Runs `batch` on the shard's store at time `now` (milliseconds), in
/// order. Values are copied once: from the store into the reply, or from
/// the batch into the store.
pub fn run_batch(store: &mut Store, mut batch: Batch, now: u64) -> BatchReply {
    let mut parts = Vec::new();
    let ops = std::mem::take(&mut batch.ops);
    for Forwarded { op, part } in &ops {
        let op = Batch::unpack(&batch.arena, &batch.spans, op);
        match part {
            None => {
                execute_into(store, op, now, &mut batch.out);
                batch.ends.push(batch.out.len());
            }
            Some(index) => parts.push((*index, execute(store, op, now))),
        }
    }
    batch.ops = ops;
    BatchReply { batch, parts }
}

/// Where a forwarded reply goes in the output.
#[derive(Debug)]
struct Hole {
    /// Offset in `out` where the reply belongs.
    at: usize,
    fill: Fill,
}

#[derive(Debug)]
enum Fill {
    /// The `index`-th whole-request reply of `shard`'s batch.
    Remote { shard: usize, index: usize },
    /// The merge of answers `parts` (indices into `Turn::parts`).
    Merge { merge: Merge, parts: Range<usize> },
}

/// What came back from a shard.
#[derive(Debug)]
enum Answer {
    Waiting,
    /// The batch, with its replies in `out` / `ends`.
    Replied(Batch),
    Failed(Vec<u8>),
}

/// One connection's turn. See the [module docs](self).
///
/// Memory: the turn's replies, the ops waiting for other shards (their keys
/// and values copied) and their answers; every buffer is kept for the next
/// turn, unless it grew past 1 MiB.
#[derive(Debug)]
pub struct Turn {
    /// The shard this core owns.
    shard: usize,
    /// Replies, with holes for forwarded ones.
    out: Vec<u8>,
    holes: Vec<Hole>,
    /// Batches being built, by shard (the local one stays empty).
    batches: Vec<Batch>,
    /// Whole-request replies forwarded to each shard so far this turn.
    remote_replies: Vec<usize>,
    /// What each shard answered, by shard.
    answers: Vec<Answer>,
    /// Answers of merge parts (local ones filled at once).
    parts: Vec<Option<ShardReply>>,
    /// Requests pushed this turn.
    requests: usize,
}

impl Turn {
    /// A turn on the core that owns `shard`, of `shards` shards.
    pub fn new(shard: usize, shards: usize) -> Turn {
        let shards = shards.max(1);
        Turn {
            shard,
            out: Vec::new(),
            holes: Vec::new(),
            batches: (0..shards).map(|_| Batch::default()).collect(),
            remote_replies: vec![0; shards],
            answers: (0..shards).map(|_| Answer::Waiting).collect(),
            parts: Vec::new(),
            requests: 0,
        }
    }

    /// Requests pushed since the last [`take_output`](Self::take_output).
    pub fn requests(&self) -> usize {
        self.requests
    }

    /// Reply bytes written so far this turn (forwarded replies not
    /// included).
    pub fn output_len(&self) -> usize {
        self.out.len()
    }

    /// Whether any reply waits for another shard.
    pub fn is_waiting(&self) -> bool {
        !self.holes.is_empty()
    }

    /// Plans `request` at time `now` and answers what the local shard
    /// (`store`) can; the rest goes to the other shards' batches.
    pub fn push(
        &mut self,
        dispatcher: &Dispatcher,
        store: &mut Store,
        request: &Request<'_>,
        now: u64,
    ) {
        self.requests += 1;
        match dispatcher.plan(request, now, &mut self.out) {
            Plan::Done => {}
            Plan::One { shard, op } if shard == self.shard => {
                execute_into(store, op, now, &mut self.out);
            }
            Plan::One { shard, op } => {
                let Some(batch) = self.batches.get_mut(shard) else {
                    return resp::write_error(&mut self.out, NO_SUCH_SHARD);
                };
                batch.push(op, None);
                let index = self.remote_replies[shard];
                self.remote_replies[shard] += 1;
                self.holes.push(Hole {
                    at: self.out.len(),
                    fill: Fill::Remote { shard, index },
                });
            }
            Plan::Many { ops, merge } => {
                if ops.iter().any(|(shard, _)| *shard >= self.batches.len()) {
                    return resp::write_error(&mut self.out, NO_SUCH_SHARD);
                }
                let first = self.parts.len();
                let mut all_local = true;
                for (shard, op) in ops {
                    let index = self.parts.len();
                    if shard == self.shard {
                        self.parts.push(Some(execute(store, op, now)));
                    } else {
                        all_local = false;
                        self.parts.push(None);
                        self.batches[shard].push(op, Some(index));
                    }
                }
                if all_local {
                    let replies = self.parts.drain(first..).flatten().collect();
                    merge.write(replies, &mut self.out);
                } else {
                    self.holes.push(Hole {
                        at: self.out.len(),
                        fill: Fill::Merge {
                            merge,
                            parts: first..self.parts.len(),
                        },
                    });
                }
            }
        }
    }

    /// Appends the reply to a malformed request (the connection is to be
    /// closed once the output has been sent).
    pub fn push_error(&mut self, error: ProtocolError) {
        error.write_reply(&mut self.out);
    }

    /// The batches to send, with the shard each goes to; each shard's
    /// answer is expected in [`complete`](Self::complete) or
    /// [`fail`](Self::fail).
    pub fn take_batches(&mut self) -> Vec<(usize, Batch)> {
        let mut out = Vec::new();
        for (shard, batch) in self.batches.iter_mut().enumerate() {
            if !batch.is_empty() {
                out.push((shard, std::mem::take(batch)));
            }
        }
        out
    }

    /// Takes in `shard`'s answers to its batch.
    pub fn complete(&mut self, shard: usize, reply: BatchReply) {
        for (index, answer) in reply.parts {
            if let Some(slot) = self.parts.get_mut(index) {
                *slot = Some(answer);
            }
        }
        if let Some(slot) = self.answers.get_mut(shard) {
            *slot = Answer::Replied(reply.batch);
        }
    }

    /// Records that `shard` could not answer (its core is gone): each reply
    /// that waited for it becomes the error `message` (`ERR ...`).
    pub fn fail(&mut self, shard: usize, message: &str) {
        if let Some(slot) = self.answers.get_mut(shard) {
            *slot = Answer::Failed(message.as_bytes().to_vec());
        }
    }

    /// Every reply of the turn, in request order, and resets the turn for
    /// the next one. `spare` is an empty buffer to keep (the one the last
    /// output came back in): when no reply waited for another shard, the
    /// output is handed out as it is and `spare` takes its place.
    pub fn take_output(&mut self, mut spare: Vec<u8>) -> Vec<u8> {
        spare.clear();
        self.requests = 0;
        if spare.capacity() > RETAIN {
            spare = Vec::new();
        }
        if self.holes.is_empty() {
            self.parts.clear();
            return std::mem::replace(&mut self.out, spare);
        }
        let mut from = 0;
        // Taken while the holes are filled (which reads the turn), then
        // put back empty: its memory serves the next turn.
        let mut holes = std::mem::take(&mut self.holes);
        for hole in holes.drain(..) {
            spare.extend_from_slice(self.out.get(from..hole.at).unwrap_or_default());
            from = hole.at;
            match hole.fill {
                Fill::Remote { shard, index } => self.write_remote(shard, index, &mut spare),
                Fill::Merge { merge, parts } => self.write_merge(merge, parts, &mut spare),
            }
        }
        spare.extend_from_slice(self.out.get(from..).unwrap_or_default());
        self.holes = holes;
        self.out.clear();
        if self.out.capacity() > RETAIN {
            self.out = Vec::new();
        }
        self.parts.clear();
        // The batches that came back are reused for the next turn.
        for (shard, answer) in self.answers.iter_mut().enumerate() {
            if let Answer::Replied(mut batch) = std::mem::replace(answer, Answer::Waiting) {
                batch.recycle();
                if let Some(slot) = self.batches.get_mut(shard) {
                    *slot = batch;
                }
            }
        }
        for count in &mut self.remote_replies {
            *count = 0;
        }
        spare
    }

    fn write_remote(&self, shard: usize, index: usize, dst: &mut Vec<u8>) {
        match self.answers.get(shard) {
            Some(Answer::Replied(batch)) => {
                let start = match index {
                    0 => Some(0),
                    i => batch.ends.get(i - 1).copied(),
                };
                let end = batch.ends.get(index).copied();
                match start.zip(end).and_then(|(s, e)| batch.out.get(s..e)) {
                    Some(bytes) => dst.extend_from_slice(bytes),
                    None => resp::write_error(dst, MISSING),
                }
            }
            Some(Answer::Failed(message)) => resp::write_error(dst, message),
            _ => resp::write_error(dst, MISSING),
        }
    }

    fn write_merge(&mut self, merge: Merge, parts: Range<usize>, dst: &mut Vec<u8>) {
        let Some(slots) = self.parts.get_mut(parts) else {
            return resp::write_error(dst, MISSING);
        };
        let replies: Option<Vec<ShardReply>> = slots.iter_mut().map(Option::take).collect();
        match replies {
            Some(replies) => merge.write(replies, dst),
            None => {
                // A shard that failed says why; else a part never came back.
                let failed = self.answers.iter().find_map(|a| match a {
                    Answer::Failed(message) => Some(message.clone()),
                    _ => None,
                });
                resp::write_error(dst, failed.as_deref().unwrap_or(MISSING));
            }
        }
    }
}

const NO_SUCH_SHARD: &[u8] = b"ERR internal error: no such shard";
const MISSING: &[u8] = b"ERR internal error: a shard's answer is missing";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::resp::{Limits, RequestParser};
    use crate::kv::shard::shard_of;

    /// A node of `shards` cores in one thread: each shard's store, and the
    /// batches of a turn run at once on their shard.
    struct Cluster {
        dispatcher: Dispatcher,
        stores: Vec<Store>,
    }

    impl Cluster {
        fn new(shards: usize) -> Cluster {
            Cluster {
                dispatcher: Dispatcher::new(shards),
                stores: (0..shards).map(|_| Store::new()).collect(),
            }
        }

        /// Runs `input` as one turn on the core owning `shard`; the replies
        /// and how many batches went out.
        fn turn(&mut self, shard: usize, input: &[u8], now: u64) -> (Vec<u8>, usize) {
            let mut parser = RequestParser::new(Limits::default());
            parser.feed(input);
            let mut turn = Turn::new(shard, self.stores.len());
            loop {
                match parser.next() {
                    Ok(Some(request)) => {
                        turn.push(&self.dispatcher, &mut self.stores[shard], &request, now)
                    }
                    Ok(None) => break,
                    Err(e) => {
                        turn.push_error(e);
                        break;
                    }
                }
            }
            let batches = turn.take_batches();
            let sent = batches.len();
            for (to, batch) in batches {
                assert_ne!(to, shard, "the local shard answers at once");
                let reply = run_batch(&mut self.stores[to], batch, now);
                turn.complete(to, reply);
            }
            (turn.take_output(Vec::new()), sent)
        }
    }

    /// The same stream through `Dispatcher::run_local`, one request at a
    /// time.
    fn sequential(shards: usize, input: &[u8], now: u64) -> Vec<u8> {
        let dispatcher = Dispatcher::new(shards);
        let mut stores: Vec<Store> = (0..shards).map(|_| Store::new()).collect();
        let mut parser = RequestParser::new(Limits::default());
        parser.feed(input);
        let mut out = Vec::new();
        loop {
            match parser.next() {
                Ok(Some(request)) => dispatcher.run_local(&mut stores, &request, now, &mut out),
                Ok(None) => break,
                Err(e) => {
                    e.write_reply(&mut out);
                    break;
                }
            }
        }
        out
    }

    /// Keys named `prefix0`, `prefix1`, ... that `shards` shards place on
    /// `shard`.
    fn keys_on(shard: usize, shards: usize, prefix: &str, n: usize) -> Vec<String> {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .filter(|k| shard_of(k.as_bytes(), shards) == shard)
            .take(n)
            .collect()
    }

    #[test]
    fn forwarded_replies_land_in_request_order_with_one_batch_per_shard() {
        let mut c = Cluster::new(3);
        let here = keys_on(0, 3, "h", 2);
        let one = keys_on(1, 3, "o", 2);
        let two = keys_on(2, 3, "t", 1);
        let input = format!(
            "SET {o0} a\r\nGET {h0}\r\nSET {h0} b\r\nGET {o0}\r\nPING\r\nSET {t0} c\r\n\
             MGET {t0} {h0} {o0} nope\r\nINCR {o1}\r\nGET {o1}\r\nDBSIZE\r\n",
            o0 = one[0],
            o1 = one[1],
            h0 = here[0],
            t0 = two[0],
        );
        let (out, batches) = c.turn(0, input.as_bytes(), 0);
        assert_eq!(batches, 2, "one batch for each other shard");
        let expected = sequential(3, input.as_bytes(), 0);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&expected)
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "+OK\r\n$-1\r\n+OK\r\n$1\r\na\r\n+PONG\r\n+OK\r\n\
             *4\r\n$1\r\nc\r\n$1\r\nb\r\n$1\r\na\r\n$-1\r\n:1\r\n$1\r\n1\r\n:4\r\n"
        );
        // The keys really are where placement says.
        assert!(c.stores[1].exists(one[0].as_bytes(), 0));
        assert!(c.stores[2].exists(two[0].as_bytes(), 0));
        assert!(!c.stores[0].exists(one[0].as_bytes(), 0));
    }

    #[test]
    fn a_local_turn_sends_nothing_and_keeps_its_buffer() {
        let mut c = Cluster::new(2);
        let here = keys_on(1, 2, "k", 3);
        let input = format!(
            "SET {a} 1\r\nMSET {b} 2 {c} 3\r\nMGET {a} {b} {c}\r\nDEL {a}\r\n",
            a = here[0],
            b = here[1],
            c = here[2]
        );
        let (out, batches) = c.turn(1, input.as_bytes(), 0);
        assert_eq!(batches, 0);
        assert_eq!(out, sequential(2, input.as_bytes(), 0));

        // Without holes the output buffer itself is handed out.
        let mut turn = Turn::new(0, 1);
        let mut store = Store::new();
        let mut parser = RequestParser::new(Limits::default());
        parser.feed(b"PING\r\n");
        let request = parser.next().unwrap().unwrap();
        turn.push(&Dispatcher::new(1), &mut store, &request, 0);
        let first = turn.take_output(Vec::with_capacity(64));
        let spare_ptr = {
            let mut parser = RequestParser::new(Limits::default());
            parser.feed(b"PING\r\n");
            let request = parser.next().unwrap().unwrap();
            turn.push(&Dispatcher::new(1), &mut store, &request, 0);
            turn.out.as_ptr()
        };
        let second = turn.take_output(first);
        assert_eq!(second.as_ptr(), spare_ptr);
        assert_eq!(second, b"+PONG\r\n");
    }

    #[test]
    fn a_failed_shard_answers_errors_in_place() {
        let dispatcher = Dispatcher::new(2);
        let mut store = Store::new();
        let there = keys_on(1, 2, "r", 1);
        let here = keys_on(0, 2, "l", 1);
        let input = format!(
            "GET {r}\r\nPING\r\nMGET {l} {r}\r\nDBSIZE\r\nSET {l} x\r\n",
            r = there[0],
            l = here[0]
        );
        let mut parser = RequestParser::new(Limits::default());
        parser.feed(input.as_bytes());
        let mut turn = Turn::new(0, 2);
        while let Some(request) = parser.next().unwrap() {
            turn.push(&dispatcher, &mut store, &request, 0);
        }
        assert!(turn.is_waiting());
        assert_eq!(turn.requests(), 5);
        let batches = turn.take_batches();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].1.len(), 3);
        turn.fail(1, "ERR core 1 is gone");
        let out = turn.take_output(Vec::new());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "-ERR core 1 is gone\r\n+PONG\r\n-ERR core 1 is gone\r\n\
             -ERR core 1 is gone\r\n+OK\r\n"
        );
        // The turn is clean for the next one.
        assert!(!turn.is_waiting());
        assert_eq!(turn.requests(), 0);
        assert!(turn.take_batches().is_empty());
    }

    #[test]
    fn a_protocol_error_follows_the_replies_before_it() {
        let mut c = Cluster::new(2);
        let there = keys_on(1, 2, "r", 1);
        let input = format!("SET {r} v\r\nGET {r}\r\n*1\r\n$x\r\n", r = there[0]);
        let (out, _) = c.turn(0, input.as_bytes(), 0);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "+OK\r\n$1\r\nv\r\n-ERR Protocol error: invalid bulk length\r\n"
        );
    }

    #[test]
    fn every_op_survives_packing() {
        let key = |k: &'static str| Cow::Borrowed(k.as_bytes());
        let options = SetOptions {
            get: true,
            ..SetOptions::default()
        };
        let ops = vec![
            ShardOp::Get { key: key("g") },
            ShardOp::Get { key: key("") },
            ShardOp::Set {
                key: key("s"),
                value: key("value"),
                options,
            },
            ShardOp::IncrBy {
                key: key("n"),
                delta: -3,
            },
            ShardOp::Del {
                keys: vec![key("a"), key("b")],
            },
            ShardOp::Exists {
                keys: vec![key("a"), key("a")],
            },
            ShardOp::MGet { keys: vec![] },
            ShardOp::MSet {
                pairs: vec![(key("k1"), key("v1")), (key("k2"), key(""))],
            },
            ShardOp::DbSize,
            ShardOp::FlushAll,
        ];
        let mut batch = Batch::default();
        for op in ops.clone() {
            batch.push(op, None);
        }
        assert_eq!(batch.len(), ops.len());
        for (packed, op) in batch.ops.iter().zip(&ops) {
            assert_eq!(&Batch::unpack(&batch.arena, &batch.spans, &packed.op), op);
        }
    }

    #[test]
    fn batches_come_back_and_are_reused() {
        let dispatcher = Dispatcher::new(2);
        let (mut here, mut there) = (Store::new(), Store::new());
        let remote = keys_on(1, 2, "r", 1).remove(0);
        let mut turn = Turn::new(0, 2);
        let mut arena_at = None;
        let mut out_at = None;
        for round in 0..3 {
            let input = format!("SET {remote} v{round}\r\nGET {remote}\r\n");
            let mut parser = RequestParser::new(Limits::default());
            parser.feed(input.as_bytes());
            while let Some(request) = parser.next().unwrap() {
                turn.push(&dispatcher, &mut here, &request, 0);
            }
            let mut batches = turn.take_batches();
            assert_eq!(batches.len(), 1);
            let (shard, batch) = batches.remove(0);
            // The second and third turns reuse the first one's memory.
            match arena_at {
                None => arena_at = Some(batch.arena.as_ptr()),
                Some(at) => assert_eq!(batch.arena.as_ptr(), at),
            }
            let reply = run_batch(&mut there, batch, 0);
            match out_at {
                None => out_at = Some(reply.batch.out.as_ptr()),
                Some(at) => assert_eq!(reply.batch.out.as_ptr(), at),
            }
            turn.complete(shard, reply);
            let out = turn.take_output(Vec::new());
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("+OK\r\n$2\r\nv{round}\r\n")
            );
        }
        // A huge value is not kept once it has been forwarded.
        let big = "x".repeat(2 * RETAIN);
        let input = format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{remote}\r\n${}\r\n{big}\r\nGET {remote}\r\n",
            remote.len(),
            big.len()
        );
        let mut parser = RequestParser::new(Limits::default());
        parser.feed(input.as_bytes());
        while let Some(request) = parser.next().unwrap() {
            turn.push(&dispatcher, &mut here, &request, 0);
        }
        for (shard, batch) in turn.take_batches() {
            let reply = run_batch(&mut there, batch, 0);
            turn.complete(shard, reply);
        }
        let out = turn.take_output(Vec::new());
        assert!(out.len() > 2 * RETAIN);
        assert!(turn.batches[1].arena.capacity() <= RETAIN);
        assert!(turn.batches[1].out.capacity() <= RETAIN);
        let kept = turn.take_output(out);
        assert!(kept.is_empty());
        assert!(turn.out.capacity() <= RETAIN);
    }

    /// A deterministic mix of commands over keys of every shard.
    fn workload(seed: u64, lines: usize) -> Vec<u8> {
        let mut state = seed | 1;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut input = Vec::new();
        for _ in 0..lines {
            let mut keys = [0u64; 3];
            for k in &mut keys {
                *k = next(24);
            }
            let [a, b, c] = keys.map(|k| format!("key{k}"));
            let line = match next(12) {
                0 => format!("SET {a} v PX {}", 1 + next(40)),
                1 => format!("SET {a} {}", next(1000)),
                2 | 3 => format!("GET {a}"),
                4 => format!("INCRBY {a} {}", next(10)),
                5 => format!("MGET {a} {b} {c}"),
                6 => format!("MSET {a} x {b} y"),
                7 => format!("DEL {a} {b}"),
                8 => format!("EXISTS {a} {b} {c}"),
                9 => "DBSIZE".to_owned(),
                10 => format!("SET {a} x NX GET"),
                _ => format!("ECHO {a}"),
            };
            input.extend_from_slice(line.as_bytes());
            input.extend_from_slice(b"\r\n");
        }
        input
    }

    #[test]
    fn turns_with_forwarding_reply_as_one_shard_would() {
        for shards in [1, 2, 3, 5] {
            for seed in 1..6u64 {
                let input = workload(seed * 0x9e37_79b9, 300);
                let mut expected = Vec::new();
                let mut reference: Vec<Store> = (0..shards).map(|_| Store::new()).collect();
                let mut c = Cluster::new(shards);
                let mut got = Vec::new();
                // Turns of varying size, arriving on varying cores, with the
                // clock moving so that keys expire.
                let lines: Vec<&[u8]> = input.split_inclusive(|&b| b == b'\n').collect();
                let mut at = 0;
                let mut turn_no = 0u64;
                while at < lines.len() {
                    let take = 1 + (turn_no as usize * 7) % 13;
                    let chunk: Vec<u8> = lines[at..(at + take).min(lines.len())].concat();
                    at += take;
                    let now = turn_no * 3;
                    let core = (turn_no as usize) % shards;
                    got.extend(c.turn(core, &chunk, now).0);
                    let d = Dispatcher::new(shards);
                    let mut parser = RequestParser::new(Limits::default());
                    parser.feed(&chunk);
                    while let Some(request) = parser.next().unwrap() {
                        d.run_local(&mut reference, &request, now, &mut expected);
                    }
                    turn_no += 1;
                }
                assert!(
                    got == expected,
                    "{shards} shards, seed {seed}: replies differ"
                );
            }
        }
    }
}
