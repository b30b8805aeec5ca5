//! pingpong: round-trip latency over any ringwire transport.
//!
//! The client sends a `Ping` (a sequence number and `--size` payload bytes),
//! the server sends the same back, and the client records each round trip
//! in an HDR histogram and prints its percentiles. `local` runs both ends in
//! one process on two cores (the only way to use `mem://`).
//!
//! ```text
//! pingpong server --listen tcp://127.0.0.1:7100
//! pingpong client --connect tcp://127.0.0.1:7100 --size 64 --count 100000
//! pingpong local --scheme mem --idle poll
//! pingpong server --listen 'tls://127.0.0.1:7443?cert=server.pem&key=server.key'
//! pingpong client --connect 'tls://127.0.0.1:7443?ca=ca.pem&servername=localhost'
//! ```

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use ringwire::proto::rkyv;
use ringwire::runtime::signal::TerminationSignals;
use ringwire::runtime::{is_shutting_down, spawn_local, time, IdleStrategy, Placement, Runtime};
use ringwire::transports::udp::{self, Datagrams};
use ringwire::transports::{
    connect, listen, type_id, Config, Connection, Endpoint, Error, Message, Scheme,
};
use ringwire_examples::cli::{CoreArgs, IdleArgs};
use ringwire_examples::nodes::{
    now_ns, parse_duration, parse_endpoint, stopping, watch_signals, Latency,
};

/// The message both ways: the server sends back what it got.
#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
#[rkyv(crate = rkyv)]
pub struct Ping {
    /// The client's number for this round trip.
    pub seq: u64,
    /// `--size` bytes.
    pub payload: Vec<u8>,
}

impl Message for Ping {
    const TYPE_ID: u32 = type_id("pingpong.Ping");
    const NAME: &'static str = "pingpong.Ping";
}

/// Round-trip latency over tcp://, unix://, udp://, tls:// and mem://.
///
/// Round trips are timed on CLOCK_MONOTONIC by the client and reported as
/// HDR percentiles (p50, p90, p99, p99.9, max). Ctrl-C or SIGTERM stops a
/// client early with the report of what it measured, and a server
/// gracefully. Logs go to stderr, filtered by RUST_LOG (default: info).
#[derive(Parser, Debug)]
#[command(name = "pingpong", version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Answer pings: every connection (tcp, unix, tls, mem) or datagram
    /// sender (udp) gets each ping back.
    Server(ServerArgs),
    /// Send pings one at a time and time each round trip.
    Client(ClientArgs),
    /// Both ends in one process: the server on the second core, the client
    /// on the first.
    Local(LocalArgs),
}

#[derive(clap::Args, Debug)]
struct Common {
    /// Where the cores run. Without --cpus or --cores, server and client
    /// each run one unpinned core and `local` two cores pinned to the
    /// first two CPUs this process may use.
    #[command(flatten)]
    cores: CoreArgs,
    #[command(flatten)]
    idle: IdleArgs,
}

#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// Where to listen: tcp://HOST:PORT, unix:///PATH or unix://@NAME,
    /// udp://HOST:PORT, tls://HOST:PORT?cert=PEM&key=PEM (HOST:PORT alone
    /// is tcp://). Port 0 picks a free port; the address is printed.
    #[arg(long, value_name = "ENDPOINT", value_parser = parse_endpoint)]
    listen: Endpoint,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args, Debug, Clone)]
struct Load {
    /// Payload bytes per ping (udp: at most 1400, one datagram).
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    size: usize,
    /// Timed round trips (after the warm-up); with --duration, whichever
    /// comes first.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Run this long (500ms, 10s, 1m); default: 10000 round trips.
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Untimed round trips first (connection set-up, caches, buffers).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    warmup: u64,
    /// udp: how long to wait for an answer before counting the ping lost.
    #[arg(long, value_name = "TIME", default_value = "1s", value_parser = parse_duration)]
    udp_timeout: Duration,
}

#[derive(clap::Args, Debug)]
struct ClientArgs {
    /// The server: tcp://, unix://, udp://, or tls://HOST:PORT?ca=PEM
    /// (&servername=NAME when the certificate names another host).
    #[arg(long, value_name = "ENDPOINT", value_parser = parse_endpoint)]
    connect: Endpoint,
    #[command(flatten)]
    load: Load,
    #[command(flatten)]
    common: Common,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LocalScheme {
    /// Between the two cores through the mailboxes, no socket.
    Mem,
    /// Loopback TCP on a free port.
    Tcp,
    /// A unix socket in the temporary directory.
    Unix,
    /// Loopback UDP on a free port.
    Udp,
}

#[derive(clap::Args, Debug)]
struct LocalArgs {
    /// The transport between the two cores.
    #[arg(long, value_enum, default_value_t = LocalScheme::Mem)]
    scheme: LocalScheme,
    #[command(flatten)]
    load: Load,
    #[command(flatten)]
    common: Common,
}

/// Largest `--size` over udp: the datagram (32-byte header, the archive)
/// must stay within the default 1472-byte limit.
const UDP_MAX_SIZE: usize = 1400;

fn main() -> ExitCode {
    // Bad arguments: clap prints the error and exits with code 2.
    let args = Args::parse();
    ringwire_examples::init_tracing();
    let res = match args.cmd {
        Cmd::Server(a) => server(a),
        Cmd::Client(a) => client(a),
        Cmd::Local(a) => local(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pingpong: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config() -> Config {
    // Constant, valid type list: this cannot fail.
    Config::with_types::<(Ping,)>().expect("one message type")
}

fn runtime(common: &Common, default: Placement) -> io::Result<Runtime> {
    let placement = if common.cores == CoreArgs::default() {
        default
    } else {
        common.cores.placement()
    };
    Ok(Runtime::builder()
        .placement(placement)
        .idle(common.idle.idle)
        .thread_name("pingpong")
        .build()?)
}

fn check_size(scheme: Scheme, size: usize) -> io::Result<()> {
    if scheme == Scheme::Udp && size > UDP_MAX_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("--size {size}: a udp ping must fit one datagram (at most {UDP_MAX_SIZE} bytes of payload)"),
        ));
    }
    Ok(())
}

fn server(args: ServerArgs) -> io::Result<()> {
    let signals = TerminationSignals::block()?;
    let rt = runtime(&args.common, Placement::Unpinned(1))?;
    let ep = args.listen;
    let bound = rt
        .block_on(0, move || async move { start_server(ep).await })
        .map_err(io::Error::other)??;
    println!(
        "pingpong server listening on {bound}, idle {:?}",
        args.common.idle.idle
    );
    // A place for the node's metrics endpoint (`--metrics ADDR`, to come):
    // the runtime's and the transports' counters would be served there.
    let sig = signals.wait()?;
    tracing::info!(?sig, "shutting down");
    rt.shutdown(Duration::from_secs(2));
    Ok(())
}

/// Starts serving `ep` on this core; returns the endpoint bound (with the
/// port the kernel chose).
async fn start_server(ep: Endpoint) -> io::Result<Endpoint> {
    if ep.scheme() == Scheme::Udp {
        let sock = udp::bind(&ep, &config()).map_err(io::Error::other)?;
        let bound = Endpoint::socket(Scheme::Udp, sock.local_addr()).map_err(io::Error::other)?;
        spawn_local(async move {
            match serve_udp(sock).await {
                Err(_) if is_shutting_down() => {}
                Err(e) => tracing::error!(error = %e, "udp server stopped"),
                Ok(()) => {}
            }
        });
        return Ok(bound);
    }
    let mut listener = listen(&ep, &config()).await.map_err(io::Error::other)?;
    let bound = listener.endpoint().clone();
    spawn_local(async move {
        while let Some(conn) = listener.accept().await {
            match conn {
                Ok(conn) => {
                    spawn_local(async move {
                        let remote = conn.remote().to_string();
                        tracing::info!(%remote, "client connected");
                        match serve_conn(&conn).await {
                            Ok(n) => tracing::info!(%remote, pings = n, "client left"),
                            Err(e) => tracing::warn!(%remote, error = %e, "connection ended"),
                        }
                    });
                }
                // A failed handshake (a TLS client that does not trust us,
                // say) costs that connection only.
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            }
        }
    });
    Ok(bound)
}

/// Sends every ping back until the client closes; returns how many.
async fn serve_conn(conn: &Connection) -> Result<u64, Error> {
    let mut back = Ping {
        seq: 0,
        payload: Vec::new(),
    };
    let mut n = 0;
    loop {
        let ping = match conn.recv::<Ping>().await {
            Ok(p) => p,
            Err(Error::Closed { .. }) => return Ok(n),
            Err(e) if !e.is_connection_fatal() => {
                tracing::warn!(error = %e, "message skipped");
                continue;
            }
            Err(e) => return Err(e),
        };
        back.seq = ping.seq.to_native();
        back.payload.clear();
        back.payload.extend_from_slice(&ping.payload);
        drop(ping);
        conn.send(&back).await?;
        n += 1;
    }
}

/// Sends every datagram ping back to where it came from.
async fn serve_udp(sock: Datagrams) -> Result<(), Error> {
    let mut back = Ping {
        seq: 0,
        payload: Vec::new(),
    };
    loop {
        let ping = match sock.recv::<Ping>().await {
            Ok(p) => p,
            Err(e) if !e.is_connection_fatal() => {
                tracing::warn!(error = %e, "datagram skipped");
                continue;
            }
            Err(e) => return Err(e),
        };
        back.seq = ping.seq.to_native();
        back.payload.clear();
        back.payload.extend_from_slice(&ping.payload);
        let to: SocketAddr = ping.source();
        drop(ping);
        match sock.send_to(&back, to).await {
            Ok(_) => {}
            Err(e) if !e.is_connection_fatal() => {
                tracing::warn!(error = %e, %to, "answer not sent")
            }
            Err(e) => return Err(e),
        }
    }
}

fn client(args: ClientArgs) -> io::Result<()> {
    check_size(args.connect.scheme(), args.load.size)?;
    let signals = TerminationSignals::block()?;
    watch_signals(signals, Duration::from_secs(3))?;
    let rt = runtime(&args.common, Placement::Unpinned(1))?;
    let ep = args.connect.clone();
    let load = args.load.clone();
    let res = rt
        .block_on(0, move || async move { run_client(ep, load).await })
        .map_err(io::Error::other)?;
    rt.shutdown(Duration::from_secs(2));
    report(&args.connect, &args.load, args.common.idle.idle, res?)
}

fn local(args: LocalArgs) -> io::Result<()> {
    let signals = TerminationSignals::block()?;
    watch_signals(signals, Duration::from_secs(3))?;
    let rt = runtime(&args.common, Placement::Count(2))?;
    if rt.core_count() < 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "local needs two cores (--cores 2 or --cpus A,B)",
        ));
    }
    let pid = std::process::id();
    let text = match args.scheme {
        LocalScheme::Mem => format!("mem://pingpong-{pid}"),
        LocalScheme::Tcp => "tcp://127.0.0.1:0".to_string(),
        LocalScheme::Unix => format!(
            "unix://{}",
            std::env::temp_dir()
                .join(format!("pingpong-{pid}.sock"))
                .display()
        ),
        LocalScheme::Udp => "udp://127.0.0.1:0".to_string(),
    };
    let ep: Endpoint = text.parse().map_err(io::Error::other)?;
    check_size(ep.scheme(), args.load.size)?;
    let bound = rt
        .block_on(1, move || async move { start_server(ep).await })
        .map_err(io::Error::other)??;
    let load = args.load.clone();
    let target = bound.clone();
    let res = rt
        .block_on(0, move || async move { run_client(target, load).await })
        .map_err(io::Error::other)?;
    rt.shutdown(Duration::from_secs(2));
    if let Some(path) = text.strip_prefix("unix://") {
        let _ = std::fs::remove_file(path);
    }
    report(&bound, &args.load, args.common.idle.idle, res?)
}

/// What a client measured.
struct Outcome {
    rtt: Latency,
    /// udp: pings with no answer within --udp-timeout.
    lost: u64,
    elapsed: Duration,
}

fn report(ep: &Endpoint, load: &Load, idle: IdleStrategy, out: Outcome) -> io::Result<()> {
    let secs = out.elapsed.as_secs_f64().max(1e-9);
    println!(
        "pingpong {ep}: size={} idle={idle:?} round trips/s={:.0}",
        load.size,
        out.rtt.count() as f64 / secs
    );
    println!("{}", out.rtt.report_line("rtt"));
    if ep.scheme() == Scheme::Udp {
        println!("lost={}", out.lost);
    }
    Ok(())
}

async fn run_client(ep: Endpoint, load: Load) -> io::Result<Outcome> {
    if ep.scheme() == Scheme::Udp {
        let sock = udp::connect(&ep, &config()).map_err(io::Error::other)?;
        let mut pinger = UdpPinger {
            sock,
            timeout: load.udp_timeout,
        };
        return drive(&mut pinger, &load).await;
    }
    let conn = connect(&ep, &config()).await.map_err(io::Error::other)?;
    let mut pinger = ConnPinger { conn: &conn };
    let out = drive(&mut pinger, &load).await;
    let _ = conn.close().await;
    out
}

/// One round trip; `Ok(false)`: no answer (udp).
trait Pinger {
    async fn ping(&mut self, ping: &Ping) -> io::Result<bool>;
}

struct ConnPinger<'a> {
    conn: &'a Connection,
}

impl Pinger for ConnPinger<'_> {
    async fn ping(&mut self, ping: &Ping) -> io::Result<bool> {
        self.conn.send(ping).await.map_err(io::Error::other)?;
        let back = self.conn.recv::<Ping>().await.map_err(io::Error::other)?;
        if back.seq.to_native() != ping.seq || back.payload.len() != ping.payload.len() {
            return Err(io::Error::other(format!(
                "answer {} ({} bytes) to ping {} ({} bytes)",
                back.seq.to_native(),
                back.payload.len(),
                ping.seq,
                ping.payload.len()
            )));
        }
        Ok(true)
    }
}

struct UdpPinger {
    sock: Datagrams,
    timeout: Duration,
}

impl Pinger for UdpPinger {
    async fn ping(&mut self, ping: &Ping) -> io::Result<bool> {
        self.sock.send(ping).await.map_err(io::Error::other)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match time::timeout(left, self.sock.recv::<Ping>()).await {
                Err(_) => return Ok(false),
                Ok(Err(e)) if !e.is_connection_fatal() => {
                    tracing::warn!(error = %e, "datagram skipped")
                }
                Ok(Err(e)) => return Err(io::Error::other(e)),
                // An answer to an earlier ping that timed out: not this one.
                Ok(Ok(back)) if back.seq.to_native() != ping.seq => {}
                Ok(Ok(_)) => return Ok(true),
            }
        }
    }
}

async fn drive(p: &mut impl Pinger, load: &Load) -> io::Result<Outcome> {
    let mut ping = Ping {
        seq: 0,
        payload: (0..load.size).map(|i| i as u8).collect(),
    };
    for _ in 0..load.warmup {
        if stopping() {
            break;
        }
        ping.seq += 1;
        p.ping(&ping).await?;
    }
    let count = match (load.count, load.duration) {
        (None, None) => Some(10_000),
        (c, _) => c,
    };
    let mut rtt = Latency::new();
    let mut lost = 0;
    let start = Instant::now();
    let mut done = 0u64;
    while !stopping() {
        if count.is_some_and(|c| done >= c) || load.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        ping.seq += 1;
        let t0 = now_ns();
        if p.ping(&ping).await? {
            rtt.record(now_ns().saturating_sub(t0));
        } else {
            lost += 1;
        }
        done += 1;
    }
    Ok(Outcome {
        rtt,
        lost,
        elapsed: start.elapsed(),
    })
}
