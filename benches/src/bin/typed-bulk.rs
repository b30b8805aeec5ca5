//! `typed-bulk`: large segments each way (`benches/typed.sh`): ringwire's
//! two-phase bulk against a plain single-stream TCP copy loop.
//!
//! The client sends segments of `--segment` bytes (default 2 MiB) and the
//! server sends each one back; the client checks every byte it gets back and
//! reports payload Gbit/s (each way), the per-segment round trip, the server's
//! CPU time and the peak RSS (`VmHWM`) of both processes.
//!
//! * `--stack ringwire`: the client `send_bulk`s a [`BulkMeta`] with one
//!   segment borrowed from its payload table (no copy), keeping `--window`
//!   segments in flight; the server `accept_bulk`s each into a buffer it
//!   chose (received straight into it) and `send_bulk`s that buffer back;
//!   the client accepts the echo into its own buffer. With a `mem://NAME`
//!   endpoint the client serves itself in one process.
//! * `--stack tcp`: blocking std sockets. The server reads a whole segment
//!   (`read_exact`) and writes it back (`write_all`), one thread per
//!   connection; the client writes segments on one thread and reads the
//!   echoes on another.
//!
//! Usage: `typed-bulk server --stack S --endpoint E` and
//! `typed-bulk client --stack S --endpoint E [--segment B] [--window N]
//! [--warmup T] [--duration T] [--core N] [--server-pid PID] [--label L]
//! [--wait T]`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use ringwire_benches::cli::parse_duration;
use ringwire_benches::cores::pin_current_thread;
use ringwire_benches::measure::{arm_hard_limit, Measured, Meter, MeterConfig, Report, Workload};
use ringwire_benches::server::{Shutdown, SHUTDOWN_POLL};
use ringwire_benches::typed::{BulkMeta, PayloadGen, Target};
use ringwire_runtime::signal::TerminationSignals;
use ringwire_runtime::{spawn_local, Placement, Runtime};
use ringwire_transports::{connect, listen, Config, Connection, Endpoint, Error, Scheme};

const NAME: &str = "typed-bulk";

/// Largest segment accepted on the command line (64 MiB).
const MAX_SEGMENT: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stack {
    /// ringwire's two-phase bulk (send_bulk / accept_bulk).
    Ringwire,
    /// A blocking std TCP copy loop.
    Tcp,
}

/// Large segments each way: ringwire's two-phase bulk against a plain TCP
/// copy loop.
#[derive(Parser, Debug)]
#[command(
    name = "typed-bulk",
    version,
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    role: RoleFlags,
}

#[derive(Subcommand, Debug)]
enum RoleFlags {
    /// Echo every segment back, until SIGINT/SIGTERM; prints `READY
    /// <endpoint>` on stderr once listening.
    Server(Flags),
    /// Send segments, check every echoed byte; prints a summary and one
    /// RESULT line.
    Client(Flags),
}

/// The flags of both roles.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Durations accept 5, 2.5s or 500ms. Exit status: 0 ok, 1 runtime error, \
                        2 usage error."
)]
struct Flags {
    /// ringwire | tcp.
    #[arg(long, value_name = "S", value_enum)]
    stack: Stack,
    /// tcp://127.0.0.1:PORT (both stacks), unix:///path or mem://NAME
    /// (ringwire; mem:// serves itself in one process).
    #[arg(long, value_name = "E")]
    endpoint: String,
    /// Segment bytes, with an optional K or M suffix.
    #[arg(long, value_name = "B", default_value = "2M", value_parser = parse_size)]
    segment: usize,
    /// ringwire: segments in flight.
    #[arg(long, value_name = "N", default_value_t = 4)]
    window: usize,
    /// Warm-up before measuring.
    #[arg(long, value_name = "T", default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Measured interval.
    #[arg(long, value_name = "T", default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Pin the client to CPU N.
    #[arg(long, value_name = "N")]
    core: Option<usize>,
    /// Report the server's CPU time and peak RSS.
    #[arg(long, value_name = "P")]
    server_pid: Option<u32>,
    /// Stack name for the RESULT line (default: the stack).
    #[arg(long, value_name = "NAME")]
    label: Option<String>,
    /// Retry the first connect for up to T.
    #[arg(long, value_name = "T", default_value = "2s", value_parser = parse_duration)]
    wait: Duration,
}

#[derive(Debug, Clone)]
struct Args {
    server: bool,
    stack: Stack,
    endpoint: String,
    segment: usize,
    window: usize,
    meter: MeterConfig,
    core: Option<usize>,
    label: Option<String>,
    wait: Duration,
}

/// Parses a byte count with an optional `K` or `M` suffix (`2M`, `64k`).
fn parse_size(value: &str) -> Result<usize, String> {
    let (num, scale) = match value.as_bytes().last() {
        Some(b'K' | b'k') => (&value[..value.len() - 1], 1 << 10),
        Some(b'M' | b'm') => (&value[..value.len() - 1], 1 << 20),
        _ => (value, 1),
    };
    let n: usize = num
        .parse()
        .map_err(|e| format!("{e} (expected bytes like 4096, 64K or 2M)"))?;
    n.checked_mul(scale).ok_or_else(|| "too large".to_string())
}

/// Checks what clap cannot: the ranges.
fn config(server: bool, f: Flags) -> Result<Args, String> {
    if f.segment == 0 || f.segment > MAX_SEGMENT {
        return Err(format!("`--segment` must be 1..={MAX_SEGMENT} bytes"));
    }
    if f.window == 0 || f.window > 64 {
        return Err("`--window` must be 1..=64".into());
    }
    let meter = MeterConfig {
        warmup: f.warmup,
        duration: f.duration,
        server_pid: f.server_pid,
        ..MeterConfig::default()
    };
    meter.check()?;
    Ok(Args {
        server,
        stack: f.stack,
        endpoint: f.endpoint,
        segment: f.segment,
        window: f.window,
        meter,
        core: f.core,
        label: f.label,
        wait: f.wait,
    })
}

/// Parses `typed-bulk server|client [flags]` (`args` starts with the
/// program name).
fn parse<I, T>(args: I) -> Result<Args, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut cmd = Cli::command();
    let matches = cmd.try_get_matches_from_mut(args)?;
    let (role, checked) = match Cli::from_arg_matches(&matches)?.role {
        RoleFlags::Server(f) => ("server", config(true, f)),
        RoleFlags::Client(f) => ("client", config(false, f)),
    };
    checked.map_err(|e| {
        let kind = clap::error::ErrorKind::ValueValidation;
        match cmd.find_subcommand_mut(role) {
            Some(sub) => sub.error(kind, e),
            None => cmd.error(kind, e),
        }
    })
}

fn main() {
    // Bad arguments, and --help / --version: clap prints and exits (2, 0).
    let args = parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let result = match (args.server, args.stack) {
        (true, Stack::Tcp) => tcp_server(&args),
        (true, Stack::Ringwire) => ringwire_server(&args),
        (false, stack) => {
            arm_hard_limit(
                NAME,
                args.wait
                    + args.meter.warmup
                    + args.meter.duration
                    + args.meter.stall_timeout
                    + Duration::from_secs(15),
            );
            let measured = match stack {
                Stack::Tcp => tcp_client(&args),
                Stack::Ringwire => ringwire_client(&args),
            };
            measured.map(|(transport, measured)| {
                let stack = match stack {
                    Stack::Tcp => "tcp-copy",
                    Stack::Ringwire => "ringwire",
                };
                Report {
                    workload: Workload {
                        stack: args.label.clone().unwrap_or_else(|| stack.to_owned()),
                        transport: transport.to_owned(),
                        mode: "bulk".into(),
                        codec: match args.stack {
                            Stack::Tcp => "raw".into(),
                            Stack::Ringwire => "rkyv".into(),
                        },
                        conns: 1,
                        depth: match args.stack {
                            Stack::Tcp => 0,
                            Stack::Ringwire => args.window,
                        },
                        size: args.segment,
                        reply_size: args.segment,
                    },
                    measured,
                    latency: "rtt",
                }
                .print();
            })
        }
    };
    if let Err(e) = result {
        eprintln!("{NAME}: error: {e}");
        std::process::exit(1);
    }
}

/// The payload table, for the life of the process: segments sent by
/// ringwire borrow from it until sent.
fn table(segment: usize) -> &'static PayloadGen {
    Box::leak(Box::new(PayloadGen::new(segment)))
}

/// Checks that echoed segment `seq` is what was sent.
fn check_segment(gen: &PayloadGen, seq: u64, got: &[u8]) -> Result<(), String> {
    let expect = gen.request(seq, gen.max_len()).map_err(|e| e.to_string())?;
    if got != expect {
        let at = got
            .iter()
            .zip(expect)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expect.len()));
        return Err(format!(
            "segment {seq}: {} bytes came back, differing from the {} sent at byte {at}",
            got.len(),
            expect.len()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- tcp

fn tcp_addr(endpoint: &str) -> Result<std::net::SocketAddr, String> {
    match Target::parse(endpoint)? {
        Target::Tcp(addr) => Ok(addr),
        Target::Unix(_) | Target::Tls(_) => Err("the TCP copy loop needs a tcp:// endpoint".into()),
    }
}

fn tcp_server(args: &Args) -> Result<(), String> {
    let addr = tcp_addr(&args.endpoint)?;
    let shutdown =
        Shutdown::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot configure the listener: {e}"))?;
    eprintln!(
        "{NAME}: TCP copy loop on {addr}, {} B segments",
        args.segment
    );
    eprintln!("READY {}", args.endpoint);
    let segment = args.segment;
    while !shutdown.requested() {
        match listener.accept() {
            Ok((stream, peer)) => {
                std::thread::spawn(move || {
                    if let Err(e) = tcp_echo(stream, segment) {
                        if !matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                        ) {
                            eprintln!("{NAME}: connection from {peer}: {e}");
                        }
                    }
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(SHUTDOWN_POLL),
            Err(e) => {
                eprintln!("{NAME}: accept failed: {e}");
                std::thread::sleep(SHUTDOWN_POLL);
            }
        }
    }
    eprintln!("{NAME}: stopped");
    Ok(())
}

/// Reads whole segments and writes each back, until the peer closes.
fn tcp_echo(mut stream: std::net::TcpStream, segment: usize) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; segment];
    loop {
        let mut off = 0;
        while off < segment {
            match stream.read(&mut buf[off..]) {
                Ok(0) if off == 0 => return Ok(()),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        stream.write_all(&buf)?;
    }
}

fn tcp_client(args: &Args) -> Result<(&'static str, Measured), String> {
    let addr = tcp_addr(&args.endpoint)?;
    let deadline = Instant::now() + args.wait;
    let stream = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("cannot connect to {addr}: {e}")),
        }
    };
    let setup = |e: io::Error| format!("cannot configure the connection: {e}");
    stream.set_nodelay(true).map_err(setup)?;
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(setup)?;
    let gen = table(args.segment);
    let segment = args.segment;
    let stop = Arc::new(AtomicBool::new(false));
    let (sent_tx, sent_rx) = crossbeam_channel::unbounded::<Instant>();
    let mut writer_stream = stream.try_clone().map_err(setup)?;
    let (core, wstop) = (args.core, stop.clone());
    let writer = std::thread::Builder::new()
        .name(format!("{NAME}-write"))
        .spawn(move || -> Result<(), String> {
            if let Some(core) = core {
                pin_current_thread(core)?;
            }
            let mut seq = 0u64;
            while !wstop.load(Ordering::Acquire) {
                let data = gen.request(seq, segment).map_err(|e| e.to_string())?;
                let _ = sent_tx.send(Instant::now());
                if let Err(e) = writer_stream.write_all(data) {
                    if wstop.load(Ordering::Acquire) {
                        break;
                    }
                    return Err(format!("write: {e}"));
                }
                seq += 1;
            }
            Ok(())
        })
        .map_err(|e| format!("cannot spawn the writer: {e}"))?;
    if let Some(core) = args.core {
        pin_current_thread(core)?;
    }
    let result = tcp_read_loop(&stream, gen, segment, &sent_rx, args.meter.clone());
    stop.store(true, Ordering::Release);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let written = writer
        .join()
        .map_err(|_| "the writer panicked".to_owned())?;
    let measured = result?;
    written?;
    Ok(("tcp", measured))
}

fn tcp_read_loop(
    mut stream: &std::net::TcpStream,
    gen: &PayloadGen,
    segment: usize,
    sent: &crossbeam_channel::Receiver<Instant>,
    cfg: MeterConfig,
) -> Result<Measured, String> {
    let mut meter = Meter::new(cfg)?;
    let mut buf = vec![0u8; segment];
    let (mut off, mut seq) = (0usize, 0u64);
    while meter.poll(Instant::now())?.is_some() {
        match stream.read(&mut buf[off..]) {
            Ok(0) => return Err("the server closed the connection".into()),
            Ok(n) => off += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        if off == segment {
            let now = Instant::now();
            check_segment(gen, seq, &buf)?;
            let at = sent
                .try_recv()
                .map_err(|_| format!("segment {seq} came back before it was sent"))?;
            meter.record(now.duration_since(at), segment, now);
            seq += 1;
            off = 0;
        }
    }
    meter.finish()
}

// ---------------------------------------------------------------- ringwire

fn ringwire_config() -> Result<Config, String> {
    Config::with_types::<(BulkMeta,)>().map_err(|e| format!("schema: {e}"))
}

fn ringwire_endpoint(s: &str) -> Result<Endpoint, String> {
    let ep: Endpoint = s.parse().map_err(|e| format!("endpoint `{s}`: {e}"))?;
    match ep.scheme() {
        Scheme::Mem => {}
        Scheme::Tcp | Scheme::Unix => {
            Target::parse(s.split('?').next().unwrap_or(s))?;
        }
        other => {
            return Err(format!(
                "endpoint `{s}`: expected tcp://, unix:// or mem://, not {}://",
                other.name()
            ))
        }
    }
    Ok(ep)
}

fn ringwire_server(args: &Args) -> Result<(), String> {
    let ep = ringwire_endpoint(&args.endpoint)?;
    if ep.scheme() == Scheme::Mem {
        return Err("a mem:// endpoint lives inside one process; run the client with it".into());
    }
    let signals =
        TerminationSignals::block().map_err(|e| format!("cannot block SIGINT/SIGTERM: {e}"))?;
    if let Ok(Target::Unix(path)) = Target::parse(args.endpoint.split('?').next().unwrap_or("")) {
        let _ = std::fs::remove_file(path);
    }
    let rt = Runtime::builder()
        .placement(Placement::Count(1))
        .thread_name(NAME)
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let cfg = ringwire_config()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    rt.spawn_on(0, move || bulk_serve(ep, cfg, ready_tx));
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            rt.shutdown(Duration::from_secs(1));
            return Err(e);
        }
        Err(_) => {
            rt.shutdown(Duration::from_secs(1));
            return Err("the server core stopped before listening".into());
        }
    }
    eprintln!("{NAME}: ringwire bulk echo on {}", args.endpoint);
    eprintln!("READY {}", args.endpoint);
    let _ = signals.wait().map_err(|e| format!("sigwait: {e}"))?;
    let report = rt.shutdown(Duration::from_secs(5));
    if report.cores_panicked > 0 {
        return Err(format!("{} cores panicked", report.cores_panicked));
    }
    eprintln!("{NAME}: stopped");
    Ok(())
}

async fn bulk_serve(ep: Endpoint, cfg: Config, ready: std::sync::mpsc::Sender<Result<(), String>>) {
    let mut listener = match listen(&ep, &cfg).await {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot listen on {ep}: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    while let Some(conn) = listener.accept().await {
        match conn {
            Ok(conn) => {
                spawn_local(async move {
                    if let Err(e) = bulk_echo(&conn).await {
                        let ending = conn.is_closed() || ringwire_runtime::is_shutting_down();
                        // A peer closing mid-transfer ends the echo (closed,
                        // or closing: a usage error); that is the end of a run.
                        if !ending && !matches!(e, Error::Closed { .. } | Error::Usage(_)) {
                            eprintln!("{NAME}: connection {}: {e}", conn.id());
                        }
                    }
                });
            }
            Err(e) => eprintln!("{NAME}: handshake failed: {e}"),
        }
    }
}

/// Receives each segment into a buffer of the server's choosing and sends
/// that buffer back.
async fn bulk_echo(conn: &Connection) -> Result<(), Error> {
    let mut spare: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut msg = conn.recv::<BulkMeta>().await?;
        let meta = BulkMeta {
            seq: msg.seq.to_native(),
            len: msg.len.to_native(),
        };
        let Some(sizes) = msg.incoming().bulk_sizes() else {
            eprintln!(
                "{NAME}: connection {}: message {} carries no bulk segments; skipped",
                conn.id(),
                meta.seq
            );
            continue;
        };
        let dests: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&size| {
                let mut buf = spare.pop().unwrap_or_default();
                buf.clear();
                buf.reserve_exact(size as usize);
                buf
            })
            .collect();
        let filled = msg.incoming_mut().accept_bulk(dests).await?;
        drop(msg);
        let (_receipt, back) = conn.send_bulk(&meta, filled).await?;
        spare = back;
    }
}

/// At most `max` segments in flight: the sender waits for a slot, the
/// receiver frees one per echo.
struct Window {
    max: usize,
    used: Cell<usize>,
    waiter: RefCell<Option<Waker>>,
}

impl Window {
    async fn acquire(&self) {
        poll_fn(|cx| {
            if self.used.get() < self.max {
                self.used.set(self.used.get() + 1);
                Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }

    fn release(&self) {
        self.used.set(self.used.get().saturating_sub(1));
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }
}

fn ringwire_client(args: &Args) -> Result<(&'static str, Measured), String> {
    let ep = ringwire_endpoint(&args.endpoint)?;
    let in_process = ep.scheme() == Scheme::Mem;
    let placement = match (in_process, args.core) {
        (false, Some(core)) => Placement::Cpus(vec![core]),
        (false, None) => Placement::Unpinned(1),
        (true, None) => Placement::Unpinned(2),
        (true, Some(_)) => {
            return Err("a mem:// run uses two cores; pin it with taskset, not --core".into())
        }
    };
    let rt = Runtime::builder()
        .placement(placement)
        .thread_name(NAME)
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let cfg = ringwire_config()?;
    if in_process {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (sep, scfg) = (ep.clone(), cfg.clone());
        rt.spawn_on(1, move || bulk_serve(sep, scfg, ready_tx));
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("the in-process server stopped before listening".into()),
        }
    }
    let run = args.clone();
    let measured = rt
        .block_on(0, move || bulk_client(run, ep, cfg))
        .map_err(|e| format!("the client task failed: {e}"))?;
    rt.shutdown(Duration::from_secs(2));
    let transport = if in_process {
        "mem"
    } else {
        Target::parse(args.endpoint.split('?').next().unwrap_or(""))?.transport()
    };
    Ok((transport, measured?))
}

async fn bulk_client(args: Args, ep: Endpoint, cfg: Config) -> Result<Measured, String> {
    let deadline = Instant::now() + args.wait;
    let conn = loop {
        match connect(&ep, &cfg).await {
            Ok(c) => break c,
            Err(Error::Io { .. }) if Instant::now() < deadline => {
                ringwire_runtime::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(format!("cannot connect to {ep}: {e}")),
        }
    };
    let gen = table(args.segment);
    let segment = args.segment;
    let meter = Rc::new(RefCell::new(Meter::new(args.meter.clone())?));
    let window = Rc::new(Window {
        max: args.window,
        used: Cell::new(0),
        waiter: RefCell::new(None),
    });
    let sent_at: Rc<RefCell<VecDeque<(u64, Instant)>>> = Rc::default();
    let sender = {
        let (conn, meter, window, sent_at) =
            (conn.clone(), meter.clone(), window.clone(), sent_at.clone());
        spawn_local(async move {
            let mut seq = 0u64;
            let result: Result<(), String> = async {
                loop {
                    window.acquire().await;
                    if meter.borrow().is_done() {
                        return Ok(());
                    }
                    let data: &'static [u8] =
                        gen.request(seq, segment).map_err(|e| e.to_string())?;
                    sent_at.borrow_mut().push_back((seq, Instant::now()));
                    let meta = BulkMeta {
                        seq,
                        len: segment as u32,
                    };
                    conn.send_bulk(&meta, vec![data])
                        .await
                        .map_err(|e| format!("send_bulk {seq}: {e}"))?;
                    seq += 1;
                }
            }
            .await;
            if let Err(e) = result {
                meter.borrow_mut().fail(e);
            }
        })
    };
    let receiver = {
        let (meter, window) = (meter.clone(), window.clone());
        spawn_local(async move {
            let mut spare: Option<Vec<u8>> = None;
            let result: Result<(), String> = async {
                loop {
                    let mut msg = conn
                        .recv::<BulkMeta>()
                        .await
                        .map_err(|e| format!("recv: {e}"))?;
                    let seq = msg.seq.to_native();
                    let sizes = msg.incoming().bulk_sizes();
                    if sizes.as_deref() != Some(&[segment as u32][..]) {
                        return Err(format!(
                            "echo of segment {seq} announces segments {sizes:?}, expected [{segment}]"
                        ));
                    }
                    let mut dest = spare.take().unwrap_or_default();
                    dest.clear();
                    dest.reserve_exact(segment);
                    let mut filled = msg
                        .incoming_mut()
                        .accept_bulk(vec![dest])
                        .await
                        .map_err(|e| format!("accept_bulk {seq}: {e}"))?;
                    drop(msg);
                    let now = Instant::now();
                    let buf = filled.pop().ok_or("accept_bulk returned no buffer")?;
                    let (sent_seq, at) = sent_at
                        .borrow_mut()
                        .pop_front()
                        .ok_or_else(|| format!("echo of segment {seq}, which was not sent"))?;
                    if sent_seq != seq {
                        return Err(format!("echo of segment {seq}, expected {sent_seq}"));
                    }
                    check_segment(gen, seq, &buf)?;
                    spare = Some(buf);
                    window.release();
                    let mut m = meter.borrow_mut();
                    m.record(now.duration_since(at), segment, now);
                    if m.is_done() {
                        return Ok(());
                    }
                }
            }
            .await;
            if let Err(e) = result {
                meter.borrow_mut().fail(e);
                window.release();
            }
        })
    };
    loop {
        let next = meter.borrow_mut().poll(Instant::now());
        match next {
            Ok(Some(at)) => {
                ringwire_runtime::time::sleep(at.saturating_duration_since(Instant::now())).await
            }
            Ok(None) => break,
            Err(e) => return Err(e),
        }
    }
    // Wake a sender waiting for a slot so that it sees the end.
    window.release();
    drop((sender, receiver));
    let measured = meter.borrow().finish();
    measured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2M").unwrap(), 2 << 20);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("M").is_err());
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999999999999M").is_err());
    }

    fn args(v: &[&str]) -> Result<Args, clap::Error> {
        parse(std::iter::once(NAME).chain(v.iter().copied()))
    }

    #[test]
    fn flags() {
        let a = args(&[
            "server",
            "--stack",
            "tcp",
            "--endpoint",
            "tcp://127.0.0.1:1",
        ])
        .unwrap();
        assert!(a.server);
        assert_eq!((a.stack, a.segment, a.window), (Stack::Tcp, 2 << 20, 4));
        assert_eq!(a.wait, Duration::from_secs(2));
        assert_eq!(a.meter.duration, Duration::from_secs(5));
        // Every flag benches/typed.sh passes.
        let a = args(&[
            "client",
            "--stack",
            "ringwire",
            "--endpoint",
            "tcp://127.0.0.1:1",
            "--core",
            "1",
            "--server-pid",
            "42",
            "--segment",
            "64K",
            "--window",
            "8",
            "--warmup",
            "0",
            "--duration",
            "2",
            "--label",
            "bulk",
            "--wait=500ms",
        ])
        .unwrap();
        assert!(!a.server);
        assert_eq!(
            (a.stack, a.segment, a.window),
            (Stack::Ringwire, 64 << 10, 8)
        );
        assert_eq!((a.core, a.meter.server_pid), (Some(1), Some(42)));
        assert_eq!(a.meter.warmup, Duration::ZERO);
        assert_eq!(a.meter.duration, Duration::from_secs(2));
        assert_eq!(a.label.as_deref(), Some("bulk"));
        assert_eq!(a.wait, Duration::from_millis(500));
        for bad in [
            &[][..],
            &["serve", "--stack", "tcp", "--endpoint", "x"][..],
            &["client", "--endpoint", "x"][..],
            &["client", "--stack", "tcp"][..],
            &["client", "--stack", "udp", "--endpoint", "x"][..],
            &[
                "client",
                "--stack",
                "tcp",
                "--endpoint",
                "x",
                "--segment",
                "0",
            ][..],
            &[
                "client",
                "--stack",
                "tcp",
                "--endpoint",
                "x",
                "--segment",
                "65M",
            ][..],
            &[
                "client",
                "--stack",
                "tcp",
                "--endpoint",
                "x",
                "--window",
                "0",
            ][..],
            &[
                "client",
                "--stack",
                "tcp",
                "--endpoint",
                "x",
                "--window",
                "65",
            ][..],
            &[
                "client",
                "--stack",
                "tcp",
                "--endpoint",
                "x",
                "--duration",
                "0",
            ][..],
        ] {
            let e = args(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        assert_eq!(args(&["--help"]).err().map(|e| e.exit_code()), Some(0));
    }

    #[test]
    fn segments_are_checked() {
        let gen = PayloadGen::new(4096);
        let mut seg = gen.request(3, 4096).unwrap().to_vec();
        check_segment(&gen, 3, &seg).unwrap();
        assert!(check_segment(&gen, 4, &seg).is_err());
        seg[4000] ^= 1;
        let err = check_segment(&gen, 3, &seg).unwrap_err();
        assert!(err.contains("at byte 4000"), "{err}");
        seg.truncate(10);
        assert!(check_segment(&gen, 3, &seg).is_err());
    }
}
