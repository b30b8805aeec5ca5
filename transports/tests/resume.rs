//! Connections that survive: a relay between client and server cuts, stalls
//! and resets the TCP connection while the client streams; the client
//! reconnects and the session resumes, so every message arrives exactly
//! once, in order. Also failover to a second server, and a server that
//! forgot the session (the client hands back exactly what was never
//! acknowledged and starts anew).

mod common;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use common::relay::Relay;
use common::*;
use ringwire_transports::{connect, connect_any, listen, ConnEvent, Endpoint, Error, Reconnect};

fn reconnecting() -> ringwire_transports::Config {
    config().reconnect(
        Reconnect::default()
            .backoff(Duration::from_millis(2), Duration::from_millis(50))
            .give_up_after(Some(Duration::from_secs(30))),
    )
}

fn resuming() -> ringwire_transports::Config {
    config().resume(Duration::from_secs(30))
}

/// A server on core 1 that takes `n` orders from one connection, checking
/// that they come exactly once and in order; returns how many it got.
fn ordered_sink(
    rt: &ringwire_runtime::Runtime,
    n: u64,
) -> (SocketAddr, ringwire_runtime::RemoteHandle<u64>) {
    let (tx, rx) = mpsc::channel();
    let h = rt.spawn_on(1, move || async move {
        let ep: Endpoint = "tcp://127.0.0.1:0".parse().unwrap();
        let mut l = listen(&ep, &resuming()).await.unwrap();
        tx.send(l.endpoint().clone()).unwrap();
        let conn = l.accept().await.unwrap().unwrap();
        let mut next = 0u64;
        while next < n {
            let m = conn.recv::<Order>().await.unwrap();
            assert_eq!(m.id.to_native(), next, "exactly once, in order");
            next += 1;
        }
        // Stay (listener and connection) until the client closes: it may
        // still be resuming to get its last acknowledgements.
        loop {
            match conn.recv::<Order>().await {
                Ok(m) => assert_eq!(m.id.to_native(), n, "only the final marker follows"),
                Err(Error::Closed { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        drop(l);
        next
    });
    let ep = rx.recv().unwrap();
    let port = ep.port().unwrap();
    (SocketAddr::from(([127, 0, 0, 1], port)), h)
}

#[test]
fn a_stream_of_100k_messages_survives_cuts_stalls_and_resets_exactly_once() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RINGWIRE_TEST_LOG").unwrap_or_else(|_| "off".into()))
        .with_test_writer()
        .try_init();
    const N: u64 = 100_000;
    let rt = runtime();
    let (server_addr, sink) = ordered_sink(&rt, N);
    let relay = Relay::start(server_addr);
    let ep = relay.endpoint();
    let done = Arc::new(AtomicBool::new(false));
    let client_done = done.clone();
    let client = rt.spawn_on(0, move || async move {
        let conn = connect(&ep, &reconnecting()).await.unwrap();
        for i in 0..N {
            let mut o = order(i);
            o.blob.truncate(16);
            conn.send(&o).await.unwrap();
        }
        // Everything acknowledged: the last one implies all before it.
        let mut last = order(N);
        last.blob.clear();
        conn.send_acked(&last).await.unwrap();
        client_done.store(true, Ordering::Relaxed);
        let mut events = Vec::new();
        while let Ok(Some(ev)) =
            ringwire_runtime::time::timeout(Duration::from_millis(1), conn.next_event()).await
        {
            events.push(format!("{ev:?}"));
        }
        // Wait for the relay to stop cutting, then close in an orderly way.
        ringwire_runtime::time::sleep(Duration::from_millis(100)).await;
        conn.close().await.unwrap();
        events
    });
    // Faults while the client streams: a cut, a stall, a reset, repeated.
    let mut faults = 0;
    while !done.load(Ordering::Relaxed) && faults < 60 {
        thread::sleep(Duration::from_millis(20));
        match faults % 3 {
            0 => relay.cut(),
            1 => relay.stall(Duration::from_millis(30)),
            _ => relay.reset(),
        }
        faults += 1;
    }
    let events = client.join().unwrap();
    assert_eq!(sink.join().unwrap(), N);
    assert!(
        faults >= 3,
        "the faults ran while the client streamed ({faults})"
    );
    assert!(
        events.iter().any(|e| e.starts_with("Resumed")),
        "the session resumed: {events:?}"
    );
    assert!(
        !events.iter().any(|e| e.starts_with("SessionReset")),
        "no session was lost: {events:?}"
    );
    assert!(relay.forwarded.load(Ordering::Relaxed) > 0);
    shutdown(rt);
}

#[test]
fn a_client_fails_over_to_the_second_server_in_its_list() {
    let rt = runtime();
    let (tx, rx) = mpsc::channel();
    let server = rt.spawn_on(1, move || async move {
        let ep: Endpoint = "tcp://127.0.0.1:0".parse().unwrap();
        let mut l = listen(&ep, &resuming()).await.unwrap();
        tx.send(l.endpoint().clone()).unwrap();
        let conn = l.accept().await.unwrap().unwrap();
        conn.recv::<Order>().await.unwrap().id.to_native()
    });
    let live = rx.recv().unwrap();
    // A port nobody listens on first.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead: Endpoint = format!("tcp://127.0.0.1:{dead}").parse().unwrap();
    rt.block_on(0, move || async move {
        let conn = connect_any(&[dead, live], &reconnecting()).await.unwrap();
        conn.send_acked(&order(42)).await.unwrap();
    })
    .unwrap();
    assert_eq!(server.join().unwrap(), 42);
    shutdown(rt);
}

#[test]
fn a_server_that_forgot_the_session_gets_a_new_one_and_the_client_hands_back_the_rest() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RINGWIRE_TEST_LOG").unwrap_or_else(|_| "off".into()))
        .with_test_writer()
        .try_init();
    // The first server keeps no sessions (no resume window): after a cut it
    // refuses the resume, as a restarted server would.
    let rt = runtime();
    let (tx, rx) = mpsc::channel();
    let (got_tx, got_rx) = mpsc::channel::<u64>();
    rt.spawn_on(1, move || async move {
        let ep: Endpoint = "tcp://127.0.0.1:0".parse().unwrap();
        let mut l = listen(&ep, &config()).await.unwrap();
        tx.send(l.endpoint().clone()).unwrap();
        while let Some(conn) = l.accept().await {
            // The refused resume is a failed handshake: skip it.
            let Ok(conn) = conn else { continue };
            let got_tx = got_tx.clone();
            ringwire_runtime::spawn_local(async move {
                while let Ok(m) = conn.recv::<Order>().await {
                    let _ = got_tx.send(m.id.to_native());
                }
            });
        }
    });
    let bound = rx.recv().unwrap();
    let relay = Relay::start(SocketAddr::from(([127, 0, 0, 1], bound.port().unwrap())));
    let ep = relay.endpoint();
    let (cut_tx, cut_rx) = mpsc::channel::<()>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let client = rt.spawn_on(0, move || async move {
        let conn = connect(&ep, &reconnecting()).await.unwrap();
        conn.send_acked(&order(1)).await.unwrap();
        // Stall the relay's delivery of the next ones, then cut: the server
        // never acknowledged them.
        sent_tx.send(()).unwrap();
        while cut_rx.try_recv().is_err() {
            ringwire_runtime::time::sleep(Duration::from_millis(1)).await;
        }
        for i in 2..5 {
            conn.send(&order(i)).await.unwrap();
        }
        let mut handed_back = Vec::new();
        loop {
            match conn.next_event().await {
                Some(ConnEvent::SessionReset { unacked }) => {
                    for u in unacked {
                        handed_back.push(u.get::<Order>().unwrap().id.to_native());
                    }
                    break;
                }
                Some(_) => continue,
                None => panic!("connection ended instead of resetting"),
            }
        }
        // The connection goes on with a new session.
        conn.send_acked(&order(100)).await.unwrap();
        handed_back
    });
    sent_rx.recv().unwrap();
    assert_eq!(got_rx.recv_timeout(Duration::from_secs(10)).unwrap(), 1);
    relay.stalled.store(true, Ordering::Relaxed);
    cut_tx.send(()).unwrap();
    thread::sleep(Duration::from_millis(100));
    relay.cut();
    relay.stalled.store(false, Ordering::Relaxed);
    let handed_back = client.join().unwrap();
    assert_eq!(
        handed_back,
        [2, 3, 4],
        "exactly the unacknowledged messages"
    );
    // The server saw 1 (first session) and 100 (the new one), never 2..4.
    let mut seen = Vec::new();
    while let Ok(id) = got_rx.recv_timeout(Duration::from_secs(5)) {
        seen.push(id);
        if id == 100 {
            break;
        }
    }
    assert_eq!(seen, [100]);
    shutdown(rt);
    let _ = Error::Usage("");
}

/// A session cut and never resumed, with a long resume window: shutting the
/// server's runtime down ends the session (the task waiting on it sees it
/// closed) and its timer, instead of waiting for the window and aborting
/// both.
#[test]
fn a_suspended_session_does_not_hold_up_or_dirty_the_servers_shutdown() {
    let server_rt = runtime();
    let (tx, rx) = mpsc::channel();
    let (got_tx, got_rx) = mpsc::channel();
    let server = server_rt.spawn_on(1, move || async move {
        let ep: Endpoint = "tcp://127.0.0.1:0".parse().unwrap();
        let long = config().resume(Duration::from_secs(600));
        let mut l = listen(&ep, &long).await.unwrap();
        tx.send(l.endpoint().clone()).unwrap();
        let conn = l.accept().await.unwrap().unwrap();
        got_tx
            .send(conn.recv::<Order>().await.unwrap().id.to_native())
            .unwrap();
        // Wait on the suspended session as an application would: the
        // shutdown closes it.
        let end = conn.recv::<Order>().await;
        assert!(matches!(end, Err(Error::Closed { .. })), "{end:?}");
    });
    let ep = rx.recv().unwrap();
    let relay = Arc::new(Relay::start(SocketAddr::from((
        [127, 0, 0, 1],
        ep.port().unwrap(),
    ))));
    let client_rt = runtime();
    let through = relay.endpoint();
    let r = relay.clone();
    client_rt
        .block_on(0, move || async move {
            let conn = connect(&through, &reconnecting()).await.unwrap();
            conn.send_acked(&order(7)).await.unwrap();
            // Cut the link and refuse the client's way back: the server's
            // side of the session is suspended.
            r.refuse.store(true, Ordering::SeqCst);
            r.cut();
            drop(conn);
        })
        .unwrap();
    assert_eq!(got_rx.recv().unwrap(), 7);
    // Give the server's reader time to see the cut and suspend the session.
    thread::sleep(Duration::from_millis(300));
    let report = server_rt.shutdown(Duration::from_secs(5));
    server.join().unwrap();
    assert_eq!(report.cores_panicked, 0, "{report:?}");
    assert_eq!(report.tasks_aborted, 0, "{report:?}");
    let report = client_rt.shutdown(Duration::from_secs(5));
    assert_eq!(report.cores_panicked, 0, "{report:?}");
}
