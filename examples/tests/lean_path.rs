//! kv-node's per-request path allocates nothing in a steady state: a
//! counting allocator (this test binary's global allocator) counts the
//! allocations made by the calling thread while turns of pipelined requests
//! are parsed, answered and their output taken, as kv-node's connections
//! do. Only the engine is driven here; sockets and the runtime have their
//! own buffers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ringwire_examples::kv::dispatch::Dispatcher;
use ringwire_examples::kv::pipeline::{run_batch, Turn};
use ringwire_examples::kv::resp::{Limits, RequestParser};
use ringwire_examples::kv::shard::shard_of;
use ringwire_examples::kv::store::Store;

/// The system allocator, counting allocations per thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // A const-initialized Cell without destructor: no allocation here.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments, so
// `System` upholds GlobalAlloc's contract; counting touches no memory the
// allocator hands out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `alloc`'s contract for `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `realloc`'s contract: `ptr` came from
        // this allocator (so from `System`) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from `System`) with
        // `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations the calling thread makes while running `f`.
fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

/// One connection's engine on the core owning shard 0, with the other
/// shards' stores at hand to run forwarded batches.
struct Connection {
    dispatcher: Dispatcher,
    parser: RequestParser,
    turn: Turn,
    stores: Vec<Store>,
    spare: Vec<u8>,
    replies: usize,
}

impl Connection {
    fn new(shards: usize) -> Connection {
        Connection {
            dispatcher: Dispatcher::new(shards),
            parser: RequestParser::new(Limits::default()),
            turn: Turn::new(0, shards),
            stores: (0..shards).map(|_| Store::new()).collect(),
            spare: Vec::new(),
            replies: 0,
        }
    }

    /// What kv-node does with the bytes of one turn: feed, push every
    /// request, forward the batches, take the output (and, as after its
    /// send, keep the buffer for the next turn).
    fn turn(&mut self, input: &[u8], now: u64) {
        self.parser.feed(input);
        let (local, others) = self.stores.split_at_mut(1);
        while let Ok(Some(request)) = self.parser.next() {
            self.turn
                .push(&self.dispatcher, &mut local[0], &request, now);
        }
        for (shard, batch) in self.turn.take_batches() {
            let reply = run_batch(&mut others[shard - 1], batch, now);
            self.turn.complete(shard, reply);
        }
        let out = self.turn.take_output(std::mem::take(&mut self.spare));
        self.replies += out.len();
        self.spare = out;
    }
}

/// A pipelined turn over `keys`: SET, GET and INCR for each, and a PING.
fn pipeline(keys: &[String], round: usize) -> Vec<u8> {
    let mut input = Vec::new();
    for key in keys {
        // Values of one length, as redis-benchmark sends.
        let value = format!("value{:04}", round % 10_000);
        input.extend_from_slice(format!("SET {key} {value}\r\nGET {key}\r\n").as_bytes());
        input.extend_from_slice(format!("INCR {key}:n\r\n").as_bytes());
    }
    // The array form too, as client libraries send.
    input.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
    input
}

fn keys_on(shard: usize, shards: usize, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("key:{i:012}"))
        .filter(|k| shard_of(k.as_bytes(), shards) == shard)
        .take(n)
        .collect()
}

/// Allocations of `turns` turns of `input`, after two to warm up.
fn steady(conn: &mut Connection, inputs: &[Vec<u8>]) -> usize {
    for input in &inputs[..2] {
        conn.turn(input, 0);
    }
    allocations(|| {
        for input in &inputs[2..] {
            conn.turn(input, 0);
        }
    })
}

#[test]
fn single_key_requests_allocate_nothing_once_warm() {
    let mut conn = Connection::new(1);
    let keys = keys_on(0, 1, 16);
    let inputs: Vec<Vec<u8>> = (0..50).map(|round| pipeline(&keys, round)).collect();
    assert_eq!(steady(&mut conn, &inputs), 0, "48 turns of 49 requests");
    assert!(conn.replies > 0);
}

#[test]
fn a_multi_key_request_on_one_shard_allocates_its_key_list_only() {
    let mut conn = Connection::new(1);
    let k = keys_on(0, 1, 3);
    let (a, b, c) = (&k[0], &k[1], &k[2]);
    let turn = format!(
        "MSET {a} 1 {b} 2\r\nMGET {a} {b} {c}\r\nEXISTS {a} {c}\r\nDEL {c}\r\nDBSIZE\r\nPING\r\n"
    );
    let inputs = vec![turn.into_bytes(); 12];
    // MSET, MGET, EXISTS and DEL: one list each; DBSIZE and PING: none.
    assert_eq!(steady(&mut conn, &inputs), 10 * 4);
}

#[test]
fn forwarding_allocates_per_turn_not_per_request() {
    // Keys of the other shard only: every request but PING is forwarded.
    let mut conn = Connection::new(2);
    let remote = keys_on(1, 2, 16);
    let mut per_turn = |keys: &[String]| {
        let inputs: Vec<Vec<u8>> = (0..12).map(|round| pipeline(keys, round)).collect();
        steady(&mut conn, &inputs) / 10
    };
    let one_key = per_turn(&remote[..1]);
    let sixteen_keys = per_turn(&remote);
    // The list of batches handed out is the only allocation of a turn; a
    // batch's memory comes back and is reused, whatever it holds.
    assert_eq!(one_key, sixteen_keys, "allocations grow with the requests");
    assert!(sixteen_keys <= 1, "{sixteen_keys} allocations per turn");
}
