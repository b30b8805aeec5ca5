//! The incremental frame decoder.
//!
//! Feed it whatever chunks the transport received, in order, with
//! [`Decoder::decode`]; each call consumes a prefix of the chunk and returns
//! at most one item. Call it again on the rest of the chunk until it returns
//! no item, then wait for the next chunk:
//!
//! ```
//! # use ringwire_proto::{Decoder, Item};
//! # fn on_frame(_: ringwire_proto::Frame<'_>) {}
//! # let chunk: &[u8] = &[];
//! # let mut decoder = Decoder::new(1 << 20, 1 << 30);
//! let mut at = 0;
//! loop {
//!     let decoded = decoder.decode(&chunk[at..])?;
//!     at += decoded.consumed;
//!     match decoded.item {
//!         Some(Item::Frame(frame)) => on_frame(frame),
//!         Some(Item::Bulk(piece)) => { /* copy piece.bytes() to its destination */ }
//!         None => break,
//!     }
//! }
//! # Ok::<(), ringwire_proto::ProtoError>(())
//! ```
//!
//! Zero copy where possible:
//!
//! - a frame whose header and payload lie inside one chunk, with the payload
//!   16-byte aligned (always the case for an aligned receive buffer), is
//!   returned as a view into the chunk;
//! - a frame spanning chunks (or misaligned) is assembled once into the
//!   decoder's own aligned buffer;
//! - bulk segments are never assembled: they come out as [`BulkPiece`]s, one
//!   per chunk, for the caller to copy straight into the destination it chose.
//!
//! Limits are checked on the header, before anything is allocated: a frame
//! announcing more than `max_payload` bytes (or a bulk segment above
//! `max_bulk`) is a fatal [`ProtoError::FrameTooLarge`]. After any error the
//! decoder stays failed and returns [`ProtoError::DecoderFailed`].

use rkyv::util::AlignedVec;

use crate::access::{access, access_trusted, PAYLOAD_ALIGN};
use crate::bulk::{split_body, BulkSizes};
use crate::error::ProtoError;
use crate::header::{padded_len, FrameHeader, FrameKind, HEADER_LEN};
use crate::message::Message;

/// One decoded frame. Borrows either the caller's chunk or the decoder's
/// assembly buffer; see [`Frame::is_borrowed`].
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    header: FrameHeader,
    payload: &'a [u8],
    borrowed: bool,
}

impl<'a> Frame<'a> {
    /// A frame from a header and its payload (without padding), framed by
    /// the caller.
    pub(crate) fn new(header: FrameHeader, payload: &'a [u8]) -> Self {
        Frame {
            header,
            payload,
            borrowed: true,
        }
    }

    /// The frame's header.
    pub fn header(&self) -> &FrameHeader {
        &self.header
    }

    /// The frame's kind.
    pub fn kind(&self) -> FrameKind {
        self.header.kind
    }

    /// The payload, without padding.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Whether the payload is a view into the chunk passed to
    /// [`Decoder::decode`] (no copy) rather than the decoder's assembly buffer.
    pub fn is_borrowed(&self) -> bool {
        self.borrowed
    }

    /// For message kinds: the bulk descriptor (if the frame announces bulk
    /// segments) and the rkyv archive.
    pub fn body(&self) -> Result<(Option<BulkSizes<'a>>, &'a [u8]), ProtoError> {
        if !self.header.kind.carries_message() {
            return Err(ProtoError::Violation("frame kind carries no message"));
        }
        split_body(&self.header, self.payload)
    }

    /// Validates the archive as `T` and returns it. Checks the type id
    /// first.
    pub fn access<T: Message>(&self) -> Result<&'a T::Archived, ProtoError> {
        let archive = self.typed_archive::<T>()?;
        access::<T>(archive)
    }

    /// Returns the archive as `T` without bytecheck validation. The type id
    /// and the bulk descriptor are still checked.
    ///
    /// # Safety
    ///
    /// The frame's archive must have been written by this binary's rkyv as a
    /// `T` (for example a frame this process encoded itself and passed over an
    /// in-process transport), and the payload must be 16-byte aligned.
    pub unsafe fn access_trusted<T: Message>(&self) -> Result<&'a T::Archived, ProtoError> {
        let archive = self.typed_archive::<T>()?;
        // SAFETY: forwarded from this function's contract: the archive is a
        // valid, aligned `T` written by this binary.
        Ok(unsafe { access_trusted::<T>(archive) })
    }

    fn typed_archive<T: Message>(&self) -> Result<&'a [u8], ProtoError> {
        let (_, archive) = self.body()?;
        if self.header.type_id != T::TYPE_ID {
            return Err(ProtoError::WrongType {
                expected: T::TYPE_ID,
                found: self.header.type_id,
            });
        }
        Ok(archive)
    }
}

/// A piece of a bulk segment: the bytes of one [`FrameKind::Bulk`] frame that
/// were in one chunk.
#[derive(Debug, Clone, Copy)]
pub struct BulkPiece<'a> {
    header: FrameHeader,
    offset: u32,
    bytes: &'a [u8],
    first: bool,
}

impl<'a> BulkPiece<'a> {
    /// The bulk frame's header (`type_id` is the segment index,
    /// `correlation` the owning message's sequence number).
    pub fn header(&self) -> &FrameHeader {
        &self.header
    }

    /// Where `bytes` go within the segment.
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// The bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Whether this is the first piece of its frame (the header was just
    /// decoded; `bytes` may be empty).
    pub fn is_first(&self) -> bool {
        self.first
    }

    /// Whether this piece completes the segment.
    pub fn is_last(&self) -> bool {
        self.offset as usize + self.bytes.len() == self.header.payload_len as usize
    }
}

/// What one [`Decoder::decode`] call produced.
#[derive(Debug, Clone, Copy)]
pub enum Item<'a> {
    /// A complete frame.
    Frame(Frame<'a>),
    /// Part of a bulk segment.
    Bulk(BulkPiece<'a>),
}

/// Result of one [`Decoder::decode`] call.
#[derive(Debug, Clone, Copy)]
pub struct Decoded<'a> {
    /// Bytes of the chunk consumed; pass the rest to the next call.
    pub consumed: usize,
    /// The item decoded, or `None` if more input is needed.
    pub item: Option<Item<'a>>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Header,
    Assembling(FrameHeader),
    Bulk {
        header: FrameHeader,
        offset: u32,
        announced: bool,
    },
    Failed,
}

/// Incremental frame decoder for one connection's byte stream.
///
/// Memory: the header scratch (32 bytes) plus an assembly buffer that grows
/// to the largest frame that had to be assembled (at most `max_payload`).
#[derive(Debug)]
pub struct Decoder {
    state: State,
    header_buf: [u8; HEADER_LEN],
    header_len: usize,
    assembly: AlignedVec<PAYLOAD_ALIGN>,
    skip: usize,
    max_payload: u32,
    max_bulk: u32,
}

impl Decoder {
    /// A decoder refusing frames above `max_payload` payload bytes and bulk
    /// segments above `max_bulk` bytes.
    pub fn new(max_payload: u32, max_bulk: u32) -> Self {
        Decoder {
            state: State::Header,
            header_buf: [0; HEADER_LEN],
            header_len: 0,
            assembly: AlignedVec::new(),
            skip: 0,
            max_payload,
            max_bulk,
        }
    }

    /// Forgets any partial frame (after the connection was cut, before
    /// decoding a new connection's bytes). Clears a failed state.
    pub fn reset(&mut self) {
        self.state = State::Header;
        self.header_len = 0;
        self.skip = 0;
        self.assembly.clear();
    }

    /// Whether the decoder is between frames (no partial frame buffered).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header) && self.header_len == 0 && self.skip == 0
    }

    /// Decodes at most one item from the front of `input`.
    pub fn decode<'a>(&'a mut self, input: &'a [u8]) -> Result<Decoded<'a>, ProtoError> {
        match self.decode_inner(input) {
            Ok(step) => Ok(step.resolve(input, &self.assembly)),
            Err(err) => {
                self.state = State::Failed;
                Err(err)
            }
        }
    }

    fn decode_inner(&mut self, input: &[u8]) -> Result<Step, ProtoError> {
        let mut pos = self.take_skip(input, 0);
        if let State::Header = self.state {
            let Some((header, at)) = self.read_header(input, pos)? else {
                return Ok(Step::none(input.len()));
            };
            pos = at;
            let len = header.payload_len;
            if header.kind == FrameKind::Bulk {
                if len > self.max_bulk {
                    return Err(too_large(len, self.max_bulk));
                }
                self.state = State::Bulk {
                    header,
                    offset: 0,
                    announced: false,
                };
            } else {
                if len > self.max_payload {
                    return Err(too_large(len, self.max_payload));
                }
                let len = len as usize;
                let rest = &input[pos..];
                if rest.len() >= len && rest.as_ptr() as usize % PAYLOAD_ALIGN == 0 {
                    let start = pos;
                    pos = self.finish_frame(input, pos + len, len);
                    return Ok(Step {
                        consumed: pos,
                        out: Out::Borrowed { header, start, len },
                    });
                }
                self.assembly.clear();
                self.assembly.reserve(len);
                self.state = State::Assembling(header);
            }
        }
        match self.state {
            State::Header => Ok(Step::none(pos)),
            State::Failed => Err(ProtoError::DecoderFailed),
            State::Assembling(header) => {
                let len = header.payload_len as usize;
                let n = (len - self.assembly.len()).min(input.len() - pos);
                self.assembly.extend_from_slice(&input[pos..pos + n]);
                pos += n;
                if self.assembly.len() < len {
                    return Ok(Step::none(pos));
                }
                self.state = State::Header;
                pos = self.finish_frame(input, pos, len);
                Ok(Step {
                    consumed: pos,
                    out: Out::Assembled { header, len },
                })
            }
            State::Bulk {
                header,
                offset,
                announced,
            } => {
                let len = header.payload_len;
                let n = ((len - offset) as usize).min(input.len() - pos);
                if n == 0 && announced {
                    return Ok(Step::none(pos));
                }
                let start = pos;
                pos += n;
                // n <= len - offset, so this stays within u32.
                let next = offset + n as u32;
                if next == len {
                    self.state = State::Header;
                    pos = self.finish_frame(input, pos, len as usize);
                } else {
                    self.state = State::Bulk {
                        header,
                        offset: next,
                        announced: true,
                    };
                }
                Ok(Step {
                    consumed: pos,
                    out: Out::Bulk {
                        header,
                        offset,
                        start,
                        len: n,
                        first: !announced,
                    },
                })
            }
        }
    }

    /// Reads a header starting at `pos`, from the chunk directly or through
    /// the scratch buffer. Returns the header and the position after it.
    fn read_header(
        &mut self,
        input: &[u8],
        pos: usize,
    ) -> Result<Option<(FrameHeader, usize)>, ProtoError> {
        let rest = &input[pos..];
        if self.header_len == 0 {
            if let Some(bytes) = rest.first_chunk::<HEADER_LEN>() {
                return Ok(Some((FrameHeader::parse(bytes)?, pos + HEADER_LEN)));
            }
        }
        let n = (HEADER_LEN - self.header_len).min(rest.len());
        self.header_buf[self.header_len..self.header_len + n].copy_from_slice(&rest[..n]);
        self.header_len += n;
        if self.header_len < HEADER_LEN {
            return Ok(None);
        }
        self.header_len = 0;
        Ok(Some((FrameHeader::parse(&self.header_buf)?, pos + n)))
    }

    /// Called with `pos` just past a payload of `len` bytes: arranges for the
    /// padding to be skipped and consumes what of it is in `input`.
    fn finish_frame(&mut self, input: &[u8], pos: usize, len: usize) -> usize {
        self.skip = padded_len(len) - len;
        self.take_skip(input, pos)
    }

    fn take_skip(&mut self, input: &[u8], pos: usize) -> usize {
        let n = self.skip.min(input.len() - pos);
        self.skip -= n;
        pos + n
    }
}

fn too_large(announced: u32, limit: u32) -> ProtoError {
    ProtoError::FrameTooLarge {
        announced: u64::from(announced),
        limit: u64::from(limit),
    }
}

/// A decode result expressed in offsets, turned into borrows at the end so
/// that the state machine can mutate `self` freely.
struct Step {
    consumed: usize,
    out: Out,
}

enum Out {
    None,
    Borrowed {
        header: FrameHeader,
        start: usize,
        len: usize,
    },
    Assembled {
        header: FrameHeader,
        len: usize,
    },
    Bulk {
        header: FrameHeader,
        offset: u32,
        start: usize,
        len: usize,
        first: bool,
    },
}

impl Step {
    fn none(consumed: usize) -> Self {
        Step {
            consumed,
            out: Out::None,
        }
    }

    fn resolve<'a>(self, input: &'a [u8], assembly: &'a [u8]) -> Decoded<'a> {
        let item = match self.out {
            Out::None => None,
            Out::Borrowed { header, start, len } => Some(Item::Frame(Frame {
                header,
                payload: &input[start..start + len],
                borrowed: true,
            })),
            Out::Assembled { header, len } => Some(Item::Frame(Frame {
                header,
                payload: &assembly[..len],
                borrowed: false,
            })),
            Out::Bulk {
                header,
                offset,
                start,
                len,
                first,
            } => Some(Item::Bulk(BulkPiece {
                header,
                offset,
                bytes: &input[start..start + len],
                first,
            })),
        };
        Decoded {
            consumed: self.consumed,
            item,
        }
    }
}
