//! Sealing TLS 1.3 records straight into the core's registered send buffers.
//!
//! rustls's own record encrypter copies the plaintext into a fresh heap
//! buffer per record (and cannot pad), so the send direction protects
//! records here, with *ring*'s AEAD (the same crate and version rustls's
//! provider uses) and the traffic keys rustls derived (RFC 8446 §5.2, §5.3):
//!
//! - per-record nonce: the 64-bit sequence number, big-endian, left-padded
//!   to the IV's 12 bytes and XORed with the IV;
//! - additional data: the 5-byte record header (`application_data`, legacy
//!   version 3.3, ciphertext length);
//! - inner plaintext: the content, its true content type, zero padding.
//!
//! The plaintext is gathered once from the queued buffers into the send
//! buffer (the send path's one copy) and sealed in place. A full record is
//! padded to exactly [`FULL_RECORD`] bytes on the wire, the size of the
//! runtime's receive buffers by default: between two ringwire peers a stream
//! of full records then lands one record per receive buffer and each is
//! opened where it lies. Records are opened by rustls's decrypter, so the
//! tests check this file against rustls itself.

use ring::aead::{
    Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
};
use ringwire_runtime::SendBuf;
use rkyv::util::AlignedVec;
use rustls::ConnectionTrafficSecrets;

use super::record::HEADER;
use crate::conn::out::{HeapFrames, OutBuf};
use crate::error::{Error, TlsFailure};

/// Wire size of a full record: header, ciphertext of the content, content
/// type and padding, tag.
pub(crate) const FULL_RECORD: usize = 16 * 1024;
/// AEAD tag length (all TLS 1.3 suites).
const TAG: usize = 16;
/// Content bytes of a full record: the most that fits [`FULL_RECORD`] with
/// the content type and tag, rounded down to a multiple of 16 so that every
/// record's content starts at a 16-byte boundary of the plaintext stream
/// (frames are padded to 16 bytes; they stay aligned in each record).
pub(crate) const FULL_CONTENT: usize = (FULL_RECORD - HEADER - 1 - TAG) / 16 * 16;
/// Zero padding that brings a full record to [`FULL_RECORD`].
const FULL_PAD: usize = FULL_RECORD - HEADER - FULL_CONTENT - 1 - TAG;
const _: () = assert!(FULL_CONTENT + 1 + FULL_PAD <= (1 << 14) + 1);

const APPLICATION_DATA: u8 = 23;

/// One direction's record protection: key, IV, sequence number.
pub(crate) struct Sealer {
    key: LessSafeKey,
    iv: [u8; 12],
    pub(crate) seq: u64,
}

impl Sealer {
    /// The sealer for `secrets` (the traffic keys rustls derived), starting
    /// at sequence number `seq`.
    pub(crate) fn new(secrets: &ConnectionTrafficSecrets, seq: u64) -> Result<Sealer, Error> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => {
                return Err(Error::tls(
                    TlsFailure::Handshake,
                    "traffic keys of an unsupported AEAD",
                ))
            }
        };
        let unbound = UnboundKey::new(alg, key.as_ref())
            .map_err(|_| Error::tls(TlsFailure::Handshake, "traffic key of the wrong length"))?;
        let iv: [u8; 12] = iv
            .as_ref()
            .try_into()
            .map_err(|_| Error::tls(TlsFailure::Handshake, "traffic IV of the wrong length"))?;
        Ok(Sealer {
            key: LessSafeKey::new(unbound),
            iv,
            seq,
        })
    }

    fn nonce(&self) -> Nonce {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(n)
    }

    /// Seals `len` bytes of `src` (from its current position) as one record
    /// of content type `typ`, padded to [`FULL_RECORD`] when `len` is
    /// [`FULL_CONTENT`], into `dst`, which must have room for
    /// [`record_len`]`(len)` bytes.
    fn seal(
        &mut self,
        typ: u8,
        src: &mut Gather<'_>,
        len: usize,
        dst: &mut [u8],
    ) -> Result<usize, Error> {
        let pad = if len == FULL_CONTENT { FULL_PAD } else { 0 };
        let inner = len + 1 + pad;
        let total = HEADER + inner + TAG;
        let Some(dst) = dst.get_mut(..total) else {
            return Err(Error::Usage("internal: no room for a TLS record"));
        };
        let cipher_len = (inner + TAG) as u16;
        let [hi, lo] = cipher_len.to_be_bytes();
        let header = [APPLICATION_DATA, 3, 3, hi, lo];
        dst[..HEADER].copy_from_slice(&header);
        let (body, tag_out) = dst[HEADER..].split_at_mut(inner);
        src.copy_to(&mut body[..len]);
        body[len] = typ;
        body[len + 1..].fill(0);
        let tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(), Aad::from(header), body)
            .map_err(|_| Error::tls(TlsFailure::Record, "sealing a record failed"))?;
        tag_out.copy_from_slice(tag.as_ref());
        self.seq += 1;
        Ok(total)
    }
}

/// Wire size of a record of `len` content bytes.
pub(crate) fn record_len(len: usize) -> usize {
    let pad = if len == FULL_CONTENT { FULL_PAD } else { 0 };
    HEADER + len + 1 + pad + TAG
}

/// A read position over a list of byte slices.
pub(crate) struct Gather<'a> {
    bufs: &'a [&'a [u8]],
    index: usize,
    at: usize,
}

impl<'a> Gather<'a> {
    pub(crate) fn new(bufs: &'a [&'a [u8]]) -> Gather<'a> {
        Gather {
            bufs,
            index: 0,
            at: 0,
        }
    }

    /// Bytes left.
    pub(crate) fn remaining(&self) -> usize {
        let rest: usize = self.bufs.iter().skip(self.index).map(|b| b.len()).sum();
        rest - self.at
    }

    /// Fills `dst` with the next `dst.len()` bytes.
    fn copy_to(&mut self, mut dst: &mut [u8]) {
        while !dst.is_empty() {
            let Some(buf) = self.bufs.get(self.index) else {
                return;
            };
            let n = (buf.len() - self.at).min(dst.len());
            dst[..n].copy_from_slice(&buf[self.at..self.at + n]);
            dst = &mut dst[n..];
            self.at += n;
            if self.at == buf.len() {
                self.index += 1;
                self.at = 0;
            }
        }
    }
}

/// Sealed records collected for one send: registered send buffers (a heap
/// buffer when the pool is empty).
pub(crate) struct Output {
    pub(crate) bufs: Vec<OutBuf>,
    cur: Option<SendBuf>,
}

impl Output {
    pub(crate) fn new() -> Output {
        Output {
            bufs: Vec::new(),
            cur: None,
        }
    }

    /// Seals `len` bytes of `src` as one record of type `typ`.
    pub(crate) fn record(
        &mut self,
        sealer: &mut Sealer,
        typ: u8,
        src: &mut Gather<'_>,
        len: usize,
    ) -> Result<(), Error> {
        let need = record_len(len);
        if self.cur.as_ref().is_none_or(|b| b.remaining() < need) {
            self.seal_current();
            self.cur = SendBuf::try_acquire().filter(|b| b.capacity() >= need);
        }
        match self.cur.as_mut() {
            Some(buf) => {
                let n = sealer.seal(typ, src, len, buf.spare_mut())?;
                buf.advance(n);
            }
            None => {
                let mut heap = AlignedVec::<16>::with_capacity(need);
                heap.resize(need, 0);
                let n = sealer.seal(typ, src, len, &mut heap)?;
                heap.resize(n, 0);
                self.bufs.push(OutBuf::Heap(HeapFrames(heap)));
            }
        }
        Ok(())
    }

    fn seal_current(&mut self) {
        if let Some(b) = self.cur.take() {
            if !b.is_empty() {
                self.bufs.push(OutBuf::Pool(b));
            }
        }
    }

    /// Everything sealed, in order.
    pub(crate) fn finish(&mut self) -> Vec<OutBuf> {
        self.seal_current();
        std::mem::take(&mut self.bufs)
    }
}
