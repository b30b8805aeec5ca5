//! The TLS handshake, driven over a TCP stream with rustls's unbuffered
//! (sans-IO) connection API, then handed to the record layer.
//!
//! [`run`] feeds what the socket receives to rustls, sends what rustls
//! encodes, and stops once the handshake is complete on this side (a server
//! also waits for the client's `Finished`, so a client certificate has been
//! verified before anything else is read). rustls then gives up the traffic
//! secrets and the state it needs later (key updates, session tickets) to
//! [`Records`]. Application data that arrived with the handshake's last
//! messages comes back as plaintext; a partial record as ciphertext.
//!
//! The handshake's own bytes are copied into a growing buffer: it is a few
//! kilobytes once per connection.

use std::sync::Arc;

use ringwire_runtime::net::{TcpStream, WriteHalf};
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ExtractedSecrets, Side};

use super::record::{Kernel, Records};
use super::settings::handshake_error;
use crate::error::{Error, TlsFailure};

/// A connection whose handshake is under way.
pub(crate) enum Handshaking {
    Client(UnbufferedClientConnection),
    Server(UnbufferedServerConnection),
}

/// What a finished handshake leaves.
pub(crate) struct Established {
    pub(crate) records: Records,
    /// Plaintext rustls decrypted with the handshake's last messages.
    pub(crate) early: Vec<u8>,
    /// Ciphertext received after them (the start of a record).
    pub(crate) leftover: Vec<u8>,
}

/// Most bytes buffered while the handshake waits for a whole message.
const MAX_HANDSHAKE_BUFFER: usize = 256 * 1024;

/// What one step of the state machine asks for.
enum Step {
    /// Go on processing.
    Again,
    /// Receive more bytes.
    Receive,
    /// rustls would let application data out: the handshake is complete
    /// unless this is a server still waiting for the client's `Finished`.
    Traffic,
}

impl Handshaking {
    fn side(&self) -> Side {
        match self {
            Handshaking::Client(_) => Side::Client,
            Handshaking::Server(_) => Side::Server,
        }
    }

    fn is_handshaking(&self) -> bool {
        match self {
            Handshaking::Client(c) => c.is_handshaking(),
            Handshaking::Server(s) => s.is_handshaking(),
        }
    }

    /// One call into rustls: handles the state it reports; returns the bytes
    /// of `incoming` it used up and what to do next.
    fn step(
        &mut self,
        incoming: &mut [u8],
        outgoing: &mut Vec<u8>,
        early: &mut Vec<u8>,
    ) -> (usize, Result<Step, rustls::Error>) {
        match self {
            Handshaking::Client(c) => act(c.process_tls_records(incoming), outgoing, early),
            Handshaking::Server(s) => act(s.process_tls_records(incoming), outgoing, early),
        }
    }

    fn into_kernel(self) -> Result<(ExtractedSecrets, Kernel), rustls::Error> {
        match self {
            Handshaking::Client(c) => c
                .dangerous_into_kernel_connection()
                .map(|(s, k)| (s, Kernel::Client(k))),
            Handshaking::Server(s) => s
                .dangerous_into_kernel_connection()
                .map(|(s, k)| (s, Kernel::Server(k))),
        }
    }
}

fn act<Data>(
    status: UnbufferedStatus<'_, '_, Data>,
    outgoing: &mut Vec<u8>,
    early: &mut Vec<u8>,
) -> (usize, Result<Step, rustls::Error>) {
    let mut discard = status.discard;
    let state = match status.state {
        Ok(state) => state,
        Err(e) => return (discard, Err(e)),
    };
    let step = match state {
        ConnectionState::EncodeTlsData(mut enc) => {
            let at = outgoing.len();
            loop {
                match enc.encode(&mut outgoing[at..]) {
                    Ok(n) => {
                        outgoing.truncate(at + n);
                        break;
                    }
                    Err(EncodeError::InsufficientSize(s)) => {
                        outgoing.resize(at + s.required_size, 0);
                    }
                    Err(EncodeError::AlreadyEncoded) => {
                        outgoing.truncate(at);
                        break;
                    }
                }
            }
            Step::Again
        }
        // The encoded bytes go out before the next step (see `run`).
        ConnectionState::TransmitTlsData(t) => {
            t.done();
            Step::Again
        }
        ConnectionState::BlockedHandshake => Step::Receive,
        ConnectionState::WriteTraffic(_) => Step::Traffic,
        ConnectionState::ReadTraffic(mut r) => {
            while let Some(rec) = r.next_record() {
                match rec {
                    Ok(rec) => {
                        discard += rec.discard;
                        early.extend_from_slice(rec.payload);
                    }
                    Err(e) => return (discard, Err(e)),
                }
            }
            Step::Again
        }
        ConnectionState::PeerClosed | ConnectionState::Closed => {
            return (
                discard,
                Err(rustls::Error::General(
                    "the peer closed the connection during the handshake".into(),
                )),
            )
        }
        _ => {
            return (
                discard,
                Err(rustls::Error::General(
                    "unexpected state during the handshake (early data?)".into(),
                )),
            )
        }
    };
    (discard, Ok(step))
}

/// Runs the handshake of `tls` over `socket` (whose sending side is
/// `writer`) to completion.
pub(crate) async fn run(
    mut tls: Handshaking,
    socket: &mut TcpStream,
    writer: &WriteHalf,
    key_update_after: Option<u64>,
) -> Result<Established, Error> {
    let side = tls.side();
    let mut incoming: Vec<u8> = Vec::new();
    let mut outgoing: Vec<u8> = Vec::new();
    let mut early: Vec<u8> = Vec::new();
    loop {
        let (discard, res) = tls.step(&mut incoming, &mut outgoing, &mut early);
        incoming.drain(..discard.min(incoming.len()));
        let step = match res {
            Ok(step) => step,
            Err(e) => {
                // rustls queued an alert saying why: one more call hands it
                // out (queued records come first, before any input is
                // looked at). Only one: a further call would parse the
                // input again, which rustls does not expect after a failure.
                let _ = tls.step(&mut incoming, &mut outgoing, &mut early);
                if !outgoing.is_empty() {
                    let _ = writer.send_all(std::mem::take(&mut outgoing)).await;
                }
                return Err(handshake_error(&e, side));
            }
        };
        if !outgoing.is_empty() {
            let (res, _) = writer.send_all(std::mem::take(&mut outgoing)).await;
            res.map_err(|e| Error::io("TLS handshake: send", e))?;
        }
        match step {
            Step::Again => {}
            Step::Receive => receive(socket, &mut incoming).await?,
            // A server may send data before the client's `Finished`: wait
            // for it anyway (a client certificate is verified then).
            Step::Traffic if tls.is_handshaking() => {
                receive(socket, &mut incoming).await?;
            }
            Step::Traffic => break,
        }
    }
    let (secrets, kernel) = tls.into_kernel().map_err(|e| handshake_error(&e, side))?;
    let records = Records::new(secrets, kernel, key_update_after)?;
    Ok(Established {
        records,
        early,
        leftover: incoming,
    })
}

/// Appends the next bytes from `socket` to `incoming`.
async fn receive(socket: &mut TcpStream, incoming: &mut Vec<u8>) -> Result<(), Error> {
    match socket.recv().await {
        Ok(Some(chunk)) => {
            if incoming.len() + chunk.len() > MAX_HANDSHAKE_BUFFER {
                return Err(Error::tls(
                    TlsFailure::Handshake,
                    "the peer's handshake messages are too large",
                ));
            }
            incoming.extend_from_slice(&chunk);
            Ok(())
        }
        Ok(None) => Err(Error::tls(
            TlsFailure::Handshake,
            "the peer closed the connection during the TLS handshake",
        )),
        Err(e) => Err(Error::io("TLS handshake: receive", e)),
    }
}

/// A client handshake for `name` with `config`.
pub(crate) fn client(
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
) -> Result<Handshaking, Error> {
    UnbufferedClientConnection::new(config, name)
        .map(Handshaking::Client)
        .map_err(|e| Error::tls(TlsFailure::Settings, e.to_string()))
}

/// A server handshake with `config`.
pub(crate) fn server(config: Arc<rustls::ServerConfig>) -> Result<Handshaking, Error> {
    UnbufferedServerConnection::new(config)
        .map(Handshaking::Server)
        .map_err(|e| Error::tls(TlsFailure::Settings, e.to_string()))
}

#[cfg(test)]
mod tests {
    //! Our handshake driver and record layer against rustls's own
    //! connections, in memory: handshakes, data both ways, padded full
    //! records, key updates asked for by either side, session tickets,
    //! `close_notify` both ways, a tampered record.

    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{ConnectionCommon, RootCertStore};

    use super::*;
    use crate::tls::seal::Output;

    fn identity() -> (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        RootCertStore,
    ) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let mut roots = RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        (vec![cert], key, roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn configs() -> (rustls::ServerConfig, rustls::ClientConfig) {
        let (chain, key, roots) = identity();
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (server, client)
    }

    /// Everything `peer` has to send.
    fn drain<D>(peer: &mut ConnectionCommon<D>) -> Vec<u8> {
        let mut v = Vec::new();
        while peer.wants_write() {
            peer.write_tls(&mut v).unwrap();
        }
        v
    }

    /// Gives `bytes` to `peer`; returns the plaintext it read from them.
    fn feed<D>(peer: &mut ConnectionCommon<D>, bytes: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let mut rd = bytes;
        let mut plain = Vec::new();
        while !rd.is_empty() {
            peer.read_tls(&mut rd).unwrap();
            peer.process_new_packets()?;
            let mut buf = [0u8; 4096];
            loop {
                match peer.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => plain.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        Ok(plain)
    }

    /// Runs `ours` against `peer` until our side's handshake is complete;
    /// returns the record layer and the bytes left over.
    fn establish<D>(mut ours: Handshaking, peer: &mut ConnectionCommon<D>) -> (Records, Vec<u8>) {
        let mut incoming = Vec::new();
        let mut outgoing = Vec::new();
        let mut early = Vec::new();
        for _ in 0..100 {
            incoming.extend(drain(peer));
            let (discard, res) = ours.step(&mut incoming, &mut outgoing, &mut early);
            incoming.drain(..discard);
            let step = res.unwrap();
            assert!(feed(peer, &std::mem::take(&mut outgoing))
                .unwrap()
                .is_empty());
            if matches!(step, Step::Traffic) && !ours.is_handshaking() {
                let (secrets, kernel) = ours.into_kernel().unwrap();
                assert!(early.is_empty());
                return (Records::new(secrets, kernel, Some(2)).unwrap(), incoming);
            }
        }
        panic!("the handshake did not finish");
    }

    /// Opens `wire` (whole records) with `records`; the plaintext.
    fn open(records: &mut Records, mut wire: Vec<u8>) -> Result<Vec<u8>, Error> {
        let mut ranges = Vec::new();
        let used = records.open(&mut wire, &mut ranges)?;
        assert_eq!(used, wire.len(), "whole records");
        let mut plain = Vec::new();
        for r in ranges {
            assert_eq!(
                (wire.as_ptr() as usize + r.start) % 16,
                0,
                "aligned plaintext"
            );
            plain.extend_from_slice(&wire[r]);
        }
        Ok(plain)
    }

    /// Seals `data` with `records` (the send pool needs a ringwire core).
    fn seal(records: &mut Records, data: &[u8]) -> Vec<u8> {
        let mut out = Output::new();
        records.seal(&[data], &mut out).unwrap();
        out.finish()
            .iter()
            .flat_map(|b| b.bytes().to_vec())
            .collect()
    }

    fn on_a_core(f: impl FnOnce() + Send + 'static) {
        let rt = ringwire_runtime::Runtime::builder()
            .placement(ringwire_runtime::Placement::Unpinned(1))
            .recv_buffers(16)
            .send_buffers(4)
            .build()
            .unwrap();
        rt.block_on(0, move || async move { f() }).unwrap();
        rt.shutdown(std::time::Duration::from_secs(1));
    }

    fn payload(n: usize, salt: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
    }

    #[test]
    fn our_server_side_against_a_rustls_client() {
        on_a_core(|| {
            let (server, client) = configs();
            let mut server = server;
            server.enable_secret_extraction = true;
            let ours =
                Handshaking::Server(UnbufferedServerConnection::new(Arc::new(server)).unwrap());
            let mut peer =
                rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap())
                    .unwrap();
            let (mut records, leftover) = establish(ours, &mut peer);
            assert!(leftover.is_empty());
            // The peer's data, with a key update it asks us to answer.
            peer.writer().write_all(b"first").unwrap();
            peer.refresh_traffic_keys().unwrap();
            peer.writer().write_all(b" second").unwrap();
            let wire = drain(&mut peer);
            assert_eq!(open(&mut records, wire).unwrap(), b"first second");
            // Ours, several records (full ones padded to 16 KiB), with key
            // updates: the one asked for, then every 2 records.
            let big = payload(100_000, 7);
            let wire = seal(&mut records, &big);
            // First the key update the peer asked for (a 27-byte record),
            // then full records of exactly 16 KiB on the wire.
            assert_eq!(&wire[..5], &[23, 3, 3, 0, 22]);
            assert_eq!(&wire[27..32], &[23, 3, 3, 0x3f, 0xfb]);
            assert_eq!(feed(&mut peer, &wire).unwrap(), big);
            for i in 0..5u8 {
                let small = payload(100 + i as usize, i);
                assert_eq!(feed(&mut peer, &seal(&mut records, &small)).unwrap(), small);
            }
            // A record changed on the way costs the connection.
            peer.writer().write_all(b"tampered").unwrap();
            let mut wire = drain(&mut peer);
            let last = wire.len() - 1;
            wire[last] ^= 1;
            let e = open(&mut records, wire).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Tls {
                        kind: TlsFailure::Record,
                        ..
                    }
                ),
                "{e}"
            );
        });
    }

    #[test]
    fn our_client_side_against_a_rustls_server() {
        on_a_core(|| {
            let (server, client) = configs();
            let mut client = client;
            client.enable_secret_extraction = true;
            let ours = Handshaking::Client(
                UnbufferedClientConnection::new(Arc::new(client), "localhost".try_into().unwrap())
                    .unwrap(),
            );
            let mut peer = rustls::ServerConnection::new(Arc::new(server)).unwrap();
            let (mut records, leftover) = establish(ours, &mut peer);
            // The server's session tickets (and anything after) come as
            // records after our handshake.
            let mut wire = leftover;
            peer.writer().write_all(b"hello").unwrap();
            wire.extend(drain(&mut peer));
            assert_eq!(open(&mut records, wire).unwrap(), b"hello");
            let data = payload(40_000, 3);
            assert_eq!(feed(&mut peer, &seal(&mut records, &data)).unwrap(), data);
            // close_notify both ways.
            let mut out = Output::new();
            records.close_notify(&mut out).unwrap();
            let wire: Vec<u8> = out
                .finish()
                .iter()
                .flat_map(|b| b.bytes().to_vec())
                .collect();
            assert!(feed(&mut peer, &wire).unwrap().is_empty());
            let mut rest = Vec::new();
            assert_eq!(
                peer.reader().read_to_end(&mut rest).unwrap(),
                0,
                "a clean end"
            );
            peer.send_close_notify();
            assert!(open(&mut records, drain(&mut peer)).unwrap().is_empty());
            assert!(records.peer_closed());
        });
    }
}
