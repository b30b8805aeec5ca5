//! kv-node: a key-value store sharded across cores, served over the Redis
//! protocol and over ringwire's typed transports, replicated to peer nodes.
//!
//! The engine is pure logic (no sockets, no runtime, no clock: time is
//! passed in, in milliseconds):
//!
//! - [`resp`]: RESP2 request parser (incremental, pipelining, limits) and
//!   reply encoder.
//! - [`store`]: one shard's key space with expiry; Redis's string commands
//!   and the typed get / put / compare-and-set / increment / delete; a
//!   journal of changes for replication.
//! - [`shard`]: which shard owns a key; splitting multi-key commands and
//!   merging their answers in key order.
//! - [`dispatch`]: request -> which shard(s) run what -> reply bytes; errors
//!   in Redis's wording; COMMAND for clients that ask at start.
//! - [`pipeline`]: one connection's turn of pipelined requests: local ones
//!   answered at once, the others batched per owning shard, every reply
//!   put back in request order for one send.
//! - [`messages`]: the typed protocol's messages (operations, replication)
//!   and their configurations.
//! - [`typed`]: a typed request as the op its shard runs, the shard's
//!   answer as the reply.
//! - [`journal`]: batches of changes: recorded by a store, snapshots,
//!   checked on arrival, applied.
//! - [`replica`]: where a replica stands in its primary's stream.
//!
//! On top, the parts that need the runtime:
//!
//! - [`client`]: [`client::KvClient`], the typed operations over a
//!   connection;
//!
//! The `kv-node` binary holds the node itself: per-core shards, the Redis,
//! typed and replication listeners, forwarding through the mailboxes, and
//! replication to and from peers.

pub mod client;
pub mod dispatch;
pub mod journal;
pub mod messages;
pub mod pipeline;
pub mod replica;
pub mod resp;
pub mod shard;
pub mod store;
pub mod typed;
