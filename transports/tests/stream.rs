//! `tcp://` and `unix://` connections on loopback: typed round trips, calls,
//! large frames received straight into their own buffer, bulk into
//! receiver-chosen memory with no user-space copy, corrupt archives costing
//! one message, hostile bytes costing one connection, orderly close, and
//! shutdown with messages in flight.

mod common;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use ringwire_transports::{connect, listen, stats, Endpoint, Error, Scheme};

/// Starts a listener on core 1 at `ep`; returns the endpoint it bound (the
/// real port for `tcp://...:0`) and a handle to the server task's result.
fn serve<F, Fut, R>(
    rt: &ringwire_runtime::Runtime,
    ep: Endpoint,
    cfg: ringwire_transports::Config,
    body: F,
) -> (Endpoint, ringwire_runtime::RemoteHandle<R>)
where
    F: FnOnce(ringwire_transports::Listener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
    R: Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let h = rt.spawn_on(1, move || async move {
        let l = listen(&ep, &cfg).await.unwrap();
        tx.send(l.endpoint().clone()).unwrap();
        body(l).await
    });
    (rx.recv().unwrap(), h)
}

fn endpoints() -> Vec<Endpoint> {
    vec![
        "tcp://127.0.0.1:0".parse().unwrap(),
        format!("unix://@{}", unique("ringwire-stream"))
            .parse()
            .unwrap(),
        format!("unix:///tmp/{}.sock", unique("ringwire-stream"))
            .parse()
            .unwrap(),
    ]
}

#[test]
fn typed_round_trips_and_calls_over_tcp_and_unix() {
    for ep in endpoints() {
        if let ringwire_transports::Address::UnixPath(p) = ep.address() {
            let _ = std::fs::remove_file(p);
        }
        let rt = runtime();
        let (bound, server) = serve(&rt, ep.clone(), config(), |mut l| async move {
            let conn = l.accept().await.unwrap().unwrap();
            let mut got = Vec::new();
            for _ in 0..1000 {
                let m = conn.recv::<Order>().await.unwrap();
                got.push((m.id.to_native(), m.blob.len()));
            }
            loop {
                match conn.recv_any().await {
                    Ok(m) => {
                        let req = m.downcast::<Ask>().unwrap();
                        let n = req.n.to_native();
                        req.reply(&Answer { n, square: n * n }).await.unwrap();
                    }
                    Err(Error::Closed { .. }) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            (got, stats::snapshot())
        });
        rt.block_on(0, move || async move {
            let conn = connect(&bound, &config()).await.unwrap();
            for i in 0..1000 {
                conn.send(&order(i)).await.unwrap();
            }
            let calls: Vec<_> = (0..64u64)
                .map(|n| {
                    let conn = conn.clone();
                    ringwire_runtime::spawn_local(async move {
                        let r = conn.call::<Ask, Answer>(&Ask { n }).await.unwrap();
                        assert_eq!(r.n.to_native(), n);
                        r.square.to_native()
                    })
                })
                .collect();
            for (n, c) in calls.into_iter().enumerate() {
                assert_eq!(c.await.unwrap(), (n * n) as u64);
            }
            assert!(conn.close().await.unwrap(), "everything acknowledged");
        })
        .unwrap();
        let (got, s) = server.join().unwrap();
        assert_eq!(got.len(), 1000, "{ep}");
        for (i, (id, blob)) in got.into_iter().enumerate() {
            assert_eq!((id, blob), (i as u64, order(i as u64).blob.len()));
        }
        let scheme = ep.scheme();
        assert_eq!(s.scheme(scheme).messages_in, 1064, "{ep}");
        assert_eq!(s.scheme(scheme).rejected, 0);
        shutdown(rt);
    }
}

#[test]
fn large_frames_and_bulk_land_without_a_user_space_copy() {
    let rt = runtime();
    let cfg = || config().max_payload(8 << 20);
    let ep: Endpoint = "tcp://127.0.0.1:0".parse().unwrap();
    let segment: Vec<u8> = (0..(2u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let expect = segment.clone();
    let (bound, server) = serve(&rt, ep, cfg(), move |mut l| async move {
        let conn = l.accept().await.unwrap().unwrap();
        // A 1 MiB message: larger than a receive buffer.
        let big = conn.recv::<Order>().await.unwrap();
        assert_eq!(big.blob.len(), 1 << 20);
        assert!(big.blob.iter().all(|&b| b == 7));
        assert!(!big.incoming().in_receive_buffer());
        drop(big);
        // Two 2 MiB bulk segments into memory chosen here.
        let mut meta = conn.recv::<Order>().await.unwrap();
        let sizes = meta.incoming().bulk_sizes().unwrap();
        let dests = sizes
            .iter()
            .map(|&s| Vec::with_capacity(s as usize))
            .collect();
        let filled: Vec<Vec<u8>> = meta.incoming_mut().accept_bulk(dests).await.unwrap();
        drop(meta);
        let next = conn.recv::<Order>().await.unwrap().id.to_native();
        (filled, next, stats::snapshot().scheme(Scheme::Tcp))
    });
    rt.block_on(0, move || async move {
        let conn = connect(&bound, &cfg()).await.unwrap();
        let mut big = order(1);
        big.blob = vec![7; 1 << 20];
        conn.send(&big).await.unwrap();
        let (_r, back) = conn
            .send_bulk(&order(2), vec![segment.clone(), segment])
            .await
            .unwrap();
        assert_eq!(back.len(), 2);
        conn.send_acked(&order(3)).await.unwrap();
    })
    .unwrap();
    let (filled, next, s) = server.join().unwrap();
    assert_eq!(next, 3);
    assert_eq!(filled.len(), 2);
    assert!(
        filled.iter().all(|f| *f == expect),
        "bulk bytes arrive intact"
    );
    // The frame larger than its receive buffer went straight into its own.
    assert!(s.frames_direct >= 1, "{s:?}");
    // Most bulk bytes were received by the kernel into the destinations;
    // only what had already arrived in receive buffers was copied.
    let total = s.bulk_bytes_direct + s.bulk_bytes_copied;
    assert_eq!(total, 4 << 20);
    assert!(s.bulk_bytes_direct > total / 2, "{s:?}");
    shutdown(rt);
}

/// A client on a plain blocking socket that drives a proto session itself,
/// so that a test can put exactly the bytes it wants on the wire.
struct RawPeer {
    sock: std::net::TcpStream,
    session: ringwire_proto::Session,
}

impl RawPeer {
    fn connect(addr: &str) -> RawPeer {
        use ringwire_proto::{Instant, Session};
        let sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let session = Session::connect(
            ringwire_proto::Config::default(),
            config().schema().clone(),
            Instant::ZERO,
            7,
        );
        let mut p = RawPeer { sock, session };
        p.flush_control();
        // Read until the server's hello has been handled.
        let mut got = rkyv_aligned();
        while p.session.peer().is_none() {
            let mut buf = [0u8; 4096];
            let n = p.sock.read(&mut buf).unwrap();
            assert!(n > 0, "server closed during the handshake");
            got.extend_from_slice(&buf[..n]);
            let mut at = 0;
            while at < got.len() {
                let input = p
                    .session
                    .handle_input(ringwire_proto::Instant::ZERO, &got[at..])
                    .unwrap();
                if input.consumed == 0 {
                    break;
                }
                at += input.consumed;
            }
            let rest = got[at..].to_vec();
            got = rkyv_aligned();
            got.extend_from_slice(&rest);
        }
        p
    }

    fn flush_control(&mut self) {
        let mut buf = vec![0u8; 4096];
        while let Some(n) = self
            .session
            .poll_transmit(ringwire_proto::Instant::ZERO, &mut buf)
            .unwrap()
        {
            self.sock.write_all(&buf[..n]).unwrap();
        }
    }

    /// Encodes `o` as a message frame; `corrupt` overwrites its archive's
    /// last 24 bytes (the root object's relative pointers) with 0xff.
    fn send(&mut self, o: &Order, corrupt: bool) {
        let mut buf = vec![0u8; 4096];
        let sent = self
            .session
            .send(
                ringwire_proto::Instant::ZERO,
                ringwire_proto::StreamId(0),
                o,
                &mut buf,
            )
            .unwrap();
        if corrupt {
            let header = ringwire_proto::FrameHeader::parse(buf.first_chunk().unwrap()).unwrap();
            let end = ringwire_proto::HEADER_LEN + header.payload_len as usize;
            for b in &mut buf[end - 24..end] {
                *b = 0xff;
            }
        }
        self.sock.write_all(&buf[..sent.len]).unwrap();
    }
}

fn rkyv_aligned() -> ringwire_proto::rkyv::util::AlignedVec<16> {
    ringwire_proto::rkyv::util::AlignedVec::new()
}

#[test]
fn a_corrupt_archive_costs_one_message_and_hostile_bytes_one_connection() {
    let rt = runtime();
    let ep: Endpoint = "tcp://127.0.0.1:0".parse().unwrap();
    let (accepted_tx, accepted_rx) = mpsc::channel::<()>();
    let (bound, server) = serve(&rt, ep, config(), move |mut l| async move {
        let good = l.accept().await.unwrap().unwrap();
        accepted_tx.send(()).unwrap();
        let bad = l.accept().await.unwrap().unwrap();
        accepted_tx.send(()).unwrap();
        let mut results = Vec::new();
        // The hostile connection fails on its own.
        let e = bad.recv::<Order>().await.unwrap_err();
        results.push(format!("bad fatal={}", e.is_connection_fatal()));
        // The healthy one: message 1, a rejected message, message 3.
        results.push(format!(
            "{}",
            good.recv::<Order>().await.unwrap().id.to_native()
        ));
        results.push(match good.recv::<Order>().await {
            Err(Error::Rejected(_)) => "rejected".to_string(),
            other => format!("{other:?}"),
        });
        results.push(format!(
            "{}",
            good.recv::<Order>().await.unwrap().id.to_native()
        ));
        results.push(format!(
            "rejected counted {}",
            stats::snapshot().scheme(Scheme::Tcp).rejected
        ));
        results
    });
    let addr = match bound.address() {
        ringwire_transports::Address::Net { port, .. } => format!("127.0.0.1:{port}"),
        _ => unreachable!(),
    };
    let mut good = RawPeer::connect(&addr);
    accepted_rx.recv().unwrap();
    let mut bad = RawPeer::connect(&addr);
    accepted_rx.recv().unwrap();
    // Hostile bytes after a valid handshake: no frame at all.
    bad.sock.write_all(&[0xAB; 256]).unwrap();
    // The server closes the hostile connection (after a close frame).
    let mut buf = [0u8; 4096];
    loop {
        match bad.sock.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) => panic!("the hostile connection was not closed: {e}"),
        }
    }
    good.send(&order(1), false);
    good.send(&order(2), true);
    good.send(&order(3), false);
    let results = server.join().unwrap();
    assert_eq!(
        results,
        ["bad fatal=true", "1", "rejected", "3", "rejected counted 1"]
    );
    shutdown(rt);
}

#[test]
fn shutdown_closes_connections_in_an_orderly_way_with_messages_in_flight() {
    let rt = runtime();
    let ep: Endpoint = "tcp://127.0.0.1:0".parse().unwrap();
    let (bound, _server) = serve(&rt, ep, config(), |mut l| async move {
        let conn = l.accept().await.unwrap().unwrap();
        // Never read: messages pile up until shutdown.
        std::future::pending::<()>().await;
        drop(conn);
    });
    let addr = match bound.address() {
        ringwire_transports::Address::Net { port, .. } => format!("127.0.0.1:{port}"),
        _ => unreachable!(),
    };
    let mut peer = RawPeer::connect(&addr);
    for i in 0..100 {
        peer.send(&order(i), false);
    }
    // The server task never ends on its own: a short grace, then it is
    // dropped; the connection's close frame went out before that.
    let report = rt.shutdown(Duration::from_millis(500));
    assert_eq!(report.cores_panicked, 0);
    // The server's side ended with a close frame, then the end of the stream.
    let mut got = rkyv_aligned();
    let mut buf = [0u8; 4096];
    loop {
        match peer.sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{e}"),
        }
    }
    let mut at = 0;
    let mut saw_close = false;
    while at + ringwire_proto::HEADER_LEN <= got.len() {
        let h = ringwire_proto::FrameHeader::parse(got[at..].first_chunk().unwrap()).unwrap();
        saw_close |= h.kind == ringwire_proto::FrameKind::Close;
        at += ringwire_proto::frame_len(h.payload_len as usize);
    }
    assert!(
        saw_close,
        "an orderly close frame before the end of the stream"
    );
}

#[test]
fn transport_counters_are_in_the_runtimes_prometheus_output() {
    let rt = runtime();
    let (bound, server) = serve(
        &rt,
        "tcp://127.0.0.1:0".parse().unwrap(),
        config(),
        |mut l| async move {
            let conn = l.accept().await.unwrap().unwrap();
            for _ in 0..10 {
                conn.recv::<Order>().await.unwrap();
            }
        },
    );
    rt.block_on(0, move || async move {
        let conn = connect(&bound, &config()).await.unwrap();
        for i in 0..10 {
            conn.send(&order(i)).await.unwrap();
        }
        conn.send_acked(&order(10)).await.unwrap();
    })
    .unwrap();
    server.join().unwrap();
    let text = ringwire_runtime::stats::render_prometheus(&rt.stats());
    let line = |core: usize, name: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!("ringwire_{name}{{core=\"{core}\""))
                    && l.contains("scheme=\"tcp\"")
            })
            .unwrap_or_else(|| panic!("no {name} for core {core} in:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(line(0, "transport_messages_out_total"), 11);
    assert!(line(1, "transport_messages_in_total") >= 10);
    shutdown(rt);
}

/// A message whose archive is empty (a struct without fields).
#[derive(
    Debug, Clone, PartialEq, ringwire_proto::rkyv::Archive, ringwire_proto::rkyv::Serialize,
)]
#[rkyv(crate = ringwire_proto::rkyv)]
pub struct Marker {}

impl ringwire_transports::Message for Marker {
    const TYPE_ID: u32 = ringwire_transports::type_id("test.Marker");
    const NAME: &'static str = "test.Marker";
}

/// Empty messages between messages of every size, through small socket
/// buffers: receives end wherever the kernel's segments and window end
/// (not on 16-byte boundaries of the stream), so frames that follow land at
/// any address in a receive buffer. An empty payload must reach the
/// application all the same (it used to fail with "payload ... is not
/// 16-byte aligned", closing a healthy connection).
#[test]
fn empty_messages_arrive_wherever_the_receives_split_the_stream() {
    let rt = runtime();
    let cfg = || {
        ringwire_transports::Config::with_types::<(Order, Marker)>()
            .unwrap()
            .max_payload(1 << 20)
    };
    const ROUNDS: u64 = 400;
    let ep: Endpoint = "tcp://127.0.0.1:0?rcvbuf=16K".parse().unwrap();
    let (bound, server) = serve(&rt, ep, cfg(), |mut l| async move {
        let conn = l.accept().await.unwrap().unwrap();
        let (mut orders, mut markers) = (0u64, 0u64);
        while orders < ROUNDS || markers < ROUNDS {
            let m = conn.recv_any().await.unwrap();
            if m.get::<Marker>().is_ok() {
                markers += 1;
            } else {
                let o = m.get::<Order>().unwrap();
                assert_eq!(o.id.to_native(), orders);
                orders += 1;
            }
        }
        (orders, markers)
    });
    let client_ep: Endpoint = bound
        .to_string()
        .replace("rcvbuf", "sndbuf")
        .parse()
        .unwrap();
    rt.block_on(0, move || async move {
        let conn = connect(&client_ep, &cfg()).await.unwrap();
        for i in 0..ROUNDS {
            let mut o = order(i);
            // Odd sizes up to about 40 KB: frames end anywhere.
            o.blob = vec![(i % 251) as u8; (i as usize * 7919) % 40_000];
            conn.send(&o).await.unwrap();
            conn.send(&Marker {}).await.unwrap();
        }
        assert!(conn.close().await.unwrap(), "everything acknowledged");
    })
    .unwrap();
    assert_eq!(server.join().unwrap(), (ROUNDS, ROUNDS));
    shutdown(rt);
}
