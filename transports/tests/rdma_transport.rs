//! `rdma://` end to end through the typed API.
//!
//! Every test but the first runs over the in-memory verbs fabric, chosen
//! explicitly: an `RdmaContext` started on `Device::Mem` and put to use on
//! each core with `RdmaContext::use_here` before `listen`/`connect`. The
//! side channel is real TCP on 127.0.0.1. The first test runs against the
//! real libibverbs provider (the process default when a core has no
//! context), which has no device on a machine without RDMA.
#![cfg(feature = "rdma")]

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ringwire_runtime::Runtime;
use ringwire_transports::rdma::mem::Fabric;
use ringwire_transports::rdma::{Device, PollMode, RdmaConfig, RdmaContext};
use ringwire_transports::{connect, listen, BackPressure, Endpoint, Error};

const HOST: &str = "h";

/// A fabric with one host and a context on it, in use on both cores of
/// `rt`.
fn mem_context(rt: &Runtime, config: RdmaConfig) -> (Fabric, Arc<RdmaContext>) {
    let fabric = Fabric::new();
    fabric.add_host(HOST).unwrap();
    let ctx = RdmaContext::start(
        Device::Mem {
            fabric: fabric.clone(),
            host: HOST.into(),
        },
        2,
        config,
    )
    .unwrap();
    for core in 0..2 {
        let ctx = ctx.clone();
        rt.block_on(core, move || async move { ctx.use_here() })
            .unwrap()
            .unwrap();
    }
    (fabric, ctx)
}

fn any_port() -> Endpoint {
    "rdma://127.0.0.1:0".parse().unwrap()
}

/// Listens on core `core`, returning the bound endpoint and the listener's
/// task (which runs `serve` on the first accepted connection).
fn serve<F, Fut, R>(
    rt: &Runtime,
    core: usize,
    cfg: ringwire_transports::Config,
    f: F,
) -> (Endpoint, ringwire_runtime::RemoteHandle<R>)
where
    F: FnOnce(ringwire_transports::Connection) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
    R: Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let handle = rt.spawn_on(core, move || async move {
        let mut l = listen(&any_port(), &cfg).await.unwrap();
        tx.send(l.endpoint().clone()).unwrap();
        let conn = l.accept().await.unwrap().unwrap();
        f(conn).await
    });
    (rx.recv().unwrap(), handle)
}

#[test]
fn without_a_device_listen_and_connect_fail_at_once_saying_so() {
    if ringwire_transports::rdma::ibv::IbvDevice::open(None).is_ok() {
        // A machine with a device: the error path cannot be reached here.
        return;
    }
    let rt = runtime();
    let (l, c) = rt
        .block_on(0, || async {
            let l = listen(&any_port(), &config()).await.unwrap_err();
            let c = connect(&"rdma://127.0.0.1:9".parse().unwrap(), &config())
                .await
                .unwrap_err();
            (l, c)
        })
        .unwrap();
    for e in [l, c] {
        let text = e.to_string();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert!(text.contains("no RDMA device"), "{text}");
        assert!(text.contains("open the RDMA device"), "{text}");
    }
    shutdown(rt);
}

#[test]
fn typed_messages_and_calls_cross_a_queue_pair() {
    let rt = runtime();
    // Small buffers: frames span several SENDs and share others.
    let (_fabric, _ctx) = mem_context(&rt, RdmaConfig::default().buffer_size(512));
    let (ep, server) = serve(&rt, 1, config(), |conn| async move {
        let mut got = Vec::new();
        for _ in 0..200 {
            let m = conn.recv::<Order>().await.unwrap();
            got.push(Order {
                id: m.id.to_native(),
                symbol: m.symbol.as_str().to_string(),
                qty: m.qty.to_native(),
                blob: m.blob.to_vec(),
            });
        }
        for _ in 0..50 {
            let req = conn.recv::<Ask>().await.unwrap();
            let n = req.n.to_native();
            req.reply(&Answer { n, square: n * n }).await.unwrap();
        }
        let end = conn.recv_any().await.unwrap_err();
        assert!(matches!(end, Error::Closed { .. }), "{end}");
        got
    });
    rt.block_on(0, move || async move {
        // More credits than the context posts per connection: refused.
        let too_many: Endpoint = format!("{ep}?credits=1000").parse().unwrap();
        let e = connect(&too_many, &config()).await.unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e}");
        // The smallest window: one data chunk in flight, one credit kept
        // for returns; everything still goes through.
        let tight: Endpoint = format!("{ep}?credits=2").parse().unwrap();
        let conn = connect(&tight, &config()).await.unwrap();
        for i in 0..200 {
            let mut o = order(i);
            if i % 50 == 7 {
                // Larger than several receive buffers.
                o.blob = (0..5000u32).map(|b| (b * 31 % 253) as u8).collect();
            }
            conn.send(&o).await.unwrap();
        }
        let calls: Vec<_> = (0..50u64)
            .map(|n| {
                let conn = conn.clone();
                ringwire_runtime::spawn_local(async move {
                    let r = conn.call::<Ask, Answer>(&Ask { n }).await.unwrap();
                    (n, r.n.to_native(), r.square.to_native())
                })
            })
            .collect();
        for c in calls {
            let (n, got_n, sq) = c.await.unwrap();
            assert_eq!((got_n, sq), (n, n * n));
        }
        assert!(conn.close().await.unwrap(), "clean close");
    })
    .unwrap();
    let got = server.join().unwrap();
    assert_eq!(got.len(), 200);
    for (i, o) in got.into_iter().enumerate() {
        let mut want = order(i as u64);
        if i % 50 == 7 {
            want.blob = (0..5000u32).map(|b| (b * 31 % 253) as u8).collect();
        }
        assert_eq!(o, want);
    }
    shutdown(rt);
}

#[test]
fn completions_reach_the_right_core_with_connections_both_ways() {
    let rt = runtime();
    let (_fabric, _ctx) = mem_context(&rt, RdmaConfig::default().poll_mode(PollMode::Busy));
    // A server on each core, a client on the other: both lanes carry
    // sends and receives at once.
    let mut servers = Vec::new();
    let mut endpoints = Vec::new();
    for core in 0..2 {
        let (ep, h) = serve(&rt, core, config(), move |conn| async move {
            let mut served = 0u64;
            while let Ok(req) = conn.recv::<Ask>().await {
                assert_eq!(ringwire_runtime::current_core(), core);
                let n = req.n.to_native();
                req.reply(&Answer {
                    n,
                    square: n * n + core as u64,
                })
                .await
                .unwrap();
                served += 1;
            }
            served
        });
        servers.push(h);
        endpoints.push(ep);
    }
    let clients: Vec<_> = (0..2)
        .map(|core| {
            let ep = endpoints[1 - core].clone();
            rt.spawn_on(core, move || async move {
                let conn = connect(&ep, &config()).await.unwrap();
                let calls: Vec<_> = (0..100u64)
                    .map(|n| {
                        let conn = conn.clone();
                        ringwire_runtime::spawn_local(async move {
                            let r = conn.call::<Ask, Answer>(&Ask { n }).await.unwrap();
                            assert_eq!(ringwire_runtime::current_core(), core);
                            (n, r.square.to_native())
                        })
                    })
                    .collect();
                for c in calls {
                    let (n, sq) = c.await.unwrap();
                    assert_eq!(sq, n * n + (1 - core) as u64);
                }
                conn.close().await.unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    for s in servers {
        assert_eq!(s.join().unwrap(), 100);
    }
    shutdown(rt);
}

#[test]
fn credits_run_out_under_a_stalled_reader_and_come_back() {
    let rt = runtime();
    let credits = 4;
    let (_fabric, _ctx) = mem_context(
        &rt,
        RdmaConfig::default()
            .buffer_size(1024)
            .recv_buffers(credits)
            // More send buffers than credits: credits are what binds.
            .send_buffers(8)
            // A SEND that found no receive posted would fail the
            // connection at once: the sender must never overrun.
            .rnr_retry(0),
    );
    let (go_tx, go_rx) = mpsc::channel::<()>();
    // The receiver holds at most 4 messages before its reader stops.
    let server_cfg = config().recv_queue(4, 1 << 20);
    let (ep, server) = serve(&rt, 1, server_cfg, move |conn| async move {
        // Stalled until the sender has hit back-pressure.
        while go_rx.try_recv().is_err() {
            ringwire_runtime::time::sleep(Duration::from_millis(1)).await;
        }
        let mut ids = Vec::new();
        while let Ok(m) = conn.recv::<Order>().await {
            ids.push(m.id.to_native());
        }
        ids
    });
    let client_cfg = config()
        .send_queue(8, 1 << 20)
        .back_pressure(BackPressure::Fail);
    let sent = rt
        .block_on(0, move || async move {
            let conn = connect(&ep, &client_cfg).await.unwrap();
            let mut accepted = 0u64;
            let mut small = order(0);
            small.blob = vec![1; 900];
            // Each message fills most of a receive buffer: the peer's
            // 4 receives (one kept for credit returns) and its 4-message
            // queue take few of them before the sender must stop.
            let mut refused = false;
            for i in 0..10_000u64 {
                small.id = i;
                match conn.send(&small).await {
                    Ok(_) => accepted += 1,
                    Err(Error::BackPressure { .. }) => {
                        refused = true;
                        break;
                    }
                    Err(e) => panic!("{e}"),
                }
                // Let the flusher and the completion core run.
                ringwire_runtime::time::sleep(Duration::from_micros(200)).await;
            }
            assert!(refused, "the sender never ran out of credits");
            assert!(accepted < 100, "{accepted} messages went out unread");
            go_tx.send(()).unwrap();
            // Credits come back as the receiver reads: the rest goes out.
            let mut next = accepted;
            while next < accepted + 200 {
                small.id = next;
                match conn.send(&small).await {
                    Ok(_) => next += 1,
                    Err(Error::BackPressure { .. }) => {
                        ringwire_runtime::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            conn.close().await.unwrap();
            next
        })
        .unwrap();
    let ids = server.join().unwrap();
    assert_eq!(ids, (0..sent).collect::<Vec<_>>(), "in order, none lost");
    shutdown(rt);
}

#[test]
fn bulk_segments_are_written_into_the_destinations_the_receiver_granted() {
    use ringwire_transports::{stats, Scheme};
    let rt = runtime();
    let (_fabric, _ctx) = mem_context(&rt, RdmaConfig::default().buffer_size(4096));
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let expect = big.clone();
    let (ep, server) = serve(&rt, 1, config(), |conn| async move {
        let before = stats::snapshot().scheme(Scheme::Rdma);
        let mut meta = conn.recv::<Order>().await.unwrap();
        assert_eq!(meta.id.to_native(), 5);
        let sizes = meta.incoming().bulk_sizes().unwrap();
        assert_eq!(sizes, [300_000, 3]);
        let dests: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&s| Vec::with_capacity(s as usize))
            .collect();
        let filled = meta.incoming_mut().accept_bulk(dests).await.unwrap();
        drop(meta);
        let after = stats::snapshot().scheme(Scheme::Rdma);
        // Declined: the sender writes nothing; the connection goes on.
        let declined = conn.recv::<Order>().await.unwrap();
        assert_eq!(declined.id.to_native(), 7);
        assert_eq!(declined.incoming().bulk_sizes().unwrap(), [1000]);
        drop(declined);
        let next = conn.recv::<Order>().await.unwrap();
        (
            filled,
            next.id.to_native(),
            after.bulk_bytes_direct - before.bulk_bytes_direct,
            after.bulk_bytes_copied - before.bulk_bytes_copied,
        )
    });
    rt.block_on(0, move || async move {
        let conn = connect(&ep, &config()).await.unwrap();
        let (_receipt, back) = conn
            .send_bulk(&order(5), vec![big, vec![9u8, 8, 7]])
            .await
            .unwrap();
        assert_eq!(back[1], [9, 8, 7], "segments come back to the sender");
        conn.send_bulk(&order(7), vec![vec![1u8; 1000]])
            .await
            .unwrap();
        conn.send_acked(&order(6)).await.unwrap();
        conn.close().await.unwrap();
    })
    .unwrap();
    let (filled, next, direct, copied) = server.join().unwrap();
    assert_eq!(filled[0], expect);
    assert_eq!(filled[1], [9, 8, 7]);
    assert_eq!(next, 6);
    // Every bulk byte was written by the peer's RDMA WRITE straight into
    // its destination (other tests in this process may add to the
    // counters, never take away).
    assert!(direct >= 300_003, "{direct} bytes direct");
    assert_eq!(copied, 0, "no bulk byte copied");
    shutdown(rt);
}

#[test]
fn a_broken_queue_pair_fails_its_connection_only() {
    let rt = runtime();
    let (fabric, _ctx) = mem_context(&rt, RdmaConfig::default());
    let (tx, rx) = mpsc::channel();
    let (eps_tx, eps_rx) = mpsc::channel();
    let server = rt.spawn_on(1, move || async move {
        let mut l = listen(&any_port(), &config()).await.unwrap();
        eps_tx.send(l.endpoint().clone()).unwrap();
        let a = l.accept().await.unwrap().unwrap();
        // Connection A: served until it fails.
        let a_task = ringwire_runtime::spawn_local(async move {
            loop {
                match a.recv::<Ask>().await {
                    Ok(req) => {
                        let n = req.n.to_native();
                        req.reply(&Answer { n, square: n * n }).await.ok();
                    }
                    Err(e) => return e,
                }
            }
        });
        let b = l.accept().await.unwrap().unwrap();
        let mut served_b = 0u64;
        while let Ok(req) = b.recv::<Ask>().await {
            let n = req.n.to_native();
            req.reply(&Answer { n, square: n * n }).await.unwrap();
            served_b += 1;
        }
        (a_task.await.unwrap().to_string(), served_b)
    });
    let ep = eps_rx.recv().unwrap();
    let fabric2 = fabric.clone();
    let client_err = rt
        .block_on(0, move || async move {
            let a = connect(&ep, &config()).await.unwrap();
            let r = a.call::<Ask, Answer>(&Ask { n: 3 }).await.unwrap();
            assert_eq!(r.square.to_native(), 9);
            drop(r);
            let qps_a = fabric2.qp_nums(HOST);
            assert_eq!(qps_a.len(), 2, "one queue pair per side");
            let b = connect(&ep, &config()).await.unwrap();
            // The client's queue pair of A breaks mid-stream.
            let client_qp = qps_a[0];
            assert!(fabric2.break_qp(HOST, client_qp));
            let err = loop {
                match a.call::<Ask, Answer>(&Ask { n: 4 }).await {
                    Ok(_) => ringwire_runtime::time::sleep(Duration::from_millis(1)).await,
                    Err(e) => break e,
                }
            };
            // B goes on.
            for n in 0..20u64 {
                let r = b.call::<Ask, Answer>(&Ask { n }).await.unwrap();
                assert_eq!(r.square.to_native(), n * n);
            }
            b.close().await.unwrap();
            tx.send(()).unwrap();
            err.to_string()
        })
        .unwrap();
    rx.recv().unwrap();
    assert!(
        client_err.contains("queue pair") || client_err.contains("closed"),
        "{client_err}"
    );
    let (server_a_err, served_b) = server.join().unwrap();
    assert_eq!(served_b, 20);
    assert!(!server_a_err.is_empty());
    shutdown(rt);
}

/// A slow reader and a sender that sends until its connection fails.
fn busy_pair(
    rt: &Runtime,
) -> (
    ringwire_runtime::RemoteHandle<u64>,
    ringwire_runtime::RemoteHandle<u64>,
) {
    let (ep, server) = serve(rt, 1, config(), |conn| async move {
        let mut n = 0u64;
        while conn.recv::<Order>().await.is_ok() {
            n += 1;
            ringwire_runtime::time::sleep(Duration::from_millis(1)).await;
        }
        n
    });
    let (ready_tx, ready_rx) = mpsc::channel();
    let client = rt.spawn_on(0, move || async move {
        let conn = connect(&ep, &config()).await.unwrap();
        ready_tx.send(()).unwrap();
        let mut i = 0;
        while conn.send(&order(i)).await.is_ok() {
            i += 1;
        }
        i
    });
    ready_rx.recv().unwrap();
    // Let work pile up in flight.
    std::thread::sleep(Duration::from_millis(50));
    (server, client)
}

#[test]
fn completion_core_shutdown_with_work_in_flight_fails_the_connections() {
    let rt = runtime();
    let (_fabric, ctx) = mem_context(&rt, RdmaConfig::default().buffer_size(1024));
    let (server, client) = busy_pair(&rt);
    ctx.shutdown(Duration::from_secs(2));
    // Both ends see their connection fail; nothing hangs.
    let sent = client.join().unwrap();
    let read = server.join().unwrap();
    assert!(sent > 0 && read <= sent, "{read} read of {sent} sent");
    shutdown(rt);
}

#[test]
fn runtime_shutdown_with_work_in_flight_ends_everything() {
    let rt = runtime();
    let (_fabric, ctx) = mem_context(&rt, RdmaConfig::default().buffer_size(1024));
    let (_server, _client) = busy_pair(&rt);
    shutdown(rt);
    // The context outlives the runtime and stops cleanly afterwards.
    ctx.shutdown(Duration::from_secs(2));
}

#[test]
fn a_peer_that_sends_garbage_on_the_side_channel_is_refused_and_others_go_on() {
    use std::io::{Read, Write};
    let rt = runtime();
    let (_fabric, _ctx) = mem_context(&rt, RdmaConfig::default());
    let (eps_tx, eps_rx) = mpsc::channel();
    let server = rt.spawn_on(1, move || async move {
        let mut l = listen(&any_port(), &config()).await.unwrap();
        eps_tx.send(l.endpoint().clone()).unwrap();
        let bad = l.accept().await.unwrap().unwrap_err().to_string();
        let good = l.accept().await.unwrap().unwrap();
        let req = good.recv::<Ask>().await.unwrap();
        let n = req.n.to_native();
        req.reply(&Answer { n, square: n * n }).await.unwrap();
        let _ = good.recv_any().await;
        bad
    });
    let ep = eps_rx.recv().unwrap();
    let port = ep.port().unwrap();
    // A peer that speaks something else entirely.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);
    let answer = rt
        .block_on(0, move || async move {
            let conn = connect(&ep, &config()).await.unwrap();
            let r = conn.call::<Ask, Answer>(&Ask { n: 12 }).await.unwrap();
            let sq = r.square.to_native();
            drop(r);
            conn.close().await.unwrap();
            sq
        })
        .unwrap();
    assert_eq!(answer, 144);
    let bad = server.join().unwrap();
    assert!(bad.contains("not a ringwire RDMA exchange"), "{bad}");
    shutdown(rt);
}
