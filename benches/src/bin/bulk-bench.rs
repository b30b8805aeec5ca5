//! `bulk-bench`: bulk transfer over loopback, shaped like net-queue's
//! published tests, for ringwire's two-phase bulk and a plain single-stream
//! TCP copy loop measured in the same run.
//!
//! The tests (`--count` N messages in each direction):
//!
//! * `sync`: the client sends N messages of `--size` bytes (default 2 MiB);
//!   once the server has received all of them it sends N back.
//! * `async`: both directions at once.
//! * `mix`: both directions at once, sizes spread from `--mix-min` (256 B) to
//!   `--mix-max` (8 MiB) in half-octave steps (`256 B x 2^(k/2)`), visited in
//!   a fixed interleaved order so that small and large messages alternate.
//!
//! The implementations:
//!
//! * `tcp`: std blocking sockets on one stream. A message is an 8-byte
//!   little-endian length and the payload, written with vectored writes
//!   straight from the payload table; the receiver reads the length, then
//!   the payload into one reused buffer. For the concurrent tests a writer
//!   thread runs beside the reader, on the same CPU.
//! * `ringwire`: a one-core runtime; each message is one
//!   [`Connection::send_bulk`] of a [`BulkMsg`] announcing one segment,
//!   borrowed from the payload table (no copy); the receiver
//!   [`accept_bulk`](ringwire_transports::Incoming::accept_bulk)s it into one
//!   reused buffer (the kernel receives straight into it). Over `tcp://`.
//!
//! Each run is two fresh processes of this binary, `server` and `client`,
//! each pinned to its CPU, so that each reports its own CPU time and peak
//! RSS (`VmHWM` of `/proc/self/status`). The driver (no role word) starts
//! them, runs `tcp` and `ringwire` interleaved per round, and prints a table
//! and one `RESULT key=value ...` line per implementation and test, with the
//! ratios of ringwire to the TCP loop of the same run.
//!
//! The transfer time runs from the earlier side's established connection to
//! the later side's last byte received (both sides read `CLOCK_MONOTONIC`,
//! which all processes share). Gbit/s counts payload bytes of both
//! directions; operations are messages of both directions.
//!
//! Payload bytes are checked: message `seq` of `len` bytes is
//! `TABLE[seq % 251..][..len]` of a fixed pseudo-random table, so a
//! reordered, truncated or misframed message differs from what is expected.
//! `--verify sample` (default) compares 64 bytes every 64 KiB and the last
//! 64; `--verify full` compares every byte.

use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use ringwire_benches::cli::parse_duration;
use ringwire_benches::cores::pin_current_thread;
use ringwire_benches::cpu::self_cpu_time;
use ringwire_proto::rkyv;
use ringwire_runtime::{spawn_local, Placement, Runtime};
use ringwire_transports::{connect, listen, type_id, Config, Connection, Endpoint, Error, Message};

const NAME: &str = "bulk-bench";

/// Largest message accepted on the command line (256 MiB).
const MAX_MESSAGE: usize = 256 << 20;

/// Bytes of the TCP loop's length prefix.
const LEN_PREFIX: usize = 8;

/// `--verify sample`: bytes compared at each stride.
const SAMPLE_LEN: usize = 64;
/// `--verify sample`: distance between compared windows.
const SAMPLE_STRIDE: usize = 64 << 10;

/// Payload offsets: message `seq` starts at `seq % PATTERN_SHIFTS` in the table.
const PATTERN_SHIFTS: u64 = 251;

/// The metadata message announcing one bulk segment.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct BulkMsg {
    /// Message number in its direction, from 0.
    pub seq: u64,
}

impl Message for BulkMsg {
    const TYPE_ID: u32 = type_id("bench.bulk.Msg");
    const NAME: &'static str = "bench.bulk.Msg";
}

// ------------------------------------------------------------ configuration

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Impl {
    /// A plain single-stream copy loop on std blocking sockets.
    Tcp,
    /// ringwire's two-phase bulk over tcp://.
    Ringwire,
}

impl Impl {
    fn as_str(self) -> &'static str {
        match self {
            Impl::Tcp => "tcp",
            Impl::Ringwire => "ringwire",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Test {
    /// The client sends N messages, then the server sends N back.
    Sync,
    /// Both directions at once.
    Async,
    /// Both directions at once, sizes from --mix-min to --mix-max.
    Mix,
}

impl Test {
    fn as_str(self) -> &'static str {
        match self {
            Test::Sync => "sync",
            Test::Async => "async",
            Test::Mix => "mix",
        }
    }

    /// Whether both directions run at once.
    fn concurrent(self) -> bool {
        self != Test::Sync
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Verify {
    /// 64 bytes every 64 KiB and the last 64 of each message.
    Sample,
    /// Every byte.
    Full,
}

impl Verify {
    fn as_str(self) -> &'static str {
        match self {
            Verify::Sample => "sample",
            Verify::Full => "full",
        }
    }
}

/// What both sides of a run agree on: the messages of each direction.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    test: Test,
    count: usize,
    size: usize,
    mix_min: usize,
    mix_max: usize,
    verify: Verify,
}

impl Plan {
    /// The distinct sizes of the mix test: `mix_min x 2^(k/2)` up to `mix_max`.
    fn mix_sizes(&self) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut k = 0i32;
        loop {
            let s = (self.mix_min as f64 * 2f64.powf(f64::from(k) / 2.0)).round() as usize;
            if s > self.mix_max {
                break;
            }
            if sizes.last() != Some(&s) {
                sizes.push(s);
            }
            k += 1;
        }
        if sizes.last() != Some(&self.mix_max) {
            sizes.push(self.mix_max);
        }
        sizes
    }

    /// The size of message `seq` (the same list in both directions).
    fn sizes(&self) -> Vec<usize> {
        match self.test {
            Test::Sync | Test::Async => vec![self.size; self.count],
            Test::Mix => {
                let distinct = self.mix_sizes();
                let n = distinct.len();
                // A stride coprime to n visits every size once per cycle,
                // large and small interleaved.
                let stride = (n / 2..n).find(|s| gcd(*s, n) == 1).unwrap_or(1);
                (0..self.count)
                    .map(|i| distinct[(i * stride) % n])
                    .collect()
            }
        }
    }

    fn max_size(&self) -> usize {
        match self.test {
            Test::Sync | Test::Async => self.size,
            Test::Mix => self.mix_max,
        }
    }

    /// Role arguments that reproduce this plan.
    fn args(&self) -> Vec<String> {
        vec![
            "--test".into(),
            self.test.as_str().into(),
            "--count".into(),
            self.count.to_string(),
            "--size".into(),
            self.size.to_string(),
            "--mix-min".into(),
            self.mix_min.to_string(),
            "--mix-max".into(),
            self.mix_max.to_string(),
            "--verify".into(),
            self.verify.as_str().into(),
        ]
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Bulk transfer over loopback shaped like net-queue's published tests:
/// ringwire's two-phase bulk against a plain single-stream TCP copy loop.
///
/// Without a role, runs the tests (each run is a fresh `server` and
/// `client` process of this binary) and prints a table and RESULT lines.
#[derive(Parser, Debug)]
#[command(
    name = "bulk-bench",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Sizes accept K and M suffixes (binary), durations 5, 2.5s or 500ms. \
                  Exit status: 0 ok, 1 runtime error (wrong bytes, failed connection, \
                  time limit), 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    role: Option<RoleCmd>,
    #[command(flatten)]
    driver: DriverFlags,
}

#[derive(Subcommand, Debug)]
enum RoleCmd {
    /// One server side of one run (started by the driver): prints
    /// `LISTENING ADDR`, then a SIDE line when done.
    Server(RoleFlags),
    /// One client side of one run (started by the driver): prints a SIDE
    /// line when done.
    Client(RoleFlags),
}

/// What both sides of a run must agree on.
#[derive(clap::Args, Debug, Clone)]
struct PlanFlags {
    /// Messages per direction [default: 256 sync/async, 124 mix].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    count: Option<u64>,
    /// sync/async message size.
    #[arg(long, value_name = "B", default_value = "2M", value_parser = parse_bytes)]
    size: usize,
    /// Smallest mix size.
    #[arg(long, value_name = "B", default_value = "256", value_parser = parse_bytes)]
    mix_min: usize,
    /// Largest mix size.
    #[arg(long, value_name = "B", default_value = "8M", value_parser = parse_bytes)]
    mix_max: usize,
    /// How much of each message is compared with what was sent.
    #[arg(long, value_enum, default_value_t = Verify::Sample)]
    verify: Verify,
    /// Limit per run (driver) or per process (roles).
    #[arg(long, value_name = "T", default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(clap::Args, Debug, Clone)]
struct DriverFlags {
    /// Implementations to run, interleaved.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tcp,ringwire"
    )]
    impls: Vec<Impl>,
    /// Tests to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sync,async,mix"
    )]
    tests: Vec<Test>,
    /// Interleaved rounds; the table and RESULT lines give medians.
    #[arg(long, value_name = "R", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    rounds: u64,
    /// CPU of the server process.
    #[arg(long, value_name = "N", default_value_t = 0)]
    server_core: usize,
    /// CPU of the client process.
    #[arg(long, value_name = "N", default_value_t = 1)]
    client_core: usize,
    #[command(flatten)]
    plan: PlanFlags,
}

#[derive(clap::Args, Debug, Clone)]
struct RoleFlags {
    /// Implementation.
    #[arg(long = "impl", value_enum)]
    imp: Impl,
    /// Test.
    #[arg(long, value_enum)]
    test: Test,
    /// Pin this process to CPU N.
    #[arg(long, value_name = "N")]
    core: Option<usize>,
    /// Server: where to listen, loopback only (port 0: any).
    #[arg(long, value_name = "ADDR", value_parser = parse_loopback)]
    listen: Option<SocketAddr>,
    /// Client: the server's address, loopback only.
    #[arg(long, value_name = "ADDR", value_parser = parse_loopback)]
    connect: Option<SocketAddr>,
    #[command(flatten)]
    plan: PlanFlags,
}

/// Parses a byte count with an optional K or M suffix (binary units).
fn parse_bytes(value: &str) -> Result<usize, String> {
    let (num, scale) = match value.as_bytes().last() {
        Some(b'K' | b'k') => (&value[..value.len() - 1], 1usize << 10),
        Some(b'M' | b'm') => (&value[..value.len() - 1], 1 << 20),
        _ => (value, 1),
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("expected a byte count like 256, 64K or 2M, not `{value}`"))?;
    let bytes = n
        .checked_mul(scale)
        .ok_or_else(|| format!("`{value}` is too large"))?;
    if bytes == 0 || bytes > MAX_MESSAGE {
        return Err(format!("sizes must be 1..={MAX_MESSAGE} bytes"));
    }
    Ok(bytes)
}

/// Parses an address and refuses anything but loopback.
fn parse_loopback(value: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = value
        .parse()
        .map_err(|e| format!("`{value}` is not an IP:PORT address: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{} is not a loopback address; bulk-bench only runs on this machine",
            addr.ip()
        ));
    }
    Ok(addr)
}

/// Which process this is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Driver,
    Server,
    Client,
}

/// The command line, checked.
#[derive(Debug, Clone)]
struct Args {
    role: Role,
    impls: Vec<Impl>,
    tests: Vec<Test>,
    rounds: usize,
    count: Option<usize>,
    size: usize,
    mix_min: usize,
    mix_max: usize,
    verify: Verify,
    server_core: usize,
    client_core: usize,
    timeout: Duration,
    imp: Option<Impl>,
    test: Option<Test>,
    core: Option<usize>,
    listen: Option<SocketAddr>,
    connect: Option<SocketAddr>,
}

/// Checks what clap parsed and flattens it into [`Args`].
fn args_from(cli: Cli) -> Result<Args, String> {
    let (role, plan, role_flags) = match cli.role {
        None => (Role::Driver, cli.driver.plan.clone(), None),
        Some(RoleCmd::Server(f)) => (Role::Server, f.plan.clone(), Some(f)),
        Some(RoleCmd::Client(f)) => (Role::Client, f.plan.clone(), Some(f)),
    };
    if plan.mix_min > plan.mix_max {
        return Err("--mix-min must not exceed --mix-max".into());
    }
    if plan.timeout.is_zero() {
        return Err("--timeout must be positive".into());
    }
    let d = cli.driver;
    let mut a = Args {
        role: role.clone(),
        impls: d.impls,
        tests: d.tests,
        rounds: d.rounds as usize,
        count: plan.count.map(|c| c as usize),
        size: plan.size,
        mix_min: plan.mix_min,
        mix_max: plan.mix_max,
        verify: plan.verify,
        server_core: d.server_core,
        client_core: d.client_core,
        timeout: plan.timeout,
        imp: None,
        test: None,
        core: None,
        listen: None,
        connect: None,
    };
    if let Some(f) = role_flags {
        match role {
            Role::Server if f.listen.is_none() => return Err("`server` needs --listen".into()),
            Role::Client if f.connect.is_none() => return Err("`client` needs --connect".into()),
            _ => {}
        }
        a.imp = Some(f.imp);
        a.test = Some(f.test);
        a.core = f.core;
        a.listen = f.listen;
        a.connect = f.connect;
    }
    Ok(a)
}

impl Args {
    fn plan(&self, test: Test) -> Plan {
        let count = self.count.unwrap_or(match test {
            Test::Sync | Test::Async => 256,
            // Four cycles over the 31 default sizes.
            Test::Mix => 124,
        });
        Plan {
            test,
            count,
            size: self.size,
            mix_min: self.mix_min,
            mix_max: self.mix_max,
            verify: self.verify,
        }
    }
}

// ------------------------------------------------------------ payload

/// The payload table every message is a window of.
struct Table {
    bytes: &'static [u8],
}

impl Table {
    /// A pseudo-random table long enough for messages of `max` bytes at every
    /// shift. Leaked: ringwire sends borrow from it (`&'static [u8]`).
    fn new(max: usize) -> Table {
        let len = max + PATTERN_SHIFTS as usize;
        let mut v = Vec::with_capacity(len);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while v.len() < len {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let word = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            let take = (len - v.len()).min(8);
            v.extend_from_slice(&word[..take]);
        }
        Table {
            bytes: Box::leak(v.into_boxed_slice()),
        }
    }

    /// The payload of message `seq` of `len` bytes.
    fn message(&self, seq: u64, len: usize) -> &'static [u8] {
        let at = (seq % PATTERN_SHIFTS) as usize;
        &self.bytes[at..at + len]
    }

    /// Checks received message `seq` against what was sent.
    fn check(&self, seq: u64, got: &[u8], expect_len: usize, verify: Verify) -> Result<(), String> {
        if got.len() != expect_len {
            return Err(format!(
                "message {seq}: {} bytes arrived, {expect_len} expected",
                got.len()
            ));
        }
        let expect = self.message(seq, expect_len);
        let differs = |range: std::ops::Range<usize>| got[range.clone()] != expect[range];
        let bad = match verify {
            Verify::Full => got != expect,
            Verify::Sample => {
                let tail = expect_len.saturating_sub(SAMPLE_LEN);
                (0..expect_len)
                    .step_by(SAMPLE_STRIDE)
                    .any(|at| differs(at..(at + SAMPLE_LEN).min(expect_len)))
                    || differs(tail..expect_len)
            }
        };
        if bad {
            let at = got
                .iter()
                .zip(expect)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "message {seq}: payload differs from what was sent (first at byte {at})"
            ));
        }
        Ok(())
    }
}

// ------------------------------------------------------------ measurements

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process, so the
/// driver can compare the two sides' timestamps.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec.max(0) as u64 * 1_000_000_000 + ts.tv_nsec.max(0) as u64
}

/// The `VmHWM` value (KiB) of a `/proc/PID/status` text.
fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// This process's peak resident set size in KiB.
fn peak_rss_kib() -> Option<u64> {
    parse_vm_hwm(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// What one side of a run reports: when its connection was up, when it had
/// received its last byte (or sent its last, if it receives nothing after),
/// and its costs.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Side {
    start_ns: u64,
    end_ns: u64,
    sent: u64,
    received: u64,
    cpu_s: f64,
    peak_rss_kib: u64,
}

impl Side {
    fn line(&self, role: &str) -> String {
        format!(
            "SIDE role={role} start_ns={} end_ns={} sent={} received={} cpu_s={:.4} peak_rss_kib={}",
            self.start_ns, self.end_ns, self.sent, self.received, self.cpu_s, self.peak_rss_kib
        )
    }

    fn parse(line: &str) -> Option<(String, Side)> {
        let rest = line.strip_prefix("SIDE ")?;
        let mut role = None;
        let mut side = Side {
            start_ns: 0,
            end_ns: 0,
            sent: 0,
            received: 0,
            cpu_s: 0.0,
            peak_rss_kib: 0,
        };
        let mut seen = 0;
        for kv in rest.split_ascii_whitespace() {
            let (k, v) = kv.split_once('=')?;
            match k {
                "role" => role = Some(v.to_owned()),
                "start_ns" => side.start_ns = v.parse().ok()?,
                "end_ns" => side.end_ns = v.parse().ok()?,
                "sent" => side.sent = v.parse().ok()?,
                "received" => side.received = v.parse().ok()?,
                "cpu_s" => side.cpu_s = v.parse().ok()?,
                "peak_rss_kib" => side.peak_rss_kib = v.parse().ok()?,
                _ => continue,
            }
            seen += 1;
        }
        (seen == 7).then_some(())?;
        Some((role?, side))
    }
}

/// Counts of one side's transfer, before costs are added.
struct Transfer {
    start_ns: u64,
    /// This process's CPU time when the transfer started.
    start_cpu_s: f64,
    end_ns: u64,
    sent: u64,
    received: u64,
}

/// CPU time of this process (all threads) so far, in seconds.
fn cpu_now_s() -> f64 {
    self_cpu_time().map_or(0.0, |d| d.as_secs_f64())
}

impl Transfer {
    fn new() -> Transfer {
        Transfer {
            start_ns: monotonic_ns(),
            start_cpu_s: cpu_now_s(),
            end_ns: 0,
            sent: 0,
            received: 0,
        }
    }

    /// The side's report: CPU time over the transfer (and the orderly close
    /// after it), peak RSS over the process's life.
    fn into_side(self) -> Side {
        Side {
            start_ns: self.start_ns,
            end_ns: self.end_ns,
            sent: self.sent,
            received: self.received,
            cpu_s: cpu_now_s() - self.start_cpu_s,
            peak_rss_kib: peak_rss_kib().unwrap_or(0),
        }
    }
}

// ------------------------------------------------------------ roles

/// Which side of the connection this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Server,
    Client,
}

fn role_main(args: &Args) -> Result<(), String> {
    let (Some(imp), Some(test)) = (args.imp, args.test) else {
        return Err("a role needs --impl and --test".into());
    };
    // Whatever happens, the process ends.
    let limit = args.timeout;
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!(
            "{NAME}: error: time limit of {:.0} s reached",
            limit.as_secs_f64()
        );
        std::process::exit(1);
    });
    if let Some(core) = args.core {
        pin_current_thread(core)?;
    }
    let plan = args.plan(test);
    let table = Table::new(plan.max_size());
    let (who, side) = match (&args.role, imp) {
        (Role::Server, Impl::Tcp) => {
            let Some(addr) = args.listen else {
                return Err("server needs --listen".into());
            };
            let listener =
                TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let bound = listener.local_addr().map_err(|e| e.to_string())?;
            announce(bound);
            (Who::Server, tcp_server(listener, &plan, &table)?)
        }
        (Role::Client, Impl::Tcp) => {
            let Some(addr) = args.connect else {
                return Err("client needs --connect".into());
            };
            (Who::Client, tcp_client(addr, &plan, &table)?)
        }
        (Role::Server, Impl::Ringwire) => {
            let Some(addr) = args.listen else {
                return Err("server needs --listen".into());
            };
            (
                Who::Server,
                ringwire_side(Who::Server, addr, args.core, &plan, table, announce)?,
            )
        }
        (Role::Client, Impl::Ringwire) => {
            let Some(addr) = args.connect else {
                return Err("client needs --connect".into());
            };
            (
                Who::Client,
                ringwire_side(Who::Client, addr, args.core, &plan, table, |_| ())?,
            )
        }
        (Role::Driver, _) => return Err("not a role".into()),
    };
    let role = match who {
        Who::Server => "server",
        Who::Client => "client",
    };
    println!("{}", side.line(role));
    Ok(())
}

/// Tells the driver where the server listens.
fn announce(addr: SocketAddr) {
    println!("LISTENING {addr}");
    let _ = io::stdout().flush();
}

/// Whether this side sends first in `sync` (the client does; the server
/// sends once it has received everything).
fn sends_first(who: Who) -> bool {
    who == Who::Client
}

// ------------------------------------------------------------ tcp

fn tcp_server(listener: TcpListener, plan: &Plan, table: &Table) -> Result<Side, String> {
    let (stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    drop(listener);
    tcp_run(stream, Who::Server, plan, table)
}

fn tcp_client(addr: SocketAddr, plan: &Plan, table: &Table) -> Result<Side, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    tcp_run(stream, Who::Client, plan, table)
}

fn tcp_run(stream: TcpStream, who: Who, plan: &Plan, table: &Table) -> Result<Side, String> {
    stream
        .set_nodelay(true)
        .map_err(|e| format!("setsockopt: {e}"))?;
    let sizes = plan.sizes();
    let mut buf = vec![0u8; plan.max_size()];
    let mut t = Transfer::new();
    if plan.test.concurrent() {
        let mut writer = stream.try_clone().map_err(|e| format!("dup: {e}"))?;
        let (sizes_w, table_bytes) = (sizes.clone(), table.bytes);
        let sender = std::thread::Builder::new()
            .name(format!("{NAME}-write"))
            .spawn(move || {
                let table = Table { bytes: table_bytes };
                tcp_send_all(&mut writer, &sizes_w, &table)
            })
            .map_err(|e| format!("cannot start the writer thread: {e}"))?;
        let received = tcp_recv_all(&stream, &sizes, table, plan.verify, &mut buf);
        t.end_ns = monotonic_ns();
        let sent = sender
            .join()
            .map_err(|_| "the writer thread panicked".to_owned())?;
        t.received = received?;
        t.sent = sent?;
    } else {
        let mut s = &stream;
        if sends_first(who) {
            t.sent = tcp_send_all(&mut s, &sizes, table)?;
            t.received = tcp_recv_all(&stream, &sizes, table, plan.verify, &mut buf)?;
        } else {
            t.received = tcp_recv_all(&stream, &sizes, table, plan.verify, &mut buf)?;
            t.sent = tcp_send_all(&mut s, &sizes, table)?;
        }
        t.end_ns = monotonic_ns();
    }
    // Wait for the peer to finish before closing, so no reset cuts its reads.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut rest = [0u8; 1];
    let _ = (&stream).read(&mut rest);
    Ok(t.into_side())
}

/// Writes every message (length prefix and payload in one vectored write).
fn tcp_send_all<W: Write>(w: &mut W, sizes: &[usize], table: &Table) -> Result<u64, String> {
    let mut sent = 0u64;
    for (seq, &len) in sizes.iter().enumerate() {
        let prefix = (len as u64).to_le_bytes();
        let payload = table.message(seq as u64, len);
        let mut bufs = [IoSlice::new(&prefix), IoSlice::new(payload)];
        write_all_vectored(w, &mut bufs).map_err(|e| format!("send of message {seq}: {e}"))?;
        sent += len as u64;
    }
    w.flush().map_err(|e| format!("flush: {e}"))?;
    Ok(sent)
}

fn write_all_vectored<W: Write>(w: &mut W, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads every message into `buf`, checking each.
fn tcp_recv_all(
    mut r: &TcpStream,
    sizes: &[usize],
    table: &Table,
    verify: Verify,
    buf: &mut [u8],
) -> Result<u64, String> {
    let mut received = 0u64;
    for (seq, &expect) in sizes.iter().enumerate() {
        let mut prefix = [0u8; LEN_PREFIX];
        r.read_exact(&mut prefix)
            .map_err(|e| format!("receive of message {seq}'s length: {e}"))?;
        let len = u64::from_le_bytes(prefix);
        if len != expect as u64 {
            return Err(format!(
                "message {seq}: announced {len} bytes, {expect} expected"
            ));
        }
        let dest = &mut buf[..expect];
        r.read_exact(dest)
            .map_err(|e| format!("receive of message {seq}: {e}"))?;
        table.check(seq as u64, dest, expect, verify)?;
        received += expect as u64;
    }
    Ok(received)
}

// ------------------------------------------------------------ ringwire

fn ringwire_config(plan: &Plan) -> Result<Config, String> {
    let max = u32::try_from(plan.max_size()).map_err(|_| "message too large for a bulk segment")?;
    Ok(Config::with_types::<(BulkMsg,)>()
        .map_err(|e| format!("schema: {e}"))?
        .max_bulk_segment(max))
}

/// Runs one side of a ringwire transfer on a one-core runtime. The server
/// listens on `addr` (port 0: any) and calls `on_listen` with the address it
/// bound; the client connects to `addr`.
fn ringwire_side(
    who: Who,
    addr: SocketAddr,
    core: Option<usize>,
    plan: &Plan,
    table: Table,
    on_listen: impl FnOnce(SocketAddr) + Send + 'static,
) -> Result<Side, String> {
    let placement = match core {
        Some(c) => Placement::Cpus(vec![c]),
        None => Placement::Unpinned(1),
    };
    let rt = Runtime::builder()
        .placement(placement)
        .thread_name(NAME)
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let cfg = ringwire_config(plan)?;
    let plan = plan.clone();
    let ep: Endpoint = format!("tcp://{addr}")
        .parse()
        .map_err(|e| format!("endpoint tcp://{addr}: {e}"))?;
    let result = rt
        .block_on(0, move || async move {
            let conn = match who {
                Who::Server => {
                    let mut l = listen(&ep, &cfg).await.map_err(|e| describe(&ep, e))?;
                    let port = l
                        .endpoint()
                        .port()
                        .ok_or_else(|| format!("the listener on {ep} has no port"))?;
                    on_listen(SocketAddr::new(addr.ip(), port));
                    l.accept()
                        .await
                        .ok_or("the listener closed before a connection arrived")?
                        .map_err(|e| format!("handshake: {e}"))?
                }
                Who::Client => connect(&ep, &cfg).await.map_err(|e| describe(&ep, e))?,
            };
            let t = ringwire_transfer(&conn, who, &plan, table).await?;
            let _ = conn.close().await;
            Ok::<Transfer, String>(t)
        })
        .map_err(|e| format!("the core stopped: {e:?}"))?;
    let report = rt.shutdown(Duration::from_secs(5));
    if report.cores_panicked > 0 {
        return Err(format!("{} cores panicked", report.cores_panicked));
    }
    Ok(result?.into_side())
}

/// A transport error, saying plainly when `tcp://` is missing from the build.
fn describe(ep: &Endpoint, e: Error) -> String {
    match e {
        Error::NotEnabled { .. } => format!("SKIP {ep}: {e}"),
        e => format!("{ep}: {e}"),
    }
}

async fn ringwire_transfer(
    conn: &Connection,
    who: Who,
    plan: &Plan,
    table: Table,
) -> Result<Transfer, String> {
    let sizes = plan.sizes();
    let mut t = Transfer::new();
    if plan.test.concurrent() {
        let sender = {
            let conn = conn.clone();
            let sizes = sizes.clone();
            let bytes = table.bytes;
            spawn_local(async move { ringwire_send_all(&conn, &sizes, &Table { bytes }).await })
        };
        let received = ringwire_recv_all(conn, &sizes, &table, plan.verify).await;
        t.end_ns = monotonic_ns();
        let sent = sender
            .await
            .map_err(|e| format!("the sender task failed: {e:?}"))?;
        t.received = received?;
        t.sent = sent?;
    } else {
        if sends_first(who) {
            t.sent = ringwire_send_all(conn, &sizes, &table).await?;
            t.received = ringwire_recv_all(conn, &sizes, &table, plan.verify).await?;
        } else {
            t.received = ringwire_recv_all(conn, &sizes, &table, plan.verify).await?;
            t.sent = ringwire_send_all(conn, &sizes, &table).await?;
        }
        t.end_ns = monotonic_ns();
    }
    Ok(t)
}

async fn ringwire_send_all(
    conn: &Connection,
    sizes: &[usize],
    table: &Table,
) -> Result<u64, String> {
    let mut sent = 0u64;
    for (seq, &len) in sizes.iter().enumerate() {
        let seq = seq as u64;
        let segment: &'static [u8] = table.message(seq, len);
        conn.send_bulk(&BulkMsg { seq }, vec![segment])
            .await
            .map_err(|e| format!("send_bulk of message {seq}: {e}"))?;
        sent += len as u64;
    }
    Ok(sent)
}

async fn ringwire_recv_all(
    conn: &Connection,
    sizes: &[usize],
    table: &Table,
    verify: Verify,
) -> Result<u64, String> {
    let mut received = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(sizes.iter().copied().max().unwrap_or(0));
    for (seq, &expect) in sizes.iter().enumerate() {
        let seq = seq as u64;
        let mut msg = conn
            .recv::<BulkMsg>()
            .await
            .map_err(|e| format!("receive of message {seq}: {e}"))?;
        let got_seq = msg.seq.to_native();
        if got_seq != seq {
            return Err(format!("message {seq} expected, {got_seq} arrived"));
        }
        let sizes_announced = msg
            .incoming()
            .bulk_sizes()
            .ok_or_else(|| format!("message {seq} announced no bulk segment"))?;
        if sizes_announced != [expect as u32] {
            return Err(format!(
                "message {seq}: segments {sizes_announced:?} announced, [{expect}] expected"
            ));
        }
        buf.clear();
        buf.reserve_exact(expect);
        let mut filled = msg
            .incoming_mut()
            .accept_bulk(vec![buf])
            .await
            .map_err(|e| format!("accept_bulk of message {seq}: {e}"))?;
        drop(msg);
        buf = filled.pop().ok_or("accept_bulk returned no buffer")?;
        table.check(seq, &buf, expect, verify)?;
        received += expect as u64;
    }
    Ok(received)
}

// ------------------------------------------------------------ driver

/// One run's outcome as the driver sees it.
#[derive(Debug, Clone, Copy)]
struct RunResult {
    secs: f64,
    bytes: u64,
    ops: u64,
    server: Side,
    client: Side,
}

enum Outcome {
    Done(RunResult),
    Skipped(String),
}

/// Kills a child the driver started if it is still running, and reaps it.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn spawn_role(
    role: &str,
    imp: Impl,
    plan: &Plan,
    core: usize,
    addr_flag: (&str, String),
    timeout: Duration,
) -> Result<Reaped, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg(role)
        .args(["--impl", imp.as_str()])
        .args(plan.args())
        .args(["--core", &core.to_string()])
        .args([addr_flag.0, &addr_flag.1])
        .args(["--timeout", &format!("{}ms", timeout.as_millis())])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn()
        .map(Reaped)
        .map_err(|e| format!("cannot start the {role}: {e}"))
}

/// Reads a child's stdout and stderr lines on threads, into one channel.
fn collect_output(
    child: &mut Child,
    tag: &'static str,
    tx: &mpsc::Sender<(&'static str, bool, String)>,
) {
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((tag, false, line));
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send((tag, true, line));
            }
        });
    }
}

/// Waits for `child` to exit within `deadline`.
fn wait_until(child: &mut Reaped, deadline: Instant, what: &str) -> Result<(), String> {
    loop {
        match child.0.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("the {what} failed ({status})")),
            Ok(None) if Instant::now() >= deadline => {
                return Err(format!("the {what} did not finish in time"))
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for the {what}: {e}")),
        }
    }
}

fn run_once(args: &Args, imp: Impl, plan: &Plan) -> Result<Outcome, String> {
    let deadline = Instant::now() + args.timeout;
    let (tx, rx) = mpsc::channel();
    let mut server = spawn_role(
        "server",
        imp,
        plan,
        args.server_core,
        ("--listen", "127.0.0.1:0".into()),
        args.timeout,
    )?;
    collect_output(&mut server.0, "server", &tx);
    // The server says where it listens, or why it cannot.
    let mut lines: Vec<(&str, bool, String)> = Vec::new();
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok((tag, is_err, line)) => {
                if let Some(a) = line.strip_prefix("LISTENING ") {
                    break a.to_owned();
                }
                lines.push((tag, is_err, line));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = server.0.try_wait() {
                    // Drain what it printed before exiting.
                    std::thread::sleep(Duration::from_millis(50));
                    lines.extend(rx.try_iter());
                    let text = lines
                        .iter()
                        .map(|l| l.2.as_str())
                        .collect::<Vec<_>>()
                        .join("\n");
                    if let Some(pos) = text.find("SKIP ") {
                        return Ok(Outcome::Skipped(
                            text[pos + 5..].lines().next().unwrap_or("").to_owned(),
                        ));
                    }
                    return Err(format!(
                        "the server exited ({status}) before listening:\n{text}"
                    ));
                }
                if Instant::now() >= deadline {
                    return Err("the server did not listen in time".into());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err("the server closed its output before listening".into())
            }
        }
    };
    let mut client = spawn_role(
        "client",
        imp,
        plan,
        args.client_core,
        ("--connect", addr),
        args.timeout,
    )?;
    collect_output(&mut client.0, "client", &tx);
    drop(tx);
    let waited = wait_until(&mut client, deadline, "client")
        .and_then(|()| wait_until(&mut server, deadline, "server"));
    drop(client);
    drop(server);
    lines.extend(rx.iter());
    if let Err(e) = waited {
        let text = lines
            .iter()
            .map(|(tag, _, l)| format!("  {tag}: {l}"))
            .collect::<Vec<_>>()
            .join("\n");
        return Err(format!("{e}\n{text}"));
    }
    for (tag, is_err, line) in &lines {
        if *is_err {
            eprintln!("  {tag}: {line}");
        }
    }
    let side = |want: &str| {
        lines
            .iter()
            .filter_map(|(_, _, l)| Side::parse(l))
            .find(|(role, _)| role == want)
            .map(|(_, s)| s)
            .ok_or_else(|| format!("the {want} printed no SIDE line"))
    };
    let (server, client) = (side("server")?, side("client")?);
    let expect: u64 = plan.sizes().iter().map(|&s| s as u64).sum();
    for (name, s) in [("server", &server), ("client", &client)] {
        if s.sent != expect || s.received != expect {
            return Err(format!(
                "the {name} moved {} bytes out and {} in, {expect} each expected",
                s.sent, s.received
            ));
        }
    }
    let start = server.start_ns.min(client.start_ns);
    let end = server.end_ns.max(client.end_ns);
    let secs = end.saturating_sub(start) as f64 / 1e9;
    if secs <= 0.0 {
        return Err("the transfer took no measurable time".into());
    }
    Ok(Outcome::Done(RunResult {
        secs,
        bytes: 2 * expect,
        ops: 2 * plan.count as u64,
        server,
        client,
    }))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians over rounds of one implementation and test.
#[derive(Debug, Clone, Copy)]
struct Summary {
    secs: f64,
    gbit_per_s: f64,
    ops_per_s: f64,
    bytes: u64,
    ops: u64,
    server_cpu_s: f64,
    client_cpu_s: f64,
    server_rss_kib: f64,
    client_rss_kib: f64,
}

fn summarize(runs: &[RunResult]) -> Summary {
    let m = |f: fn(&RunResult) -> f64| median(runs.iter().map(f).collect());
    Summary {
        secs: m(|r| r.secs),
        gbit_per_s: m(|r| r.bytes as f64 * 8.0 / r.secs / 1e9),
        ops_per_s: m(|r| r.ops as f64 / r.secs),
        bytes: runs.first().map_or(0, |r| r.bytes),
        ops: runs.first().map_or(0, |r| r.ops),
        server_cpu_s: m(|r| r.server.cpu_s),
        client_cpu_s: m(|r| r.client.cpu_s),
        server_rss_kib: m(|r| r.server.peak_rss_kib as f64),
        client_rss_kib: m(|r| r.client.peak_rss_kib as f64),
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "na".into()
    }
}

fn driver(args: &Args) -> Result<(), String> {
    let mut results: Vec<(Test, Impl, Summary)> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for &test in &args.tests {
        let plan = args.plan(test);
        let mut runs: Vec<(Impl, Vec<RunResult>)> =
            args.impls.iter().map(|&i| (i, Vec::new())).collect();
        for round in 1..=args.rounds {
            for (imp, list) in &mut runs {
                if skipped.iter().any(|s| s.starts_with(imp.as_str())) {
                    continue;
                }
                match run_once(args, *imp, &plan)? {
                    Outcome::Done(r) => {
                        println!(
                            "== [{round}/{}] {} {}: {:.3} s, {:.2} Gbit/s, peak RSS server {} KiB client {} KiB",
                            args.rounds,
                            test.as_str(),
                            imp.as_str(),
                            r.secs,
                            r.bytes as f64 * 8.0 / r.secs / 1e9,
                            r.server.peak_rss_kib,
                            r.client.peak_rss_kib
                        );
                        list.push(r);
                    }
                    Outcome::Skipped(why) => {
                        println!("== {} {}: skipped: {why}", test.as_str(), imp.as_str());
                        skipped.push(format!("{}: {why}", imp.as_str()));
                    }
                }
            }
        }
        for (imp, list) in runs {
            if !list.is_empty() {
                results.push((test, imp, summarize(&list)));
            }
        }
    }
    print_results(args, &results, &skipped);
    Ok(())
}

fn print_results(args: &Args, results: &[(Test, Impl, Summary)], skipped: &[String]) {
    let note = if args.rounds > 1 {
        format!(" (median of {} rounds)", args.rounds)
    } else {
        String::new()
    };
    println!();
    println!(
        "== bulk transfer{note}: server on CPU {}, client on CPU {}, verify {}",
        args.server_core,
        args.client_core,
        args.verify.as_str()
    );
    let fmt_row = |c: [&str; 10]| {
        format!(
            "{:<6} | {:<8} | {:>10} | {:>8} | {:>7} | {:>9} | {:>10} | {:>10} | {:>7} | {:>7}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9]
        )
    };
    println!(
        "{}",
        fmt_row([
            "test", "impl", "MB moved", "Gbit/s", "x tcp", "ops/s", "srv RSS", "cli RSS",
            "srv CPU", "cli CPU"
        ])
    );
    let tcp_of = |test: Test| {
        results
            .iter()
            .find(|(t, i, _)| *t == test && *i == Impl::Tcp)
            .map(|(_, _, s)| *s)
    };
    let mut lines = Vec::new();
    for (test, imp, s) in results {
        let tcp = tcp_of(*test);
        let x = tcp.map_or("na".into(), |t| ratio(s.gbit_per_s, t.gbit_per_s));
        println!(
            "{}",
            fmt_row([
                test.as_str(),
                imp.as_str(),
                &format!("{:.0}", s.bytes as f64 / 1e6),
                &format!("{:.2}", s.gbit_per_s),
                &x,
                &format!("{:.0}", s.ops_per_s),
                &format!("{:.1} MB", s.server_rss_kib / 1024.0),
                &format!("{:.1} MB", s.client_rss_kib / 1024.0),
                &format!("{:.2}s", s.server_cpu_s),
                &format!("{:.2}s", s.client_cpu_s),
            ])
        );
        let mut line = format!(
            "RESULT impl={} test={}{} rounds={} bytes={} ops={} secs={:.4} gbit_per_s={:.3} ops_per_s={:.1} \
             server_cpu_s={:.3} client_cpu_s={:.3} server_peak_rss_kib={:.0} client_peak_rss_kib={:.0}",
            imp.as_str(),
            test.as_str(),
            match test {
                Test::Mix => String::new(),
                Test::Sync | Test::Async => format!(" size={}", args.size),
            },
            args.rounds,
            s.bytes,
            s.ops,
            s.secs,
            s.gbit_per_s,
            s.ops_per_s,
            s.server_cpu_s,
            s.client_cpu_s,
            s.server_rss_kib,
            s.client_rss_kib,
        );
        if let (Some(t), false) = (tcp, *imp == Impl::Tcp) {
            line.push_str(&format!(
                " gbit_x_tcp={} ops_x_tcp={} server_rss_x_tcp={} client_rss_x_tcp={}",
                ratio(s.gbit_per_s, t.gbit_per_s),
                ratio(s.ops_per_s, t.ops_per_s),
                ratio(s.server_rss_kib, t.server_rss_kib),
                ratio(s.client_rss_kib, t.client_rss_kib)
            ));
        }
        lines.push(line);
    }
    println!("Gbit/s and ops/s count payload bytes and messages of both directions; RSS is VmHWM.");
    for s in skipped {
        println!("SKIP bulk {s}");
    }
    for l in lines {
        println!("{l}");
    }
}

fn main() -> ExitCode {
    // Bad arguments, and --help / --version: clap prints and exits (2, 0).
    let args = match args_from(Cli::parse()) {
        Ok(a) => a,
        Err(e) => Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, e)
            .exit(),
    };
    let result = match args.role {
        Role::Driver => driver(&args),
        Role::Server | Role::Client => role_main(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(test: Test, count: usize) -> Plan {
        Plan {
            test,
            count,
            size: 3000,
            mix_min: 256,
            mix_max: 8 << 20,
            verify: Verify::Full,
        }
    }

    #[test]
    fn mix_sizes_span_the_range_in_half_octaves() {
        let p = plan(Test::Mix, 62);
        let d = p.mix_sizes();
        assert_eq!(d.len(), 31);
        assert_eq!(d[0], 256);
        assert_eq!(d[1], 362);
        assert_eq!(*d.last().unwrap(), 8 << 20);
        let sizes = p.sizes();
        // Every size once per cycle, neighbours far apart.
        let mut cycle = sizes[..31].to_vec();
        cycle.sort_unstable();
        assert_eq!(cycle, d);
        assert!(sizes.windows(2).all(|w| w[0] != w[1]));
        // A range that is not a power-of-two multiple still ends at the max.
        let odd = Plan { mix_max: 1000, ..p };
        assert_eq!(odd.mix_sizes(), [256, 362, 512, 724, 1000]);
    }

    #[test]
    fn table_checks_catch_wrong_order_length_and_bytes() {
        let t = Table::new(200_000);
        let m = t.message(3, 200_000).to_vec();
        for v in [Verify::Sample, Verify::Full] {
            t.check(3, &m, 200_000, v).unwrap();
            assert!(t.check(4, &m, 200_000, v).is_err(), "other message");
            assert!(t.check(3, &m[..199_999], 200_000, v).is_err(), "short");
        }
        let mut bad = m.clone();
        bad[199_990] ^= 1;
        assert!(t.check(3, &bad, 200_000, Verify::Sample).is_err(), "tail");
        let mut mid = m;
        mid[70_000] ^= 1;
        assert!(t.check(3, &mid, 200_000, Verify::Full).is_err());
    }

    #[test]
    fn side_lines_round_trip() {
        let s = Side {
            start_ns: 5,
            end_ns: 9,
            sent: 100,
            received: 200,
            cpu_s: 0.5,
            peak_rss_kib: 1234,
        };
        assert_eq!(Side::parse(&s.line("client")), Some(("client".into(), s)));
        assert_eq!(Side::parse("SIDE role=x start_ns=1"), None);
        assert_eq!(parse_vm_hwm("Name: x\nVmHWM:\t  4242 kB\n"), Some(4242));
        assert!(peak_rss_kib().unwrap() > 0);
    }

    fn parse_cli(line: &str) -> Result<Args, String> {
        let argv = std::iter::once("bulk-bench").chain(line.split_whitespace());
        args_from(Cli::try_parse_from(argv).map_err(|e| e.to_string())?)
    }

    #[test]
    fn cli_roles_and_limits() {
        let a = parse_cli("--tests sync,mix --size 1M").unwrap();
        assert_eq!(a.role, Role::Driver);
        assert_eq!(a.tests, [Test::Sync, Test::Mix]);
        assert_eq!(a.impls, [Impl::Tcp, Impl::Ringwire]);
        assert_eq!(a.size, 1 << 20);
        assert!(
            parse_cli("server --impl tcp --test sync").is_err(),
            "no --listen"
        );
        assert!(parse_cli("client --impl tcp --test sync --connect 10.0.0.1:5").is_err());
        assert!(parse_cli("--mix-min 9M").is_err());
        assert!(parse_cli("--size 0").is_err());
        assert!(parse_cli("--count 0").is_err());
        assert!(parse_cli("--tests sync server --impl tcp --test sync").is_err());
        let c =
            parse_cli("client --impl ringwire --test async --connect 127.0.0.1:5 --timeout 1500ms")
                .unwrap();
        assert_eq!((c.imp, c.test), (Some(Impl::Ringwire), Some(Test::Async)));
        assert_eq!(c.timeout, Duration::from_millis(1500));
        // What the driver passes to a role parses back to the same plan.
        let p = a.plan(Test::Mix);
        let mut line = format!(
            "server --impl tcp --listen 127.0.0.1:0 {}",
            p.args().join(" ")
        );
        line.push_str(" --core 0");
        assert_eq!(parse_cli(&line).unwrap().plan(Test::Mix), p);
    }

    /// Both sides of the TCP loop in threads of this process, every byte
    /// checked, for each test.
    fn tcp_pair(p: &Plan) -> (Side, Side) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sp = p.clone();
        let server = std::thread::spawn(move || {
            let table = Table::new(sp.max_size());
            tcp_server(listener, &sp, &table).unwrap()
        });
        let table = Table::new(p.max_size());
        let client = tcp_client(addr, p, &table).unwrap();
        (server.join().unwrap(), client)
    }

    fn test_plans() -> [Plan; 3] {
        [
            plan(Test::Sync, 20),
            plan(Test::Async, 20),
            Plan {
                mix_max: 1 << 20,
                ..plan(Test::Mix, 30)
            },
        ]
    }

    /// Both sides of ringwire's bulk transfer, each on its own one-core
    /// runtime in this process, every byte checked, for each test.
    #[test]
    fn ringwire_bulk_moves_every_message_both_ways() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for p in test_plans() {
            let expect: u64 = p.sizes().iter().map(|&s| s as u64).sum();
            let (tx, rx) = mpsc::channel();
            let sp = p.clone();
            let server = std::thread::spawn(move || {
                let table = Table::new(sp.max_size());
                ringwire_side(Who::Server, any, None, &sp, table, move |a| {
                    tx.send(a).unwrap()
                })
            });
            let addr = rx.recv_timeout(Duration::from_secs(30)).unwrap();
            let table = Table::new(p.max_size());
            let client = ringwire_side(Who::Client, addr, None, &p, table, |_| ()).unwrap();
            let server = server.join().unwrap().unwrap();
            for side in [server, client] {
                assert_eq!((side.sent, side.received), (expect, expect), "{p:?}");
            }
        }
    }

    #[test]
    fn tcp_loop_moves_every_message_both_ways() {
        for p in test_plans() {
            let expect: u64 = p.sizes().iter().map(|&s| s as u64).sum();
            let (s, c) = tcp_pair(&p);
            for side in [s, c] {
                assert_eq!((side.sent, side.received), (expect, expect), "{p:?}");
                assert!(side.end_ns >= side.start_ns);
            }
        }
    }
}
