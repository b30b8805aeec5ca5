//! echo-node: a core-pinned TCP echo server on ringwire.
//!
//! Every core listens on the same address (`SO_REUSEPORT`) and echoes what it
//! receives, either every byte (`--wire raw`) or whole length-prefixed
//! messages (`--wire lenprefix`: 4-byte little-endian length, then payload).
//! Ctrl-C or SIGTERM shuts it down gracefully and prints per-core counters.
//!
//! ```text
//! echo-node [--cpus LIST | --cores N] [--listen 127.0.0.1:7000]
//!           [--wire raw|lenprefix] [--idle park|spin|poll] [--max-message BYTES]
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
use ringwire_examples::lenprefix::Reassembler;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Wire {
    /// Every byte, as it arrives.
    Raw,
    /// Whole messages: a 4-byte little-endian length, then the payload.
    #[value(name = "lenprefix")]
    LenPrefix,
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
    let (wire, max_message, accept) = (cfg.wire, cfg.max_message, cfg.accept);
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
                        spawn_local(accept_loop(listener, wire, max_message));
                    }
                    Accept::Handoff if core == 0 => {
                        let opts = options.clone().reuse_port(false);
                        let listener = TcpListener::bind_with(listen, &opts)?;
                        spawn_local(handoff_loop(listener, cores, wire, max_message));
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

fn serve(conn: TcpStream, wire: Wire, max_message: usize) {
    spawn_local(async move {
        let peer = conn.peer_addr().ok();
        let res = match wire {
            Wire::Raw => echo_raw(conn).await,
            Wire::LenPrefix => echo_lenprefix(conn, max_message).await,
        };
        if let Err(e) = res {
            tracing::debug!(?peer, error = %e, "connection closed with error");
        }
    });
}

async fn accept_loop(mut listener: TcpListener, wire: Wire, max_message: usize) {
    while let Some(conn) = listener.accept().await {
        match conn {
            Ok(conn) => serve(conn, wire, max_message),
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
async fn handoff_loop(mut listener: TcpListener, cores: usize, wire: Wire, max_message: usize) {
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
            serve(conn, wire, max_message);
            continue;
        }
        let fd = match conn.into_fd() {
            Ok(fd) => fd,
            Err((e, conn)) => {
                tracing::warn!(error = %e, "cannot hand over; serving here");
                serve(conn, wire, max_message);
                continue;
            }
        };
        let sent = mailbox::post(target, move || {
            serve(TcpStream::from_fd(fd), wire, max_message);
        })
        .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "hand-off failed; connection dropped");
        }
    }
}

/// Echoes every byte. One buffer goes back as-is (no copy); several that
/// arrived together are gathered into one send.
async fn echo_raw(mut conn: TcpStream) -> io::Result<()> {
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

/// Echoes whole length-prefixed messages: everything complete that arrived in
/// one loop turn leaves in one send. When a single buffer arrived and starts
/// at a message boundary (the common case), its complete messages are sent
/// straight from the kernel-filled buffer, without a copy.
async fn echo_lenprefix(mut conn: TcpStream, max_message: usize) -> io::Result<()> {
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
