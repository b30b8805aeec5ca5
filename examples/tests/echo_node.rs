//! echo-node end to end: every byte sent comes back, in order, whatever the
//! message sizes, the way the client splits its writes, the wire and the
//! gather mode; messages larger than a receive buffer (sent back from the
//! buffers they arrived in) and larger than the hold limit (streamed
//! through) included. A peer announcing an oversized message loses its
//! connection and nothing else.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_echo-node");
const PATIENCE: Duration = Duration::from_secs(60);

/// A running echo-node with small receive buffers (4 KiB, 64 of them), so
/// that most messages span buffers and the hold limits are reached.
struct Node {
    child: Child,
    port: u16,
}

impl Node {
    fn start(extra: &[&str]) -> Node {
        // A port free right now; the node binds it with SO_REUSEPORT.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new(BIN)
            .args(["--cores", "1", "--listen", &listen])
            .args(["--recv-buffer-size", "4096", "--recv-buffers", "64"])
            .args(["--max-message", "2000000"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start echo-node");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let banner = rx.recv_timeout(PATIENCE).expect("echo-node banner");
        assert!(banner.contains("listening on"), "{banner}");
        Node { child, port }
    }

    fn socket(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to echo-node");
        s.set_read_timeout(Some(PATIENCE)).expect("read timeout");
        s
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn message(len: usize, seed: u8) -> Vec<u8> {
    let mut m = (len as u32).to_le_bytes().to_vec();
    m.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    m
}

/// Sends `stream` in writes of the given sizes (cycled) from one thread
/// while this one reads everything back; returns what came back.
fn echo_through(node: &Node, stream: Vec<u8>, writes: &[usize]) -> Vec<u8> {
    let sock = node.socket();
    let mut writer = sock.try_clone().expect("clone socket");
    let writes = writes.to_vec();
    let len = stream.len();
    let sender = thread::spawn(move || {
        let (mut pos, mut i) = (0, 0);
        while pos < stream.len() {
            let n = writes[i % writes.len()].min(stream.len() - pos);
            writer.write_all(&stream[pos..pos + n]).expect("write");
            pos += n;
            i += 1;
        }
    });
    let mut back = vec![0; len];
    (&sock).read_exact(&mut back).expect("read the echo back");
    sender.join().expect("sender");
    back
}

fn stream_of(sizes: &[usize]) -> Vec<u8> {
    let mut s = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        s.extend(message(n, i as u8));
    }
    s
}

/// Sizes around the 4 KiB receive buffer and the 256 KiB hold limit.
const SIZES: &[usize] = &[
    0, 1, 100, 4092, 4096, 4097, 10_000, 65_536, 0, 3, 200_000, 300_000, 1_000_000, 17, 65_536,
];

fn every_byte_comes_back(extra: &[&str]) {
    let node = Node::start(extra);
    let stream = stream_of(SIZES);
    for writes in [&[1 << 20][..], &[4096], &[1, 7, 4093, 65_536, 3]] {
        let back = echo_through(&node, stream.clone(), writes);
        assert!(
            back == stream,
            "echo differs ({extra:?}, writes {writes:?})"
        );
    }
}

#[test]
fn lenprefix_sendmsg_echoes_every_byte() {
    every_byte_comes_back(&["--wire", "lenprefix", "--gather", "sendmsg"]);
}

#[test]
fn lenprefix_copy_echoes_every_byte() {
    every_byte_comes_back(&["--wire", "lenprefix", "--gather", "copy"]);
}

#[test]
fn raw_sendmsg_echoes_every_byte() {
    every_byte_comes_back(&["--wire", "raw", "--gather", "sendmsg"]);
}

#[test]
fn raw_copy_echoes_every_byte() {
    every_byte_comes_back(&["--wire", "raw", "--gather", "copy"]);
}

/// Many connections each with a large incomplete message at once: the
/// node lets held buffers go before its receive ring runs dry, so every
/// connection completes (with 64 buffers of 4 KiB and 16 connections
/// holding up to 200 KB each, holding everything would starve them all).
#[test]
fn held_buffers_never_starve_the_core() {
    let node = Node::start(&["--wire", "lenprefix"]);
    let stream = stream_of(&[200_000, 150_000, 5]);
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let sock = node.socket();
            let stream = stream.clone();
            thread::spawn(move || {
                let mut writer = sock.try_clone().expect("clone");
                let expected = stream.clone();
                let sender = thread::spawn(move || {
                    // Slow writes, so that every connection holds a partial
                    // message at the same time.
                    for chunk in stream.chunks(50_000) {
                        writer.write_all(chunk).expect("write");
                        thread::sleep(Duration::from_millis(20));
                    }
                });
                let mut back = vec![0; expected.len()];
                (&sock).read_exact(&mut back).expect("echo back");
                sender.join().expect("sender");
                back == expected
            })
        })
        .collect();
    for c in clients {
        assert!(c.join().expect("client"), "an echo differs");
    }
}

/// An oversized length header closes that connection; another connection
/// keeps being served.
#[test]
fn an_oversized_message_closes_only_its_connection() {
    for gather in ["sendmsg", "copy"] {
        let node = Node::start(&["--wire", "lenprefix", "--gather", gather]);
        let healthy = node.socket();
        let mut bad = node.socket();
        bad.write_all(&3_000_000u32.to_le_bytes()).expect("write");
        let mut buf = [0u8; 16];
        let deadline = Instant::now() + PATIENCE;
        let closed = loop {
            match bad.read(&mut buf) {
                Ok(0) | Err(_) => break true,
                Ok(_) if Instant::now() > deadline => break false,
                Ok(_) => {}
            }
        };
        assert!(closed, "the bad connection is closed ({gather})");
        let _ = bad.shutdown(Shutdown::Both);
        let m = message(5000, 9);
        (&healthy).write_all(&m).expect("write");
        let mut back = vec![0; m.len()];
        (&healthy).read_exact(&mut back).expect("healthy echo");
        assert_eq!(back, m, "{gather}");
    }
}
