//! Receive-buffer starvation under the typed transports: a runtime with four
//! 4 KiB receive buffers per core carries a few thousand typed messages of
//! mixed sizes (empty to 17 KB, so some span several buffers) over several
//! `tcp://` and `unix://` connections at once. The buffer ring runs dry (the
//! test checks that it did: `bufring_starvation > 0`), and still every
//! message arrives exactly once and in order, every close is clean, and
//! every receive buffer is back in the ring at the end.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use ringwire_runtime::{Placement, Runtime};
use ringwire_transports::{connect, listen, Endpoint, Error};

/// Receive buffers per core, and their size.
const RECV_BUFFERS: u16 = 4;
const RECV_BUFFER_SIZE: u32 = 4096;
/// Connections per scheme.
const PER_SCHEME: u64 = 3;
/// Messages per connection.
const MESSAGES: u64 = 600;
/// Payload sizes, in turn: within one buffer, then spanning two to five.
const SIZES: [usize; 7] = [0, 16, 200, 1500, 4000, 9000, 17_000];
/// How long any wait may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(60);

fn blob(id: u64, n: u64) -> Vec<u8> {
    vec![(id.wrapping_add(n) % 251) as u8; SIZES[(n % SIZES.len() as u64) as usize]]
}

/// What the server saw on one connection: (peer, messages in order, how it
/// ended, whether the close was clean).
type Seen = (u64, u64, String, bool);

#[test]
fn typed_connections_survive_a_starved_buffer_ring_without_losing_a_message() {
    let rt = Runtime::builder()
        .placement(Placement::Unpinned(2))
        .recv_buffers(RECV_BUFFERS)
        .recv_buffer_size(RECV_BUFFER_SIZE)
        .build()
        .unwrap();
    let endpoints: Vec<Endpoint> = vec![
        "tcp://127.0.0.1:0".parse().unwrap(),
        format!("unix://@{}", unique("ringwire-starve"))
            .parse()
            .unwrap(),
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
                    let mut received = 0u64;
                    let (end, clean) = loop {
                        match conn.recv::<Order>().await {
                            Ok(o) => {
                                let id = o.id.to_native();
                                let want = peer << 32 | received;
                                if id != want {
                                    break (
                                        format!("order {id:#x} where {want:#x} was due"),
                                        false,
                                    );
                                }
                                if o.blob.as_slice() != blob(peer, received).as_slice() {
                                    break (format!("order {id:#x}: wrong blob"), false);
                                }
                                received += 1;
                            }
                            Err(e @ Error::Closed { .. }) => break (e.to_string(), true),
                            Err(e) => break (e.to_string(), false),
                        }
                    };
                    let _ = seen_tx.send((peer, received, end, clean));
                });
            }
        });
        bound.push(rx.recv_timeout(HANG).unwrap());
    }
    let recv_free_before: Vec<u64> = rt.stats().iter().map(|s| s.recv_buffers_free).collect();
    assert_eq!(recv_free_before, vec![u64::from(RECV_BUFFERS); 2]);
    let starved_before: u64 = rt.stats().iter().map(|s| s.bufring_starvation).sum();

    let started = Instant::now();
    let clients: Vec<_> = bound
        .iter()
        .enumerate()
        .flat_map(|(s, ep)| (0..PER_SCHEME).map(move |i| (ep.clone(), (s as u64 + 1) * 100 + i)))
        .map(|(ep, id)| {
            rt.spawn_on(0, move || async move {
                let conn = connect(&ep, &config().node_id(id))
                    .await
                    .map_err(|e| format!("{ep}: connect: {e}"))?;
                for n in 0..MESSAGES {
                    let o = Order {
                        id: id << 32 | n,
                        symbol: format!("S{n}"),
                        qty: n as i64,
                        blob: blob(id, n),
                    };
                    conn.send(&o)
                        .await
                        .map_err(|e| format!("{ep}: send {n}: {e}"))?;
                }
                let clean = conn
                    .close()
                    .await
                    .map_err(|e| format!("{ep}: close: {e}"))?;
                Ok::<_, String>((id, clean))
            })
        })
        .collect();
    let mut ids = Vec::new();
    for c in clients {
        let (id, clean) = c
            .join_timeout(HANG)
            .expect("a client hung")
            .unwrap()
            .unwrap();
        assert!(clean, "connection {id}: close left messages unacknowledged");
        ids.push(id);
    }
    let (mut received, mut lost, mut duplicated) = (0u64, 0u64, 0u64);
    for _ in 0..ids.len() {
        let (peer, got, end, clean) = seen_rx.recv_timeout(HANG).unwrap();
        assert!(ids.contains(&peer), "unknown peer {peer}");
        assert!(clean, "connection {peer}: {end}");
        received += got;
        lost += MESSAGES.saturating_sub(got);
        duplicated += got.saturating_sub(MESSAGES);
    }
    let took = started.elapsed();
    // Every receive buffer back in the ring once the connections are gone.
    let wait = Instant::now();
    let stats = loop {
        let stats = rt.stats();
        let free: Vec<u64> = stats.iter().map(|s| s.recv_buffers_free).collect();
        if free == recv_free_before || wait.elapsed() > HANG {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let starved: u64 = stats.iter().map(|s| s.bufring_starvation).sum::<u64>() - starved_before;
    let payload: u64 = ids
        .iter()
        .map(|&id| (0..MESSAGES).map(|n| blob(id, n).len() as u64).sum::<u64>())
        .sum();
    println!(
        "STARVATION {:.2} s: {} connections ({PER_SCHEME} tcp, {PER_SCHEME} unix), \
         {RECV_BUFFERS} x {RECV_BUFFER_SIZE} B receive buffers per core, {received} messages \
         ({:.1} MiB, 0 to {} B each); lost {lost}, duplicated {duplicated}; bufring_starvation \
         per core {:?}; receive buffers free at the end {:?}",
        took.as_secs_f64(),
        ids.len(),
        payload as f64 / (1 << 20) as f64,
        SIZES[SIZES.len() - 1],
        stats
            .iter()
            .map(|s| s.bufring_starvation)
            .collect::<Vec<_>>(),
        stats
            .iter()
            .map(|s| s.recv_buffers_free)
            .collect::<Vec<_>>(),
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(received, MESSAGES * ids.len() as u64);
    assert!(
        starved > 0,
        "the receive buffer ring never ran dry: {stats:?}"
    );
    for s in &stats {
        assert_eq!(
            s.recv_buffers_free,
            u64::from(RECV_BUFFERS),
            "core {}: receive buffers not all back",
            s.core
        );
    }
    drop(seen_tx);
    shutdown(rt);
}
