//! Splitting a byte stream into frames, for the transports that receive a
//! stream (TCP, Unix sockets, and TLS after decryption).
//!
//! A [`Framer`] is fed the chunks the transport received, in order, and
//! hands each frame to the connection's engine:
//!
//! - a frame that lies whole in one chunk, its payload 16-byte aligned, goes
//!   to the session **in place** (the message guard keeps the chunk);
//! - a frame larger than what is left of its chunk, at or above the direct
//!   threshold, is handed back to the transport as [`Feed::DirectFrame`] with
//!   a buffer of exactly its size (the part already received copied in), for
//!   the transport to receive the rest straight into it (the kernel's copy
//!   is the only one); a bulk segment likewise ([`Feed::DirectBulk`]) into the
//!   destination the application chose;
//! - anything else (a small frame cut by a chunk boundary, a misaligned one,
//!   or any large one when the transport cannot receive direct) is assembled
//!   by copying, once.

use std::rc::Rc;

use ringwire_proto::{padded_len, FrameHeader, FrameKind, HEADER_LEN, PAYLOAD_ALIGN};
use rkyv::util::AlignedVec;

use crate::conn::core::{Conn, DestBox};
use crate::conn::incoming::Backing;
use crate::error::Error;
use crate::stats;

/// What the framer is in the middle of, across chunks.
enum Partial {
    /// A frame being assembled by copying.
    Frame {
        header: FrameHeader,
        buf: AlignedVec<16>,
    },
    /// A bulk segment whose bytes are copied into its destination (or
    /// skipped when `dest` is `None`).
    Bulk {
        header: FrameHeader,
        dest: Option<DestBox>,
        filled: usize,
    },
}

/// What [`Framer::feed`] stopped for.
pub(crate) enum Feed {
    /// The chunk is used up.
    Consumed,
    /// Receive the rest of this frame straight into `buf` (its first `have`
    /// bytes are in), then call [`Framer::direct_frame_done`].
    DirectFrame {
        header: FrameHeader,
        buf: AlignedVec<16>,
        have: usize,
    },
    /// Receive the rest of this bulk segment straight into `dest` (its first
    /// `have` bytes are in), then call [`Framer::direct_bulk_done`].
    DirectBulk {
        header: FrameHeader,
        dest: DestBox,
        have: usize,
    },
}

/// The framing state of one connection's input.
pub(crate) struct Framer {
    head: [u8; HEADER_LEN],
    head_len: usize,
    /// Padding bytes still to skip.
    skip: usize,
    partial: Option<Partial>,
    threshold: usize,
    /// The connection link this framer's bytes come from; frames of a link
    /// the connection has replaced never reach the session.
    link: u64,
}

impl Framer {
    /// A framer for link `link`, receiving frames of at least
    /// `direct_threshold` bytes direct.
    pub(crate) fn new(direct_threshold: usize, link: u64) -> Framer {
        Framer {
            head: [0; HEADER_LEN],
            head_len: 0,
            skip: 0,
            partial: None,
            threshold: direct_threshold.max(1),
            link,
        }
    }

    /// Fails once the connection has moved to another link (its bytes are
    /// no longer this one's to deliver). Checked before every hand-over to
    /// the session, after every wait.
    fn live(&self, conn: &Conn) -> Result<(), Error> {
        if conn.link() == self.link {
            Ok(())
        } else {
            Err(Error::closed("link replaced"))
        }
    }

    /// Whether a frame is partly received (the stream ending now would cut
    /// it).
    pub(crate) fn mid_frame(&self) -> bool {
        self.head_len > 0 || self.partial.is_some()
    }

    /// Feeds `bytes[*pos..]` (which live in `backing`) to the connection,
    /// frame by frame, advancing `*pos`. Stops when the chunk is used up or a
    /// frame should be received direct (only if `direct` is true).
    pub(crate) async fn feed(
        &mut self,
        conn: &Rc<Conn>,
        bytes: &[u8],
        pos: &mut usize,
        backing: &Backing,
        direct: bool,
    ) -> Result<Feed, Error> {
        let scheme = conn.scheme;
        while *pos < bytes.len() {
            // Padding of the previous frame.
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() - *pos);
                self.skip -= n;
                *pos += n;
                continue;
            }
            // A frame or segment in progress.
            if let Some(partial) = self.partial.as_mut() {
                match partial {
                    Partial::Frame { header, buf } => {
                        let want = header.payload_len as usize - buf.len();
                        let n = want.min(bytes.len() - *pos);
                        buf.extend_from_slice(&bytes[*pos..*pos + n]);
                        *pos += n;
                        if n == want {
                            let Some(Partial::Frame { header, buf }) = self.partial.take() else {
                                unreachable!("matched above")
                            };
                            self.skip = pad(&header);
                            stats::frame_assembled(scheme);
                            self.deliver_owned(conn, &header, buf).await?;
                        }
                    }
                    Partial::Bulk {
                        header,
                        dest,
                        filled,
                    } => {
                        let len = header.payload_len as usize;
                        let n = (len - *filled).min(bytes.len() - *pos);
                        if let Some(d) = dest.as_mut() {
                            d.as_mut_slice()[*filled..*filled + n]
                                .copy_from_slice(&bytes[*pos..*pos + n]);
                        }
                        *filled += n;
                        *pos += n;
                        if *filled == len {
                            let Some(Partial::Bulk { header, dest, .. }) = self.partial.take()
                            else {
                                unreachable!("matched above")
                            };
                            self.skip = pad(&header);
                            self.live(conn)?;
                            conn.bulk_end(&header, dest, 0);
                        }
                    }
                }
                continue;
            }
            // A header, possibly across chunks.
            let parsed = if self.head_len == 0 && bytes.len() - *pos >= HEADER_LEN {
                let head = bytes[*pos..]
                    .first_chunk::<HEADER_LEN>()
                    .ok_or(Error::Usage("internal: header length"))?;
                *pos += HEADER_LEN;
                FrameHeader::parse(head)
            } else {
                let n = (HEADER_LEN - self.head_len).min(bytes.len() - *pos);
                self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[*pos..*pos + n]);
                self.head_len += n;
                *pos += n;
                if self.head_len < HEADER_LEN {
                    continue;
                }
                self.head_len = 0;
                FrameHeader::parse(&self.head)
            };
            let header = match parsed {
                Ok(h) => h,
                Err(e) => return Err(conn.abort(e)),
            };
            self.live(conn)?;
            conn.check_header(&header)?;
            let len = header.payload_len as usize;
            let rest = bytes.len() - *pos;
            if header.kind == FrameKind::Bulk {
                wait_ready(conn).await?;
                self.live(conn)?;
                let mut dest = conn.bulk_start(&header)?;
                if rest >= len {
                    if let Some(d) = dest.as_mut() {
                        d.as_mut_slice().copy_from_slice(&bytes[*pos..*pos + len]);
                    }
                    *pos += len;
                    self.skip = pad(&header);
                    conn.bulk_end(&header, dest, 0);
                } else if direct && dest.is_some() && len >= self.threshold {
                    let mut d = dest
                        .take()
                        .ok_or(Error::Usage("internal: bulk destination"))?;
                    d.as_mut_slice()[..rest].copy_from_slice(&bytes[*pos..]);
                    *pos = bytes.len();
                    return Ok(Feed::DirectBulk {
                        header,
                        dest: d,
                        have: rest,
                    });
                } else {
                    self.partial = Some(Partial::Bulk {
                        header,
                        dest,
                        filled: 0,
                    });
                }
                continue;
            }
            let aligned = bytes[*pos..].as_ptr() as usize % PAYLOAD_ALIGN == 0;
            if rest >= len && (len == 0 || aligned) {
                // In place. An empty payload has no bytes to read in place,
                // but its address is still checked (an archive is read
                // through an aligned pointer, even an empty one): it gets
                // an aligned empty slice, wherever its frame fell.
                let payload = if len == 0 {
                    empty_payload()
                } else {
                    &bytes[*pos..*pos + len]
                };
                wait_ready(conn).await?;
                self.live(conn)?;
                conn.on_frame(&header, payload, backing, false)?;
                *pos += len;
                self.skip = pad(&header);
                continue;
            }
            if direct && rest < len && len >= self.threshold {
                let mut buf = AlignedVec::<16>::with_capacity(len);
                buf.extend_from_slice(&bytes[*pos..]);
                *pos = bytes.len();
                return Ok(Feed::DirectFrame {
                    header,
                    buf,
                    have: rest,
                });
            }
            // Assemble by copying.
            let mut buf = AlignedVec::<16>::with_capacity(len);
            let n = rest.min(len);
            buf.extend_from_slice(&bytes[*pos..*pos + n]);
            *pos += n;
            if n == len {
                self.skip = pad(&header);
                stats::frame_assembled(scheme);
                self.deliver_owned(conn, &header, buf).await?;
            } else {
                self.partial = Some(Partial::Frame { header, buf });
            }
        }
        Ok(Feed::Consumed)
    }

    /// The rest of a [`Feed::DirectFrame`] arrived: `buf` holds the whole
    /// payload.
    pub(crate) async fn direct_frame_done(
        &mut self,
        conn: &Rc<Conn>,
        header: &FrameHeader,
        mut buf: AlignedVec<16>,
    ) -> Result<(), Error> {
        let len = header.payload_len as usize;
        if buf.capacity() < len {
            return Err(Error::Usage("internal: direct frame buffer too small"));
        }
        // SAFETY: the first bytes were copied in and the receive wrote the
        // rest, up to `len` (the caller checked how many it received).
        unsafe { buf.set_len(len) };
        self.skip = pad(header);
        stats::frame_direct(conn.scheme);
        self.deliver_owned(conn, header, buf).await
    }

    /// The rest of a [`Feed::DirectBulk`] arrived; `direct` bytes of it
    /// straight from the kernel.
    pub(crate) fn direct_bulk_done(
        &mut self,
        conn: &Rc<Conn>,
        header: &FrameHeader,
        dest: DestBox,
        direct: usize,
    ) -> Result<(), Error> {
        self.skip = pad(header);
        self.live(conn)?;
        conn.bulk_end(header, Some(dest), direct);
        Ok(())
    }

    /// Delivers a frame held in its own buffer.
    async fn deliver_owned(
        &self,
        conn: &Rc<Conn>,
        header: &FrameHeader,
        buf: AlignedVec<16>,
    ) -> Result<(), Error> {
        wait_ready(conn).await?;
        self.live(conn)?;
        let backing = Backing::Heap(Rc::new(buf));
        let bytes = backing.bytes();
        conn.on_frame(
            header,
            &bytes[..header.payload_len as usize],
            &backing,
            false,
        )
    }
}

/// An empty payload at a [`PAYLOAD_ALIGN`]-aligned address, for empty
/// messages whose frame starts at any address in a receive buffer. Static,
/// so it outlives every message guard that borrows it.
fn empty_payload() -> &'static [u8] {
    #[repr(C, align(16))]
    struct Aligned([u8; PAYLOAD_ALIGN]);
    const _: () = assert!(PAYLOAD_ALIGN == 16, "the alignment above must match");
    static EMPTY: Aligned = Aligned([0; PAYLOAD_ALIGN]);
    &EMPTY.0[..0]
}

fn pad(header: &FrameHeader) -> usize {
    let len = header.payload_len as usize;
    padded_len(len) - len
}

pub(crate) async fn wait_ready(conn: &Rc<Conn>) -> Result<(), Error> {
    if conn.reader_may_go() {
        Ok(())
    } else {
        conn.after_session();
        let ready = conn.reader_ready().await;
        conn.refresh_input_time();
        ready
    }
}
