//! `typed-ringwire`: ringwire's typed transports in the typed request/reply
//! benchmark (`benches/typed.sh`).
//!
//! * `typed-ringwire server --endpoint E [--cores N]`: a ringwire
//!   [`Runtime`] on the CPUs of `--cores`, each core listening on `E`
//!   (`tcp://`, `unix://`, or `tls://` with `--tls-dir`) and serving every accepted connection with one
//!   task: `conn.recv::<Req>()`, then `msg.reply(&resp)` with the reply built
//!   in a reused [`Resp`]. Runs until SIGINT/SIGTERM, then shuts the runtime
//!   down.
//! * `typed-ringwire client --endpoint E ...`: a one-core runtime pinned to
//!   `--core`, `--conns` connections, and on each `--depth` tasks looping on
//!   `conn.call::<Req, Resp>(&req)`; every reply is checked. See
//!   `ringwire_benches::measure` for the flags and the RESULT line.
//!
//!   With a `mem://NAME` endpoint the client serves itself: a two-core
//!   runtime, the server above on one core and the client on the other, the
//!   same code with the mailboxes in place of a socket (server CPU is then
//!   not measured apart).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringwire_benches::measure::{
    arm_hard_limit, role_from_env_or_exit, ClientArgs, Measured, Meter, Report, Role, ServerArgs,
};
use ringwire_benches::typed::{
    check_reply, fill_reply, fill_request, request_id, Codec, PayloadGen, Req, Resp, Target,
    MAX_FRAME, MAX_LEN,
};
use ringwire_runtime::signal::TerminationSignals;
use ringwire_runtime::{spawn_local, Placement, Runtime};
use ringwire_transports::{connect, listen, Config, Connection, Endpoint, Error, Scheme};

const NAME: &str = "typed-ringwire";

fn main() {
    let code = match role_from_env_or_exit(NAME) {
        Role::Server(args) => server(&args),
        Role::Client(args) => client(&args),
    };
    if let Err(e) = code {
        eprintln!("{NAME}: error: {e}");
        std::process::exit(1);
    }
}

/// The configuration of both sides: the benchmark's two message types, and
/// room for its largest payload.
fn config() -> Result<Config, String> {
    Ok(Config::with_types::<(Req, Resp)>()
        .map_err(|e| format!("schema: {e}"))?
        .max_payload(MAX_FRAME as u32)
        .call_timeout(Some(Duration::from_secs(10))))
}

/// `cfg` with the TLS settings of `tls_dir` (server or client side) when
/// the endpoint is `tls://`.
fn with_tls(
    cfg: Config,
    ep: &Endpoint,
    tls_dir: Option<&std::path::Path>,
    server: bool,
) -> Result<Config, String> {
    if ep.scheme() != Scheme::Tls {
        return Ok(cfg);
    }
    let dir = tls_dir.ok_or("a tls:// endpoint needs --tls-dir")?;
    let tls = if server {
        ringwire_benches::tls::ringwire_server(dir)?
    } else {
        ringwire_benches::tls::ringwire_client(dir)?
    };
    Ok(cfg.tls(tls))
}

/// Parses `s` as a ringwire endpoint, checking that a socket endpoint stays
/// on this machine (loopback TCP, or a Unix path).
fn endpoint(s: &str) -> Result<Endpoint, String> {
    let ep: Endpoint = s.parse().map_err(|e| format!("endpoint `{s}`: {e}"))?;
    match ep.scheme() {
        Scheme::Mem => {}
        Scheme::Tcp | Scheme::Unix | Scheme::Tls => {
            // The benchmark's own check: loopback only, absolute paths.
            let plain = s.split('?').next().unwrap_or(s);
            Target::parse(plain)?;
        }
        other => {
            return Err(format!(
            "endpoint `{s}`: the benchmark runs over tcp://, unix://, tls:// or mem://, not {}://",
            other.name()
        ))
        }
    }
    Ok(ep)
}

// ---------------------------------------------------------------- server

fn server(args: &ServerArgs) -> Result<(), String> {
    if args.codec != Codec::Rkyv {
        return Err("ringwire carries rkyv archives; drop --codec".into());
    }
    let ep = endpoint(&args.endpoint)?;
    if ep.scheme() == Scheme::Mem {
        return Err("a mem:// endpoint lives inside one process; run the client with it".into());
    }
    // Before any thread starts, so every thread inherits the blocked mask.
    let signals =
        TerminationSignals::block().map_err(|e| format!("cannot block SIGINT/SIGTERM: {e}"))?;
    let cores = args.cores.resolve().map_err(|e| format!("--cores: {e}"))?;
    if let Ok(Target::Unix(path)) = Target::parse(args.endpoint.split('?').next().unwrap_or("")) {
        let _ = std::fs::remove_file(path);
    }
    let mut builder = Runtime::builder().cpus(cores.clone()).thread_name(NAME);
    if let Some(idle) = args.idle {
        builder = builder.idle(idle);
    }
    if let Some(n) = args.recv_buffers {
        builder = builder.recv_buffers(n);
    }
    let rt = builder
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let cfg = with_tls(config()?, &ep, args.tls_dir.as_deref(), true)?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    rt.spawn_on_all(move |core| serve_core(ep.clone(), cfg.clone(), core, ready_tx.clone()));
    for _ in &cores {
        match ready_rx.recv() {
            Ok(Ok(_core)) => {}
            Ok(Err(e)) => {
                rt.shutdown(Duration::from_secs(1));
                return Err(e);
            }
            Err(_) => {
                rt.shutdown(Duration::from_secs(1));
                return Err("a core stopped before listening".into());
            }
        }
    }
    eprintln!("{NAME}: listening on {}, CPUs {cores:?}", args.endpoint);
    eprintln!("READY {}", args.endpoint);
    let sig = signals.wait().map_err(|e| format!("sigwait: {e}"))?;
    eprintln!("{NAME}: {sig:?}; shutting down");
    if args.stats {
        print_stats(&rt);
    }
    let report = rt.shutdown(Duration::from_secs(5));
    if report.cores_panicked > 0 {
        return Err(format!("{} cores panicked", report.cores_panicked));
    }
    eprintln!("{NAME}: stopped");
    Ok(())
}

async fn serve_core(
    ep: Endpoint,
    cfg: Config,
    core: usize,
    ready: std::sync::mpsc::Sender<Result<usize, String>>,
) {
    let mut listener = match listen(&ep, &cfg).await {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("core {core}: cannot listen on {ep}: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(core));
    let gen = Rc::new(PayloadGen::new(MAX_LEN));
    while let Some(conn) = listener.accept().await {
        match conn {
            Ok(conn) => {
                spawn_local(serve_connection(conn, gen.clone()));
            }
            Err(e) => eprintln!("{NAME}: handshake failed: {e}"),
        }
    }
}

/// `--stats`: requests served and the runtime's counters per request,
/// summed over the cores (warm-up included: compare runs of one shape).
fn print_stats(rt: &Runtime) {
    let mut served = 0u64;
    for core in 0..rt.core_count() {
        served += rt
            .block_on(core, || async {
                let s = ringwire_transports::stats::snapshot();
                Scheme::ALL
                    .iter()
                    .map(|&x| s.scheme(x).messages_in)
                    .sum::<u64>()
            })
            .unwrap_or(0);
    }
    let cores = rt.stats();
    let sum =
        |f: fn(&ringwire_runtime::stats::CoreStats) -> u64| -> u64 { cores.iter().map(f).sum() };
    let enters: u64 = cores.iter().map(|c| c.sqes_per_enter.count()).sum();
    let per = |n: u64| n as f64 / served.max(1) as f64;
    println!(
        "STATS requests={served} sqes_per_req={:.3} cqes_per_req={:.3} enters_per_req={:.3} \
         loop_turns_per_req={:.3} parks_per_req={:.4} batch_sends={} batched_messages={}",
        per(sum(|c| c.ops_submitted)),
        per(sum(|c| c.ops_completed)),
        per(enters),
        per(sum(|c| c.loop_turns)),
        per(sum(|c| c.parks)),
        sum(|c| c.batch_sends),
        sum(|c| c.batched_messages),
    );
}

/// Answers the requests of one connection in order until it closes.
async fn serve_connection(conn: Connection, gen: Rc<PayloadGen>) {
    let mut scratch = Resp::default();
    let mut bad = 0u64;
    loop {
        let req = match conn.recv::<Req>().await {
            Ok(req) => req,
            Err(Error::Closed { .. }) => return,
            Err(e) => {
                if conn.is_closed() {
                    return;
                }
                // A rejected or mistyped message costs that message only.
                bad += 1;
                if bad <= 10 {
                    eprintln!("{NAME}: connection {}: {e}", conn.id());
                }
                continue;
            }
        };
        let (id, reply_len) = (req.id.to_native(), req.reply_len.to_native());
        if let Err(e) = fill_reply(&gen, &mut scratch, id, reply_len) {
            bad += 1;
            if bad <= 10 {
                eprintln!("{NAME}: connection {}: request {id:#x}: {e}", conn.id());
            }
            continue;
        }
        if let Err(e) = req.reply(&scratch).await {
            // A peer that closes with requests in flight makes the replies to
            // them fail (closed, or closing: a usage error); that is the end
            // of a run, not a problem.
            let ending = conn.is_closed() || ringwire_runtime::is_shutting_down();
            if !ending && !matches!(e, Error::Closed { .. } | Error::Usage(_)) {
                eprintln!("{NAME}: connection {}: reply: {e}", conn.id());
            }
            return;
        }
    }
}

// ---------------------------------------------------------------- client

fn client(args: &ClientArgs) -> Result<(), String> {
    arm_hard_limit(NAME, args.hard_limit());
    if args.codec != Codec::Rkyv {
        return Err("ringwire carries rkyv archives; drop --codec".into());
    }
    let ep = endpoint(&args.endpoint)?;
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
    let cfg = with_tls(config()?, &ep, args.tls_dir.as_deref(), false)?;
    if in_process {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (sep, scfg) = (ep.clone(), cfg.clone());
        rt.spawn_on(1, move || serve_core(sep, scfg, 1, ready_tx));
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("the in-process server stopped before listening".into()),
        }
    }
    let run_args = args.clone();
    let measured = rt
        .block_on(0, move || run_client(run_args, ep, cfg))
        .map_err(|e| format!("the client task failed: {e}"))?;
    // In-flight calls end with the runtime.
    rt.shutdown(Duration::from_secs(2));
    let transport = if in_process {
        "mem"
    } else {
        args.target()?.transport()
    };
    Report {
        workload: args.workload(transport),
        measured: measured?,
        latency: "rtt",
    }
    .print();
    Ok(())
}

async fn run_client(args: ClientArgs, ep: Endpoint, cfg: Config) -> Result<Measured, String> {
    let gen = Rc::new(PayloadGen::new(MAX_LEN));
    let meter = Rc::new(RefCell::new(Meter::new(args.meter.clone())?));
    let deadline = Instant::now() + args.wait;
    for i in 0..args.conns {
        let conn = loop {
            match connect(&ep, &cfg).await {
                Ok(c) => break c,
                Err(e @ Error::Io { .. }) if i == 0 && Instant::now() < deadline => {
                    let _ = e;
                    ringwire_runtime::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(format!(
                        "cannot connect connection {i} of {} to {ep}: {e}",
                        args.conns
                    ))
                }
            }
        };
        for slot in 0..args.depth {
            let caller = Caller {
                conn: conn.clone(),
                index: i as u32,
                slot: slot as u64,
                depth: args.depth as u64,
                size: args.size,
                reply_size: args.reply_size,
                gen: gen.clone(),
                meter: meter.clone(),
            };
            spawn_local(async move {
                if let Err(e) = caller.run().await {
                    caller
                        .meter
                        .borrow_mut()
                        .fail(format!("connection {}: {e}", caller.index));
                }
            });
        }
    }
    loop {
        let next = meter.borrow_mut().poll(Instant::now())?;
        match next {
            Some(at) => {
                ringwire_runtime::time::sleep(at.saturating_duration_since(Instant::now())).await
            }
            None => break,
        }
    }
    let measured = meter.borrow().finish();
    measured
}

/// One request slot of one connection: calls in a loop.
struct Caller {
    conn: Connection,
    index: u32,
    slot: u64,
    depth: u64,
    size: usize,
    reply_size: usize,
    gen: Rc<PayloadGen>,
    meter: Rc<RefCell<Meter>>,
}

impl Caller {
    async fn run(&self) -> Result<(), String> {
        let mut req = Req::default();
        // Slots of one connection take interleaved sequence numbers, so ids
        // stay unique per connection.
        let mut seq = self.slot;
        loop {
            let id = request_id(self.index, seq);
            seq += self.depth;
            fill_request(&self.gen, &mut req, id, self.size, self.reply_size as u32)
                .map_err(|e| e.to_string())?;
            let sent = Instant::now();
            let reply = self
                .conn
                .call::<Req, Resp>(&req)
                .await
                .map_err(|e| format!("call {id:#x}: {e}"))?;
            let now = Instant::now();
            check_reply(
                &self.gen,
                id,
                self.reply_size,
                reply.id.to_native(),
                reply.payload.as_slice(),
            )?;
            drop(reply);
            let mut meter = self.meter.borrow_mut();
            meter.record(now.duration_since(sent), self.reply_size, now);
            if meter.is_done() {
                return Ok(());
            }
        }
    }
}
