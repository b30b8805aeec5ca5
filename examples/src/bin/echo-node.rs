//! echo-node: a core-pinned TCP echo server on ringwire.
//!
//! Every core listens on the same address (`SO_REUSEPORT`) and echoes what it
//! receives, either every byte (`--wire raw`) or whole length-prefixed
//! messages (`--wire lenprefix`: 4-byte little-endian length, then payload).
//! Ctrl-C or SIGTERM shuts it down gracefully and prints per-core counters.
//!
//! ```text
//! echo-node [--cores 0,1 | --cores N] [--listen 127.0.0.1:7000]
//!           [--wire raw|lenprefix] [--idle park|spin|poll] [--max-message BYTES]
//!           [--recv multishot|single] [--accept reuseport|handoff]
//!           [--wait-batch N:MICROS|off] [--recv-buffers N] [--recv-buffer-size BYTES]
//!           [--stats]
//! ```

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use ringwire::runtime::mailbox;
use ringwire::runtime::net::{TcpListenOptions, TcpListener, TcpStream};
use ringwire::runtime::signal::TerminationSignals;
use ringwire::runtime::{spawn_local, stats, IdleStrategy, Placement, Runtime};
use ringwire_examples::cli::{self, Args};
use ringwire_examples::lenprefix::Reassembler;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Raw,
    LenPrefix,
}

struct Config {
    placement: Placement,
    listen: SocketAddr,
    wire: Wire,
    idle: IdleStrategy,
    max_message: usize,
    print_stats: bool,
    recv_multishot: bool,
    accept: Accept,
    wait_batch: Option<(u32, Duration)>,
    recv_buffers: u16,
    recv_buffer_size: u32,
}

/// How connections reach the cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accept {
    /// Every core listens on the address (SO_REUSEPORT); the kernel spreads
    /// connections.
    ReusePort,
    /// Core 0 accepts and hands connections round-robin to every core through
    /// the mailboxes.
    Handoff,
}

const USAGE: &str = "usage: echo-node [--cores 0,1 | --cores N] [--listen 127.0.0.1:7000] \
[--wire raw|lenprefix] [--idle park|spin|poll] [--max-message BYTES] \
[--recv multishot|single] [--accept reuseport|handoff] [--wait-batch N:MICROS|off] [--recv-buffers N] [--recv-buffer-size BYTES] [--stats]";

fn parse() -> Result<Config, String> {
    let mut args = Args::from_env();
    let mut cfg = Config {
        placement: Placement::AllOnline,
        listen: "127.0.0.1:7000".parse().map_err(|e| format!("{e}"))?,
        wire: Wire::LenPrefix,
        idle: IdleStrategy::Park,
        max_message: 16 << 20,
        print_stats: false,
        recv_multishot: true,
        accept: Accept::ReusePort,
        wait_batch: Some((16, Duration::from_micros(50))),
        recv_buffers: 256,
        recv_buffer_size: 64 * 1024,
    };
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "--cores" => cfg.placement = cli::parse_cores(&args.value(&flag)?)?,
            "--listen" => {
                let v = args.value(&flag)?;
                cfg.listen = v
                    .parse()
                    .map_err(|e| format!("--listen {v}: {e} (expected IP:PORT)"))?;
            }
            "--wire" => {
                cfg.wire = match args.value(&flag)?.as_str() {
                    "raw" => Wire::Raw,
                    "lenprefix" => Wire::LenPrefix,
                    other => return Err(format!("--wire {other}: expected raw or lenprefix")),
                }
            }
            "--idle" => cfg.idle = cli::parse_idle(&args.value(&flag)?)?,
            "--max-message" => {
                let v = args.value(&flag)?;
                cfg.max_message = v.parse().map_err(|e| format!("--max-message {v}: {e}"))?;
            }
            "--stats" => cfg.print_stats = true,
            "--accept" => {
                cfg.accept = match args.value(&flag)?.as_str() {
                    "reuseport" => Accept::ReusePort,
                    "handoff" => Accept::Handoff,
                    other => {
                        return Err(format!("--accept {other}: expected reuseport or handoff"))
                    }
                }
            }
            "--recv-buffers" => {
                let v = args.value(&flag)?;
                cfg.recv_buffers = v.parse().map_err(|e| format!("--recv-buffers {v}: {e}"))?;
            }
            "--recv-buffer-size" => {
                let v = args.value(&flag)?;
                cfg.recv_buffer_size = v
                    .parse()
                    .map_err(|e| format!("--recv-buffer-size {v}: {e}"))?;
            }
            "--wait-batch" => {
                let v = args.value(&flag)?;
                cfg.wait_batch = if v == "off" {
                    None
                } else {
                    let (n, us) = v
                        .split_once(':')
                        .ok_or_else(|| format!("--wait-batch {v}: expected N:MICROS or off"))?;
                    let n = n.parse().map_err(|e| format!("--wait-batch {v}: {e}"))?;
                    let us = us.parse().map_err(|e| format!("--wait-batch {v}: {e}"))?;
                    Some((n, Duration::from_micros(us)))
                };
            }
            "--recv" => {
                cfg.recv_multishot = match args.value(&flag)?.as_str() {
                    "multishot" => true,
                    "single" => false,
                    other => return Err(format!("--recv {other}: expected multishot or single")),
                }
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    ringwire_examples::init_tracing();
    let cfg = match parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo-node: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: Config) -> io::Result<()> {
    let signals = TerminationSignals::block()?;
    let rt = Runtime::builder()
        .placement(cfg.placement.clone())
        .idle(cfg.idle)
        .recv_buffer_size(cfg.recv_buffer_size)
        .recv_buffers(cfg.recv_buffers)
        .recv_multishot(cfg.recv_multishot)
        .wait_batch(cfg.wait_batch)
        .thread_name("echo-core")
        .build()?;
    let (listen, wire, max_message, accept) = (cfg.listen, cfg.wire, cfg.max_message, cfg.accept);
    let cores = rt.core_count();
    // Bind before announcing the node, so that a load generator started
    // right after the banner finds the port open.
    let bound: Vec<_> = rt
        .spawn_on_all(move |core| async move {
            match accept {
                Accept::ReusePort => {
                    let listener = TcpListener::bind(listen)?;
                    spawn_local(accept_loop(listener, wire, max_message));
                }
                Accept::Handoff if core == 0 => {
                    let opts = TcpListenOptions::default().reuse_port(false);
                    let listener = TcpListener::bind_with(listen, &opts)?;
                    spawn_local(handoff_loop(listener, cores, wire, max_message));
                }
                Accept::Handoff => {}
            }
            Ok::<_, io::Error>(())
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
        cfg.idle
    );
    tracing::info!(features = ?rt.ring_features(), "ring features");
    let sig = signals.wait()?;
    tracing::info!(?sig, "shutting down");
    let snapshot = rt.stats();
    let report = rt.shutdown(Duration::from_secs(5));
    if cfg.print_stats {
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
