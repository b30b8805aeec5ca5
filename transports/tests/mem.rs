//! `mem://` connections between two cores of one runtime.

mod common;

use common::*;
use ringwire_transports::{connect, listen, Endpoint};

#[test]
fn typed_messages_and_calls_cross_cores() {
    let rt = runtime();
    let ep: Endpoint = format!("mem://{}", unique("basic")).parse().unwrap();
    let server_ep = ep.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = rt.spawn_on(1, move || async move {
        let mut listener = listen(&server_ep, &config()).await.unwrap();
        tx.send(()).unwrap();
        let conn = listener.accept().await.unwrap().unwrap();
        let mut got = Vec::new();
        for _ in 0..100 {
            let m = conn.recv::<Order>().await.unwrap();
            assert!(!m.incoming().in_receive_buffer());
            got.push((m.id.to_native(), m.symbol.as_str().to_string()));
        }
        for _ in 0..50 {
            let req = conn.recv::<Ask>().await.unwrap();
            let n = req.n.to_native();
            req.reply(&Answer { n, square: n * n }).await.unwrap();
        }
        let last = conn.recv::<Order>().await.unwrap();
        assert_eq!(last.id.to_native(), 1000);
        drop(last);
        // The client closes: the next receive reports it.
        let end = conn.recv_any().await.unwrap_err();
        assert!(
            matches!(end, ringwire_transports::Error::Closed { .. }),
            "{end}"
        );
        got
    });
    rx.recv().unwrap();
    rt.block_on(0, move || async move {
        let conn = connect(&ep, &config()).await.unwrap();
        for i in 0..100 {
            conn.send(&order(i)).await.unwrap();
        }
        // Many calls in flight at once.
        let calls: Vec<_> = (0..50u64)
            .map(|n| {
                let conn = conn.clone();
                ringwire_runtime::spawn_local(async move {
                    let r = conn.call::<Ask, Answer>(&Ask { n }).await.unwrap();
                    (r.n.to_native(), r.square.to_native())
                })
            })
            .collect();
        for (n, c) in calls.into_iter().enumerate() {
            let (got_n, sq) = c.await.unwrap();
            assert_eq!(got_n * got_n, sq);
            let _ = n;
        }
        conn.send_acked(&order(1000)).await.unwrap();
        assert!(conn.close().await.unwrap(), "clean close");
    })
    .unwrap();
    let got = server.join().unwrap();
    assert_eq!(got.len(), 100);
    for (i, (id, sym)) in got.into_iter().enumerate() {
        assert_eq!(id, i as u64);
        assert_eq!(sym, format!("SYM{}", i % 97));
    }
    shutdown(rt);
}

#[test]
fn broadcast_reaches_every_peer_on_both_cores_from_one_buffer() {
    use ringwire_transports::Peers;
    use std::sync::mpsc;
    let rt = runtime();
    let peers = Peers::new();
    let names = [unique("bcast-a"), unique("bcast-b")];
    let (accepted_tx, accepted_rx) = mpsc::channel::<usize>();
    // A listener on each core, both registering into `peers`.
    for (core, name) in names.iter().enumerate() {
        let ep: Endpoint = format!("mem://{name}").parse().unwrap();
        let cfg = config().peers(&peers);
        let accepted_tx = accepted_tx.clone();
        let (bound_tx, bound_rx) = mpsc::channel();
        rt.spawn_on(core, move || async move {
            let mut l = listen(&ep, &cfg).await.unwrap();
            bound_tx.send(()).unwrap();
            let mut keep = Vec::new();
            while let Some(c) = l.accept().await {
                keep.push(c.unwrap());
                accepted_tx.send(core).unwrap();
            }
        });
        bound_rx.recv().unwrap();
    }
    // Eight clients, four on each core, each a distinct peer.
    let (got_tx, got_rx) = mpsc::channel::<(u64, Vec<u64>)>();
    for i in 0..8u64 {
        let ep: Endpoint = format!("mem://{}", names[(i % 2) as usize])
            .parse()
            .unwrap();
        let got_tx = got_tx.clone();
        rt.spawn_on((i / 4) as usize, move || async move {
            let conn = connect(&ep, &config().node_id(100 + i)).await.unwrap();
            let mut ids = Vec::new();
            loop {
                let m = conn.recv::<Order>().await.unwrap();
                ids.push(m.id.to_native());
                if m.id.to_native() == 2 {
                    break;
                }
            }
            got_tx.send((100 + i, ids)).unwrap();
        });
    }
    for _ in 0..8 {
        accepted_rx.recv().unwrap();
    }
    assert_eq!(peers.len(), 8);
    assert_eq!(peers.peer_ids(), (100..108).collect::<Vec<_>>());
    let p = peers.clone();
    let counts = rt
        .block_on(0, move || async move {
            let all = p.broadcast(&order(1)).await.unwrap();
            let some = p.broadcast_to(&order(7), &[101, 104, 999]).await.unwrap();
            let end = p.broadcast(&order(2)).await.unwrap();
            (all, some, end)
        })
        .unwrap();
    assert_eq!(counts, (8, 2, 8));
    let mut got: Vec<(u64, Vec<u64>)> = (0..8).map(|_| got_rx.recv().unwrap()).collect();
    got.sort();
    for (peer, ids) in got {
        if peer == 101 || peer == 104 {
            assert_eq!(ids, [1, 7, 2], "peer {peer}");
        } else {
            assert_eq!(ids, [1, 2], "peer {peer}");
        }
    }
    shutdown(rt);
}

#[test]
fn bulk_segments_land_in_destinations_the_receiver_chose() {
    let rt = runtime();
    let ep: Endpoint = format!("mem://{}", unique("bulk")).parse().unwrap();
    let server_ep = ep.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let expect = big.clone();
    let server = rt.spawn_on(1, move || async move {
        let mut l = listen(&server_ep, &config()).await.unwrap();
        tx.send(()).unwrap();
        let conn = l.accept().await.unwrap().unwrap();
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
        // The connection goes on after the transfer.
        let next = conn.recv::<Order>().await.unwrap();
        (filled, next.id.to_native())
    });
    rx.recv().unwrap();
    rt.block_on(0, move || async move {
        let conn = connect(&ep, &config()).await.unwrap();
        let (_receipt, back) = conn
            .send_bulk(&order(5), vec![big, vec![9u8, 8, 7]])
            .await
            .unwrap();
        assert_eq!(back[1], [9, 8, 7], "segments come back to the sender");
        conn.send_acked(&order(6)).await.unwrap();
        conn.close().await.unwrap();
    })
    .unwrap();
    let (filled, next) = server.join().unwrap();
    assert_eq!(filled[0], expect);
    assert_eq!(filled[1], [9, 8, 7]);
    assert_eq!(next, 6);
    shutdown(rt);
}

#[test]
fn a_schema_mismatch_is_refused_on_both_sides_saying_what_differs() {
    let rt = runtime();
    let ep: Endpoint = format!("mem://{}", unique("mismatch")).parse().unwrap();
    let server_ep = ep.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = rt.spawn_on(1, move || async move {
        let mut l = listen(&server_ep, &config()).await.unwrap();
        tx.send(()).unwrap();
        l.accept().await.unwrap().unwrap_err()
    });
    rx.recv().unwrap();
    let client_err = rt
        .block_on(0, move || async move {
            let cfg =
                ringwire_transports::Config::with_types::<(Order, Ask, Answer, Extra)>().unwrap();
            connect(&ep, &cfg).await.unwrap_err()
        })
        .unwrap();
    let server_err = server.join().unwrap();
    // The client knows the extra type's name; the server only its id.
    let extra_id = format!("{:#010x}", <Extra as ringwire_transports::Message>::TYPE_ID);
    for err in [&client_err, &server_err] {
        assert!(
            matches!(err, ringwire_transports::Error::Refused(_)),
            "{err}"
        );
        assert!(err.to_string().contains(&extra_id), "{err}");
    }
    assert!(
        client_err.to_string().contains("test.Extra"),
        "{client_err}"
    );
    shutdown(rt);
}

#[test]
fn streams_keep_their_own_order() {
    let rt = runtime();
    let ep: Endpoint = format!("mem://{}", unique("streams")).parse().unwrap();
    let server_ep = ep.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = rt.spawn_on(1, move || async move {
        let mut l = listen(&server_ep, &config()).await.unwrap();
        tx.send(()).unwrap();
        let conn = l.accept().await.unwrap().unwrap();
        // Read stream 7 first although its messages were sent last.
        let mut seven = Vec::new();
        for _ in 0..10 {
            seven.push(conn.stream(7).recv::<Order>().await.unwrap().id.to_native());
        }
        let mut zero = Vec::new();
        for _ in 0..10 {
            zero.push(conn.recv::<Order>().await.unwrap().id.to_native());
        }
        let q = conn.stream(3).recv::<Ask>().await.unwrap();
        q.reply(&Answer { n: 3, square: 9 }).await.unwrap();
        (seven, zero)
    });
    rx.recv().unwrap();
    rt.block_on(0, move || async move {
        let conn = connect(&ep, &config()).await.unwrap();
        for i in 0..10 {
            conn.send(&order(i)).await.unwrap();
        }
        for i in 100..110 {
            conn.stream(7).send(&order(i)).await.unwrap();
        }
        let a = conn
            .stream(3)
            .call::<Ask, Answer>(&Ask { n: 3 })
            .await
            .unwrap();
        assert_eq!(a.square.to_native(), 9);
    })
    .unwrap();
    let (seven, zero) = server.join().unwrap();
    assert_eq!(seven, (100..110).collect::<Vec<_>>());
    assert_eq!(zero, (0..10).collect::<Vec<_>>());
    shutdown(rt);
}

#[test]
fn back_pressure_policies_bound_the_queue_and_count_drops() {
    use ringwire_transports::{BackPressure, Error};
    for policy in [
        BackPressure::Fail,
        BackPressure::DropNewest,
        BackPressure::Wait,
    ] {
        let rt = runtime();
        // A tiny channel and queues, so that a reader that stops fills them.
        let ep: Endpoint = format!("mem://{}?capacity=2", unique("bp"))
            .parse()
            .unwrap();
        let server_ep = ep.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let server = rt.spawn_on(1, move || async move {
            let cfg = config().recv_queue(4, 1 << 20);
            let mut l = listen(&server_ep, &cfg).await.unwrap();
            tx.send(()).unwrap();
            let conn = l.accept().await.unwrap().unwrap();
            // Do not read until told to (Wait: read after a pause on its
            // own, so the blocked sender is released).
            if policy == BackPressure::Wait {
                ringwire_runtime::time::sleep(std::time::Duration::from_millis(50)).await;
            } else {
                while go_rx.try_recv().is_err() {
                    ringwire_runtime::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
            let mut n = 0;
            while let Ok(m) = conn.recv::<Order>().await {
                n += 1;
                if m.id.to_native() == u64::MAX {
                    break;
                }
            }
            n
        });
        rx.recv().unwrap();
        let (sent, refused, dropped) = rt
            .block_on(0, move || async move {
                let cfg = config().send_queue(8, 1 << 20).back_pressure(policy);
                let conn = connect(&ep, &cfg).await.unwrap();
                let (mut sent, mut refused, mut dropped) = (0u64, 0u64, 0u64);
                let attempts = if policy == BackPressure::Wait {
                    40
                } else {
                    200
                };
                for i in 0..attempts {
                    match conn.send(&order(i)).await {
                        Ok(r) if r.dropped() => dropped += 1,
                        Ok(_) => sent += 1,
                        Err(Error::BackPressure {
                            queued_messages, ..
                        }) => {
                            assert!(queued_messages >= 8);
                            refused += 1;
                        }
                        Err(e) => panic!("{e}"),
                    }
                    // Let the flusher and the peer move.
                    ringwire_runtime::yield_now().await;
                }
                if policy != BackPressure::Wait {
                    go_tx.send(()).unwrap();
                }
                let waits = ringwire_transports::stats::snapshot()
                    .scheme(ringwire_transports::Scheme::Mem)
                    .back_pressure_waits;
                if policy == BackPressure::Wait {
                    assert!(waits > 0, "the sender waited for room");
                }
                let mut last = order(0);
                last.id = u64::MAX;
                // Retry the last one until the reader has made room.
                let receipt = loop {
                    match conn.send(&last).await {
                        Ok(r) if !r.dropped() => break r,
                        Ok(_) => dropped += 1,
                        Err(Error::BackPressure { .. }) => refused += 1,
                        Err(e) => panic!("{e}"),
                    }
                    ringwire_runtime::time::sleep(std::time::Duration::from_millis(1)).await;
                };
                receipt.acked().await.unwrap();
                let stats = ringwire_transports::stats::snapshot();
                assert_eq!(
                    stats.scheme(ringwire_transports::Scheme::Mem).dropped,
                    dropped,
                    "every drop is counted"
                );
                (sent, refused, dropped)
            })
            .unwrap();
        let received = server.join().unwrap();
        assert_eq!(
            received,
            sent + 1,
            "{policy:?}: everything accepted arrives"
        );
        match policy {
            BackPressure::Fail => assert!(refused > 0 && dropped == 0, "{policy:?}"),
            BackPressure::DropNewest => assert!(dropped > 0 && refused == 0, "{policy:?}"),
            BackPressure::Wait => assert_eq!((refused, dropped, sent), (0, 0, 40)),
        }
        shutdown(rt);
    }
}
