//! `loadgen`: load generator for the echo server comparison.
//!
//! One thread, pinned with `--core`, drives every connection with
//! non-blocking sockets and level-triggered `epoll`, so the same lean client
//! loads every server the same way. It only connects to loopback addresses.
//!
//! * `--mode throughput` (default): `--conns` connections (default 64), each
//!   keeping `--depth` messages in flight (default 16) of `--size` payload
//!   bytes (default 1024).
//! * `--mode pingpong`: `--conns` connections (default 1), one message in
//!   flight each, `--size` default 64.
//!
//! Every echoed byte is checked: the payload of message `seq` on connection
//! `conn` is derived from both (see [`Pattern`]), so a reordered, duplicated,
//! truncated or corrupted echo is reported as an error with a non-zero exit.
//! Every round trip (send to complete echo) lands in an HDR histogram.
//!
//! After a `--warmup` (default 1 s) the `--duration` (default 5 s) is
//! measured; with `--server-pid` the server's user+system CPU time over that
//! interval comes from `/proc/PID/stat`, giving messages per server
//! CPU-second. A readable summary is followed by one `RESULT key=value ...`
//! line for scripts.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, ValueEnum};
use hdrhistogram::Histogram;
use ringwire_benches::cli::parse_duration;
use ringwire_benches::cores::pin_current_thread;
use ringwire_benches::cpu::{machine_busy_time, process_cpu_time, self_cpu_time};
use ringwire_benches::wire::{Pattern, Wire, MAX_PAYLOAD};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// `--conns` connections, each keeping `--depth` messages in flight.
    Throughput,
    /// `--conns` connections, one message in flight each.
    #[value(name = "pingpong", alias = "ping-pong")]
    PingPong,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Throughput => "throughput",
            Mode::PingPong => "pingpong",
        }
    }
}

/// Load generator for the echo server comparison: one pinned thread drives
/// every connection and checks every echoed byte.
#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    after_help = "Durations accept 5, 2.5s or 500ms. Exit status: 0 ok, 1 runtime error \
                  (connect failure, wrong echo, stall), 2 usage error."
)]
struct Args {
    /// Echo server, loopback only.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7000")]
    addr: String,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Throughput)]
    mode: Mode,
    /// raw | lenprefix.
    #[arg(long, value_name = "WIRE", default_value = "lenprefix")]
    wire: Wire,
    /// Connections (default 64 throughput, 1 pingpong).
    #[arg(long, value_name = "C")]
    conns: Option<usize>,
    /// Messages in flight per connection (default 16; pingpong is always 1).
    #[arg(long, value_name = "D")]
    depth: Option<usize>,
    /// Payload bytes per message (default 1024 throughput, 64 pingpong);
    /// lenprefix adds a 4-byte header.
    #[arg(long, value_name = "S")]
    size: Option<usize>,
    /// Warm-up before measuring.
    #[arg(long, value_name = "T", default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Measured interval.
    #[arg(long, value_name = "T", default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Pin the load generator to core N (default: unpinned).
    #[arg(long, value_name = "N")]
    core: Option<usize>,
    /// Report the server's CPU time over the measured interval.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Server name for the RESULT line.
    #[arg(long, value_name = "NAME", default_value = "unknown")]
    label: String,
    /// Keep retrying the first connect for up to T while the server starts
    /// (0: fail at once).
    #[arg(long, value_name = "T", default_value = "0", value_parser = parse_duration)]
    wait: Duration,
    /// Per-connection connect timeout.
    #[arg(long, value_name = "T", default_value = "2s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Fail if no echo completes for T.
    #[arg(long, value_name = "T", default_value = "5s", value_parser = parse_duration)]
    stall_timeout: Duration,
    /// Pingpong only: at most N round trips per second over all connections
    /// (each connection sends its next message no sooner than conns/N s
    /// after its previous one), to measure latency and server CPU at a low,
    /// steady rate instead of flat out.
    #[arg(long, value_name = "N")]
    rate: Option<f64>,
}

#[derive(Debug)]
struct Config {
    addr: SocketAddr,
    mode: Mode,
    wire: Wire,
    conns: usize,
    depth: usize,
    size: usize,
    warmup: Duration,
    duration: Duration,
    core: Option<usize>,
    server_pid: Option<u32>,
    label: String,
    wait: Duration,
    connect_timeout: Duration,
    stall_timeout: Duration,
    /// Pingpong at a set rate: the least time between two sends of one
    /// connection.
    interval: Option<Duration>,
}

/// Checks what clap cannot: the mode-dependent defaults and the ranges.
fn config(args: Args) -> Result<Config, String> {
    let (conns, depth, size) = match args.mode {
        Mode::Throughput => (
            args.conns.unwrap_or(64),
            args.depth.unwrap_or(16),
            args.size.unwrap_or(1024),
        ),
        Mode::PingPong => {
            if args.depth.is_some_and(|d| d != 1) {
                return Err(
                    "pingpong mode keeps exactly one message in flight; drop `--depth`".into(),
                );
            }
            (args.conns.unwrap_or(1), 1, args.size.unwrap_or(64))
        }
    };
    if conns == 0 || conns > 10_000 {
        return Err("`--conns` must be 1..=10000".into());
    }
    if depth == 0 || depth > 4096 {
        return Err("`--depth` must be 1..=4096".into());
    }
    if size > MAX_PAYLOAD {
        return Err(format!("`--size` must be at most {MAX_PAYLOAD}"));
    }
    if args.wire == Wire::Raw && size == 0 {
        return Err("`--size 0` carries no bytes in raw mode".into());
    }
    if args.duration.is_zero() {
        return Err("`--duration` must be positive".into());
    }
    if args.connect_timeout.is_zero() || args.stall_timeout.is_zero() {
        return Err("timeouts must be positive".into());
    }
    if args.label.is_empty() || args.label.contains(char::is_whitespace) {
        return Err("`--label` must be one word".into());
    }
    let interval = match (args.rate, args.mode) {
        (None, _) => None,
        (Some(_), Mode::Throughput) => {
            return Err("`--rate` applies to pingpong mode only".into());
        }
        (Some(r), Mode::PingPong) if r.is_finite() && r > 0.0 && r <= 10_000_000.0 => {
            Some(Duration::from_secs_f64(conns as f64 / r))
        }
        (Some(_), Mode::PingPong) => return Err("`--rate` must be in (0, 10000000]".into()),
    };
    if interval.is_some_and(|gap| gap * 2 >= args.stall_timeout) {
        return Err("`--rate` too low: one round trip per connection must fit well within `--stall-timeout`".into());
    }
    let addr = resolve_loopback(&args.addr)?;
    Ok(Config {
        addr,
        mode: args.mode,
        wire: args.wire,
        conns,
        depth,
        size,
        warmup: args.warmup,
        duration: args.duration,
        core: args.core,
        server_pid: args.server_pid,
        label: args.label,
        wait: args.wait,
        connect_timeout: args.connect_timeout,
        stall_timeout: args.stall_timeout,
        interval,
    })
}

/// Resolves `addr`, refusing anything that is not a loopback address.
fn resolve_loopback(addr: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `--addr {addr}`: {e}"))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| format!("`--addr {addr}` resolves to nothing"))?;
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "refusing `--addr {addr}`: {} is not a loopback address; loadgen only loads servers on this machine",
            bad.ip()
        ));
    }
    Ok(first)
}

fn main() -> ExitCode {
    // Bad arguments, and --help / --version: clap prints and exits (2, 0).
    let cfg = match config(Args::parse()) {
        Ok(cfg) => cfg,
        Err(e) => Args::command()
            .error(clap::error::ErrorKind::ValueValidation, e)
            .exit(),
    };
    // Belt and braces: whatever happens, the process ends.
    let hard_limit = cfg.wait
        + cfg.connect_timeout * 2
        + cfg.connect_timeout.saturating_mul(cfg.conns as u32)
        + cfg.warmup
        + cfg.duration
        + Duration::from_secs(10);
    std::thread::spawn(move || {
        std::thread::sleep(hard_limit);
        eprintln!(
            "loadgen: error: hard timeout of {:.1} s reached",
            hard_limit.as_secs_f64()
        );
        std::process::exit(1);
    });
    if let Some(core) = cfg.core {
        if let Err(e) = pin_current_thread(core) {
            eprintln!("loadgen: error: {e}");
            return ExitCode::FAILURE;
        }
    }
    match run(&cfg) {
        Ok(report) => {
            print!("{}", report.summary(&cfg));
            println!("{}", report.result_line(&cfg));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One client connection and its in-flight bookkeeping.
struct Conn {
    id: u32,
    stream: TcpStream,
    /// Bytes queued for sending, from `tx_pos` on.
    tx: Vec<u8>,
    tx_pos: usize,
    /// Whether `EPOLLOUT` is currently registered.
    want_out: bool,
    next_tx_seq: u64,
    rx_seq: u64,
    /// The frame expected for `rx_seq`, and how much of it has arrived.
    rx_expect: Vec<u8>,
    rx_off: usize,
    /// Send times of the in-flight messages, oldest (`rx_seq`) first.
    sent_at: VecDeque<Instant>,
}

impl Conn {
    fn in_flight(&self) -> usize {
        (self.next_tx_seq - self.rx_seq) as usize
    }

    /// Queues messages until `depth` are in flight.
    fn refill(&mut self, pattern: &Pattern, depth: usize, now: Instant) {
        if self.tx_pos > 0 && self.tx_pos == self.tx.len() {
            self.tx.clear();
            self.tx_pos = 0;
        }
        while self.in_flight() < depth {
            pattern.write_frame(self.id, self.next_tx_seq, &mut self.tx);
            self.sent_at.push_back(now);
            self.next_tx_seq += 1;
        }
    }

    /// Writes queued bytes until done or the socket is full; returns whether
    /// bytes remain.
    fn flush(&mut self) -> io::Result<bool> {
        while self.tx_pos < self.tx.len() {
            match (&self.stream).write(&self.tx[self.tx_pos..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket accepted no bytes",
                    ))
                }
                Ok(n) => self.tx_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.tx.clear();
        self.tx_pos = 0;
        Ok(false)
    }
}

/// What one run measured.
struct Report {
    elapsed: Duration,
    msgs: u64,
    hist: Histogram<u64>,
    server_cpu: Option<Duration>,
    self_cpu: Duration,
    machine_busy: Duration,
    frame_len: usize,
}

impl Report {
    fn msgs_per_s(&self) -> f64 {
        self.msgs as f64 / self.elapsed.as_secs_f64()
    }

    fn quantile_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    fn max_us(&self) -> f64 {
        self.hist.max() as f64 / 1000.0
    }

    /// Machine CPU time used by neither the server nor the load generator
    /// (other processes, and interrupt time not charged to a process).
    fn other_cpu(&self) -> Option<Duration> {
        self.server_cpu
            .map(|server| self.machine_busy.saturating_sub(server + self.self_cpu))
    }

    fn summary(&self, cfg: &Config) -> String {
        let secs = self.elapsed.as_secs_f64();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "loadgen: server={} addr={} mode={} wire={} conns={} depth={} size={} B (frame {} B)",
            cfg.label,
            cfg.addr,
            cfg.mode.as_str(),
            cfg.wire,
            cfg.conns,
            cfg.depth,
            cfg.size,
            self.frame_len
        );
        let _ = writeln!(
            s,
            "  measured     {secs:.2} s after {:.2} s warm-up",
            cfg.warmup.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "  echoed       {} msgs, {:.0} msgs/s, {:.1} MB/s each way (all bytes verified)",
            self.msgs,
            self.msgs_per_s(),
            self.msgs_per_s() * self.frame_len as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "  round trip   p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
            self.quantile_us(0.5),
            self.quantile_us(0.99),
            self.quantile_us(0.999),
            self.max_us()
        );
        match self.server_cpu {
            Some(cpu) => {
                let _ = writeln!(
                    s,
                    "  server CPU   {:.2} s ({:.0}% of one core), {:.0} msgs per server CPU-second",
                    cpu.as_secs_f64(),
                    100.0 * cpu.as_secs_f64() / secs,
                    per_cpu(self.msgs, cpu)
                );
            }
            None => s.push_str("  server CPU   not measured (no --server-pid)\n"),
        }
        let _ = writeln!(
            s,
            "  loadgen CPU  {:.2} s ({:.0}% of one core)",
            self.self_cpu.as_secs_f64(),
            100.0 * self.self_cpu.as_secs_f64() / secs
        );
        let _ = write!(
            s,
            "  machine CPU  {:.2} s busy over all cores",
            self.machine_busy.as_secs_f64()
        );
        if let Some(other) = self.other_cpu() {
            let _ = write!(
                s,
                ", {:.2} s of it neither server nor loadgen (other processes, interrupts)",
                other.as_secs_f64()
            );
        }
        s.push('\n');
        s
    }

    fn result_line(&self, cfg: &Config) -> String {
        let (server_cpu, per_server_cpu) = match self.server_cpu {
            Some(cpu) => (
                format!("{:.3}", cpu.as_secs_f64()),
                format!("{:.0}", per_cpu(self.msgs, cpu)),
            ),
            None => ("na".to_owned(), "na".to_owned()),
        };
        let other_cpu = self
            .other_cpu()
            .map_or_else(|| "na".to_owned(), |d| format!("{:.3}", d.as_secs_f64()));
        format!(
            "RESULT server={} mode={} wire={} conns={} depth={} size={} secs={:.3} msgs={} msgs_per_s={:.0} \
             server_cpu_s={} msgs_per_server_cpu_s={} loadgen_cpu_s={:.3} machine_busy_s={:.3} other_cpu_s={} \
             p50_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1}",
            cfg.label,
            cfg.mode.as_str(),
            cfg.wire,
            cfg.conns,
            cfg.depth,
            cfg.size,
            self.elapsed.as_secs_f64(),
            self.msgs,
            self.msgs_per_s(),
            server_cpu,
            per_server_cpu,
            self.self_cpu.as_secs_f64(),
            self.machine_busy.as_secs_f64(),
            other_cpu,
            self.quantile_us(0.5),
            self.quantile_us(0.99),
            self.quantile_us(0.999),
            self.max_us()
        )
    }
}

fn per_cpu(msgs: u64, cpu: Duration) -> f64 {
    if cpu.is_zero() {
        f64::INFINITY
    } else {
        msgs as f64 / cpu.as_secs_f64()
    }
}

/// A level-triggered epoll instance.
struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: `epoll_create1` takes no pointers; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by `epoll_create1` and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid `epoll_event` living across the call, and
        // both descriptors are open.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
        // Round up so a sub-millisecond remainder does not turn into a busy loop.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let max = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: `events` is a writable buffer of `max` `epoll_event`s.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

fn connect_all(cfg: &Config) -> Result<Vec<TcpStream>, String> {
    let mut streams = Vec::with_capacity(cfg.conns);
    let wait_until = Instant::now() + cfg.wait;
    for i in 0..cfg.conns {
        let stream = loop {
            match TcpStream::connect_timeout(&cfg.addr, cfg.connect_timeout) {
                Ok(s) => break s,
                Err(e)
                    if i == 0
                        && e.kind() == io::ErrorKind::ConnectionRefused
                        && Instant::now() < wait_until =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(format!(
                        "cannot connect connection {i} of {} to {}: {e} (is the server running?)",
                        cfg.conns, cfg.addr
                    ))
                }
            }
        };
        stream
            .set_nodelay(true)
            .and_then(|()| stream.set_nonblocking(true))
            .map_err(|e| format!("cannot configure connection {i}: {e}"))?;
        streams.push(stream);
    }
    Ok(streams)
}

fn run(cfg: &Config) -> Result<Report, String> {
    let pattern = Pattern::new(cfg.wire, cfg.size);
    let frame_len = pattern.frame_len();
    let streams = connect_all(cfg)?;
    let epoll = Epoll::new().map_err(|e| format!("epoll_create1: {e}"))?;
    let mut conns: Vec<Conn> = Vec::with_capacity(streams.len());
    for (i, stream) in streams.into_iter().enumerate() {
        epoll
            .ctl(
                libc::EPOLL_CTL_ADD,
                stream.as_raw_fd(),
                libc::EPOLLIN as u32,
                i as u64,
            )
            .map_err(|e| format!("epoll_ctl: {e}"))?;
        conns.push(Conn {
            id: i as u32,
            stream,
            tx: Vec::with_capacity(frame_len * cfg.depth),
            tx_pos: 0,
            want_out: false,
            next_tx_seq: 0,
            rx_seq: 0,
            rx_expect: Vec::with_capacity(frame_len),
            rx_off: 0,
            sent_at: VecDeque::with_capacity(cfg.depth),
        });
    }

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| format!("cannot create the histogram: {e}"))?;
    let mut msgs: u64 = 0;
    let mut measuring = false;
    let mut server_cpu_start = None;
    let mut self_cpu_start = Duration::ZERO;
    let mut machine_busy_start = Duration::ZERO;
    let mut measure_start = Instant::now();

    let start = Instant::now();
    for conn in &mut conns {
        conn.refill(&pattern, cfg.depth, start);
        flush_conn(&epoll, conn)?;
    }
    let warmup_end = start + cfg.warmup;
    let mut end = warmup_end + cfg.duration;
    let mut last_progress = start;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; conns.len().min(1024)];
    let mut rx_buf = vec![0u8; 256 * 1024];
    // At a set rate: when each connection may send its next message, and
    // when its last one left.
    let mut due: Vec<Option<Instant>> = vec![None; conns.len()];
    let mut last_send: Vec<Instant> = vec![start; conns.len()];

    loop {
        let now = Instant::now();
        if !measuring && now >= warmup_end {
            measuring = true;
            hist.reset();
            msgs = 0;
            server_cpu_start = match cfg.server_pid {
                Some(pid) => Some(
                    process_cpu_time(pid)
                        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?,
                ),
                None => None,
            };
            self_cpu_start = self_cpu_time().map_err(|e| format!("getrusage: {e}"))?;
            machine_busy_start =
                machine_busy_time().map_err(|e| format!("cannot read /proc/stat: {e}"))?;
            measure_start = Instant::now();
            end = measure_start + cfg.duration;
        }
        if now >= end {
            break;
        }
        if now.duration_since(last_progress) > cfg.stall_timeout {
            return Err(format!(
                "stalled: no echo completed for {:.1} s ({} msgs measured so far)",
                cfg.stall_timeout.as_secs_f64(),
                msgs
            ));
        }
        let mut next_deadline = if measuring { end } else { warmup_end };
        if cfg.interval.is_some() {
            for (i, d) in due.iter_mut().enumerate() {
                match *d {
                    Some(t) if t <= now => {
                        *d = None;
                        // On the schedule's grid, so that late wake-ups
                        // (epoll waits in whole milliseconds) do not lower
                        // the rate; after a long delay, restart from now.
                        last_send[i] = if now - t < catch_up(cfg) { t } else { now };
                        conns[i].refill(&pattern, cfg.depth, now);
                        flush_conn(&epoll, &mut conns[i])?;
                    }
                    Some(t) => next_deadline = next_deadline.min(t),
                    None => {}
                }
            }
        }
        let timeout = next_deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        let n = epoll
            .wait(&mut events, timeout)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for ev in &events[..n] {
            let flags = ev.events;
            let idx = ev.u64 as usize;
            let conn = &mut conns[idx];
            if flags & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                let done = read_conn(conn, &pattern, &mut rx_buf, measuring.then_some(&mut hist))?;
                if done > 0 {
                    last_progress = Instant::now();
                    if measuring {
                        msgs += done;
                    }
                    match cfg.interval {
                        Some(gap) if last_progress < last_send[idx] + gap => {
                            due[idx] = Some(last_send[idx] + gap);
                        }
                        Some(gap) => {
                            let t = last_send[idx] + gap;
                            last_send[idx] = if last_progress - t < catch_up(cfg) {
                                t
                            } else {
                                last_progress
                            };
                            conn.refill(&pattern, cfg.depth, last_progress);
                        }
                        None => conn.refill(&pattern, cfg.depth, last_progress),
                    }
                }
            }
            // Write whatever is queued: new messages, or leftovers on EPOLLOUT.
            flush_conn(&epoll, conn)?;
        }
    }
    let elapsed = measure_start.elapsed();
    let server_cpu = match (cfg.server_pid, server_cpu_start) {
        (Some(pid), Some(before)) => Some(
            process_cpu_time(pid)
                .map_err(|e| format!("cannot read /proc/{pid}/stat (did the server exit?): {e}"))?
                .saturating_sub(before),
        ),
        _ => None,
    };
    let self_cpu = self_cpu_time()
        .map_err(|e| format!("getrusage: {e}"))?
        .saturating_sub(self_cpu_start);
    let machine_busy = machine_busy_time()
        .map_err(|e| format!("cannot read /proc/stat: {e}"))?
        .saturating_sub(machine_busy_start);
    if msgs == 0 {
        return Err("no message was echoed during the measured interval".to_owned());
    }
    Ok(Report {
        elapsed,
        msgs,
        hist,
        server_cpu,
        self_cpu,
        machine_busy,
        frame_len,
    })
}

/// At a set rate, how late a send may be and still keep its place on the
/// schedule's grid (the sends after it catch up); later than this, the
/// schedule restarts from now.
fn catch_up(cfg: &Config) -> Duration {
    (cfg.interval.unwrap_or(Duration::ZERO) * 16).max(Duration::from_millis(20))
}

/// Flushes `conn` and keeps its `EPOLLOUT` interest in line with whether
/// bytes remain.
fn flush_conn(epoll: &Epoll, conn: &mut Conn) -> Result<(), String> {
    let pending = conn
        .flush()
        .map_err(|e| format!("connection {}: send failed: {e}", conn.id))?;
    if pending != conn.want_out {
        let events = if pending {
            (libc::EPOLLIN | libc::EPOLLOUT) as u32
        } else {
            libc::EPOLLIN as u32
        };
        epoll
            .ctl(
                libc::EPOLL_CTL_MOD,
                conn.stream.as_raw_fd(),
                events,
                u64::from(conn.id),
            )
            .map_err(|e| format!("epoll_ctl: {e}"))?;
        conn.want_out = pending;
    }
    Ok(())
}

/// Reads what `conn` has, checks every byte against the expected echo and
/// records completed round trips. Returns how many messages completed.
fn read_conn(
    conn: &mut Conn,
    pattern: &Pattern,
    buf: &mut [u8],
    mut hist: Option<&mut Histogram<u64>>,
) -> Result<u64, String> {
    let mut completed = 0;
    loop {
        let n = match (&conn.stream).read(buf) {
            Ok(0) => {
                return Err(format!(
                    "connection {}: server closed the connection with {} messages in flight",
                    conn.id,
                    conn.in_flight()
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(completed),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("connection {}: receive failed: {e}", conn.id)),
        };
        let now = Instant::now();
        let mut data = &buf[..n];
        while !data.is_empty() {
            if conn.rx_seq == conn.next_tx_seq {
                return Err(format!(
                    "connection {}: server sent {} bytes that were never sent to it",
                    conn.id,
                    data.len()
                ));
            }
            if conn.rx_off == 0 {
                conn.rx_expect.clear();
                pattern.write_frame(conn.id, conn.rx_seq, &mut conn.rx_expect);
            }
            let take = data.len().min(conn.rx_expect.len() - conn.rx_off);
            let expect = &conn.rx_expect[conn.rx_off..conn.rx_off + take];
            let got = &data[..take];
            if got != expect {
                let at = got
                    .iter()
                    .zip(expect)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(format!(
                    "connection {}: wrong echo in message {} at frame byte {}: got {:#04x}, expected {:#04x} \
                     (corrupted, reordered or lost data)",
                    conn.id,
                    conn.rx_seq,
                    conn.rx_off + at,
                    got[at],
                    expect[at]
                ));
            }
            conn.rx_off += take;
            data = &data[take..];
            if conn.rx_off == conn.rx_expect.len() {
                let sent = conn.sent_at.pop_front().ok_or_else(|| {
                    format!("connection {}: internal error: no send time", conn.id)
                })?;
                if let Some(h) = hist.as_deref_mut() {
                    h.saturating_record(
                        now.duration_since(sent).as_nanos().min(u64::MAX as u128) as u64
                    );
                }
                conn.rx_seq += 1;
                conn.rx_off = 0;
                completed += 1;
            }
        }
        if n < buf.len() {
            // A short read means the socket is (very likely) drained; let
            // epoll tell us about more instead of paying for an EAGAIN.
            return Ok(completed);
        }
    }
}
