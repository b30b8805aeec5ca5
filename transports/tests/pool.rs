//! Pools: several connections to one peer used as one. A member cut while
//! it holds unacknowledged messages, refused on its way back until it gives
//! up, hands them to the pool, which sends them through the other members
//! and replaces the lost one: every message arrives.
//!
//! Also: a connection that gives up reconnecting hands back exactly what the
//! peer never acknowledged ([`ConnEvent::Failed`]).

mod common;

use std::cell::RefCell;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::relay::Relay;
use common::*;
use ringwire_transports::{connect, listen, ConnEvent, Endpoint, Pool, Reconnect};

/// A server on core 1 that keeps no sessions (a cut member's resume is
/// refused, as by a restarted server) and reports every distinct order id it
/// received from any connection; it sends `true` once it has ids `0..n`.
fn collecting_server(
    rt: &ringwire_runtime::Runtime,
    n: u64,
) -> (SocketAddr, mpsc::Receiver<bool>, mpsc::Receiver<u64>) {
    let (ep_tx, ep_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let (dup_tx, dup_rx) = mpsc::channel();
    rt.spawn_on(1, move || async move {
        let ep: Endpoint = "tcp://127.0.0.1:0".parse().unwrap();
        let mut l = listen(&ep, &config()).await.unwrap();
        ep_tx.send(l.endpoint().clone()).unwrap();
        let seen: Rc<RefCell<HashSet<u64>>> = Rc::default();
        while let Some(conn) = l.accept().await {
            // A refused resume is a failed handshake: skip it.
            let Ok(conn) = conn else { continue };
            let (seen, done_tx, dup_tx) = (seen.clone(), done_tx.clone(), dup_tx.clone());
            ringwire_runtime::spawn_local(async move {
                while let Ok(m) = conn.recv::<Order>().await {
                    let id = m.id.to_native();
                    let mut seen = seen.borrow_mut();
                    if !seen.insert(id) {
                        let _ = dup_tx.send(id);
                    }
                    if seen.len() as u64 == n && (0..n).all(|i| seen.contains(&i)) {
                        let _ = done_tx.send(true);
                    }
                }
            });
        }
    });
    let ep = ep_rx.recv().unwrap();
    (
        SocketAddr::from(([127, 0, 0, 1], ep.port().unwrap())),
        done_rx,
        dup_rx,
    )
}

#[test]
fn a_pool_losing_a_member_mid_stream_moves_its_messages_and_replaces_it() {
    const N: u64 = 20_000;
    let rt = runtime();
    let (addr, done_rx, dup_rx) = collecting_server(&rt, N);
    let relay = Relay::start(addr);
    let ep = relay.endpoint();
    let (mid_tx, mid_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (fin_tx, fin_rx) = mpsc::channel::<()>();
    let client = rt.spawn_on(0, move || async move {
        let cfg = config().reconnect(
            Reconnect::default()
                .backoff(Duration::from_millis(2), Duration::from_millis(20))
                .give_up_after(Some(Duration::from_millis(150))),
        );
        let pool = Pool::connect(&[ep], &cfg, 3).await.unwrap();
        assert_eq!(pool.size(), 3);
        for i in 0..N {
            if i == N / 4 {
                // Let the relay stall, so that the members hold
                // unacknowledged messages when one of them is cut.
                mid_tx.send(()).unwrap();
                while go_rx.try_recv().is_err() {
                    ringwire_runtime::time::sleep(Duration::from_millis(1)).await;
                }
            }
            pool.send(&order(i)).await.unwrap();
            if i % 64 == 0 {
                ringwire_runtime::yield_now().await;
            }
        }
        // Wait for the server to have everything, then read the events.
        while fin_rx.try_recv().is_err() {
            ringwire_runtime::time::sleep(Duration::from_millis(2)).await;
        }
        // The replacement may come after everything was delivered through
        // the other members.
        let mut events = Vec::new();
        while !events
            .iter()
            .any(|e: &String| e.starts_with("MemberReplaced"))
        {
            match ringwire_runtime::time::timeout(Duration::from_secs(30), pool.next_event()).await
            {
                Ok(Some(e)) => events.push(format!("{e:?}")),
                _ => break,
            }
        }
        let (moved, replaced) = pool.moved_and_replaced();
        assert!(
            pool.close().await.unwrap(),
            "everything acknowledged at the end"
        );
        (moved, replaced, events)
    });
    mid_rx.recv().unwrap();
    relay.stalled.store(true, Ordering::Relaxed);
    go_tx.send(()).unwrap();
    thread::sleep(Duration::from_millis(50));
    // One member is cut and refused until it gives up; the others go on.
    relay.refuse.store(true, Ordering::Relaxed);
    relay.reset_first();
    relay.stalled.store(false, Ordering::Relaxed);
    thread::sleep(Duration::from_millis(400));
    relay.refuse.store(false, Ordering::Relaxed);
    assert_eq!(
        done_rx.recv_timeout(Duration::from_secs(60)),
        Ok(true),
        "every message reached the server"
    );
    fin_tx.send(()).unwrap();
    let (moved, replaced, events) = client.join().unwrap();
    let dups: Vec<u64> = dup_rx.try_iter().collect();
    println!(
        "moved {moved}, replaced {replaced}, duplicates {}, events {events:?}",
        dups.len()
    );
    assert!(moved > 0, "the cut member's unacknowledged messages moved");
    assert_eq!(replaced, 1, "the lost member was replaced");
    assert!(events.iter().any(|e| e.starts_with("MemberLost")));
    assert!(events.iter().any(|e| e.starts_with("MemberReplaced")));
    // At least once: a duplicate can only be a moved message.
    assert!(dups.len() as u64 <= moved);
    drop(relay);
    shutdown(rt);
}

#[test]
fn a_connection_that_gives_up_hands_back_what_was_never_acknowledged() {
    let rt = runtime();
    let (ep_tx, ep_rx) = mpsc::channel();
    let (got_tx, got_rx) = mpsc::channel::<u64>();
    rt.spawn_on(1, move || async move {
        let ep: Endpoint = "tcp://127.0.0.1:0".parse().unwrap();
        let mut l = listen(&ep, &config()).await.unwrap();
        ep_tx.send(l.endpoint().clone()).unwrap();
        while let Some(conn) = l.accept().await {
            let Ok(conn) = conn else { continue };
            let got_tx = got_tx.clone();
            ringwire_runtime::spawn_local(async move {
                while let Ok(m) = conn.recv::<Order>().await {
                    let _ = got_tx.send(m.id.to_native());
                }
            });
        }
    });
    let bound: Endpoint = ep_rx.recv().unwrap();
    let relay = Relay::start(SocketAddr::from(([127, 0, 0, 1], bound.port().unwrap())));
    let ep = relay.endpoint();
    let (stalled_tx, stalled_rx) = mpsc::channel::<()>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let client = rt.spawn_on(0, move || async move {
        let cfg = config().reconnect(
            Reconnect::default()
                .backoff(Duration::from_millis(2), Duration::from_millis(20))
                .give_up_after(Some(Duration::from_millis(100))),
        );
        let conn = connect(&ep, &cfg).await.unwrap();
        conn.send_acked(&order(0)).await.unwrap();
        sent_tx.send(()).unwrap();
        stalled_rx.recv().unwrap();
        for i in 1..50 {
            conn.send(&order(i)).await.unwrap();
        }
        loop {
            match conn.next_event().await {
                Some(ConnEvent::Failed { error, unacked }) => {
                    let ids: Vec<u64> = unacked
                        .iter()
                        .map(|u| u.get::<Order>().unwrap().id.to_native())
                        .collect();
                    return (error.to_string(), ids, conn.is_closed());
                }
                Some(_) => continue,
                None => panic!("the connection ended without handing anything back"),
            }
        }
    });
    sent_rx.recv().unwrap();
    assert_eq!(got_rx.recv_timeout(Duration::from_secs(10)), Ok(0));
    relay.stalled.store(true, Ordering::Relaxed);
    relay.refuse.store(true, Ordering::Relaxed);
    stalled_tx.send(()).unwrap();
    thread::sleep(Duration::from_millis(50));
    relay.reset();
    relay.stalled.store(false, Ordering::Relaxed);
    let (error, handed_back, closed) = client.join().unwrap();
    println!("{error}; handed back {handed_back:?}");
    assert!(closed);
    assert!(error.contains("gave up reconnecting"), "{error}");
    // Every message is either received by the server or handed back, and
    // what is handed back is in order.
    let received: HashSet<u64> = got_rx.try_iter().collect();
    assert!(
        !handed_back.is_empty(),
        "the stalled messages were never acknowledged"
    );
    assert!(handed_back.windows(2).all(|w| w[0] < w[1]));
    for i in 1..50 {
        assert!(
            received.contains(&i) || handed_back.contains(&i),
            "message {i} neither received nor handed back"
        );
    }
    assert!(
        !handed_back.contains(&0),
        "an acknowledged message is not handed back"
    );
    drop(relay);
    shutdown(rt);
}
