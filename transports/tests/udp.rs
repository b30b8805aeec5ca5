//! `udp://` datagram sockets: typed unicast round trips between cores,
//! multicast to two receivers (inside a network namespace the test
//! creates), gap/duplicate/reorder accounting behind a relay that drops,
//! duplicates and swaps datagrams, bad datagrams, size limits and
//! back-pressure.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{config, order, shutdown, Answer, Ask, Extra, Order};
use ringwire_runtime::{Placement, Runtime};
use ringwire_transports::udp::{self, BadDatagram, Event, SendMode, UdpConfig};
use ringwire_transports::{connect, listen, stats, BackPressure, Endpoint, Error};

fn runtime(cores: usize) -> Runtime {
    Runtime::builder()
        .placement(Placement::Unpinned(cores))
        .recv_buffers(256)
        .build()
        .unwrap()
}

fn ep(s: &str) -> Endpoint {
    s.parse().unwrap()
}

/// Drains a socket's events.
fn events(d: &udp::Datagrams) -> Vec<Event> {
    std::iter::from_fn(|| d.next_event()).collect()
}

fn round_trips(mode: SendMode) {
    let rt = runtime(2);
    let (tx, rx) = std::sync::mpsc::channel();
    let n = 300u64;
    let server = rt.spawn_on(1, move || async move {
        let sock = udp::bind(&ep("udp://127.0.0.1:0"), &config()).unwrap();
        tx.send(sock.local_addr()).unwrap();
        let mut sender = 0;
        for i in 1..=n {
            let m = sock.recv::<Order>().await.unwrap();
            assert_eq!(m.id.to_native(), i);
            assert_eq!(m.symbol.as_str(), order(i).symbol);
            assert_eq!(m.blob.as_slice(), order(i).blob.as_slice());
            assert_eq!(m.seq(), i);
            sender = m.sender();
            // Answer the sender at its address.
            let ask = Ask { n: i };
            sock.send_to(&ask, m.source()).await.unwrap();
        }
        sock.flush().await.unwrap();
        let s = sock.sender_stats(sender).unwrap();
        (sender, s.delivered, s.lost(), s.duplicates, s.late)
    });
    let addr = rx.recv().unwrap();
    let target = Endpoint::socket(ringwire_transports::Scheme::Udp, addr).unwrap();
    let (my_id, got) = rt
        .block_on(0, move || async move {
            let cfg = UdpConfig::new().send_mode(mode).sender_id(0xC0FFEE);
            let sock = udp::connect_with(&target, &config(), &cfg).unwrap();
            assert_eq!(sock.peer_addr(), Some(addr));
            assert_eq!(sock.send_mode(), mode);
            // Send in bursts of 10, each leaving in one submission, and read
            // the answers.
            let mut got = Vec::new();
            for burst in 0..n / 10 {
                for k in 1..=10 {
                    let sent = sock.send(&order(burst * 10 + k)).await.unwrap();
                    assert_eq!(sent.seq(), burst * 10 + k);
                    assert!(!sent.dropped());
                }
                for _ in 0..10 {
                    let a = sock.recv::<Ask>().await.unwrap();
                    assert_eq!(a.source(), addr);
                    got.push(a.n.to_native());
                }
            }
            (sock.sender_id(), got)
        })
        .unwrap();
    assert_eq!(got, (1..=n).collect::<Vec<_>>());
    let (sender, delivered, lost, dups, late) = server.join().unwrap();
    assert_eq!(sender, my_id);
    assert_eq!(my_id, 0xC0FFEE);
    assert_eq!((delivered, lost, dups, late), (n, 0, 0, 0));
    let sent = rt.block_on(0, || async { stats::snapshot() }).unwrap();
    let udp = sent.scheme(ringwire_transports::Scheme::Udp);
    assert_eq!(udp.messages_out, n);
    assert_eq!(udp.messages_in, n);
    match mode {
        // Ten orders of different sizes are not one GSO run, but the
        // sendmsg count shows the batching either way.
        SendMode::Gso => assert!(sent.udp.sendmsgs <= n, "{:?}", sent.udp),
        SendMode::PerDatagram => {
            assert_eq!(sent.udp.sendmsgs, n);
            assert_eq!(sent.udp.gso_sends, 0);
        }
    }
    shutdown(rt);
}

#[test]
fn typed_unicast_round_trips_between_two_cores_with_gso() {
    round_trips(SendMode::Gso);
}

#[test]
fn typed_unicast_round_trips_between_two_cores_one_sendmsg_each() {
    round_trips(SendMode::PerDatagram);
}

#[test]
fn equal_size_messages_leave_as_gso_runs() {
    let rt = runtime(1);
    let (udp_stats, lens) = rt
        .block_on(0, || async {
            let rx = udp::bind(&ep("udp://127.0.0.1:0?rcvbuf=1M"), &config()).unwrap();
            let to = rx.local_addr();
            let tx = udp::bind(&ep("udp://127.0.0.1:0"), &config()).unwrap();
            for i in 0..100 {
                tx.send_to(&Ask { n: i }, to).await.unwrap();
            }
            tx.flush().await.unwrap();
            let mut lens = BTreeSet::new();
            for i in 0..100 {
                let m = rx.recv::<Ask>().await.unwrap();
                assert_eq!(m.n.to_native(), i);
                lens.insert(m.incoming().archive_bytes().len());
            }
            (stats::snapshot().udp, lens)
        })
        .unwrap();
    assert_eq!(lens.len(), 1);
    // 100 equal datagrams: runs of 64 and 36.
    assert_eq!(
        (udp_stats.sendmsgs, udp_stats.gso_sends),
        (2, 2),
        "{udp_stats:?}"
    );
    shutdown(rt);
}

#[test]
fn receivers_tell_message_types_apart() {
    let rt = runtime(1);
    rt.block_on(0, || async {
        let rx = udp::bind(&ep("udp://127.0.0.1:0"), &config()).unwrap();
        let to = rx.local_addr();
        let tx = udp::bind(&ep("udp://127.0.0.1:0"), &config()).unwrap();
        tx.send_to(&Ask { n: 1 }, to).await.unwrap();
        tx.send_to(&Answer { n: 2, square: 4 }, to).await.unwrap();
        tx.send_to(&order(3), to).await.unwrap();
        let m = rx.recv_any().await.unwrap();
        assert_eq!(m.get::<Ask>().unwrap().n.to_native(), 1);
        assert!(matches!(m.get::<Answer>(), Err(Error::WrongType { .. })));
        let m = rx.recv_any().await.unwrap();
        let a = m.downcast::<Answer>().unwrap();
        assert_eq!(a.square.to_native(), 4);
        // The wrong type asked for: consumed, reported.
        let err = rx.recv::<Ask>().await.unwrap_err();
        assert!(matches!(err, Error::WrongType { found, .. } if found == <Order as ringwire_transports::Message>::TYPE_ID));
        assert!(rx.try_recv_any().is_none());
    })
    .unwrap();
    shutdown(rt);
}

#[test]
fn a_message_larger_than_a_datagram_is_refused_and_costs_no_sequence_number() {
    let rt = runtime(1);
    rt.block_on(0, || async {
        let rx = udp::bind(&ep("udp://127.0.0.1:0"), &config()).unwrap();
        let to = rx.local_addr();
        let tx = udp::bind_with(
            &ep("udp://127.0.0.1:0"),
            &config(),
            &UdpConfig::new().max_datagram(512),
        )
        .unwrap();
        let mut big = order(1);
        big.blob = vec![7; 600];
        let err = tx.send_to(&big, to).await.unwrap_err();
        match &err {
            Error::DatagramTooLarge { needed, limit } => {
                assert_eq!(*limit, 512);
                assert!(*needed > 512);
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("512"), "{err}");
        let sent = tx.send_to(&order(2), to).await.unwrap();
        assert_eq!(sent.seq(), 1);
        let m = rx.recv::<Order>().await.unwrap();
        assert_eq!((m.id.to_native(), m.seq()), (2, 1));
        // A socket made by bind has no peer for `send`.
        assert!(matches!(tx.send(&order(3)).await, Err(Error::Usage(_))));
    })
    .unwrap();
    shutdown(rt);
}

#[test]
fn a_sender_bounds_the_destinations_it_numbers() {
    let rt = runtime(1);
    rt.block_on(0, || async {
        let rx: Vec<_> = (0..5)
            .map(|_| udp::bind(&ep("udp://127.0.0.1:0"), &config()).unwrap())
            .collect();
        let tx = udp::bind_with(
            &ep("udp://127.0.0.1:0"),
            &config(),
            &UdpConfig::new().max_destinations(4),
        )
        .unwrap();
        // Destinations 0 to 3, then 0 and 1 again, then a fifth: the two
        // least recently used (2 and 3) are forgotten.
        for r in &rx[..4] {
            assert_eq!(
                tx.send_to(&Ask { n: 1 }, r.local_addr())
                    .await
                    .unwrap()
                    .seq(),
                1
            );
        }
        for r in &rx[..2] {
            assert_eq!(
                tx.send_to(&Ask { n: 2 }, r.local_addr())
                    .await
                    .unwrap()
                    .seq(),
                2
            );
        }
        assert_eq!(
            tx.send_to(&Ask { n: 1 }, rx[4].local_addr())
                .await
                .unwrap()
                .seq(),
            1
        );
        // 0 and 1 go on; 2 and 3 start over.
        assert_eq!(
            tx.send_to(&Ask { n: 3 }, rx[0].local_addr())
                .await
                .unwrap()
                .seq(),
            3
        );
        assert_eq!(
            tx.send_to(&Ask { n: 3 }, rx[1].local_addr())
                .await
                .unwrap()
                .seq(),
            3
        );
        assert_eq!(
            tx.send_to(&Ask { n: 3 }, rx[2].local_addr())
                .await
                .unwrap()
                .seq(),
            1
        );
        tx.flush().await.unwrap();
        assert_eq!(stats::snapshot().udp.destinations_forgotten, 2);
    })
    .unwrap();
    shutdown(rt);
}

#[test]
fn udp_is_not_a_connection_scheme() {
    let rt = runtime(1);
    rt.block_on(0, || async {
        let e = ep("udp://127.0.0.1:9");
        let err = listen(&e, &config()).await.err().unwrap();
        assert!(err.to_string().contains("udp::bind"), "{err}");
        let err = connect(&e, &config()).await.err().unwrap();
        assert!(err.to_string().contains("udp::connect"), "{err}");
    })
    .unwrap();
    shutdown(rt);
}

/// A valid datagram header for `type_id` with `archive` behind it.
fn raw_datagram(sender: u64, seq: u64, type_id: u32, archive: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; udp::wire::datagram_len(archive.len())];
    udp::wire::write_header(
        &mut d,
        &udp::wire::DatagramHeader {
            sender,
            seq,
            type_id,
            payload_len: archive.len() as u32,
        },
    );
    d[32..32 + archive.len()].copy_from_slice(archive);
    d
}

#[test]
fn bad_datagrams_are_counted_by_reason_and_dropped() {
    let rt = Runtime::builder()
        .placement(Placement::Unpinned(1))
        .recv_buffer_size(4096)
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let h = rt.spawn_on(0, move || async move {
        let sock = udp::bind(&ep("udp://127.0.0.1:0"), &config()).unwrap();
        tx.send(sock.local_addr()).unwrap();
        // Start receiving, then let the bad datagrams come.
        assert!(sock.try_recv_any().is_none());
        go_rx.recv().unwrap();
        let m = sock.recv::<Ask>().await.unwrap();
        assert_eq!(m.n.to_native(), 42);
        let evs = events(&sock);
        (stats::snapshot(), evs)
    });
    let to: SocketAddr = rx.recv().unwrap();
    let raw = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let ask_id = <Ask as ringwire_transports::Message>::TYPE_ID;
    let extra_id = <Extra as ringwire_transports::Message>::TYPE_ID;
    let order_id = <Order as ringwire_transports::Message>::TYPE_ID;
    let good_ask = {
        let mut buf = vec![0u8; 128];
        let n = udp::wire::encode(&mut buf, 5, 1, &Ask { n: 42 }).unwrap();
        buf.truncate(n);
        buf
    };
    let mut bad: Vec<(Vec<u8>, &str)> = vec![
        (b"garbage".to_vec(), "too_short"),
        (vec![0xFF; 64], "magic"),
    ];
    let mut v = good_ask.clone();
    v[4] = 9;
    bad.push((v, "version"));
    let mut v = good_ask.clone();
    v[5] = 1;
    bad.push((v, "reserved"));
    bad.push((raw_datagram(0, 1, ask_id, &[0; 16]), "zero"));
    let mut v = good_ask.clone();
    v.extend_from_slice(&[0; 16]);
    bad.push((v, "length"));
    bad.push((raw_datagram(5, 1, extra_id, &[0; 16]), "unknown_type"));
    // An Order whose string points far outside the archive.
    bad.push((raw_datagram(5, 1, order_id, &[0xFF; 48]), "invalid"));
    bad.push((vec![0u8; 6000], "truncated"));
    for (d, _) in &bad {
        raw.send_to(d, to).unwrap();
    }
    raw.send_to(&good_ask, to).unwrap();
    go_tx.send(()).unwrap();
    let (snap, evs) = h.join().unwrap();
    for (_, kind) in &bad {
        assert_eq!(snap.udp.bad(kind), 1, "{kind}: {:?}", snap.udp);
    }
    assert_eq!(snap.udp.bad_total(), bad.len() as u64);
    // Unknown type and failed validation also count as rejected messages.
    assert_eq!(snap.scheme(ringwire_transports::Scheme::Udp).rejected, 2);
    let rejected: Vec<&'static str> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Rejected { reason, source } => {
                assert_eq!(*source, Some(raw.local_addr().unwrap()));
                Some(reason.kind())
            }
            _ => None,
        })
        .collect();
    let kinds: Vec<&str> = bad.iter().map(|(_, k)| *k).collect();
    assert_eq!(rejected, kinds);
    assert!(evs.iter().any(|e| matches!(
        e,
        Event::NewSender {
            sender: 5,
            first_seq: 1,
            ..
        }
    )));
    assert!(matches!(
        evs.iter().find(|e| matches!(e, Event::Rejected { .. })),
        Some(Event::Rejected {
            reason: BadDatagram::TooShort { len: 7 },
            ..
        })
    ));
    shutdown(rt);
}

#[test]
fn back_pressure_fails_or_drops_at_the_send_queue_mark() {
    let rt = runtime(1);
    rt.block_on(0, || async {
        let rx = udp::bind(&ep("udp://127.0.0.1:0"), &config()).unwrap();
        let to = rx.local_addr();
        let cfg = config()
            .send_queue(2, 1 << 20)
            .back_pressure(BackPressure::Fail);
        let tx = udp::bind(&ep("udp://127.0.0.1:0"), &cfg).unwrap();
        tx.send_to(&Ask { n: 1 }, to).await.unwrap();
        tx.send_to(&Ask { n: 2 }, to).await.unwrap();
        // Nothing yielded: the flusher has not run, the queue is at its mark.
        let err = tx.send_to(&Ask { n: 3 }, to).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::BackPressure {
                    queued_messages: 2,
                    ..
                }
            ),
            "{err}"
        );
        tx.flush().await.unwrap();
        tx.send_to(&Ask { n: 3 }, to).await.unwrap();

        let cfg = config()
            .send_queue(1, 1 << 20)
            .back_pressure(BackPressure::DropNewest);
        let dropper = udp::bind(&ep("udp://127.0.0.1:0"), &cfg).unwrap();
        assert!(!dropper.send_to(&Ask { n: 10 }, to).await.unwrap().dropped());
        let s = dropper.send_to(&Ask { n: 11 }, to).await.unwrap();
        assert!(s.dropped() && s.seq() == 0);
        dropper.flush().await.unwrap();

        let cfg = config().send_queue(1, 1 << 20);
        let waiter = udp::bind(&ep("udp://127.0.0.1:0"), &cfg).unwrap();
        for n in 20..30 {
            // Waits for the flusher each time the queue is full.
            waiter.send_to(&Ask { n }, to).await.unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..14 {
            let m = rx.recv::<Ask>().await.unwrap();
            got.push(m.n.to_native());
        }
        got.sort();
        let mut want: Vec<u64> = vec![1, 2, 3, 10];
        want.extend(20..30);
        assert_eq!(got, want);
        let s = stats::snapshot().scheme(ringwire_transports::Scheme::Udp);
        assert_eq!(s.dropped, 1);
        assert!(s.back_pressure_waits >= 1);
    })
    .unwrap();
    shutdown(rt);
}

#[test]
fn one_task_receives_at_a_time() {
    let rt = runtime(1);
    rt.block_on(0, || async {
        let rx = udp::bind(&ep("udp://127.0.0.1:0"), &config()).unwrap();
        let rx2 = rx.clone();
        let first = ringwire_runtime::spawn_local(async move {
            rx2.recv::<Ask>().await.map(|m| m.n.to_native())
        });
        ringwire_runtime::yield_now().await;
        assert!(matches!(rx.recv_any().await, Err(Error::Usage(_))));
        assert!(matches!(rx.try_recv_any(), Some(Err(Error::Usage(_)))));
        let tx = udp::bind(&ep("udp://127.0.0.1:0"), &config()).unwrap();
        tx.send_to(&Ask { n: 5 }, rx.local_addr()).await.unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 5);
    })
    .unwrap();
    shutdown(rt);
}

#[test]
fn a_full_event_queue_counts_what_it_drops() {
    let rt = runtime(1);
    rt.block_on(0, || async {
        let rx = udp::bind_with(
            &ep("udp://127.0.0.1:0"),
            &config(),
            &UdpConfig::new().event_capacity(2),
        )
        .unwrap();
        let raw = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..5 {
            raw.send_to(b"junk", rx.local_addr()).unwrap();
        }
        let tx = udp::bind(&ep("udp://127.0.0.1:0"), &config()).unwrap();
        tx.send_to(&Ask { n: 1 }, rx.local_addr()).await.unwrap();
        rx.recv::<Ask>().await.unwrap();
        assert_eq!(events(&rx).len(), 2);
        let s = stats::snapshot().udp;
        assert_eq!(s.events_dropped, 4, "{s:?}");
        assert_eq!(s.bad("too_short"), 5);
    })
    .unwrap();
    shutdown(rt);
}

// ---------------------------------------------------------------------------
// Loss, duplication and reordering behind a relay

/// What the relay forwarded, by sequence number, in order.
struct RelayLog {
    forwarded: Vec<u64>,
}

/// A relay between `upstream` (sender side) and `to`: drops, duplicates and
/// swaps datagrams by their arrival index, and counts what it received and
/// forwarded (for the test's pacing).
fn relay(
    sock: std::net::UdpSocket,
    to: SocketAddr,
    received: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<RelayLog> {
    std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let mut held: Option<Vec<u8>> = None;
        let mut log = RelayLog {
            forwarded: Vec::new(),
        };
        let mut i = 0u64;
        let fwd = |d: &[u8], log: &mut RelayLog| {
            sock.send_to(d, to).unwrap();
            let seq = u64::from_le_bytes(d[16..24].try_into().unwrap());
            log.forwarded.push(seq);
            forwarded.fetch_add(1, Ordering::SeqCst);
        };
        loop {
            let n = match sock.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(_) if stop.load(Ordering::SeqCst) => break,
                Err(_) => continue,
            };
            let d = buf[..n].to_vec();
            received.fetch_add(1, Ordering::SeqCst);
            let k = i;
            i += 1;
            if k % 19 == 4 {
                continue; // dropped
            }
            if k % 29 == 13 && held.is_none() {
                held = Some(d); // goes out after the next forwarded one
                continue;
            }
            fwd(&d, &mut log);
            if k % 23 == 9 {
                fwd(&d, &mut log); // duplicated
            }
            if let Some(h) = held.take() {
                fwd(&h, &mut log);
            }
        }
        if let Some(h) = held.take() {
            fwd(&h, &mut log);
        }
        log
    })
}

/// Expected counts for a forwarded sequence, computed independently of the
/// receiver: (lost, duplicates, late, gaps, late seqs, duplicate seqs).
/// Lost are the numbers below the highest forwarded that never came: a
/// receiver cannot know of a loss at the very end until a later datagram
/// arrives.
fn expected(out: &[u64]) -> (u64, u64, u64, u64, BTreeSet<u64>, BTreeSet<u64>) {
    let mut seen = HashSet::new();
    let mut max = 0;
    let (mut dups, mut gaps) = (0, 0);
    let mut late = BTreeSet::new();
    let mut dup_seqs = BTreeSet::new();
    for &q in out {
        if !seen.insert(q) {
            dups += 1;
            dup_seqs.insert(q);
            continue;
        }
        if q < max {
            late.insert(q);
        } else {
            gaps += q - max - 1;
            max = q;
        }
    }
    let lost = (1..=max).filter(|q| !seen.contains(q)).count() as u64;
    (lost, dups, late.len() as u64, gaps, late, dup_seqs)
}

#[test]
fn gaps_duplicates_and_reordering_behind_a_lossy_relay_are_counted_exactly() {
    let rt = runtime(2);
    let n: u64 = 2000;
    let relay_sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay_sock.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let forwarded = Arc::new(AtomicU64::new(0));
    let observed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let obs = observed.clone();
    let receiver = rt.spawn_on(1, move || async move {
        let sock = udp::bind(&ep("udp://127.0.0.1:0?rcvbuf=1M"), &config()).unwrap();
        tx.send(sock.local_addr()).unwrap();
        // Publishes how many datagrams the socket has taken in (delivered,
        // duplicates, stale), for the sender's pacing.
        let watch = sock.clone();
        let publisher = ringwire_runtime::spawn_local(async move {
            while !ringwire_runtime::is_shutting_down() {
                let total: u64 = watch
                    .senders()
                    .iter()
                    .map(|s| s.delivered + s.duplicates + s.stale)
                    .sum();
                obs.store(total, Ordering::SeqCst);
                ringwire_runtime::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let mut order_seen = Vec::new();
        let mut evs = Vec::new();
        loop {
            let m = match sock.recv::<Ask>().await {
                Ok(m) => m,
                Err(Error::Closed { .. }) => break,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(m.n.to_native(), m.seq());
            order_seen.push(m.seq());
            evs.extend(events(&sock));
        }
        drop(publisher);
        evs.extend(events(&sock));
        let s = sock.senders();
        (order_seen, evs, s, stats::snapshot().udp)
    });
    let rx_addr: SocketAddr = rx.recv().unwrap();
    let log = relay(
        relay_sock,
        rx_addr,
        received.clone(),
        forwarded.clone(),
        stop.clone(),
    );
    let (fw, ob, rc) = (forwarded.clone(), observed.clone(), received.clone());
    rt.block_on(0, move || async move {
        let target = Endpoint::socket(ringwire_transports::Scheme::Udp, relay_addr).unwrap();
        let sock = udp::connect(&target, &config()).unwrap();
        let mut sent = 0;
        while sent < n {
            for _ in 0..50 {
                sent += 1;
                sock.send(&Ask { n: sent }).await.unwrap();
            }
            sock.flush().await.unwrap();
            // Pace: the relay has everything sent, and the receiver took in
            // everything the relay forwarded (no loss but the relay's).
            loop {
                let f = fw.load(Ordering::SeqCst);
                if rc.load(Ordering::SeqCst) == sent && ob.load(Ordering::SeqCst) == f {
                    break;
                }
                ringwire_runtime::time::sleep(Duration::from_millis(1)).await;
            }
        }
    })
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    let log = log.join().unwrap();
    // Wait until the receiver took in the relay's last (held) datagram.
    while observed.load(Ordering::SeqCst) < forwarded.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let report = rt.shutdown(Duration::from_secs(5));
    assert_eq!(report.cores_panicked, 0);
    let (order_seen, evs, senders, snap) = receiver.join().unwrap();

    let (lost, dups, late, gaps, late_seqs, dup_seqs) = expected(&log.forwarded);
    let highest = log.forwarded.iter().copied().max().unwrap();
    // The schedule did all three, many times.
    assert!(lost > 50 && dups > 50 && late > 30, "{lost} {dups} {late}");
    assert_eq!(senders.len(), 1);
    let s = senders[0];
    assert_eq!(s.lost(), lost, "{s:?}");
    assert_eq!(s.duplicates, dups, "{s:?}");
    assert_eq!(s.late, late, "{s:?}");
    assert_eq!(s.gaps, gaps, "{s:?}");
    assert_eq!(s.stale, 0);
    assert_eq!(s.highest_seq, highest);
    assert_eq!(s.delivered, highest - lost);
    // The core's counters say the same.
    assert_eq!(
        (snap.gaps, snap.reordered, snap.duplicates),
        (gaps, late, dups),
        "{snap:?}"
    );
    // Delivered in the relay's order, each once.
    let mut firsts = Vec::new();
    let mut seen = HashSet::new();
    for &q in &log.forwarded {
        if seen.insert(q) {
            firsts.push(q);
        }
    }
    assert_eq!(order_seen, firsts);
    // The events name exactly the late and duplicated numbers, and the gap
    // ranges minus the late arrivals are exactly the lost ones.
    let mut ev_late = BTreeSet::new();
    let mut ev_dup = BTreeSet::new();
    let mut skipped = BTreeSet::new();
    for e in &evs {
        match e {
            Event::Late { seq, .. } => {
                ev_late.insert(*seq);
            }
            Event::Duplicate { seq, .. } => {
                ev_dup.insert(*seq);
            }
            Event::Gap { first, last, .. } => skipped.extend(*first..=*last),
            Event::NewSender { .. } => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(ev_late, late_seqs);
    assert_eq!(ev_dup, dup_seqs);
    let lost_seqs: BTreeSet<u64> = skipped.difference(&late_seqs).copied().collect();
    let want_lost: BTreeSet<u64> = (1..=highest).filter(|q| !seen.contains(q)).collect();
    assert_eq!(lost_seqs, want_lost);
}

// ---------------------------------------------------------------------------
// Multicast, inside a network namespace of the test's own

/// A network namespace with `lo` up, multicast on, and a route for
/// 224.0.0.0/4 on `lo`, and a veth pair `rwv0`/`rwv1` (`fd00::1/64` on
/// `rwv0`) for IPv6 groups; deleted when dropped. Nothing in it reaches the
/// host's interfaces.
struct NetNs {
    name: String,
}

impl NetNs {
    fn create(tag: &str) -> Result<NetNs, String> {
        let ns = NetNs {
            name: format!("rwt-{tag}-{}", std::process::id()),
        };
        let n = ns.name.as_str();
        ip(&["netns", "add", n])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "link", "set", "lo", "multicast", "on"])?;
        ip(&["-n", n, "route", "add", "224.0.0.0/4", "dev", "lo"])?;
        // IPv6 multicast does not loop back over `lo`: a veth pair.
        ip(&[
            "-n", n, "link", "add", "rwv0", "type", "veth", "peer", "name", "rwv1",
        ])?;
        ip(&["-n", n, "addr", "add", "fd00::1/64", "dev", "rwv0", "nodad"])?;
        ip(&["-n", n, "link", "set", "rwv0", "up"])?;
        ip(&["-n", n, "link", "set", "rwv1", "up"])?;
        Ok(ns)
    }

    /// Runs `f` on a thread inside the namespace (a runtime it builds has
    /// its cores inside too).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: `file` is an open namespace descriptor; setns changes
            // only the calling thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn multicast_to_two_receivers(endpoint: &'static str) {
    let rt = runtime(3);
    let n = 500u64;
    let (tx, rx) = std::sync::mpsc::channel();
    let counts = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let receivers: Vec<_> = (1..=2)
        .map(|core| {
            let tx = tx.clone();
            let count = counts[core - 1].clone();
            rt.spawn_on(core, move || async move {
                let sock = udp::bind(&ep(endpoint), &config()).unwrap();
                assert!(sock.group().is_some());
                tx.send(()).unwrap();
                let mut got = Vec::new();
                for _ in 0..n {
                    let m = sock.recv::<Order>().await.unwrap();
                    got.push((m.id.to_native(), m.seq(), m.sender()));
                    count.fetch_add(1, Ordering::SeqCst);
                }
                let evs = events(&sock);
                (got, sock.senders(), evs)
            })
        })
        .collect();
    rx.recv().unwrap();
    rx.recv().unwrap();
    let sender = rt
        .block_on(0, move || async move {
            let sock = udp::connect(&ep(endpoint), &config()).unwrap();
            for i in 1..=n {
                sock.send(&order(i)).await.unwrap();
                if i % 50 == 0 {
                    // Let the receivers keep up: their socket buffers are
                    // the only place loopback could drop datagrams.
                    sock.flush().await.unwrap();
                    while counts.iter().any(|c| c.load(Ordering::SeqCst) < i) {
                        ringwire_runtime::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            sock.flush().await.unwrap();
            sock.sender_id()
        })
        .unwrap();
    for r in receivers {
        let (got, senders, evs) = r.join().unwrap();
        let want: Vec<(u64, u64, u64)> = (1..=n).map(|i| (i, i, sender)).collect();
        assert_eq!(got, want);
        assert_eq!(senders.len(), 1);
        assert_eq!(
            (senders[0].gaps, senders[0].duplicates, senders[0].late),
            (0, 0, 0)
        );
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert!(matches!(evs[0], Event::NewSender { first_seq: 1, .. }));
    }
    shutdown(rt);
}

#[test]
fn multicast_reaches_two_receivers_on_two_cores() {
    let ns = match NetNs::create("mc") {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIPPED: no network namespace for the multicast test: {why}");
            return;
        }
    };
    ns.run(|| {
        // The interface by address, then by name.
        multicast_to_two_receivers("udp://239.1.2.3:9500?iface=127.0.0.1&ttl=1&loop=1");
        multicast_to_two_receivers("udp://239.1.2.4:9501?iface=lo");
    });
}

#[test]
fn ipv6_multicast_by_interface_name_including_a_link_local_group() {
    let ns = match NetNs::create("mc6") {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIPPED: no network namespace for the multicast test: {why}");
            return;
        }
    };
    ns.run(|| {
        let rt = runtime(1);
        rt.block_on(0, || async {
            for e in [
                "udp://[ff02::1:5]:9503?iface=rwv0&loop=1",
                "udp://[ff05::1:5]:9504?iface=rwv0&ttl=2",
            ] {
                let e = ep(e);
                let rx = udp::bind(&e, &config()).unwrap();
                let tx = udp::connect(&e, &config()).unwrap();
                for n in 1..=3 {
                    tx.send(&Ask { n }).await.unwrap();
                }
                for n in 1..=3 {
                    let m = rx.recv::<Ask>().await.unwrap();
                    assert_eq!(
                        (m.n.to_native(), m.seq(), m.sender()),
                        (n, n, tx.sender_id())
                    );
                    assert!(m.source().is_ipv6());
                }
            }
        })
        .unwrap();
        shutdown(rt);
    });
}

#[test]
fn a_receiver_that_leaves_the_group_hears_nothing_more() {
    let ns = match NetNs::create("leave") {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIPPED: no network namespace for the multicast test: {why}");
            return;
        }
    };
    ns.run(|| {
        let rt = runtime(1);
        rt.block_on(0, || async {
            let e = ep("udp://239.1.2.5:9502?iface=127.0.0.1");
            let a = udp::bind(&e, &config()).unwrap();
            let b = udp::bind(&e, &config()).unwrap();
            let tx = udp::connect(&e, &config()).unwrap();
            tx.send(&Ask { n: 1 }).await.unwrap();
            assert_eq!(a.recv::<Ask>().await.unwrap().n.to_native(), 1);
            assert_eq!(b.recv::<Ask>().await.unwrap().n.to_native(), 1);
            b.leave(b.group().unwrap()).unwrap();
            tx.send(&Ask { n: 2 }).await.unwrap();
            assert_eq!(a.recv::<Ask>().await.unwrap().n.to_native(), 2);
            assert!(b.try_recv_any().is_none());
            // And joins again.
            b.join(b.group().unwrap()).unwrap();
            tx.send(&Ask { n: 3 }).await.unwrap();
            assert_eq!(a.recv::<Ask>().await.unwrap().n.to_native(), 3);
            let m = b.recv::<Ask>().await.unwrap();
            // b missed seq 2: a gap.
            assert_eq!((m.n.to_native(), m.seq()), (3, 3));
            assert_eq!(b.sender_stats(m.sender()).unwrap().lost(), 1);
        })
        .unwrap();
        shutdown(rt);
    });
}
