//! `IORING_OP_SENDMSG` on a datagram socket: a destination address (none on
//! a connected socket) and, for UDP GSO, a `UDP_SEGMENT` control message
//! that makes the kernel cut the bytes into equal-size datagrams (the last
//! may be shorter), so one call carries many datagrams.
//!
//! The bytes are pieces of buffers shared by every send of one batch
//! ([`Rc`] of the buffers: each operation keeps them alive, and the batch
//! gets them back once the last operation completed).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use io_uring::{opcode, squeue, types};
use socket2::SockAddr;

use super::buf::IoBuf;
use super::Operation;
use crate::driver::lifecycle::Cqe;
use crate::stats::{self, Stats};

/// Bytes `offset..offset + len` of buffer `buf` of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) buf: usize,
    pub(crate) offset: usize,
    pub(crate) len: usize,
}

/// A control message carrying one `u16`: `CMSG_SPACE(2)` bytes, laid out as
/// the kernel reads them (header, then the data, then padding).
#[repr(C)]
struct SegmentCmsg {
    hdr: libc::cmsghdr,
    segment: u16,
    _pad: [u8; 6],
}

/// `CMSG_LEN(2)`: the header and the `u16`, without trailing padding.
const SEGMENT_CMSG_LEN: usize = std::mem::offset_of!(SegmentCmsg, segment) + 2;

// SAFETY: `CMSG_SPACE` and `CMSG_LEN` only compute sizes (they are `unsafe`
// in libc for no reason of their own).
const _: () = unsafe {
    assert!(std::mem::size_of::<SegmentCmsg>() == libc::CMSG_SPACE(2) as usize);
    assert!(SEGMENT_CMSG_LEN == libc::CMSG_LEN(2) as usize);
};

/// One `SENDMSG` of pieces of `bufs`, to `to` (or the connected peer), cut
/// into datagrams of `segment` bytes when given.
pub(crate) struct SendMsgTo<B: IoBuf> {
    /// Shared with the other sends of the batch; only read.
    _bufs: Rc<Vec<B>>,
    sock: Rc<OwnedFd>,
    /// Boxed: the message header points at these; only held, never read.
    _iovecs: Box<[libc::iovec]>,
    _name: Option<Box<SockAddr>>,
    _control: Option<Box<SegmentCmsg>>,
    /// Boxed: the SQE points at it.
    msg: Box<libc::msghdr>,
}

impl<B: IoBuf> SendMsgTo<B> {
    /// A send of `pieces` (in order, adjacent pieces of one buffer merged
    /// into one iovec) to `to`, as datagrams of `segment` bytes when given
    /// (UDP GSO) or as one datagram.
    ///
    /// Fails with `InvalidInput` when a piece is not inside its buffer's
    /// initialised bytes, or when there are no pieces.
    pub(crate) fn new(
        sock: Rc<OwnedFd>,
        bufs: Rc<Vec<B>>,
        pieces: &[Piece],
        to: Option<&SockAddr>,
        segment: Option<u16>,
    ) -> io::Result<SendMsgTo<B>> {
        if pieces.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty send"));
        }
        let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(pieces.len());
        let mut last: Option<Piece> = None;
        for p in pieces {
            let Some(b) = bufs.get(p.buf) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("datagram names buffer {} of {}", p.buf, bufs.len()),
                ));
            };
            if p.offset
                .checked_add(p.len)
                .is_none_or(|end| end > b.bytes_init())
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "datagram at {}..+{} lies outside the {} bytes of buffer {}",
                        p.offset,
                        p.len,
                        b.bytes_init(),
                        p.buf
                    ),
                ));
            }
            match (&mut last, iovecs.last_mut()) {
                (Some(prev), Some(iov))
                    if prev.buf == p.buf && prev.offset + prev.len == p.offset =>
                {
                    iov.iov_len += p.len;
                    prev.len += p.len;
                }
                _ => {
                    iovecs.push(libc::iovec {
                        // SAFETY: `offset + len <= bytes_init()` (checked
                        // above), so the pointer stays inside (or one past
                        // the end of) the buffer's initialised bytes.
                        iov_base: unsafe { b.stable_ptr().add(p.offset) } as *mut libc::c_void,
                        iov_len: p.len,
                    });
                    last = Some(*p);
                }
            }
        }
        let mut iovecs = iovecs.into_boxed_slice();
        let name = to.map(|a| Box::new(a.clone()));
        let mut control = segment.map(|size| {
            Box::new(SegmentCmsg {
                hdr: libc::cmsghdr {
                    cmsg_len: SEGMENT_CMSG_LEN as _,
                    cmsg_level: libc::SOL_UDP,
                    cmsg_type: libc::UDP_SEGMENT,
                },
                segment: size,
                _pad: [0; 6],
            })
        });
        // SAFETY: msghdr is plain data; all-zero is a valid (empty) header.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_iov = iovecs.as_mut_ptr();
        msg.msg_iovlen = iovecs.len();
        if let Some(name) = &name {
            msg.msg_name = name.as_ptr() as *mut libc::c_void;
            msg.msg_namelen = name.len();
        }
        if let Some(c) = control.as_deref_mut() {
            msg.msg_control = (c as *mut SegmentCmsg).cast();
            msg.msg_controllen = std::mem::size_of::<SegmentCmsg>();
        }
        Ok(SendMsgTo {
            _bufs: bufs,
            sock,
            _iovecs: iovecs,
            _name: name,
            _control: control,
            msg,
        })
    }
}

// SAFETY: the entry points at the boxed message header, which points at the
// boxed iovec array, the boxed destination address and the boxed control
// message: heap memory owned by `self`, not moved when `self` moves, and not
// modified after construction. The iovecs point into the initialised bytes
// of buffers in `bufs` (bounds checked in `new`), which `self` keeps alive
// through its `Rc` and which `IoBuf` guarantees stay put and unmodified
// while they live. The socket is kept open by `self`'s reference to it.
unsafe impl<B: IoBuf> Operation for SendMsgTo<B> {
    type Output = io::Result<usize>;

    fn entry(&mut self) -> squeue::Entry {
        opcode::SendMsg::new(types::Fd(self.sock.as_raw_fd()), &*self.msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
    }

    fn complete(self, cqe: Cqe) -> Self::Output {
        let n = cqe.io_result()?;
        stats::with(|s| Stats::add(&s.bytes_sent, u64::from(n)));
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock() -> Rc<OwnedFd> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        Rc::new(OwnedFd::from(s))
    }

    #[test]
    fn adjacent_pieces_of_one_buffer_share_an_iovec() {
        let bufs = Rc::new(vec![vec![0u8; 100], vec![1u8; 50]]);
        let p = |buf, offset, len| Piece { buf, offset, len };
        let op = SendMsgTo::new(
            sock(),
            bufs.clone(),
            &[p(0, 0, 10), p(0, 10, 10), p(0, 30, 10), p(1, 0, 50)],
            None,
            Some(10),
        )
        .unwrap();
        let lens: Vec<usize> = op._iovecs.iter().map(|v| v.iov_len).collect();
        assert_eq!(lens, [20, 10, 50]);
        assert_eq!(
            op._iovecs[1].iov_base as usize,
            bufs[0].as_ptr() as usize + 30
        );
        assert_eq!(op.msg.msg_iovlen, 3);
        let c = op._control.as_ref().unwrap();
        assert_eq!(
            (c.hdr.cmsg_level, c.hdr.cmsg_type, c.segment),
            (libc::SOL_UDP, libc::UDP_SEGMENT, 10)
        );
        assert!(op.msg.msg_name.is_null());
    }

    #[test]
    fn pieces_outside_their_buffer_are_refused() {
        let bufs = Rc::new(vec![vec![0u8; 10]]);
        let p = |buf, offset, len| Piece { buf, offset, len };
        for bad in [p(0, 5, 6), p(1, 0, 1), p(0, usize::MAX, 2)] {
            let err = SendMsgTo::new(sock(), bufs.clone(), &[bad], None, None)
                .err()
                .unwrap();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        let err = SendMsgTo::new(sock(), bufs, &[], None, None).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn the_destination_goes_into_the_header() {
        let to = SockAddr::from("127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap());
        let bufs = Rc::new(vec![vec![0u8; 4]]);
        let op = SendMsgTo::new(
            sock(),
            bufs,
            &[Piece {
                buf: 0,
                offset: 0,
                len: 4,
            }],
            Some(&to),
            None,
        )
        .unwrap();
        assert_eq!(op.msg.msg_namelen, to.len());
        assert!(op._control.is_none() && op.msg.msg_control.is_null());
    }
}
