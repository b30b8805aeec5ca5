//! pingpong as processes on loopback: percentiles printed for every scheme
//! (mem, tcp, unix and udp in one process on two cores; tcp, unix, udp and
//! tls between a server and a client process), a graceful SIGTERM, an
//! untrusted TLS server refused, bad arguments refused with exit code 2.

mod common;

use common::*;
use ringwire::transports::Endpoint;

const BIN: &str = env!("CARGO_BIN_EXE_pingpong");

/// The report has every percentile of `n` round trips (and, over udp, the
/// lost ones make up the rest).
fn check_report(out: &str, count: u64, udp: bool) {
    let rtt = out
        .lines()
        .find(|l| l.starts_with("rtt: "))
        .unwrap_or_else(|| panic!("no rtt line in {out:?}"));
    for p in ["p50=", "p90=", "p99=", "p99.9=", "max="] {
        assert!(rtt.contains(p), "{p} missing in {rtt:?}");
    }
    let n = field(rtt, "n");
    if udp {
        let lost = field(out, "lost");
        assert_eq!(n + lost, count, "{out}");
        assert!(n > 0, "{out}");
    } else {
        assert_eq!(n, count, "{out}");
        assert!(!out.contains("lost="), "{out}");
    }
}

#[test]
fn local_prints_percentiles_for_every_scheme() {
    for scheme in ["mem", "tcp", "unix", "udp"] {
        let (status, out) = run(
            BIN,
            &[
                "local", "--scheme", scheme, "--count", "300", "--warmup", "20",
            ],
        );
        assert!(status.success(), "{scheme}: {status:?} {out}");
        assert!(out.contains(&format!("pingpong {scheme}://")), "{out}");
        check_report(&out, 300, scheme == "udp");
    }
}

#[test]
fn local_with_polling_cores() {
    let (status, out) = run(
        BIN,
        &[
            "local", "--scheme", "mem", "--idle", "poll", "--count", "200", "--size", "1024",
        ],
    );
    assert!(status.success(), "{status:?} {out}");
    assert!(out.contains("size=1024 idle=Poll"), "{out}");
    check_report(&out, 200, false);
}

/// Starts a server on `listen`; returns it and the endpoint it printed.
fn server(listen: &str) -> (Node, String) {
    let mut node = Node::start(BIN, &["server", "--listen", listen]);
    let line = node.wait_line("listening on");
    let scheme = listen.split("://").next().unwrap();
    (node, endpoint_in(&line, scheme))
}

fn stop(mut server: Node) {
    server.signal(libc::SIGTERM);
    let (status, out) = server.finish();
    assert!(status.success(), "server after SIGTERM: {status:?} {out}");
}

#[test]
fn client_and_server_processes_over_tcp_unix_udp() {
    let sock = std::env::temp_dir().join(format!("pingpong-test-{}.sock", std::process::id()));
    let unix = format!("unix://{}", sock.display());
    for listen in ["tcp://127.0.0.1:0", unix.as_str(), "udp://127.0.0.1:0"] {
        let (srv, ep) = server(listen);
        let (status, out) = run(
            BIN,
            &[
                "client",
                "--connect",
                &ep,
                "--count",
                "250",
                "--warmup",
                "10",
            ],
        );
        assert!(status.success(), "{ep}: {status:?} {out}");
        check_report(&out, 250, ep.starts_with("udp"));
        // A second client on the same server.
        let (status, out) = run(
            BIN,
            &["client", "--connect", &ep, "--count", "50", "--size", "1"],
        );
        assert!(status.success(), "{ep}: {status:?} {out}");
        check_report(&out, 50, ep.starts_with("udp"));
        stop(srv);
    }
    let _ = std::fs::remove_file(sock);
}

#[test]
fn client_stops_at_duration() {
    let (srv, ep) = server("tcp://127.0.0.1:0");
    let (status, out) = run(
        BIN,
        &[
            "client",
            "--connect",
            &ep,
            "--duration",
            "300ms",
            "--warmup",
            "0",
        ],
    );
    assert!(status.success(), "{status:?} {out}");
    let n = field(&out, "n");
    assert!(n > 0, "{out}");
    stop(srv);
}

/// A CA and a server certificate for `localhost` and 127.0.0.1, as PEM
/// files in a directory of the test's own.
struct Certs {
    dir: std::path::PathBuf,
}

impl Certs {
    fn new(tag: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("pingpong-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "pingpong test CA");
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let leaf =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        Certs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn tls_client_and_server() {
    let certs = Certs::new("tls");
    let listen = format!(
        "tls://127.0.0.1:0?cert={}&key={}",
        certs.path("server.pem"),
        certs.path("server.key")
    );
    let (srv, printed) = server(&listen);
    let port = printed.parse::<Endpoint>().unwrap().port().unwrap();
    let good = format!(
        "tls://127.0.0.1:{port}?ca={}&servername=localhost",
        certs.path("ca.pem")
    );
    let (status, out) = run(
        BIN,
        &[
            "client",
            "--connect",
            &good,
            "--count",
            "200",
            "--size",
            "512",
        ],
    );
    assert!(status.success(), "{status:?} {out}");
    check_report(&out, 200, false);
    // Trusting another CA (the host's store): refused, clearly, and the
    // server goes on.
    let other = Certs::new("other");
    let untrusted = format!("tls://127.0.0.1:{port}?ca={}", other.path("ca.pem"));
    let (status, out) = run(BIN, &["client", "--connect", &untrusted, "--count", "5"]);
    assert_eq!(status.code(), Some(1), "{out}");
    let (status, out) = run(BIN, &["client", "--connect", &good, "--count", "20"]);
    assert!(status.success(), "{status:?} {out}");
    check_report(&out, 20, false);
    stop(srv);
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["client"][..],
        &["client", "--connect", "tcp://127.0.0.1:99999"],
        &["client", "--connect", "127.0.0.1:1", "--idle", "nap"],
        &["client", "--connect", "127.0.0.1:1", "--duration", "10h"],
        &["local", "--scheme", "carrier-pigeon"],
        &["server"],
        &["fly"],
    ] {
        let (status, _) = run(BIN, args);
        assert_eq!(status.code(), Some(2), "{args:?}");
    }
    // Too large for a datagram: refused before anything is sent.
    let (status, _) = run(
        BIN,
        &["client", "--connect", "udp://127.0.0.1:9", "--size", "4000"],
    );
    assert_eq!(status.code(), Some(1));
}
