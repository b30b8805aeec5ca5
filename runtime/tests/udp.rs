//! UDP sockets on the ring: unicast and connected round trips, truncation,
//! batched sends (GSO and one `SENDMSG` per datagram), buffer-ring
//! starvation, receive errors, shutdown, and multicast (IPv4 on `lo`, IPv6
//! on a veth pair) inside a network namespace each test creates.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use ringwire_runtime::net::{
    interface_index, MulticastInterface, OutDatagram, SendMode, UdpOptions, UdpSocket,
};
use ringwire_runtime::{core_stats, spawn_local, Placement, Runtime, RuntimeBuilder};

fn builder(cores: usize) -> RuntimeBuilder {
    Runtime::builder().placement(Placement::Unpinned(cores))
}

fn shutdown(rt: Runtime) {
    let report = rt.shutdown(Duration::from_secs(5));
    assert_eq!(report.cores_panicked, 0, "{report:?}");
    assert_eq!(report.ops_leaked, 0, "{report:?}");
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The bytes of datagram `i` of `len` bytes.
fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i * 31 + k) as u8).collect()
}

#[test]
fn datagrams_cross_cores_with_their_source_address_and_aligned_payloads() {
    let rt = builder(2).build().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = rt.spawn_on(1, move || async move {
        let mut sock = UdpSocket::bind(localhost()).unwrap();
        tx.send(sock.local_addr()).unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            let d = sock.recv_from().await.unwrap().unwrap();
            assert_eq!(d.as_ptr() as usize % 16, 0, "payload not 16-byte aligned");
            assert_eq!(d.truncated(), None);
            got.push((d.to_vec(), d.source().unwrap()));
        }
        got
    });
    let to = rx.recv().unwrap();
    let from = rt
        .block_on(0, move || async move {
            let sock = UdpSocket::bind(localhost()).unwrap();
            for i in 0..3 {
                let (res, _) = sock.send_to(payload(i, 100 + i), to).await;
                assert_eq!(res.unwrap(), 100 + i);
            }
            sock.local_addr()
        })
        .unwrap();
    let got = receiver.join().unwrap();
    for (i, (bytes, source)) in got.into_iter().enumerate() {
        assert_eq!(bytes, payload(i, 100 + i));
        assert_eq!(source, from);
    }
    shutdown(rt);
}

#[test]
fn a_connected_socket_sends_to_its_peer_and_hears_only_from_it() {
    let rt = builder(1).build().unwrap();
    rt.block_on(0, || async {
        let mut a = UdpSocket::bind(localhost()).unwrap();
        let b = UdpSocket::bind(localhost()).unwrap();
        let stranger = UdpSocket::bind(localhost()).unwrap();
        a.connect(b.local_addr()).unwrap();
        b.connect(a.local_addr()).unwrap();
        assert_eq!(a.peer_addr(), Some(b.local_addr()));
        // The stranger's datagram is filtered out by the kernel.
        let (res, _) = stranger.send_to(b"noise".to_vec(), a.local_addr()).await;
        res.unwrap();
        let (res, _) = b.send(b"from b".to_vec()).await;
        assert_eq!(res.unwrap(), 6);
        let d = a.recv_from().await.unwrap().unwrap();
        assert_eq!(&d[..], b"from b");
        assert_eq!(d.source(), Some(b.local_addr()));
        let (res, _) = a.send(b"back".to_vec()).await;
        res.unwrap();
        assert!(a.try_recv_from().is_none());
    })
    .unwrap();
    shutdown(rt);
}

#[test]
fn a_datagram_larger_than_the_buffer_is_reported_truncated() {
    let rt = builder(1).recv_buffer_size(4096).build().unwrap();
    rt.block_on(0, || async {
        let mut r = UdpSocket::bind(localhost()).unwrap();
        let s = UdpSocket::bind(localhost()).unwrap();
        let (res, _) = s.send_to(payload(7, 10_000), r.local_addr()).await;
        assert_eq!(res.unwrap(), 10_000);
        let d = r.recv_from().await.unwrap().unwrap();
        assert_eq!(d.truncated(), Some(10_000));
        assert_eq!(d.len(), 4096 - 64);
        assert_eq!(&d[..], &payload(7, 10_000)[..4096 - 64]);
        // The next datagram is whole again.
        let (res, _) = s.send_to(payload(8, 4096 - 64), r.local_addr()).await;
        res.unwrap();
        let d = r.recv_from().await.unwrap().unwrap();
        assert_eq!(d.truncated(), None);
        assert_eq!(&d[..], &payload(8, 4096 - 64)[..]);
    })
    .unwrap();
    shutdown(rt);
}

/// Sends `n` datagrams of `len` bytes (plus one shorter one) to `to` from
/// `bufs` buffers in one batch; returns the report.
async fn send_many(
    sock: &UdpSocket,
    to: Option<SocketAddr>,
    n: usize,
    len: usize,
    mode: SendMode,
) -> ringwire_runtime::net::BatchReport {
    // Two buffers, so runs cross buffer boundaries.
    let half = n / 2;
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut list = Vec::new();
    for i in 0..n {
        let l = if i == n - 1 { len / 2 } else { len };
        let (buf, idx) = if i < half { (&mut a, 0) } else { (&mut b, 1) };
        list.push(OutDatagram {
            buf: idx,
            offset: buf.len(),
            len: l,
            to,
        });
        buf.extend_from_slice(&payload(i, l));
    }
    let (report, bufs) = sock.send_batch(vec![a, b], &list, mode).await;
    assert_eq!(bufs.len(), 2);
    report
}

fn batched_sends_arrive_whole_and_in_order(mode: SendMode) {
    let rt = builder(1).recv_buffers(512).build().unwrap();
    let report = rt
        .block_on(0, move || async move {
            let mut r = UdpSocket::bind_with(
                localhost(),
                &UdpOptions::default().recv_buffer(Some(1 << 20)),
            )
            .unwrap();
            let s = UdpSocket::bind(localhost()).unwrap();
            let n = 150;
            let report = send_many(&s, Some(r.local_addr()), n, 200, mode).await;
            for i in 0..n {
                let d = r.recv_from().await.unwrap().unwrap();
                let l = if i == n - 1 { 100 } else { 200 };
                assert_eq!(&d[..], &payload(i, l)[..], "datagram {i}");
                assert_eq!(d.source(), Some(s.local_addr()));
            }
            assert!(r.try_recv_from().is_none());
            report
        })
        .unwrap();
    assert_eq!(report.datagrams, 150);
    assert_eq!(report.bytes, 149 * 200 + 100);
    assert_eq!(report.failed, 0, "{:?}", report.error);
    match mode {
        SendMode::Gso => {
            // 150 datagrams: runs of 64, 64 and 22.
            assert_eq!(report.sends, 3, "{report:?}");
            assert_eq!(report.gso_sends, 3);
        }
        SendMode::PerDatagram => {
            assert_eq!(report.sends, 150);
            assert_eq!(report.gso_sends, 0);
        }
    }
    shutdown(rt);
}

#[test]
fn gso_batches_arrive_as_separate_datagrams_in_order() {
    batched_sends_arrive_whole_and_in_order(SendMode::Gso);
}

#[test]
fn per_datagram_batches_arrive_in_order() {
    batched_sends_arrive_whole_and_in_order(SendMode::PerDatagram);
}

#[test]
fn a_batch_to_two_destinations_and_a_connected_peer() {
    let rt = builder(1).build().unwrap();
    rt.block_on(0, || async {
        let mut r1 = UdpSocket::bind(localhost()).unwrap();
        let mut r2 = UdpSocket::bind(localhost()).unwrap();
        let s = UdpSocket::bind(localhost()).unwrap();
        s.connect(r2.local_addr()).unwrap();
        let data = vec![1u8; 30];
        let to1 = Some(r1.local_addr());
        let list = [
            OutDatagram {
                buf: 0,
                offset: 0,
                len: 10,
                to: to1,
            },
            OutDatagram {
                buf: 0,
                offset: 10,
                len: 10,
                to: None,
            },
            OutDatagram {
                buf: 0,
                offset: 20,
                len: 10,
                to: to1,
            },
        ];
        let (report, _) = s.send_batch(vec![data], &list, SendMode::Gso).await;
        assert_eq!((report.datagrams, report.failed), (3, 0));
        assert_eq!(r1.recv_from().await.unwrap().unwrap().len(), 10);
        assert_eq!(r1.recv_from().await.unwrap().unwrap().len(), 10);
        assert_eq!(r2.recv_from().await.unwrap().unwrap().len(), 10);
        // A piece outside its buffer refuses the whole batch up front.
        let bad = [
            OutDatagram {
                buf: 0,
                offset: 0,
                len: 10,
                to: to1,
            },
            OutDatagram {
                buf: 0,
                offset: 25,
                len: 10,
                to: to1,
            },
        ];
        let (report, _) = s.send_batch(vec![vec![0u8; 30]], &bad, SendMode::Gso).await;
        assert_eq!((report.datagrams, report.failed, report.sends), (0, 2, 0));
        assert_eq!(
            report.error.unwrap().kind(),
            std::io::ErrorKind::InvalidInput
        );
        assert!(r1.try_recv_from().is_none());
    })
    .unwrap();
    shutdown(rt);
}

#[test]
fn a_starved_receive_is_rearmed_when_buffers_come_back() {
    // Four receive buffers on the core: holding them stops the multishot
    // receive (ENOBUFS); the datagrams wait in the socket.
    let rt = builder(1).recv_buffers(4).build().unwrap();
    let stats = rt
        .block_on(0, || async {
            let mut r = UdpSocket::bind_with(
                localhost(),
                &UdpOptions::default().recv_buffer(Some(1 << 20)),
            )
            .unwrap();
            let s = UdpSocket::bind(localhost()).unwrap();
            let n = 40;
            let report = send_many(&s, Some(r.local_addr()), n, 64, SendMode::Gso).await;
            assert_eq!(report.datagrams, n);
            let mut held = Vec::new();
            let mut seen = 0;
            while seen < n {
                let d = r.recv_from().await.unwrap().unwrap();
                let l = if seen == n - 1 { 32 } else { 64 };
                assert_eq!(&d[..], &payload(seen, l)[..], "datagram {seen}");
                seen += 1;
                held.push(d);
                if held.len() == 4 {
                    // Give the ring a moment without buffers, then release.
                    ringwire_runtime::time::sleep(Duration::from_millis(2)).await;
                    held.clear();
                }
            }
            core_stats()
        })
        .unwrap();
    assert!(stats.bufring_starvation > 0, "{stats:?}");
    assert_eq!(stats.recv_buffers_free, stats.recv_buffers_total);
    shutdown(rt);
}

#[test]
fn a_receive_error_costs_one_call_only() {
    let rt = builder(1).build().unwrap();
    rt.block_on(0, || async {
        // A port nobody listens on: the kernel answers with ICMP port
        // unreachable, which a connected socket reports as ECONNREFUSED.
        let gone = UdpSocket::bind(localhost()).unwrap();
        let gone_addr = gone.local_addr();
        drop(gone);
        let mut a = UdpSocket::bind(localhost()).unwrap();
        a.connect(gone_addr).unwrap();
        let (res, _) = a.send(b"anyone?".to_vec()).await;
        res.unwrap();
        let err = a.recv_from().await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED), "{err}");
        // The socket still receives: a peer appears on another address.
        let mut b = UdpSocket::bind(localhost()).unwrap();
        a.connect(b.local_addr()).unwrap();
        b.connect(a.local_addr()).unwrap();
        let (res, _) = b.send(b"here".to_vec()).await;
        res.unwrap();
        let d = a.recv_from().await.unwrap().unwrap();
        assert_eq!(&d[..], b"here");
        let (res, _) = a.send(b"ok".to_vec()).await;
        res.unwrap();
        assert_eq!(&b.recv_from().await.unwrap().unwrap()[..], b"ok");
    })
    .unwrap();
    shutdown(rt);
}

#[test]
fn receiving_ends_at_shutdown_and_dropped_sockets_leak_nothing() {
    let rt = builder(1).build().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = rt.spawn_on(0, move || async move {
        let mut sock = UdpSocket::bind(localhost()).unwrap();
        // A socket dropped with its receive armed and a datagram queued.
        let other = UdpSocket::bind(localhost()).unwrap();
        let (res, _) = other.send_to(b"x".to_vec(), sock.local_addr()).await;
        res.unwrap();
        let mut dropped = UdpSocket::bind(localhost()).unwrap();
        let (res, _) = other.send_to(b"y".to_vec(), dropped.local_addr()).await;
        res.unwrap();
        let _ = dropped.recv_from().await.unwrap().unwrap();
        let (res, _) = other.send_to(b"z".to_vec(), dropped.local_addr()).await;
        res.unwrap();
        ringwire_runtime::yield_now().await;
        drop(dropped);
        let d = sock.recv_from().await.unwrap().unwrap();
        assert_eq!(&d[..], b"x");
        drop(d);
        tx.send(()).unwrap();
        // Nothing more arrives: the receive ends with the core.
        let mut n = 0;
        while sock.recv_from().await.unwrap().is_some() {
            n += 1;
        }
        n
    });
    rx.recv().unwrap();
    let report = rt.shutdown(Duration::from_secs(5));
    assert_eq!(report.ops_leaked, 0, "{report:?}");
    assert_eq!(report.tasks_aborted, 0, "{report:?}");
    assert_eq!(h.join().unwrap(), 0);
}

#[test]
fn a_sender_handle_sends_from_another_task_while_one_receives() {
    let rt = builder(1).build().unwrap();
    rt.block_on(0, || async {
        let mut r = UdpSocket::bind(localhost()).unwrap();
        let me = r.local_addr();
        let tx = r.sender();
        let t = spawn_local(async move {
            for i in 0..10u8 {
                let (res, _) = tx.send_to(vec![i], me).await;
                res.unwrap();
            }
        });
        for i in 0..10u8 {
            let d = r.recv_from().await.unwrap().unwrap();
            assert_eq!(&d[..], &[i]);
            assert_eq!(d.source(), Some(me));
        }
        t.await.unwrap();
    })
    .unwrap();
    shutdown(rt);
}

// ---------------------------------------------------------------------------
// Multicast, inside a network namespace of the test's own

/// A network namespace that lives as long as the value: `lo` up with
/// multicast on and a route for 224.0.0.0/4, and a veth pair (`rwv0`,
/// `rwv1`) with `fd00::1/64` on `rwv0`, for IPv6 groups (IPv6 multicast
/// does not loop back over `lo`). Nothing in it reaches the host's
/// interfaces.
struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace, or says why it cannot.
    fn create(tag: &str) -> Result<NetNs, String> {
        let name = format!("rw-{tag}-{}", std::process::id());
        let ns = NetNs { name };
        let n = ns.name.as_str();
        ip(&["netns", "add", n])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "link", "set", "lo", "multicast", "on"])?;
        ip(&["-n", n, "route", "add", "224.0.0.0/4", "dev", "lo"])?;
        ip(&[
            "-n", n, "link", "add", "rwv0", "type", "veth", "peer", "name", "rwv1",
        ])?;
        ip(&["-n", n, "addr", "add", "fd00::1/64", "dev", "rwv0", "nodad"])?;
        ip(&["-n", n, "link", "set", "rwv0", "up"])?;
        ip(&["-n", n, "link", "set", "rwv1", "up"])?;
        Ok(ns)
    }

    /// Runs `f` on a new thread inside the namespace (threads it starts,
    /// such as a runtime's cores, are inside too).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: `file` is an open namespace descriptor; setns only
            // changes the calling thread's network namespace.
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

/// The namespace, or `None` after printing why the test is skipped.
fn netns(tag: &str) -> Option<NetNs> {
    match NetNs::create(tag) {
        Ok(ns) => Some(ns),
        Err(why) => {
            eprintln!("SKIPPED: no network namespace for the multicast test: {why}");
            None
        }
    }
}

/// One sender, two receivers on `group`; the second leaves after the first
/// datagram. Returns what each receiver got.
fn multicast_round(group: IpAddr, send_if: MulticastInterface, join_if: MulticastInterface) {
    let rt = builder(2).build().unwrap();
    let port = 9400;
    let gaddr = SocketAddr::new(group, port);
    let (tx, rx) = std::sync::mpsc::channel();
    let join = join_if.clone();
    let receivers = rt.spawn_on(1, move || async move {
        let opts = UdpOptions::default().reuse_port(true);
        let mut a = UdpSocket::bind_with(gaddr, &opts).unwrap();
        let mut b = UdpSocket::bind_with(gaddr, &opts).unwrap();
        a.join_multicast(group, &join).unwrap();
        b.join_multicast(group, &join).unwrap();
        tx.send(()).unwrap();
        let da = a.recv_from().await.unwrap().unwrap().to_vec();
        let db = b.recv_from().await.unwrap().unwrap().to_vec();
        // b leaves; a still hears the group.
        b.leave_multicast(group, &join).unwrap();
        tx.send(()).unwrap();
        let da2 = a.recv_from().await.unwrap().unwrap().to_vec();
        let late = b.try_recv_from().map(|r| r.map(|d| d.to_vec()).ok());
        (da, db, da2, late)
    });
    rx.recv().unwrap();
    let unspecified = match group {
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        IpAddr::V6(_) => "[::]:0".parse().unwrap(),
    };
    rt.block_on(0, move || async move {
        let s = UdpSocket::bind(unspecified).unwrap();
        s.set_multicast_interface(&send_if).unwrap();
        s.set_multicast_ttl(1).unwrap();
        s.set_multicast_loop(true).unwrap();
        s.connect(gaddr).unwrap();
        let (res, _) = s.send(b"first".to_vec()).await;
        res.unwrap();
        rx.recv().unwrap();
        let (res, _) = s.send(b"second".to_vec()).await;
        res.unwrap();
    })
    .unwrap();
    let (da, db, da2, late) = receivers.join().unwrap();
    assert_eq!(da, b"first");
    assert_eq!(db, b"first");
    assert_eq!(da2, b"second");
    assert_eq!(late, None, "a receiver that left still got a datagram");
    shutdown(rt);
}

#[test]
fn ipv4_multicast_reaches_two_receivers_until_one_leaves() {
    let Some(ns) = netns("udp4") else { return };
    ns.run(|| {
        let lo = interface_index("lo").unwrap();
        let group: IpAddr = "239.1.2.3".parse().unwrap();
        // Interface by address for the sender, by index for the members.
        multicast_round(
            group,
            MulticastInterface::Addr(Ipv4Addr::LOCALHOST),
            MulticastInterface::Index(lo),
        );
        multicast_round(
            group,
            MulticastInterface::Index(lo),
            MulticastInterface::Addr(Ipv4Addr::LOCALHOST),
        );
    });
}

#[test]
fn ipv6_multicast_reaches_two_receivers_until_one_leaves() {
    let Some(ns) = netns("udp6") else { return };
    ns.run(|| {
        let veth = interface_index("rwv0").unwrap();
        multicast_round(
            "ff05::1:3".parse().unwrap(),
            MulticastInterface::Index(veth),
            MulticastInterface::Index(veth),
        );
    });
}

#[test]
fn multicast_loop_off_keeps_the_senders_host_out() {
    // Over a veth interface: on `lo` every multicast datagram comes back in
    // through `lo` itself, whatever the loop option says.
    let Some(ns) = netns("udploop") else { return };
    ns.run(|| {
        let rt = builder(1).build().unwrap();
        rt.block_on(0, || async {
            let veth = MulticastInterface::Index(interface_index("rwv0").unwrap());
            let group: IpAddr = "ff05::1:4".parse().unwrap();
            let gaddr = SocketAddr::new(group, 9401);
            let mut r = UdpSocket::bind(gaddr).unwrap();
            r.join_multicast(group, &veth).unwrap();
            let s = UdpSocket::bind("[::]:0".parse().unwrap()).unwrap();
            s.set_multicast_interface(&veth).unwrap();
            s.set_multicast_loop(false).unwrap();
            let (res, _) = s.send_to(b"silent".to_vec(), gaddr).await;
            res.unwrap();
            // The same sender with loop on proves the receiver listens.
            s.set_multicast_loop(true).unwrap();
            let (res, _) = s.send_to(b"heard".to_vec(), gaddr).await;
            res.unwrap();
            let d = r.recv_from().await.unwrap().unwrap();
            assert_eq!(&d[..], b"heard");
            assert!(r.try_recv_from().is_none());
            // An IPv4 address cannot name an IPv6 interface.
            let v4 = MulticastInterface::Addr(Ipv4Addr::LOCALHOST);
            assert!(s.set_multicast_interface(&v4).is_err());
            assert!(s.join_multicast("ff05::1:9".parse().unwrap(), &v4).is_err());
        })
        .unwrap();
        shutdown(rt);
    });
}

#[test]
fn interface_names_resolve_to_indexes() {
    assert!(interface_index("lo").unwrap() > 0);
    let err = interface_index("no-such-if0").unwrap_err();
    assert!(err.to_string().contains("no-such-if0"), "{err}");
}
