//! Measurement and command line of the typed benchmark clients.
//!
//! Every client (ringwire, tokio, ZeroMQ; the bulk and `mem://` runs too)
//! takes the same flags ([`ClientArgs`]), records each round trip in an HDR
//! histogram through a [`Meter`], and prints a readable summary followed by
//! one `RESULT key=value ...` line ([`Report::result_line`]) that
//! `benches/typed.sh` collects.
//!
//! A run is a warm-up, then the measured interval. At the start and end of
//! the measured interval the meter reads the server's CPU time
//! (`/proc/PID/stat`, all threads), the client's own (`getrusage`) and the
//! whole machine's busy time (`/proc/stat`), so a report gives messages per
//! server CPU-second and shows how much else was running.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;

use crate::cli::{parse_duration, server_cores_help, CoreArgs};
use crate::cores::CoreSpec;
use crate::cpu::{machine_busy_time, process_cpu_time, self_cpu_time};
use crate::typed::{Codec, Target, MAX_LEN};

/// Peak resident set size (`VmHWM`, KiB) of process `pid`, or of this
/// process for `None`.
pub fn peak_rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    parse_vm_hwm(&status)
}

/// The `VmHWM` value (KiB) of a `/proc/PID/status` text.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// The two workloads of the request/reply clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Many connections, many requests in flight on each.
    Throughput,
    /// One request in flight.
    #[value(name = "pingpong", alias = "ping-pong")]
    PingPong,
}

impl Mode {
    /// The name used on the command line and in RESULT lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Throughput => "throughput",
            Mode::PingPong => "pingpong",
        }
    }
}

/// Flags shared by the request/reply clients, checked: what a client runs
/// with.
#[derive(Debug, Clone)]
pub struct ClientArgs {
    /// Where the server listens.
    pub endpoint: String,
    /// Workload.
    pub mode: Mode,
    /// Connections.
    pub conns: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Request payload bytes.
    pub size: usize,
    /// Reply payload bytes.
    pub reply_size: usize,
    /// Serialization (tokio only; the other stacks use rkyv).
    pub codec: Codec,
    /// Timing and accounting.
    pub meter: MeterConfig,
    /// CPU to pin the client to.
    pub core: Option<usize>,
    /// Stack name for the RESULT line.
    pub label: String,
    /// Keep retrying the first connect this long while the server starts.
    pub wait: Duration,
    /// `tls://`: the directory with `ca.pem` (see [`crate::tls`]).
    pub tls_dir: Option<PathBuf>,
}

/// The client's flags as given, before the mode-dependent defaults and the
/// range checks of [`ClientArgs::from_flags`].
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Durations accept 5, 2.5s or 500ms. Every reply is checked (id and payload); \
                  a wrong or missing reply fails the run. Exit status: 0 ok, 1 runtime error, \
                  2 usage error."
)]
pub struct ClientFlags {
    /// Where the server listens: tcp://127.0.0.1:PORT, tls://127.0.0.1:PORT
    /// or unix:///path.
    #[arg(long, value_name = "E")]
    pub endpoint: String,
    /// Workload.
    #[arg(long, value_name = "M", value_enum, default_value_t = Mode::Throughput)]
    pub mode: Mode,
    /// Connections (default 64 throughput, 1 pingpong).
    #[arg(long, value_name = "C")]
    pub conns: Option<usize>,
    /// Requests in flight per connection (default 16; pingpong is always 1).
    #[arg(long, value_name = "D")]
    pub depth: Option<usize>,
    /// Request payload bytes (default 1024 throughput, 64 pingpong).
    #[arg(long, value_name = "S")]
    pub size: Option<usize>,
    /// Reply payload bytes (default: --size).
    #[arg(long, value_name = "S")]
    pub reply_size: Option<usize>,
    /// rkyv | bincode (tokio only).
    #[arg(long, value_name = "C", default_value = "rkyv")]
    pub codec: Codec,
    /// Warm-up before measuring.
    #[arg(long, value_name = "T", default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Measured interval.
    #[arg(long, value_name = "T", default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Pin the client to CPU N.
    #[arg(long, value_name = "N")]
    pub core: Option<usize>,
    /// Report the server's CPU time and peak RSS.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Stack name for the RESULT line (default: the program's name).
    #[arg(long, value_name = "NAME")]
    pub label: Option<String>,
    /// Retry the first connect for up to T.
    #[arg(long, value_name = "T", default_value = "2s", value_parser = parse_duration)]
    pub wait: Duration,
    /// Fail if no reply arrives for T.
    #[arg(long, value_name = "T", default_value = "5s", value_parser = parse_duration)]
    pub stall_timeout: Duration,
    /// tls:// endpoints: DIR/ca.pem verifies the server.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
}

impl ClientArgs {
    /// Checks what clap cannot: the mode-dependent defaults and the ranges.
    /// The label defaults to `default_label`.
    pub fn from_flags(f: ClientFlags, default_label: &str) -> Result<ClientArgs, String> {
        let (conns, depth, size) = match f.mode {
            Mode::Throughput => (
                f.conns.unwrap_or(64),
                f.depth.unwrap_or(16),
                f.size.unwrap_or(1024),
            ),
            Mode::PingPong => {
                if f.depth.is_some_and(|d| d != 1) {
                    return Err(
                        "pingpong mode keeps exactly one request in flight; drop `--depth`".into(),
                    );
                }
                (f.conns.unwrap_or(1), 1, f.size.unwrap_or(64))
            }
        };
        let reply_size = f.reply_size.unwrap_or(size);
        if conns == 0 || conns > 4096 {
            return Err("`--conns` must be 1..=4096".into());
        }
        if depth == 0 || depth > 1024 {
            return Err("`--depth` must be 1..=1024".into());
        }
        if size > MAX_LEN || reply_size > MAX_LEN {
            return Err(format!(
                "`--size` and `--reply-size` must be at most {MAX_LEN}"
            ));
        }
        let meter = MeterConfig {
            warmup: f.warmup,
            duration: f.duration,
            server_pid: f.server_pid,
            stall_timeout: f.stall_timeout,
        };
        meter.check()?;
        let label = f.label.unwrap_or_else(|| default_label.to_owned());
        if label.is_empty() || label.contains(char::is_whitespace) {
            return Err("`--label` must be one word".into());
        }
        Ok(ClientArgs {
            endpoint: f.endpoint,
            mode: f.mode,
            conns,
            depth,
            size,
            reply_size,
            codec: f.codec,
            meter,
            core: f.core,
            label,
            wait: f.wait,
            tls_dir: f.tls_dir,
        })
    }

    /// The endpoint as a [`Target`] (loopback TCP or a Unix path).
    pub fn target(&self) -> Result<Target, String> {
        Target::parse(&self.endpoint)
    }

    /// A time after which the process must have finished, whatever happens.
    pub fn hard_limit(&self) -> Duration {
        self.wait
            + self.meter.warmup
            + self.meter.duration
            + self.meter.stall_timeout
            + Duration::from_secs(10)
            + Duration::from_millis(20).saturating_mul(self.conns as u32)
    }

    /// The RESULT line's description of the workload.
    pub fn workload(&self, transport: &str) -> Workload {
        Workload {
            stack: self.label.clone(),
            transport: transport.to_owned(),
            mode: self.mode.as_str().to_owned(),
            codec: self.codec.as_str().to_owned(),
            conns: self.conns,
            depth: self.depth,
            size: self.size,
            reply_size: self.reply_size,
        }
    }
}

/// Flags shared by the typed servers.
#[derive(Debug, Clone)]
pub struct ServerArgs {
    /// Where to listen.
    pub endpoint: String,
    /// Cores to serve on (one pinned executor each).
    pub cores: CoreSpec,
    /// Serialization (tokio only).
    pub codec: Codec,
    /// `tls://`: the directory with `server.pem` and `server.key` (see
    /// [`crate::tls`]).
    pub tls_dir: Option<PathBuf>,
    /// ringwire servers: the cores' idle strategy (`None`: the runtime's
    /// default).
    pub idle: Option<ringwire::runtime::IdleStrategy>,
    /// ringwire servers: print per-request kernel and loop counters at exit.
    pub stats: bool,
    /// ringwire servers: receive buffers per core (`None`: the runtime's
    /// default).
    pub recv_buffers: Option<u16>,
}

/// The server's flags as given.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerFlags {
    /// Where to listen: tcp://127.0.0.1:PORT, tls://127.0.0.1:PORT or
    /// unix:///path.
    #[arg(long, value_name = "E")]
    pub endpoint: String,
    /// Cores to serve on: `--cpus LIST` or `--cores N`.
    #[command(flatten)]
    pub cores: CoreArgs,
    /// rkyv | bincode (tokio only).
    #[arg(long, value_name = "C", default_value = "rkyv")]
    pub codec: Codec,
    /// tls:// endpoints: DIR/server.pem and DIR/server.key.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// ringwire servers only: park | poll | spin | spin:MICROS (default:
    /// the runtime's, spin:50).
    #[arg(long, value_name = "S")]
    pub idle: Option<ringwire::runtime::IdleStrategy>,
    /// ringwire servers only: at exit, print the requests served and the
    /// runtime's counters per request (SQEs, io_uring_enter calls, loop
    /// turns, parks).
    #[arg(long)]
    pub stats: bool,
    /// ringwire servers only: receive buffers per core (default: the
    /// runtime's, 256 of 16 KiB).
    #[arg(long, value_name = "N")]
    pub recv_buffers: Option<u16>,
}

impl ServerArgs {
    /// The server's settings from its flags; one core unless `--cpus` or
    /// `--cores` say otherwise.
    pub fn from_flags(f: ServerFlags) -> ServerArgs {
        ServerArgs {
            endpoint: f.endpoint,
            cores: CoreSpec::from_args(&f.cores, 1),
            codec: f.codec,
            tls_dir: f.tls_dir,
            idle: f.idle,
            stats: f.stats,
            recv_buffers: f.recv_buffers,
        }
    }
}

/// The two halves of a typed benchmark binary.
pub enum Role {
    /// `NAME server ...`.
    Server(ServerArgs),
    /// `NAME client ...`.
    Client(ClientArgs),
}

/// One stack of the typed request/reply benchmark (`benches/typed.sh`):
/// `server` answers requests, `client` loads a server and measures.
#[derive(Parser, Debug)]
#[command(version, subcommand_required = true, arg_required_else_help = true)]
struct TypedCli {
    #[command(subcommand)]
    role: RoleFlags,
}

#[derive(Subcommand, Debug)]
enum RoleFlags {
    /// Answer every request with a reply of the size it asks for, until
    /// SIGINT/SIGTERM; prints `READY <endpoint>` on stderr once listening.
    Server(ServerFlags),
    /// Load a server with requests and check every reply; prints a summary
    /// and one RESULT line.
    Client(ClientFlags),
}

/// Parses `NAME server|client [flags]` (`args` starts with the program
/// name). `--help` and `--version` come back as errors whose exit code is 0.
pub fn parse_role<I, T>(name: &'static str, args: I) -> Result<Role, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut cmd = TypedCli::command()
        .name(name)
        .bin_name(name)
        .mut_subcommand("server", |server| server_cores_help(server, 1));
    let matches = cmd.try_get_matches_from_mut(args)?;
    match TypedCli::from_arg_matches(&matches)?.role {
        RoleFlags::Server(f) => Ok(Role::Server(ServerArgs::from_flags(f))),
        RoleFlags::Client(f) => ClientArgs::from_flags(f, name)
            .map(Role::Client)
            .map_err(|e| {
                let kind = clap::error::ErrorKind::ValueValidation;
                match cmd.find_subcommand_mut("client") {
                    Some(client) => client.error(kind, e),
                    None => cmd.error(kind, e),
                }
            }),
    }
}

/// Parses `NAME server|client [flags]` from the process arguments; on
/// `--help` or `--version` prints and exits with 0, on an error prints it
/// and exits with 2.
pub fn role_from_env_or_exit(name: &'static str) -> Role {
    parse_role(name, std::env::args_os()).unwrap_or_else(|e| e.exit())
}

/// Ends the process with status 1 after `limit`, whatever the client is
/// doing (a benchmark must be bounded in time).
pub fn arm_hard_limit(name: &str, limit: Duration) {
    let name = name.to_owned();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!(
            "{name}: error: hard time limit of {:.1} s reached",
            limit.as_secs_f64()
        );
        std::process::exit(1);
    });
}

/// Timing and accounting settings of a [`Meter`].
#[derive(Debug, Clone)]
pub struct MeterConfig {
    /// Warm-up before measuring.
    pub warmup: Duration,
    /// Measured interval.
    pub duration: Duration,
    /// The server whose CPU time is measured.
    pub server_pid: Option<u32>,
    /// Fail if nothing completes for this long.
    pub stall_timeout: Duration,
}

impl Default for MeterConfig {
    fn default() -> Self {
        MeterConfig {
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(5),
            server_pid: None,
            stall_timeout: Duration::from_secs(5),
        }
    }
}

impl MeterConfig {
    /// Rejects zero durations.
    pub fn check(&self) -> Result<(), String> {
        if self.duration.is_zero() {
            return Err("`--duration` must be positive".into());
        }
        if self.stall_timeout.is_zero() {
            return Err("`--stall-timeout` must be positive".into());
        }
        Ok(())
    }
}

/// Where a [`Meter`] is in its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Completions are not counted yet.
    Warmup,
    /// Completions are counted.
    Measuring,
    /// The measured interval is over (or the run failed).
    Done,
}

/// CPU clocks read at the start of the measured interval.
#[derive(Debug, Clone, Copy)]
struct Clocks {
    server: Option<Duration>,
    client: Duration,
    machine: Duration,
}

impl Clocks {
    fn read(server_pid: Option<u32>) -> Result<Clocks, String> {
        let server = match server_pid {
            Some(pid) => Some(process_cpu_time(pid).map_err(|e| {
                format!("cannot read /proc/{pid}/stat (did the server exit?): {e}")
            })?),
            None => None,
        };
        Ok(Clocks {
            server,
            client: self_cpu_time().map_err(|e| format!("getrusage: {e}"))?,
            machine: machine_busy_time().map_err(|e| format!("cannot read /proc/stat: {e}"))?,
        })
    }
}

/// Counts completions and their latencies over a warm-up and a measured
/// interval; see the [module docs](self).
///
/// Drive it with [`poll`](Meter::poll) (from a timer or the client's loop)
/// and feed it with [`record`](Meter::record); a client that finds a wrong
/// reply calls [`fail`](Meter::fail).
pub struct Meter {
    cfg: MeterConfig,
    phase: Phase,
    started: Instant,
    measure_start: Instant,
    measure_end: Option<Instant>,
    clocks: Option<Clocks>,
    end_clocks: Option<Clocks>,
    last_progress: Instant,
    hist: Histogram<u64>,
    msgs: u64,
    bytes: u64,
    error: Option<String>,
}

impl Meter {
    /// A meter whose warm-up starts now.
    pub fn new(cfg: MeterConfig) -> Result<Meter, String> {
        let now = Instant::now();
        Ok(Meter {
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .map_err(|e| format!("cannot create the histogram: {e}"))?,
            cfg,
            phase: Phase::Warmup,
            started: now,
            measure_start: now,
            measure_end: None,
            clocks: None,
            end_clocks: None,
            last_progress: now,
            msgs: 0,
            bytes: 0,
            error: None,
        })
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the run is over (measured interval elapsed, or failed).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Records one completion whose latency is `latency`, carrying `bytes`
    /// payload bytes. Counted only while measuring.
    pub fn record(&mut self, latency: Duration, bytes: usize, now: Instant) {
        self.last_progress = now;
        if self.phase == Phase::Measuring {
            self.msgs += 1;
            self.bytes += bytes as u64;
            self.hist
                .saturating_record(latency.as_nanos().min(u128::from(u64::MAX)) as u64);
        }
    }

    /// Notes progress that is not a measured completion (keeps the stall
    /// detector quiet).
    pub fn progress(&mut self, now: Instant) {
        self.last_progress = now;
    }

    /// Ends the run with an error (the first one reported wins).
    pub fn fail(&mut self, error: String) {
        if self.error.is_none() {
            self.error = Some(error);
        }
        self.phase = Phase::Done;
    }

    /// The error the run ended with, if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Moves the run on at time `now`: starts the measured interval after the
    /// warm-up, ends it after the duration, and fails a run that made no
    /// progress for the stall timeout. Returns when it next needs a call.
    pub fn poll(&mut self, now: Instant) -> Result<Option<Instant>, String> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.phase == Phase::Warmup && now >= self.started + self.cfg.warmup {
            self.clocks = Some(Clocks::read(self.cfg.server_pid)?);
            self.phase = Phase::Measuring;
            self.measure_start = Instant::now();
            self.hist.reset();
            self.msgs = 0;
            self.bytes = 0;
        }
        if self.phase == Phase::Measuring && now >= self.measure_start + self.cfg.duration {
            self.measure_end = Some(Instant::now());
            self.end_clocks = Some(Clocks::read(self.cfg.server_pid)?);
            self.phase = Phase::Done;
        }
        if self.phase == Phase::Done {
            return Ok(None);
        }
        if now.duration_since(self.last_progress) > self.cfg.stall_timeout {
            let e = format!(
                "stalled: nothing completed for {:.1} s ({} measured so far)",
                self.cfg.stall_timeout.as_secs_f64(),
                self.msgs
            );
            self.fail(e.clone());
            return Err(e);
        }
        let next = match self.phase {
            Phase::Warmup => self.started + self.cfg.warmup,
            _ => self.measure_start + self.cfg.duration,
        };
        Ok(Some(next.min(now + Duration::from_millis(100))))
    }

    /// The measurement, once [`poll`](Meter::poll) returned `Ok(None)`.
    pub fn finish(&self) -> Result<Measured, String> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let (Some(start), Some(end), Some(until)) =
            (self.clocks, self.end_clocks, self.measure_end)
        else {
            return Err("the measured interval did not complete".to_owned());
        };
        if self.msgs == 0 {
            return Err("nothing completed during the measured interval".to_owned());
        }
        let server_cpu = match (start.server, end.server) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        Ok(Measured {
            elapsed: until.duration_since(self.measure_start),
            msgs: self.msgs,
            bytes: self.bytes,
            hist: self.hist.clone(),
            server_cpu,
            client_cpu: end.client.saturating_sub(start.client),
            machine_busy: end.machine.saturating_sub(start.machine),
            server_peak_rss_kib: self.cfg.server_pid.and_then(|p| peak_rss_kib(Some(p))),
            client_peak_rss_kib: peak_rss_kib(None),
        })
    }
}

/// What a workload is, for the RESULT line.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Stack (label).
    pub stack: String,
    /// `tcp`, `unix`, `mem`.
    pub transport: String,
    /// Workload name.
    pub mode: String,
    /// Serialization.
    pub codec: String,
    /// Connections.
    pub conns: usize,
    /// In flight per connection.
    pub depth: usize,
    /// Request payload bytes.
    pub size: usize,
    /// Reply payload bytes.
    pub reply_size: usize,
}

/// The numbers of one measured interval.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Length of the measured interval.
    pub elapsed: Duration,
    /// Completions in it.
    pub msgs: u64,
    /// Payload bytes those completions carried (one way).
    pub bytes: u64,
    /// Latencies in nanoseconds.
    pub hist: Histogram<u64>,
    /// Server CPU time over the interval.
    pub server_cpu: Option<Duration>,
    /// This process's CPU time over the interval.
    pub client_cpu: Duration,
    /// Machine busy time over the interval (all cores).
    pub machine_busy: Duration,
    /// Server's peak RSS at the end.
    pub server_peak_rss_kib: Option<u64>,
    /// This process's peak RSS at the end.
    pub client_peak_rss_kib: Option<u64>,
}

impl Measured {
    /// Completions per second.
    pub fn msgs_per_s(&self) -> f64 {
        self.msgs as f64 / self.elapsed.as_secs_f64()
    }

    /// Completions per server CPU-second.
    pub fn per_server_cpu_s(&self) -> Option<f64> {
        self.server_cpu.map(|cpu| {
            if cpu.is_zero() {
                f64::INFINITY
            } else {
                self.msgs as f64 / cpu.as_secs_f64()
            }
        })
    }

    /// Payload gigabits per second (one way).
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / 1e9 / self.elapsed.as_secs_f64()
    }

    /// Latency quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// Machine CPU time used by neither the server nor this process.
    pub fn other_cpu(&self) -> Option<Duration> {
        self.server_cpu
            .map(|s| self.machine_busy.saturating_sub(s + self.client_cpu))
    }
}

/// A [`Measured`] interval of a [`Workload`].
#[derive(Debug, Clone)]
pub struct Report {
    /// What ran.
    pub workload: Workload,
    /// What it measured.
    pub measured: Measured,
    /// What the latencies are (`rtt`: round trip; `oneway`: send to receive).
    pub latency: &'static str,
}

fn opt_f(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "na".to_owned(), |v| format!("{v:.prec$}"))
}

impl Report {
    /// A readable summary, several lines.
    pub fn summary(&self) -> String {
        let w = &self.workload;
        let m = &self.measured;
        let secs = m.elapsed.as_secs_f64();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} over {}, {} codec, {} conns x {} in flight, request {} B, reply {} B",
            w.stack, w.mode, w.transport, w.codec, w.conns, w.depth, w.size, w.reply_size
        );
        let _ = writeln!(
            s,
            "  measured     {secs:.2} s: {} msgs, {:.0} msgs/s, {:.3} Gbit/s of payload (every one checked)",
            m.msgs,
            m.msgs_per_s(),
            m.gbit_per_s()
        );
        let _ = writeln!(
            s,
            "  latency      ({}) p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
            self.latency,
            m.quantile_us(0.5),
            m.quantile_us(0.99),
            m.quantile_us(0.999),
            m.hist.max() as f64 / 1000.0
        );
        match m.server_cpu {
            Some(cpu) => {
                let _ = writeln!(
                    s,
                    "  server CPU   {:.2} s ({:.0}% of one core), {} msgs per server CPU-second",
                    cpu.as_secs_f64(),
                    100.0 * cpu.as_secs_f64() / secs,
                    opt_f(m.per_server_cpu_s(), 0)
                );
            }
            None => s.push_str("  server CPU   not measured (no --server-pid)\n"),
        }
        let _ = writeln!(
            s,
            "  client CPU   {:.2} s ({:.0}% of one core); machine busy {:.2} s, {} s of it neither",
            m.client_cpu.as_secs_f64(),
            100.0 * m.client_cpu.as_secs_f64() / secs,
            m.machine_busy.as_secs_f64(),
            opt_f(m.other_cpu().map(|d| d.as_secs_f64()), 2)
        );
        let _ = writeln!(
            s,
            "  peak RSS     server {} KiB, client {} KiB",
            m.server_peak_rss_kib
                .map_or_else(|| "na".to_owned(), |k| k.to_string()),
            m.client_peak_rss_kib
                .map_or_else(|| "na".to_owned(), |k| k.to_string())
        );
        s
    }

    /// The one-line `RESULT key=value ...` form.
    pub fn result_line(&self) -> String {
        let w = &self.workload;
        let m = &self.measured;
        let kib = |v: Option<u64>| v.map_or_else(|| "na".to_owned(), |k| k.to_string());
        format!(
            "RESULT stack={} transport={} mode={} codec={} conns={} depth={} size={} reply_size={} \
             secs={:.3} msgs={} msgs_per_s={:.0} gbit_per_s={:.3} server_cpu_s={} msgs_per_server_cpu_s={} \
             client_cpu_s={:.3} machine_busy_s={:.3} other_cpu_s={} latency={} \
             p50_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1} server_peak_rss_kib={} client_peak_rss_kib={}",
            w.stack,
            w.transport,
            w.mode,
            w.codec,
            w.conns,
            w.depth,
            w.size,
            w.reply_size,
            m.elapsed.as_secs_f64(),
            m.msgs,
            m.msgs_per_s(),
            m.gbit_per_s(),
            opt_f(m.server_cpu.map(|d| d.as_secs_f64()), 3),
            opt_f(m.per_server_cpu_s(), 0),
            m.client_cpu.as_secs_f64(),
            m.machine_busy.as_secs_f64(),
            opt_f(m.other_cpu().map(|d| d.as_secs_f64()), 3),
            self.latency,
            m.quantile_us(0.5),
            m.quantile_us(0.99),
            m.quantile_us(0.999),
            m.hist.max() as f64 / 1000.0,
            kib(m.server_peak_rss_kib),
            kib(m.client_peak_rss_kib),
        )
    }

    /// Prints the summary and the RESULT line on stdout.
    pub fn print(&self) {
        print!("{}", self.summary());
        println!("{}", self.result_line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(args: &[&str]) -> Result<Role, clap::Error> {
        parse_role(
            "typed-x",
            std::iter::once("typed-x").chain(args.iter().copied()),
        )
    }

    fn client(args: &[&str]) -> Result<ClientArgs, clap::Error> {
        let all: Vec<&str> = std::iter::once("client")
            .chain(args.iter().copied())
            .collect();
        match role(&all)? {
            Role::Client(a) => Ok(a),
            Role::Server(_) => panic!("`client` parsed as a server"),
        }
    }

    #[test]
    fn client_flags() {
        let a = client(&["--endpoint", "tcp://127.0.0.1:1"]).unwrap();
        assert_eq!(
            (a.conns, a.depth, a.size, a.reply_size),
            (64, 16, 1024, 1024)
        );
        assert_eq!((a.mode, a.codec), (Mode::Throughput, Codec::Rkyv));
        assert_eq!(a.label, "typed-x");
        assert_eq!(a.wait, Duration::from_secs(2));
        assert_eq!(a.meter.warmup, Duration::from_secs(1));
        assert_eq!(a.meter.duration, Duration::from_secs(5));
        assert_eq!(a.meter.stall_timeout, Duration::from_secs(5));
        let a = client(&[
            "--endpoint=unix:///tmp/s",
            "--mode",
            "pingpong",
            "--reply-size",
            "10",
        ])
        .unwrap();
        assert_eq!((a.conns, a.depth, a.size, a.reply_size), (1, 1, 64, 10));
        assert_eq!(a.target().unwrap().transport(), "unix");
        // Every flag benches/typed.sh passes.
        let a = client(&[
            "--endpoint",
            "tcp://127.0.0.1:7601",
            "--core",
            "1",
            "--server-pid",
            "42",
            "--label",
            "tokio-bincode",
            "--warmup",
            "0.5",
            "--codec",
            "bincode",
            "--mode",
            "ping-pong",
            "--size",
            "64",
            "--duration",
            "2",
            "--stall-timeout",
            "3s",
            "--wait",
            "500ms",
        ])
        .unwrap();
        assert_eq!((a.core, a.meter.server_pid), (Some(1), Some(42)));
        assert_eq!((a.mode, a.codec), (Mode::PingPong, Codec::Bincode));
        assert_eq!(a.label, "tokio-bincode");
        assert_eq!(a.meter.warmup, Duration::from_millis(500));
        assert_eq!(a.meter.duration, Duration::from_secs(2));
        assert_eq!(a.meter.stall_timeout, Duration::from_secs(3));
        assert_eq!(a.wait, Duration::from_millis(500));
        for bad in [
            &["--mode", "pingpong", "--endpoint", "x", "--depth", "2"][..],
            &["--conns", "1"][..],
            &["--endpoint", "x", "--conns", "0"][..],
            &["--endpoint", "x", "--depth", "1025"][..],
            &["--endpoint", "x", "--size", "99999999"][..],
            &["--endpoint", "x", "--duration", "0"][..],
            &["--endpoint", "x", "--stall-timeout", "0"][..],
            &["--endpoint", "x", "--label", "a b"][..],
            &["--endpoint", "x", "--codec", "json"][..],
            &["--endpoint", "x", "--mode", "flood"][..],
            &["--endpoint", "x", "--cores", "1"][..],
        ] {
            let e = client(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn server_flags_and_roles() {
        let server = |args: &[&str]| {
            let all: Vec<&str> = std::iter::once("server")
                .chain(args.iter().copied())
                .collect();
            match role(&all) {
                Ok(Role::Server(a)) => Ok(a),
                Ok(Role::Client(_)) => panic!("`server` parsed as a client"),
                Err(e) => Err(e),
            }
        };
        let a = server(&["--endpoint", "tcp://127.0.0.1:1"]).unwrap();
        assert_eq!((a.cores, a.codec), (CoreSpec::Count(1), Codec::Rkyv));
        let a = server(&[
            "--endpoint",
            "unix:///tmp/s",
            "--cores",
            "1",
            "--codec",
            "bincode",
        ])
        .unwrap();
        assert_eq!((a.cores, a.codec), (CoreSpec::Count(1), Codec::Bincode));
        assert_eq!(a.endpoint, "unix:///tmp/s");
        let a = server(&["--endpoint", "x", "--cores", "0,1"]).unwrap();
        assert_eq!(a.cores, CoreSpec::List(vec![0, 1]));
        let a = server(&["--endpoint", "x", "--cpus", "1"]).unwrap();
        assert_eq!(a.cores, CoreSpec::List(vec![1]));
        for bad in [
            &[][..],
            &["--endpoint", "x", "--cores", "0"][..],
            &["--endpoint", "x", "--duration", "1"][..],
        ] {
            assert_eq!(server(bad).err().map(|e| e.exit_code()), Some(2), "{bad:?}");
        }
        // No role, or an unknown one, is a usage error; help is not.
        for bad in [&[][..], &["serve"][..], &["--endpoint", "x"][..]] {
            assert_eq!(role(bad).err().map(|e| e.exit_code()), Some(2), "{bad:?}");
        }
        for help in [
            &["--help"][..],
            &["server", "--help"][..],
            &["client", "-h"][..],
        ] {
            assert_eq!(role(help).err().map(|e| e.exit_code()), Some(0), "{help:?}");
        }
        let help = role(&["server", "--help"]).err().unwrap().to_string();
        assert!(
            help.contains("Without --cpus or --cores: 1 core."),
            "{help}"
        );
    }

    #[test]
    fn vm_hwm() {
        let status = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    4242 kB\nVmRSS:\t 10 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(4242));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
        assert!(peak_rss_kib(None).is_some_and(|k| k > 0));
    }

    #[test]
    fn meter_counts_only_the_measured_interval() {
        let mut m = Meter::new(MeterConfig {
            warmup: Duration::ZERO,
            duration: Duration::from_millis(1),
            server_pid: Some(std::process::id()),
            stall_timeout: Duration::from_secs(60),
        })
        .unwrap();
        let t0 = Instant::now();
        m.record(Duration::from_micros(5), 10, t0);
        assert!(m.poll(Instant::now()).unwrap().is_some());
        assert_eq!(m.phase(), Phase::Measuring);
        m.record(Duration::from_micros(7), 10, Instant::now());
        m.record(Duration::from_micros(9), 10, Instant::now());
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(m.poll(Instant::now()).unwrap(), None);
        m.record(Duration::from_micros(11), 10, Instant::now());
        let r = m.finish().unwrap();
        assert_eq!((r.msgs, r.bytes), (2, 20));
        assert!(r.server_cpu.is_some());
        assert_eq!(r.hist.max() / 1000, 9);
    }

    #[test]
    fn meter_reports_failures_and_stalls() {
        let mut m = Meter::new(MeterConfig::default()).unwrap();
        m.fail("wrong reply".into());
        m.fail("second".into());
        assert!(m.is_done());
        assert_eq!(m.poll(Instant::now()).unwrap_err(), "wrong reply");
        assert!(m.finish().is_err());

        let mut m = Meter::new(MeterConfig {
            stall_timeout: Duration::from_millis(1),
            ..MeterConfig::default()
        })
        .unwrap();
        let later = Instant::now() + Duration::from_millis(50);
        assert!(m.poll(later).unwrap_err().contains("stalled"));
    }
}
