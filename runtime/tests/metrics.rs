//! The metrics endpoint on loopback: scraped while an echo load runs, read
//! with a Prometheus text parser; refusals, slow and garbage clients; curl.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value};
use ringwire_runtime::net::TcpListener;
use ringwire_runtime::{spawn_local, Placement, Runtime};

/// Two unpinned cores with the endpoint on a free port and an echo server
/// on core 1; returns the runtime and the echo address.
fn echo_runtime() -> (Runtime, SocketAddr) {
    let rt = Runtime::builder()
        .placement(Placement::Unpinned(2))
        .recv_buffers(64)
        .send_buffers(4)
        .metrics(SocketAddr::from(([127, 0, 0, 1], 0)))
        .build()
        .expect("runtime starts");
    let echo = rt
        .block_on(1, || async {
            let mut l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = l.local_addr();
            spawn_local(async move {
                while let Some(Ok(mut conn)) = l.accept().await {
                    spawn_local(async move {
                        while let Ok(Some(buf)) = conn.recv().await {
                            if conn.send_all(buf).await.0.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
            addr
        })
        .unwrap();
    (rt, echo)
}

/// Sends `request` raw and reads the whole answer (the server closes).
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = StdStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// `GET path`: the status line and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let reply = exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: */*\r\n\r\n").as_bytes(),
    );
    let (head, body) = reply.split_once("\r\n\r\n").expect("a complete response");
    let status = head.lines().next().unwrap().to_string();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(length, body.len(), "Content-Length matches the body");
    assert!(head.contains("Connection: close"));
    (status, body.to_string())
}

fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("valid exposition format")
}

fn on_core<'a>(s: &'a Scrape, metric: &str, core: &str) -> &'a Sample {
    s.samples
        .iter()
        .find(|x| x.metric == metric && x.labels.get("core") == Some(core))
        .unwrap_or_else(|| panic!("{metric} for core {core} is missing"))
}

fn counter(s: &Scrape, metric: &str, core: &str) -> f64 {
    match on_core(s, metric, core).value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{metric} is not a single value: {other:?}"),
    }
}

/// The `+Inf` bucket of a histogram (its count).
fn histogram_count(s: &Scrape, metric: &str, core: &str) -> f64 {
    match &on_core(s, metric, core).value {
        Value::Histogram(buckets) => {
            assert!(!buckets.is_empty());
            for pair in buckets.windows(2) {
                assert!(pair[0].less_than < pair[1].less_than, "bounds increase");
                assert!(pair[0].count <= pair[1].count, "buckets are cumulative");
            }
            let last = buckets.last().unwrap();
            assert!(last.less_than.is_infinite(), "the last bucket is +Inf");
            last.count
        }
        other => panic!("{metric} is not a histogram: {other:?}"),
    }
}

/// A client that echoes 64-byte messages until told to stop, counting round
/// trips.
fn load(
    echo: SocketAddr,
    stop: Arc<AtomicBool>,
    trips: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut s = StdStream::connect(echo).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let msg = [7u8; 64];
        let mut back = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            s.write_all(&msg).unwrap();
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, msg);
            trips.fetch_add(1, Ordering::Relaxed);
        }
    })
}

fn wait_for_trips(trips: &AtomicU64, at_least: u64) {
    while trips.load(Ordering::Relaxed) < at_least {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn counters_and_histograms_move_under_load() {
    let (rt, echo) = echo_runtime();
    let addr = rt.metrics_addr().expect("the endpoint runs");
    let stop = Arc::new(AtomicBool::new(false));
    let trips = Arc::new(AtomicU64::new(0));
    let client = load(echo, stop.clone(), trips.clone());
    wait_for_trips(&trips, 100);
    let first = scrape(addr);
    let seen = trips.load(Ordering::Relaxed);
    wait_for_trips(&trips, seen + 500);
    let second = scrape(addr);
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();

    // Core 1 serves the echo connection.
    for metric in [
        "ringwire_ops_completed_total",
        "ringwire_bytes_received_total",
        "ringwire_bytes_sent_total",
        "ringwire_loop_turns_total",
    ] {
        let (a, b) = (counter(&first, metric, "1"), counter(&second, metric, "1"));
        assert!(b > a, "{metric} moved: {a} -> {b}");
    }
    assert!(counter(&second, "ringwire_bytes_received_total", "1") >= 64.0 * 600.0);
    assert_eq!(counter(&second, "ringwire_accepts_total", "1"), 1.0);
    assert_eq!(counter(&second, "ringwire_streams_receiving", "1"), 1.0);
    for metric in [
        "ringwire_loop_turn_seconds",
        "ringwire_park_seconds",
        "ringwire_sqes_per_enter",
        "ringwire_cqes_per_reap",
    ] {
        let (a, b) = (
            histogram_count(&first, metric, "1"),
            histogram_count(&second, metric, "1"),
        );
        assert!(b > a, "{metric} count moved: {a} -> {b}");
    }
    // Both cores report, with HELP and TYPE for the families.
    assert!(on_core(&second, "ringwire_tasks", "0").labels.get("core") == Some("0"));
    assert!(second.docs.contains_key("ringwire_loop_turn_seconds"));
    rt.shutdown(Duration::from_secs(2));
}

#[test]
fn the_summary_has_a_line_per_core() {
    let (rt, _) = echo_runtime();
    let addr = rt.metrics_addr().unwrap();
    let (status, first) = get(addr, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(first.contains("first look"), "{first}");
    let (_, second) = get(addr, "/");
    let rows: Vec<&str> = second.lines().skip(2).collect();
    assert_eq!(rows.len(), 2, "{second}");
    assert!(rows[0].trim_start().starts_with('0') && rows[1].trim_start().starts_with('1'));
    rt.shutdown(Duration::from_secs(2));
}

#[test]
fn bad_requests_get_errors_and_slow_clients_block_nobody() {
    let (rt, _) = echo_runtime();
    let addr = rt.metrics_addr().unwrap();
    // A client that connects and says nothing, and one that sends half a
    // request: neither holds up the others.
    let idle = StdStream::connect(addr).unwrap();
    let mut half = StdStream::connect(addr).unwrap();
    half.write_all(b"GET /metr").unwrap();

    assert_eq!(get(addr, "/nope").0, "HTTP/1.1 404 Not Found");
    let r = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
    let r = exchange(addr, b"\x16\x03\x01garbage\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    // A request head larger than the limit, with no end in sight.
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    big.resize(64 * 1024, b'a');
    let mut s = StdStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may close before taking every byte: a failed write is fine.
    let _ = s.write_all(&big);
    let mut r = Vec::new();
    let _ = s.read_to_end(&mut r);
    let r = String::from_utf8_lossy(&r);
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    // A client that closes without a request.
    drop(StdStream::connect(addr).unwrap());

    let (status, _) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    drop((idle, half));
    rt.shutdown(Duration::from_secs(2));
}

#[test]
fn curl_reads_the_endpoint() {
    let Ok(out) = std::process::Command::new("curl").arg("--version").output() else {
        eprintln!("curl is not installed; skipping");
        return;
    };
    assert!(out.status.success());
    let (rt, _) = echo_runtime();
    let addr = rt.metrics_addr().unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "20"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = String::from_utf8(out.stdout).unwrap();
    assert!(body.contains("# TYPE ringwire_loop_turn_seconds histogram"));
    assert!(body.contains("ringwire_loop_turns_total{core=\"0\"}"));
    rt.shutdown(Duration::from_secs(2));
}

#[test]
fn a_taken_address_fails_the_build() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = Runtime::builder()
        .placement(Placement::Unpinned(1))
        .recv_buffers(64)
        .send_buffers(4)
        .metrics(taken.local_addr().unwrap())
        .build()
        .err()
        .expect("the build fails");
    assert!(
        err.to_string()
            .starts_with("metrics endpoint: listening on"),
        "{err}"
    );
}
