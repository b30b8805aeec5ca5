//! The TLS 1.3 record layer after the handshake, sans-IO: records are opened
//! in place in the memory they arrived in and sealed from the frames queued
//! for sending.
//!
//! rustls derives every key ([`KernelConnection`]: the traffic secrets of
//! the handshake, then one per key update) and opens records (its provider's
//! `MessageDecrypter`, which also strips padding and finds the content
//! type); records are sealed by [`super::seal`]. This module splits the byte
//! stream into records, keeps the sequence numbers, and acts on what TLS 1.3
//! may send after the handshake (RFC 8446 §4.6, §5, §6):
//!
//! - `application_data`: plaintext for the framer;
//! - `alert`: `close_notify` ends the peer's stream, `user_canceled` is
//!   ignored, anything else is fatal;
//! - `handshake`: `KeyUpdate` (new receive key; answered with our own update
//!   when the peer asks), `NewSessionTicket` (client only; handed to rustls).
//!
//! Opening ([`Rx::open`]) works on a chunk the caller owns exclusively:
//! every whole record in it is decrypted in place, and its plaintext moved by
//! at most 15 bytes so that it starts 16-byte aligned (frames inside are then
//! aligned too, and their archives can be read in place). A record cut by the
//! chunk's end is carried into a buffer of its own, completed from the next
//! chunk and opened there.
//!
//! Sealing ([`Records::seal`]) protects the queued buffers as records
//! written straight into registered send buffers ([`super::seal`]).

use std::ops::Range;

use rkyv::util::AlignedVec;
use rustls::client::ClientConnectionData;
use rustls::crypto::cipher::{InboundOpaqueMessage, MessageDecrypter};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, ExtractedSecrets, ProtocolVersion,
    SupportedCipherSuite, Tls13CipherSuite,
};

use super::seal::{Gather, Output, Sealer, FULL_CONTENT};
use crate::error::{Error, TlsFailure};

/// Record header: type, legacy version, length.
pub(crate) const HEADER: usize = 5;
/// Largest plaintext of one record (2^14).
pub(crate) const MAX_PLAINTEXT: usize = 16 * 1024;
/// Largest ciphertext a TLS 1.3 peer may send in one record (2^14 + 256).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// A post-handshake message larger than this is refused.
const MAX_HANDSHAKE_MESSAGE: usize = 64 * 1024;
/// Alignment of opened plaintext (the frames' payload alignment).
const ALIGN: usize = ringwire_proto::PAYLOAD_ALIGN;
/// Where a carried record starts in its buffer, so that its plaintext
/// starts at `ALIGN`.
const CARRY_AT: usize = ALIGN - HEADER;

const CT_ALERT: u8 = 21;
const CT_HANDSHAKE: u8 = 22;
const CT_APPLICATION_DATA: u8 = 23;
const HS_NEW_SESSION_TICKET: u8 = 4;
const HS_KEY_UPDATE: u8 = 24;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_USER_CANCELED: u8 = 90;

fn record_error(detail: impl Into<std::sync::Arc<str>>) -> Error {
    Error::tls(TlsFailure::Record, detail)
}

/// rustls's state after the handshake: it derives the next traffic keys and
/// takes session tickets.
pub(crate) enum Kernel {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Kernel {
    fn update_rx(&mut self) -> Result<ConnectionTrafficSecrets, rustls::Error> {
        match self {
            Kernel::Client(k) => k.update_rx_secret(),
            Kernel::Server(k) => k.update_rx_secret(),
        }
        .map(|(_, s)| s)
    }

    fn update_tx(&mut self) -> Result<ConnectionTrafficSecrets, rustls::Error> {
        match self {
            Kernel::Client(k) => k.update_tx_secret(),
            Kernel::Server(k) => k.update_tx_secret(),
        }
        .map(|(_, s)| s)
    }

    fn suite(&self) -> SupportedCipherSuite {
        match self {
            Kernel::Client(k) => k.negotiated_cipher_suite(),
            Kernel::Server(k) => k.negotiated_cipher_suite(),
        }
    }
}

fn tls13(suite: SupportedCipherSuite) -> Result<&'static Tls13CipherSuite, Error> {
    match suite {
        SupportedCipherSuite::Tls13(s) => Ok(s),
        #[allow(unreachable_patterns)]
        _ => Err(Error::tls(
            TlsFailure::Handshake,
            "the negotiated cipher suite is not a TLS 1.3 suite",
        )),
    }
}

fn decrypter(
    suite: &Tls13CipherSuite,
    secrets: ConnectionTrafficSecrets,
) -> Result<Box<dyn MessageDecrypter>, Error> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            Ok(suite.aead_alg.decrypter(key, iv))
        }
        _ => Err(Error::tls(
            TlsFailure::Handshake,
            "traffic keys of an unsupported AEAD",
        )),
    }
}

/// One connection's record layer, both directions.
pub(crate) struct Records {
    kernel: Kernel,
    suite: &'static Tls13CipherSuite,
    pub(crate) rx: Rx,
    pub(crate) tx: Tx,
}

impl Records {
    /// The record layer for a connection whose handshake produced
    /// `secrets`; `key_update_after` caps the records sent under one key.
    pub(crate) fn new(
        secrets: ExtractedSecrets,
        kernel: Kernel,
        key_update_after: Option<u64>,
    ) -> Result<Records, Error> {
        let suite = tls13(kernel.suite())?;
        // Update well before the suite's confidentiality limit (rustls's own
        // connections do the same).
        let limit = suite.common.confidentiality_limit;
        let mut update_at = limit.saturating_sub(limit / 16).max(1);
        if let Some(n) = key_update_after {
            update_at = update_at.min(n);
        }
        let (rx_seq, rx_secrets) = secrets.rx;
        let (tx_seq, tx_secrets) = secrets.tx;
        Ok(Records {
            rx: Rx {
                dec: decrypter(suite, rx_secrets)?,
                seq: rx_seq,
                hs: Vec::new(),
                closed: false,
            },
            tx: Tx {
                sealer: Sealer::new(&tx_secrets, tx_seq)?,
                update_at,
                update_requested: false,
            },
            kernel,
            suite,
        })
    }

    /// Opens every whole record in `buf` in place; see [`Rx::open`].
    pub(crate) fn open(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<Range<usize>>,
    ) -> Result<usize, Error> {
        let Records {
            kernel,
            suite,
            rx,
            tx,
        } = self;
        let mut keys = Keys { kernel, suite, tx };
        rx.open(buf, plain, &mut keys)
    }

    /// Seals `bufs` (in order) into records appended to `out`, preceded by a
    /// key update when one is due.
    pub(crate) fn seal(&mut self, bufs: &[&[u8]], out: &mut Output) -> Result<(), Error> {
        let mut src = Gather::new(bufs);
        let mut left = src.remaining();
        while left > 0 {
            if self.tx.update_requested || self.tx.sealer.seq >= self.tx.update_at {
                self.update_tx_key(out)?;
            }
            let n = FULL_CONTENT.min(left);
            out.record(&mut self.tx.sealer, CT_APPLICATION_DATA, &mut src, n)?;
            left -= n;
        }
        Ok(())
    }

    /// Seals a `close_notify` alert: this side sends nothing more.
    pub(crate) fn close_notify(&mut self, out: &mut Output) -> Result<(), Error> {
        let alert: [u8; 2] = [1, ALERT_CLOSE_NOTIFY];
        let bufs: [&[u8]; 1] = [&alert];
        out.record(&mut self.tx.sealer, CT_ALERT, &mut Gather::new(&bufs), 2)
    }

    /// Sends a `KeyUpdate` under the current key, then switches to the next.
    fn update_tx_key(&mut self, out: &mut Output) -> Result<(), Error> {
        // KeyUpdate, length 1, update_not_requested.
        let msg: [u8; 5] = [HS_KEY_UPDATE, 0, 0, 1, 0];
        let bufs: [&[u8]; 1] = [&msg];
        out.record(
            &mut self.tx.sealer,
            CT_HANDSHAKE,
            &mut Gather::new(&bufs),
            5,
        )?;
        let secrets = self
            .kernel
            .update_tx()
            .map_err(|e| record_error(format!("key update: {e}")))?;
        self.tx.sealer = Sealer::new(&secrets, 0)?;
        self.tx.update_requested = false;
        Ok(())
    }

    /// Whether the peer sent `close_notify` (nothing more comes).
    pub(crate) fn peer_closed(&self) -> bool {
        self.rx.closed
    }
}

/// What opening a record may change outside the receive direction.
struct Keys<'a> {
    kernel: &'a mut Kernel,
    suite: &'a Tls13CipherSuite,
    tx: &'a mut Tx,
}

/// The receive direction.
pub(crate) struct Rx {
    dec: Box<dyn MessageDecrypter>,
    seq: u64,
    /// A post-handshake message being joined across records.
    hs: Vec<u8>,
    /// The peer sent `close_notify`.
    closed: bool,
}

impl Rx {
    /// Opens the whole records at the start of `buf`, in place, appending the
    /// range of each one's plaintext (16-byte aligned in memory, possibly
    /// empty ones left out) to `plain`. Returns where the first record not
    /// wholly in `buf` starts (`buf.len()` if none, or once the peer's
    /// `close_notify` arrived: what follows it is ignored).
    fn open(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<Range<usize>>,
        keys: &mut Keys<'_>,
    ) -> Result<usize, Error> {
        let mut pos = 0;
        // Bytes before this offset hold plaintext handed out already.
        let mut floor = 0;
        while !self.closed {
            let Some(len) = record_len(&buf[pos..])? else {
                return Ok(pos);
            };
            let end = pos + HEADER + len;
            let base = buf.as_ptr() as usize;
            let msg = InboundOpaqueMessage::new(
                ContentType::ApplicationData,
                ProtocolVersion::TLSv1_2,
                &mut buf[pos + HEADER..end],
            );
            let opened = self.dec.decrypt(msg, self.seq).map_err(|e| {
                record_error(format!(
                    "a record from the peer failed authentication ({e})"
                ))
            })?;
            self.seq = self.seq.wrapping_add(1);
            let typ = opened.typ;
            let n = opened.payload.len();
            let start = opened.payload.as_ptr() as usize - base;
            if n > MAX_PLAINTEXT {
                return Err(record_error("the peer sent a record over 16 KiB"));
            }
            if typ != ContentType::Handshake && !self.hs.is_empty() {
                return Err(record_error(
                    "the peer interleaved a record with a split handshake message",
                ));
            }
            match typ {
                ContentType::ApplicationData => {
                    if n > 0 {
                        let at = aligned_start(base, start, floor);
                        buf.copy_within(start..start + n, at);
                        plain.push(at..at + n);
                        floor = at + n;
                    }
                }
                ContentType::Alert => {
                    let payload = &buf[start..start + n];
                    self.alert(payload)?;
                }
                ContentType::Handshake => {
                    if n == 0 {
                        return Err(record_error("the peer sent an empty handshake record"));
                    }
                    if self.hs.len() + n > MAX_HANDSHAKE_MESSAGE {
                        return Err(record_error("the peer sent an oversized handshake message"));
                    }
                    self.hs.extend_from_slice(&buf[start..start + n]);
                    self.handshake_messages(keys)?;
                }
                other => {
                    return Err(record_error(format!(
                        "the peer sent an unexpected {other:?} record after the handshake"
                    )))
                }
            }
            pos = end;
        }
        Ok(buf.len())
    }

    fn alert(&mut self, payload: &[u8]) -> Result<(), Error> {
        let &[_level, description] = payload else {
            return Err(record_error("the peer sent a malformed alert"));
        };
        match description {
            ALERT_CLOSE_NOTIFY => {
                self.closed = true;
                Ok(())
            }
            ALERT_USER_CANCELED => Ok(()),
            d => Err(Error::tls(
                TlsFailure::PeerAlert,
                format!(
                    "the peer sent the fatal alert {:?}",
                    AlertDescription::from(d)
                ),
            )),
        }
    }

    /// Acts on every whole post-handshake message joined in `self.hs`.
    fn handshake_messages(&mut self, keys: &mut Keys<'_>) -> Result<(), Error> {
        let mut at = 0;
        while let Some(&[typ, a, b, c]) = self.hs.get(at..at + 4) {
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            let Some(body) = self.hs.get(at + 4..at + 4 + len) else {
                break;
            };
            at += 4 + len;
            match typ {
                HS_KEY_UPDATE => {
                    let request = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(record_error("the peer sent a malformed KeyUpdate")),
                    };
                    // A key change must fall on a record boundary.
                    if at != self.hs.len() {
                        return Err(record_error(
                            "the peer sent data after a KeyUpdate in the same record",
                        ));
                    }
                    let secrets = keys
                        .kernel
                        .update_rx()
                        .map_err(|e| record_error(format!("key update: {e}")))?;
                    self.dec = decrypter(keys.suite, secrets)?;
                    self.seq = 0;
                    if request {
                        keys.tx.update_requested = true;
                    }
                }
                HS_NEW_SESSION_TICKET => match keys.kernel {
                    Kernel::Client(k) => k
                        .handle_new_session_ticket(body)
                        .map_err(|e| record_error(format!("session ticket: {e}")))?,
                    Kernel::Server(_) => {
                        return Err(record_error("a client sent a NewSessionTicket"))
                    }
                },
                other => {
                    return Err(record_error(format!(
                        "the peer sent an unexpected handshake message (type {other}) after \
                         the handshake"
                    )))
                }
            }
        }
        self.hs.drain(..at);
        Ok(())
    }
}

/// The length of the record at the start of `bytes` (its ciphertext, after
/// the header) if the record is all there; checks the header.
fn record_len(bytes: &[u8]) -> Result<Option<usize>, Error> {
    let Some(&[typ, major, _minor, a, b]) = bytes.first_chunk::<HEADER>() else {
        return Ok(None);
    };
    // After the handshake every TLS 1.3 record is `application_data`
    // outwardly, with legacy version 3.x.
    if typ != u8::from(ContentType::ApplicationData) || major != 3 {
        return Err(record_error(format!(
            "the peer sent a record of outer type {typ} (not TLS 1.3 protected data)"
        )));
    }
    let len = u16::from_be_bytes([a, b]) as usize;
    if len > MAX_CIPHERTEXT {
        return Err(record_error("the peer sent a record over 16 KiB"));
    }
    Ok((bytes.len() >= HEADER + len).then_some(len))
}

/// Where plaintext at `start` (of a buffer at address `base`) goes to start
/// `ALIGN`-aligned: up to 15 bytes down, onto the dead bytes of its record
/// header and of the record before, never below `floor` (plaintext handed
/// out); else up, onto its own content type and tag (at least 17 bytes).
fn aligned_start(base: usize, start: usize, floor: usize) -> usize {
    let mis = (base + start) % ALIGN;
    if mis == 0 {
        start
    } else if start >= floor + mis {
        start - mis
    } else {
        start + (ALIGN - mis)
    }
}

/// The send direction.
pub(crate) struct Tx {
    sealer: Sealer,
    /// Sequence number at which the key is updated.
    update_at: u64,
    /// The peer asked for a key update (done before the next record).
    update_requested: bool,
}

/// A record cut by the end of a receive buffer, completed from the next ones
/// and opened in a buffer of its own.
pub(crate) struct Carry {
    buf: AlignedVec<ALIGN>,
}

impl Carry {
    pub(crate) fn new() -> Carry {
        Carry {
            buf: AlignedVec::new(),
        }
    }

    /// Whether part of a record is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.len() <= CARRY_AT
    }

    /// Starts carrying `bytes` (the start of a record).
    pub(crate) fn start(&mut self, bytes: &[u8]) {
        // The whole record's size when its header is there.
        let size = match bytes.get(3..5) {
            Some(&[a, b]) => HEADER + u16::from_be_bytes([a, b]) as usize,
            _ => HEADER + 1024,
        };
        self.buf =
            AlignedVec::with_capacity(CARRY_AT + size.clamp(bytes.len(), HEADER + MAX_CIPHERTEXT));
        self.buf.extend_from_slice(&[0; CARRY_AT]);
        self.buf.extend_from_slice(bytes);
    }

    /// Takes from `bytes` what the carried record still needs; returns how
    /// many bytes were taken and whether the record is now whole.
    pub(crate) fn fill(&mut self, bytes: &[u8]) -> Result<(usize, bool), Error> {
        let mut taken = 0;
        let have = self.buf.len() - CARRY_AT;
        if have < HEADER {
            let n = (HEADER - have).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            taken = n;
            if have + n < HEADER {
                return Ok((taken, false));
            }
        }
        let head = &self.buf[CARRY_AT..];
        // Checks the header; the length is known now.
        let len = match record_len(head)? {
            Some(len) => len,
            None => {
                let len = u16::from_be_bytes([head[3], head[4]]) as usize;
                let want = HEADER + len - head.len();
                let n = want.min(bytes.len() - taken);
                self.buf.reserve(want);
                self.buf.extend_from_slice(&bytes[taken..taken + n]);
                taken += n;
                return Ok((taken, n == want));
            }
        };
        debug_assert_eq!(self.buf.len(), CARRY_AT + HEADER + len);
        Ok((taken, true))
    }

    /// The whole carried record (in its buffer), for opening; the carry is
    /// empty afterwards.
    pub(crate) fn take(&mut self) -> (AlignedVec<ALIGN>, usize) {
        (std::mem::take(&mut self.buf), CARRY_AT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_start_moves_down_over_dead_bytes_or_up_into_the_tag() {
        // Already aligned.
        assert_eq!(aligned_start(0x1000, 16, 0), 16);
        // Down by 5 (first record in an aligned buffer).
        assert_eq!(aligned_start(0x1000, 5, 0), 0);
        // Not below the floor: up instead.
        assert_eq!(aligned_start(0x1000, 5, 1), 16);
        assert_eq!(aligned_start(0x1003, 5, 0), 13);
        for base in 0x1000..0x1010usize {
            for start in 5..64usize {
                for floor in 0..=start.saturating_sub(5) {
                    let at = aligned_start(base, start, floor);
                    assert_eq!((base + at) % ALIGN, 0);
                    assert!(at >= floor);
                    assert!(at + 15 >= start && at <= start + 15);
                }
            }
        }
    }

    #[test]
    fn record_len_checks_the_header() {
        assert!(record_len(&[23, 3, 3, 0]).unwrap().is_none());
        assert!(record_len(&[23, 3, 3, 0, 2, 0]).unwrap().is_none());
        assert_eq!(record_len(&[23, 3, 3, 0, 1, 0]).unwrap(), Some(1));
        assert!(record_len(&[22, 3, 3, 0, 1, 0]).is_err());
        assert!(record_len(&[23, 4, 3, 0, 1, 0]).is_err());
        assert!(record_len(&[23, 3, 3, 0x41, 1]).is_err());
    }

    #[test]
    fn carry_completes_a_record_across_chunks() {
        let record = [23u8, 3, 3, 0, 4, 1, 2, 3, 4, 99];
        let mut c = Carry::new();
        assert!(c.is_empty());
        c.start(&record[..2]);
        assert!(!c.is_empty());
        assert_eq!(c.fill(&record[2..4]).unwrap(), (2, false));
        assert_eq!(c.fill(&record[4..7]).unwrap(), (3, false));
        assert_eq!(c.fill(&record[7..]).unwrap(), (2, true));
        let (buf, at) = c.take();
        assert_eq!(&buf[at..], &record[..9]);
        assert_eq!((buf.as_ptr() as usize + at + HEADER) % ALIGN, 0);
        assert!(c.is_empty());
        let mut bad = Carry::new();
        bad.start(&[1, 3, 3]);
        assert!(bad.fill(&[0, 4]).is_err());
    }
}
