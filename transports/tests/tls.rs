//! `tls://` connections on loopback, with certificates generated here
//! (rcgen): typed round trips, calls, large frames and bulk through TLS
//! records, key updates, orderly close; refusals for an untrusted
//! certificate, a wrong name, a missing client certificate; mutual TLS
//! accepted; certificate files named in the endpoint; a peer that is not
//! TLS at all costing its own connection only.

mod common;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use ringwire_transports::{
    connect, listen, stats, Config, Endpoint, Error, Reconnect, Scheme, TlsCipherSuite, TlsConfig,
    TlsFailure,
};

/// A certificate authority and certificates it signs.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate chain and its key, PEM.
#[derive(Clone)]
struct Identity {
    cert: String,
    key: String,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        Pki {
            ca: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A leaf certificate for `names` (host names or IP addresses).
    fn leaf(&self, names: &[&str]) -> Identity {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ringwire test");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Identity {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn server_tls(id: &Identity) -> TlsConfig {
    TlsConfig::new().identity_pem(&id.cert, &id.key)
}

fn client_tls(pki: &Pki) -> TlsConfig {
    TlsConfig::new()
        .ca_pem(pki.ca_pem())
        .server_name("localhost")
}

fn any_port() -> Endpoint {
    "tls://127.0.0.1:0".parse().unwrap()
}

/// Starts a listener on core 1 at `ep`; returns the endpoint it bound and
/// a handle to the server task's result.
fn serve<F, Fut, R>(
    rt: &ringwire_runtime::Runtime,
    ep: Endpoint,
    cfg: Config,
    body: F,
) -> (Endpoint, ringwire_runtime::RemoteHandle<R>)
where
    F: FnOnce(ringwire_transports::Listener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
    R: Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let h = rt.spawn_on(1, move || async move {
        let l = listen(&ep, &cfg).await.unwrap();
        tx.send(l.endpoint().clone()).unwrap();
        body(l).await
    });
    (rx.recv().unwrap(), h)
}

fn tls_kind(e: &Error) -> Option<TlsFailure> {
    match e {
        Error::Tls { kind, .. } => Some(*kind),
        _ => None,
    }
}

#[test]
fn typed_round_trips_calls_large_frames_and_bulk_over_tls() {
    let pki = Pki::new("ringwire test CA");
    let server_id = pki.leaf(&["localhost"]);
    let rt = runtime();
    let scfg = config().max_payload(4 << 20).tls(server_tls(&server_id));
    let ccfg = config().max_payload(4 << 20).tls(client_tls(&pki));
    let segment: Vec<u8> = (0..(300u32 << 10))
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let expect = segment.clone();
    let (bound, server) = serve(&rt, any_port(), scfg, move |mut l| async move {
        let conn = l.accept().await.unwrap().unwrap();
        let mut got = Vec::new();
        for _ in 0..1000 {
            let m = conn.recv::<Order>().await.unwrap();
            assert_eq!(m.blob.len(), (m.id.to_native() % 300) as usize);
            got.push(m.id.to_native());
        }
        // A 1 MiB message: many records, assembled.
        let big = conn.recv::<Order>().await.unwrap();
        assert_eq!(big.blob.len(), 1 << 20);
        assert!(big.blob.iter().all(|&b| b == 7));
        drop(big);
        // Bulk segments into memory chosen here.
        let mut meta = conn.recv::<Order>().await.unwrap();
        let sizes = meta.incoming().bulk_sizes().unwrap();
        let dests = sizes
            .iter()
            .map(|&s| Vec::with_capacity(s as usize))
            .collect();
        let filled: Vec<Vec<u8>> = meta.incoming_mut().accept_bulk(dests).await.unwrap();
        drop(meta);
        let mut in_place = 0;
        loop {
            match conn.recv_any().await {
                Ok(m) => {
                    in_place += usize::from(m.in_receive_buffer());
                    let req = m.downcast::<Ask>().unwrap();
                    let n = req.n.to_native();
                    req.reply(&Answer { n, square: n * n }).await.unwrap();
                }
                Err(Error::Closed { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        (got, filled, in_place, stats::snapshot().scheme(Scheme::Tls))
    });
    rt.block_on(0, move || async move {
        let conn = connect(&bound, &ccfg).await.unwrap();
        for i in 0..1000 {
            conn.send(&order(i)).await.unwrap();
        }
        let mut big = order(1);
        big.blob = vec![7; 1 << 20];
        conn.send(&big).await.unwrap();
        let (_r, back) = conn
            .send_bulk(&order(2), vec![segment.clone(), segment])
            .await
            .unwrap();
        assert_eq!(back.len(), 2);
        let calls: Vec<_> = (0..64u64)
            .map(|n| {
                let conn = conn.clone();
                ringwire_runtime::spawn_local(async move {
                    let r = conn.call::<Ask, Answer>(&Ask { n }).await.unwrap();
                    assert_eq!(r.n.to_native(), n);
                    r.square.to_native()
                })
            })
            .collect();
        for (n, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap(), (n * n) as u64);
        }
        // One at a time: each request is a record of its own.
        for n in 64..84u64 {
            let r = conn.call::<Ask, Answer>(&Ask { n }).await.unwrap();
            assert_eq!(r.square.to_native(), n * n);
        }
        // Orderly: the session's close, then close_notify both ways.
        assert!(conn.close().await.unwrap(), "everything acknowledged");
    })
    .unwrap();
    let (got, filled, in_place, s) = server.join().unwrap();
    assert_eq!(got, (0..1000).collect::<Vec<u64>>());
    assert_eq!(filled.len(), 2);
    assert!(filled.iter().all(|f| *f == expect), "bulk bytes intact");
    // A request sent alone arrives as one record at the start of a receive
    // buffer: it is read in place where it was decrypted. (Records cut by a
    // buffer's end are opened in a buffer of their own.)
    assert!(in_place >= 19, "{in_place} of 84 requests read in place");
    assert_eq!(s.messages_in, 1002 + 84, "{s:?}");
    assert_eq!(s.rejected, 0);
    assert_eq!(s.connection_errors, 0, "{s:?}");
    shutdown(rt);
}

#[test]
fn key_updates_every_few_records_keep_both_directions_intact() {
    let pki = Pki::new("ringwire test CA");
    let server_id = pki.leaf(&["localhost"]);
    let rt = runtime();
    // One suite forced on both sides, and fresh keys every 3 records.
    let suite = [TlsCipherSuite::Chacha20Poly1305Sha256];
    let scfg = config().tls(
        server_tls(&server_id)
            .cipher_suites(&suite)
            .key_update_after(3),
    );
    let ccfg = config().tls(client_tls(&pki).cipher_suites(&suite).key_update_after(3));
    let (bound, server) = serve(&rt, any_port(), scfg, |mut l| async move {
        let conn = l.accept().await.unwrap().unwrap();
        let mut n = 0;
        loop {
            match conn.recv::<Ask>().await {
                Ok(req) => {
                    let v = req.n.to_native();
                    req.reply(&Answer {
                        n: v,
                        square: v * v,
                    })
                    .await
                    .unwrap();
                    n += 1;
                }
                Err(Error::Closed { .. }) => return n,
                Err(e) => panic!("{e}"),
            }
        }
    });
    rt.block_on(0, move || async move {
        let conn = connect(&bound, &ccfg).await.unwrap();
        for v in 0..300u64 {
            let r = conn.call::<Ask, Answer>(&Ask { n: v }).await.unwrap();
            assert_eq!(r.square.to_native(), v * v);
        }
        assert!(conn.close().await.unwrap());
    })
    .unwrap();
    assert_eq!(server.join().unwrap(), 300);
    shutdown(rt);
}

/// Connects with `ccfg` to a server with `scfg`; returns what the client's
/// `connect` and the server's `accept` said.
fn attempt(scfg: Config, ccfg: Config) -> (Result<(), Error>, Result<(), Error>) {
    let rt = runtime();
    let (bound, server) = serve(&rt, any_port(), scfg, |mut l| async move {
        let res = l.accept().await.unwrap();
        match res {
            Ok(conn) => conn
                .recv::<Order>()
                .await
                .map(|m| assert_eq!(m.id.to_native(), 9)),
            Err(e) => Err(e),
        }
    });
    let target = bound;
    let client = rt
        .block_on(0, move || async move {
            let conn = connect(&target, &ccfg).await?;
            conn.send_acked(&order(9)).await?;
            conn.close().await.map(|_| ())
        })
        .unwrap();
    let server = server.join().unwrap();
    shutdown(rt);
    (client, server)
}

#[test]
fn an_untrusted_certificate_is_refused_and_the_client_says_so() {
    let pki = Pki::new("ringwire test CA");
    let other = Pki::new("someone else's CA");
    let server_id = other.leaf(&["localhost"]);
    let (client, server) = attempt(
        config().tls(server_tls(&server_id)),
        config().tls(client_tls(&pki)),
    );
    let e = client.unwrap_err();
    assert_eq!(tls_kind(&e), Some(TlsFailure::UntrustedCertificate), "{e}");
    assert!(e.to_string().contains("untrusted"), "{e}");
    // The server hears why from the client's alert.
    let e = server.unwrap_err();
    assert_eq!(tls_kind(&e), Some(TlsFailure::PeerAlert), "{e}");
    assert!(e.to_string().contains("UnknownCA"), "{e}");
}

#[test]
fn a_certificate_for_another_name_is_refused_as_the_wrong_name() {
    let pki = Pki::new("ringwire test CA");
    let server_id = pki.leaf(&["db.internal"]);
    let (client, server) = attempt(
        config().tls(server_tls(&server_id)),
        config().tls(client_tls(&pki).server_name("api.internal")),
    );
    let e = client.unwrap_err();
    assert_eq!(tls_kind(&e), Some(TlsFailure::WrongName), "{e}");
    assert!(server.is_err());
    // The endpoint's host is the name checked by default: an IP address
    // the certificate names passes.
    let ip_id = pki.leaf(&["127.0.0.1"]);
    let (client, server) = attempt(
        config().tls(server_tls(&ip_id)),
        config().tls(TlsConfig::new().ca_pem(pki.ca_pem())),
    );
    client.unwrap();
    server.unwrap();
}

#[test]
fn mutual_tls_accepts_a_good_client_certificate_and_refuses_none() {
    let pki = Pki::new("ringwire test CA");
    let server_id = pki.leaf(&["localhost"]);
    let client_id = pki.leaf(&["client-7"]);
    let scfg = || config().tls(server_tls(&server_id).ca_pem(pki.ca_pem()));
    // Accepted: a certificate the server's CA signed.
    let (client, server) = attempt(
        scfg(),
        config().tls(client_tls(&pki).identity_pem(&client_id.cert, &client_id.key)),
    );
    client.unwrap();
    server.unwrap();
    // Refused: no certificate at all.
    let (client, server) = attempt(scfg(), config().tls(client_tls(&pki)));
    let e = server.unwrap_err();
    assert_eq!(tls_kind(&e), Some(TlsFailure::NoClientCertificate), "{e}");
    let e = client.unwrap_err();
    assert_eq!(tls_kind(&e), Some(TlsFailure::PeerAlert), "{e}");
    assert!(e.to_string().contains("CertificateRequired"), "{e}");
    // Refused: a certificate from another CA.
    let stranger = Pki::new("someone else's CA").leaf(&["client-8"]);
    let (client, server) = attempt(
        scfg(),
        config().tls(client_tls(&pki).identity_pem(&stranger.cert, &stranger.key)),
    );
    let e = server.unwrap_err();
    assert_eq!(tls_kind(&e), Some(TlsFailure::UntrustedCertificate), "{e}");
    assert!(client.is_err());
}

#[test]
fn certificate_files_named_in_the_endpoint() {
    let pki = Pki::new("ringwire test CA");
    let server_id = pki.leaf(&["localhost"]);
    let dir = std::env::temp_dir().join(unique("ringwire-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let cert = write("server.pem", &server_id.cert);
    let key = write("server.key", &server_id.key);
    let ca = write("ca.pem", &pki.ca_pem());
    let sep: Endpoint = format!("tls://127.0.0.1:0?cert={cert}&key={key}")
        .parse()
        .unwrap();
    let cep: Endpoint = format!("tls://127.0.0.1:0?ca={ca}&servername=localhost")
        .parse()
        .unwrap();
    let rt = runtime();
    let (bound, server) = serve(&rt, sep, config(), |mut l| async move {
        let conn = l.accept().await.unwrap().unwrap();
        conn.recv::<Order>().await.unwrap().id.to_native()
    });
    let port = bound.port().unwrap();
    let cep: Endpoint = cep
        .to_string()
        .replace(":0", &format!(":{port}"))
        .parse()
        .unwrap();
    rt.block_on(0, move || async move {
        let conn = connect(&cep, &config()).await.unwrap();
        conn.send_acked(&order(42)).await.unwrap();
    })
    .unwrap();
    assert_eq!(server.join().unwrap(), 42);
    // Unusable settings fail at once and say what is wrong.
    let missing: Endpoint = format!(
        "tls://127.0.0.1:0?cert={}/nope.pem&key={key}",
        dir.display()
    )
    .parse()
    .unwrap();
    let no_cert = any_port();
    let errs = rt
        .block_on(0, move || async move {
            let a = listen(&missing, &config()).await.map(|_| ()).unwrap_err();
            let b = listen(&no_cert, &config()).await.map(|_| ()).unwrap_err();
            // Not built yet: a TLS connection that reconnects.
            let c = connect(&any_port(), &config().reconnect(Reconnect::default()))
                .await
                .map(|_| ())
                .unwrap_err();
            assert!(matches!(c, Error::Usage(_)), "{c}");
            (a, b)
        })
        .unwrap();
    assert_eq!(tls_kind(&errs.0), Some(TlsFailure::Settings), "{}", errs.0);
    assert!(errs.0.to_string().contains("nope.pem"), "{}", errs.0);
    assert_eq!(tls_kind(&errs.1), Some(TlsFailure::Settings), "{}", errs.1);
    shutdown(rt);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_peer_that_is_not_tls_costs_its_own_connection_only() {
    let pki = Pki::new("ringwire test CA");
    let server_id = pki.leaf(&["localhost"]);
    let rt = runtime();
    let scfg = config()
        .tls(server_tls(&server_id))
        .handshake_timeout(Duration::from_secs(10));
    let (bound, server) = serve(&rt, any_port(), scfg, |mut l| async move {
        let first = l.accept().await.unwrap();
        let first = match first {
            Ok(_) => "accepted".to_string(),
            Err(e) => format!("{:?}", tls_kind(&e)),
        };
        let good = l.accept().await.unwrap().unwrap();
        let id = good.recv::<Order>().await.unwrap().id.to_native();
        (first, id)
    });
    let port = bound.port().unwrap();
    // Plain text instead of a ClientHello: the server answers with an alert
    // and closes this connection.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    assert!(
        reply.first() == Some(&21) || reply.is_empty(),
        "an alert record or nothing: {reply:?}"
    );
    // The listener goes on.
    let ccfg = config().tls(client_tls(&pki));
    rt.block_on(0, move || async move {
        let conn = connect(&bound, &ccfg).await.unwrap();
        conn.send_acked(&order(5)).await.unwrap();
    })
    .unwrap();
    let (first, id) = server.join().unwrap();
    assert_eq!(first, "Some(Handshake)");
    assert_eq!(id, 5);
    shutdown(rt);
}
