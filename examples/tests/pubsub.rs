//! pubsub as processes on loopback: TCP fan-out to two subscribers with no
//! gap, multicast to two subscribers with no gap (inside a network
//! namespace of the test's own; skipped with the reason where one cannot be
//! made), gaps counted exactly under loss injected by a UDP relay, and
//! usage errors with exit code 2.

mod common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_pubsub");

fn summary(out: &str) -> &str {
    out.lines()
        .find(|l| l.starts_with("summary: "))
        .unwrap_or_else(|| panic!("no summary in {out:?}"))
}

fn check_latency(out: &str, n: u64) {
    let lat = out
        .lines()
        .find(|l| l.starts_with("one-way latency (CLOCK_MONOTONIC): "))
        .unwrap_or_else(|| panic!("no latency line in {out:?}"));
    assert_eq!(field(lat, "n"), n, "{lat}");
    for p in ["p50=", "p90=", "p99=", "p99.9=", "max="] {
        assert!(lat.contains(p), "{p} missing in {lat:?}");
    }
}

#[test]
fn tcp_fan_out_to_two_subscribers_without_gaps() {
    let count = 3000u64;
    let mut publisher = Node::start(
        BIN,
        &[
            "publish",
            "--listen",
            "tcp://127.0.0.1:0",
            "--subscribers",
            "2",
            "--count",
            &count.to_string(),
            "--rate",
            "5000",
        ],
    );
    let ep = endpoint_in(&publisher.wait_line("publishing on"), "tcp");
    let mut subs: Vec<Node> = (0..2)
        .map(|_| Node::start(BIN, &["subscribe", "--connect", &ep, "--interval", "0"]))
        .collect();
    let (status, out) = publisher.finish();
    assert!(status.success(), "{status:?} {out}");
    assert_eq!(field(&out, "published"), count, "{out}");
    assert_eq!(field(&out, "dropped_for_slow_subscribers"), 0, "{out}");
    for s in &mut subs {
        let (status, out) = s.finish();
        assert!(status.success(), "{status:?} {out}");
        let sum = summary(&out);
        assert_eq!(field(sum, "received"), count, "{out}");
        assert_eq!(field(sum, "gaps"), 0, "{out}");
        assert_eq!(field(sum, "lost"), 0, "{out}");
        check_latency(&out, count);
    }
}

#[test]
fn multicast_to_two_subscribers_without_gaps() {
    let ns = match NetNs::create("ps") {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIPPED: no network namespace for the multicast test: {why}");
            return;
        }
    };
    let group = "udp://239.1.2.3:7400?iface=127.0.0.1&loop=1";
    let count = 2000u64;
    let mut subs: Vec<Node> = (0..2)
        .map(|_| {
            Node::start_in_ns(
                &ns.name,
                BIN,
                &["subscribe", "--listen", group, "--interval", "0"],
            )
        })
        .collect();
    for s in &mut subs {
        s.wait_line("subscribed to group 239.1.2.3");
    }
    let (status, out) = Node::start_in_ns(
        &ns.name,
        BIN,
        &[
            "publish",
            "--connect",
            group,
            "--count",
            &count.to_string(),
            "--rate",
            "5000",
        ],
    )
    .finish();
    assert!(status.success(), "{status:?} {out}");
    for s in &mut subs {
        let (status, out) = s.finish();
        assert!(status.success(), "{status:?} {out}");
        let sum = summary(&out);
        assert_eq!(field(sum, "received"), count, "{out}");
        assert_eq!(field(sum, "gaps"), 0, "{out}");
        assert_eq!(field(sum, "duplicates"), 0, "{out}");
        check_latency(&out, count);
    }
}

/// Forwards datagrams from its socket to `to`, dropping every `nth`; stops
/// when `stop` is set. Returns how many it forwarded and dropped.
fn relay(sock: UdpSocket, to: std::net::SocketAddr, nth: u64, stop: Arc<AtomicBool>) -> (u64, u64) {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let (mut seen, mut forwarded, mut dropped) = (0u64, 0u64, 0u64);
    while !stop.load(Ordering::SeqCst) {
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        seen += 1;
        if seen % nth == 0 {
            dropped += 1;
        } else {
            sock.send_to(&buf[..n], to).unwrap();
            forwarded += 1;
        }
    }
    (forwarded, dropped)
}

#[test]
fn gaps_counted_under_injected_loss() {
    let count = 1000u64;
    let mut sub = Node::start(
        BIN,
        &[
            "subscribe",
            "--listen",
            "udp://127.0.0.1:0",
            "--interval",
            "0",
        ],
    );
    let sub_ep = endpoint_in(&sub.wait_line("subscribed on"), "udp");
    let sub_addr = sub_ep.trim_start_matches("udp://").parse().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let relay_addr = sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let relay = {
        let stop = stop.clone();
        std::thread::spawn(move || relay(sock, sub_addr, 10, stop))
    };
    let (status, out) = run(
        BIN,
        &[
            "publish",
            "--connect",
            &format!("udp://{relay_addr}"),
            "--count",
            &count.to_string(),
            "--rate",
            "2000",
        ],
    );
    assert!(status.success(), "{status:?} {out}");
    let (status, sub_out) = sub.finish();
    stop.store(true, Ordering::SeqCst);
    let (_forwarded, dropped) = relay.join().unwrap();
    assert!(status.success(), "{status:?} {sub_out}");
    // Datagrams 10, 20, ... 1000 are quotes; the three end markers that
    // follow (1001-1003) pass, so the subscriber sees every loss.
    assert_eq!(dropped, count / 10);
    let sum = summary(&sub_out);
    assert_eq!(field(sum, "received"), count - count / 10, "{sub_out}");
    assert_eq!(field(sum, "gaps"), count / 10, "{sub_out}");
    assert_eq!(field(sum, "lost"), count / 10, "{sub_out}");
    assert_eq!(field(sum, "late"), 0, "{sub_out}");
    check_latency(&sub_out, count - count / 10);
}

#[test]
fn subscriber_stops_at_duration_and_on_sigterm() {
    let (status, out) = run(
        BIN,
        &[
            "subscribe",
            "--listen",
            "udp://127.0.0.1:0",
            "--duration",
            "200ms",
        ],
    );
    assert!(status.success(), "{status:?} {out}");
    assert_eq!(field(summary(&out), "received"), 0);
    let mut sub = Node::start(BIN, &["subscribe", "--listen", "udp://127.0.0.1:0"]);
    sub.wait_line("subscribed on");
    sub.signal(libc::SIGTERM);
    let (status, out) = sub.finish();
    assert!(status.success(), "{status:?} {out}");
    summary(&out);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["publish"][..],
        &["publish", "--listen", "udp://127.0.0.1:7400"],
        &["publish", "--connect", "tcp://127.0.0.1:7400"],
        &[
            "publish",
            "--listen",
            "tcp://127.0.0.1:0",
            "--connect",
            "udp://127.0.0.1:1",
        ],
        &["subscribe", "--listen", "tcp://127.0.0.1:7400"],
        &["subscribe", "--connect", "udp://127.0.0.1:7400"],
        &[
            "subscribe",
            "--connect",
            "127.0.0.1:1",
            "--back-pressure",
            "drop",
        ],
        &[
            "publish",
            "--listen",
            "127.0.0.1:0",
            "--back-pressure",
            "sometimes",
        ],
        &["publish", "--listen", "127.0.0.1:0", "--rate", "fast"],
    ] {
        let (status, _) = run(BIN, args);
        assert_eq!(status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn a_stopped_subscriber_misses_quotes_the_other_does_not() {
    let count = 5000u64;
    let mut publisher = Node::start(
        BIN,
        &[
            "publish",
            "--listen",
            "tcp://127.0.0.1:0?sndbuf=16K",
            "--subscribers",
            "2",
            "--count",
            &count.to_string(),
            "--rate",
            "5000",
            "--queue",
            "256",
        ],
    );
    let ep = endpoint_in(&publisher.wait_line("publishing on"), "tcp");
    let ep = ep.split('?').next().unwrap().to_string();
    let mut fast = Node::start(BIN, &["subscribe", "--connect", &ep, "--interval", "0"]);
    fast.wait_line("subscribed");
    let mut slow = Node::start(
        BIN,
        &[
            "subscribe",
            "--connect",
            &format!("{ep}?rcvbuf=16K"),
            "--interval",
            "0",
        ],
    );
    slow.wait_line("subscribed");
    // It reads nothing while stopped: its queue on the publisher fills.
    slow.signal(libc::SIGSTOP);
    let (status, fast_out) = fast.finish();
    assert!(status.success(), "{fast_out}");
    let sum = summary(&fast_out);
    assert_eq!(field(sum, "received"), count, "{fast_out}");
    assert_eq!(field(sum, "gaps"), 0, "{fast_out}");
    slow.signal(libc::SIGCONT);
    let (status, slow_out) = slow.finish();
    assert!(status.success(), "{slow_out}");
    let (status, pub_out) = publisher.finish();
    assert!(status.success(), "{pub_out}");
    let sum = summary(&slow_out);
    let (received, gaps) = (field(sum, "received"), field(sum, "gaps"));
    assert!(gaps > 0, "{slow_out}");
    assert_eq!(received + gaps, count, "{slow_out}");
    // Every quote it missed was dropped for it by the publisher, counted.
    assert_eq!(
        field(&pub_out, "dropped_for_slow_subscribers"),
        gaps,
        "{pub_out}"
    );
}
