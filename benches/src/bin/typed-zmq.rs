//! `typed-zmq`: the ZeroMQ peer of the typed request/reply benchmark
//! (`benches/typed.sh`), through the `zmq` crate and the system's libzmq.
//!
//! * `typed-zmq server --endpoint E`: one ROUTER socket bound to `E`
//!   (`tcp://` as is, `unix:///path` as `ipc:///path`), served by one thread
//!   pinned to the first CPU of `--cores 1` (libzmq's I/O thread inherits the
//!   pinning). Each request arrives as `[identity, body]` and is answered with
//!   `[identity, reply]`; the body is the benchmark's [`Req`] serialized with
//!   rkyv (validated with `access`). `ZMQ_ROUTER_MANDATORY` is set, so a reply
//!   is never dropped silently.
//! * `typed-zmq client --endpoint E ...`: one thread, `--conns` DEALER
//!   sockets, each keeping `--depth` requests in flight; replies are matched
//!   to requests by the id in the reply and every one is checked. See
//!   `ringwire_benches::measure` for the flags and the RESULT line.
//!
//! [`Req`]: ringwire_benches::typed::Req

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use ringwire_benches::cores::pin_current_thread;
use ringwire_benches::measure::{
    arm_hard_limit, role_from_env_or_exit, ClientArgs, Meter, Report, Role, ServerArgs,
};
use ringwire_benches::server::{Shutdown, SHUTDOWN_POLL};
use ringwire_benches::typed::{request_id, Answerer, Asker, Codec, PayloadGen, Target, MAX_LEN};

const NAME: &str = "typed-zmq";

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

fn zerr(what: &str) -> impl Fn(zmq::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn server(args: &ServerArgs) -> Result<(), String> {
    let target = Target::parse(&args.endpoint)?;
    if args.codec != Codec::Rkyv {
        return Err("the ZeroMQ peer carries rkyv only".into());
    }
    let shutdown =
        Shutdown::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let cores = args.cores.resolve().map_err(|e| format!("--cores: {e}"))?;
    let [core] = cores[..] else {
        return Err("the ZeroMQ server runs on one core; use --cores 1".into());
    };
    // Before the context exists, so that libzmq's I/O thread inherits it.
    pin_current_thread(core)?;
    let ctx = zmq::Context::new();
    let sock = ctx.socket(zmq::ROUTER).map_err(zerr("zmq_socket"))?;
    sock.set_linger(0).map_err(zerr("ZMQ_LINGER"))?;
    sock.set_router_mandatory(true)
        .map_err(zerr("ZMQ_ROUTER_MANDATORY"))?;
    if let Target::Unix(path) = &target {
        let _ = std::fs::remove_file(path);
    }
    let endpoint = target.zmq_endpoint()?;
    sock.bind(&endpoint)
        .map_err(|e| format!("cannot bind {endpoint}: {e}"))?;
    eprintln!("{NAME}: ROUTER bound to {endpoint}, CPU {core}");
    eprintln!("READY {target}");
    let mut answerer = Answerer::new(Rc::new(PayloadGen::new(MAX_LEN)), Codec::Rkyv);
    let poll_ms = SHUTDOWN_POLL.as_millis() as i64;
    let mut bad_requests = 0u64;
    let mut gone = 0u64;
    while !shutdown.requested() {
        let mut items = [sock.as_poll_item(zmq::POLLIN)];
        match zmq::poll(&mut items, poll_ms) {
            Ok(_) => {}
            Err(zmq::Error::EINTR) => continue,
            Err(e) => return Err(format!("zmq_poll: {e}")),
        }
        // Answer everything that has arrived.
        loop {
            let identity = match sock.recv_msg(zmq::DONTWAIT) {
                Ok(m) => m,
                Err(zmq::Error::EAGAIN) => break,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => return Err(format!("zmq_recv: {e}")),
            };
            if !sock.get_rcvmore().map_err(zerr("ZMQ_RCVMORE"))? {
                bad_requests += 1;
                continue;
            }
            // The rest of a multipart message has arrived with its first part.
            let body = sock.recv_msg(0).map_err(zerr("zmq_recv"))?;
            let mut extra = false;
            while sock.get_rcvmore().map_err(zerr("ZMQ_RCVMORE"))? {
                sock.recv_msg(0).map_err(zerr("zmq_recv"))?;
                extra = true;
            }
            if extra {
                bad_requests += 1;
                continue;
            }
            match answerer.answer(&body) {
                Ok(reply) => {
                    // EHOSTUNREACH (ROUTER_MANDATORY): the client left with
                    // requests in flight, as every run ends; drop the reply.
                    match sock.send(identity, zmq::SNDMORE) {
                        Ok(()) => sock.send(reply, 0).map_err(zerr("zmq_send"))?,
                        Err(zmq::Error::EHOSTUNREACH) => gone += 1,
                        Err(e) => return Err(format!("zmq_send: {e}")),
                    }
                }
                Err(e) => {
                    bad_requests += 1;
                    if bad_requests <= 10 {
                        eprintln!("{NAME}: bad request: {e}");
                    }
                }
            }
        }
    }
    if let Target::Unix(path) = &target {
        let _ = std::fs::remove_file(path);
    }
    if bad_requests > 0 {
        eprintln!("{NAME}: warning: {bad_requests} malformed requests were dropped");
    }
    eprintln!("{NAME}: stopped ({gone} replies to clients that had left were dropped)");
    Ok(())
}

/// One DEALER socket's requests in flight.
struct InFlight {
    sent: VecDeque<(u64, Instant)>,
    next_seq: u64,
}

fn client(args: &ClientArgs) -> Result<(), String> {
    arm_hard_limit(NAME, args.hard_limit());
    let target = args.target()?;
    if args.codec != Codec::Rkyv {
        return Err("the ZeroMQ peer carries rkyv only".into());
    }
    if let Some(core) = args.core {
        pin_current_thread(core)?;
    }
    let ctx = zmq::Context::new();
    let endpoint = target.zmq_endpoint()?;
    let mut asker = Asker::new(
        Rc::new(PayloadGen::new(MAX_LEN)),
        Codec::Rkyv,
        args.size,
        args.reply_size,
    );
    let mut socks = Vec::with_capacity(args.conns);
    let mut state = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let sock = ctx.socket(zmq::DEALER).map_err(zerr("zmq_socket"))?;
        sock.set_linger(0).map_err(zerr("ZMQ_LINGER"))?;
        sock.connect(&endpoint)
            .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
        let mut inflight = InFlight {
            sent: VecDeque::with_capacity(args.depth),
            next_seq: 0,
        };
        // Queued by libzmq until the connection is up.
        for _ in 0..args.depth {
            send_request(&sock, &mut asker, i as u32, &mut inflight)?;
        }
        socks.push(sock);
        state.push(inflight);
    }
    let mut meter = Meter::new(args.meter.clone())?;
    let mut items: Vec<zmq::PollItem<'_>> =
        socks.iter().map(|s| s.as_poll_item(zmq::POLLIN)).collect();
    while let Some(next) = meter.poll(Instant::now())? {
        let wait = next.saturating_duration_since(Instant::now());
        let ms = wait.as_micros().div_ceil(1000).min(1000) as i64;
        match zmq::poll(&mut items, ms) {
            Ok(_) => {}
            Err(zmq::Error::EINTR) => continue,
            Err(e) => return Err(format!("zmq_poll: {e}")),
        }
        for (i, item) in items.iter().enumerate() {
            if !item.is_readable() {
                continue;
            }
            let sock = &socks[i];
            let inflight = &mut state[i];
            loop {
                let msg = match sock.recv_msg(zmq::DONTWAIT) {
                    Ok(m) => m,
                    Err(zmq::Error::EAGAIN) => break,
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => return Err(format!("connection {i}: zmq_recv: {e}")),
                };
                let now = Instant::now();
                let fail = |e: String| format!("connection {i}: {e}");
                if sock.get_rcvmore().map_err(zerr("ZMQ_RCVMORE"))? {
                    return Err(fail("a reply of several parts".into()));
                }
                // Correlate by the id the reply carries.
                let id = asker.reply_id(&msg).map_err(fail)?;
                let pos = inflight
                    .sent
                    .iter()
                    .position(|&(sent_id, _)| sent_id == id)
                    .ok_or_else(|| {
                        fail(format!("a reply to id {id:#x}, which is not in flight"))
                    })?;
                let Some((id, sent)) = inflight.sent.remove(pos) else {
                    return Err(fail("in-flight table out of step".into()));
                };
                asker.check(&msg, id).map_err(fail)?;
                meter.record(now.duration_since(sent), args.reply_size, now);
                if meter.is_done() {
                    break;
                }
                send_request(sock, &mut asker, i as u32, inflight)?;
            }
        }
    }
    let measured = meter.finish()?;
    Report {
        workload: args.workload(target.transport()),
        measured,
        latency: "rtt",
    }
    .print();
    Ok(())
}

fn send_request(
    sock: &zmq::Socket,
    asker: &mut Asker,
    conn: u32,
    inflight: &mut InFlight,
) -> Result<(), String> {
    let id = request_id(conn, inflight.next_seq);
    inflight.next_seq += 1;
    let body = asker.request(id)?;
    inflight.sent.push_back((id, Instant::now()));
    sock.send(body, 0)
        .map_err(|e| format!("connection {conn}: zmq_send: {e}"))
}
