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
