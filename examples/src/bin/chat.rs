//! chat: a chat room over ringwire connections.
//!
//! `chat server` accepts clients (tcp://, unix://, tls://) and sends each
//! line a client says to every other client, serialized **once**
//! (`Peers::broadcast_to`: the same buffer goes on every connection). A
//! client that stops reading must not stall the room: every connection's
//! send queue is bounded (`--queue`) and what does not fit is dropped and
//! counted; the server probes each connection (`--probe`) and a client whose
//! queue stays full is logged as stalled and, with `--stalled disconnect`
//! (the default), disconnected after `--stall-timeout`.
//!
//! `chat client` reads lines from stdin and sends them, and prints what the
//! room says (`NAME: TEXT`, and `* ...` notices from the server). It leaves
//! at the end of stdin, on Ctrl-C, or when the server closes.
//!
//! ```text
//! chat server --listen tcp://127.0.0.1:7300
//! chat client --connect tcp://127.0.0.1:7300 --name alice
//! chat server --listen 'tls://127.0.0.1:7301?cert=server.pem&key=server.key'
//! chat client --connect 'tls://127.0.0.1:7301?ca=ca.pem&servername=localhost'
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use ringwire::proto::rkyv;
use ringwire::runtime::signal::TerminationSignals;
use ringwire::runtime::{spawn_local, time, Placement, Runtime};
use ringwire::transports::{
    connect, listen, type_id, BackPressure, Config, Connection, Endpoint, Error, Message, Peers,
};
use ringwire_examples::cli::{CoreArgs, IdleArgs};
use ringwire_examples::nodes::{parse_duration, parse_endpoint, stopping, watch_signals};

/// Client to server, first: who this is.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
#[rkyv(crate = rkyv)]
pub struct Hello {
    /// The name shown to the room.
    pub name: String,
}

impl Message for Hello {
    const TYPE_ID: u32 = type_id("chat.Hello");
    const NAME: &'static str = "chat.Hello";
}

/// Client to server: a line for the room.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
#[rkyv(crate = rkyv)]
pub struct Say {
    /// The line, without its newline.
    pub text: String,
}

impl Message for Say {
    const TYPE_ID: u32 = type_id("chat.Say");
    const NAME: &'static str = "chat.Say";
}

/// Server to clients: a line someone said, or a notice (`from` empty).
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
#[rkyv(crate = rkyv)]
pub struct Line {
    /// Who said it; empty for the server's notices.
    pub from: String,
    /// What was said.
    pub text: String,
}

impl Message for Line {
    const TYPE_ID: u32 = type_id("chat.Line");
    const NAME: &'static str = "chat.Line";
}

/// Server to client: the probe that tells the server whether the
/// connection's send queue has room. Clients ignore it.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
#[rkyv(crate = rkyv)]
pub struct Probe {}

impl Message for Probe {
    const TYPE_ID: u32 = type_id("chat.Probe");
    const NAME: &'static str = "chat.Probe";
}

/// A chat room: a server that relays each line to every other client, and
/// a terminal client.
///
/// Ctrl-C or SIGTERM stops either side gracefully. Logs go to stderr,
/// filtered by RUST_LOG (default: info).
#[derive(Parser, Debug)]
#[command(name = "chat", version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the room.
    Server(ServerArgs),
    /// Join a room: stdin lines are sent, the room's lines printed.
    Client(ClientArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Stalled {
    /// Keep the client; lines that do not fit its queue are dropped
    /// (counted) until it reads again.
    Drop,
    /// Drop lines as above, and disconnect the client once its queue has
    /// been full for --stall-timeout.
    Disconnect,
}

#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// Where to listen: tcp://HOST:PORT (HOST:PORT alone), unix:///PATH,
    /// tls://HOST:PORT?cert=PEM&key=PEM[&ca=PEM for client certificates].
    /// Port 0 picks a free port; the address is printed.
    #[arg(long, value_name = "ENDPOINT", default_value = "tcp://127.0.0.1:7300",
          value_parser = parse_endpoint)]
    listen: Endpoint,
    /// Lines queued per client before lines for it are dropped.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    queue: usize,
    /// What happens to a client that stops reading.
    #[arg(long, value_enum, default_value_t = Stalled::Disconnect)]
    stalled: Stalled,
    /// How long a client's queue may stay full before it is disconnected
    /// (--stalled disconnect).
    #[arg(long, value_name = "TIME", default_value = "5s", value_parser = parse_duration)]
    stall_timeout: Duration,
    /// How often each client's queue is probed.
    #[arg(long, value_name = "TIME", default_value = "100ms", value_parser = parse_duration)]
    probe: Duration,
    #[command(flatten)]
    cores: CoreArgs,
    #[command(flatten)]
    idle: IdleArgs,
}

#[derive(clap::Args, Debug)]
struct ClientArgs {
    /// The room: tcp://HOST:PORT (HOST:PORT alone), unix:///PATH,
    /// tls://HOST:PORT?ca=PEM[&servername=NAME].
    #[arg(long, value_name = "ENDPOINT", default_value = "tcp://127.0.0.1:7300",
          value_parser = parse_endpoint)]
    connect: Endpoint,
    /// The name the room sees (default: user-PID).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    cores: CoreArgs,
    #[command(flatten)]
    idle: IdleArgs,
}

fn main() -> ExitCode {
    // Bad arguments: clap prints the error and exits with code 2.
    let args = Args::parse();
    ringwire_examples::init_tracing();
    let res = match args.cmd {
        Cmd::Server(a) => server(a),
        Cmd::Client(a) => client(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config() -> Config {
    // Constant, valid type list: this cannot fail.
    Config::with_types::<(Hello, Say, Line, Probe)>().expect("four message types")
}

fn runtime(cores: &CoreArgs, idle: &IdleArgs) -> io::Result<Runtime> {
    let placement = if *cores == CoreArgs::default() {
        Placement::Unpinned(1)
    } else {
        cores.placement()
    };
    Ok(Runtime::builder()
        .placement(placement)
        .idle(idle.idle)
        .thread_name("chat")
        .build()?)
}

/// Prints a line to stdout at once (the output may be a pipe).
fn say(text: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

// ---------------------------------------------------------------------------
// Server

/// Server counters, printed at shutdown.
#[derive(Default)]
struct Counters {
    joined: AtomicU64,
    lines: AtomicU64,
    probes_dropped: AtomicU64,
    stalls: AtomicU64,
    stall_disconnects: AtomicU64,
}

static COUNTERS: Counters = Counters {
    joined: AtomicU64::new(0),
    lines: AtomicU64::new(0),
    probes_dropped: AtomicU64::new(0),
    stalls: AtomicU64::new(0),
    stall_disconnects: AtomicU64::new(0),
};

/// The room, on the server's core.
struct Room {
    peers: Peers,
    /// Peer id -> name, for clients that said hello.
    names: RefCell<HashMap<u64, String>>,
    stalled: Stalled,
    stall_timeout: Duration,
    probe: Duration,
}

impl Room {
    /// Sends `line` to every client that joined, except `except`.
    async fn relay(&self, line: &Line, except: Option<u64>) {
        let to: Vec<u64> = self
            .names
            .borrow()
            .keys()
            .copied()
            .filter(|&p| Some(p) != except)
            .collect();
        if to.is_empty() {
            return;
        }
        if let Err(e) = self.peers.broadcast_to(line, &to).await {
            tracing::warn!(error = %e, "relay failed");
        }
    }

    async fn notice(&self, text: String, except: Option<u64>) {
        say(format_args!("* {text}"));
        let line = Line {
            from: String::new(),
            text,
        };
        self.relay(&line, except).await;
    }
}

fn server(args: ServerArgs) -> io::Result<()> {
    let signals = TerminationSignals::block()?;
    let rt = runtime(&args.cores, &args.idle)?;
    let ep = args.listen.clone();
    let (queue, stalled, stall_timeout, probe) =
        (args.queue, args.stalled, args.stall_timeout, args.probe);
    let bound = rt
        .block_on(0, move || async move {
            let peers = Peers::new();
            let cfg = config()
                .peers(&peers)
                .back_pressure(BackPressure::DropNewest)
                .send_queue(queue.max(1), queue.max(1).saturating_mul(4096))
                // A stalled client does not confirm the close: bound it.
                .close_timeout(Duration::from_secs(1));
            let mut listener = listen(&ep, &cfg).await.map_err(io::Error::other)?;
            let bound = listener.endpoint().clone();
            let room = Rc::new(Room {
                peers,
                names: RefCell::new(HashMap::new()),
                stalled,
                stall_timeout,
                probe,
            });
            spawn_local(async move {
                while let Some(conn) = listener.accept().await {
                    match conn {
                        Ok(conn) => {
                            spawn_local(serve(room.clone(), conn));
                        }
                        Err(e) => tracing::warn!(error = %e, "accept failed"),
                    }
                }
            });
            Ok::<_, io::Error>(bound)
        })
        .map_err(io::Error::other)??;
    say(format_args!(
        "chat server listening on {bound}; a stalled client is {}",
        match stalled {
            Stalled::Drop => "kept (its lines dropped)".to_string(),
            Stalled::Disconnect => format!("disconnected after {stall_timeout:?}"),
        }
    ));
    // A place for the node's metrics endpoint (`--metrics ADDR`, to come):
    // these counters and the transports' would be served there.
    let sig = signals.wait()?;
    tracing::info!(?sig, "shutting down");
    let dropped = rt
        .block_on(0, || async {
            let s = ringwire::transports::stats::snapshot();
            s.schemes.iter().map(|s| s.dropped).sum::<u64>()
        })
        .unwrap_or(0);
    rt.shutdown(Duration::from_secs(2));
    let c = &COUNTERS;
    let probes = c.probes_dropped.load(Ordering::Relaxed);
    say(format_args!(
        "chat server stopped: joined={} lines={} dropped_lines={} stalls={} stall_disconnects={}",
        c.joined.load(Ordering::Relaxed),
        c.lines.load(Ordering::Relaxed),
        dropped.saturating_sub(probes),
        c.stalls.load(Ordering::Relaxed),
        c.stall_disconnects.load(Ordering::Relaxed),
    ));
    Ok(())
}

/// Serves one client: its hello, then its lines, relayed to the others.
async fn serve(room: Rc<Room>, conn: Connection) {
    let peer = conn.peer_id();
    let name = match time::timeout(Duration::from_secs(10), conn.recv::<Hello>()).await {
        Ok(Ok(h)) => h.name.as_str().to_string(),
        Ok(Err(e)) => {
            tracing::info!(remote = conn.remote(), error = %e, "no hello");
            return;
        }
        Err(_) => {
            tracing::info!(remote = conn.remote(), "no hello in 10s");
            return;
        }
    };
    let present = room.names.borrow().len() + 1;
    room.names.borrow_mut().insert(peer, name.clone());
    COUNTERS.joined.fetch_add(1, Ordering::Relaxed);
    room.notice(format!("{name} joined ({present} here)"), Some(peer))
        .await;
    let gone = Rc::new(Cell::new(false));
    spawn_local(watch(
        room.clone(),
        conn.clone(),
        name.clone(),
        gone.clone(),
    ));
    let why = loop {
        match conn.recv::<Say>().await {
            Ok(say) => {
                let line = Line {
                    from: name.clone(),
                    text: say.text.as_str().to_string(),
                };
                drop(say);
                COUNTERS.lines.fetch_add(1, Ordering::Relaxed);
                room.relay(&line, Some(peer)).await;
            }
            Err(Error::Closed { .. }) => break None,
            Err(e) if !e.is_connection_fatal() => {
                tracing::warn!(%name, error = %e, "message skipped")
            }
            Err(e) => break Some(e),
        }
    };
    gone.set(true);
    room.names.borrow_mut().remove(&peer);
    match why {
        None => room.notice(format!("{name} left"), None).await,
        Some(e) => {
            tracing::info!(%name, error = %e, "connection ended");
            room.notice(format!("{name} left ({e})"), None).await
        }
    }
}

/// Probes a client's send queue every `room.probe`: a full queue means the
/// client is not reading (its lines are being dropped); under
/// `Stalled::Disconnect` one full for `room.stall_timeout` is closed.
async fn watch(room: Rc<Room>, conn: Connection, name: String, gone: Rc<Cell<bool>>) {
    let mut since: Option<Instant> = None;
    loop {
        time::sleep(room.probe).await;
        if gone.get() || conn.is_closed() {
            return;
        }
        let full = match conn.send(&Probe {}).await {
            Ok(r) => r.dropped(),
            Err(_) => return,
        };
        if full {
            COUNTERS.probes_dropped.fetch_add(1, Ordering::Relaxed);
        }
        match (full, since) {
            (true, None) => {
                since = Some(Instant::now());
                COUNTERS.stalls.fetch_add(1, Ordering::Relaxed);
                say(format_args!(
                    "* {name} stalled: lines for it are dropped until it reads again"
                ));
                tracing::warn!(%name, "client stalled");
            }
            (true, Some(t))
                if room.stalled == Stalled::Disconnect && t.elapsed() >= room.stall_timeout =>
            {
                COUNTERS.stall_disconnects.fetch_add(1, Ordering::Relaxed);
                room.names.borrow_mut().remove(&conn.peer_id());
                room.notice(
                    format!("{name} disconnected: stalled for {:?}", room.stall_timeout),
                    Some(conn.peer_id()),
                )
                .await;
                // The close cannot be confirmed by a client that does not
                // read: it ends after the configured close timeout.
                let _ = conn.close().await;
                return;
            }
            (false, Some(t)) => {
                since = None;
                say(format_args!(
                    "* {name} reads again after {:.1}s",
                    t.elapsed().as_secs_f64()
                ));
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Client

thread_local! {
    /// The client's connection, on its core.
    static CONN: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

/// Set when stdin ended and everything read from it was queued.
static STDIN_DONE: AtomicBool = AtomicBool::new(false);

fn client(args: ClientArgs) -> io::Result<()> {
    let signals = TerminationSignals::block()?;
    watch_signals(signals, Duration::from_secs(3))?;
    let rt = runtime(&args.cores, &args.idle)?;
    let name = args
        .name
        .unwrap_or_else(|| format!("user-{}", std::process::id()));
    let ep = args.connect.clone();
    let hello_name = name.clone();
    let handle = rt
        .block_on(0, move || async move {
            let conn = connect(&ep, &config()).await?;
            conn.send(&Hello { name: hello_name }).await?;
            let handle = conn.handle();
            CONN.with(|c| *c.borrow_mut() = Some(conn));
            Ok::<_, Error>(handle)
        })
        .map_err(io::Error::other)?
        .map_err(io::Error::other)?;
    say(format_args!("* connected to {} as {name}", args.connect));
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in io::stdin().lock().lines() {
                let Ok(text) = line else { break };
                if let Err(e) = handle.send_blocking(&Say { text }) {
                    tracing::warn!(error = %e, "line not sent");
                    break;
                }
            }
            STDIN_DONE.store(true, Ordering::SeqCst);
        })?;
    let res = rt
        .block_on(0, || async { receive().await })
        .map_err(io::Error::other)?;
    rt.shutdown(Duration::from_secs(2));
    res
}

/// Prints what the room says until stdin ends, a signal, or the server
/// closes.
async fn receive() -> io::Result<()> {
    let Some(conn) = CONN.with(|c| c.borrow_mut().take()) else {
        return Err(io::Error::other("not connected"));
    };
    loop {
        if stopping() || STDIN_DONE.load(Ordering::SeqCst) {
            // Everything queued is delivered before the close completes.
            conn.close().await.map_err(io::Error::other)?;
            return Ok(());
        }
        match time::timeout(Duration::from_millis(100), conn.recv_any()).await {
            Err(_) => {}
            Ok(Ok(m)) => {
                if let Ok(line) = m.get::<Line>() {
                    if line.from.is_empty() {
                        say(format_args!("* {}", line.text));
                    } else {
                        say(format_args!("{}: {}", line.from, line.text));
                    }
                }
            }
            Ok(Err(Error::Closed { .. })) => {
                say(format_args!("* the server closed the connection"));
                return Ok(());
            }
            Ok(Err(e)) if !e.is_connection_fatal() => {
                tracing::warn!(error = %e, "message skipped")
            }
            Ok(Err(e)) => {
                say(format_args!("* disconnected: {e}"));
                return Err(io::Error::other(e));
            }
        }
    }
}
