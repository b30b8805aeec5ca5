//! `Peers::broadcast` under back-pressure: with the `Wait` policy every
//! message reaches a slow peer exactly once and in order, however many
//! broadcasts find its send queue full.

mod common;

use std::time::Duration;

use common::*;
use ringwire_transports::{connect, listen, BackPressure, Endpoint, Peers};

#[test]
fn broadcasts_to_a_slow_peer_under_wait_arrive_once_in_order() {
    const N: u64 = 3000;
    let rt = runtime();
    let peers = Peers::new();
    // A send queue of 16 messages and small socket buffers: the peer's
    // queue is full for most of the run.
    let server_cfg = config()
        .peers(&peers)
        .send_queue(16, 1 << 20)
        .back_pressure(BackPressure::Wait);
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let (accepted_tx, accepted_rx) = std::sync::mpsc::channel();
    rt.spawn_on(0, move || async move {
        let ep: Endpoint = "tcp://127.0.0.1:0?sndbuf=4096&rcvbuf=4096".parse().unwrap();
        let mut l = listen(&ep, &server_cfg).await.unwrap();
        bound_tx.send(l.endpoint().to_string()).unwrap();
        let mut keep = Vec::new();
        while let Some(c) = l.accept().await {
            keep.push(c.unwrap());
            accepted_tx.send(()).unwrap();
        }
    });
    let addr = bound_rx.recv().unwrap();
    let (got_tx, got_rx) = std::sync::mpsc::channel();
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = received.clone();
    rt.spawn_on(1, move || async move {
        // The listener's endpoint with the client's own options.
        let base = addr.split('?').next().unwrap().to_string();
        let ep: Endpoint = format!("{base}?rcvbuf=4096").parse().unwrap();
        let conn = connect(&ep, &config().node_id(7)).await.unwrap();
        let mut ids = Vec::new();
        while (ids.len() as u64) < N {
            let m = conn.recv::<Order>().await.unwrap();
            ids.push(m.id.to_native());
            seen.store(ids.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        got_tx.send(ids).unwrap();
    });
    accepted_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the client connected");
    let p = peers.clone();
    let sent = rt
        .block_on(0, move || async move {
            let mut sent = 0;
            for id in 0..N {
                // Up to 48 ahead of the reader: the send queue (16) is
                // full and the rest waits in the backlog (at most 64).
                while id >= received.load(std::sync::atomic::Ordering::Relaxed) + 48 {
                    ringwire_runtime::time::sleep(Duration::from_micros(200)).await;
                }
                sent += p.broadcast(&order(id)).await.unwrap();
                // Let the connection's tasks run between broadcasts, so
                // that room frees while older broadcasts still wait.
                if id % 7 == 0 {
                    ringwire_runtime::yield_now().await;
                }
            }
            sent
        })
        .unwrap();
    assert_eq!(sent as u64, N, "queued for the one peer each time");
    let ids = got_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the peer received every broadcast");
    let expect: Vec<u64> = (0..N).collect();
    if ids != expect {
        let first = ids.iter().zip(&expect).position(|(a, b)| a != b);
        panic!(
            "broadcasts arrived out of order or not once: first difference at {first:?}, \
             {} received",
            ids.len()
        );
    }
    // The peer's queue was full (the test would prove nothing otherwise).
    let waits = rt
        .block_on(0, || async {
            ringwire_transports::stats::snapshot()
                .scheme(ringwire_transports::Scheme::Tcp)
                .back_pressure_waits
        })
        .unwrap();
    assert!(waits > 0, "the send queue never filled");
    shutdown(rt);
}

#[test]
fn a_peer_that_stops_reading_is_cut_not_buffered_for_ever() {
    let rt = runtime();
    let peers = Peers::new();
    let server_cfg = config()
        .peers(&peers)
        .send_queue(4, 1 << 20)
        .back_pressure(BackPressure::Wait);
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let (ended_tx, ended_rx) = std::sync::mpsc::channel();
    rt.spawn_on(0, move || async move {
        let ep: Endpoint = "tcp://127.0.0.1:0?sndbuf=4096".parse().unwrap();
        let mut l = listen(&ep, &server_cfg).await.unwrap();
        bound_tx.send(l.endpoint().to_string()).unwrap();
        if let Some(c) = l.accept().await {
            let c = c.unwrap();
            // The connection's end, as its owner sees it.
            let e = loop {
                match c.recv::<Order>().await {
                    Ok(_) => {}
                    Err(e) => break e,
                }
            };
            ended_tx.send(e.to_string()).unwrap();
        }
    });
    let addr = bound_rx.recv().unwrap();
    let base = addr.split('?').next().unwrap().to_string();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    rt.spawn_on(1, move || async move {
        let ep: Endpoint = format!("{base}?rcvbuf=4096").parse().unwrap();
        let _conn = connect(&ep, &config().node_id(9)).await.unwrap();
        // Never reads; holds the connection until told.
        while stop_rx.try_recv().is_err() {
            ringwire_runtime::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while peers.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the peer never registered"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The broadcaster never blocks on the stalled peer.
    let p = peers.clone();
    rt.block_on(0, move || async move {
        for id in 0..20_000u64 {
            p.broadcast(&order(id)).await.unwrap();
            if id % 16 == 0 {
                ringwire_runtime::yield_now().await;
            }
        }
    })
    .unwrap();
    let why = ended_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the stalled peer's connection ended");
    assert!(why.contains("broadcasts behind"), "{why}");
    stop_tx.send(()).unwrap();
    shutdown(rt);
}
