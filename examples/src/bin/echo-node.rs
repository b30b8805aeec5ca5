//! echo-node: a core-pinned TCP echo server on ringwire.
//!
//! Every core listens on the same address (`SO_REUSEPORT`) and echoes what it
//! receives, either every byte (`--wire raw`) or whole length-prefixed
//! messages (`--wire lenprefix`: 4-byte little-endian length, then payload).
//! Ctrl-C or SIGTERM shuts it down gracefully and prints per-core counters.
//!
//! ```text
//! echo-node [--cpus LIST | --cores N] [--listen 127.0.0.1:7000]
//!           [--wire raw|lenprefix] [--gather sendmsg|copy] [--idle park|spin|poll] [--max-message BYTES]
//!           [--recv multishot|single] [--accept reuseport|handoff]
//!           [--wait-batch N:MICROS|off] [--recv-buffers N] [--recv-buffer-size BYTES]
//!           [--stats]
//! ```

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ringwire::runtime::mailbox;
use ringwire::runtime::net::{TcpListener, TcpStream};
use ringwire::runtime::signal::TerminationSignals;
use ringwire::runtime::{spawn_local, stats, Runtime};
use ringwire_examples::cli::{
    parse_tcp_listen, parse_wait_batch, CoreArgs, IdleArgs, MetricsArgs, TcpListen, WaitBatch,
};
use ringwire_examples::held::{Held, Piece};
use ringwire_examples::lenprefix::{Boundaries, Reassembler};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Wire {
    /// Every byte, as it arrives.
    Raw,
    /// Whole messages: a 4-byte little-endian length, then the payload.
    #[value(name = "lenprefix")]
    LenPrefix,
}

/// How bytes that arrived in several receive buffers are sent back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Gather {
    /// From the buffers they arrived in: one SENDMSG with an iovec per
    /// buffer, no copy (a message spanning buffers is never reassembled).
    Sendmsg,
    /// Copied into one contiguous per-connection buffer, then one SEND (the
    /// A/B reference).
    Copy,
}

/// What a connection echoes and how.
#[derive(Clone, Copy, Debug)]
struct Echo {
    wire: Wire,
    max_message: usize,
    gather: Gather,
}

/// How connections reach the cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Accept {
    /// Every core listens on the address (SO_REUSEPORT); the kernel spreads
    /// connections.
    #[value(name = "reuseport")]
    ReusePort,
    /// Core 0 accepts and hands connections round-robin to every core through
    /// the mailboxes.
    Handoff,
}

/// How a connection receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Recv {
    /// One multishot receive armed per socket.
    Multishot,
    /// One receive submitted per completion.
    Single,
}

/// A core-pinned TCP echo server on ringwire.
///
/// Every core listens on the same address (SO_REUSEPORT) and echoes what it
/// receives. Ctrl-C or SIGTERM shuts it down gracefully. Logs go to stderr,
/// filtered by RUST_LOG (default: info).
#[derive(Parser, Debug)]
#[command(name = "echo-node", version)]
struct Args {
    #[command(flatten)]
    cores: CoreArgs,
    /// Where every core listens: tcp://HOST:PORT or HOST:PORT, with options
    /// nodelay, backlog, reuseport.
    #[arg(
        long,
        value_name = "ENDPOINT",
        default_value = "127.0.0.1:7000",
        value_parser = parse_tcp_listen
    )]
    listen: TcpListen,
    /// What is echoed.
    #[arg(long, value_enum, default_value_t = Wire::LenPrefix)]
    wire: Wire,
    /// How bytes that arrived in several receive buffers go back: from those
    /// buffers (sendmsg, no copy) or copied into one (copy, for A/B).
    #[arg(long, value_enum, default_value_t = Gather::Sendmsg)]
    gather: Gather,
    #[command(flatten)]
    idle: IdleArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    /// Largest lenprefix message accepted, in bytes; a larger one closes the
    /// connection.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    max_message: usize,
    /// How connections receive.
    #[arg(long, value_enum, default_value_t = Recv::Multishot)]
    recv: Recv,
    /// How connections reach the cores.
    #[arg(long, value_enum, default_value_t = Accept::ReusePort)]
    accept: Accept,
    /// How long a parked core waits for more completions before it runs
    /// what it has: N:MICROS (wake at N completions or after MICROS) or off.
    #[arg(long, value_name = "N:MICROS|off", default_value = "16:50", value_parser = parse_wait_batch)]
    wait_batch: WaitBatch,
    /// Receive buffers per core (a power of two).
    #[arg(long, value_name = "N", default_value_t = 256)]
    recv_buffers: u16,
    /// Size of each receive buffer in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    recv_buffer_size: u32,
    /// Print per-core counters (Prometheus text format) at shutdown.
    #[arg(long)]
    stats: bool,
}

fn main() -> ExitCode {
    // Bad arguments: clap prints the error and exits with code 2.
    let args = Args::parse();
    ringwire_examples::init_tracing();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo-node: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: Args) -> io::Result<()> {
    let signals = TerminationSignals::block()?;
    let rt = Runtime::builder()
        .placement(cfg.cores.placement())
        .idle(cfg.idle.idle)
        .recv_buffer_size(cfg.recv_buffer_size)
        .recv_buffers(cfg.recv_buffers)
        .recv_multishot(cfg.recv == Recv::Multishot)
        .wait_batch(cfg.wait_batch.0)
        .thread_name("echo-core");
    let rt = cfg.metrics.apply(rt).build()?;
    cfg.metrics.announce(&rt);
    let accept = cfg.accept;
    let wire = cfg.wire;
    let echo = Echo {
        wire,
        max_message: cfg.max_message,
        gather: cfg.gather,
    };
    let (listen, options) = (cfg.listen.addr, cfg.listen.options.clone());
    let cores = rt.core_count();
    // Bind before announcing the node, so that a load generator started
    // right after the banner finds the port open.
    let bound: Vec<_> = rt
        .spawn_on_all(move |core| {
            let options = options.clone();
            async move {
                match accept {
                    Accept::ReusePort => {
                        let listener = TcpListener::bind_with(listen, &options)?;
                        spawn_local(accept_loop(listener, echo));
                    }
                    Accept::Handoff if core == 0 => {
                        let opts = options.clone().reuse_port(false);
                        let listener = TcpListener::bind_with(listen, &opts)?;
                        spawn_local(handoff_loop(listener, cores, echo));
                    }
                    Accept::Handoff => {}
                }
                Ok::<_, io::Error>(())
            }
        })
        .into_iter()
        .map(|h| h.join())
        .collect();
    for r in bound {
        r.map_err(io::Error::other)??;
    }
    let cpus: Vec<String> = rt
        .cpus()
        .into_iter()
        .map(|c| c.map_or_else(|| "unpinned".to_string(), |c| c.to_string()))
        .collect();
    println!(
        "echo-node listening on {listen} ({wire:?}) with {} cores on CPUs [{}], idle {:?}",
        rt.core_count(),
        cpus.join(", "),
        cfg.idle.idle
    );
    tracing::info!(features = ?rt.ring_features(), "ring features");
    let sig = signals.wait()?;
    tracing::info!(?sig, "shutting down");
    let snapshot = rt.stats();
    let report = rt.shutdown(Duration::from_secs(5));
    if cfg.stats {
        print!("{}", stats::render_prometheus(&snapshot));
    }
    eprintln!("echo-node stopped: {report:?}");
    Ok(())
}

fn serve(conn: TcpStream, echo: Echo) {
    spawn_local(async move {
        let peer = conn.peer_addr().ok();
        let res = match (echo.wire, echo.gather) {
            (Wire::Raw, Gather::Sendmsg) => echo_raw(conn).await,
            (Wire::Raw, Gather::Copy) => echo_raw_copy(conn).await,
            (Wire::LenPrefix, Gather::Sendmsg) => echo_lenprefix(conn, echo.max_message).await,
            (Wire::LenPrefix, Gather::Copy) => echo_lenprefix_copy(conn, echo.max_message).await,
        };
        if let Err(e) = res {
            tracing::debug!(?peer, error = %e, "connection closed with error");
        }
    });
}

async fn accept_loop(mut listener: TcpListener, echo: Echo) {
    while let Some(conn) = listener.accept().await {
        match conn {
            Ok(conn) => serve(conn, echo),
            Err(e) => {
                // Out of descriptors or similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                ringwire::runtime::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Accepts on this core and hands connections round-robin to every core
/// (this one included) through the mailboxes; each core registers the socket
/// on its own ring.
async fn handoff_loop(mut listener: TcpListener, cores: usize, echo: Echo) {
    let mut next = 0;
    while let Some(conn) = listener.accept().await {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                ringwire::runtime::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let target = next;
        next = (next + 1) % cores;
        if target == ringwire::runtime::current_core() {
            serve(conn, echo);
            continue;
        }
        let fd = match conn.into_fd() {
            Ok(fd) => fd,
            Err((e, conn)) => {
                tracing::warn!(error = %e, "cannot hand over; serving here");
                serve(conn, echo);
                continue;
            }
        };
        let sent = mailbox::post(target, move || {
            serve(TcpStream::from_fd(fd), echo);
        })
        .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "hand-off failed; connection dropped");
        }
    }
}

/// Echoes every byte. One buffer goes back as-is (no copy); several that
/// arrived together are copied into one buffer and sent (`--gather copy`).
async fn echo_raw_copy(mut conn: TcpStream) -> io::Result<()> {
    let mut out = Vec::with_capacity(64 * 1024);
    while let Some(first) = conn.recv().await? {
        match conn.try_recv().transpose()? {
            None => {
                conn.send_all(first).await.0?;
            }
            Some(second) => {
                out.extend_from_slice(&first);
                out.extend_from_slice(&second);
                drop((first, second));
                while let Some(more) = conn.try_recv().transpose()? {
                    out.extend_from_slice(&more);
                }
                let (res, o) = conn.send_all(out).await;
                res?;
                out = o;
                out.clear();
            }
        }
    }
    Ok(())
}

/// Echoes whole length-prefixed messages, reassembling those that span
/// buffers (`--gather copy`): everything complete that arrived in one loop
/// turn leaves in one send. When a single buffer arrived and starts at a
/// message boundary (the common case), its complete messages are sent
/// straight from the kernel-filled buffer, without a copy.
async fn echo_lenprefix_copy(mut conn: TcpStream, max_message: usize) -> io::Result<()> {
    let mut framer = Reassembler::new(max_message);
    let mut out = Vec::with_capacity(64 * 1024);
    while let Some(mut first) = conn.recv().await? {
        let mut next = conn.try_recv().transpose()?;
        if next.is_none() && framer.pending() == 0 {
            let (whole, messages) = framer.complete_prefix(&first)?;
            // Only an incomplete message can remain: it is held, not output.
            framer.feed(&first[whole..], &mut out)?;
            stats::count_frames(messages, 0);
            if whole > 0 {
                first.slice(0..whole);
                conn.send_all(first).await.0?;
            }
            continue;
        }
        let before = out.len();
        framer.feed(&first, &mut out)?;
        drop(first);
        while let Some(buf) = next {
            framer.feed(&buf, &mut out)?;
            next = conn.try_recv().transpose()?;
        }
        if out.len() > before {
            stats::count_frames(0, 1);
        }
        if !out.is_empty() {
            let (res, o) = conn.send_all(out).await;
            res?;
            out = o;
            out.clear();
        }
    }
    Ok(())
}

/// Echoes every byte straight from the buffers it arrived in: what arrived
/// in one loop turn leaves in one send (one SENDMSG when it spans buffers).
async fn echo_raw(mut conn: TcpStream) -> io::Result<()> {
    let mut out = Vec::with_capacity(16);
    while let Some(first) = conn.recv().await? {
        match conn.try_recv().transpose()? {
            None => {
                conn.send_all(first).await.0?;
            }
            Some(second) => {
                out.push(first);
                out.push(second);
                while let Some(more) = conn.try_recv().transpose()? {
                    out.push(more);
                }
                let (res, o) = conn.send_vectored(out).await;
                res?;
                out = o;
                // Dropping the buffers gives them back to the kernel.
                out.clear();
            }
        }
    }
    Ok(())
}

/// Most bytes a connection holds for an incomplete message before they are
/// echoed anyway: a larger message streams through instead of pinning
/// receive buffers (the bytes on the wire are the same; it leaves in
/// pieces).
const HOLD_LIMIT: usize = 256 * 1024;

/// Whether a connection holding buffers should let them go now: it holds
/// more than [`HOLD_LIMIT`], or fewer than a quarter of the core's receive
/// buffers are left for the kernel (held buffers are ones no connection on
/// the core can receive into; holding on could starve every connection,
/// including the one whose message needs more bytes to complete).
fn should_release(held: &Held) -> bool {
    if held.is_empty() {
        return false;
    }
    if held.bytes() > HOLD_LIMIT {
        return true;
    }
    let (free, total) = ringwire::runtime::buf::recv_buffer_supply();
    free < total / 4
}

/// Echoes whole length-prefixed messages with no user-space copy: every
/// buffer that arrived in one loop turn is scanned for message ends (only
/// lengths are read), and everything up to the last complete message leaves
/// in one send, straight from the buffers the kernel filled (one SENDMSG
/// with an iovec per buffer when it spans several). Bytes of an incomplete
/// message stay in their buffers ([`Held`]) until it completes, unless
/// [`should_release`] says to echo them at once.
async fn echo_lenprefix(mut conn: TcpStream, max_message: usize) -> io::Result<()> {
    let mut bounds = Boundaries::new(max_message);
    let mut held = Held::new();
    let mut out: Vec<Piece> = Vec::with_capacity(16);
    while let Some(first) = conn.recv().await? {
        let mut next = conn.try_recv().transpose()?;
        let (end, messages) = bounds.scan(&first)?;
        stats::count_frames(messages, 0);
        if next.is_none() && held.is_empty() && end == Some(first.len()) {
            // The common case: one buffer of whole messages goes back as it is.
            conn.send_all(first).await.0?;
            continue;
        }
        let mut buf = Some(first);
        let mut end = end;
        loop {
            if let Some(b) = buf.take() {
                match end {
                    Some(e) => held.release_through(b, e, &mut out),
                    None => held.hold(b),
                }
            }
            let Some(b) = next.take() else { break };
            let (e, messages) = bounds.scan(&b)?;
            stats::count_frames(messages, 0);
            (buf, end) = (Some(b), e);
            next = conn.try_recv().transpose()?;
        }
        if should_release(&held) {
            held.release_all(&mut out);
        }
        if !out.is_empty() {
            let (res, o) = conn.send_vectored(out).await;
            res?;
            out = o;
            // The last views of a buffer give it back to the kernel here.
            out.clear();
        }
    }
    Ok(())
}
