//! Keep-alives and idle expiry in both directions: a peer that vanishes
//! without closing (a relay that stops forwarding, as a pulled cable would)
//! is detected by both sides, each connection ends with a timeout error and
//! its state is freed, while another connection to the same server, idle
//! but alive, is kept by its heartbeats. Its own test binary: the timeouts
//! are short, and tests running beside it would make the cores late.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::relay::Relay;
use common::*;
use ringwire_transports::{connect, listen, stats, Endpoint, Error, Scheme};

fn cfg() -> ringwire_transports::Config {
    config().keepalive(Duration::from_millis(50), Duration::from_millis(600))
}

#[test]
fn a_vanished_peer_is_detected_on_both_sides_and_freed_and_a_quiet_one_is_kept() {
    let rt = runtime();
    let (ep_tx, ep_rx) = mpsc::channel();
    let (ended_tx, ended_rx) = mpsc::channel::<(u64, Error, Duration)>();
    let (live_tx, live_rx) = mpsc::channel::<u64>();
    let (ask_tx, ask_rx) = mpsc::channel::<()>();
    rt.spawn_on(1, move || async move {
        let ep: Endpoint = "tcp://127.0.0.1:0".parse().unwrap();
        let mut l = listen(&ep, &cfg()).await.unwrap();
        ep_tx.send(l.endpoint().clone()).unwrap();
        ringwire_runtime::spawn_local(async move {
            // Reports, on request, how many tcp connections this core holds.
            while !ringwire_runtime::is_shutting_down() {
                match ask_rx.try_recv() {
                    Ok(()) => {
                        let live = stats::snapshot().scheme(Scheme::Tcp).connections_live();
                        let _ = live_tx.send(live);
                    }
                    Err(mpsc::TryRecvError::Empty) => {
                        ringwire_runtime::time::sleep(Duration::from_millis(5)).await
                    }
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
        });
        while let Some(conn) = l.accept().await {
            let conn = conn.unwrap();
            let ended_tx = ended_tx.clone();
            ringwire_runtime::spawn_local(async move {
                let mut last = Instant::now();
                loop {
                    match conn.recv::<Order>().await {
                        Ok(_) => last = Instant::now(),
                        Err(e) => {
                            let _ = ended_tx.send((conn.peer_id(), e, last.elapsed()));
                            return;
                        }
                    }
                }
            });
        }
    });
    let bound: Endpoint = ep_rx.recv().unwrap();
    let relay = Relay::start(SocketAddr::from(([127, 0, 0, 1], bound.port().unwrap())));
    let through_relay = relay.endpoint();
    let (stall_tx, stall_rx) = mpsc::channel::<()>();
    let (quiet_tx, quiet_rx) = mpsc::channel::<()>();
    let client = rt.spawn_on(0, move || async move {
        let vanishing = connect(&through_relay, &cfg().node_id(1)).await.unwrap();
        let quiet = connect(&bound, &cfg().node_id(2)).await.unwrap();
        vanishing.send_acked(&order(1)).await.unwrap();
        quiet.send_acked(&order(2)).await.unwrap();
        stall_tx.send(()).unwrap();
        // The relay forwards nothing from now on: the client side must find
        // out by itself.
        let started = Instant::now();
        let err = vanishing.recv::<Order>().await.unwrap_err();
        let detected = started.elapsed();
        // The quiet connection sent nothing either, but it is alive.
        quiet_rx.recv().unwrap();
        let still_alive = quiet.send_acked(&order(3)).await;
        (err, detected, still_alive.is_ok(), quiet.is_closed())
    });
    stall_rx.recv().unwrap();
    relay.stalled.store(true, Ordering::Relaxed);
    // The server side of the vanished connection ends on its own.
    let (peer, server_err, idle) = ended_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    println!("server side: peer {peer} ended after {idle:?} of silence: {server_err}");
    assert_eq!(peer, 1, "only the vanished peer's connection ends");
    assert!(
        matches!(server_err, Error::Timeout { .. }),
        "a timeout error: {server_err:?}"
    );
    // Its state was freed on the server's core: one live connection left.
    let mut live = u64::MAX;
    for _ in 0..200 {
        ask_tx.send(()).unwrap();
        live = live_rx.recv().unwrap();
        if live == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        live, 1,
        "the vanished connection's state is freed, the quiet one kept"
    );
    quiet_tx.send(()).unwrap();
    let (client_err, detected, quiet_ok, quiet_closed) = client.join().unwrap();
    println!("client side: detected after {detected:?}: {client_err}");
    assert!(
        matches!(client_err, Error::Timeout { .. }),
        "a timeout error: {client_err:?}"
    );
    assert!(
        quiet_ok && !quiet_closed,
        "the quiet connection is kept alive"
    );
    assert!(
        ended_rx.try_recv().is_err(),
        "the quiet connection did not end"
    );
    relay.stalled.store(false, Ordering::Relaxed);
    drop(relay);
    drop(ask_tx);
    shutdown(rt);
}
