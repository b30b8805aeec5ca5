//! `floor-echo`: a hand-written io_uring echo loop with no runtime, the floor
//! reference of the echo comparison.
//!
//! ringwire's `echo-node` runs a general runtime (executor, tasks, wakers,
//! operation table) on io_uring. This server does only what an echo over
//! io_uring needs, so the gap between the two is what the runtime costs, and
//! the gap between this and `tokio-echo` is what io_uring itself allows. It is
//! a measuring stick, not a product: one loop, no tasks, no abstraction.
//!
//! Per core (`--cores`, default 1; one thread pinned to each CPU):
//!
//! * one ring with `SINGLE_ISSUER`, `COOP_TASKRUN` and `DEFER_TASKRUN`;
//! * an `SO_REUSEPORT` listener with one multishot `ACCEPT`;
//! * one provided buffer ring (`IORING_REGISTER_PBUF_RING`) feeding one
//!   multishot `RECV` per connection;
//! * per loop turn: one `io_uring_enter` that submits and waits (for one
//!   completion, or for a batch of them within a bound when many connections
//!   receive, as `echo-node --wait-batch` does); then every completion is
//!   reaped; then each connection with complete messages gets one send
//!   carrying all of them, in order. With `--spin MICROS` (off by default),
//!   non-blocking enters poll for the batch first and the loop blocks only
//!   if nothing arrived within the budget, for the idle-strategy A/B.
//!
//! Received bytes stay in the buffer the kernel put them in: a connection
//! keeps the buffers it received, in order, and sends straight from them up
//! to the end of its last complete message (`lenprefix`) or everything
//! (`raw`). A message that spans buffers is never reassembled; a send that
//! spans buffers is one `SENDMSG` with one iovec per buffer (`--gather
//! sendmsg`, the default) or a copy into one per-connection buffer and a plain
//! `SEND` (`--gather copy`), for A/B. A buffer goes back to the kernel when
//! its last byte has been sent. An incomplete message is never echoed, and a
//! header announcing more than `--max-message` bytes closes that connection.
//! Only when the buffer ring runs dry while receives wait for buffers is an
//! incomplete message copied out of the buffers it alone occupies ("spilled"),
//! so that a message larger than the free buffers can still arrive.
//!
//! SIGINT or SIGTERM stops it: every connection is shut down and the loop
//! drains its operations before the memory they use is freed. `--stats`
//! prints the loop's counters at exit, in Prometheus text format.
//!
//! Usage: `floor-echo [--cpus LIST | --cores N] [--listen ADDR]
//! [--wire raw|lenprefix] [--gather sendmsg|copy] [--wait-batch N:MICROS|off]
//! [--spin MICROS] [--recv-buffers N] [--recv-buffer-size BYTES]
//! [--max-message BYTES] [--stats]`; `--help` says more.

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use ringwire_benches::cli::{parse_wait_batch, server_cores_help, CoreArgs, WaitBatch};
use ringwire_benches::cores::CoreSpec;
use ringwire_benches::server::run_per_core;
use ringwire_benches::wire::{FrameTooLarge, Wire, LEN_PREFIX, MAX_PAYLOAD};
use slab::Slab;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

const NAME: &str = "floor-echo";

/// Submission queue entries per ring; the completion queue has four times as
/// many (the runtime's defaults).
const SQ_ENTRIES: u32 = 1024;
/// Buffer group id of the receive buffer ring.
const BGID: u16 = 0;
/// Most iovecs one `SENDMSG` carries; the rest leaves with the next send.
const MAX_IOV: usize = 64;
/// Completions copied out of the completion queue per batch.
const REAP_BATCH: usize = 64;
/// How long a failed accept waits before it is armed again.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);
/// How long shutdown waits for the kernel to finish every operation.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Kinds of operations, in the top bits of `user_data`; the low 32 bits hold
/// the connection's slab key where there is one.
const OP_ACCEPT: u64 = 1 << 32;
const OP_RECV: u64 = 2 << 32;
const OP_SEND: u64 = 3 << 32;
const OP_STOP: u64 = 4 << 32;
const OP_ACCEPT_RETRY: u64 = 5 << 32;
const OP_IGNORE: u64 = 6 << 32;
const OP_KIND_MASK: u64 = !0xFFFF_FFFF;
/// `IORING_ENTER_GETEVENTS`: run deferred completion work and reap.
const IORING_ENTER_GETEVENTS: u32 = 1;

/// An `io_uring_enter` result, with interruptions, time-outs and a full
/// completion queue (reaping makes room) counted as success.
fn transient_ok(res: io::Result<usize>) -> io::Result<()> {
    match res {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETIME | libc::EINTR | libc::EBUSY)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// How a send that spans several receive buffers is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Gather {
    /// One `SENDMSG` with one iovec per buffer (no user-space copy).
    #[value(name = "sendmsg")]
    SendMsg,
    /// Copy into one per-connection buffer, then one `SEND`.
    Copy,
}

/// Hand-written io_uring echo server with no runtime: the floor reference.
#[derive(Parser, Debug)]
#[command(name = "floor-echo", version)]
struct Args {
    #[command(flatten)]
    cores: CoreArgs,
    /// Address every core listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// raw (echo bytes as they come) or lenprefix (whole messages, each a
    /// 4-byte little-endian length and the payload).
    #[arg(long, value_name = "WIRE", default_value = "lenprefix")]
    wire: Wire,
    /// Several buffers ready for one connection leave in one SENDMSG (one
    /// iovec each) or are copied into one buffer for a plain SEND.
    #[arg(long, value_name = "HOW", value_enum, default_value_t = Gather::SendMsg)]
    gather: Gather,
    /// With C connections receiving, wait for min(C/4, N) completions or
    /// MICROS, whichever comes first (as echo-node); off: wake on the first
    /// completion.
    #[arg(long, value_name = "N:MICROS|off", default_value = "16:50", value_parser = parse_wait_batch)]
    wait_batch: WaitBatch,
    /// Before blocking, poll the ring without sleeping for up to MICROS while
    /// fewer completions than the batch are ready (0: block at once).
    #[arg(long, value_name = "MICROS", default_value_t = 0)]
    spin: u64,
    /// Provided receive buffers per core, a power of two up to 32768 (as
    /// echo-node).
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = parse_recv_buffers)]
    recv_buffers: u16,
    /// Bytes per receive buffer (as echo-node).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 64 * 1024,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    recv_buffer_size: u32,
    /// Largest lenprefix payload, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = MAX_PAYLOAD)]
    max_message: usize,
    /// Print the loop's counters at exit.
    #[arg(long)]
    stats: bool,
}

/// Parses `--recv-buffers`: a power of two in 1..=32768.
fn parse_recv_buffers(v: &str) -> Result<u16, String> {
    let n: u16 = v.parse().map_err(|e| format!("{e}"))?;
    if n == 0 || !n.is_power_of_two() || n > 32768 {
        return Err("expected a power of two in 1..=32768".into());
    }
    Ok(n)
}

#[derive(Clone, Debug)]
struct Config {
    cores: CoreSpec,
    listen: SocketAddr,
    wire: Wire,
    gather: Gather,
    wait_batch: Option<(u32, Duration)>,
    spin: Option<Duration>,
    recv_buffers: u16,
    recv_buffer_size: u32,
    max_message: usize,
    stats: bool,
}

/// Parses the command line (`args` starts with the program name); without
/// `--cpus` or `--cores`, one core.
fn parse_config<I, T>(args: I) -> Result<Config, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = server_cores_help(Args::command(), 1).try_get_matches_from(args)?;
    let a = Args::from_arg_matches(&matches)?;
    Ok(Config {
        cores: CoreSpec::from_args(&a.cores, 1),
        listen: a.listen,
        wire: a.wire,
        gather: a.gather,
        wait_batch: a.wait_batch.0,
        spin: (a.spin > 0).then(|| Duration::from_micros(a.spin)),
        recv_buffers: a.recv_buffers,
        recv_buffer_size: a.recv_buffer_size,
        max_message: a.max_message,
        stats: a.stats,
    })
}

fn main() -> ExitCode {
    // Bad arguments, and --help / --version: clap prints and exits (2, 0).
    let cfg = parse_config(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let cores = match cfg.cores.resolve() {
        Ok(cores) => cores,
        Err(e) => {
            eprintln!("{NAME}: --cores: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = match StopSignal::install() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("{NAME}: cannot set up the stop signal: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "{NAME}: starting on {}, wire {}, gather {:?}, wait batch {:?}, spin {:?}, CPUs {cores:?}",
        cfg.listen, cfg.wire, cfg.gather, cfg.wait_batch, cfg.spin
    );
    let counters: Arc<Mutex<Vec<(usize, Counters)>>> = Arc::default();
    let (cfg2, stop2, counters2) = (cfg.clone(), stop.clone(), Arc::clone(&counters));
    let res = run_per_core(NAME, &cores, move |cpu| {
        let res = serve_core(&cfg2, stop2.fd(), cpu);
        match res {
            Ok(c) => {
                counters2
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((cpu, c));
                Ok(())
            }
            Err(e) => {
                // Stop the other cores too, so the process exits.
                stop2.raise();
                Err(e)
            }
        }
    });
    if cfg.stats {
        let mut all = counters.lock().unwrap_or_else(|p| p.into_inner()).clone();
        all.sort_by_key(|(cpu, _)| *cpu);
        print!("{}", render_counters(&all));
    }
    match res {
        Ok(()) => {
            eprintln!("{NAME}: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{NAME}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An eventfd that becomes readable on SIGINT or SIGTERM; every core keeps a
/// `POLL_ADD` on it, so one write stops them all.
#[derive(Clone)]
struct StopSignal(Arc<OwnedFd>);

impl StopSignal {
    fn install() -> io::Result<Self> {
        // SAFETY: `eventfd` takes no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by `eventfd` and nothing else owns it.
        let stop = StopSignal(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }));
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])?;
        let raiser = stop.clone();
        std::thread::Builder::new()
            .name(format!("{NAME}-signals"))
            .spawn(move || {
                if signals.forever().next().is_some() {
                    raiser.raise();
                }
            })?;
        Ok(stop)
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    fn raise(&self) {
        let fd = self.0.try_clone().map(File::from);
        if let Err(e) = fd.and_then(|mut f| f.write_all(&1u64.to_ne_bytes())) {
            eprintln!("{NAME}: cannot signal the cores to stop: {e}");
        }
    }
}

/// Counters of one core's loop.
#[derive(Clone, Debug, Default)]
struct Counters {
    loop_turns: u64,
    enters: u64,
    sqes: u64,
    cqes: u64,
    recv_cqes: u64,
    messages: u64,
    sends: u64,
    sendmsgs: u64,
    copied_bytes: u64,
    spilled_bytes: u64,
    bytes_sent: u64,
    starved: u64,
    accepts: u64,
}

fn render_counters(all: &[(usize, Counters)]) -> String {
    type Get = fn(&Counters) -> u64;
    let metrics: [(&str, &str, Get); 13] = [
        ("loop_turns_total", "loop turns", |c| c.loop_turns),
        ("io_uring_enters_total", "io_uring_enter calls", |c| {
            c.enters
        }),
        ("ops_submitted_total", "SQEs submitted", |c| c.sqes),
        ("ops_completed_total", "CQEs reaped", |c| c.cqes),
        (
            "recv_completions_total",
            "receive CQEs carrying data",
            |c| c.recv_cqes,
        ),
        ("messages_total", "lenprefix messages received whole", |c| {
            c.messages
        }),
        ("sends_total", "SEND submissions", |c| c.sends),
        ("sendmsgs_total", "SENDMSG (gather) submissions", |c| {
            c.sendmsgs
        }),
        ("copied_bytes_total", "bytes copied by --gather copy", |c| {
            c.copied_bytes
        }),
        (
            "spilled_bytes_total",
            "incomplete-message bytes moved out of a dry buffer ring",
            |c| c.spilled_bytes,
        ),
        ("bytes_sent_total", "bytes sent", |c| c.bytes_sent),
        (
            "starved_total",
            "receives stopped for lack of buffers",
            |c| c.starved,
        ),
        ("accepts_total", "connections accepted", |c| c.accepts),
    ];
    let mut out = String::new();
    for (name, help, get) in metrics {
        out.push_str(&format!(
            "# HELP floor_{name} {help}\n# TYPE floor_{name} counter\n"
        ));
        for (core, (cpu, c)) in all.iter().enumerate() {
            out.push_str(&format!(
                "floor_{name}{{core=\"{core}\",cpu=\"{cpu}\"}} {}\n",
                get(c)
            ));
        }
    }
    out
}

/// Runs one core's loop until the stop signal, returning its counters.
fn serve_core(cfg: &Config, stop_fd: RawFd, cpu: usize) -> Result<Counters, String> {
    let mut floor = Floor::new(cfg).map_err(|e| format!("CPU {cpu}: {e}"))?;
    let res = floor.run(stop_fd);
    let counters = floor.counters.clone();
    if floor.in_kernel() {
        // The kernel may still write into the buffers or read the boxed
        // connections: leak them (and the ring) rather than free them under
        // it. The process is about to exit.
        std::mem::forget(floor);
    }
    res.map_err(|e| format!("loop failed on CPU {cpu}: {e}"))?;
    Ok(counters)
}

/// A listening socket with `SO_REUSEPORT`, so every core can bind `addr`.
fn bind_reuseport(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

/// Where a `lenprefix` stream is, between or inside messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framer {
    /// `have` bytes of the next header have arrived.
    Header { have: u8, bytes: [u8; LEN_PREFIX] },
    /// `left` payload bytes of the current message are still to come.
    Body { left: usize },
}

impl Framer {
    const START: Framer = Framer::Header {
        have: 0,
        bytes: [0; LEN_PREFIX],
    };

    /// Walks `data`, the next bytes of the stream. Returns the offset in
    /// `data` just past the last message that completed in it (0 if none
    /// did) and how many messages completed.
    fn scan(&mut self, data: &[u8], max: usize) -> Result<(usize, u64), FrameTooLarge> {
        let (mut pos, mut end, mut msgs) = (0, 0, 0);
        loop {
            match self {
                Framer::Body { left } => {
                    let take = (*left).min(data.len() - pos);
                    pos += take;
                    *left -= take;
                    if *left > 0 {
                        return Ok((end, msgs));
                    }
                    *self = Framer::START;
                    end = pos;
                    msgs += 1;
                }
                Framer::Header { have, bytes } => {
                    let len = match data.get(pos..pos + LEN_PREFIX) {
                        Some(&[a, b, c, d]) if *have == 0 => {
                            pos += LEN_PREFIX;
                            u32::from_le_bytes([a, b, c, d])
                        }
                        _ => {
                            let have_n = usize::from(*have);
                            let take = (LEN_PREFIX - have_n).min(data.len() - pos);
                            bytes[have_n..have_n + take].copy_from_slice(&data[pos..pos + take]);
                            pos += take;
                            *have += take as u8;
                            if usize::from(*have) < LEN_PREFIX {
                                return Ok((end, msgs));
                            }
                            u32::from_le_bytes(*bytes)
                        }
                    } as usize;
                    if len > max {
                        return Err(FrameTooLarge { len });
                    }
                    *self = Framer::Body { left: len };
                }
            }
        }
    }
}

/// A run of bytes a connection received and has not sent yet.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    /// `len` bytes at `off` in receive buffer `bid`, which the connection
    /// holds until their last byte is sent.
    Buf { bid: u16, off: u32, len: u32 },
    /// Bytes of an incomplete message moved out of the receive buffers when
    /// the buffer ring ran dry, from `off` on.
    Heap { bytes: Vec<u8>, off: usize },
}

impl Piece {
    fn len(&self) -> usize {
        match self {
            Piece::Buf { len, .. } => *len as usize,
            Piece::Heap { bytes, off } => bytes.len() - off,
        }
    }
}

/// Where the bytes of [`Piece::Buf`] live.
trait BufMem {
    /// Bytes `off..off + len` of buffer `bid`, which the caller holds.
    fn bytes(&self, bid: u16, off: u32, len: u32) -> &[u8];
}

/// The bytes a connection received and has not sent yet, in order, where
/// they lie, and how much of them is whole messages.
#[derive(Debug)]
struct Stream {
    pieces: VecDeque<Piece>,
    bytes: usize,
    /// Bytes from the front that end on a message boundary.
    sendable: usize,
    /// `None` in raw mode: every byte may be echoed at once.
    framer: Option<Framer>,
}

impl Stream {
    fn new(wire: Wire) -> Self {
        Stream {
            pieces: VecDeque::new(),
            bytes: 0,
            sendable: 0,
            framer: (wire == Wire::LenPrefix).then_some(Framer::START),
        }
    }

    /// Appends `data`, which the kernel put at the start of buffer `bid`;
    /// returns how many messages it completed. On error the buffer is held
    /// all the same (released with the connection).
    fn push(&mut self, bid: u16, data: &[u8], max: usize) -> Result<u64, FrameTooLarge> {
        let before = self.bytes;
        self.pieces.push_back(Piece::Buf {
            bid,
            off: 0,
            len: data.len() as u32,
        });
        self.bytes += data.len();
        match &mut self.framer {
            None => {
                self.sendable = self.bytes;
                Ok(0)
            }
            Some(framer) => {
                let (end, msgs) = framer.scan(data, max)?;
                if msgs > 0 {
                    self.sendable = before + end;
                }
                Ok(msgs)
            }
        }
    }

    /// The sendable bytes as slices, at most `max_pieces` of them, handed
    /// to `f` in order; returns their total length.
    fn sendable_pieces<'a>(
        &'a self,
        mem: &'a impl BufMem,
        max_pieces: usize,
        mut f: impl FnMut(&'a [u8]),
    ) -> usize {
        let mut left = self.sendable;
        for piece in self.pieces.iter().take(max_pieces) {
            if left == 0 {
                break;
            }
            let take = piece.len().min(left);
            f(match piece {
                Piece::Buf { bid, off, .. } => mem.bytes(*bid, *off, take as u32),
                Piece::Heap { bytes, off } => &bytes[*off..*off + take],
            });
            left -= take;
        }
        self.sendable - left
    }

    /// The sendable bytes if they lie in one piece (the common case).
    fn sendable_in_one<'a>(&'a self, mem: &'a impl BufMem) -> Option<&'a [u8]> {
        let first = self.pieces.front()?;
        if self.sendable == 0 || first.len() < self.sendable {
            return None;
        }
        let mut one = None;
        self.sendable_pieces(mem, 1, |s| one = Some(s));
        one
    }

    /// Drops `n` sent bytes from the front, handing every buffer whose last
    /// byte was sent to `recycle`.
    fn consume(&mut self, n: usize, mut recycle: impl FnMut(u16)) {
        let n = n.min(self.sendable);
        let mut left = n;
        while left > 0 {
            let Some(front) = self.pieces.front_mut() else {
                break;
            };
            let len = front.len();
            if len <= left {
                left -= len;
                if let Some(Piece::Buf { bid, .. }) = self.pieces.pop_front() {
                    recycle(bid);
                }
            } else {
                match front {
                    Piece::Buf { off, len, .. } => {
                        *off += left as u32;
                        *len -= left as u32;
                    }
                    Piece::Heap { off, .. } => *off += left,
                }
                left = 0;
            }
        }
        self.bytes -= n;
        self.sendable -= n;
    }

    /// Moves the incomplete message at the end out of the receive buffers
    /// into one heap piece, handing the buffers it alone occupied to
    /// `recycle`, so a message larger than the free buffers can still
    /// arrive. Returns how many bytes were copied (0 if that would free no
    /// buffer). Bytes up to `sendable` (and so any send in flight) stay put.
    fn spill_tail(&mut self, mem: &impl BufMem, mut recycle: impl FnMut(u16)) -> usize {
        // Find the piece in which the sendable bytes end.
        let (mut idx, mut before) = (0, 0);
        while idx < self.pieces.len() && before + self.pieces[idx].len() <= self.sendable {
            before += self.pieces[idx].len();
            idx += 1;
        }
        // The tail starts `keep` bytes into piece `idx`; spilling frees a
        // buffer only if the tail covers a buffer piece from its start.
        let keep = self.sendable - before;
        let frees = self
            .pieces
            .iter()
            .skip(idx + usize::from(keep > 0))
            .any(|p| matches!(p, Piece::Buf { .. }));
        if !frees {
            return 0;
        }
        let mut tail = Vec::with_capacity(self.bytes - self.sendable);
        if keep > 0 {
            match &mut self.pieces[idx] {
                Piece::Buf { bid, off, len } => {
                    tail.extend_from_slice(mem.bytes(*bid, *off + keep as u32, *len - keep as u32));
                    *len = keep as u32;
                }
                Piece::Heap { bytes, off } => {
                    tail.extend_from_slice(&bytes[*off + keep..]);
                    bytes.truncate(*off + keep);
                }
            }
            idx += 1;
        }
        for piece in self.pieces.drain(idx..) {
            match piece {
                Piece::Buf { bid, off, len } => {
                    tail.extend_from_slice(mem.bytes(bid, off, len));
                    recycle(bid);
                }
                Piece::Heap { bytes, off } => tail.extend_from_slice(&bytes[off..]),
            }
        }
        let copied = tail.len();
        self.pieces.push_back(Piece::Heap {
            bytes: tail,
            off: 0,
        });
        copied
    }

    /// Hands every buffer still held to `recycle` (the connection is gone).
    fn release(&mut self, mut recycle: impl FnMut(u16)) {
        for piece in self.pieces.drain(..) {
            if let Piece::Buf { bid, .. } = piece {
                recycle(bid);
            }
        }
        self.bytes = 0;
        self.sendable = 0;
    }
}

/// What a connection's send in flight was made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sending {
    /// No send in flight.
    Idle,
    /// The first `n` bytes of the stream.
    Stream(usize),
    /// `out[out_pos..]`.
    Out,
}

/// One accepted connection.
///
/// Boxed in the slab: a `SENDMSG` in flight points at `msg` and `iov`, so
/// their addresses must not move.
struct Conn {
    fd: OwnedFd,
    stream: Stream,
    /// Bytes copied out of the receive buffers (`--gather copy`), sent
    /// before anything still held.
    out: Vec<u8>,
    out_pos: usize,
    sending: Sending,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
    /// A multishot receive is in the kernel.
    recv_armed: bool,
    /// The receive stopped without end of stream or error (no buffers).
    recv_starved: bool,
    /// The peer ended its stream: send what is whole, then close.
    eof: bool,
    /// Error or shutdown: send nothing more, free once no operation is in
    /// the kernel.
    closing: bool,
    /// Listed in `Floor::dirty` for this turn.
    queued: bool,
}

impl Conn {
    fn new(fd: OwnedFd, wire: Wire) -> Box<Self> {
        Box::new(Conn {
            fd,
            stream: Stream::new(wire),
            out: Vec::new(),
            out_pos: 0,
            sending: Sending::Idle,
            iov: Vec::with_capacity(MAX_IOV),
            // SAFETY: `msghdr` is plain data for which all zeroes (null
            // pointers, zero lengths) is a valid value.
            msg: unsafe { std::mem::zeroed() },
            recv_armed: false,
            recv_starved: false,
            eof: false,
            closing: false,
            queued: false,
        })
    }

    /// Whether no operation of this connection is in the kernel.
    fn idle_in_kernel(&self) -> bool {
        !self.recv_armed && self.sending == Sending::Idle
    }

    /// Stops the connection: no more sends, and the receive ends soon
    /// (`shutdown` makes the kernel complete it).
    fn close(&mut self) {
        if !self.closing {
            self.closing = true;
            // Errors mean the socket is already down, which is the goal.
            let _ = SockRef::from(&self.fd).shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The provided buffer ring and the buffers it hands to the kernel.
///
/// Buffers are slices of one page-aligned allocation of `count * size`
/// bytes. The kernel picks one per receive completion and names it in the
/// completion's flags; it is ours until [`BufRing::recycle`] and
/// [`BufRing::publish`] give it back.
struct BufRing {
    entries: NonNull<BufRingEntry>,
    entries_layout: Layout,
    mem: NonNull<u8>,
    mem_layout: Layout,
    mask: u16,
    count: u16,
    size: u32,
    /// Our tail; published to the kernel by `publish`.
    tail: u16,
    /// Buffers the kernel may fill.
    available: u16,
    /// Entries were added since the last `publish`.
    unpublished: bool,
}

impl BufRing {
    /// Allocates `count` buffers of `size` bytes and registers them with
    /// `ring` as group [`BGID`].
    fn new(ring: &IoUring, count: u16, size: u32) -> io::Result<Self> {
        if count == 0 || !count.is_power_of_two() || count > 32768 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "receive buffers: count must be a power of two up to 32768, size positive",
            ));
        }
        let invalid = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
        let entries_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(invalid)?;
        let mem_layout =
            Layout::from_size_align(usize::from(count) * size as usize, 4096).map_err(invalid)?;
        // SAFETY: the layout has a non-zero size (count >= 1).
        let entries = NonNull::new(unsafe { alloc::alloc_zeroed(entries_layout) })
            .ok_or(io::ErrorKind::OutOfMemory)?
            .cast::<BufRingEntry>();
        // SAFETY: the layout has a non-zero size (count >= 1, size >= 1).
        let Some(mem) = NonNull::new(unsafe { alloc::alloc_zeroed(mem_layout) }) else {
            // SAFETY: allocated just above with this layout, not shared.
            unsafe { alloc::dealloc(entries.as_ptr().cast(), entries_layout) };
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        let mut bufs = BufRing {
            entries,
            entries_layout,
            mem,
            mem_layout,
            mask: count - 1,
            count,
            size,
            tail: 0,
            available: 0,
            unpublished: false,
        };
        // SAFETY: the entry array is page aligned and `count` entries long;
        // `Floor` drops (or, if the kernel still uses it, leaks) this ring
        // only after the io_uring is closed.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                count,
                BGID,
                0,
            )?;
        }
        for bid in 0..count {
            bufs.recycle(bid);
        }
        bufs.publish();
        Ok(bufs)
    }

    /// The first `len` bytes of buffer `bid`, which a receive completion
    /// just handed to us; `None` if the kernel named no such buffer.
    fn filled(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= self.count || len > self.size as usize {
            return None;
        }
        // SAFETY: `bid < count` and `len <= size`, so the range lies inside
        // the allocation. The kernel wrote these bytes before posting the
        // completion and writes nothing more into this buffer until it is
        // recycled and published again.
        Some(unsafe { std::slice::from_raw_parts(self.ptr(bid), len) })
    }

    /// Start of buffer `bid` (`bid < count`).
    fn ptr(&self, bid: u16) -> *mut u8 {
        debug_assert!(bid < self.count);
        // SAFETY: callers pass a `bid` below `count`, so the offset stays
        // inside the allocation of `count * size` bytes.
        unsafe { self.mem.as_ptr().add(usize::from(bid) * self.size as usize) }
    }

    /// Notes that the kernel used one buffer.
    fn taken(&mut self) {
        self.available = self.available.saturating_sub(1);
    }

    /// Queues buffer `bid` for the kernel; `publish` makes it visible.
    fn recycle(&mut self, bid: u16) {
        let idx = usize::from(self.tail & self.mask);
        let addr = self.ptr(bid) as u64;
        // Field by field through raw pointers: entry 0's last field is the
        // ring's tail, which the kernel reads at any time (kernel ABI
        // `struct io_uring_buf`: addr u64 at 0, len u32 at 8, bid u16 at 12).
        // SAFETY: `idx < count`, so the entry is inside the array; the
        // offsets are aligned for their types (the array is page aligned).
        // The kernel reads only entries below the published tail, and this
        // one is at or above it until `publish`.
        unsafe {
            let entry = self.entries.as_ptr().add(idx).cast::<u8>();
            entry.cast::<u64>().write(addr);
            entry.add(8).cast::<u32>().write(self.size);
            entry.add(12).cast::<u16>().write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        self.available += 1;
        self.unpublished = true;
    }

    /// Makes recycled buffers visible to the kernel (one store per turn).
    fn publish(&mut self) {
        if !self.unpublished {
            return;
        }
        self.unpublished = false;
        // SAFETY: the tail field lies inside entry 0 of the live, page-aligned
        // array; the kernel reads it concurrently, hence the atomic release
        // store, which also orders the entry writes before it.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl BufMem for BufRing {
    fn bytes(&self, bid: u16, off: u32, len: u32) -> &[u8] {
        debug_assert!(bid < self.count && off as usize + len as usize <= self.size as usize);
        // SAFETY: a `Piece::Buf` only ever describes received bytes of a
        // buffer the connection holds (checked by `filled` on arrival), so
        // the range is in bounds and the kernel does not write it.
        unsafe { std::slice::from_raw_parts(self.ptr(bid).add(off as usize), len as usize) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both were allocated in `new` with these layouts, and the
        // io_uring that could use them is closed (see `Floor`'s field order).
        unsafe {
            alloc::dealloc(self.entries.as_ptr().cast(), self.entries_layout);
            alloc::dealloc(self.mem.as_ptr(), self.mem_layout);
        }
    }
}

/// One core's echo loop.
///
/// Field order matters: `ring` is dropped (closed) before the buffers and
/// connections its operations point into.
struct Floor {
    ring: IoUring,
    bufs: BufRing,
    conns: Slab<Box<Conn>>,
    listener: Socket,
    /// Completions copied out of the completion queue, handled in batches.
    completions: Vec<(u64, i32, u32)>,
    /// Connections to look at when this turn's completions are handled.
    dirty: Vec<usize>,
    /// Connections whose receive stopped for lack of buffers.
    starved: Vec<usize>,
    /// Connections with a multishot receive in the kernel.
    receiving: usize,
    accept_armed: bool,
    accept_retry: Option<Timespec>,
    stopping: bool,
    wire: Wire,
    gather: Gather,
    wait_batch: Option<(u32, Timespec)>,
    spin: Option<Duration>,
    max_message: usize,
    counters: Counters,
}

impl Floor {
    /// Sets up the ring and its buffers, then listens (last, so that an open
    /// port means a ready loop).
    fn new(cfg: &Config) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_defer_taskrun()
            .setup_cqsize(SQ_ENTRIES * 4)
            .build(SQ_ENTRIES)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "io_uring_setup with SINGLE_ISSUER | COOP_TASKRUN | DEFER_TASKRUN failed \
                         ({e}); this needs Linux 6.1 or later"
                    ),
                )
            })?;
        let bufs = BufRing::new(&ring, cfg.recv_buffers, cfg.recv_buffer_size).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("registering the provided buffer ring failed: {e}"),
            )
        })?;
        let listener = bind_reuseport(cfg.listen).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", cfg.listen))
        })?;
        Ok(Floor {
            ring,
            bufs,
            conns: Slab::new(),
            listener,
            completions: Vec::with_capacity(REAP_BATCH),
            dirty: Vec::new(),
            starved: Vec::new(),
            receiving: 0,
            accept_armed: false,
            accept_retry: None,
            stopping: false,
            wire: cfg.wire,
            gather: cfg.gather,
            wait_batch: cfg.wait_batch.map(|(n, d)| (n, Timespec::from(d))),
            spin: cfg.spin,
            max_message: cfg.max_message,
            counters: Counters::default(),
        })
    }

    /// Queues one SQE, submitting first if the queue is full.
    ///
    /// # Safety
    ///
    /// Every buffer, iovec and message header `entry` points to must stay
    /// valid and unmoved until its final completion is reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: forwarded from the caller.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                self.counters.sqes += 1;
                return Ok(());
            }
            self.ring.submit()?;
            self.counters.enters += 1;
        }
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        let entry = opcode::AcceptMulti::new(Fd(self.listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(OP_ACCEPT);
        // SAFETY: a multishot accept points to no memory of ours.
        unsafe { self.push(&entry) }?;
        self.accept_armed = true;
        Ok(())
    }

    fn arm_recv(&mut self, key: usize) -> io::Result<()> {
        let conn = &mut self.conns[key];
        let entry = opcode::RecvMulti::new(Fd(conn.fd.as_raw_fd()), BGID)
            .build()
            .user_data(OP_RECV | key as u64);
        conn.recv_armed = true;
        conn.recv_starved = false;
        self.receiving += 1;
        // SAFETY: the receive writes only into provided buffers, which live
        // until the ring is closed.
        unsafe { self.push(&entry) }
    }

    /// Runs the loop until the stop eventfd becomes readable, then drains.
    fn run(&mut self, stop_fd: RawFd) -> io::Result<()> {
        let stop = opcode::PollAdd::new(Fd(stop_fd), libc::POLLIN as u32)
            .build()
            .user_data(OP_STOP);
        // SAFETY: a poll points to no memory of ours.
        unsafe { self.push(&stop) }?;
        self.arm_accept()?;
        while !self.stopping {
            self.counters.loop_turns += 1;
            self.enter()?;
            self.reap()?;
            self.flush()?;
        }
        self.drain()
    }

    /// Submits this turn's SQEs and waits for completions, in one
    /// `io_uring_enter`.
    fn enter(&mut self) -> io::Result<()> {
        let want = match self.wait_batch {
            Some((max, _)) => (self.receiving / 4).min(max as usize).max(1),
            None => 1,
        };
        if let Some(budget) = self.spin {
            // Poll without sleeping until the batch is there or the budget
            // is spent; only an empty completion queue then blocks.
            let start = Instant::now();
            loop {
                self.enter_nowait()?;
                let ready = self.ring.completion().len();
                if ready >= want || (ready > 0 && start.elapsed() >= budget) {
                    return Ok(());
                }
                if start.elapsed() >= budget {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        let res = match &self.wait_batch {
            Some((_, ts)) if want > 1 => {
                let args = SubmitArgs::new().timespec(ts);
                self.ring.submitter().submit_with_args(want, &args)
            }
            _ => self.ring.submitter().submit_and_wait(1),
        };
        self.counters.enters += 1;
        transient_ok(res)
    }

    /// Submits and runs the kernel's deferred completion work, without
    /// waiting.
    fn enter_nowait(&mut self) -> io::Result<()> {
        let to_submit = self.ring.submission().len() as u32;
        // SAFETY: no argument is passed; the queued SQEs obey `push`'s
        // contract.
        let res = unsafe {
            self.ring.submitter().enter::<libc::sigset_t>(
                to_submit,
                0,
                IORING_ENTER_GETEVENTS,
                None,
            )
        };
        self.counters.enters += 1;
        transient_ok(res)
    }

    /// Handles every completion in the completion queue.
    fn reap(&mut self) -> io::Result<()> {
        let mut batch = std::mem::take(&mut self.completions);
        let res = loop {
            batch.clear();
            batch.extend(
                self.ring
                    .completion()
                    .take(REAP_BATCH)
                    .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
            );
            if batch.is_empty() {
                break Ok(());
            }
            self.counters.cqes += batch.len() as u64;
            if let Err(e) = batch
                .iter()
                .try_for_each(|&(user_data, res, flags)| self.complete(user_data, res, flags))
            {
                break Err(e);
            }
        };
        self.completions = batch;
        res
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) -> io::Result<()> {
        let key = (user_data & 0xFFFF_FFFF) as usize;
        match user_data & OP_KIND_MASK {
            OP_RECV => self.on_recv(key, res, flags),
            OP_SEND => self.on_send(key, res),
            OP_ACCEPT => self.on_accept(res, flags)?,
            OP_ACCEPT_RETRY => {
                self.accept_retry = None;
                if !self.stopping {
                    self.arm_accept()?;
                }
            }
            OP_STOP => self.stopping = true,
            _ => {}
        }
        Ok(())
    }

    fn on_accept(&mut self, res: i32, flags: u32) -> io::Result<()> {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if res < 0 {
            let e = io::Error::from_raw_os_error(-res);
            if !self.stopping && e.raw_os_error() != Some(libc::ECANCELED) {
                eprintln!("{NAME}: accept failed: {e}; retrying in {ACCEPT_RETRY:?}");
            }
        } else {
            // SAFETY: a successful accept completion carries a new descriptor
            // that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            if !self.stopping {
                self.counters.accepts += 1;
                // Failing is harmless: the echo is still correct, only slower.
                let _ = SockRef::from(&fd).set_tcp_nodelay(true);
                let key = self.conns.insert(Conn::new(fd, self.wire));
                self.arm_recv(key)?;
            }
        }
        if !self.accept_armed && !self.stopping && self.accept_retry.is_none() {
            if res < 0 {
                // Back off (out of descriptors, say) instead of spinning.
                let ts = self.accept_retry.insert(Timespec::from(ACCEPT_RETRY));
                let entry = opcode::Timeout::new(ts).build().user_data(OP_ACCEPT_RETRY);
                // SAFETY: `ts` lives in `self.accept_retry`, which is cleared
                // only when this timeout completes.
                unsafe { self.push(&entry) }?;
            } else {
                self.arm_accept()?;
            }
        }
        Ok(())
    }

    fn on_recv(&mut self, key: usize, res: i32, flags: u32) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !cqueue::more(flags) {
            conn.recv_armed = false;
            self.receiving -= 1;
        }
        if res > 0 {
            self.counters.recv_cqes += 1;
            self.bufs.taken();
            let filled = cqueue::buffer_select(flags)
                .and_then(|bid| Some((bid, self.bufs.filled(bid, res as usize)?)));
            match filled {
                None => {
                    eprintln!("{NAME}: receive completion without a valid buffer");
                    conn.close();
                }
                Some((bid, _)) if conn.closing || conn.eof => self.bufs.recycle(bid),
                Some((bid, data)) => match conn.stream.push(bid, data, self.max_message) {
                    Ok(msgs) => self.counters.messages += msgs,
                    Err(FrameTooLarge { len }) => {
                        eprintln!(
                            "{NAME}: closing a connection: a message announces {len} payload \
                             bytes, more than --max-message {}",
                            self.max_message
                        );
                        conn.close();
                    }
                },
            }
        } else if res == 0 {
            conn.eof = true;
        } else if res == -libc::ENOBUFS {
            self.counters.starved += 1;
        } else {
            if !matches!(-res, libc::ECONNRESET | libc::EPIPE | libc::ECANCELED) {
                let e = io::Error::from_raw_os_error(-res);
                eprintln!("{NAME}: receive failed, closing the connection: {e}");
            }
            conn.close();
        }
        if !conn.recv_armed && !conn.eof && !conn.closing && !conn.recv_starved {
            // Stopped for lack of buffers (or another transient reason):
            // armed again once buffers are back.
            conn.recv_starved = true;
            self.starved.push(key);
        }
        if !conn.queued {
            conn.queued = true;
            self.dirty.push(key);
        }
    }

    fn on_send(&mut self, key: usize, res: i32) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let sending = std::mem::replace(&mut conn.sending, Sending::Idle);
        if res < 0 {
            if !matches!(-res, libc::ECONNRESET | libc::EPIPE) {
                let e = io::Error::from_raw_os_error(-res);
                eprintln!("{NAME}: send failed, closing the connection: {e}");
            }
            conn.close();
        } else {
            let n = res as usize;
            self.counters.bytes_sent += n as u64;
            match sending {
                Sending::Stream(len) => {
                    let bufs = &mut self.bufs;
                    // A short send leaves the rest sendable for the next one.
                    conn.stream.consume(n.min(len), |bid| bufs.recycle(bid));
                }
                Sending::Out => {
                    conn.out_pos += n;
                    if conn.out_pos >= conn.out.len() {
                        conn.out.clear();
                        conn.out_pos = 0;
                    }
                }
                Sending::Idle => {}
            }
        }
        if !conn.queued {
            conn.queued = true;
            self.dirty.push(key);
        }
    }

    /// End of turn: one send per connection with something whole to send,
    /// frees finished connections, re-arms starved receives, and gives the
    /// recycled buffers back to the kernel.
    fn flush(&mut self) -> io::Result<()> {
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.queued = false;
            if conn.sending != Sending::Idle {
                continue;
            }
            if !conn.closing {
                if let Some(entry) = self.build_send(key) {
                    // SAFETY: the send points into buffers the connection
                    // holds (recycled only by this send's completion), into
                    // `out` (untouched while a send is in flight) or into the
                    // boxed connection's `msg` and `iov` (likewise); the box
                    // is freed only once no operation of it is in the kernel.
                    unsafe { self.push(&entry) }?;
                    continue;
                }
            }
            let conn = &mut self.conns[key];
            if (conn.closing || conn.eof) && conn.idle_in_kernel() {
                let mut conn = self.conns.remove(key);
                let bufs = &mut self.bufs;
                conn.stream.release(|bid| bufs.recycle(bid));
            }
        }
        self.dirty = dirty;
        if !self.starved.is_empty() && self.bufs.available == 0 {
            self.spill();
        }
        if !self.starved.is_empty() && self.bufs.available > 0 {
            let starved = std::mem::take(&mut self.starved);
            for key in starved {
                if self
                    .conns
                    .get(key)
                    .is_some_and(|c| c.recv_starved && !c.closing && !c.eof)
                {
                    self.arm_recv(key)?;
                }
            }
        }
        self.bufs.publish();
        Ok(())
    }

    /// The buffer ring ran dry with receives waiting: move every incomplete
    /// message out of the buffers it occupies alone. Whole messages leave with
    /// their sends and give their buffers back anyway; incomplete ones could
    /// otherwise hold every buffer while waiting for bytes that need one.
    fn spill(&mut self) {
        let mut freed = Vec::new();
        for (_, conn) in self.conns.iter_mut() {
            if !conn.closing {
                let copied = conn.stream.spill_tail(&self.bufs, |bid| freed.push(bid));
                self.counters.spilled_bytes += copied as u64;
            }
        }
        for bid in freed {
            self.bufs.recycle(bid);
        }
    }

    /// The send for connection `key`, if it has whole messages to send.
    fn build_send(&mut self, key: usize) -> Option<squeue::Entry> {
        let conn = &mut self.conns[key];
        let fd = Fd(conn.fd.as_raw_fd());
        let user_data = OP_SEND | key as u64;
        if conn.out_pos < conn.out.len() {
            let rest = &conn.out[conn.out_pos..];
            conn.sending = Sending::Out;
            self.counters.sends += 1;
            let entry = opcode::Send::new(fd, rest.as_ptr(), rest.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build();
            return Some(entry.user_data(user_data));
        }
        if conn.stream.sendable == 0 {
            return None;
        }
        let bufs = &self.bufs;
        if let Some(one) = conn.stream.sendable_in_one(bufs) {
            // The common case: everything whole lies in one buffer.
            conn.sending = Sending::Stream(one.len());
            self.counters.sends += 1;
            let entry = opcode::Send::new(fd, one.as_ptr(), one.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build();
            return Some(entry.user_data(user_data));
        }
        match self.gather {
            Gather::SendMsg => {
                conn.iov.clear();
                let iov = &mut conn.iov;
                let len = conn.stream.sendable_pieces(bufs, MAX_IOV, |piece| {
                    iov.push(libc::iovec {
                        iov_base: piece.as_ptr() as *mut libc::c_void,
                        iov_len: piece.len(),
                    });
                });
                conn.msg.msg_iov = conn.iov.as_mut_ptr();
                conn.msg.msg_iovlen = conn.iov.len() as _;
                conn.sending = Sending::Stream(len);
                self.counters.sendmsgs += 1;
                let entry = opcode::SendMsg::new(fd, &conn.msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build();
                Some(entry.user_data(user_data))
            }
            Gather::Copy => {
                conn.out.clear();
                conn.out_pos = 0;
                let out = &mut conn.out;
                let len = conn
                    .stream
                    .sendable_pieces(bufs, usize::MAX, |piece| out.extend_from_slice(piece));
                let bufs = &mut self.bufs;
                conn.stream.consume(len, |bid| bufs.recycle(bid));
                self.counters.copied_bytes += len as u64;
                conn.sending = Sending::Out;
                self.counters.sends += 1;
                let entry = opcode::Send::new(fd, conn.out.as_ptr(), len as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build();
                Some(entry.user_data(user_data))
            }
        }
    }

    /// Shuts every connection down and waits (bounded) until the kernel has
    /// finished every operation that points into our memory.
    fn drain(&mut self) -> io::Result<()> {
        if self.accept_armed {
            let entry = opcode::AsyncCancel::new(OP_ACCEPT)
                .build()
                .user_data(OP_IGNORE);
            // SAFETY: a cancel request points to no memory of ours.
            unsafe { self.push(&entry) }?;
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let conn = &mut self.conns[key];
            conn.close();
            if !conn.queued {
                conn.queued = true;
                self.dirty.push(key);
            }
        }
        let start = Instant::now();
        let tick = Timespec::from(Duration::from_millis(10));
        loop {
            self.flush()?;
            if !self.in_kernel() {
                return Ok(());
            }
            if start.elapsed() > DRAIN_LIMIT {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} connections still had operations in the kernel after {DRAIN_LIMIT:?}",
                        self.conns.len()
                    ),
                ));
            }
            let args = SubmitArgs::new().timespec(&tick);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                Err(e) => return Err(e),
            }
            self.reap()?;
        }
    }

    /// Whether an operation that points into our memory may still be in the
    /// kernel (a connection exists only while one of its operations is).
    fn in_kernel(&self) -> bool {
        self.accept_armed || self.accept_retry.is_some() || !self.conns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Receive buffers in plain memory, by buffer id.
    struct Mem(Vec<Vec<u8>>);

    impl BufMem for Mem {
        fn bytes(&self, bid: u16, off: u32, len: u32) -> &[u8] {
            &self.0[usize::from(bid)][off as usize..(off + len) as usize]
        }
    }

    /// A deterministic pseudo-random sequence (xorshift64).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// `lenprefix` frames of these payload sizes, with distinct bytes, and
    /// the stream offsets at which each frame ends.
    fn frames(sizes: &[usize]) -> (Vec<u8>, Vec<usize>) {
        let (mut out, mut ends) = (Vec::new(), Vec::new());
        for (i, &n) in sizes.iter().enumerate() {
            out.extend_from_slice(&(n as u32).to_le_bytes());
            out.extend((0..n).map(|j| (i * 31 + j * 7) as u8));
            ends.push(out.len());
        }
        (out, ends)
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        parse_config(std::iter::once(NAME).chain(args.iter().copied()))
    }

    #[test]
    fn flags() {
        let cfg = parse(&[]).unwrap();
        assert_eq!(cfg.cores, CoreSpec::Count(1));
        assert_eq!(cfg.listen, SocketAddr::from(([127, 0, 0, 1], 7000)));
        assert_eq!(cfg.wire, Wire::LenPrefix);
        assert_eq!(cfg.gather, Gather::SendMsg);
        assert_eq!(cfg.wait_batch, Some((16, Duration::from_micros(50))));
        assert_eq!(cfg.spin, None);
        assert_eq!((cfg.recv_buffers, cfg.recv_buffer_size), (256, 64 * 1024));
        assert_eq!(cfg.max_message, MAX_PAYLOAD);
        assert!(!cfg.stats);
        let cfg = parse(&[
            "--cores",
            "1",
            "--listen",
            "127.0.0.1:7100",
            "--wire",
            "raw",
            "--stats",
            "--gather=copy",
            "--wait-batch",
            "off",
            "--recv-buffers",
            "64",
        ])
        .unwrap();
        assert_eq!(cfg.cores, CoreSpec::Count(1));
        assert_eq!(cfg.listen.port(), 7100);
        assert_eq!(cfg.wire, Wire::Raw);
        assert_eq!(cfg.gather, Gather::Copy);
        assert_eq!(cfg.wait_batch, None);
        assert_eq!(cfg.recv_buffers, 64);
        assert!(cfg.stats);
        let cfg = parse(&[
            "--cores",
            "0,1",
            "--spin",
            "20",
            "--wait-batch=4:10",
            "--recv-buffer-size",
            "4096",
            "--max-message",
            "1000",
            "--gather",
            "sendmsg",
        ])
        .unwrap();
        assert_eq!(cfg.cores, CoreSpec::List(vec![0, 1]));
        assert_eq!(cfg.spin, Some(Duration::from_micros(20)));
        assert_eq!(cfg.wait_batch, Some((4, Duration::from_micros(10))));
        assert_eq!((cfg.recv_buffer_size, cfg.max_message), (4096, 1000));
        assert_eq!(cfg.gather, Gather::SendMsg);
        assert_eq!(parse(&["--spin", "0"]).unwrap().spin, None);
        assert_eq!(
            parse(&["--cpus", "1"]).unwrap().cores,
            CoreSpec::List(vec![1])
        );
        for bad in [
            &["--recv-buffers", "100"][..],
            &["--recv-buffers", "0"][..],
            &["--recv-buffers", "65536"][..],
            &["--recv-buffer-size", "0"][..],
            &["--wait-batch", "16"][..],
            &["--wait-batch", "x:1"][..],
            &["--gather", "splice"][..],
            &["--wire", "json"][..],
            &["--listen", "nowhere"][..],
            &["--cores", "0"][..],
            &["--spin", "-1"][..],
            &["--stats", "1"][..],
        ] {
            let e = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        let help = parse(&["--help"]).unwrap_err();
        assert_eq!(help.exit_code(), 0);
        let help = help.to_string();
        assert!(
            help.contains("Without --cpus or --cores: 1 core."),
            "{help}"
        );
    }

    #[test]
    fn framer_finds_every_boundary_whatever_the_split() {
        let (bytes, ends) = frames(&[0, 1, 5, 300, 0, 2]);
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let mut framer = Framer::START;
                let mut found = Vec::new();
                let mut base = 0;
                for chunk in [&bytes[..a], &bytes[a..b], &bytes[b..]] {
                    let (end, msgs) = framer.scan(chunk, 1000).unwrap();
                    // Every message ending in this chunk is counted; the last
                    // one's end is reported.
                    let here: Vec<usize> = ends
                        .iter()
                        .copied()
                        .filter(|&e| e > base && e <= base + chunk.len())
                        .collect();
                    assert_eq!(msgs, here.len() as u64, "split {a}/{b}");
                    if let Some(&last) = here.last() {
                        assert_eq!(base + end, last, "split {a}/{b}");
                    } else {
                        assert_eq!(end, 0, "split {a}/{b}");
                    }
                    found.extend(here);
                    base += chunk.len();
                }
                assert_eq!(found, ends);
                assert_eq!(framer, Framer::START);
            }
        }
    }

    #[test]
    fn framer_rejects_an_oversized_header_even_split() {
        let header = 70_000u32.to_le_bytes();
        for cut in 0..=header.len() {
            let mut framer = Framer::START;
            let first = framer.scan(&header[..cut], 65_536);
            let second = framer.scan(&header[cut..], 65_536);
            let err = if cut == header.len() { first } else { second };
            assert_eq!(err, Err(FrameTooLarge { len: 70_000 }), "cut {cut}");
        }
        // At the limit is fine.
        let mut framer = Framer::START;
        assert_eq!(framer.scan(&65_536u32.to_le_bytes(), 65_536), Ok((0, 0)));
    }

    /// Feeds a stream in random chunks through `Stream`, sending with short
    /// sends and spilling at random, and checks that exactly the whole
    /// messages come out, in order, and every buffer comes back once.
    fn simulate(wire: Wire, seed: u64, spill_often: bool) {
        let mut rng = Rng(seed);
        let sizes: Vec<usize> = (0..200).map(|_| rng.below(3000)).collect();
        let (input, ends) = frames(&sizes);
        let boundaries: std::collections::HashSet<usize> =
            ends.iter().copied().chain([0]).collect();
        let mut mem = Mem(Vec::new());
        let mut stream = Stream::new(wire);
        let mut output = Vec::new();
        let mut recycled = std::collections::HashSet::new();
        let mut fed = 0;
        while fed < input.len() || stream.sendable > 0 {
            if fed < input.len() {
                let n = (1 + rng.below(5000)).min(input.len() - fed);
                let bid = mem.0.len() as u16;
                mem.0.push(input[fed..fed + n].to_vec());
                stream.push(bid, &input[fed..fed + n], 1 << 20).unwrap();
                fed += n;
            }
            if spill_often || rng.below(4) == 0 {
                stream.spill_tail(&mem, |bid| assert!(recycled.insert(bid)));
            }
            if wire == Wire::LenPrefix {
                assert!(boundaries.contains(&(output.len() + stream.sendable)));
            } else {
                assert_eq!(output.len() + stream.sendable, fed);
            }
            let mut sent = Vec::new();
            let max_pieces = 1 + rng.below(3);
            let total = stream.sendable_pieces(&mem, max_pieces, |p| sent.extend_from_slice(p));
            assert_eq!(total, sent.len());
            if let Some(one) = stream.sendable_in_one(&mem) {
                assert_eq!(one.len(), stream.sendable);
                assert_eq!(one, &sent[..]);
            }
            // A short send, sometimes.
            let n = if rng.below(3) == 0 {
                rng.below(total + 1)
            } else {
                total
            };
            output.extend_from_slice(&sent[..n]);
            stream.consume(n, |bid| assert!(recycled.insert(bid)));
            assert_eq!(&output[..], &input[..output.len()]);
            assert_eq!(output.len() + stream.bytes, fed);
        }
        assert_eq!(output, input);
        assert!(stream.pieces.is_empty());
        assert_eq!(recycled.len(), mem.0.len(), "every buffer back once");
    }

    #[test]
    fn stream_echoes_whole_messages_in_order() {
        for seed in 1..40 {
            simulate(Wire::LenPrefix, seed, false);
            simulate(Wire::LenPrefix, seed, true);
            simulate(Wire::Raw, seed, false);
        }
    }

    #[test]
    fn spilling_frees_only_buffers_a_tail_occupies_alone() {
        let (input, _) = frames(&[10, 10]); // two frames of 14 bytes
        let mem = Mem(vec![
            input[..20].to_vec(),
            input[20..24].to_vec(),
            input[24..].to_vec(),
        ]);
        let mut stream = Stream::new(Wire::LenPrefix);
        let mut freed = Vec::new();
        // Buffer 0 holds frame 1 and the start of frame 2: spilling frees
        // nothing, so nothing moves.
        assert_eq!(stream.push(0, &mem.0[0], 100), Ok(1));
        assert_eq!(stream.sendable, 14);
        assert_eq!(stream.spill_tail(&mem, |b| freed.push(b)), 0);
        // Buffer 1 holds only tail bytes: spilling moves the 10 tail bytes
        // and frees it; buffer 0 still holds frame 1.
        assert_eq!(stream.push(1, &mem.0[1], 100), Ok(0));
        assert_eq!(stream.spill_tail(&mem, |b| freed.push(b)), 10);
        assert_eq!(freed, vec![1]);
        assert_eq!(stream.sendable, 14);
        assert_eq!(stream.push(2, &mem.0[2], 100), Ok(1));
        assert_eq!(stream.sendable, 28);
        let mut out = Vec::new();
        let total = stream.sendable_pieces(&mem, 8, |p| out.extend_from_slice(p));
        assert_eq!((total, &out), (28, &input));
        assert!(stream.sendable_in_one(&mem).is_none());
        stream.consume(28, |b| freed.push(b));
        assert_eq!(freed, vec![1, 0, 2]);
        assert!(stream.pieces.is_empty());
    }
}
