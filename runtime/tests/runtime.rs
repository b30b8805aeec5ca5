//! Integration tests of the runtime on loopback: echo under many connections,
//! operation lifecycle when futures are dropped, timers, shutdown, start-up
//! errors, buffer-ring starvation and recovery.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ringwire_runtime::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use ringwire_runtime::time::{interval, sleep, timeout, Deadline, Elapsed};
use ringwire_runtime::{
    core_stats, spawn_local, BuildError, IoBuf, JoinError, Placement, Runtime, StartError,
};

fn runtime(cores: usize) -> Runtime {
    Runtime::builder()
        .placement(Placement::Unpinned(cores))
        .build()
        .expect("runtime starts")
}

/// Starts an echo server on every core of `rt`; returns its address.
fn start_echo(rt: &Runtime) -> SocketAddr {
    // Bind on core 0 to learn a free port, then on the other cores.
    let addr = rt
        .block_on(0, || async {
            let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = l.local_addr();
            spawn_local(echo_accept(l));
            addr
        })
        .unwrap();
    for core in 1..rt.core_count() {
        rt.block_on(core, move || async move {
            let l = TcpListener::bind(addr).unwrap();
            spawn_local(echo_accept(l));
        })
        .unwrap();
    }
    addr
}

async fn echo_accept(mut l: TcpListener) {
    while let Some(conn) = l.accept().await {
        let Ok(mut conn) = conn else { continue };
        spawn_local(async move {
            while let Ok(Some(buf)) = conn.recv().await {
                if conn.send_all(buf).await.0.is_err() {
                    break;
                }
            }
        });
    }
}

fn pattern(conn: usize, i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (conn * 31 + i * 7 + k) as u8)
        .collect::<Vec<u8>>()
}

#[test]
fn many_connections_echo_correctly() {
    let rt = runtime(2);
    let addr = start_echo(&rt);
    let threads: Vec<_> = (0..64)
        .map(|c| {
            std::thread::spawn(move || -> io::Result<()> {
                let mut s = std::net::TcpStream::connect(addr)?;
                for i in 0..50 {
                    let msg = pattern(c, i, 1 + (c * 131 + i * 17) % 3000);
                    s.write_all(&msg)?;
                    let mut back = vec![0; msg.len()];
                    s.read_exact(&mut back)?;
                    assert_eq!(back, msg, "connection {c} message {i}");
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    let stats = rt.stats();
    assert_eq!(stats.iter().map(|s| s.accepts).sum::<u64>(), 64);
    let report = rt.shutdown(Duration::from_secs(2));
    assert_eq!(report.ops_leaked, 0);
}

#[test]
fn sqpoll_rings_echo_too() {
    let rt = Runtime::builder()
        .placement(Placement::Unpinned(1))
        .sqpoll(Some(10))
        .build()
        .expect("SQPOLL ring starts");
    assert!(rt.ring_features()[0].sqpoll);
    let addr = start_echo(&rt);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    for i in 0..200 {
        let msg = pattern(0, i, 700);
        s.write_all(&msg).unwrap();
        let mut back = vec![0; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
}

#[test]
fn ringwire_client_and_server_on_different_cores() {
    let rt = runtime(2);
    let addr = start_echo(&rt);
    let got = rt
        .block_on(1, move || async move {
            let mut total = 0usize;
            let mut conns = Vec::new();
            for _ in 0..8 {
                conns.push(TcpStream::connect(addr).await?);
            }
            for (c, conn) in conns.iter_mut().enumerate() {
                let msg = pattern(c, 0, 100_000);
                let (res, _) = conn.send_all(msg.clone()).await;
                res?;
                let mut back = Vec::new();
                while back.len() < msg.len() {
                    match conn.recv().await? {
                        Some(b) => back.extend_from_slice(&b),
                        None => break,
                    }
                }
                assert_eq!(back, msg);
                total += back.len();
            }
            Ok::<_, io::Error>(total)
        })
        .unwrap()
        .unwrap();
    assert_eq!(got, 800_000);
}

/// Set when a `TrackedBuf` is dropped; wakes whoever waits for it.
#[derive(Default)]
struct DropSignal {
    dropped: Cell<bool>,
    waiter: Cell<Option<std::task::Waker>>,
}

impl DropSignal {
    /// Completes once the buffer has been dropped.
    async fn dropped(&self) {
        std::future::poll_fn(|cx| {
            if self.dropped.get() {
                std::task::Poll::Ready(())
            } else {
                self.waiter.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// An `IoBuf` that records when it is dropped.
struct TrackedBuf {
    data: Vec<u8>,
    signal: Rc<DropSignal>,
}

// SAFETY: the bytes live in the Vec's heap allocation, which does not move
// when `TrackedBuf` moves and is not modified while the runtime owns it.
unsafe impl IoBuf for TrackedBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.data.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.data.len()
    }
}

impl Drop for TrackedBuf {
    fn drop(&mut self) {
        self.signal.dropped.set(true);
        if let Some(w) = self.signal.waiter.take() {
            w.wake();
        }
    }
}

#[test]
fn dropped_send_keeps_its_buffer_until_the_kernel_is_done() {
    let rt = runtime(1);
    // A peer that accepts but never reads, so a large send cannot finish.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    let peer = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        // Hold the connection open until the test is done.
        let _ = rx.recv();
        drop(s);
    });
    let result = rt
        .block_on(0, move || async move {
            let conn = TcpStream::connect(addr).await.unwrap();
            let before = core_stats().ops_in_flight;
            let signal = Rc::new(DropSignal::default());
            let buf = TrackedBuf {
                data: vec![7u8; 64 << 20],
                signal: signal.clone(),
            };
            // The send blocks on a full socket buffer; the timeout drops it.
            let r = timeout(Duration::from_millis(50), conn.send_all(buf)).await;
            assert!(matches!(r, Err(Elapsed)));
            // Dropped future, but the kernel may still read the buffer: the
            // driver must hold it.
            let held_right_after_drop = !signal.dropped.get();
            let in_flight_after_drop = core_stats().ops_in_flight;
            // The cancellation's completion releases it (the timeout only
            // bounds a failure).
            let bounded = timeout(Duration::from_secs(10), async {
                signal.dropped().await;
                // The send's slot is gone; what is left in flight beside the
                // ops from before is the bounding timer itself.
                core_stats().ops_in_flight
            });
            let in_flight_end = bounded.await;
            (
                held_right_after_drop,
                in_flight_after_drop > before,
                in_flight_end.is_ok(),
                in_flight_end.ok() == Some(before + 1),
            )
        })
        .unwrap();
    tx.send(()).unwrap();
    peer.join().unwrap();
    assert_eq!(result, (true, true, true, true));
}

#[test]
fn dropped_recv_and_stream_leave_nothing_behind() {
    let rt = runtime(1);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The client tells the peer when its first receive was abandoned; the
    // peer then sends, and holds the connection until the client is done.
    let (abandoned_tx, abandoned_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        abandoned_rx.recv().unwrap();
        let _ = s.write_all(b"late bytes");
        let _ = done_rx.recv();
    });
    let (leftover, free, total) = rt
        .block_on(0, move || async move {
            let base = core_stats().ops_in_flight;
            {
                let mut conn = TcpStream::connect(addr).await.unwrap();
                let r = timeout(Duration::from_millis(20), conn.recv()).await;
                assert!(r.is_err(), "nothing was sent yet");
                abandoned_tx.send(()).unwrap();
                // Receive armed; now the data arrives while the owner waits.
                let got = conn.recv().await.unwrap().unwrap();
                assert_eq!(&got[..], b"late bytes");
                // Drop the stream with its multishot receive still armed.
            }
            let start = Instant::now();
            while core_stats().ops_in_flight > base && start.elapsed() < Duration::from_secs(5) {
                sleep(Duration::from_millis(1)).await;
            }
            let s = core_stats();
            (
                s.ops_in_flight - base,
                s.recv_buffers_free,
                s.recv_buffers_total,
            )
        })
        .unwrap();
    done_tx.send(()).unwrap();
    peer.join().unwrap();
    assert_eq!(leftover, 0);
    assert_eq!(free, total, "every receive buffer is back in the ring");
}

#[test]
fn peer_closing_ends_the_stream() {
    let rt = runtime(1);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"bye").unwrap();
        // Dropping closes the connection.
    });
    let got = rt
        .block_on(0, move || async move {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            let mut all = Vec::new();
            while let Some(b) = conn.recv().await.unwrap() {
                all.extend_from_slice(&b);
            }
            all
        })
        .unwrap();
    peer.join().unwrap();
    assert_eq!(got, b"bye");
}

#[test]
fn timers_sleep_timeout_interval() {
    let rt = runtime(1);
    let order = rt
        .block_on(0, || async {
            let order = Rc::new(std::cell::RefCell::new(Vec::new()));
            let a = {
                let order = order.clone();
                spawn_local(async move {
                    sleep(Duration::from_millis(30)).await;
                    order.borrow_mut().push(30);
                })
            };
            let b = {
                let order = order.clone();
                spawn_local(async move {
                    sleep(Duration::from_millis(10)).await;
                    order.borrow_mut().push(10);
                })
            };
            let start = Deadline::now();
            a.await.unwrap();
            b.await.unwrap();
            // A sleep never ends early.
            assert!(Deadline::now() >= start + Duration::from_millis(30));

            // A future that never completes is cut off by timeout.
            let never = std::future::pending::<()>();
            assert_eq!(timeout(Duration::from_millis(5), never).await, Err(Elapsed));
            // A ready one is not.
            assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));

            // Interval ticks are spaced by at least the period.
            let mut iv = interval(Duration::from_millis(5));
            let mut ticks = Vec::new();
            for _ in 0..4 {
                ticks.push(iv.tick().await);
            }
            for w in ticks.windows(2) {
                assert!(w[1] >= w[0] + Duration::from_millis(5));
            }
            let v = order.borrow().clone();
            v
        })
        .unwrap();
    assert_eq!(order, vec![10, 30]);
}

#[test]
fn shutdown_flushes_in_flight_sends() {
    const TOTAL: usize = 16 << 20;
    let rt = runtime(1);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    rt.spawn_on(0, move || async move {
        let conn = TcpStream::connect(addr).await.unwrap();
        let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
        started_tx.send(()).unwrap();
        let (res, _) = conn.send_all(data).await;
        res.unwrap();
    });
    let (mut s, _) = listener.accept().unwrap();
    started_rx.recv().unwrap();
    // Read a little, then start shutdown while most data is still unsent.
    let mut first = vec![0u8; 4096];
    s.read_exact(&mut first).unwrap();
    let handle = rt.shutdown_handle();
    handle.shutdown(Duration::from_secs(20));
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        first.extend_from_slice(&rest);
        first
    });
    let report = rt.shutdown(Duration::from_secs(20));
    let all = reader.join().unwrap();
    assert_eq!(report.tasks_aborted, 0);
    assert_eq!(all.len(), TOTAL);
    assert!(all.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
}

#[test]
fn shutdown_stops_accepting_and_drops_stragglers_at_the_deadline() {
    let rt = runtime(1);
    let addr = start_echo(&rt);
    // A task that ignores shutdown entirely.
    let stubborn = rt.spawn_on(0, || async {
        loop {
            sleep(Duration::from_millis(5)).await;
        }
    });
    let report = rt.shutdown(Duration::from_millis(100));
    assert_eq!(report.tasks_aborted, 1);
    assert!(matches!(stubborn.join(), Err(JoinError::Cancelled)));
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn task_panic_is_reported_and_the_core_keeps_running() {
    let rt = runtime(1);
    let r = rt.block_on(0, || async {
        if core_stats().core == 0 {
            panic!("boom");
        }
    });
    match r {
        Err(JoinError::Panicked(msg)) => assert!(msg.contains("boom")),
        other => panic!("expected a panic report, got {other:?}"),
    }
    assert_eq!(rt.block_on(0, || async { 5 }).unwrap(), 5);
}

#[test]
fn wakers_work_across_threads() {
    let rt = runtime(2);
    let (tx, rx) = mpsc::channel::<std::task::Waker>();
    let flag = Arc::new(AtomicUsize::new(0));
    let f2 = flag.clone();
    let h = rt.spawn_on(0, move || async move {
        std::future::poll_fn(|cx| {
            if f2.load(Ordering::Acquire) == 1 {
                std::task::Poll::Ready(())
            } else {
                tx.send(cx.waker().clone()).unwrap();
                std::task::Poll::Pending
            }
        })
        .await;
        42
    });
    let waker = rx.recv().unwrap();
    flag.store(1, Ordering::Release);
    waker.wake();
    assert_eq!(h.join().unwrap(), 42);
}

#[test]
fn unix_stream_echo() {
    let rt = runtime(1);
    let dir = std::env::temp_dir().join(format!("ringwire-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    let _ = std::fs::remove_file(&path);
    let p2 = path.clone();
    let got = rt
        .block_on(0, move || async move {
            let mut l = UnixListener::bind(&p2).unwrap();
            spawn_local(async move {
                if let Some(Ok(mut c)) = l.accept().await {
                    while let Ok(Some(b)) = c.recv().await {
                        if c.send_all(b).await.0.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut c = UnixStream::connect(&p2).await.unwrap();
            c.send_all(b"over unix".to_vec()).await.0.unwrap();
            let mut back = Vec::new();
            while back.len() < 9 {
                back.extend_from_slice(&c.recv().await.unwrap().unwrap());
            }
            back
        })
        .unwrap();
    assert_eq!(got, b"over unix");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tiny_buffer_ring_starves_and_recovers_without_losing_data() {
    // Two 4 KiB receive buffers for 16 connections each sending 256 KiB: the
    // ring runs dry constantly; every byte must still arrive, in order.
    let rt = Runtime::builder()
        .placement(Placement::Unpinned(1))
        .recv_buffers(2)
        .recv_buffer_size(4096)
        .build()
        .unwrap();
    let addr = start_echo(&rt);
    let threads: Vec<_> = (0..16)
        .map(|c| {
            std::thread::spawn(move || {
                let s = std::net::TcpStream::connect(addr).unwrap();
                let mut r = s.try_clone().unwrap();
                let data = pattern(c, 1, 256 * 1024);
                let expect = data.clone();
                let w = std::thread::spawn(move || {
                    let mut s = s;
                    s.write_all(&data).unwrap();
                });
                let mut back = vec![0; expect.len()];
                r.read_exact(&mut back).unwrap();
                w.join().unwrap();
                assert!(back == expect, "connection {c}: echoed bytes differ");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = rt.stats();
    assert!(
        stats[0].bufring_starvation > 0,
        "the ring should have run dry: {stats:?}"
    );
    assert_eq!(stats[0].recv_buffers_free, 2);
}

#[test]
fn a_socket_whose_owner_does_not_read_cannot_starve_the_others() {
    // The echo task of a client that sends without reading blocks on its
    // send; its socket's multishot receive must then stop taking buffers
    // (64 on this core: throttled at 4 untaken) instead of emptying the ring
    // that every other connection of the core receives into.
    let rt = Runtime::builder()
        .placement(Placement::Unpinned(1))
        .recv_buffers(64)
        .recv_buffer_size(4096)
        .build()
        .unwrap();
    let addr = start_echo(&rt);
    let attacker = std::net::TcpStream::connect(addr).unwrap();
    attacker
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut w = attacker.try_clone().unwrap();
    let chunk = vec![0x5a; 64 * 1024];
    let mut written = 0usize;
    let stalled = loop {
        match w.write(&chunk) {
            Ok(n) => written += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break true
            }
            Err(e) => panic!("attacker write failed: {e}"),
        }
        if written > 256 << 20 {
            break false;
        }
    };
    assert!(
        stalled,
        "the server took {written} bytes without pushing back"
    );
    // A healthy client of the same core is served.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for i in 0..200 {
        let msg = pattern(1, i, 100);
        s.write_all(&msg).unwrap();
        let mut back = vec![0; msg.len()];
        s.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("round trip {i} beside an unread socket: {e}"));
        assert_eq!(back, msg);
    }
    let stats = rt.stats();
    assert!(stats[0].recv_throttled > 0, "{stats:?}");
    // The attacker goes: its task's send fails, and every buffer comes back.
    drop((w, attacker));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = rt.stats();
        if st[0].recv_buffers_free == st[0].recv_buffers_total {
            break;
        }
        assert!(Instant::now() < deadline, "buffers not returned: {st:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hundred_thousand_messages_return_every_buffer() {
    let rt = runtime(1);
    let addr = start_echo(&rt);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut back = [0u8; 64];
    for i in 0..100_000u32 {
        let msg = [i as u8; 16];
        s.write_all(&msg).unwrap();
        s.read_exact(&mut back[..16]).unwrap();
        assert_eq!(back[..16], msg);
    }
    drop(s);
    let stats = rt.stats();
    assert_eq!(stats[0].recv_buffers_free, stats[0].recv_buffers_total);
}

#[test]
fn startup_errors_are_typed() {
    let err = Runtime::builder()
        .placement(Placement::Cpus(vec![4096]))
        .build()
        .err()
        .expect("CPU 4096 does not exist here");
    assert!(
        matches!(err, BuildError::UnknownCpu { cpu: 4096, ref available } if !available.is_empty()),
        "{err:?}"
    );
    assert_eq!(io::Error::from(err).kind(), io::ErrorKind::InvalidInput);

    let err = Runtime::builder()
        .placement(Placement::Cpus(vec![0, 0]))
        .build()
        .err()
        .expect("duplicate CPU");
    assert!(
        matches!(err, BuildError::DuplicateCpu { cpu: 0 }),
        "{err:?}"
    );

    let err = Runtime::builder()
        .placement(Placement::Unpinned(1))
        .ring_entries(1 << 20)
        .build()
        .err()
        .expect("too many ring entries");
    assert!(
        matches!(
            err,
            BuildError::Core {
                core: 0,
                cpu: None,
                error: StartError::RingEntries {
                    entries: 1_048_576,
                    sqpoll: false,
                    ..
                }
            }
        ),
        "{err:?}"
    );

    let err = Runtime::builder()
        .placement(Placement::Unpinned(1))
        .recv_buffers(3)
        .build()
        .err()
        .expect("buffer count must be a power of two");
    assert!(
        matches!(
            err,
            BuildError::Core {
                error: StartError::RecvBufferCount { count: 3 },
                ..
            }
        ),
        "{err:?}"
    );

    let err = Runtime::builder()
        .placement(Placement::Count(100_000))
        .build()
        .err()
        .expect("more cores than CPUs");
    assert!(
        matches!(err, BuildError::TooFewCpus { asked: 100_000, .. }),
        "{err:?}"
    );

    let err = Runtime::builder()
        .placement(Placement::Unpinned(0))
        .build()
        .err()
        .expect("no core");
    assert!(matches!(err, BuildError::NoCores), "{err:?}");
}

#[test]
fn unpinned_cores_report_no_cpu() {
    let rt = runtime(2);
    assert_eq!(rt.cpus(), vec![None, None]);
    let cpus = rt
        .block_on(1, || async { ringwire_runtime::current_cpu() })
        .unwrap();
    assert_eq!(cpus, None);
    let stats = rt.stats();
    assert!(stats.iter().all(|s| s.cpu.is_none()));
    let text = ringwire_runtime::stats::render_prometheus(&stats);
    assert!(
        text.contains("ringwire_accepts_total{core=\"1\"} 0\n"),
        "{text}"
    );
    assert!(!text.contains("cpu="), "{text}");
}

#[test]
fn counted_placement_pins_to_distinct_available_cpus() {
    let available = core_affinity_count();
    let rt = Runtime::builder()
        .placement(Placement::Count(available))
        .build()
        .expect("one core per available CPU");
    let cpus: Vec<usize> = rt.cpus().into_iter().map(|c| c.expect("pinned")).collect();
    let mut sorted = cpus.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), available, "{cpus:?}");
    // Each core runs where it says it is pinned.
    for (core, cpu) in cpus.iter().enumerate() {
        let seen = rt
            .block_on(core, || async { ringwire_runtime::current_cpu() })
            .unwrap();
        assert_eq!(seen, Some(*cpu));
    }
}

/// The number of CPUs this process may run on.
fn core_affinity_count() -> usize {
    // SAFETY: `set` is a plain bitmask, written by sched_getaffinity.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid for writes of its size.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(rc, 0);
    // SAFETY: `set` was initialised by sched_getaffinity.
    (unsafe { libc::CPU_COUNT(&set) }) as usize
}
