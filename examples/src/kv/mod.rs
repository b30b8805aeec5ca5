//! kv-node's engine: the Redis protocol, one shard's key space, key
//! placement across shards, and the dispatcher joining them. Pure logic:
//! no sockets, no runtime, no clock (time is passed in, in milliseconds).
//!
//! - [`resp`]: RESP2 request parser (incremental, pipelining, limits) and
//!   reply encoder.
//! - [`store`]: one shard's keys with expiry; Redis's string commands and
//!   the typed get / put / compare-and-set / increment / delete.
//! - [`shard`]: which shard owns a key; splitting multi-key commands and
//!   merging their answers in key order.
//! - [`dispatch`]: request -> which shard(s) run what -> reply bytes; errors
//!   in Redis's wording; COMMAND for clients that ask at start.
//! - [`pipeline`]: one connection's turn of pipelined requests: local ones
//!   answered at once, the others batched per owning shard, every reply
//!   put back in request order for one send.
//!
//! The `kv-node` binary adds the sockets, the cores and the mailboxes that
//! carry a turn's batches between them.

pub mod dispatch;
pub mod pipeline;
pub mod resp;
pub mod shard;
pub mod store;
