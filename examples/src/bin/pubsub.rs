//! pubsub: a market-data publisher and its subscribers.
//!
//! The publisher sends fixed-size quotes (timestamp, sequence number,
//! symbol, bid/ask price and volume; rkyv) at `--rate` per second or flat
//! out, either
//!
//! - to every subscriber connected to it (`--listen tcp://...`, also
//!   `unix://` and `tls://`): each quote is serialized **once** and the same
//!   buffer is sent on every subscriber's connection (`Peers::broadcast`); a
//!   subscriber that cannot keep up has quotes dropped for it (counted; it
//!   sees them as gaps) rather than slowing the others or the publisher; or
//! - as datagrams (`--connect udp://...`): unicast, or to a multicast group
//!   (`udp://239.1.2.3:7400?iface=127.0.0.1&loop=1`) that any number of
//!   subscribers on the host join.
//!
//! The subscriber reports quotes per second, sequence gaps (udp: from the
//! datagram header's per-sender sequence; stream transports: from the
//! quote's own sequence field) and one-way latency percentiles from the
//! timestamp in each quote (CLOCK_MONOTONIC: publisher and subscriber must
//! run on the same host).
//!
//! ```text
//! pubsub publish --listen tcp://127.0.0.1:7400 --rate 100000 --duration 10s
//! pubsub subscribe --connect tcp://127.0.0.1:7400
//! pubsub subscribe --listen 'udp://239.1.2.3:7400?iface=127.0.0.1'
//! pubsub publish --connect 'udp://239.1.2.3:7400?iface=127.0.0.1&loop=1' --rate 50000
//! ```

use std::cell::RefCell;
use std::io;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, Subcommand};
use ringwire::proto::rkyv;
use ringwire::runtime::signal::TerminationSignals;
use ringwire::runtime::{spawn_local, time, yield_now, Placement, Runtime};
use ringwire::transports::udp::{self, Datagrams};
use ringwire::transports::{
    connect, listen, type_id, BackPressure, Config, Connection, Endpoint, Error, Message, Peers,
    Scheme,
};
use ringwire_examples::cli::{CoreArgs, IdleArgs};
use ringwire_examples::nodes::{
    now_ns, parse_duration, parse_endpoint, stopping, watch_signals, Latency,
};

/// One quote. Fixed size: every field is a number.
#[derive(rkyv::Archive, rkyv::Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(crate = rkyv)]
pub struct Quote {
    /// When the publisher serialized it: CLOCK_MONOTONIC nanoseconds.
    pub timestamp_ns: u64,
    /// The publisher's number for it, from 1, one per quote published.
    pub seq: u64,
    /// Instrument id.
    pub symbol: u32,
    /// Best bid volume.
    pub bid_volume: u32,
    /// Best bid price, in ticks.
    pub bid_price: i64,
    /// Best ask price, in ticks.
    pub ask_price: i64,
    /// Best ask volume.
    pub ask_volume: u32,
}

impl Message for Quote {
    const TYPE_ID: u32 = type_id("md.Quote");
    const NAME: &'static str = "md.Quote";
}

/// The publisher is done: `last_seq` is the last quote's number, so a
/// subscriber also counts the quotes it missed at the very end.
#[derive(rkyv::Archive, rkyv::Serialize, Debug, Clone, Copy)]
#[rkyv(crate = rkyv)]
pub struct End {
    /// Number of the last quote published.
    pub last_seq: u64,
}

impl Message for End {
    const TYPE_ID: u32 = type_id("md.End");
    const NAME: &'static str = "md.End";
}

/// Market-data quotes from a publisher to its subscribers, over TCP fan-out
/// (tcp://, unix://, tls://) or UDP unicast and multicast.
///
/// Ctrl-C or SIGTERM stops either side gracefully: the publisher tells its
/// subscribers it is done, a subscriber prints its report. Logs go to
/// stderr, filtered by RUST_LOG (default: info).
#[derive(Parser, Debug)]
#[command(name = "pubsub", version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Publish quotes.
    Publish(PublishArgs),
    /// Receive quotes and report rate, gaps and latency.
    Subscribe(SubscribeArgs),
}

#[derive(clap::Args, Debug)]
struct PublishArgs {
    /// Serve subscribers that connect here (tcp://, unix://, tls://...?
    /// cert=PEM&key=PEM). HOST:PORT alone is tcp://; port 0 picks one (the
    /// address is printed).
    #[arg(long, value_name = "ENDPOINT", value_parser = parse_endpoint,
          required_unless_present = "connect", conflicts_with = "connect")]
    listen: Option<Endpoint>,
    /// Send datagrams here: udp://HOST:PORT, or a multicast group
    /// udp://GROUP:PORT?iface=ADDR|NAME[&ttl=N&loop=1].
    #[arg(long, value_name = "ENDPOINT", value_parser = parse_endpoint)]
    connect: Option<Endpoint>,
    /// Quotes per second; 0: flat out.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    rate: u64,
    /// Stop after this long (500ms, 10s, 1m).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many quotes. Without --count or --duration: until
    /// Ctrl-C.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Distinct symbols, published round-robin.
    #[arg(long, value_name = "N", default_value_t = 100)]
    symbols: u32,
    /// Stream transports: wait until this many subscribers are connected
    /// before publishing.
    #[arg(long, value_name = "N", default_value_t = 0)]
    subscribers: usize,
    /// Stream transports: quotes queued per subscriber; beyond that, quotes
    /// for that subscriber are dropped (counted in
    /// transport_dropped_total). Waiting for a slow subscriber instead is
    /// not offered: `Peers::broadcast` under the `Wait` policy queues a
    /// message that found the queue full from a task of its own, so later
    /// quotes (and the end marker) can overtake it.
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    queue: usize,
    #[command(flatten)]
    cores: CoreArgs,
    #[command(flatten)]
    idle: IdleArgs,
}

#[derive(clap::Args, Debug)]
struct SubscribeArgs {
    /// The publisher to connect to (tcp://, unix://, tls://...?ca=PEM).
    #[arg(long, value_name = "ENDPOINT", value_parser = parse_endpoint,
          required_unless_present = "listen", conflicts_with = "listen")]
    connect: Option<Endpoint>,
    /// Receive datagrams here: udp://HOST:PORT, or join a multicast group
    /// udp://GROUP:PORT?iface=ADDR|NAME.
    #[arg(long, value_name = "ENDPOINT", value_parser = parse_endpoint)]
    listen: Option<Endpoint>,
    /// Stop after this long. Without it: until the publisher ends (or
    /// Ctrl-C).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Print a line of rate and gaps this often (0: only the final report).
    #[arg(long, value_name = "TIME", default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    #[command(flatten)]
    cores: CoreArgs,
    #[command(flatten)]
    idle: IdleArgs,
}

fn main() -> ExitCode {
    // Bad arguments: clap prints the error and exits with code 2.
    let args = Args::parse();
    check_schemes(&args);
    ringwire_examples::init_tracing();
    let res = match args.cmd {
        Cmd::Publish(a) => publish(a),
        Cmd::Subscribe(a) => subscribe(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pubsub: {e}");
            ExitCode::FAILURE
        }
    }
}

/// udp:// goes with the datagram side of each command, the stream schemes
/// with the other; a mismatch is a usage error (exit code 2).
fn check_schemes(args: &Args) {
    let (sub, flag, ep, want_udp) = match &args.cmd {
        Cmd::Publish(a) => match (&a.listen, &a.connect) {
            (Some(ep), _) => ("publish", "--listen", ep, false),
            (_, Some(ep)) => ("publish", "--connect", ep, true),
            _ => return,
        },
        Cmd::Subscribe(a) => match (&a.connect, &a.listen) {
            (Some(ep), _) => ("subscribe", "--connect", ep, false),
            (_, Some(ep)) => ("subscribe", "--listen", ep, true),
            _ => return,
        },
    };
    let is_udp = ep.scheme() == Scheme::Udp;
    if is_udp != want_udp {
        let hint = if want_udp {
            "takes udp:// (datagrams); stream transports use the other flag"
        } else {
            "takes tcp://, unix://, tls:// or mem://; udp:// uses the other flag"
        };
        let mut cmd = Args::command();
        let msg = format!("{sub} {flag} {ep}: {flag} {hint}");
        cmd.error(clap::error::ErrorKind::ArgumentConflict, msg)
            .exit();
    }
}

fn config() -> Config {
    // Constant, valid type list: this cannot fail.
    Config::with_types::<(Quote, End)>().expect("two message types")
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
        .thread_name("pubsub")
        .build()?)
}

// ---------------------------------------------------------------------------
// Publisher

/// How long the publisher keeps trying to give a subscriber whose queue is
/// full the end marker.
const END_PATIENCE: Duration = Duration::from_secs(10);

/// How quotes leave.
enum Out {
    /// Every connected subscriber, serialized once.
    FanOut {
        peers: Peers,
        conns: Rc<RefCell<Vec<Connection>>>,
    },
    /// Datagrams to one address or group.
    Datagrams(Datagrams),
}

impl Out {
    async fn quote(&self, q: &Quote) -> Result<(), Error> {
        match self {
            Out::FanOut { peers, .. } => peers.broadcast(q).await.map(drop),
            Out::Datagrams(sock) => sock.send(q).await.map(drop),
        }
    }

    /// Tells every subscriber the stream ended and closes; returns how many
    /// end markers were dropped for a full queue (and sent again).
    async fn end(&self, last_seq: u64) -> Result<u64, Error> {
        let end = End { last_seq };
        match self {
            Out::FanOut { conns, .. } => {
                // To each subscriber on its own, and again while its queue
                // is full: the end marker must not be dropped like a quote,
                // or the subscriber could not count the quotes it missed
                // last. A subscriber that does not read for END_PATIENCE
                // goes without.
                let conns = std::mem::take(&mut *conns.borrow_mut());
                let mut retries = 0;
                for c in conns {
                    let deadline = Instant::now() + END_PATIENCE;
                    loop {
                        match c.send(&end).await {
                            Ok(r) if !r.dropped() => break,
                            Ok(_) if Instant::now() < deadline => {
                                retries += 1;
                                time::sleep(Duration::from_millis(10)).await
                            }
                            Ok(_) => {
                                retries += 1;
                                tracing::warn!(
                                    remote = c.remote(),
                                    "subscriber not reading; no end marker"
                                );
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(remote = c.remote(), error = %e, "no end marker");
                                break;
                            }
                        }
                    }
                    // `close` returns once everything queued was delivered.
                    if let Err(e) = c.close().await {
                        tracing::warn!(remote = c.remote(), error = %e, "close failed");
                    }
                }
                Ok(retries)
            }
            Out::Datagrams(sock) => {
                // Three times: one may be lost like any datagram.
                for _ in 0..3 {
                    sock.send(&end).await?;
                }
                sock.flush().await.map(|()| 0)
            }
        }
    }
}

fn publish(args: PublishArgs) -> io::Result<()> {
    let signals = TerminationSignals::block()?;
    watch_signals(signals, Duration::from_secs(5))?;
    let rt = runtime(&args.cores, &args.idle)?;
    let res = rt
        .block_on(0, move || async move { run_publisher(args).await })
        .map_err(io::Error::other)?;
    rt.shutdown(Duration::from_secs(2));
    let (sent, elapsed, dropped) = res?;
    println!(
        "published={sent} msgs/s={:.0} dropped_for_slow_subscribers={dropped}",
        sent as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// Publishes; returns the quotes published, for how long, and how many were
/// dropped for subscribers that could not keep up (this core's counter: the
/// publisher runs on one core).
async fn run_publisher(args: PublishArgs) -> io::Result<(u64, Duration, u64)> {
    let out = if let Some(ep) = &args.listen {
        let peers = Peers::new();
        let cfg = config()
            .peers(&peers)
            .back_pressure(BackPressure::DropNewest)
            .send_queue(args.queue, args.queue.saturating_mul(128));
        let mut listener = listen(ep, &cfg).await.map_err(io::Error::other)?;
        println!("pubsub publishing on {}", listener.endpoint());
        let conns = Rc::new(RefCell::new(Vec::new()));
        let held = conns.clone();
        spawn_local(async move {
            while let Some(conn) = listener.accept().await {
                match conn {
                    Ok(conn) => {
                        tracing::info!(remote = conn.remote(), "subscriber connected");
                        let mut held = held.borrow_mut();
                        held.retain(|c: &Connection| !c.is_closed());
                        held.push(conn);
                    }
                    Err(e) => tracing::warn!(error = %e, "accept failed"),
                }
            }
        });
        while peers.len() < args.subscribers && !stopping() {
            time::sleep(Duration::from_millis(5)).await;
        }
        Out::FanOut { peers, conns }
    } else if let Some(ep) = &args.connect {
        let sock = udp::connect(ep, &config()).map_err(io::Error::other)?;
        println!(
            "pubsub publishing to {ep} from {} as sender {:#x}",
            sock.local_addr(),
            sock.sender_id()
        );
        Out::Datagrams(sock)
    } else {
        unreachable!("clap requires --listen or --connect")
    };

    // A place for the node's metrics endpoint (`--metrics ADDR`, to come):
    // the transports' counters (sent, dropped per subscriber queue) would
    // be served from here on.
    let start = Instant::now();
    let mut seq = 0u64;
    // Quotes due so far: at --rate, by the clock; flat out, a batch a turn.
    const BATCH: u64 = 256;
    loop {
        if stopping()
            || args.count.is_some_and(|c| seq >= c)
            || args.duration.is_some_and(|d| start.elapsed() >= d)
        {
            break;
        }
        let due = if args.rate == 0 {
            seq + BATCH
        } else {
            let by_clock = (start.elapsed().as_secs_f64() * args.rate as f64) as u64;
            by_clock.min(seq + BATCH)
        };
        let due = args.count.map_or(due, |c| due.min(c));
        while seq < due {
            seq += 1;
            let q = quote(seq, args.symbols);
            out.quote(&q).await.map_err(io::Error::other)?;
        }
        if args.rate == 0 {
            yield_now().await;
        } else {
            // The next quote's time, at least one timer tick away.
            let next = Duration::from_secs_f64((seq + 1) as f64 / args.rate as f64);
            let wait = next.saturating_sub(start.elapsed());
            time::sleep(wait.max(Duration::from_micros(100))).await;
        }
    }
    let elapsed = start.elapsed();
    let end_retries = out.end(seq).await.map_err(io::Error::other)?;
    let snapshot = ringwire::transports::stats::snapshot();
    let dropped = snapshot.schemes.iter().map(|s| s.dropped).sum::<u64>();
    let dropped = dropped.saturating_sub(end_retries);
    Ok((seq, elapsed, dropped))
}

/// Quote number `seq`: a made-up book that moves with it.
fn quote(seq: u64, symbols: u32) -> Quote {
    let symbol = (seq % u64::from(symbols.max(1))) as u32;
    let mid = 100_000 + (seq % 1000) as i64;
    Quote {
        timestamp_ns: now_ns(),
        seq,
        symbol,
        bid_volume: 100 + (seq % 7) as u32 * 10,
        bid_price: mid - 1,
        ask_price: mid + 1,
        ask_volume: 100 + (seq % 5) as u32 * 10,
    }
}

// ---------------------------------------------------------------------------
// Subscriber

/// What a subscriber counted.
#[derive(Default)]
struct Tally {
    received: u64,
    /// Stream transports: the highest quote number seen.
    last_seq: u64,
    /// Stream transports: quote numbers skipped.
    gaps: u64,
    latency: Latency,
}

impl Tally {
    /// Stream transports: accounts quote `seq`. The first one sets where
    /// this subscriber joined.
    fn stream_seq(&mut self, seq: u64) {
        if self.last_seq != 0 && seq > self.last_seq + 1 {
            self.gaps += seq - self.last_seq - 1;
        }
        self.last_seq = self.last_seq.max(seq);
    }
}

/// Gap figures of a subscriber.
#[derive(Clone, Copy, Debug, Default)]
struct Gaps {
    gaps: u64,
    late: u64,
    duplicates: u64,
    lost: u64,
}

fn subscribe(args: SubscribeArgs) -> io::Result<()> {
    let signals = TerminationSignals::block()?;
    watch_signals(signals, Duration::from_secs(3))?;
    let rt = runtime(&args.cores, &args.idle)?;
    let res = rt
        .block_on(0, move || async move { run_subscriber(args).await })
        .map_err(io::Error::other)?;
    rt.shutdown(Duration::from_secs(2));
    let (tally, gaps, elapsed) = res?;
    println!(
        "summary: received={} gaps={} lost={} late={} duplicates={} msgs/s={:.0}",
        tally.received,
        gaps.gaps,
        gaps.lost,
        gaps.late,
        gaps.duplicates,
        tally.received as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    println!(
        "{}",
        tally
            .latency
            .report_line("one-way latency (CLOCK_MONOTONIC)")
    );
    Ok(())
}

enum In {
    Stream(Connection),
    Datagrams(Datagrams),
}

impl In {
    fn gaps(&self, tally: &Tally) -> Gaps {
        match self {
            In::Stream(_) => Gaps {
                gaps: tally.gaps,
                lost: tally.gaps,
                ..Gaps::default()
            },
            In::Datagrams(sock) => sock.senders().iter().fold(Gaps::default(), |g, s| Gaps {
                gaps: g.gaps + s.gaps,
                late: g.late + s.late,
                duplicates: g.duplicates + s.duplicates,
                lost: g.lost + s.lost(),
            }),
        }
    }
}

async fn run_subscriber(args: SubscribeArgs) -> io::Result<(Tally, Gaps, Duration)> {
    let input = if let Some(ep) = &args.connect {
        let conn = connect(ep, &config()).await.map_err(io::Error::other)?;
        println!("pubsub subscribed to {ep}");
        In::Stream(conn)
    } else if let Some(ep) = &args.listen {
        let sock = udp::bind(ep, &config()).map_err(io::Error::other)?;
        match sock.group() {
            Some(g) => println!("pubsub subscribed to group {g} on {}", sock.local_addr()),
            None => println!("pubsub subscribed on udp://{}", sock.local_addr()),
        }
        In::Datagrams(sock)
    } else {
        unreachable!("clap requires --connect or --listen")
    };
    let mut tally = Tally::default();
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let mut next_line = start + args.interval;
    let mut at_line = 0u64;
    // Wake at least this often to check the clock and the stop flag.
    let tick = Duration::from_millis(100);
    loop {
        if stopping() || args.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        if !args.interval.is_zero() && Instant::now() >= next_line {
            let g = input.gaps(&tally);
            println!(
                "msgs/s={:.0} received={} gaps={} lost={}",
                (tally.received - at_line) as f64 / args.interval.as_secs_f64(),
                tally.received,
                g.gaps,
                g.lost
            );
            at_line = tally.received;
            next_line += args.interval;
        }
        let ended = match &input {
            In::Stream(conn) => match time::timeout(tick, conn.recv_any()).await {
                Err(_) => false,
                Ok(Err(Error::Closed { .. })) => true,
                Ok(Err(e)) if !e.is_connection_fatal() => {
                    tracing::warn!(error = %e, "message skipped");
                    false
                }
                Ok(Err(e)) => return Err(io::Error::other(e)),
                Ok(Ok(m)) => {
                    if let Ok(q) = m.get::<Quote>() {
                        tally
                            .latency
                            .record(now_ns().saturating_sub(q.timestamp_ns.to_native()));
                        tally.received += 1;
                        tally.stream_seq(q.seq.to_native());
                        first.get_or_insert_with(Instant::now);
                        false
                    } else if let Ok(end) = m.get::<End>() {
                        // Quotes missed at the very end.
                        let last = end.last_seq.to_native();
                        if tally.last_seq != 0 && last > tally.last_seq {
                            tally.gaps += last - tally.last_seq;
                        }
                        true
                    } else {
                        false
                    }
                }
            },
            In::Datagrams(sock) => match time::timeout(tick, sock.recv_any()).await {
                Err(_) => false,
                Ok(Err(e)) if !e.is_connection_fatal() => {
                    tracing::warn!(error = %e, "datagram skipped");
                    false
                }
                Ok(Err(e)) => return Err(io::Error::other(e)),
                Ok(Ok(m)) => {
                    if let Ok(q) = m.get::<Quote>() {
                        tally
                            .latency
                            .record(now_ns().saturating_sub(q.timestamp_ns.to_native()));
                        tally.received += 1;
                        first.get_or_insert_with(Instant::now);
                        false
                    } else {
                        m.get::<End>().is_ok()
                    }
                }
            },
        };
        if ended {
            break;
        }
    }
    let gaps = input.gaps(&tally);
    let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
    if let In::Stream(conn) = input {
        let _ = conn.close().await;
    }
    Ok((tally, gaps, elapsed))
}
