//! chat as processes on loopback: three clients, one stalled (stopped with
//! SIGSTOP, so it reads nothing): the other two keep getting every line,
//! and the stalled one is disconnected and counted (or, with `--stalled
//! drop`, kept, its lines dropped and counted, and it gets lines again once
//! it reads); a room over tls://; usage errors with exit code 2.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use ringwire::transports::Endpoint;

const BIN: &str = env!("CARGO_BIN_EXE_chat");
const LINES: usize = 3000;

fn server(args: &[&str]) -> (Node, String) {
    let mut a = vec!["server"];
    a.extend_from_slice(args);
    let mut node = Node::start(BIN, &a);
    let line = node.wait_line("chat server listening on");
    let ep = endpoint_in(&line, "tcp");
    // Without the listener's own options.
    let ep = ep
        .split('?')
        .next()
        .unwrap()
        .trim_end_matches(';')
        .to_string();
    (node, ep)
}

fn client(ep: &str, name: &str) -> Node {
    let mut node = Node::start(BIN, &["client", "--connect", ep, "--name", name]);
    node.wait_line("* connected to");
    node
}

/// Says LINES long lines as `alice`, paced, then leaves.
fn alice_says_everything(ep: &str) {
    let mut alice = client(ep, "alice");
    let pad = "x".repeat(1000);
    for i in 0..LINES {
        writeln!(alice.stdin(), "line {i} {pad}").unwrap();
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    alice.close_stdin();
    let (status, out) = alice.finish();
    assert!(status.success(), "alice: {status:?} {out}");
}

fn stop_server(mut srv: Node) -> String {
    srv.signal(libc::SIGTERM);
    let (status, out) = srv.finish();
    assert!(status.success(), "server: {status:?} {out}");
    out.lines()
        .find(|l| l.starts_with("chat server stopped: "))
        .unwrap_or_else(|| panic!("no final counters in {out}"))
        .to_string()
}

fn received_from_alice(out: &str) -> usize {
    out.lines()
        .filter(|l| l.starts_with("alice: line "))
        .count()
}

/// The rooms with a stalled client run one at a time: bob, who reads, must
/// keep up with alice on a machine also running the other tests.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The room with carol stalled; returns the server, bob and carol once
/// alice said everything and bob got all of it.
fn stalled_room(policy: &str) -> (Node, String, Node, Node) {
    // Small socket buffers on carol's side, so that her queue on the server
    // fills after about a thousand lines; bob's grow as usual.
    let (mut srv, ep) = server(&[
        "--listen",
        "tcp://127.0.0.1:0?sndbuf=16K",
        "--queue",
        "256",
        "--stalled",
        policy,
        "--stall-timeout",
        "1s",
        "--probe",
        "50ms",
    ]);
    let bob = client(&ep, "bob");
    srv.wait_line("* bob joined");
    let carol = client(&format!("{ep}?rcvbuf=16K"), "carol");
    srv.wait_line("* carol joined");
    carol.signal(libc::SIGSTOP);
    alice_says_everything(&ep);
    srv.wait_line("* carol stalled");
    let mut bob = bob;
    bob.wait_line(&format!("alice: line {}", LINES - 1));
    (srv, ep, bob, carol)
}

#[test]
fn a_stalled_client_is_disconnected_and_the_room_goes_on() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (mut srv, ep, mut bob, mut carol) = stalled_room("disconnect");
    srv.wait_line("* carol disconnected: stalled for 1s");
    bob.wait_line_seen("* carol disconnected");
    // The room goes on without her.
    let mut dave = client(&ep, "dave");
    writeln!(dave.stdin(), "after").unwrap();
    dave.close_stdin();
    assert!(dave.finish().0.success());
    bob.wait_line("dave: after");
    carol.signal(libc::SIGCONT);
    let (_, carol_out) = carol.finish();
    let got = received_from_alice(&carol_out);
    assert!(got < LINES, "carol got {got} lines while stopped");
    assert!(!carol_out.contains("dave: after"), "{carol_out}");
    bob.close_stdin();
    let (status, bob_out) = bob.finish();
    assert!(status.success(), "{bob_out}");
    assert_eq!(received_from_alice(&bob_out), LINES);
    let counters = stop_server(srv);
    assert_eq!(field(&counters, "stall_disconnects"), 1, "{counters}");
    assert_eq!(field(&counters, "stalls"), 1, "{counters}");
    assert_eq!(field(&counters, "lines"), LINES as u64 + 1, "{counters}");
    assert!(field(&counters, "dropped_lines") > 0, "{counters}");
    assert_eq!(field(&counters, "joined"), 4, "{counters}");
}

#[test]
fn with_drop_a_stalled_client_misses_lines_and_comes_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let (mut srv, ep, mut bob, mut carol) = stalled_room("drop");
    carol.signal(libc::SIGCONT);
    srv.wait_line("* carol reads again");
    // Her queue has room again but may not have drained yet: what dave says
    // may still be dropped for her, so he says it until she hears it.
    let mut dave = client(&ep, "dave");
    let (tx, heard) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        carol.wait_line("dave: after");
        tx.send(()).unwrap();
        carol
    });
    let deadline = std::time::Instant::now() + WAIT;
    while heard.recv_timeout(Duration::from_millis(200)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "carol never heard dave"
        );
        writeln!(dave.stdin(), "after").unwrap();
    }
    let mut carol = waiter.join().unwrap();
    dave.close_stdin();
    assert!(dave.finish().0.success());
    bob.wait_line("dave: after");
    carol.close_stdin();
    let (status, carol_out) = carol.finish();
    assert!(status.success(), "{carol_out}");
    let got = received_from_alice(&carol_out);
    assert!(got < LINES, "carol got all {got} lines");
    bob.close_stdin();
    let (status, bob_out) = bob.finish();
    assert!(status.success(), "{bob_out}");
    assert_eq!(received_from_alice(&bob_out), LINES);
    let counters = stop_server(srv);
    assert_eq!(field(&counters, "stall_disconnects"), 0, "{counters}");
    assert!(field(&counters, "stalls") >= 1, "{counters}");
    let dropped = field(&counters, "dropped_lines");
    assert!(dropped > 0, "{counters}");
    // Every line alice said that carol did not print was dropped for her.
    assert!(
        dropped >= (LINES - got) as u64,
        "{counters}: carol got {got}"
    );
}

#[test]
fn a_room_over_tls() {
    let dir = std::env::temp_dir().join(format!("chat-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let path = |n: &str| dir.join(n).display().to_string();
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("server.pem"), cert.pem()).unwrap();
    std::fs::write(path("server.key"), key.serialize_pem()).unwrap();

    let listen = format!(
        "tls://127.0.0.1:0?cert={}&key={}",
        path("server.pem"),
        path("server.key")
    );
    let mut srv = Node::start(BIN, &["server", "--listen", &listen]);
    let printed = endpoint_in(&srv.wait_line("chat server listening on"), "tls");
    let port = printed
        .trim_end_matches(';')
        .parse::<Endpoint>()
        .unwrap()
        .port()
        .unwrap();
    let ep = format!(
        "tls://127.0.0.1:{port}?ca={}&servername=localhost",
        path("ca.pem")
    );
    let mut bob = client(&ep, "bob");
    srv.wait_line("* bob joined");
    let mut alice = client(&ep, "alice");
    srv.wait_line("* alice joined");
    writeln!(alice.stdin(), "hello over tls").unwrap();
    bob.wait_line("alice: hello over tls");
    writeln!(bob.stdin(), "and back").unwrap();
    alice.wait_line("bob: and back");
    for mut c in [alice, bob] {
        c.close_stdin();
        assert!(c.finish().0.success());
    }
    let counters = stop_server(srv);
    assert_eq!(field(&counters, "lines"), 2, "{counters}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["server", "--listen", "tcp://127.0.0.1:99999"][..],
        &["server", "--stalled", "maybe"],
        &["server", "--stall-timeout", "soon"],
        &["client", "--connect", "nowhere"],
        &["lurk"],
    ] {
        let (status, _) = run(BIN, args);
        assert_eq!(status.code(), Some(2), "{args:?}");
    }
}
