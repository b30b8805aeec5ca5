//! kv-node as a process on loopback, driven by a real Redis client library
//! (the `redis` crate), by raw sockets for what a client library will not
//! send, and by `redis-cli` / `redis-benchmark` when they are installed.
//!
//! Every node runs on two cores (`--cores 2`) on a port the kernel picks
//! (`--listen tcp://127.0.0.1:0`; the node prints the address it bound), and
//! is stopped with SIGTERM, which must end it cleanly.

mod common;

use common::{run_bounded, wait_for};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use redis::{Connection, RedisResult, Value};
use ringwire_examples::kv::shard::shard_of;

const BIN: &str = env!("CARGO_BIN_EXE_kv-node");
/// Bound on anything a test waits for (a node starting or stopping, a
/// reply, an external tool); only ever reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(60);

/// A running kv-node.
struct Node {
    child: Child,
    port: u16,
    stderr: thread::JoinHandle<String>,
}

impl Node {
    /// Starts `kv-node --cores 2 --listen tcp://127.0.0.1:0` and waits for
    /// the line that says where it listens.
    fn start() -> Node {
        Node::start_with(&[])
    }

    /// [`start`](Node::start) with more arguments.
    fn start_with(extra: &[&str]) -> Node {
        let mut child = Command::new(BIN)
            .args(["--cores", "2", "--listen", "tcp://127.0.0.1:0"])
            .args(extra)
            // The typed listener too on a port the kernel picks, so that
            // tests run side by side.
            .args(["--listen-typed", "tcp://127.0.0.1:0"])
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
        let banner = rx
            .recv_timeout(PATIENCE)
            .expect("kv-node prints where it listens");
        let port = banner
            .split("tcp://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {banner:?}"));
        assert!(banner.contains("with 2 cores"), "{banner}");
        Node {
            child,
            port,
            stderr,
        }
    }

    /// A Redis client connection, with timeouts so that a hang fails.
    fn client(&self) -> Connection {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .expect("client for the node");
        let con = client
            .get_connection_with_timeout(PATIENCE)
            .expect("connect to kv-node");
        con.set_read_timeout(Some(PATIENCE)).expect("read timeout");
        con.set_write_timeout(Some(PATIENCE))
            .expect("write timeout");
        con
    }

    /// A raw socket to the node.
    fn socket(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to kv-node");
        s.set_read_timeout(Some(PATIENCE)).expect("read timeout");
        s
    }

    /// Stops the node with SIGTERM and checks that it shut down cleanly:
    /// exit code 0, no task left behind, no operation leaked.
    fn stop(mut self) {
        let pid = i32::try_from(self.child.id()).expect("pid fits an i32");
        // SAFETY: kill(2) with a PID this test started and has not reaped.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM to kv-node");
        let status = wait_for(&mut self.child, PATIENCE).expect("kv-node stops after SIGTERM");
        let stderr = std::mem::replace(&mut self.stderr, thread::spawn(String::new))
            .join()
            .unwrap_or_default();
        assert!(status.success(), "kv-node exited with {status}:\n{stderr}");
        let report = stderr
            .lines()
            .find_map(|l| l.strip_prefix("kv-node stopped: "))
            .unwrap_or_else(|| panic!("no shutdown report:\n{stderr}"));
        for clean in ["tasks_aborted: 0", "ops_leaked: 0", "cores_panicked: 0"] {
            assert!(report.contains(clean), "not a clean shutdown: {report}");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A test that failed before `stop`: do not leave the node running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Keys `prefix0`, `prefix1`, ... that a two-core node keeps on `core`.
fn keys_on(core: usize, prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| shard_of(k.as_bytes(), 2) == core)
        .take(n)
        .collect()
}

fn query<T: redis::FromRedisValue>(con: &mut Connection, args: &[&str]) -> RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(con)
}

fn ok(con: &mut Connection, args: &[&str]) -> Value {
    query(con, args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// A simple-string reply (`+OK` is `Value::Okay` to the client library).
fn status(text: &str) -> Value {
    if text == "OK" {
        Value::Okay
    } else {
        Value::SimpleString(text.to_string())
    }
}

fn bulk(text: &str) -> Value {
    Value::BulkString(text.as_bytes().to_vec())
}

#[test]
fn every_command_through_a_redis_client() {
    let node = Node::start();
    let mut con = node.client();
    let c = &mut con;
    assert_eq!(ok(c, &["PING"]), status("PONG"));
    assert_eq!(ok(c, &["PING", "hi"]), bulk("hi"));
    assert_eq!(ok(c, &["ECHO", "hello world"]), bulk("hello world"));

    assert_eq!(ok(c, &["GET", "nope"]), Value::Nil);
    assert_eq!(ok(c, &["SET", "k", "v"]), Value::Okay);
    assert_eq!(ok(c, &["GET", "k"]), bulk("v"));
    // NX / XX, and GET returning the old value.
    assert_eq!(ok(c, &["SET", "k", "w", "NX"]), Value::Nil);
    assert_eq!(ok(c, &["SET", "fresh", "1", "XX"]), Value::Nil);
    assert_eq!(ok(c, &["EXISTS", "fresh"]), Value::Int(0));
    assert_eq!(ok(c, &["SET", "fresh", "1", "NX"]), Value::Okay);
    assert_eq!(ok(c, &["SET", "k", "w", "XX", "GET"]), bulk("v"));
    assert_eq!(ok(c, &["GET", "k"]), bulk("w"));
    let e = query::<Value>(c, &["SET", "k", "v", "NX", "XX"]).unwrap_err();
    assert_eq!(e.code(), Some("ERR"), "{e}");
    let e = query::<Value>(c, &["SET", "k", "v", "EX", "0"]).unwrap_err();
    assert!(e.to_string().contains("invalid expire time"), "{e}");

    // Counters.
    assert_eq!(ok(c, &["INCR", "n"]), Value::Int(1));
    assert_eq!(ok(c, &["INCRBY", "n", "41"]), Value::Int(42));
    assert_eq!(ok(c, &["INCRBY", "n", "-50"]), Value::Int(-8));
    assert_eq!(ok(c, &["GET", "n"]), bulk("-8"));
    let e = query::<Value>(c, &["INCR", "k"]).unwrap_err();
    assert!(e.to_string().contains("not an integer"), "{e}");

    // Multi-key commands over keys of both cores.
    let a = keys_on(0, "a", 2);
    let b = keys_on(1, "b", 2);
    assert_eq!(
        ok(c, &["MSET", &a[0], "1", &b[0], "2", &a[1], "3", &b[1], "4"]),
        Value::Okay
    );
    assert_eq!(
        ok(c, &["MGET", &b[1], &a[0], "nope", &b[0], &a[1]]),
        Value::Array(vec![bulk("4"), bulk("1"), Value::Nil, bulk("2"), bulk("3")])
    );
    assert_eq!(
        ok(c, &["EXISTS", &a[0], &b[0], "nope", &a[0]]),
        Value::Int(3)
    );
    // k, fresh, n and the four keys.
    assert_eq!(ok(c, &["DBSIZE"]), Value::Int(7));
    assert_eq!(ok(c, &["DEL", &a[0], &b[0], "nope"]), Value::Int(2));
    assert_eq!(ok(c, &["DBSIZE"]), Value::Int(5));
    assert_eq!(ok(c, &["FLUSHALL"]), Value::Okay);
    assert_eq!(ok(c, &["DBSIZE"]), Value::Int(0));

    // COMMAND, as clients ask at start.
    assert_eq!(ok(c, &["COMMAND", "COUNT"]), Value::Int(16));
    match ok(c, &["COMMAND"]) {
        Value::Array(commands) => assert_eq!(commands.len(), 16),
        other => panic!("COMMAND: {other:?}"),
    }
    match ok(c, &["COMMAND", "INFO", "get"]) {
        Value::Array(info) => match &info[..] {
            [Value::Array(fields)] => {
                assert_eq!(fields[0], bulk("get"));
                assert_eq!(fields[1], Value::Int(2));
            }
            other => panic!("COMMAND INFO get: {other:?}"),
        },
        other => panic!("COMMAND INFO: {other:?}"),
    }
    drop(con);
    node.stop();
}

#[test]
fn the_metrics_endpoint_counts_resp_requests() {
    // A port for the metrics endpoint (free a moment ago).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let node = Node::start_with(&["--metrics", &metrics]);
    let mut con = node.client();
    for i in 0..200 {
        assert_eq!(ok(&mut con, &["SET", &format!("m{i}"), "v"]), Value::Okay);
    }
    let get = || -> std::io::Result<String> {
        let mut s = TcpStream::connect(&metrics)?;
        s.set_read_timeout(Some(PATIENCE))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    };
    // The endpoint starts with the node; give it a moment if need be.
    let deadline = Instant::now() + PATIENCE;
    let body = loop {
        match get() {
            Ok(text) => break text,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("metrics endpoint {metrics}: {e}"),
        }
    };
    let total: f64 = body
        .lines()
        .filter(|l| l.starts_with("ringwire_kv_resp_messages_in_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(total >= 200.0, "RESP requests counted: {total}\n{body}");
}

#[test]
fn keys_expire_with_ex_and_px() {
    let node = Node::start();
    let mut con = node.client();
    let c = &mut con;
    let mut keys = keys_on(0, "px", 1);
    keys.extend(keys_on(1, "px", 1));
    for key in &keys {
        assert_eq!(ok(c, &["SET", key, "v", "PX", "50"]), Value::Okay);
        assert_eq!(
            ok(c, &["SET", &format!("{key}-long"), "v", "EX", "3600"]),
            Value::Okay
        );
    }
    // The short-lived keys go (however slow the machine, within the bound);
    // the long-lived ones stay.
    let deadline = Instant::now() + PATIENCE;
    for key in &keys {
        while ok(c, &["EXISTS", key]) != Value::Int(0) {
            assert!(Instant::now() < deadline, "{key} never expired");
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(ok(c, &["GET", key]), Value::Nil);
        assert_eq!(ok(c, &["GET", &format!("{key}-long")]), bulk("v"));
    }
    // Keys nobody reads again are swept: DBSIZE (which counts expired keys
    // not yet reclaimed, as Redis's does) comes down to the long-lived two.
    for key in &keys {
        assert_eq!(ok(c, &["SET", key, "v", "PX", "30"]), Value::Okay);
    }
    while ok(c, &["DBSIZE"]) != Value::Int(2) {
        assert!(Instant::now() < deadline, "expired keys were never swept");
        thread::sleep(Duration::from_millis(20));
    }
    // KEEPTTL keeps a deadline, a plain SET drops it.
    assert_eq!(ok(c, &["SET", "kt", "1", "PX", "40"]), Value::Okay);
    assert_eq!(ok(c, &["SET", "kt", "2", "KEEPTTL"]), Value::Okay);
    while ok(c, &["EXISTS", "kt"]) != Value::Int(0) {
        assert!(Instant::now() < deadline, "KEEPTTL lost the deadline");
        thread::sleep(Duration::from_millis(20));
    }
    drop(con);
    node.stop();
}

#[test]
fn pipelined_replies_come_back_in_request_order_across_cores() {
    let node = Node::start();
    let mut con = node.client();
    let local = keys_on(0, "p", 20);
    let remote = keys_on(1, "q", 20);
    // Whichever core accepted the connection, half of these keys live on
    // the other one: the pipeline mixes answered and forwarded requests.
    let mut pipe = redis::pipe();
    let mut expected = Vec::new();
    for i in 0..20 {
        let (l, r) = (&local[i], &remote[i]);
        pipe.cmd("SET").arg(l).arg(format!("l{i}"));
        expected.push(Value::Okay);
        pipe.cmd("SET").arg(r).arg(format!("r{i}"));
        expected.push(Value::Okay);
        pipe.cmd("GET").arg(r);
        expected.push(bulk(&format!("r{i}")));
        pipe.cmd("PING");
        expected.push(status("PONG"));
        pipe.cmd("INCR").arg(format!("{r}-n"));
        expected.push(Value::Int(1));
        pipe.cmd("MGET").arg(l).arg(r).arg("nope");
        expected.push(Value::Array(vec![
            bulk(&format!("l{i}")),
            bulk(&format!("r{i}")),
            Value::Nil,
        ]));
        pipe.cmd("GET").arg(l);
        expected.push(bulk(&format!("l{i}")));
        pipe.cmd("DBSIZE");
        expected.push(Value::Int(3 * (i as i64 + 1)));
    }
    let replies: Vec<Value> = pipe.query(&mut con).expect("pipeline");
    assert_eq!(replies.len(), expected.len());
    for (i, (got, want)) in replies.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "reply {i}");
    }
    drop(con);
    node.stop();
}

#[test]
fn a_key_owned_by_the_other_core_is_served_on_every_connection() {
    let node = Node::start();
    let on0 = keys_on(0, "owned", 1).remove(0);
    let on1 = keys_on(1, "owned", 1).remove(0);
    // Several connections: the kernel spreads them over both cores, and on
    // each, one of the two keys belongs to the other core.
    let mut cons: Vec<Connection> = (0..8).map(|_| node.client()).collect();
    for (i, con) in cons.iter_mut().enumerate() {
        let v = format!("from{i}");
        assert_eq!(ok(con, &["SET", &on0, &v]), Value::Okay);
        assert_eq!(ok(con, &["SET", &on1, &v]), Value::Okay);
        assert_eq!(ok(con, &["GET", &on0]), bulk(&v));
        assert_eq!(ok(con, &["GET", &on1]), bulk(&v));
    }
    // Every connection sees the last write, wherever it was made.
    for con in &mut cons {
        assert_eq!(ok(con, &["GET", &on0]), bulk("from7"));
        assert_eq!(ok(con, &["GET", &on1]), bulk("from7"));
    }
    drop(cons);
    node.stop();
}

#[test]
fn an_unknown_command_is_an_error_and_the_connection_goes_on() {
    let node = Node::start();
    let mut con = node.client();
    let e = query::<Value>(&mut con, &["FOO", "bar"]).unwrap_err();
    assert_eq!(e.code(), Some("ERR"));
    assert!(e.to_string().contains("unknown command 'FOO'"), "{e}");
    let e = query::<Value>(&mut con, &["GET"]).unwrap_err();
    assert!(e.to_string().contains("wrong number of arguments"), "{e}");
    assert_eq!(ok(&mut con, &["PING"]), status("PONG"));
    assert_eq!(ok(&mut con, &["SET", "still", "here"]), Value::Okay);
    assert_eq!(ok(&mut con, &["GET", "still"]), bulk("here"));
    drop(con);
    node.stop();
}

#[test]
fn a_malformed_request_closes_only_its_connection() {
    let node = Node::start();
    let mut other = node.client();
    assert_eq!(ok(&mut other, &["SET", "k", "v"]), Value::Okay);

    // A request answered, then a bulk length that is not a number.
    let mut bad = node.socket();
    bad.write_all(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$x\r\n")
        .expect("send");
    let mut reply = Vec::new();
    bad.read_to_end(&mut reply)
        .expect("the node closes the connection");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
    );

    // An inline request with an unbalanced quote.
    let mut bad = node.socket();
    bad.write_all(b"SET \"k v\r\n").expect("send");
    let mut reply = Vec::new();
    bad.read_to_end(&mut reply)
        .expect("the node closes the connection");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "-ERR Protocol error: unbalanced quotes in request\r\n"
    );

    // The other connection, and new ones, are fine.
    assert_eq!(ok(&mut other, &["GET", "k"]), bulk("v"));
    let mut fresh = node.client();
    assert_eq!(ok(&mut fresh, &["GET", "k"]), bulk("v"));
    // Inline commands work on a raw socket too.
    let mut raw = node.socket();
    raw.write_all(b"PING\r\n").expect("send");
    let mut buf = [0u8; 7];
    raw.read_exact(&mut buf).expect("reply");
    assert_eq!(&buf, b"+PONG\r\n");
    drop((other, fresh, raw));
    node.stop();
}

/// `redis-cli` and `redis-benchmark` against the node, when installed
/// (`.ci/setup.sh` installs them with Debian's redis-tools).
#[test]
fn redis_cli_and_redis_benchmark_work_unmodified() {
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !have("redis-cli") || !have("redis-benchmark") {
        // Written past the test harness's capture, so that the skip shows.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED redis_cli_and_redis_benchmark_work_unmodified: redis-cli or \
             redis-benchmark not found; install Debian's redis-tools (.ci/setup.sh does)"
        );
        return;
    }
    let node = Node::start();
    let port = node.port.to_string();
    let cli = |args: &[&str]| {
        let out = run_bounded(
            Command::new("redis-cli").args(["-p", &port]).args(args),
            PATIENCE,
        );
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["PING"]), "PONG");
    assert_eq!(cli(&["SET", "greeting", "hello world"]), "OK");
    assert_eq!(cli(&["GET", "greeting"]), "hello world");
    assert_eq!(cli(&["INCRBY", "count", "5"]), "5");

    let out = run_bounded(
        Command::new("redis-benchmark").args([
            "-p", &port, "-t", "set,get", "-n", "20000", "-P", "16", "-q",
        ]),
        Duration::from_secs(300),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "redis-benchmark: {out:?}");
    for test in ["SET", "GET"] {
        assert!(
            stdout
                .lines()
                .flat_map(|l| l.split('\r'))
                .any(|l| l.starts_with(&format!("{test}: ")) && l.contains("requests per second")),
            "no {test} result:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        !stdout.contains("ERR") && !stderr.contains("ERR"),
        "errors during the benchmark:\n{stdout}\n{stderr}"
    );
    // It found the configuration it asks for at start.
    assert!(
        !stderr.contains("Could not fetch server CONFIG"),
        "{stderr}"
    );
    // The benchmark's key holds one of its values (3 bytes by default).
    assert_eq!(cli(&["GET", "key:__rand_int__"]).len(), 3);
    node.stop();
}

#[test]
fn bad_arguments_exit_with_code_2() {
    for args in [
        &["--cores", "0"][..],
        &["--cpus", "1-0"],
        &["--cpus", "0", "--cores", "2"],
        &["--listen", "udp://127.0.0.1:6380"],
        &["--listen", "tcp://127.0.0.1:6380?keepalive=10s"],
        &["--listen", "tcp://127.0.0.1:99999"],
        &["--idle", "nap"],
        &["--no-such-flag"],
        &["stray"],
    ] {
        let out = run_bounded(Command::new(BIN).args(args), PATIENCE);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
    let out = run_bounded(Command::new(BIN).arg("--help"), PATIENCE);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--cpus", "--cores", "--listen", "--idle", "--version"] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    let out = run_bounded(Command::new(BIN).arg("--version"), PATIENCE);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("kv-node "));
}
