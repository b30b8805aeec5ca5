//! Soak: many connections over `tcp://`, `unix://` and `mem://` at once,
//! messages of mixed sizes (empty to 64 KiB: in place, assembled, received
//! straight into their own buffer) and calls, for a bounded time
//! (`RINGWIRE_SOAK_SECS`, 30 s by default; `.ci/test --long` runs it longer).
//!
//! Checked: every message arrives exactly once and in order (each carries
//! its connection's running number, which the server checks one by one,
//! and the totals match what the clients sent), every call is answered,
//! every close is clean (everything acknowledged); and at the end the
//! process holds what it held at the start: the same open fds, every
//! connection freed (`connections_opened == connections_freed` on both
//! cores), and the runtime's receive and send buffer pools as full as
//! before. RSS growth is printed for `docs/RELIABILITY.md`.

mod common;
#[path = "common/raw.rs"]
mod raw;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use raw::{open_fds, rss_kib};
use ringwire_transports::{connect, listen, stats, Endpoint, Error, Scheme};

/// Connections per scheme.
const PER_SCHEME: u64 = 4;
/// Payload sizes, in turn (the blob of an `Order`).
const SIZES: [usize; 8] = [0, 16, 200, 1500, 9000, 17_000, 40_000, 64_000];

fn blob(id: u64, n: u64) -> Vec<u8> {
    vec![(id.wrapping_add(n) % 251) as u8; SIZES[(n % SIZES.len() as u64) as usize]]
}

/// What the server saw on one connection.
#[derive(Debug)]
struct Seen {
    peer: u64,
    received: u64,
    calls: u64,
    /// How it ended (a clean close ends with `Closed`), or the first
    /// ordering or content error.
    end: String,
    clean: bool,
}

/// Per core: receive buffers free, send buffers free, and the transport
/// counters (connections opened and freed, all schemes).
fn pools(rt: &ringwire_runtime::Runtime) -> Vec<(u64, u64)> {
    rt.stats()
        .iter()
        .map(|s| (s.recv_buffers_free, s.send_buffers_free))
        .collect()
}

fn conn_counts(rt: &ringwire_runtime::Runtime) -> Vec<(u64, u64)> {
    (0..2)
        .map(|core| {
            rt.spawn_on(core, || async {
                let s = stats::snapshot();
                Scheme::ALL.iter().fold((0, 0), |(o, f), sch| {
                    let x = s.scheme(*sch);
                    (o + x.connections_opened, f + x.connections_freed)
                })
            })
            .join()
            .unwrap()
        })
        .collect()
}

#[test]
fn soak_mixed_sizes_over_tcp_unix_and_mem() {
    let secs: u64 = std::env::var("RINGWIRE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let rt = runtime();
    let endpoints: Vec<Endpoint> = vec![
        "tcp://127.0.0.1:0".parse().unwrap(),
        format!("unix://@{}", unique("ringwire-soak"))
            .parse()
            .unwrap(),
        format!("mem://{}", unique("soak")).parse().unwrap(),
    ];
    let (seen_tx, seen_rx) = mpsc::channel::<Seen>();
    let mut bound = Vec::new();
    for ep in endpoints {
        let (tx, rx) = mpsc::channel();
        let seen_tx = seen_tx.clone();
        rt.spawn_on(1, move || async move {
            let mut l = listen(&ep, &config()).await.unwrap();
            tx.send(l.endpoint().clone()).unwrap();
            while let Some(c) = l.accept().await {
                let conn = c.unwrap();
                let seen_tx = seen_tx.clone();
                ringwire_runtime::spawn_local(async move {
                    let peer = conn.peer_id();
                    let mut seen = Seen {
                        peer,
                        received: 0,
                        calls: 0,
                        end: String::new(),
                        clean: false,
                    };
                    loop {
                        match conn.recv_any().await {
                            Ok(m) => {
                                if let Ok(o) = m.get::<Order>() {
                                    let id = o.id.to_native();
                                    let want = peer << 32 | seen.received;
                                    let b = blob(peer, seen.received);
                                    if id != want {
                                        seen.end = format!("order {id:#x} where {want:#x} was due");
                                        break;
                                    }
                                    if o.blob.as_slice() != b.as_slice() {
                                        seen.end = format!("order {id:#x}: wrong blob");
                                        break;
                                    }
                                    seen.received += 1;
                                } else if let Ok(req) = m.downcast::<Ask>() {
                                    let n = req.n.to_native();
                                    seen.calls += 1;
                                    let answer = Answer {
                                        n,
                                        square: n.wrapping_mul(n),
                                    };
                                    if let Err(e) = req.reply(&answer).await {
                                        seen.end = format!("reply: {e}");
                                        break;
                                    }
                                }
                            }
                            Err(e @ Error::Closed { .. }) => {
                                seen.end = e.to_string();
                                seen.clean = true;
                                break;
                            }
                            Err(e) => {
                                seen.end = e.to_string();
                                break;
                            }
                        }
                    }
                    let _ = seen_tx.send(seen);
                });
            }
        });
        bound.push(rx.recv().unwrap());
    }
    // The start line: listeners up, no connection yet.
    std::thread::sleep(Duration::from_millis(100));
    let fds0 = open_fds();
    let rss0 = rss_kib();
    let pools0 = pools(&rt);
    let counts0 = conn_counts(&rt);

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = bound
        .iter()
        .enumerate()
        .flat_map(|(s, ep)| (0..PER_SCHEME).map(move |i| (ep.clone(), (s as u64 + 1) * 100 + i)))
        .map(|(ep, id)| {
            let stop = stop.clone();
            rt.spawn_on(0, move || async move {
                let conn = connect(&ep, &config().node_id(id))
                    .await
                    .map_err(|e| format!("{ep}: connect: {e}"))?;
                let (mut sent, mut calls, mut bytes) = (0u64, 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let o = Order {
                        id: id << 32 | sent,
                        symbol: format!("S{sent}"),
                        qty: sent as i64,
                        blob: blob(id, sent),
                    };
                    bytes += o.blob.len() as u64;
                    conn.send(&o)
                        .await
                        .map_err(|e| format!("{ep}: send {sent}: {e}"))?;
                    sent += 1;
                    if sent % 16 == 0 {
                        let k = id << 32 | calls;
                        let r = conn
                            .call::<Ask, Answer>(&Ask { n: k })
                            .await
                            .map_err(|e| format!("{ep}: call {calls}: {e}"))?;
                        if r.square.to_native() != k.wrapping_mul(k) {
                            return Err(format!("{ep}: wrong answer"));
                        }
                        calls += 1;
                    }
                }
                let clean = conn
                    .close()
                    .await
                    .map_err(|e| format!("{ep}: close: {e}"))?;
                Ok::<_, String>((id, sent, calls, bytes, clean))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut sent_by = std::collections::HashMap::new();
    let (mut messages, mut bytes) = (0u64, 0u64);
    for c in clients {
        let (id, sent, calls, b, clean) = c.join().unwrap().unwrap();
        assert!(clean, "connection {id}: close left messages unacknowledged");
        sent_by.insert(id, (sent, calls));
        messages += sent;
        bytes += b;
    }
    let took = started.elapsed();
    let mut lost = 0u64;
    let mut duplicated = 0u64;
    for _ in 0..sent_by.len() {
        let seen = seen_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert!(seen.clean, "connection {}: {}", seen.peer, seen.end);
        let (sent, calls) = sent_by[&seen.peer];
        lost += sent.saturating_sub(seen.received);
        duplicated += seen.received.saturating_sub(sent);
        assert_eq!(
            (seen.received, seen.calls),
            (sent, calls),
            "connection {}",
            seen.peer
        );
    }
    // Everything freed: connections, then the buffers they held.
    let bound_wait = Instant::now();
    let (counts, pools1) = loop {
        let counts = conn_counts(&rt);
        let pools1 = pools(&rt);
        let freed = counts.iter().all(|(o, f)| o == f);
        if (freed && pools1 == pools0) || bound_wait.elapsed() > Duration::from_secs(30) {
            break (counts, pools1);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let fds1 = open_fds();
    let rss1 = rss_kib();
    println!(
        "SOAK {:.1} s: {} connections ({PER_SCHEME} each over tcp, unix, mem), {messages} \
         messages ({:.1} MiB of payload, {:.0} msg/s), {} calls; lost {lost}, duplicated \
         {duplicated}; connections opened/freed per core {:?} (before: {:?}); buffers free \
         (recv, send) per core {:?} -> {:?}; fds {fds0} -> {fds1}; rss {rss0} -> {rss1} KiB",
        took.as_secs_f64(),
        sent_by.len(),
        bytes as f64 / (1 << 20) as f64,
        messages as f64 / took.as_secs_f64(),
        sent_by.values().map(|(_, c)| c).sum::<u64>(),
        counts,
        counts0,
        pools0,
        pools1,
    );
    assert_eq!((lost, duplicated), (0, 0));
    for (core, (o, f)) in counts.iter().enumerate() {
        assert_eq!(o, f, "core {core}: connections opened and freed");
    }
    assert_eq!(pools1, pools0, "buffer pools back to where they started");
    assert_eq!(fds1, fds0, "open fds back to where they started");
    drop(seen_tx);
    shutdown(rt);
}
