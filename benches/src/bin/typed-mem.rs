//! `typed-mem`: typed messages between two cores of one process, ringwire's
//! `mem://` against a crossbeam channel carrying the same value boxed
//! (`benches/typed.sh`).
//!
//! A sender on the second CPU of `--cpus` sends [`Req`] messages (`--size`
//! payload bytes, stamped with their send time) to a receiver on the first,
//! which checks every one (sequence and payload) and records its one-way
//! latency (send to receive, one clock: same process).
//!
//! * `--stack ringwire`: a two-core ringwire runtime; the receiver listens on
//!   `mem://NAME` and reads each message in place (`conn.recv::<Req>()`), the
//!   sender `conn.send(&req)`s from a reused `Req` (serialized straight into
//!   a send buffer that is lent to the receiving core).
//! * `--stack crossbeam`: two pinned threads and a bounded
//!   `crossbeam_channel` of `--capacity` slots carrying `Box<Req>`; the
//!   sender builds a new boxed `Req` for each message.
//!
//! `--mode throughput` sends as fast as the channel takes them (messages per
//! second, CPU per message); `--mode latency` paces the sender at `--rate`
//! messages per second, so the latency is the hand-over's, not the queue's.
//! Prints a summary and a `RESULT` line (see `ringwire_benches::measure`).

use std::cell::RefCell;
use std::ffi::OsString;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, ValueEnum};
use ringwire_benches::cli::{parse_cores_value, parse_duration, Cores, CpuList};
use ringwire_benches::cores::{pin_current_thread, CoreSpec};
use ringwire_benches::measure::{arm_hard_limit, Measured, Meter, MeterConfig, Report, Workload};
use ringwire_benches::typed::{fill_request, now_ns, PayloadGen, Req, MAX_LEN};
use ringwire_runtime::{spawn_local, Placement, Runtime};
use ringwire_transports::{connect, listen, Config, Endpoint};

const NAME: &str = "typed-mem";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stack {
    /// A two-core ringwire runtime, mem:// between the cores.
    Ringwire,
    /// Two pinned threads and a bounded crossbeam channel of boxed messages.
    Crossbeam,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Send as fast as the channel takes them.
    Throughput,
    /// Pace the sender at --rate messages per second.
    Latency,
}

/// Typed messages between two cores of one process: ringwire's mem://
/// against a crossbeam channel.
#[derive(Parser, Debug)]
#[command(
    name = "typed-mem",
    version,
    after_help = "Durations accept 5, 2.5s or 500ms. Exit status: 0 ok, 1 runtime error, \
                  2 usage error."
)]
struct Flags {
    /// ringwire | crossbeam.
    #[arg(long, value_name = "S", value_enum, default_value_t = Stack::Ringwire)]
    stack: Stack,
    /// throughput | latency.
    #[arg(long, value_name = "M", value_enum, default_value_t = Mode::Throughput)]
    mode: Mode,
    /// Payload bytes per message.
    #[arg(long, value_name = "S", default_value_t = 1024)]
    size: usize,
    /// Latency mode: messages per second.
    #[arg(long, value_name = "R", default_value_t = 20_000)]
    rate: u64,
    /// crossbeam: channel slots.
    #[arg(long, value_name = "C", default_value_t = 1024)]
    capacity: usize,
    /// Receiver on CPU A, sender on CPU B (default: the first two CPUs this
    /// process may run on).
    #[arg(long, value_name = "A,B", value_parser = parse_cpu_pair)]
    cpus: Option<CoreSpec>,
    /// Warm-up before measuring.
    #[arg(long, value_name = "T", default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Measured interval.
    #[arg(long, value_name = "T", default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Stack name for the RESULT line (default: the stack).
    #[arg(long, value_name = "NAME")]
    label: Option<String>,
}

#[derive(Debug, Clone)]
struct Args {
    stack: Stack,
    /// `None`: flood; `Some(r)`: r messages per second.
    rate: Option<u64>,
    size: usize,
    capacity: usize,
    cpus: CoreSpec,
    meter: MeterConfig,
    label: Option<String>,
}

/// Parses `--cpus`: two CPU ids (`0,1`), or the count 2 (the first two CPUs
/// this process may run on).
fn parse_cpu_pair(v: &str) -> Result<CoreSpec, String> {
    let two = || "expected two CPUs: receiver, sender (e.g. 0,1)".to_string();
    match parse_cores_value(v) {
        Ok(Cores::List(CpuList(cpus))) if cpus.len() == 2 => Ok(CoreSpec::List(cpus)),
        Ok(Cores::Count(2)) => Ok(CoreSpec::Count(2)),
        // A malformed list: say what is wrong with it.
        Err(e) if v.contains([',', '-']) => Err(e),
        _ => Err(two()),
    }
}

/// Checks what clap cannot: the ranges.
fn config(f: Flags) -> Result<Args, String> {
    let rate = match f.mode {
        Mode::Throughput => None,
        Mode::Latency => {
            if f.rate == 0 || f.rate > 10_000_000 {
                return Err("`--rate` must be 1..=10000000".into());
            }
            Some(f.rate)
        }
    };
    if f.size > MAX_LEN {
        return Err(format!("`--size` must be at most {MAX_LEN}"));
    }
    if f.capacity == 0 {
        return Err("`--capacity` must be positive".into());
    }
    let meter = MeterConfig {
        warmup: f.warmup,
        duration: f.duration,
        ..MeterConfig::default()
    };
    meter.check()?;
    Ok(Args {
        stack: f.stack,
        rate,
        size: f.size,
        capacity: f.capacity,
        cpus: f.cpus.unwrap_or(CoreSpec::Count(2)),
        meter,
        label: f.label,
    })
}

/// Parses the command line (`args` starts with the program name).
fn parse<I, T>(args: I) -> Result<Args, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let flags = Flags::try_parse_from(args)?;
    config(flags).map_err(|e| Flags::command().error(clap::error::ErrorKind::ValueValidation, e))
}

fn main() -> ExitCode {
    // Bad arguments, and --help / --version: clap prints and exits (2, 0).
    let args = parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    arm_hard_limit(
        NAME,
        args.meter.warmup
            + args.meter.duration
            + args.meter.stall_timeout
            + Duration::from_secs(15),
    );
    let cpus = match args.cpus.resolve() {
        Ok(c) if c.len() == 2 => c,
        Ok(c) => {
            eprintln!("{NAME}: --cpus must name two CPUs (got {c:?})");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{NAME}: --cpus: {e}");
            return ExitCode::FAILURE;
        }
    };
    let measured = match args.stack {
        Stack::Ringwire => run_ringwire(&args, &cpus),
        Stack::Crossbeam => run_crossbeam(&args, &cpus),
    };
    match measured {
        Ok(measured) => {
            let (stack, codec) = match args.stack {
                Stack::Ringwire => ("ringwire", "rkyv"),
                Stack::Crossbeam => ("crossbeam", "boxed"),
            };
            Report {
                workload: Workload {
                    stack: args.label.clone().unwrap_or_else(|| stack.to_owned()),
                    transport: "mem".into(),
                    mode: if args.rate.is_some() {
                        "latency".into()
                    } else {
                        "throughput".into()
                    },
                    codec: codec.into(),
                    conns: 1,
                    depth: 0,
                    size: args.size,
                    reply_size: 0,
                },
                measured,
                latency: "oneway",
            }
            .print();
            if let Some(rate) = args.rate {
                println!("(sender paced at {rate} msgs/s)");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{NAME}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the receiver checks and records for each message.
struct Receiver {
    gen: PayloadGen,
    size: usize,
    next_id: u64,
    meter: Meter,
}

impl Receiver {
    fn new(args: &Args) -> Result<Receiver, String> {
        Ok(Receiver {
            gen: PayloadGen::new(args.size),
            size: args.size,
            next_id: 0,
            meter: Meter::new(args.meter.clone())?,
        })
    }

    /// Checks message `id` (sent at `sent_ns`, carrying `payload`) and
    /// records it. Messages must arrive in order, none missing.
    fn take(&mut self, id: u64, sent_ns: u64, payload: &[u8]) -> Result<(), String> {
        let now_ns = now_ns();
        let now = Instant::now();
        if id != self.next_id {
            return Err(format!("message {id} arrived, expected {}", self.next_id));
        }
        self.next_id += 1;
        let expect = self.gen.request(id, self.size).map_err(|e| e.to_string())?;
        if payload != expect {
            return Err(format!("message {id}: payload differs from what was sent"));
        }
        self.meter.record(
            Duration::from_nanos(now_ns.saturating_sub(sent_ns)),
            payload.len(),
            now,
        );
        Ok(())
    }
}

/// Paces a sender: how many messages are due by now.
struct Pacer {
    rate: Option<u64>,
    start: Instant,
    sent: u64,
}

impl Pacer {
    fn new(rate: Option<u64>) -> Pacer {
        Pacer {
            rate,
            start: Instant::now(),
            sent: 0,
        }
    }

    /// `None`: send now. `Some(d)`: wait `d` first.
    fn wait(&self) -> Option<Duration> {
        let rate = self.rate?;
        let due_at =
            self.start + Duration::from_nanos(self.sent.saturating_mul(1_000_000_000) / rate);
        let now = Instant::now();
        (due_at > now).then(|| due_at - now)
    }
}

// ---------------------------------------------------------------- ringwire

fn run_ringwire(args: &Args, cpus: &[usize]) -> Result<Measured, String> {
    let rt = Runtime::builder()
        .placement(Placement::Cpus(cpus.to_vec()))
        .thread_name(NAME)
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let ep: Endpoint = format!("mem://typed-mem-{}", std::process::id())
        .parse()
        .map_err(|e| format!("endpoint: {e}"))?;
    let cfg = Config::with_types::<(Req,)>().map_err(|e| format!("schema: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    // Receiver on core 0 (the first CPU).
    let (rargs, rep, rcfg, rstop) = (args.clone(), ep.clone(), cfg.clone(), stop.clone());
    let receiver = rt.spawn_on(0, move || async move {
        let result = receive_ringwire(rargs, rep, rcfg, ready_tx).await;
        rstop.store(true, Ordering::Release);
        result
    });
    if ready_rx.recv().is_err() {
        // The receiver failed before listening; its result says why.
        let result = receiver.join().map_err(|e| format!("receiver: {e}"))?;
        rt.shutdown(Duration::from_secs(1));
        return Err(result.err().unwrap_or_else(|| "receiver stopped".into()));
    }
    // Sender on core 1.
    let (sargs, sstop) = (args.clone(), stop.clone());
    let sender = rt.spawn_on(1, move || async move {
        send_ringwire(sargs, ep, cfg, sstop).await
    });
    let result = receiver.join().map_err(|e| format!("receiver: {e}"))?;
    stop.store(true, Ordering::Release);
    let sent = sender.join_timeout(Duration::from_secs(2));
    let report = rt.shutdown(Duration::from_secs(2));
    if report.cores_panicked > 0 {
        return Err(format!("{} cores panicked", report.cores_panicked));
    }
    let measured = result?;
    if let Some(Ok(Err(e))) = sent {
        return Err(format!("sender: {e}"));
    }
    Ok(measured)
}

async fn receive_ringwire(
    args: Args,
    ep: Endpoint,
    cfg: Config,
    ready: std::sync::mpsc::Sender<()>,
) -> Result<Measured, String> {
    let mut listener = listen(&ep, &cfg)
        .await
        .map_err(|e| format!("cannot listen on {ep}: {e}"))?;
    let _ = ready.send(());
    let conn = listener
        .accept()
        .await
        .ok_or("the runtime stopped before the sender connected")?
        .map_err(|e| format!("accept: {e}"))?;
    let state = Rc::new(RefCell::new(Receiver::new(&args)?));
    // The meter is driven from its own task; the receiving loop records.
    let reader = {
        let state = state.clone();
        spawn_local(async move {
            let mut taken = 0u64;
            loop {
                let msg = match conn.recv::<Req>().await {
                    Ok(m) => m,
                    Err(e) => return Err(format!("recv: {e}")),
                };
                let done = {
                    let mut st = state.borrow_mut();
                    st.take(
                        msg.id.to_native(),
                        msg.sent_ns.to_native(),
                        msg.payload.as_slice(),
                    )?;
                    st.meter.is_done()
                };
                if done {
                    return Ok(());
                }
                taken += 1;
                if taken % 256 == 0 {
                    // Messages already queued come back without a pause; let
                    // the meter's task run.
                    ringwire_runtime::yield_now().await;
                }
            }
        })
    };
    loop {
        let next = {
            let mut st = state.borrow_mut();
            st.meter.poll(Instant::now())
        };
        match next {
            Ok(Some(at)) => {
                ringwire_runtime::time::sleep(at.saturating_duration_since(Instant::now())).await;
                if reader.is_finished() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => return Err(e),
        }
    }
    if reader.is_finished() {
        if let Ok(Err(e)) = reader.await {
            return Err(e);
        }
    }
    let measured = state.borrow().meter.finish();
    measured
}

async fn send_ringwire(
    args: Args,
    ep: Endpoint,
    cfg: Config,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let conn = connect(&ep, &cfg)
        .await
        .map_err(|e| format!("cannot connect to {ep}: {e}"))?;
    let gen = PayloadGen::new(args.size);
    let mut req = Req::default();
    let mut pacer = Pacer::new(args.rate);
    while !stop.load(Ordering::Acquire) {
        if let Some(d) = pacer.wait() {
            ringwire_runtime::time::sleep(d).await;
            continue;
        }
        fill_request(&gen, &mut req, pacer.sent, args.size, 0).map_err(|e| e.to_string())?;
        if let Err(e) = conn.send(&req).await {
            if stop.load(Ordering::Acquire) {
                break;
            }
            return Err(format!("send: {e}"));
        }
        pacer.sent += 1;
        if pacer.sent % 256 == 0 {
            // Let the stop flag be seen even when the queue never fills.
            ringwire_runtime::yield_now().await;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- crossbeam

fn run_crossbeam(args: &Args, cpus: &[usize]) -> Result<Measured, String> {
    let (tx, rx) = crossbeam_channel::bounded::<Box<Req>>(args.capacity);
    let (rx_cpu, tx_cpu) = (cpus[0], cpus[1]);
    let sargs = args.clone();
    let sender = std::thread::Builder::new()
        .name(format!("{NAME}-send"))
        .spawn(move || -> Result<(), String> {
            pin_current_thread(tx_cpu)?;
            let gen = PayloadGen::new(sargs.size);
            let mut pacer = Pacer::new(sargs.rate);
            loop {
                if let Some(d) = pacer.wait() {
                    std::thread::sleep(d);
                    continue;
                }
                let id = pacer.sent;
                let req = Box::new(Req {
                    id,
                    sent_ns: now_ns(),
                    reply_len: 0,
                    payload: gen
                        .request(id, sargs.size)
                        .map_err(|e| e.to_string())?
                        .to_vec(),
                });
                if tx.send(req).is_err() {
                    // The receiver is done.
                    return Ok(());
                }
                pacer.sent += 1;
            }
        })
        .map_err(|e| format!("cannot spawn the sender: {e}"))?;
    pin_current_thread(rx_cpu)?;
    let mut st = Receiver::new(args)?;
    let result = loop {
        match st.meter.poll(Instant::now()) {
            Ok(Some(at)) => {
                let wait = at.saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(req) => {
                        if let Err(e) = st.take(req.id, req.sent_ns, &req.payload) {
                            break Err(e);
                        }
                        // Take what is already there (a bounded batch, so the
                        // meter is polled often enough).
                        for _ in 0..1024 {
                            let Ok(req) = rx.try_recv() else { break };
                            if let Err(e) = st.take(req.id, req.sent_ns, &req.payload) {
                                st.meter.fail(e);
                                break;
                            }
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                        break Err("the sender stopped".into());
                    }
                }
            }
            Ok(None) => break st.meter.finish(),
            Err(e) => break Err(e),
        }
    };
    drop(rx);
    match sender.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("sender: {e}")),
        Err(_) => return Err("the sender panicked".into()),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, clap::Error> {
        parse(std::iter::once(NAME).chain(v.iter().copied()))
    }

    #[test]
    fn flags() {
        let a = args(&[]).unwrap();
        assert_eq!((a.stack, a.rate), (Stack::Ringwire, None));
        assert_eq!((a.size, a.capacity), (1024, 1024));
        assert_eq!(a.cpus, CoreSpec::Count(2));
        assert_eq!(a.meter.warmup, Duration::from_secs(1));
        assert_eq!(a.meter.duration, Duration::from_secs(5));
        // Every flag benches/typed.sh passes.
        let a = args(&[
            "--stack",
            "crossbeam",
            "--mode",
            "latency",
            "--cpus",
            "0,1",
            "--size",
            "64",
            "--rate",
            "5000",
            "--warmup",
            "0.5",
            "--duration",
            "2",
            "--capacity",
            "16",
            "--label",
            "xbeam",
        ])
        .unwrap();
        assert_eq!((a.stack, a.rate), (Stack::Crossbeam, Some(5000)));
        assert_eq!((a.size, a.capacity), (64, 16));
        assert_eq!(a.cpus, CoreSpec::List(vec![0, 1]));
        assert_eq!(a.meter.warmup, Duration::from_millis(500));
        assert_eq!(a.meter.duration, Duration::from_secs(2));
        assert_eq!(a.label.as_deref(), Some("xbeam"));
        // --rate only matters when pacing.
        assert_eq!(args(&["--rate", "0"]).unwrap().rate, None);
        assert_eq!(args(&["--cpus", "2"]).unwrap().cpus, CoreSpec::Count(2));
        assert_eq!(
            args(&["--cpus", "3,1"]).unwrap().cpus,
            CoreSpec::List(vec![3, 1])
        );
        for bad in [
            &["--stack", "flume"][..],
            &["--mode", "pingpong"][..],
            &["--cpus", "0"][..],
            &["--cpus", "0,"][..],
            &["--cpus", "0,1,2"][..],
            &["--cpus", "0,0"][..],
            &["--cpus", "3"][..],
            &["--mode", "latency", "--rate", "0"][..],
            &["--size", "99999999"][..],
            &["--capacity", "0"][..],
            &["--duration", "0"][..],
            &["--core", "1"][..],
        ] {
            let e = args(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }
}
