//! Hostile clients against the example nodes as processes: echo-node
//! (`--wire lenprefix`: a 4-byte length, then the payload) and kv-node's
//! Redis listener. Beside healthy clients doing round trips the whole time,
//! raw sockets send garbage, huge announced lengths, hundreds of half-open
//! (slowloris) connections, bursts of connect-and-reset, and requests
//! without ever reading the replies. The node must keep serving the
//! healthy clients during each attack (their round trips are counted and
//! printed for `docs/RELIABILITY.md`), keep its memory bounded, not crash,
//! and stop cleanly on SIGTERM at the end (no task aborted, no operation
//! leaked, no core panicked). Nothing asserts on time: waits are bounds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// Bound on anything a test waits for; reached only when something broke.
const BOUND: Duration = Duration::from_secs(60);
/// Round trips each healthy client must complete while an attack is on.
const PROGRESS: u64 = 50;

struct Node {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    stderr: thread::JoinHandle<String>,
}

impl Node {
    /// Starts `bin args`, waits for its banner and finds the port in it
    /// (after `marker`), or takes `port` when given.
    fn start(
        name: &'static str,
        bin: &str,
        args: &[&str],
        marker: &str,
        port: Option<u16>,
    ) -> Node {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the node");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            text
        });
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let banner = rx.recv_timeout(BOUND).expect("the node's banner");
        let port = port.unwrap_or_else(|| {
            banner
                .split(marker)
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no port in {banner:?}"))
        });
        Node {
            name,
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stderr,
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }

    /// SIGTERM; the node must exit 0 with a clean shutdown report.
    fn stop(mut self) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with the PID of a child this test started and has
        // not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let start = Instant::now();
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            assert!(start.elapsed() < BOUND, "{} did not stop", self.name);
            thread::sleep(Duration::from_millis(20));
        };
        let stderr = std::mem::replace(&mut self.stderr, thread::spawn(String::new))
            .join()
            .unwrap_or_default();
        assert!(
            status.success(),
            "{} exited with {status}:\n{stderr}",
            self.name
        );
        let report = stderr
            .lines()
            .find(|l| l.contains("stopped: "))
            .unwrap_or_else(|| panic!("no shutdown report:\n{stderr}"));
        for clean in ["tasks_aborted: 0", "ops_leaked: 0", "cores_panicked: 0"] {
            assert!(report.contains(clean), "not a clean shutdown: {report}");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Healthy clients doing round trips until stopped. The node spreads them
/// over its cores: each one must progress, so that an attack that stalls
/// one core is seen even when the other core carries on.
struct Healthy {
    done: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Result<u64, String>>>,
}

impl Healthy {
    /// `n` clients, each sending `request` and reading exactly `reply`.
    fn start(addr: SocketAddr, n: usize, request: Vec<u8>, reply: Vec<u8>) -> Healthy {
        let done = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|i| {
                let (done, stop, request, reply) =
                    (done.clone(), stop.clone(), request.clone(), reply.clone());
                thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
                    s.set_read_timeout(Some(BOUND)).unwrap();
                    s.set_nodelay(true).unwrap();
                    let mut got = vec![0u8; reply.len()];
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        s.write_all(&request).map_err(|e| format!("write: {e}"))?;
                        s.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
                        if got != reply {
                            return Err(format!("wrong reply {:?}", String::from_utf8_lossy(&got)));
                        }
                        n += 1;
                        done[i].fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(n)
                })
            })
            .collect();
        let h = Healthy {
            done,
            stop,
            threads,
        };
        h.await_progress(0, 1);
        h
    }

    /// Round trips of the client that made the fewest.
    fn done(&self) -> u64 {
        self.done
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    fn await_progress(&self, from: u64, k: u64) {
        let start = Instant::now();
        while self.done() < from + k {
            assert!(
                start.elapsed() < BOUND,
                "a healthy client stalled ({} of {k} round trips)",
                self.done() - from
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .sum()
    }
}

/// Runs `attack` (which holds its hostile state until the healthy clients
/// progressed) and prints the figures.
fn attack(node: &mut Node, healthy: &Healthy, name: &str, attack: impl FnOnce(&Node, &Healthy)) {
    let (rss0, fds0, from, t0) = (node.rss_kib(), node.fds(), healthy.done(), Instant::now());
    attack(node, healthy);
    let (during, took) = (healthy.done() - from, t0.elapsed());
    assert!(node.alive(), "{} died under {name}", node.name);
    assert!(during > 0);
    println!(
        "ATTACK {} {name}: round trips of the slowest healthy client during the attack \
         {during} in {:.0} ms ({:.0}/s); \
         node rss {rss0} -> {} KiB, fds {fds0} -> {}",
        node.name,
        took.as_secs_f64() * 1e3,
        during as f64 / took.as_secs_f64(),
        node.rss_kib(),
        node.fds()
    );
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Sends `bytes` on a new connection and waits until the node closes it
/// (or `BOUND` passes: then the node kept it open, which the caller
/// judges).
fn send_and_wait_close(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn slowloris(node: &Node, healthy: &Healthy, first_bytes: &[u8]) {
    let mut held: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(node.addr).unwrap())
        .collect();
    let from = healthy.done();
    for (i, b) in first_bytes.iter().enumerate() {
        for s in &mut held {
            let _ = s.write_all(&[*b]);
        }
        if i > 2 && healthy.done() >= from + PROGRESS {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    healthy.await_progress(from, PROGRESS);
}

fn connect_reset(node: &Node, healthy: &Healthy, partial: &[u8]) {
    let from = healthy.done();
    let mut rounds = 0;
    while rounds < 5 || healthy.done() < from + PROGRESS {
        for i in 0..100 {
            let mut s = TcpStream::connect(node.addr).unwrap();
            if i % 2 == 0 {
                let _ = s.write_all(partial);
            }
            reset_on_close(&s);
        }
        rounds += 1;
        assert!(rounds < 10_000);
    }
}

/// SO_LINGER 0: closing the socket sends a reset, not a FIN.
fn reset_on_close(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this test owns, with a pointer to a
    // live `linger` and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
}

/// Writes `request` in a loop without reading, until the node stops
/// reading (the write blocks) or `cap` bytes went; returns the bytes
/// written and whether the writer was stalled.
fn write_without_read(node: &Node, healthy: &Healthy, request: &[u8], cap: u64) -> (u64, bool) {
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let batch: Vec<u8> = request.repeat(4096 / request.len().max(1) + 1);
    let mut written = 0u64;
    let stalled = loop {
        match s.write_all(&batch) {
            Ok(()) => written += batch.len() as u64,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break true
            }
            Err(_) => break false,
        }
        if written >= cap {
            break false;
        }
    };
    let from = healthy.done();
    healthy.await_progress(from, PROGRESS);
    (written, stalled)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn lenprefix(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// echo-node on two cores, length-prefixed, messages up to 64 KiB.
fn start_echo() -> Node {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    Node::start(
        "echo-node",
        env!("CARGO_BIN_EXE_echo-node"),
        &[
            "--cores",
            "2",
            "--listen",
            &listen,
            "--wire",
            "lenprefix",
            "--max-message",
            "65536",
        ],
        "",
        Some(port),
    )
}

#[test]
fn echo_node_keeps_serving_under_hostile_clients() {
    let mut node = start_echo();
    let msg = lenprefix(&[0x5a; 60]);
    let healthy = Healthy::start(node.addr, 4, msg.clone(), msg.clone());
    let rss_start = node.rss_kib();
    attack(
        &mut node,
        &healthy,
        "announced length 4 GiB",
        |node, healthy| {
            let from = healthy.done();
            for _ in 0..20 {
                assert!(
                    send_and_wait_close(node.addr, &u32::MAX.to_le_bytes()),
                    "the node closes a connection announcing 4 GiB"
                );
            }
            healthy.await_progress(from, 1);
        },
    );
    attack(&mut node, &healthy, "random garbage", |node, healthy| {
        let from = healthy.done();
        for i in 0..20 {
            // Lengths from noise are mostly above the limit: closed.
            let mut g = noise(i, 4096);
            g[3] |= 0x80;
            assert!(send_and_wait_close(node.addr, &g), "garbage closes");
        }
        healthy.await_progress(from, 1);
    });
    attack(
        &mut node,
        &healthy,
        "200 slowloris connections",
        |node, healthy| slowloris(node, healthy, &lenprefix(&[1; 64])),
    );
    attack(
        &mut node,
        &healthy,
        "connect-and-reset bursts",
        |node, healthy| connect_reset(node, healthy, &msg[..10]),
    );
    let total = healthy.finish();
    println!(
        "echo-node: healthy round trips {total}, 0 errors; rss {rss_start} -> {} KiB",
        node.rss_kib()
    );
    node.stop();
}

/// A client that sends without reading: the node's connection task waits
/// for its send, and the socket's multishot receive must stop taking
/// buffers from the core's shared ring (the runtime throttles a receive
/// whose owner leaves a sixteenth of the ring untaken) instead of starving
/// every other client of that core, which it did before the throttle.
#[test]
fn echo_node_keeps_serving_when_a_client_sends_without_reading() {
    let mut node = start_echo();
    let msg = lenprefix(&[0x5a; 60]);
    let healthy = Healthy::start(node.addr, 4, msg.clone(), msg);
    attack(
        &mut node,
        &healthy,
        "write without read",
        |node, healthy| {
            let rss0 = node.rss_kib();
            let (written, stalled) =
                write_without_read(node, healthy, &lenprefix(&[7; 1000]), 512 << 20);
            let growth = node.rss_kib().saturating_sub(rss0);
            println!("echo-node write without read: {written} bytes taken before the writer stalled ({stalled}); node rss growth {growth} KiB");
            assert!(
                stalled,
                "the node read {written} bytes without pushing back"
            );
            assert!(growth < 64 << 10, "node rss grew by {growth} KiB");
        },
    );
    healthy.finish();
    node.stop();
}

fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend(format!("${}\r\n", a.len()).into_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// kv-node on two cores.
fn start_kv() -> Node {
    Node::start(
        "kv-node",
        env!("CARGO_BIN_EXE_kv-node"),
        &["--cores", "2", "--listen", "tcp://127.0.0.1:0"],
        "tcp://127.0.0.1:",
        None,
    )
}

#[test]
fn kv_node_keeps_serving_under_hostile_clients() {
    let mut node = start_kv();
    let set = resp(&[b"SET", b"healthy", b"value"]);
    let healthy = Healthy::start(node.addr, 4, set.clone(), b"+OK\r\n".to_vec());
    let rss_start = node.rss_kib();
    attack(&mut node, &healthy, "huge bulk lengths", |node, healthy| {
        let from = healthy.done();
        for bad in [
            &b"*2\r\n$3\r\nGET\r\n$99999999999\r\n"[..],
            b"*2\r\n$3\r\nGET\r\n$2147483648\r\n",
            b"*99999999999\r\n",
            b"*2\r\n$-5\r\n",
        ] {
            for _ in 0..5 {
                assert!(
                    send_and_wait_close(node.addr, bad),
                    "{:?} closes",
                    String::from_utf8_lossy(bad)
                );
            }
        }
        healthy.await_progress(from, 1);
    });
    attack(&mut node, &healthy, "garbage RESP", |node, healthy| {
        let from = healthy.done();
        for i in 0..20 {
            let mut g = noise(i, 4096);
            g[0] = b'*';
            g[1] = b'x';
            assert!(send_and_wait_close(node.addr, &g), "garbage closes");
        }
        healthy.await_progress(from, 1);
    });
    attack(
        &mut node,
        &healthy,
        "200 slowloris connections",
        |node, healthy| slowloris(node, healthy, &resp(&[b"SET", b"slow", &[b'x'; 200]])),
    );
    attack(
        &mut node,
        &healthy,
        "connect-and-reset bursts",
        |node, healthy| connect_reset(node, healthy, b"*3\r\n$3\r\nSET\r\n$1"),
    );
    let total = healthy.finish();
    println!(
        "kv-node: healthy round trips {total}, 0 errors; rss {rss_start} -> {} KiB",
        node.rss_kib()
    );
    node.stop();
}

/// As for echo-node: a client that sends without reading must not stall
/// the other clients of its core.
#[test]
fn kv_node_keeps_serving_when_a_client_sends_without_reading() {
    let mut node = start_kv();
    let set = resp(&[b"SET", b"healthy", b"value"]);
    let healthy = Healthy::start(node.addr, 4, set, b"+OK\r\n".to_vec());
    attack(
        &mut node,
        &healthy,
        "write without read",
        |node, healthy| {
            let rss0 = node.rss_kib();
            let get = resp(&[b"GET", b"healthy"]);
            let (written, stalled) = write_without_read(node, healthy, &get, 256 << 20);
            let growth = node.rss_kib().saturating_sub(rss0);
            println!("kv-node write without read: {written} bytes taken before the writer stalled ({stalled}); node rss growth {growth} KiB");
            assert!(
                stalled,
                "the node read {written} bytes without pushing back"
            );
            assert!(growth < 64 << 10, "node rss grew by {growth} KiB");
        },
    );
    healthy.finish();
    node.stop();
}
