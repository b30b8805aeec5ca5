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
//! Beside the Redis listener, kv-node serves its typed protocol
//! (`--listen-typed`, any endpoint with connections: `tcp://`, `unix://`,
//! `tls://`; every core listens over `tcp://`, the first core otherwise): get, put, compare-and-set, increment and
//! delete as rkyv calls (`kv::messages`, `kv::client::KvClient`, the
//! `kv-client` binary). A typed request becomes the same `ShardOp` as a
//! Redis command (`kv::typed`); those for keys another core owns travel to
//! it through the mailboxes in a `kv::pipeline::Batch`, one per core and
//! turn of the connection as the Redis path's do, and their replies go
//! back on the connection from the accepting core.
//!
//! A node given `--listen-replication ENDPOINT` streams every write it
//! applies to the replicas connected there; a node given `--replica-of
//! ENDPOINT` is a read-only copy of that primary, kept up to date, that
//! resumes its stream across link cuts and resyncs in full when the
//! primary lost its session (restarted). The design is described above
//! the replication code at the end of this file and in `kv::replica`.
//!
//! ```text
//! kv-node [--cpus LIST | --cores N] [--listen tcp://127.0.0.1:6380]
//!         [--listen-typed tcp://127.0.0.1:7380]
//!         [--listen-replication ENDPOINT | --replica-of ENDPOINT]
//!         [--idle park|spin[:MICROS]|poll] [--wait-batch N:MICROS|off]
//!         [--recv-buffers N] [--recv-buffer-size BYTES]
//! redis-cli -p 6380 SET greeting hello
//! kv-client --node tcp://127.0.0.1:7380 get greeting
//! kv-node --cores 2 --listen-replication tcp://127.0.0.1:7390 &
//! kv-node --cores 2 --listen 127.0.0.1:6381 --listen-typed tcp://127.0.0.1:7381 \
//!         --replica-of tcp://127.0.0.1:7390
//! ```

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::hash::BuildHasher;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::{pin, Pin};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::OnceLock;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use ringwire::runtime::mailbox::{self, MailboxError};
use ringwire::runtime::net::{TcpListenOptions, TcpListener, TcpStream};
use ringwire::runtime::signal::TerminationSignals;
use ringwire::runtime::stats::Counter;
use ringwire::runtime::{current_core, is_shutting_down, spawn_local, time, yield_now, Runtime};
use ringwire::transports::{
    self, connect, listen, ConnEvent, Connection, Endpoint, Incoming, Listener, Message, Reconnect,
    ReplyTo, Scheme,
};
use ringwire_examples::cli::{
    parse_tcp_listen, parse_wait_batch, CoreArgs, IdleArgs, MetricsArgs, TcpListen, WaitBatch,
};
use ringwire_examples::kv::dispatch::{execute, Dispatcher};
use ringwire_examples::kv::journal::{self, Change};
use ringwire_examples::kv::messages::{
    replication_config, typed_config, ArchivedChanges, Changes, ErrorKind, KvRequest, ReplBegin,
    ReplHello, ReplOps, ReplSnapshot, ReplSnapshotDone,
};
use ringwire_examples::kv::pipeline::{run_batch, Batch, BatchReply, Turn};
use ringwire_examples::kv::replica::ReplicaState;
use ringwire_examples::kv::resp::{Limits, RequestParser};
use ringwire_examples::kv::shard::shard_of;
use ringwire_examples::kv::store::Store;
use ringwire_examples::kv::typed::{self, View};

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
    /// Where the typed listener binds (kv-client, KvClient): any endpoint
    /// with connections, e.g. tcp://HOST:PORT, unix:///PATH. Over tcp://
    /// every core listens (SO_REUSEPORT; ?reuseport=0: the first core
    /// only); over the others, the first core. Requests for keys other
    /// cores own are forwarded to them.
    #[arg(long, value_name = "ENDPOINT", default_value = "tcp://127.0.0.1:7380")]
    listen_typed: Endpoint,
    /// Serve replicas: where the replication listener binds (any endpoint
    /// with connections). The node then records every write and streams
    /// it to each replica connected, in order.
    #[arg(long, value_name = "ENDPOINT", conflicts_with = "replica_of")]
    listen_replication: Option<Endpoint>,
    /// Be a read-only replica of the node whose replication listener is at
    /// ENDPOINT: take a full copy of its keys, then apply its writes as
    /// they come, reconnecting (and resuming or resyncing) when cut. Writes
    /// from clients are refused (READONLY).
    #[arg(long, value_name = "ENDPOINT")]
    replica_of: Option<Endpoint>,
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
    let dispatcher = Dispatcher::new(shards).read_only(args.replica_of.is_some());
    if args.listen_replication.is_some() {
        // A primary: every core's store records what it writes, from the
        // start, for the replication pump to take.
        for core in 0..shards {
            rt.block_on(core, || async {
                SHARD.with(|store| store.borrow_mut().record_changes(true));
            })
            .map_err(io::Error::other)?;
        }
    }
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
    let typed_endpoint = args.listen_typed.clone();
    let typed_bound = rt
        .block_on(0, move || async move {
            start_typed(&typed_endpoint, shards, dispatcher.is_read_only()).await
        })
        .map_err(io::Error::other)?
        .map_err(|e| io::Error::other(format!("typed listener on {}: {e}", args.listen_typed)))?;
    // Over TCP the other cores bind the same port (the one the kernel
    // picked for port 0), as the Redis listener's do.
    if typed_bound.scheme() == Scheme::Tcp && typed_bound.options().reuseport() != Some(false) {
        for core in 1..shards {
            let endpoint = typed_bound.clone();
            rt.block_on(core, move || async move {
                start_typed(&endpoint, shards, dispatcher.is_read_only()).await
            })
            .map_err(io::Error::other)?
            .map_err(|e| io::Error::other(format!("typed listener on core {core}: {e}")))?;
        }
    }
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
    println!("kv-node: serving typed operations on {typed_bound}");
    if let Some(endpoint) = args.listen_replication.clone() {
        let bound = rt
            .block_on(
                0,
                move || async move { start_primary(&endpoint, shards).await },
            )
            .map_err(io::Error::other)?
            .map_err(|e| io::Error::other(format!("replication listener: {e}")))?;
        println!("kv-node: serving replication on {bound}");
    }
    if let Some(primary) = args.replica_of.clone() {
        println!("kv-node: replicating {primary}");
        rt.spawn_on(0, move || follow(primary, shards));
    }
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
        let (malformed, full, taken) = SHARD.with(|store| {
            take_requests(
                &mut parser,
                &mut turn,
                &dispatcher,
                &mut store.borrow_mut(),
                now,
            )
        });
        more = full;
        resp_requests().add(taken);
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

/// Requests parsed on the RESP listener, per core (`GET /`'s msgs/s and
/// `ringwire_kv_resp_messages_in_total` on the metrics endpoint).
fn resp_requests() -> &'static Counter {
    static REQUESTS: OnceLock<Counter> = OnceLock::new();
    REQUESTS
        .get_or_init(|| Counter::register("kv_resp_messages_in_total", "RESP requests parsed", &[]))
}

/// Pushes the parser's complete requests into `turn` until the parser
/// needs more bytes, a request is malformed, or the turn is full. Returns
/// (malformed, full, requests taken).
fn take_requests(
    parser: &mut RequestParser,
    turn: &mut Turn,
    dispatcher: &Dispatcher,
    store: &mut Store,
    now: u64,
) -> (bool, bool, u64) {
    let mut taken = 0;
    loop {
        if turn.requests() >= TURN_REQUESTS || turn.output_len() >= TURN_BYTES {
            return (false, true, taken);
        }
        match parser.next() {
            Ok(Some(request)) => {
                turn.push(dispatcher, store, &request, now);
                taken += 1;
            }
            Ok(None) => return (false, false, taken),
            Err(error) => {
                turn.push_error(error);
                return (true, false, taken);
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

/// Binds the typed listener on this core and starts accepting; returns
/// the endpoint bound (with the port the kernel chose for port 0).
async fn start_typed(
    endpoint: &Endpoint,
    shards: usize,
    read_only: bool,
) -> Result<Endpoint, transports::Error> {
    let listener = listen(endpoint, &typed_config()).await?;
    let bound = listener.endpoint().clone();
    spawn_local(typed_accept_loop(listener, shards, read_only));
    Ok(bound)
}

async fn typed_accept_loop(mut listener: Listener, shards: usize, read_only: bool) {
    while let Some(conn) = listener.accept().await {
        match conn {
            Ok(conn) => {
                spawn_local(serve_typed(conn, shards, read_only));
            }
            // A handshake that failed (another schema, a stray client):
            // that connection only.
            Err(e) => tracing::debug!(error = %e, "typed connection refused"),
        }
    }
}

/// Serves one typed connection, a turn at a time: a turn takes every
/// request that has arrived (up to `TURN_REQUESTS`), answers at once those
/// whose key this core owns, and gathers the others into one batch per
/// owning core, which a task of its own forwards through the mailboxes and
/// answers from (the client matches replies by call id), so that the
/// connection reads on meanwhile.
async fn serve_typed(conn: Connection, shards: usize, read_only: bool) {
    let here = current_core();
    let mut forwards: Vec<Forward> = (0..shards).map(|_| Forward::default()).collect();
    loop {
        let first = match conn.recv_any().await {
            Ok(first) => first,
            Err(e) if e.is_connection_fatal() => {
                tracing::debug!(error = %e, "typed connection ended");
                return;
            }
            // A message that failed validation: it alone is dropped.
            Err(e) => {
                tracing::debug!(error = %e, "typed message dropped");
                continue;
            }
        };
        let now = now_ms();
        typed_request(first, &mut forwards, here, shards, read_only, now).await;
        for _ in 1..TURN_REQUESTS {
            match conn.try_recv_any() {
                None => break,
                Some(Ok(next)) => {
                    typed_request(next, &mut forwards, here, shards, read_only, now).await;
                }
                Some(Err(e)) if e.is_connection_fatal() => break,
                Some(Err(e)) => tracing::debug!(error = %e, "typed message dropped"),
            }
        }
        for (shard, forward) in forwards.iter_mut().enumerate() {
            if forward.waiting.is_empty() {
                continue;
            }
            let batch = std::mem::take(&mut forward.batch);
            let waiting = std::mem::take(&mut forward.waiting);
            spawn_local(forward_typed(conn.clone(), shard, batch, waiting));
        }
    }
}

/// A turn's requests for one other core: their ops, and where each
/// answer goes.
#[derive(Default)]
struct Forward {
    batch: Batch,
    /// Indexed by the op's tag in `batch`.
    waiting: Vec<(ReplyTo, typed::OpKind)>,
}

/// Takes one typed message of a turn: answered at once, or pushed into
/// `forwards`.
async fn typed_request(
    incoming: Incoming,
    forwards: &mut [Forward],
    here: usize,
    shards: usize,
    read_only: bool,
    now: u64,
) {
    let msg = match incoming.downcast::<KvRequest>() {
        Ok(msg) => msg,
        Err(other) => {
            tracing::debug!(
                type_id = other.type_id(),
                "typed message of another type dropped"
            );
            return;
        }
    };
    let Some(to) = msg.incoming().reply_to() else {
        // Sent one-way rather than called: there is no one to answer, and
        // an operation nobody awaits is not run.
        tracing::debug!("typed request sent without a call");
        return;
    };
    match typed::plan(View::archived(&msg), shards, read_only, now) {
        typed::Plan::Done(reply) => answer(msg.reply(&reply).await),
        typed::Plan::Run { shard, op, kind } if shard == here => {
            let done = SHARD.with(|store| execute(&mut store.borrow_mut(), op, now));
            answer(msg.reply(&typed::reply(kind, done)).await);
        }
        typed::Plan::Run { shard, op, kind } => {
            // `plan` names a shard below `shards`, the length of `forwards`.
            if let Some(forward) = forwards.get_mut(shard) {
                forward.batch.push_op(op, forward.waiting.len());
                forward.waiting.push((to, kind));
            }
        }
    }
}

/// Runs a turn's batch on the core owning `shard` and sends each answer.
async fn forward_typed(
    conn: Connection,
    shard: usize,
    batch: Batch,
    waiting: Vec<(ReplyTo, typed::OpKind)>,
) {
    let done = mailbox::submit_to(shard, move || async move {
        SHARD.with(|store| run_batch(&mut store.borrow_mut(), batch, now_ms()))
    })
    .await;
    let mut answered = vec![false; waiting.len()];
    match done {
        Ok(mut reply) => {
            for (tag, shard_reply) in reply.answers() {
                let Some((to, kind)) = waiting.get(tag) else {
                    continue;
                };
                answered[tag] = true;
                answer(conn.reply_to(*to, &typed::reply(*kind, shard_reply)).await);
            }
        }
        Err(e) => tracing::debug!(error = %e, "typed batch not run"),
    }
    // Whatever the owning core did not answer (it is shutting down).
    for ((to, _), done) in waiting.iter().zip(answered) {
        if !done {
            let reply = typed::error(ErrorKind::Unavailable, "ERR the owning core did not answer");
            answer(conn.reply_to(*to, &reply).await);
        }
    }
}

/// Logs a reply that could not be sent (the connection is going away; its
/// receive loop sees why).
fn answer(sent: Result<(), transports::Error>) {
    if let Err(e) = sent {
        tracing::debug!(error = %e, "typed reply not sent");
    }
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

// Replication. The design (see also `kv::replica`):
//
// - Primary (`--listen-replication`): every store records the state each
//   write leaves its key in (`Store::record_changes`). One task on the first
//   core, the pump, takes each shard's changes every `PUMP_EVERY` (through
//   the mailboxes, on the owning core), numbers them per shard (1, 2, ...
//   since the process started) and sends them as `ReplOps` to every replica
//   in sync. A replica's connection sends one `ReplHello` per session; the
//   pump answers it at its next round with `ReplBegin`, then per shard a
//   snapshot taken on the owning core in the same step as that round's
//   changes (so the snapshot holds exactly the writes up to the last number
//   given out) as `ReplSnapshot` chunks and `ReplSnapshotDone { seq }`; from
//   the next round on, the replica gets that shard's `ReplOps` from seq + 1.
//   The listener keeps a cut session for `RESUME_WINDOW`.
// - Replica (`--replica-of`): read-only; one task on the first core connects
//   with a reconnect policy and sends `ReplHello`. It checks every message
//   against where it stands (`ReplicaState`: a gap or a replay ends the
//   connection, and the next one starts with a full resync) and applies it in
//   order on the owning cores, awaiting each before the next.
// - A link cut while both processes live: the transport reconnects and
//   resumes the session, resending exactly what the replica lacks, so the
//   stream goes on where the replica stood, exactly once, with no resync.
// - The primary restarted (or the session outlived its resume window): the
//   transport reports `ConnEvent::SessionReset`; the replica sends a new
//   `ReplHello` on the new session, and the primary, which numbers anew
//   under a new epoch, starts a full resync: `ReplBegin` drops every key.
// - The replica restarted: its session died with it; it connects afresh and
//   takes a full resync.

/// How often the primary's pump takes the shards' changes.
const PUMP_EVERY: Duration = Duration::from_millis(2);
/// How long the primary keeps a replica's cut session for it to resume; a
/// replica that comes back later takes a full resync. Shorter than
/// `SHUTDOWN_GRACE`: the transport's timer for a cut session runs for the
/// whole window, even once the session resumed, and a shutdown waits for it.
const RESUME_WINDOW: Duration = Duration::from_secs(3);
/// A replica's pause before connecting again after a connection ended.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// The primary's replicas, on the first core.
#[derive(Default)]
struct Feed {
    next_id: u64,
    /// Replicas receiving the stream.
    live: Vec<(u64, Connection)>,
    /// Replicas that asked for a full resync, for the next round.
    waiting: Vec<(u64, Connection)>,
}

impl Feed {
    fn remove(&mut self, id: u64) {
        self.live.retain(|(i, _)| *i != id);
        self.waiting.retain(|(i, _)| *i != id);
    }
}

/// Binds the replication listener on this core and starts the pump.
async fn start_primary(endpoint: &Endpoint, shards: usize) -> Result<Endpoint, transports::Error> {
    let config = replication_config().resume(RESUME_WINDOW);
    let mut listener = listen(endpoint, &config).await?;
    let bound = listener.endpoint().clone();
    let feed = Rc::new(RefCell::new(Feed::default()));
    let epoch = std::hash::RandomState::new().hash_one(now_ms());
    tracing::info!(epoch, "replication epoch");
    spawn_local(pump(feed.clone(), epoch, shards));
    spawn_local(async move {
        while let Some(conn) = listener.accept().await {
            match conn {
                Ok(conn) => {
                    let id = {
                        let mut f = feed.borrow_mut();
                        f.next_id += 1;
                        f.next_id
                    };
                    spawn_local(serve_replica(conn, id, feed.clone()));
                }
                Err(e) => tracing::debug!(error = %e, "replication connection refused"),
            }
        }
    });
    Ok(bound)
}

/// Takes a replica's requests for a full resync until its connection ends.
async fn serve_replica(conn: Connection, id: u64, feed: Rc<RefCell<Feed>>) {
    loop {
        match conn.recv::<ReplHello>().await {
            Ok(hello) => {
                tracing::info!(
                    replica = id,
                    shards = hello.shards.to_native(),
                    "replica asks for a full resync"
                );
                let mut f = feed.borrow_mut();
                f.remove(id);
                f.waiting.push((id, conn.clone()));
            }
            Err(e) if e.is_connection_fatal() => {
                tracing::info!(replica = id, error = %e, "replica gone");
                feed.borrow_mut().remove(id);
                return;
            }
            Err(e) => tracing::debug!(replica = id, error = %e, "replication message dropped"),
        }
    }
}

/// Sends `msg` to each of `to`; returns the ids whose connection failed.
async fn send_each<T: Message>(to: &[(u64, Connection)], msg: &T, dead: &mut Vec<u64>) {
    for (id, conn) in to {
        if dead.contains(id) {
            continue;
        }
        if let Err(e) = conn.send(msg).await {
            tracing::info!(replica = id, error = %e, "replica dropped");
            dead.push(*id);
        }
    }
}

/// The primary's pump: see the design above.
async fn pump(feed: Rc<RefCell<Feed>>, epoch: u64, shards: usize) {
    let mut every = time::interval(PUMP_EVERY);
    let mut seq = vec![0u64; shards];
    let shard_count = u32::try_from(shards).unwrap_or(u32::MAX);
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
        let (live, starting) = {
            let mut f = feed.borrow_mut();
            let starting = std::mem::take(&mut f.waiting);
            (f.live.clone(), starting)
        };
        let mut dead = Vec::new();
        let want_snapshot = !starting.is_empty();
        if want_snapshot {
            let begin = ReplBegin {
                epoch,
                shards: shard_count,
            };
            send_each(&starting, &begin, &mut dead).await;
        }
        for (shard, last) in seq.iter_mut().enumerate() {
            let take = move || {
                let now = now_ms();
                SHARD.with(|store| {
                    let mut store = store.borrow_mut();
                    let changes = store.take_changes();
                    let snapshot = want_snapshot.then(|| journal::snapshot(&store, now));
                    (changes, snapshot)
                })
            };
            let (changes, snapshot) = if shard == current_core() {
                take()
            } else {
                match mailbox::submit_to(shard, move || async move { take() }).await {
                    Ok(taken) => taken,
                    // The node is shutting down.
                    Err(_) => return,
                }
            };
            let shard_id = u32::try_from(shard).unwrap_or(u32::MAX);
            for changes in changes {
                let first_seq = *last + 1;
                *last += changes.len() as u64;
                let ops = ReplOps {
                    shard: shard_id,
                    first_seq,
                    changes,
                };
                send_each(&live, &ops, &mut dead).await;
            }
            if let Some(snapshot) = snapshot {
                for changes in snapshot {
                    let part = ReplSnapshot {
                        shard: shard_id,
                        changes,
                    };
                    send_each(&starting, &part, &mut dead).await;
                }
                let done = ReplSnapshotDone {
                    shard: shard_id,
                    seq: *last,
                };
                send_each(&starting, &done, &mut dead).await;
            }
        }
        let mut f = feed.borrow_mut();
        // A replica that asked again meanwhile is in `waiting` once more.
        for (id, conn) in starting {
            if !f.waiting.iter().any(|(i, _)| *i == id) {
                f.live.push((id, conn));
            }
        }
        for id in dead {
            f.remove(id);
        }
    }
}

/// A replica's task: follows the primary at `primary` until the node
/// shuts down, one connection after another.
async fn follow(primary: Endpoint, shards: usize) {
    let config = replication_config().reconnect(
        Reconnect::default()
            .backoff(Duration::from_millis(10), Duration::from_secs(1))
            .give_up_after(Some(Duration::from_secs(60))),
    );
    let mut state = ReplicaState::default();
    let mut warned = false;
    while !is_shutting_down() {
        match connect(&primary, &config).await {
            Ok(conn) => {
                warned = false;
                tracing::info!(%primary, "connected to the primary");
                if let Err(e) = follow_connection(&conn, &mut state, shards).await {
                    tracing::warn!(error = %e, "replication stream ended");
                }
                let _ = conn.close().await;
            }
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(%primary, error = %e, "cannot reach the primary; retrying");
            }
            Err(_) => {}
        }
        let _ = time::timeout(
            RETRY_EVERY,
            poll_fn(|_| {
                if is_shutting_down() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }),
        )
        .await;
    }
}

enum Step {
    Message(Result<Incoming, transports::Error>),
    Event(Option<ConnEvent>),
}

/// Follows the stream on one connection until it ends or breaks.
async fn follow_connection(
    conn: &Connection,
    state: &mut ReplicaState,
    shards: usize,
) -> Result<(), String> {
    let hello = ReplHello {
        shards: u32::try_from(shards).unwrap_or(u32::MAX),
    };
    conn.send(&hello).await.map_err(|e| e.to_string())?;
    loop {
        let step = {
            let mut message = pin!(conn.recv_any());
            let mut event = pin!(conn.next_event());
            poll_fn(|cx| {
                if let Poll::Ready(e) = event.as_mut().poll(cx) {
                    return Poll::Ready(Step::Event(e));
                }
                message.as_mut().poll(cx).map(Step::Message)
            })
            .await
        };
        match step {
            Step::Event(Some(ConnEvent::SessionReset { .. })) => {
                // The primary no longer holds the session (it restarted):
                // ask the new one for a full resync.
                tracing::info!("the primary lost the session; asking for a full resync");
                conn.send(&hello).await.map_err(|e| e.to_string())?;
            }
            Step::Event(Some(ConnEvent::Failed { error, .. })) => return Err(error.to_string()),
            Step::Event(Some(ConnEvent::Disconnected { reason })) => {
                tracing::info!(%reason, "cut from the primary; reconnecting");
            }
            Step::Event(Some(ConnEvent::Resumed)) => {
                tracing::info!("resumed the stream where it stood");
            }
            Step::Event(Some(other)) => tracing::debug!(event = ?other, "replication link"),
            Step::Event(None) => return Err("the connection is over".to_string()),
            Step::Message(Err(e)) => return Err(e.to_string()),
            Step::Message(Ok(m)) => take_message(&m, state, shards).await?,
        }
    }
}

/// Checks one replication message against where the replica stands and
/// applies it.
async fn take_message(m: &Incoming, state: &mut ReplicaState, shards: usize) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    match m.type_id() {
        ReplBegin::TYPE_ID => {
            let begin = m.get::<ReplBegin>().map_err(|x| e(&x))?;
            let (epoch, primary_shards) = (begin.epoch.to_native(), begin.shards.to_native());
            state.begin(epoch, primary_shards).map_err(|x| e(&x))?;
            tracing::info!(epoch, primary_shards, "full resync");
            for shard in 0..shards {
                on_shard(shard, |store| store.clear()).await?;
            }
        }
        ReplSnapshot::TYPE_ID => {
            let part = m.get::<ReplSnapshot>().map_err(|x| e(&x))?;
            let shard = part.shard.to_native();
            journal::check(journal::read_archived(&part.changes)).map_err(|x| e(&x))?;
            state.snapshot(shard).map_err(|x| e(&x))?;
            apply_changes(state, shard, &part.changes, shards).await?;
        }
        ReplSnapshotDone::TYPE_ID => {
            let done = m.get::<ReplSnapshotDone>().map_err(|x| e(&x))?;
            state
                .snapshot_done(done.shard.to_native(), done.seq.to_native())
                .map_err(|x| e(&x))?;
            if state.is_synced() {
                tracing::info!("in sync with the primary");
            }
        }
        ReplOps::TYPE_ID => {
            let ops = m.get::<ReplOps>().map_err(|x| e(&x))?;
            let shard = ops.shard.to_native();
            let n = journal::check(journal::read_archived(&ops.changes)).map_err(|x| e(&x))?;
            state
                .ops(shard, ops.first_seq.to_native(), n as u64)
                .map_err(|x| e(&x))?;
            apply_changes(state, shard, &ops.changes, shards).await?;
        }
        other => return Err(format!("unexpected replication message type {other:#x}")),
    }
    Ok(())
}

/// Runs `f` on `shard`'s store, on its core.
async fn on_shard<F>(shard: usize, f: F) -> Result<(), String>
where
    F: FnOnce(&mut Store) + Send + 'static,
{
    if shard == current_core() {
        SHARD.with(|store| f(&mut store.borrow_mut()));
        return Ok(());
    }
    mailbox::submit_to(shard, move || async move {
        SHARD.with(|store| f(&mut store.borrow_mut()));
    })
    .await
    .map_err(|e| e.to_string())
}

/// Applies primary shard `from`'s checked changes: each key's to the
/// replica shard owning it, in order; a clear of `from` drops, on every
/// replica shard, the keys that `from` owns on the primary.
async fn apply_changes(
    state: &ReplicaState,
    from: u32,
    changes: &ArchivedChanges,
    shards: usize,
) -> Result<(), String> {
    let primary_shards = state.applied().len();
    let mut per_shard: Vec<Changes> = vec![Changes::default(); shards];
    for change in journal::read_archived(changes) {
        let change = change.map_err(|e| e.to_string())?;
        match change {
            Change::Put { key, .. } | Change::Delete { key } => {
                per_shard[shard_of(key, shards)].push(change);
            }
            Change::Clear => per_shard.iter_mut().for_each(|c| c.push(Change::Clear)),
        }
    }
    for (shard, batch) in per_shard.into_iter().enumerate() {
        if batch.is_empty() {
            continue;
        }
        on_shard(shard, move |store| {
            let now = now_ms();
            for change in journal::read(batch.ops.iter().copied(), &batch.arena).flatten() {
                match change {
                    Change::Clear => {
                        let gone: Vec<Vec<u8>> = store
                            .iter_live(now)
                            .filter(|(k, _, _)| shard_of(k, primary_shards) == from as usize)
                            .map(|(k, _, _)| k.to_vec())
                            .collect();
                        for key in gone {
                            store.delete(&key, now);
                        }
                    }
                    change => journal::apply(store, change, now),
                }
            }
        })
        .await?;
    }
    Ok(())
}
