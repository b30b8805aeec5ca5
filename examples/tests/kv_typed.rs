//! kv-node's typed protocol and replication, with nodes as processes on
//! loopback: driven by `KvClient` on a ringwire runtime in the test, and
//! by the `kv-client` binary.
//!
//! Every node runs on two cores on ports the kernel picks (it prints the
//! endpoints it bound) and is stopped with SIGTERM, which must end it
//! cleanly.

mod common;

use common::{run_bounded, wait_for};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ringwire::runtime::{spawn_local, time, Placement, Runtime};
use ringwire::transports::{connect, Endpoint};
use ringwire_examples::kv::client::{CasOutcome, KvClient, KvError};
use ringwire_examples::kv::messages::{typed_config, ErrorKind, KvReply, KvRequest};
use ringwire_examples::kv::shard::shard_of;

const NODE: &str = env!("CARGO_BIN_EXE_kv-node");
const CLIENT: &str = env!("CARGO_BIN_EXE_kv-client");
/// Bound on anything a test waits for; only ever reached when something is
/// broken.
const PATIENCE: Duration = Duration::from_secs(60);

/// A running kv-node.
struct Node {
    child: Child,
    /// What it printed on stdout: "serving X on ENDPOINT" lines, by X.
    endpoints: HashMap<String, String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Node {
    /// Starts `kv-node --cores 2` with every listener on a port the kernel
    /// picks (the typed one unless `extra` places it), plus `extra`, and
    /// waits for it to print where it listens (`lines` lines of "kv-node:
    /// serving ...").
    fn start(extra: &[&str], lines: usize) -> Node {
        let mut command = Command::new(NODE);
        command.args(["--cores", "2", "--listen", "tcp://127.0.0.1:0"]);
        if !extra.contains(&"--listen-typed") {
            command.args(["--listen-typed", "tcp://127.0.0.1:0"]);
        }
        let mut child = command
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kv-node");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
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
        let mut endpoints = HashMap::new();
        for _ in 0..lines {
            let line = rx
                .recv_timeout(PATIENCE)
                .expect("kv-node prints where it listens");
            let Some(rest) = line.strip_prefix("kv-node: serving ") else {
                // "kv-node: replicating ENDPOINT"
                assert!(line.starts_with("kv-node: replicating "), "{line}");
                continue;
            };
            let (what, rest) = rest
                .split_once(" on ")
                .unwrap_or_else(|| panic!("no endpoint in {line:?}"));
            let endpoint = rest.split_whitespace().next().unwrap_or_default();
            endpoints.insert(what.to_string(), endpoint.to_string());
        }
        Node {
            child,
            endpoints,
            stderr: Some(stderr),
        }
    }

    /// The endpoint of the listener serving `what` ("typed operations",
    /// "replication").
    fn endpoint(&self, what: &str) -> Endpoint {
        self.endpoints
            .get(what)
            .unwrap_or_else(|| panic!("no {what} listener in {:?}", self.endpoints))
            .parse()
            .expect("the node prints an endpoint that parses")
    }

    fn typed(&self) -> Endpoint {
        self.endpoint("typed operations")
    }

    /// Stops the node with SIGTERM and checks that it shut down cleanly;
    /// returns what it logged.
    fn stop(mut self) -> String {
        let pid = i32::try_from(self.child.id()).expect("pid fits an i32");
        // SAFETY: kill(2) with a PID this test started and has not reaped.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM to kv-node");
        let status = wait_for(&mut self.child, PATIENCE).expect("kv-node stops after SIGTERM");
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        assert!(status.success(), "kv-node exited with {status}:\n{stderr}");
        let report = stderr
            .lines()
            .find_map(|l| l.strip_prefix("kv-node stopped: "))
            .unwrap_or_else(|| panic!("no shutdown report:\n{stderr}"));
        for clean in ["tasks_aborted: 0", "ops_leaked: 0", "cores_panicked: 0"] {
            assert!(
                report.contains(clean),
                "not a clean shutdown: {report}\n{stderr}"
            );
        }
        stderr
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

/// Runs `f` with a client connected to `endpoint`, on a one-core runtime.
fn with_client<T, F, Fut>(endpoint: &Endpoint, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce(KvClient) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let rt = Runtime::builder()
        .placement(Placement::Unpinned(1))
        .build()
        .expect("client runtime");
    let endpoint = endpoint.clone();
    let out = rt
        .spawn_on(0, move || async move {
            let kv = KvClient::connect(&endpoint)
                .await
                .expect("connect to kv-node");
            let out = f(kv.clone()).await;
            kv.close().await;
            out
        })
        .join_timeout(PATIENCE)
        .expect("the client finishes")
        .expect("the client task does not panic");
    rt.shutdown(Duration::from_secs(5));
    out
}

/// Keys `prefix0`, `prefix1`, ... that a two-core node keeps on `core`.
fn keys_on(core: usize, prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| shard_of(k.as_bytes(), 2) == core)
        .take(n)
        .collect()
}

fn node_error(r: Result<impl std::fmt::Debug, KvError>) -> ErrorKind {
    match r {
        Err(KvError::Node { kind, .. }) => kind,
        other => panic!("expected a node error, got {other:?}"),
    }
}

#[test]
fn typed_operations_on_keys_of_both_cores() {
    let node = Node::start(&[], 2);
    // Whichever core accepts the connection, one of the two keys lives on
    // the other core and its requests are forwarded.
    let mut keys = keys_on(0, "here", 1);
    keys.extend(keys_on(1, "there", 1));
    with_client(&node.typed(), move |kv| async move {
        for key in &keys {
            let k = key.as_bytes();
            assert_eq!(kv.get(k).await.unwrap(), None, "{key}");
            kv.put(k, b"v1", None).await.unwrap();
            assert_eq!(kv.get(k).await.unwrap().as_deref(), Some(&b"v1"[..]));
            // Compare-and-set: a wrong expectation fails and says what is
            // there; the right one swaps.
            assert_eq!(
                kv.cas(k, Some(b"nope"), b"v2").await.unwrap(),
                CasOutcome::Mismatch(Some(b"v1".to_vec()))
            );
            assert_eq!(kv.get(k).await.unwrap().as_deref(), Some(&b"v1"[..]));
            assert_eq!(
                kv.cas(k, Some(b"v1"), b"v2").await.unwrap(),
                CasOutcome::Swapped
            );
            assert_eq!(kv.get(k).await.unwrap().as_deref(), Some(&b"v2"[..]));
            // "Only if absent".
            assert_eq!(
                kv.cas(k, None, b"v3").await.unwrap(),
                CasOutcome::Mismatch(Some(b"v2".to_vec()))
            );
            assert!(kv.delete(k).await.unwrap());
            assert!(!kv.delete(k).await.unwrap());
            assert_eq!(kv.cas(k, None, b"10").await.unwrap(), CasOutcome::Swapped);
            // Increment.
            assert_eq!(kv.incr(k, 5).await.unwrap(), 15);
            assert_eq!(kv.incr(k, -20).await.unwrap(), -5);
            kv.put(k, b"text", None).await.unwrap();
            assert_eq!(node_error(kv.incr(k, 1).await), ErrorKind::NotInteger);
            kv.put(k, i64::MAX.to_string().as_bytes(), None)
                .await
                .unwrap();
            assert_eq!(node_error(kv.incr(k, 1).await), ErrorKind::Overflow);
            // A time to live of 0 is refused; nothing is written.
            assert_eq!(
                node_error(kv.put(k, b"x", Some(Duration::ZERO)).await),
                ErrorKind::BadRequest
            );
            assert_eq!(
                kv.get(k).await.unwrap(),
                Some(i64::MAX.to_string().into_bytes())
            );
        }
    });
    node.stop();
}

#[test]
fn many_calls_in_flight_on_one_connection() {
    let node = Node::start(&[], 2);
    let keys = [keys_on(0, "n", 1).remove(0), keys_on(1, "n", 1).remove(0)];
    let keys2 = keys.clone();
    let sums = with_client(&node.typed(), move |kv| async move {
        // 200 increments of each key, all started before any is awaited.
        let tasks: Vec<_> = (0..400)
            .map(|i| {
                let kv = kv.clone();
                let key = keys2[i % 2].clone();
                spawn_local(async move { kv.incr(key.as_bytes(), 1).await.unwrap() })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.expect("task"));
        }
        let mut sums = Vec::new();
        for key in &keys2 {
            let v = kv.get(key.as_bytes()).await.unwrap().unwrap();
            sums.push(String::from_utf8(v).unwrap());
        }
        answers.sort_unstable();
        (answers, sums)
    });
    // Every increment ran exactly once: the answers are 1..=200 twice.
    let expected: Vec<i64> = {
        let mut v: Vec<i64> = (1..=200).chain(1..=200).collect();
        v.sort_unstable();
        v
    };
    assert_eq!(sums.0, expected, "{keys:?}");
    assert_eq!(sums.1, ["200", "200"]);
    node.stop();
}

#[test]
fn a_bad_message_costs_only_itself() {
    let node = Node::start(&[], 2);
    let endpoint = node.typed();
    with_client(&endpoint, |kv| async move {
        // A reply sent where a request belongs is dropped by the node (it
        // is not a request); the connection goes on serving calls.
        kv.connection()
            .send(&KvReply::Stored)
            .await
            .expect("queued");
        // A request sent one-way (nobody awaits it) is not run.
        kv.connection()
            .send(&KvRequest::Put {
                key: b"oneway".to_vec(),
                value: b"x".to_vec(),
                ttl_ms: None,
            })
            .await
            .expect("queued");
        kv.put(b"after", b"ok", None).await.unwrap();
        assert_eq!(kv.get(b"oneway").await.unwrap(), None);
        assert_eq!(kv.get(b"after").await.unwrap().as_deref(), Some(&b"ok"[..]));
    });
    // A peer with another schema is refused at the handshake; the node
    // goes on.
    let rt = Runtime::builder()
        .placement(Placement::Unpinned(1))
        .build()
        .expect("runtime");
    let ep = endpoint.clone();
    let refused = rt
        .block_on(0, move || async move {
            let other = ringwire_examples::kv::messages::replication_config();
            connect(&ep, &other)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .expect("task");
    assert!(refused.is_err(), "{refused:?}");
    let ep = endpoint.clone();
    rt.block_on(0, move || async move {
        let conn = connect(&ep, &typed_config())
            .await
            .expect("a typed client still connects");
        let kv = KvClient::new(conn);
        assert_eq!(kv.get(b"after").await.unwrap().as_deref(), Some(&b"ok"[..]));
        kv.close().await;
    })
    .expect("task");
    rt.shutdown(Duration::from_secs(5));
    node.stop();
}

#[test]
fn unix_socket_listener() {
    let path = std::env::temp_dir().join(format!("kv-typed-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let ep = format!("unix://{}", path.display());
    let node = Node::start(&["--listen-typed", &ep], 2);
    assert_eq!(node.typed().to_string(), ep);
    with_client(&node.typed(), |kv| async move {
        kv.put(b"k", b"over unix", None).await.unwrap();
        assert_eq!(
            kv.get(b"k").await.unwrap().as_deref(),
            Some(&b"over unix"[..])
        );
    });
    node.stop();
    let _ = std::fs::remove_file(&path);
}

fn kv_client(endpoint: &Endpoint, args: &[&str]) -> (bool, String, String) {
    let out = run_bounded(
        Command::new(CLIENT)
            .args(["--node", &endpoint.to_string()])
            .args(args),
        PATIENCE,
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[test]
fn the_kv_client_binary() {
    let node = Node::start(&[], 2);
    let ep = node.typed();
    let ok = |args: &[&str], expected: &str| {
        let (success, out, err) = kv_client(&ep, args);
        assert!(success, "{args:?}: {err}");
        assert_eq!(out, expected, "{args:?}");
    };
    ok(&["get", "city"], "(nil)");
    ok(&["put", "city", "Lyon"], "OK");
    ok(&["get", "city"], "Lyon");
    ok(
        &["cas", "city", "--expected", "Paris", "Nice"],
        "mismatch Lyon",
    );
    ok(&["cas", "city", "--expected", "Lyon", "Nice"], "swapped");
    ok(&["cas", "city", "--absent", "Metz"], "mismatch Nice");
    ok(&["cas", "town", "--absent", "Metz"], "swapped");
    ok(&["incr", "count"], "1");
    ok(&["incr", "count", "-5"], "-4");
    ok(&["delete", "count"], "1");
    ok(&["delete", "count"], "0");
    let (success, _, err) = kv_client(&ep, &["incr", "city"]);
    assert!(!success);
    assert!(err.contains("not an integer"), "{err}");
    // A bounded bench: every call answered.
    let (success, out, err) = kv_client(
        &ep,
        &[
            "bench",
            "--connections",
            "2",
            "--depth",
            "4",
            "--requests",
            "2000",
            "--keys",
            "100",
            "--cores",
            "1",
        ],
    );
    assert!(success, "{err}");
    assert!(out.contains("ops: 2000  errors: 0"), "{out}");
    assert!(out.contains("latency us: p50"), "{out}");
    // The key space was filled first (values of 64 bytes: `v`s, or `w`s
    // where the bench put).
    for k in ["key:0", "key:63", "key:64", "key:99"] {
        let (success, out, err) = kv_client(&ep, &["get", k]);
        assert!(success, "{err}");
        assert!(
            out.len() == 64 && out.bytes().all(|b| b == b'v' || b == b'w'),
            "{k}: {out}"
        );
    }
    node.stop();
}

// Replication.

/// Waits until `key` reads `expected` through `kv` (bounded by PATIENCE).
async fn until(kv: &KvClient, key: &str, expected: Option<&str>) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = kv.get(key.as_bytes()).await.expect("get on the replica");
        if now.as_deref() == expected.map(str::as_bytes) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} is {now:?} on the replica, not {expected:?}"
        );
        time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every key of `keys` as it reads through `endpoint`.
fn read_all(endpoint: &Endpoint, keys: Vec<String>) -> Vec<(String, Option<Vec<u8>>)> {
    with_client(endpoint, move |kv| async move {
        let mut out = Vec::new();
        for k in keys {
            let v = kv.get(k.as_bytes()).await.expect("get");
            out.push((k, v));
        }
        out
    })
}

/// Writes of every kind on keys of both shards; returns the keys touched.
fn write_mix(endpoint: &Endpoint, round: u32) -> Vec<String> {
    let keys: Vec<String> = keys_on(0, &format!("r{round}a"), 6)
        .into_iter()
        .chain(keys_on(1, &format!("r{round}b"), 6))
        .collect();
    let touched = keys.clone();
    with_client(endpoint, move |kv| async move {
        for (i, k) in keys.iter().enumerate() {
            let k = k.as_bytes();
            match i % 6 {
                0 => kv.put(k, b"plain", None).await.unwrap(),
                1 => kv
                    .put(k, b"expiring", Some(Duration::from_secs(3600)))
                    .await
                    .map(drop)
                    .unwrap(),
                2 => {
                    kv.put(k, b"old", None).await.unwrap();
                    assert_eq!(
                        kv.cas(k, Some(b"old"), b"new").await.unwrap(),
                        CasOutcome::Swapped
                    );
                    // A failed compare-and-set writes nothing.
                    assert!(matches!(
                        kv.cas(k, Some(b"old"), b"never").await.unwrap(),
                        CasOutcome::Mismatch(_)
                    ));
                }
                3 => {
                    kv.incr(k, 40).await.unwrap();
                    kv.incr(k, 2).await.unwrap();
                }
                4 => {
                    kv.put(k, b"doomed", None).await.unwrap();
                    assert!(kv.delete(k).await.unwrap());
                }
                _ => {
                    kv.put(k, b"first", None).await.unwrap();
                    kv.put(k, b"second", None).await.unwrap();
                }
            }
        }
    });
    touched
}

/// Writes a marker key on each shard of the primary, last, and waits for
/// both on the replica: each shard's stream is in order, so everything
/// written before them has been applied too.
fn sync_markers(primary: &Endpoint, replica: &Endpoint, tag: &str) {
    let markers = [
        keys_on(0, "marker", 1).remove(0),
        keys_on(1, "marker", 1).remove(0),
    ];
    let m = markers.clone();
    let tag2 = tag.to_string();
    with_client(primary, move |kv| async move {
        for k in &m {
            kv.put(k.as_bytes(), tag2.as_bytes(), None).await.unwrap();
        }
    });
    let tag = tag.to_string();
    with_client(replica, move |kv| async move {
        for k in &markers {
            until(&kv, k, Some(&tag)).await;
        }
    });
}

fn start_primary(replication: &str) -> Node {
    Node::start(&["--listen-replication", replication], 3)
}

fn start_replica(primary: &Node) -> Node {
    let ep = primary.endpoint("replication").to_string();
    Node::start(&["--replica-of", &ep], 3)
}

#[test]
fn writes_on_the_primary_reach_the_replica_which_refuses_writes() {
    let primary = start_primary("tcp://127.0.0.1:0");
    // Keys written before the replica exists come with its full resync.
    let mut keys = write_mix(&primary.typed(), 0);
    let replica = start_replica(&primary);
    keys.extend(write_mix(&primary.typed(), 1));
    sync_markers(&primary.typed(), &replica.typed(), "one");
    let on_primary = read_all(&primary.typed(), keys.clone());
    assert_eq!(read_all(&replica.typed(), keys), on_primary);
    // What was written reads as written (not only "the same").
    assert!(on_primary.iter().any(|(_, v)| v.as_deref() == Some(b"42")));
    assert!(on_primary.iter().any(|(_, v)| v.as_deref() == Some(b"new")));
    assert!(on_primary.iter().any(|(_, v)| v.is_none()));
    // The replica is read-only, over both protocols.
    with_client(&replica.typed(), |kv| async move {
        assert_eq!(
            node_error(kv.put(b"x", b"y", None).await),
            ErrorKind::ReadOnly
        );
        assert_eq!(node_error(kv.incr(b"x", 1).await), ErrorKind::ReadOnly);
        assert_eq!(kv.get(b"x").await.unwrap(), None);
    });
    let redis = replica.endpoint("Redis").to_string();
    let addr = redis.trim_start_matches("tcp://");
    let mut s = std::net::TcpStream::connect(addr).expect("redis port of the replica");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$1\r\ny\r\n")
        .unwrap();
    let mut buf = [0u8; 128];
    let n = s.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"-READONLY"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(s);
    replica.stop();
    primary.stop();
}

#[test]
fn a_restarted_replica_catches_up() {
    let primary = start_primary("tcp://127.0.0.1:0");
    let replica = start_replica(&primary);
    let mut keys = write_mix(&primary.typed(), 0);
    sync_markers(&primary.typed(), &replica.typed(), "one");
    replica.stop();
    // Written while the replica is down: new keys, and changes to keys it
    // held (deleted, overwritten).
    keys.extend(write_mix(&primary.typed(), 1));
    let old = keys.clone();
    with_client(&primary.typed(), move |kv| async move {
        for k in old.iter().take(3) {
            kv.delete(k.as_bytes()).await.unwrap();
        }
        kv.put(old[6].as_bytes(), b"rewritten", None).await.unwrap();
    });
    let replica = start_replica(&primary);
    sync_markers(&primary.typed(), &replica.typed(), "two");
    let on_primary = read_all(&primary.typed(), keys.clone());
    assert_eq!(read_all(&replica.typed(), keys), on_primary);
    assert!(on_primary
        .iter()
        .any(|(_, v)| v.as_deref() == Some(b"rewritten")));
    // And it goes on following.
    keys = write_mix(&primary.typed(), 2);
    sync_markers(&primary.typed(), &replica.typed(), "three");
    let on_primary = read_all(&primary.typed(), keys.clone());
    assert_eq!(read_all(&replica.typed(), keys), on_primary);
    replica.stop();
    primary.stop();
}

#[test]
fn a_restarted_primary_makes_the_replica_resync() {
    // The replication listener must come back on the same port: take one
    // the kernel hands out, then free it for the primary.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let mut primary = start_primary(&endpoint);
    let replica = start_replica(&primary);
    let before = write_mix(&primary.typed(), 0);
    sync_markers(&primary.typed(), &replica.typed(), "one");
    assert!(read_all(&replica.typed(), before.clone())
        .iter()
        .any(|(_, v)| v.is_some()));
    // Killed, not stopped: the replica's session is lost without a close,
    // and the restarted primary holds no session for it.
    let _ = primary.child.kill();
    let _ = primary.child.wait();
    primary = start_primary(&endpoint);
    let after = write_mix(&primary.typed(), 1);
    sync_markers(&primary.typed(), &replica.typed(), "two");
    // The replica holds what the new primary holds: nothing of before.
    let replica_before = read_all(&replica.typed(), before);
    assert!(
        replica_before.iter().all(|(_, v)| v.is_none()),
        "{replica_before:?}"
    );
    let on_primary = read_all(&primary.typed(), after.clone());
    assert_eq!(read_all(&replica.typed(), after), on_primary);
    let log = replica.stop();
    assert_eq!(log.matches("full resync epoch=").count(), 2, "{log}");
    assert!(log.contains("the primary lost the session"), "{log}");
    primary.stop();
}

/// A TCP relay on loopback whose connections the test can cut (both ends
/// at once), as a network failure would, while both nodes live on.
struct Relay {
    port: u16,
    links: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn start(to: std::net::SocketAddr) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("relay port");
        let port = listener.local_addr().expect("relay address").port();
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = links.clone();
        // Detached: it ends with the test process.
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(to) else {
                    continue;
                };
                let pairs = [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ];
                for pair in pairs {
                    if let (Ok(mut from), Ok(mut into)) = pair {
                        thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut into);
                            let _ = into.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
                let mut l = held.lock().unwrap_or_else(|p| p.into_inner());
                l.push(client);
                l.push(server);
            }
        });
        Relay { port, links }
    }

    /// Cuts every connection relayed so far; returns how many there were.
    fn cut(&self) -> usize {
        let mut l = self.links.lock().unwrap_or_else(|p| p.into_inner());
        for s in l.iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let n = l.len() / 2;
        l.clear();
        n
    }
}

#[test]
fn a_cut_link_resumes_the_stream_without_a_resync() {
    let primary = start_primary("tcp://127.0.0.1:0");
    let to: std::net::SocketAddr = primary
        .endpoint("replication")
        .to_string()
        .trim_start_matches("tcp://")
        .parse()
        .expect("a TCP address");
    let relay = Relay::start(to);
    let through = format!("tcp://127.0.0.1:{}", relay.port);
    let replica = Node::start(&["--replica-of", &through], 3);
    let mut keys = write_mix(&primary.typed(), 0);
    sync_markers(&primary.typed(), &replica.typed(), "one");
    assert_eq!(relay.cut(), 1);
    // Written while the link is down or coming back.
    keys.extend(write_mix(&primary.typed(), 1));
    sync_markers(&primary.typed(), &replica.typed(), "two");
    let on_primary = read_all(&primary.typed(), keys.clone());
    assert_eq!(read_all(&replica.typed(), keys), on_primary);
    let log = replica.stop();
    // One full resync (the first), then the stream resumed where it stood.
    assert_eq!(log.matches("full resync epoch=").count(), 1, "{log}");
    assert!(log.contains("resumed the stream where it stood"), "{log}");
    primary.stop();
}
