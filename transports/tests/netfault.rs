//! Faults on a real kernel network path: a server and a client, each with
//! a runtime of its own inside a network namespace the test creates,
//! joined by a veth pair, with nftables rules dropping packets on each
//! side's ingress (`common::netns`). A typed `tcp://` stream through 10%
//! loss both ways, and through a cut longer than the idle timeout, arrives
//! exactly once and in order (reconnect and resume); `udp://` datagrams
//! through 10% loss are counted as gaps exactly as the kernel dropped them.
//! Each test is skipped, saying why, where namespaces or nftables cannot be
//! had (not root, no `ip` or `nft`).

mod common;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::netns::{veth_pair, Side, VethPair, ADDR_A};
use common::{config, order, Order};
use ringwire_runtime::{Placement, Runtime};
use ringwire_transports::udp::{self, Event};
use ringwire_transports::{
    connect, listen, Config, ConnEvent, Connection, Endpoint, Error, Reconnect, Scheme,
};

/// Longest any single wait of these tests may take.
const WAIT: Duration = Duration::from_secs(60);

/// Bytes of blob in each streamed message.
const BLOB: usize = 64;

/// A one-core runtime, built on (and so inside the namespace of) the
/// calling thread.
fn runtime() -> Runtime {
    Runtime::builder()
        .placement(Placement::Unpinned(1))
        .recv_buffers(256)
        .send_buffers(64)
        .build()
        .unwrap()
}

fn shutdown(rt: Runtime) {
    let report = rt.shutdown(Duration::from_secs(5));
    assert_eq!(report.cores_panicked, 0, "{report:?}");
}

/// Waits (bounded) until `flag` is set.
fn wait_for(what: &str, flag: &AtomicBool) {
    let deadline = Instant::now() + WAIT;
    while !flag.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "no {what} within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The same, from a core.
async fn wait_for_async(what: &str, flag: &AtomicBool) {
    let deadline = Instant::now() + WAIT;
    while !flag.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "no {what} within {WAIT:?}");
        ringwire_runtime::time::sleep(Duration::from_millis(1)).await;
    }
}

fn streamed(i: u64) -> Order {
    let mut o = order(i);
    o.blob.resize(BLOB, (i % 251) as u8);
    o
}

/// What one side of a stream saw.
#[derive(Debug)]
struct Seen {
    /// Messages received in order (server) or sent (client).
    messages: u64,
    /// Transport events, in order.
    events: Vec<String>,
    /// From the first message to the last acknowledgement (client).
    took: Duration,
}

/// Records a connection's transport events; sets `down` on a disconnect.
fn watch_events(conn: &Connection, down: Arc<AtomicBool>) -> Rc<RefCell<Vec<String>>> {
    let log = Rc::new(RefCell::new(Vec::new()));
    let conn = conn.clone();
    let out = log.clone();
    ringwire_runtime::spawn_local(async move {
        while let Some(ev) = conn.next_event().await {
            if matches!(ev, ConnEvent::Disconnected { .. }) {
                down.store(true, Ordering::SeqCst);
            }
            out.borrow_mut().push(format!("{ev:?}"));
        }
    });
    log
}

/// A server inside side A: takes one connection and `n` orders on it,
/// checking that each comes exactly once and in order, then stays until the
/// client closes (it may still be resuming to get its last
/// acknowledgements). Returns the endpoint to dial and the server's thread.
fn ordered_sink(
    net: &VethPair,
    n: u64,
    cfg: Config,
    down: Arc<AtomicBool>,
) -> (Endpoint, std::thread::JoinHandle<Seen>) {
    let (tx, rx) = mpsc::channel();
    let server = net.spawn(Side::A, move || {
        let rt = runtime();
        let got = rt
            .block_on(0, move || async move {
                let ep: Endpoint = format!("tcp://{ADDR_A}:0").parse().unwrap();
                let mut l = listen(&ep, &cfg).await.unwrap();
                tx.send(l.endpoint().clone()).unwrap();
                let conn = l.accept().await.unwrap().unwrap();
                let events = watch_events(&conn, down);
                let mut next = 0u64;
                while next < n {
                    let m = conn.recv::<Order>().await.unwrap();
                    assert_eq!(m.id.to_native(), next, "exactly once, in order");
                    assert_eq!(m.blob.len(), BLOB);
                    next += 1;
                }
                loop {
                    match conn.recv::<Order>().await {
                        Ok(m) => assert_eq!(m.id.to_native(), n, "only the final marker follows"),
                        Err(Error::Closed { .. }) => break,
                        Err(e) => panic!("server: {e}"),
                    }
                }
                drop(l);
                let events = events.borrow().clone();
                Seen {
                    messages: next,
                    events,
                    took: Duration::ZERO,
                }
            })
            .unwrap();
        shutdown(rt);
        got
    });
    let ep = rx.recv_timeout(WAIT).expect("the server listens");
    (ep, server)
}

/// A client inside side B: streams orders `0..n` to `ep`, then one more
/// (`n`) acknowledged, which implies all before it; calls `pause` after
/// `pause_at` messages (once) and waits for `resume` before going on.
fn streamer(
    net: &VethPair,
    ep: Endpoint,
    n: u64,
    cfg: Config,
    pause_at: Option<(u64, Arc<AtomicBool>, Arc<AtomicBool>)>,
    down: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Seen> {
    net.spawn(Side::B, move || {
        let rt = runtime();
        let got = rt
            .block_on(0, move || async move {
                let conn = connect(&ep, &cfg).await.unwrap();
                let events = watch_events(&conn, down);
                let started = Instant::now();
                for i in 0..n {
                    if let Some((at, paused, go_on)) = &pause_at {
                        if i == *at {
                            paused.store(true, Ordering::SeqCst);
                            wait_for_async("go-ahead", go_on).await;
                        }
                    }
                    conn.send(&streamed(i)).await.unwrap();
                }
                let mut last = streamed(n);
                last.blob.clear();
                conn.send_acked(&last).await.unwrap();
                let took = started.elapsed();
                conn.close().await.unwrap();
                let events = events.borrow().clone();
                Seen {
                    messages: n,
                    events,
                    took,
                }
            })
            .unwrap();
        shutdown(rt);
        got
    })
}

fn reconnecting() -> Config {
    config().reconnect(
        Reconnect::default()
            .backoff(Duration::from_millis(10), Duration::from_millis(200))
            // Attempts made into the cut give up instead of waiting for
            // the kernel's SYN retries.
            .attempt_timeout(Duration::from_millis(300))
            .give_up_after(Some(WAIT)),
    )
}

fn resuming() -> Config {
    config().resume(WAIT)
}

fn counted(what: &str, r: Result<u64, String>) -> u64 {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[test]
fn a_tcp_stream_through_10_percent_loss_both_ways_arrives_exactly_once_in_order() {
    let Some(net) = veth_pair("loss") else { return };
    const N: u64 = 20_000;
    net.set_loss(Side::A, 10).unwrap();
    net.set_loss(Side::B, 10).unwrap();
    let server_down = Arc::new(AtomicBool::new(false));
    let client_down = Arc::new(AtomicBool::new(false));
    let (ep, server) = ordered_sink(&net, N, resuming(), server_down);
    let client = streamer(&net, ep, N, reconnecting(), None, client_down);
    let client = client.join().expect("the client");
    let server = server.join().expect("the server");
    let lost_a = counted("side A's drops", net.dropped(Side::A, "lost"));
    let lost_b = counted("side B's drops", net.dropped(Side::B, "lost"));
    let retrans_client = counted("retransmits", net.snmp(Side::B, "Tcp", "RetransSegs"));
    let retrans_server = counted("retransmits", net.snmp(Side::A, "Tcp", "RetransSegs"));
    let out_client = counted("segments", net.snmp(Side::B, "Tcp", "OutSegs"));
    let bytes = N * (streamed(0).blob.len() as u64 + 40);
    println!(
        "tcp, 10% loss both ways: {} messages sent, {} received in order, 0 lost, \
         0 duplicated, in {:?} ({:.0} msg/s, about {:.2} MB/s of payload); packets dropped: \
         {lost_b} towards the client, {lost_a} towards the server; TCP retransmits: \
         {retrans_client} by the client (of {out_client} segments), {retrans_server} by the \
         server; client events {:?}, server events {:?}",
        client.messages,
        server.messages,
        client.took,
        N as f64 / client.took.as_secs_f64(),
        bytes as f64 / client.took.as_secs_f64() / 1e6,
        client.events,
        server.events,
    );
    assert_eq!(server.messages, N);
    assert!(
        lost_a > 0 && lost_b > 0,
        "the loss rules dropped packets both ways ({lost_a}, {lost_b})"
    );
    assert!(
        retrans_client > 0,
        "the client's TCP retransmitted what was lost"
    );
    assert!(
        !client.events.iter().any(|e| e.starts_with("SessionReset")),
        "no session was lost: {:?}",
        client.events
    );
}

#[test]
fn a_tcp_stream_cut_longer_than_the_idle_timeout_resumes_exactly_once_in_order() {
    let Some(net) = veth_pair("cut") else { return };
    const N: u64 = 20_000;
    let idle = Duration::from_millis(500);
    let keepalive = |c: Config| c.keepalive(Duration::from_millis(100), idle);
    let server_down = Arc::new(AtomicBool::new(false));
    let client_down = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let go_on = Arc::new(AtomicBool::new(false));
    let (ep, server) = ordered_sink(&net, N, keepalive(resuming()), server_down.clone());
    let client = streamer(
        &net,
        ep,
        N,
        keepalive(reconnecting()),
        Some((N / 2, paused.clone(), go_on.clone())),
        client_down.clone(),
    );
    // Half the stream is out: cut the path, let the client queue the other
    // half into it, and keep it cut until both sides have declared the link
    // lost (no packet for longer than the idle timeout), and a while more,
    // so that the client's first reconnect attempts go into the cut too.
    wait_for("first half sent", &paused);
    net.cut().unwrap();
    let cut_at = Instant::now();
    go_on.store(true, Ordering::SeqCst);
    wait_for("the client's idle timeout", &client_down);
    wait_for("the server's idle timeout", &server_down);
    std::thread::sleep(2 * idle);
    let cut_for = cut_at.elapsed();
    net.restore().unwrap();
    let client = client.join().expect("the client");
    let server = server.join().expect("the server");
    let dropped = counted("cut drops", net.dropped(Side::A, "cut"))
        + counted("cut drops", net.dropped(Side::B, "cut"));
    let opens = counted("connects", net.snmp(Side::B, "Tcp", "ActiveOpens"));
    let retrans = counted("retransmits", net.snmp(Side::B, "Tcp", "RetransSegs"));
    println!(
        "tcp, path cut for {cut_for:?} (idle timeout {idle:?}) after {} of {N} messages: {} \
         received in order, 0 lost, 0 duplicated; {dropped} packets dropped by the cut; \
         the client made {opens} connections and {retrans} TCP retransmits (SYNs included); \
         stream took {:?}; client events {:?}; server events {:?}",
        N / 2,
        server.messages,
        client.took,
        client.events,
        server.events,
    );
    assert_eq!(server.messages, N);
    assert!(dropped > 0, "the cut dropped packets");
    for (who, events) in [("client", &client.events), ("server", &server.events)] {
        assert!(
            events
                .iter()
                .any(|e| e.starts_with("Disconnected") && e.contains("idle")),
            "the {who} declared the link lost for silence: {events:?}"
        );
        assert!(
            !events.iter().any(|e| e.starts_with("SessionReset")),
            "the {who} kept its session: {events:?}"
        );
    }
    assert!(
        client.events.iter().any(|e| e.starts_with("Resumed")),
        "the client resumed its session: {:?}",
        client.events
    );
}

#[test]
fn udp_through_10_percent_loss_counts_exactly_the_dropped_datagrams_as_gaps() {
    let Some(net) = veth_pair("udp") else { return };
    const N: u64 = 20_000;
    // The first datagram goes through before the loss starts (a receiver
    // cannot count a gap before the first number it sees); the final marker
    // after it stops, resent until one arrives, so that every lost number
    // lies below one that arrived.
    let first_got = Arc::new(AtomicBool::new(false));
    let loss_on = Arc::new(AtomicBool::new(false));
    let data_sent = Arc::new(AtomicBool::new(false));
    let loss_off = Arc::new(AtomicBool::new(false));
    let marker_got = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let receiver = {
        let first_got = first_got.clone();
        let marker_got = marker_got.clone();
        net.spawn(Side::A, move || {
            let rt = runtime();
            let got = rt
                .block_on(0, move || async move {
                    let ep: Endpoint = format!("udp://{ADDR_A}:0?rcvbuf=4194304").parse().unwrap();
                    let sock = udp::bind(&ep, &config()).unwrap();
                    tx.send(sock.local_addr()).unwrap();
                    let mut ids = Vec::new();
                    let mut seqs = Vec::new();
                    let sender = loop {
                        let m = sock.recv::<Order>().await.unwrap();
                        let id = m.id.to_native();
                        assert_eq!(m.seq(), id + 1, "one datagram per message, numbered");
                        if id == 0 {
                            first_got.store(true, Ordering::SeqCst);
                        }
                        if id >= N {
                            marker_got.store(true, Ordering::SeqCst);
                            break m.sender();
                        }
                        ids.push(id);
                        seqs.push(m.seq());
                    };
                    let stats = sock.sender_stats(sender).unwrap();
                    let events: Vec<Event> = std::iter::from_fn(|| sock.next_event()).collect();
                    (ids, stats, events)
                })
                .unwrap();
            shutdown(rt);
            got
        })
    };
    let addr = rx.recv_timeout(WAIT).expect("the receiver binds");
    let sender = {
        let loss_on = loss_on.clone();
        let data_sent = data_sent.clone();
        let loss_off = loss_off.clone();
        let marker_got = marker_got.clone();
        net.spawn(Side::B, move || {
            let rt = runtime();
            let sent = rt
                .block_on(0, move || async move {
                    let target = Endpoint::socket(Scheme::Udp, addr).unwrap();
                    let sock = udp::connect(&target, &config()).unwrap();
                    let small = |i: u64| {
                        let mut o = order(i);
                        o.blob.truncate(BLOB);
                        o
                    };
                    sock.send(&small(0)).await.unwrap();
                    sock.flush().await.unwrap();
                    wait_for_async("the loss rule", &loss_on).await;
                    for i in 1..N {
                        let sent = sock.send(&small(i)).await.unwrap();
                        assert!(!sent.dropped());
                        if i % 100 == 0 {
                            // Paced, so that the receiver's socket buffer is
                            // not where datagrams go missing.
                            sock.flush().await.unwrap();
                            ringwire_runtime::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    sock.flush().await.unwrap();
                    data_sent.store(true, Ordering::SeqCst);
                    wait_for_async("the end of the loss", &loss_off).await;
                    let mut markers = 0u64;
                    while !marker_got.load(Ordering::SeqCst) {
                        assert!(markers < 3000, "no marker arrived");
                        sock.send(&small(N + markers)).await.unwrap();
                        sock.flush().await.unwrap();
                        markers += 1;
                        ringwire_runtime::time::sleep(Duration::from_millis(20)).await;
                    }
                    (N, markers)
                })
                .unwrap();
            shutdown(rt);
            sent
        })
    };
    wait_for("the first datagram", &first_got);
    net.set_loss(Side::A, 10).unwrap();
    loss_on.store(true, Ordering::SeqCst);
    wait_for("all datagrams sent", &data_sent);
    net.set_loss(Side::A, 0).unwrap();
    loss_off.store(true, Ordering::SeqCst);
    let (ids, stats, events) = receiver.join().expect("the receiver");
    let (sent, markers) = sender.join().expect("the sender");
    let dropped = counted("loss drops", net.dropped(Side::A, "lost"));
    let rcvbuf = counted(
        "receive-buffer drops",
        net.snmp(Side::A, "Udp", "RcvbufErrors"),
    );

    let received = ids.len() as u64;
    let lost = sent - received;
    println!(
        "udp, 10% loss: {sent} datagrams sent, {received} received, {lost} lost; the receiver \
         counted {} gaps ({} late, {} duplicates); the kernel dropped {dropped} at the rule \
         and {rcvbuf} for a full receive buffer; {markers} end marker(s) sent",
        stats.gaps, stats.late, stats.duplicates
    );
    let unique: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len() as u64, received, "no message delivered twice");
    assert_eq!((stats.duplicates, stats.stale), (0, 0), "{stats:?}");
    // Sent - received == gaps counted: the marker (the highest number seen)
    // closed every gap below it.
    let highest = stats.highest_seq;
    assert_eq!(stats.delivered, received + 1, "{stats:?}");
    assert_eq!(stats.lost(), highest - stats.delivered, "{stats:?}");
    let marker_lost = highest - 1 - sent;
    assert_eq!(stats.lost(), lost + marker_lost, "{stats:?}");
    // The gaps named are exactly the numbers that never arrived...
    let mut skipped = BTreeSet::new();
    for e in &events {
        match e {
            Event::Gap { first, last, .. } => skipped.extend(*first..=*last),
            Event::Late { seq, .. } => {
                skipped.remove(seq);
            }
            Event::NewSender { first_seq, .. } => assert_eq!(*first_seq, 1),
            other => panic!("unexpected event {other:?}"),
        }
    }
    let arrived: HashSet<u64> = ids.iter().map(|id| id + 1).collect();
    let never: BTreeSet<u64> = (1..highest).filter(|q| !arrived.contains(q)).collect();
    assert_eq!(skipped, never);
    // ...and as many as the kernel dropped.
    assert!(dropped > 0, "the loss rule dropped datagrams");
    assert_eq!(stats.lost(), dropped + rcvbuf, "{stats:?}");
}
