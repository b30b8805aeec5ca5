//! Hostile peers against a typed `tcp://` listener, beside healthy typed
//! connections doing request/reply the whole time.
//!
//! Each attack comes from raw sockets speaking bytes (valid handshakes made
//! with a proto session of the test's own, then whatever the attack
//! needs): announced lengths far beyond the maximum, random garbage,
//! truncated frames then silence, hundreds of half-open (slowloris)
//! connections, bursts of connect-and-reset, a client that sends without
//! reading, half-close, wrong handshakes and schemas, replayed and
//! out-of-window sequence numbers, valid frames with corrupt archives.
//!
//! For each, the listener side must report a clear error for that
//! connection (a handshake failure from `accept`, or an error from the
//! connection's `recv_any`) and free it, and the healthy connections must
//! keep completing round trips while the attack is on (counted; the figure
//! is printed for `docs/RELIABILITY.md`) without a single error. Nothing
//! asserts on time: the waits are bounds after which the test fails.
//!
//! The attacks run one at a time (a lock), so that the memory and fd
//! figures of one are not another's.

mod common;
#[path = "common/raw.rs"]
mod raw;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use raw::{bare_header, data_frame, hello_frame, noise, open_fds, rss_kib, RawPeer};
use ringwire_proto::{FrameHeader, FrameKind, Message};
use ringwire_runtime::{RemoteHandle, Runtime};
use ringwire_transports::{connect, listen, stats, Config, Endpoint, Error, Scheme};

/// Healthy typed connections kept busy during every attack.
const HEALTHY: u64 = 4;
/// Node ids of hostile peers start here (healthy ones are 1..=HEALTHY).
const HOSTILE: u64 = 1000;
/// How long any single expected outcome may take before the test fails.
const BOUND: Duration = Duration::from_secs(30);
/// Round trips the healthy connections must complete while an attack's
/// hostile state exists.
const PROGRESS: u64 = 200;

static SERIAL: Mutex<()> = Mutex::new(());

/// The configuration of both sides: short handshake and idle timeouts so
/// that silent attackers are cut quickly, small receive and send queues so
/// that back-pressure engages early.
fn cfg() -> Config {
    config()
        .handshake_timeout(Duration::from_millis(300))
        .keepalive(Duration::from_millis(100), Duration::from_millis(1500))
        .max_payload(64 << 10)
        .recv_queue(256, 256 << 10)
        .send_queue(256, 256 << 10)
}

/// What the listener side observed.
#[derive(Debug, Clone)]
enum Ev {
    /// `accept` reported a connection whose handshake failed.
    Handshake { kind: &'static str, text: String },
    /// A connection's `recv_any` failed for good (`said_fatal`: what
    /// `is_connection_fatal` said about the error).
    Fatal {
        peer: u64,
        kind: &'static str,
        text: String,
        said_fatal: bool,
    },
    /// One message was dropped; the connection goes on.
    Rejected { peer: u64 },
    /// An `Order` arrived.
    Order { peer: u64, id: u64 },
}

fn kind(e: &Error) -> &'static str {
    match e {
        Error::Protocol(_) => "protocol",
        Error::Timeout { .. } => "timeout",
        Error::Refused(_) => "refused",
        Error::Closed { .. } => "closed",
        Error::Io { .. } => "io",
        Error::Rejected(_) => "rejected",
        _ => "other",
    }
}

struct Harness {
    rt: Option<Runtime>,
    addr: SocketAddr,
    events: mpsc::Receiver<Ev>,
    /// Events taken off the channel but not yet matched.
    backlog: Vec<Ev>,
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    healthy: Vec<RemoteHandle<Result<u64, String>>>,
    rss_start: u64,
    fds_start: usize,
}

impl Harness {
    fn start() -> Harness {
        let fds_start = open_fds();
        let rss_start = rss_kib();
        let rt = runtime();
        let (ep_tx, ep_rx) = mpsc::channel();
        let (ev_tx, events) = mpsc::channel::<Ev>();
        rt.spawn_on(1, move || async move {
            let ep: Endpoint = "tcp://127.0.0.1:0".parse().unwrap();
            let mut l = listen(&ep, &cfg()).await.unwrap();
            ep_tx.send(l.endpoint().clone()).unwrap();
            while let Some(c) = l.accept().await {
                let conn = match c {
                    Ok(conn) => conn,
                    Err(e) => {
                        let _ = ev_tx.send(Ev::Handshake {
                            kind: kind(&e),
                            text: e.to_string(),
                        });
                        continue;
                    }
                };
                let ev_tx = ev_tx.clone();
                ringwire_runtime::spawn_local(async move {
                    let peer = conn.peer_id();
                    loop {
                        let m = match conn.recv_any().await {
                            Ok(m) => m,
                            Err(e) if !e.is_connection_fatal() && !conn.is_closed() => {
                                let _ = ev_tx.send(Ev::Rejected { peer });
                                continue;
                            }
                            Err(e) => {
                                let _ = ev_tx.send(Ev::Fatal {
                                    peer,
                                    kind: kind(&e),
                                    text: e.to_string(),
                                    said_fatal: e.is_connection_fatal(),
                                });
                                return;
                            }
                        };
                        if m.type_id() == Order::TYPE_ID {
                            let id = m.get::<Order>().map(|o| o.id.to_native());
                            let _ = ev_tx.send(Ev::Order {
                                peer,
                                id: id.unwrap_or(u64::MAX),
                            });
                        } else if let Ok(req) = m.downcast::<Ask>() {
                            let n = req.n.to_native();
                            let answer = Answer {
                                n,
                                square: n.wrapping_mul(n),
                            };
                            if let Err(e) = req.reply(&answer).await {
                                let _ = ev_tx.send(Ev::Fatal {
                                    peer,
                                    kind: kind(&e),
                                    text: e.to_string(),
                                    said_fatal: e.is_connection_fatal(),
                                });
                                return;
                            }
                        }
                    }
                });
            }
        });
        let bound: Endpoint = ep_rx.recv().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], bound.port().unwrap()));
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let healthy = (1..=HEALTHY)
            .map(|id| {
                let (bound, done, stop) = (bound.clone(), done.clone(), stop.clone());
                rt.spawn_on(0, move || async move {
                    let conn = connect(&bound, &cfg().node_id(id))
                        .await
                        .map_err(|e| format!("healthy {id}: connect: {e}"))?;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let k = id << 32 | n;
                        let r = conn
                            .call::<Ask, Answer>(&Ask { n: k })
                            .await
                            .map_err(|e| format!("healthy {id}: call {n}: {e}"))?;
                        if (r.n.to_native(), r.square.to_native()) != (k, k.wrapping_mul(k)) {
                            return Err(format!("healthy {id}: wrong answer to {k}"));
                        }
                        n += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    conn.close()
                        .await
                        .map_err(|e| format!("healthy {id}: close: {e}"))?;
                    Ok(n)
                })
            })
            .collect();
        let h = Harness {
            rt: Some(rt),
            addr,
            events,
            backlog: Vec::new(),
            done,
            stop,
            healthy,
            rss_start,
            fds_start,
        };
        // Everyone is up before the first attack.
        h.await_progress(h.done(), 1);
        h
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().unwrap()
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn schema(&self) -> Arc<ringwire_proto::Schema> {
        cfg().schema().clone()
    }

    /// Waits until the healthy connections completed `k` round trips after
    /// `from`; fails the test if they stall for the whole bound.
    fn await_progress(&self, from: u64, k: u64) {
        let mut last = self.done();
        let mut since = Instant::now();
        while self.done() < from + k {
            std::thread::sleep(Duration::from_millis(2));
            let now = self.done();
            if now != last {
                last = now;
                since = Instant::now();
            }
            if since.elapsed() >= BOUND {
                let s = &self.rt().stats()[1];
                panic!(
                    "healthy connections made no progress ({} of {k} round trips); \
                     listener core: {}/{} receive buffers free, {} starvations",
                    now - from,
                    s.recv_buffers_free,
                    s.recv_buffers_total,
                    s.bufring_starvation
                );
            }
        }
    }

    /// The next listener-side event that `pick` accepts (others are kept).
    fn expect(&mut self, what: &str, pick: impl Fn(&Ev) -> bool) -> Ev {
        if let Some(i) = self.backlog.iter().position(&pick) {
            return self.backlog.remove(i);
        }
        loop {
            match self.events.recv_timeout(BOUND) {
                Ok(e) if pick(&e) => return e,
                Ok(e) => self.backlog.push(e),
                Err(_) => panic!("no {what} at the listener; saw {:?}", self.backlog),
            }
        }
    }

    /// Every event already reported (and the backlog).
    fn drain(&mut self) -> Vec<Ev> {
        let mut all = std::mem::take(&mut self.backlog);
        all.extend(self.events.try_iter());
        all
    }

    /// The listener core's tcp counters.
    fn server_stats(&self) -> stats::SchemeStats {
        self.rt()
            .spawn_on(1, || async { stats::snapshot().scheme(Scheme::Tcp) })
            .join()
            .unwrap()
    }

    /// Waits until the listener holds only the healthy connections: every
    /// hostile one was freed.
    fn await_only_healthy(&self) -> stats::SchemeStats {
        let start = Instant::now();
        loop {
            let s = self.server_stats();
            if s.connections_live() == HEALTHY {
                return s;
            }
            assert!(
                start.elapsed() < BOUND,
                "hostile connections not freed: {} live, {HEALTHY} healthy: {s:?}",
                s.connections_live()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `attack`, measuring the healthy round trips while it is on, and
    /// checks afterwards that the listener freed every hostile connection.
    /// Returns how many connections the listener counted as ended with an
    /// error meanwhile.
    fn attack(&mut self, name: &str, attack: impl FnOnce(&mut Harness)) -> u64 {
        let before = self.server_stats();
        let rss0 = rss_kib();
        let from = self.done();
        let t0 = Instant::now();
        attack(self);
        let during = self.done() - from;
        let took = t0.elapsed();
        let after = self.await_only_healthy();
        println!(
            "ATTACK {name}: healthy round trips during the attack {during} in {:.0} ms \
             ({:.0}/s over {HEALTHY} connections); listener: {} connections opened, \
             {} ended with an error, {} messages rejected; rss {} -> {} KiB; fds {}",
            took.as_secs_f64() * 1e3,
            during as f64 / took.as_secs_f64(),
            after.connections_opened - before.connections_opened,
            after.connection_errors - before.connection_errors,
            after.rejected - before.rejected,
            rss0,
            rss_kib(),
            open_fds(),
        );
        assert!(during > 0, "{name}: the healthy connections stalled");
        after.connection_errors - before.connection_errors
    }

    /// A hostile peer after a valid handshake, once the listener handed its
    /// connection out (its first message, order 0, arrived): what it sends
    /// next meets an established connection.
    fn accepted(&mut self, peer: u64) -> RawPeer {
        let mut p = RawPeer::connect(self.addr, &self.schema(), peer);
        let first = p.next_frame(FrameKind::Message, &order(0));
        p.write(&first).unwrap();
        self.expect(
            "order 0",
            move |e| matches!(e, Ev::Order { peer: q, id: 0 } if *q == peer),
        );
        p
    }

    /// Repeats `once` at least `rounds` times and until the healthy
    /// connections progressed, so that they are measured under the attack.
    fn repeat(&mut self, rounds: usize, mut once: impl FnMut(&mut Harness, u64)) -> u64 {
        let from = self.done();
        let mut i = 0u64;
        let start = Instant::now();
        while i < rounds as u64 || self.done() < from + PROGRESS {
            once(self, i);
            i += 1;
            assert!(
                start.elapsed() < BOUND * 2,
                "healthy connections made no progress under the attack"
            );
        }
        i
    }

    /// Stops the healthy connections, checks that none saw an error, that
    /// every connection the listener opened was freed, and that the
    /// runtime stops cleanly.
    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for h in std::mem::take(&mut self.healthy) {
            total += h.join().unwrap().unwrap();
        }
        let start = Instant::now();
        let s = loop {
            let s = self.server_stats();
            if s.connections_live() == 0 {
                break s;
            }
            assert!(start.elapsed() < BOUND, "connections not freed: {s:?}");
            std::thread::sleep(Duration::from_millis(10));
        };
        for e in self.drain() {
            if let Ev::Fatal {
                peer, kind, text, ..
            } = &e
            {
                assert!(
                    *peer > HEALTHY || *kind == "closed",
                    "a healthy connection failed: {e:?} ({text})"
                );
            }
        }
        shutdown(self.rt.take().unwrap());
        println!(
            "healthy: {total} round trips, 0 errors; listener: {} opened = {} freed; \
             rss {} -> {} KiB; fds {} -> {}",
            s.connections_opened,
            s.connections_freed,
            self.rss_start,
            rss_kib(),
            self.fds_start,
            open_fds()
        );
        assert_eq!(s.connections_opened, s.connections_freed);
    }
}

fn is_handshake_failure(e: &Ev) -> bool {
    matches!(e, Ev::Handshake { .. })
}

fn fatal_of(peer: u64) -> impl Fn(&Ev) -> bool {
    move |e| matches!(e, Ev::Fatal { peer: p, .. } if *p == peer)
}

fn protocol_fatal_of(peer: u64) -> impl Fn(&Ev) -> bool {
    move |e| matches!(e, Ev::Fatal { peer: p, kind: "protocol", .. } if *p == peer)
}

/// The server ended the hostile connection; `expect_reason`: the reason of
/// the `Close` frame it must have sent first. (After a protocol error the
/// server shuts the link at once, without a `Close`: the peer sees the end
/// of the stream.)
/// `Close` reasons (docs/WIRE.md).
const INCOMPATIBLE: u32 = 1;
const PROTOCOL_ERROR: u32 = 2;

/// The server ended the connection; with `expect_reason`, it sent a `Close`
/// with that reason first.
fn assert_cut(peer: &mut RawPeer, expect_reason: Option<u32>) {
    let ending = peer.read_ending(BOUND);
    assert!(
        ending.ended,
        "the server did not end the connection: {ending:?}"
    );
    if expect_reason.is_some() {
        assert_eq!(ending.close_reason, expect_reason, "{ending:?}");
    }
}

#[test]
fn announced_lengths_far_beyond_the_maximum() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = Harness::start();
    h.attack("oversized length", |h| {
        h.repeat(20, |h, i| {
            // Before the handshake: a hello announcing 4 GiB.
            let mut p = RawPeer::connect_silent(h.addr);
            let _ = p.write(&bare_header(FrameHeader {
                payload_len: u32::MAX - 15,
                ..FrameHeader::new(FrameKind::Hello)
            }));
            h.expect("handshake failure", is_handshake_failure);
            assert_cut(&mut p, Some(PROTOCOL_ERROR));
            // After it: a message announcing 4 GiB, and one just above the
            // limit, each checked before anything is allocated.
            let peer = HOSTILE + i;
            let mut p = h.accepted(peer);
            let len = if i % 2 == 0 {
                u32::MAX - 15
            } else {
                (64 << 10) + 1
            };
            let _ = p.write(&bare_header(FrameHeader {
                payload_len: len,
                seq: 1,
                type_id: Order::TYPE_ID,
                ..FrameHeader::new(FrameKind::Message)
            }));
            h.expect("protocol error", protocol_fatal_of(peer));
            assert_cut(&mut p, Some(PROTOCOL_ERROR));
        });
    });
    h.finish();
}

#[test]
fn random_garbage_before_and_after_the_handshake() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = Harness::start();
    h.attack("random garbage", |h| {
        h.repeat(20, |h, i| {
            let mut p = RawPeer::connect_silent(h.addr);
            let _ = p.write(&noise(i, 4096));
            match h.expect("handshake failure", is_handshake_failure) {
                Ev::Handshake { kind, .. } => assert_eq!(kind, "protocol"),
                _ => unreachable!(),
            }
            assert_cut(&mut p, Some(PROTOCOL_ERROR));
            let peer = HOSTILE + i;
            let mut p = h.accepted(peer);
            let _ = p.write(&noise(i ^ 0x5555, 4096));
            h.expect("protocol error", protocol_fatal_of(peer));
            assert_cut(&mut p, Some(PROTOCOL_ERROR));
        });
    });
    h.finish();
}

#[test]
fn truncated_frames_then_silence_time_out() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = Harness::start();
    let errors = h.attack("truncated frame then silence", |h| {
        let schema = h.schema();
        // Eight of each at once: a hello cut short (the handshake timeout
        // ends them) and a message header cut short after a good
        // handshake (the idle timeout ends them).
        let mut silent = Vec::new();
        for i in 0..8 {
            let mut p = RawPeer::connect_silent(h.addr);
            let hello = hello_frame(&schema, HOSTILE + 100 + i, |_| {});
            p.write(&hello[..20]).unwrap();
            silent.push(p);
            let peer = HOSTILE + i;
            let mut p = RawPeer::connect(h.addr, &schema, peer);
            let msg = p.next_frame(FrameKind::Message, &order(1));
            p.write(&msg[..20]).unwrap();
            silent.push(p);
        }
        let from = h.done();
        for _ in 0..8 {
            match h.expect("handshake timeout", is_handshake_failure) {
                Ev::Handshake { kind, .. } => assert_eq!(kind, "timeout"),
                _ => unreachable!(),
            }
        }
        for i in 0..8 {
            match h.expect("idle timeout", fatal_of(HOSTILE + i)) {
                Ev::Fatal {
                    kind, said_fatal, ..
                } => {
                    assert_eq!(kind, "timeout");
                    assert!(
                        said_fatal,
                        "the idle timeout ended the connection: is_connection_fatal() says so"
                    );
                }
                _ => unreachable!(),
            }
        }
        h.await_progress(from, 1);
        for mut p in silent {
            assert_cut(&mut p, None);
        }
    });
    assert!(
        errors >= 16,
        "handshake and idle timeouts are connection errors: {errors} counted"
    );
    h.finish();
}

#[test]
fn two_hundred_slowloris_connections() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = Harness::start();
    h.attack("200 slowloris connections", |h| {
        let hello = hello_frame(&h.schema(), HOSTILE, |_| {});
        let mut loris: Vec<RawPeer> = (0..200).map(|_| RawPeer::connect_silent(h.addr)).collect();
        for p in &loris {
            p.sock.set_nonblocking(true).unwrap();
        }
        // One byte of a hello per connection per turn, until the server
        // has cut every one of them (its handshake timeout).
        let from = h.done();
        let mut cut = 0;
        let mut at = 0;
        while cut < 200 {
            for p in &mut loris {
                if at < hello.len() {
                    let _ = p.sock.write(&hello[at..at + 1]);
                }
            }
            at += 1;
            std::thread::sleep(Duration::from_millis(20));
            while let Some(i) = h.backlog.iter().position(is_handshake_failure) {
                match h.backlog.remove(i) {
                    Ev::Handshake { kind, .. } => assert_eq!(kind, "timeout"),
                    _ => unreachable!(),
                }
                cut += 1;
            }
            while let Ok(e) = h.events.try_recv() {
                h.backlog.push(e);
            }
            assert!(at < 10_000, "slowloris connections not cut ({cut} of 200)");
        }
        assert!(
            at < hello.len(),
            "the handshake timeout cut them before their hello was complete"
        );
        h.await_progress(from, 1);
        for p in &mut loris {
            p.sock.set_nonblocking(false).unwrap();
            assert_cut(p, None);
        }
    });
    h.finish();
}

#[test]
fn bursts_of_connect_and_reset() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = Harness::start();
    h.attack("connect-and-reset bursts", |h| {
        let hello = hello_frame(&h.schema(), HOSTILE, |_| {});
        let schema = h.schema();
        h.repeat(5, |h, round| {
            // 100 connections reset at once (SO_LINGER 0): silent ones,
            // ones half-way through their hello, ones just after a good
            // handshake.
            for i in 0..100u64 {
                let p = match i % 3 {
                    0 => RawPeer::connect_silent(h.addr),
                    1 => {
                        let mut p = RawPeer::connect_silent(h.addr);
                        let _ = p.write(&hello[..hello.len() / 2]);
                        p
                    }
                    _ => RawPeer::connect(h.addr, &schema, HOSTILE + round * 100 + i),
                };
                let s = socket2::SockRef::from(&p.sock);
                s.set_linger(Some(Duration::ZERO)).unwrap();
                drop(p);
            }
        });
    });
    h.finish();
}

#[test]
fn a_client_that_sends_without_reading_is_held_to_the_back_pressure_limits() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = Harness::start();
    h.attack("write without read", |h| {
        let peer = HOSTILE;
        let mut p = RawPeer::connect(h.addr, &h.schema(), peer);
        // Requests whose replies are never read: the server's send queue,
        // then its receive queue fill, it stops reading, and the kernel's
        // flow control stops this writer.
        p.sock
            .set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let before = h.server_stats();
        let rss0 = rss_kib();
        const CAP: u64 = 512 << 20;
        let mut written = 0u64;
        let mut batch = Vec::new();
        let stalled = loop {
            batch.clear();
            for _ in 0..256 {
                batch.extend_from_slice(&p.next_frame(FrameKind::Request, &Ask { n: 3 }));
            }
            // A write cut by the timeout leaves a frame half-written: the
            // loop ends there.
            match p.sock.write_all(&batch) {
                Ok(()) => written += batch.len() as u64,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break true,
                Err(e) => panic!("the server cut the writer: {e}"),
            }
            if written >= CAP {
                break false;
            }
        };
        assert!(
            stalled,
            "the server read {CAP} bytes of requests without applying back-pressure"
        );
        let from = h.done();
        h.await_progress(from, PROGRESS);
        let s = h.server_stats();
        let growth = rss_kib().saturating_sub(rss0);
        println!(
            "write without read: {written} bytes of requests accepted before the writer \
             stalled; server waits for send-queue room: {}; rss growth {growth} KiB",
            s.back_pressure_waits - before.back_pressure_waits
        );
        assert!(
            s.back_pressure_waits > before.back_pressure_waits,
            "the server's replies waited for room: {s:?}"
        );
        // Send and receive queues of 256 KiB each plus the kernel's socket
        // buffers: far below what was offered. (Not under AddressSanitizer,
        // whose quarantine keeps freed memory resident: .ci/asan.sh sets
        // ASAN_OPTIONS.)
        if std::env::var_os("ASAN_OPTIONS").is_none() {
            assert!(growth < 64 << 10, "rss grew by {growth} KiB");
        }
        drop(p);
        h.expect("connection error", fatal_of(peer));
    });
    h.finish();
}

#[test]
fn half_close_ends_the_connection_with_an_error_after_what_was_sent() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = Harness::start();
    let errors = h.attack("half-close", |h| {
        h.repeat(10, |h, i| {
            let peer = HOSTILE + i;
            let mut p = RawPeer::connect(h.addr, &h.schema(), peer);
            let order_of = move |id| {
                move |e: &Ev| matches!(e, Ev::Order { peer: q, id: d } if *q == peer && *d == id)
            };
            // Once the listener handed the connection out (an order
            // arrived): two more orders, then the write side shut.
            let first = p.next_frame(FrameKind::Message, &order(1));
            p.write(&first).unwrap();
            h.expect("order 1", order_of(1));
            let mut bytes = p.next_frame(FrameKind::Message, &order(2));
            bytes.extend(p.next_frame(FrameKind::Message, &order(3)));
            p.write(&bytes).unwrap();
            p.sock.shutdown(std::net::Shutdown::Write).unwrap();
            h.expect("order 2", order_of(2));
            h.expect("order 3", order_of(3));
            match h.expect("connection error", fatal_of(peer)) {
                Ev::Fatal { kind, .. } => assert_ne!(kind, "timeout", "seen at once"),
                _ => unreachable!(),
            }
            assert_cut(&mut p, None);
        });
    });
    assert!(
        errors >= 10,
        "an end of stream without the session's close is a connection error: {errors} counted"
    );
    h.finish();
}

#[test]
fn wrong_handshakes_and_schemas_are_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = Harness::start();
    let other = Config::with_types::<(Order, Ask, Answer, Extra)>()
        .unwrap()
        .schema()
        .clone();
    h.attack("wrong handshake or schema", |h| {
        let schema = h.schema();
        h.repeat(10, |h, i| {
            let node = HOSTILE + i;
            // Bad magic, a fingerprint that does not match the type list, a
            // reserved flag, a message before any hello: malformed.
            let broken: [Vec<u8>; 4] = [
                hello_frame(&schema, node, |p| p[0] = b'X'),
                hello_frame(&schema, node, |p| p[48] ^= 1),
                hello_frame(&schema, node, |p| p[11] = 0x80),
                data_frame(FrameKind::Message, 1, 0, &order(1)),
            ];
            for bytes in broken {
                let mut p = RawPeer::connect_silent(h.addr);
                p.write(&bytes).unwrap();
                match h.expect("handshake failure", is_handshake_failure) {
                    Ev::Handshake { kind, .. } => assert_eq!(kind, "protocol"),
                    _ => unreachable!(),
                }
                assert_cut(&mut p, Some(PROTOCOL_ERROR));
            }
            // A well-formed hello of another schema: refused, and told why.
            let mut p = RawPeer::connect_silent(h.addr);
            p.write(&hello_frame(&other, node, |_| {})).unwrap();
            match h.expect("refusal", is_handshake_failure) {
                Ev::Handshake { kind, text } => {
                    assert_eq!(kind, "refused");
                    let extra = format!("{:#010x}", Extra::TYPE_ID);
                    assert!(text.contains(&extra), "says what differs: {text}");
                }
                _ => unreachable!(),
            }
            // Its own hello came first, so that this side can tell what
            // differs too, then a `Close` with reason `Incompatible`
            // (docs/WIRE.md), then the end of the stream.
            let ending = p.read_ending(BOUND);
            assert!(ending.ended, "{ending:?}");
            assert_eq!(ending.kinds.first(), Some(&FrameKind::Hello), "{ending:?}");
            assert_eq!(ending.close_reason, Some(INCOMPATIBLE), "{ending:?}");
        });
    });
    h.finish();
}

#[test]
fn replayed_sequence_numbers_are_dropped_and_gaps_are_fatal() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = Harness::start();
    h.attack("replayed and out-of-window sequence numbers", |h| {
        h.repeat(10, |h, i| {
            let peer = HOSTILE + i;
            let mut p = h.accepted(peer);
            // (1 was order 0.) 2, 3, 2 again, 1 again, 3 again, 4: each
            // delivered exactly once.
            let f = |seq: u64| data_frame(FrameKind::Message, seq, 0, &order(seq));
            for seq in [2, 3, 2, 1, 3, 4] {
                p.write(&f(seq)).unwrap();
            }
            // Then a gap: 4 to 1000.
            p.write(&f(1000)).unwrap();
            for id in [2, 3, 4] {
                h.expect(
                    "an order",
                    move |e| matches!(e, Ev::Order { peer: q, id: d } if *q == peer && *d == id),
                );
            }
            h.expect("protocol error", protocol_fatal_of(peer));
            let dup = h
                .backlog
                .iter()
                .any(|e| matches!(e, Ev::Order { peer: q, .. } if *q == peer));
            assert!(
                !dup,
                "a replayed message was delivered twice: {:?}",
                h.backlog
            );
            assert_cut(&mut p, Some(PROTOCOL_ERROR));
            // An acknowledgement of frames never sent.
            let peer = HOSTILE + 500 + i;
            let mut p = h.accepted(peer);
            p.write(&bare_header(FrameHeader {
                seq: 1 << 40,
                ..FrameHeader::new(FrameKind::Ack)
            }))
            .unwrap();
            h.expect("protocol error", protocol_fatal_of(peer));
            assert_cut(&mut p, Some(PROTOCOL_ERROR));
        });
    });
    h.finish();
}

#[test]
fn a_valid_frame_with_a_corrupt_archive_costs_that_message_only() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = Harness::start();
    h.attack("corrupt archive", |h| {
        h.repeat(10, |h, i| {
            let peer = HOSTILE + i;
            let mut p = h.accepted(peer);
            let good1 = p.next_frame(FrameKind::Message, &order(1));
            // Its root's relative pointers overwritten.
            let mut corrupt = p.next_frame(FrameKind::Message, &order(2));
            let head = FrameHeader::parse(corrupt.first_chunk().unwrap()).unwrap();
            let end = ringwire_proto::HEADER_LEN + head.payload_len as usize;
            corrupt[end - 24..end].fill(0xff);
            // A valid archive under a type id the schema does not have.
            let mut unknown = p.next_frame(FrameKind::Message, &order(3));
            unknown[12..16].copy_from_slice(&Extra::TYPE_ID.to_le_bytes());
            // Noise in place of the archive.
            let mut noisy = p.next_frame(FrameKind::Message, &order(4));
            let len = noisy.len();
            noisy[32..len].copy_from_slice(&noise(i, len - 32));
            let good5 = p.next_frame(FrameKind::Message, &order(5));
            for f in [good1, corrupt, unknown, noisy, good5] {
                p.write(&f).unwrap();
            }
            let order_of =
                move |id| move |e: &Ev| matches!(e, Ev::Order { peer: q, id: d } if *q == peer && *d == id);
            h.expect("order 1", order_of(1));
            for _ in 0..3 {
                h.expect(
                    "a rejection",
                    move |e| matches!(e, Ev::Rejected { peer: q, .. } if *q == peer),
                );
            }
            // The connection goes on.
            h.expect("order 5", order_of(5));
            assert!(
                !h.backlog.iter().any(fatal_of(peer)),
                "the connection survived: {:?}",
                h.backlog
            );
            drop(p);
            h.expect("the end of the connection", fatal_of(peer));
        });
    });
    h.finish();
}
