//! kv-node: a key-value store sharded across cores that speaks the Redis
//! protocol (RESP2).
//!
//! Every core owns the keys that hash to it (`kv::shard`) in its own store,
//! touched by that core alone, and listens on the Redis address
//! (`SO_REUSEPORT`: the kernel spreads connections over the cores). A
//! connection's requests are answered on the core that accepted it when
//! their keys live there; the others are forwarded to the owning core
//! through the mailboxes, one message per core and turn, and their replies
//! put back in request order (`kv::pipeline`), so every reply of a turn's
//! pipelined requests leaves in one send. Expired keys are reclaimed when
//! touched and by a sweep on each core, a bounded number ten times a
//! second. Ctrl-C or SIGTERM shuts the node down gracefully.
//!
//! ```text
//! kv-node [--cpus LIST | --cores N] [--listen tcp://127.0.0.1:6380]
//!         [--idle park|spin[:MICROS]|poll] [--wait-batch N:MICROS|off]
//!         [--recv-buffers N] [--recv-buffer-size BYTES]
//! redis-cli -p 6380 SET greeting hello
//! ```
//!
//! Not yet served: kv-node's ringwire-native typed protocol (get, put,
//! compare-and-set, increment, delete over `ringwire::transports`) and
//! replication to peers (`--replica-of`). Both come with the transports'
//! TCP connections; they will run the same `ShardOp`s on the same per-core
//! stores through the same forwarding path as the Redis listener.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::{pin, Pin};
use std::process::ExitCode;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use ringwire::runtime::mailbox::{self, MailboxError};
use ringwire::runtime::net::{TcpListenOptions, TcpListener, TcpStream};
use ringwire::runtime::signal::TerminationSignals;
use ringwire::runtime::{current_core, is_shutting_down, spawn_local, time, yield_now, Runtime};
use ringwire_examples::cli::{
    parse_tcp_listen, parse_wait_batch, CoreArgs, IdleArgs, MetricsArgs, TcpListen, WaitBatch,
};
use ringwire_examples::kv::dispatch::Dispatcher;
use ringwire_examples::kv::pipeline::{run_batch, Batch, BatchReply, Turn};
use ringwire_examples::kv::resp::{Limits, RequestParser};
use ringwire_examples::kv::store::Store;

/// A key-value store sharded across cores that speaks the Redis protocol.
///
/// Each core owns the keys that hash to it; a request that arrives on
/// another core is forwarded to the owner through the mailboxes. Serves
/// PING, ECHO, GET, SET (EX/PX/EXAT/PXAT/KEEPTTL, NX/XX, GET), DEL, EXISTS,
/// INCR/INCRBY/DECR/DECRBY, MGET, MSET, DBSIZE, FLUSHALL, COMMAND and
/// CONFIG GET, with pipelining. Logs go to stderr, filtered by RUST_LOG
/// (default: info).
#[derive(Parser, Debug)]
#[command(name = "kv-node", version)]
struct Args {
    #[command(flatten)]
    cores: CoreArgs,
    /// Where the Redis listener binds: tcp://HOST:PORT (HOST:PORT alone is
    /// read as tcp://), with options nodelay, backlog, reuseport.
    /// reuseport=0: only the first core listens (the others serve the keys
    /// they own).
    #[arg(
        long,
        value_name = "ENDPOINT",
        default_value = "tcp://127.0.0.1:6380",
        value_parser = parse_tcp_listen
    )]
    listen: TcpListen,
    #[command(flatten)]
    idle: IdleArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    /// How long a parked core waits for more completions before it runs
    /// what it has: N:MICROS (wake at N completions or after MICROS) or
    /// off (wake at the first). Batching saves wake-ups under load and
    /// adds up to MICROS of latency when the load is light.
    #[arg(long, value_name = "N:MICROS|off", default_value = "off", value_parser = parse_wait_batch)]
    wait_batch: WaitBatch,
    /// Receive buffers per core (a power of two); they take N times
    /// --recv-buffer-size bytes of memory on each core.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    recv_buffers: u16,
    /// Size of each receive buffer in bytes (a multiple of 4096 keeps
    /// them page aligned). A request larger than one buffer spans several.
    #[arg(long, value_name = "BYTES", default_value_t = 16384)]
    recv_buffer_size: u32,
}

/// Most requests one connection runs in a turn before its replies go out;
/// what is left waits in the parser for the next turn.
const TURN_REQUESTS: usize = 1024;
/// Reply bytes after which a turn takes no more requests.
const TURN_BYTES: usize = 256 * 1024;
/// How often each core sweeps expired keys, and how many it reclaims per
/// round (up to `SWEEP_ROUNDS` rounds a sweep, yielding between them).
const SWEEP_EVERY: Duration = Duration::from_millis(100);
const SWEEP_BATCH: usize = 256;
const SWEEP_ROUNDS: usize = 16;
/// How long a connection closed for a protocol error is drained so that the
/// client reads the error before the socket closes.
const ERROR_LINGER: Duration = Duration::from_secs(1);
/// Time given to connections to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

thread_local! {
    /// This core's shard: the keys `kv::shard` places on it. Only this
    /// core's tasks and the batches other cores send it touch it.
    static SHARD: RefCell<Store> = RefCell::new(Store::new());
}

fn main() -> ExitCode {
    // Bad arguments: clap prints the error and exits with code 2.
    let args = Args::parse();
    ringwire_examples::init_tracing();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv-node: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    let signals = TerminationSignals::block()?;
    let rt = Runtime::builder()
        .placement(args.cores.placement())
        .idle(args.idle.idle)
        .wait_batch(args.wait_batch.0)
        .recv_buffers(args.recv_buffers)
        .recv_buffer_size(args.recv_buffer_size)
        .thread_name("kv-core");
    let rt = args.metrics.apply(rt).build()?;
    args.metrics.announce(&rt);
    let shards = rt.core_count();
    let dispatcher = Dispatcher::new(shards);
    let TcpListen { addr, options, .. } = args.listen;
    // The first core binds first: given port 0, the kernel picks the port,
    // and the other cores bind that same one.
    let opts = options.clone();
    let bound = rt
        .block_on(0, move || async move {
            start_core(Some((addr, opts)), dispatcher)
        })
        .map_err(io::Error::other)??;
    let Some(bound) = bound else {
        return Err(io::Error::other("the first core did not bind"));
    };
    for core in 1..shards {
        let listen = options.reuse_port.then(|| (bound, options.clone()));
        rt.block_on(core, move || async move { start_core(listen, dispatcher) })
            .map_err(io::Error::other)??;
    }
    // The ringwire-native listener (typed get/put/update/delete) and
    // replication streams will be started here, beside the Redis listener,
    // once the transports carry TCP connections.
    let cpus: Vec<String> = rt
        .cpus()
        .into_iter()
        .map(|c| c.map_or_else(|| "unpinned".to_string(), |c| c.to_string()))
        .collect();
    println!(
        "kv-node: serving Redis on tcp://{bound} with {shards} cores on CPUs [{}], idle {:?}",
        cpus.join(", "),
        args.idle.idle
    );
    tracing::info!(features = ?rt.ring_features(), "ring features");
    let signal = signals.wait()?;
    tracing::info!(?signal, "shutting down");
    let report = rt.shutdown(SHUTDOWN_GRACE);
    eprintln!("kv-node stopped: {report:?}");
    Ok(())
}

/// Starts a core's sweeper and, when given an address, its Redis listener;
/// returns the address bound.
fn start_core(
    listen: Option<(SocketAddr, TcpListenOptions)>,
    dispatcher: Dispatcher,
) -> io::Result<Option<SocketAddr>> {
    spawn_local(sweep_expired());
    let Some((addr, options)) = listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind_with(addr, &options)?;
    let bound = listener.local_addr();
    spawn_local(accept_loop(listener, dispatcher));
    Ok(Some(bound))
}

async fn accept_loop(mut listener: TcpListener, dispatcher: Dispatcher) {
    while let Some(conn) = listener.accept().await {
        match conn {
            Ok(conn) => {
                spawn_local(async move {
                    let peer = conn.peer_addr().ok();
                    if let Err(e) = serve(conn, dispatcher).await {
                        tracing::debug!(?peer, error = %e, "connection closed with an error");
                    }
                });
            }
            Err(e) => {
                // Out of descriptors or similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves one Redis connection: each turn takes what arrived, answers it
/// (forwarding what other cores own) and sends every reply in one send.
async fn serve(mut conn: TcpStream, dispatcher: Dispatcher) -> io::Result<()> {
    let mut parser = RequestParser::new(Limits::default());
    let mut turn = Turn::new(current_core(), dispatcher.shards());
    let mut spare = Vec::new();
    // Complete requests left in the parser by a turn that was full.
    let mut more = false;
    loop {
        if !more {
            let Some(first) = conn.recv().await? else {
                return Ok(());
            };
            parser.feed(&first);
            drop(first);
            while let Some(next) = conn.try_recv() {
                parser.feed(&next?);
            }
        }
        let now = now_ms();
        let (malformed, full) = SHARD.with(|store| {
            take_requests(
                &mut parser,
                &mut turn,
                &dispatcher,
                &mut store.borrow_mut(),
                now,
            )
        });
        more = full;
        let batches = turn.take_batches();
        if !batches.is_empty() {
            forward(&mut turn, batches).await;
        }
        let out = turn.take_output(std::mem::take(&mut spare));
        if out.is_empty() {
            spare = out;
        } else {
            let (sent, out) = conn.send_all(out).await;
            spare = out;
            sent?;
        }
        if malformed {
            close_after_error(conn).await;
            return Ok(());
        }
    }
}

/// Pushes the parser's complete requests into `turn` until the parser
/// needs more bytes, a request is malformed, or the turn is full. Returns
/// (malformed, full).
fn take_requests(
    parser: &mut RequestParser,
    turn: &mut Turn,
    dispatcher: &Dispatcher,
    store: &mut Store,
    now: u64,
) -> (bool, bool) {
    loop {
        if turn.requests() >= TURN_REQUESTS || turn.output_len() >= TURN_BYTES {
            return (false, true);
        }
        match parser.next() {
            Ok(Some(request)) => turn.push(dispatcher, store, &request, now),
            Ok(None) => return (false, false),
            Err(error) => {
                turn.push_error(error);
                return (true, false);
            }
        }
    }
}

/// The reply to one batch, with the shard it answers for.
type Call = Pin<Box<dyn Future<Output = (usize, Result<BatchReply, MailboxError>)>>>;

/// Sends each batch to the core owning its shard (one mailbox message per
/// core), runs it there, and takes the answers into `turn`.
async fn forward(turn: &mut Turn, batches: Vec<(usize, Batch)>) {
    fn call(shard: usize, batch: Batch) -> impl Future<Output = Result<BatchReply, MailboxError>> {
        mailbox::submit_to(shard, move || async move {
            SHARD.with(|store| run_batch(&mut store.borrow_mut(), batch, now_ms()))
        })
    }
    fn take(turn: &mut Turn, shard: usize, reply: Result<BatchReply, MailboxError>) {
        match reply {
            Ok(reply) => turn.complete(shard, reply),
            Err(e) => turn.fail(shard, &format!("ERR {e}")),
        }
    }
    if batches.len() == 1 {
        // The common case on two cores: no need to poll several calls.
        for (shard, batch) in batches {
            let reply = call(shard, batch).await;
            take(turn, shard, reply);
        }
        return;
    }
    let mut calls: Vec<Call> = batches
        .into_iter()
        .map(|(shard, batch)| {
            let call: Call = Box::pin(async move { (shard, call(shard, batch).await) });
            call
        })
        .collect();
    poll_fn(|cx| {
        calls.retain_mut(|call| match call.as_mut().poll(cx) {
            Poll::Ready((shard, reply)) => {
                take(turn, shard, reply);
                false
            }
            Poll::Pending => true,
        });
        if calls.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// After a protocol error has been sent: stop sending, then read and drop
/// what the client still sends, for a bounded time, before closing. Closing
/// with unread bytes would reset the connection, and a reset can destroy
/// the error reply before the client reads it.
async fn close_after_error(mut conn: TcpStream) {
    let _ = conn.shutdown(Shutdown::Write).await;
    let _ = time::timeout(ERROR_LINGER, async {
        while let Ok(Some(_)) = conn.recv().await {}
    })
    .await;
}

/// Reclaims expired keys of this core's shard, a bounded number at a time,
/// until the core shuts down.
async fn sweep_expired() {
    let mut every = time::interval(SWEEP_EVERY);
    loop {
        let mut tick = pin!(every.tick());
        let go = poll_fn(|cx| {
            if is_shutting_down() {
                return Poll::Ready(false);
            }
            tick.as_mut().poll(cx).map(|_| true)
        })
        .await;
        if !go {
            return;
        }
        for _ in 0..SWEEP_ROUNDS {
            let removed = SHARD.with(|store| store.borrow_mut().sweep(now_ms(), SWEEP_BATCH));
            if removed < SWEEP_BATCH {
                break;
            }
            yield_now().await;
        }
    }
}

/// The stores' clock: milliseconds since the Unix epoch, as Redis's
/// `EXAT` / `PXAT` mean them.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
