//! Receiving datagrams with provided buffers: one multishot `RECVMSG` per
//! socket, each completion one datagram in a buffer of the core's buffer
//! ring.
//!
//! The kernel lays every buffer out as `struct io_uring_recvmsg_out` (16
//! bytes: name length, control length, payload length, flags), then a name
//! area of the size our message header announces (the source address), then
//! the payload. The name area is [`NAME_LEN`] bytes, so the payload starts
//! at [`PAYLOAD_OFFSET`] (64) from the buffer start: 16-byte aligned (and
//! 64-byte aligned with the default buffer size), which keeps archives
//! readable in place. A datagram larger than the rest of the buffer is cut
//! by the kernel, which flags it (`MSG_TRUNC`) and reports its real length;
//! [`DatagramEvent`] passes both on, never a silently shortened datagram.
//!
//! When the ring runs dry the receive stops with `ENOBUFS`: the driver puts
//! the slot on its starved list and re-arms it once buffers are back; the
//! datagrams wait in the socket's receive queue meanwhile (the kernel drops
//! what does not fit it, as UDP does).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::task::Context;

use io_uring::{opcode, squeue, types};

use super::multishot::{Multi, MultishotOperation};
use super::recv_multi::Chunk;
use crate::driver::bufring::BGID;
use crate::driver::lifecycle::Cqe;
use crate::stats::{self, Stats};

/// `sizeof(struct io_uring_recvmsg_out)`.
const OUT_HEADER_LEN: usize = 16;

/// Bytes reserved for the source address in every buffer: room for a
/// `sockaddr_in6` (28 bytes), rounded so that the payload starts 64 bytes
/// into the buffer.
pub(crate) const NAME_LEN: usize = 48;

/// Where the payload starts in a receive buffer.
pub(crate) const PAYLOAD_OFFSET: usize = OUT_HEADER_LEN + NAME_LEN;

const _: () = assert!(PAYLOAD_OFFSET % 16 == 0);
const _: () = assert!(NAME_LEN >= std::mem::size_of::<libc::sockaddr_in6>());

/// The receive operation: a socket and the message header that tells the
/// kernel how large the name and control areas of each buffer are.
pub(crate) struct RecvMsgMulti {
    sock: Rc<OwnedFd>,
    /// Boxed: the SQE points at it, and the kernel reads it again on every
    /// (re-)submission.
    msg: Box<libc::msghdr>,
}

impl RecvMsgMulti {
    fn new(sock: Rc<OwnedFd>) -> RecvMsgMulti {
        // SAFETY: msghdr is plain data; all-zero is a valid (empty) header.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        // The kernel only reads the lengths: the name area's size, no
        // control area, no iovec (the provided buffer is the destination).
        msg.msg_namelen = NAME_LEN as libc::socklen_t;
        RecvMsgMulti { sock, msg }
    }
}

// SAFETY: the entry points at the boxed message header, heap memory owned by
// `self` that does not move when `self` moves and is never modified after
// construction; the kernel reads only its name and control lengths (no
// pointer in it is set). Buffers come from the registered buffer ring, which
// stays registered until the core has drained every operation. The socket is
// kept open by `self`'s reference to it while the entry may be
// (re-)submitted.
unsafe impl MultishotOperation for RecvMsgMulti {
    const RETURNS_FD: bool = false;
    const TAKES_BUFFERS: bool = true;

    fn entry(&self) -> squeue::Entry {
        // MSG_TRUNC: the kernel reports a cut datagram's real length.
        opcode::RecvMsgMulti::new(types::Fd(self.sock.as_raw_fd()), &*self.msg, BGID)
            .flags(libc::MSG_TRUNC as u32)
            .build()
    }
}

/// One received datagram, still in its provided buffer.
pub(crate) struct RawDatagram {
    /// The whole buffer the kernel filled (`len` = bytes it wrote).
    pub(crate) chunk: Chunk,
    /// Payload bytes in the buffer, from [`PAYLOAD_OFFSET`].
    pub(crate) payload_len: usize,
    /// The datagram's real length when the buffer was too small for it.
    pub(crate) truncated: Option<usize>,
    /// The sender's address (`None` for an address family we do not read).
    pub(crate) source: Option<SocketAddr>,
}

/// What a datagram receive completion means for its owner.
pub(crate) enum DatagramEvent {
    /// A datagram arrived (the owner recycles the buffer when done with it).
    Data(RawDatagram),
    /// The receive failed.
    Failed(io::Error),
}

/// The datagram receive of one socket.
pub(crate) struct DatagramReceiver {
    multi: Multi<RecvMsgMulti>,
}

impl DatagramReceiver {
    /// Starts receiving on `sock`.
    ///
    /// # Panics
    ///
    /// Off a ringwire core thread.
    pub(crate) fn arm(sock: Rc<OwnedFd>) -> DatagramReceiver {
        crate::driver::with(|cx| cx.count_receiving(true));
        DatagramReceiver {
            multi: Multi::arm(RecvMsgMulti::new(sock)),
        }
    }

    /// Keeps the task's waker for the next event, re-arming the receive if
    /// it ended by itself.
    pub(crate) fn wait(&mut self, cx: &mut Context<'_>) {
        self.multi.wait(cx);
    }

    /// The next event that already arrived.
    pub(crate) fn try_recv(&mut self) -> Option<DatagramEvent> {
        self.multi.try_next().map(event)
    }
}

impl Drop for DatagramReceiver {
    fn drop(&mut self) {
        let _ = crate::driver::try_with(|cx| cx.count_receiving(false));
        // `multi` drops next: queued buffers go back to the ring, and the
        // slot keeps the socket open until the final completion.
    }
}

/// Interprets a datagram receive completion.
fn event(cqe: Cqe) -> DatagramEvent {
    let bid = cqe.buffer();
    if cqe.result < 0 {
        if let Some(bid) = bid {
            crate::driver::with(|cx| cx.bufs.borrow_mut().recycle(bid));
        }
        return DatagramEvent::Failed(io::Error::from_raw_os_error(-cqe.result));
    }
    let Some(bid) = bid else {
        return DatagramEvent::Failed(io::Error::other("datagram completion without a buffer id"));
    };
    let written = cqe.result as usize;
    let (ptr, mem) = crate::driver::with(|cx| {
        let bufs = cx.bufs.borrow();
        (bufs.buf_ptr(bid).cast_const(), bufs.mem().clone())
    });
    // The kernel writes at most one buffer's worth.
    let chunk = Chunk {
        ptr,
        len: written,
        bid,
        mem,
    };
    if chunk.len < PAYLOAD_OFFSET {
        // The kernel always writes the header and name areas; anything else
        // is a buffer too small for them (a configuration error).
        crate::driver::with(|cx| cx.bufs.borrow_mut().recycle(bid));
        return DatagramEvent::Failed(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "datagram completion of {written} bytes is shorter than the \
                 {PAYLOAD_OFFSET}-byte header area (receive buffers too small)"
            ),
        ));
    }
    // SAFETY: the kernel wrote at least `PAYLOAD_OFFSET` bytes from `ptr`
    // (checked above), inside the buffer kept alive by `chunk.mem`; nothing
    // writes them until the buffer id is recycled, which only `chunk`'s owner
    // does.
    let head = unsafe { std::slice::from_raw_parts(ptr, PAYLOAD_OFFSET) };
    let out = parse_out_header(head);
    let payload_len = chunk.len - PAYLOAD_OFFSET;
    let truncated = (out.flags & libc::MSG_TRUNC as u32 != 0
        || out.payload_len as usize > payload_len)
        .then_some(out.payload_len as usize);
    let name_len = (out.name_len as usize).min(NAME_LEN);
    let source = parse_sockaddr(&head[OUT_HEADER_LEN..OUT_HEADER_LEN + name_len]);
    stats::with(|s| Stats::add(&s.bytes_received, payload_len as u64));
    DatagramEvent::Data(RawDatagram {
        chunk,
        payload_len,
        truncated,
        source,
    })
}

/// The fields of `struct io_uring_recvmsg_out` (native endian).
struct OutHeader {
    name_len: u32,
    payload_len: u32,
    flags: u32,
}

fn parse_out_header(b: &[u8]) -> OutHeader {
    let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    OutHeader {
        name_len: word(0),
        payload_len: word(8),
        flags: word(12),
    }
}

/// Reads a `sockaddr_in` or `sockaddr_in6` from raw bytes (`None` for other
/// families or a short name).
pub(crate) fn parse_sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]);
    let port = u16::from_be_bytes([*name.get(2)?, *name.get(3)?]);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope: [u8; 4] = name.get(24..28)?.try_into().ok()?;
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                u32::from_be_bytes(flow),
                u32::from_ne_bytes(scope),
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw<T>(v: &T) -> &[u8] {
        // SAFETY: viewing a plain C struct's bytes, within its size.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
    }

    #[test]
    fn reads_ipv4_and_ipv6_source_addresses_as_the_kernel_writes_them() {
        let a: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let s = socket2::SockAddr::from(a);
        // SAFETY: `as_ptr` points at `len()` initialised bytes of the address.
        let bytes =
            unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), s.len() as usize) };
        assert_eq!(parse_sockaddr(bytes), Some(a));
        let b: SocketAddr = "[fe80::1%3]:9".parse().unwrap();
        let s = socket2::SockAddr::from(b);
        // SAFETY: as above.
        let bytes =
            unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), s.len() as usize) };
        assert_eq!(parse_sockaddr(bytes), Some(b));
    }

    #[test]
    fn short_or_foreign_names_give_no_address() {
        assert_eq!(parse_sockaddr(&[]), None);
        assert_eq!(parse_sockaddr(&[2, 0, 0]), None);
        let unix = libc::sockaddr_un {
            sun_family: libc::AF_UNIX as libc::sa_family_t,
            sun_path: [0; 108],
        };
        assert_eq!(parse_sockaddr(raw(&unix)), None);
        // An IPv4 family with a cut address.
        let v4 = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        assert_eq!(parse_sockaddr(&raw(&v4)[..6]), None);
    }

    #[test]
    fn the_out_header_fields_are_read_in_native_order() {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&16u32.to_ne_bytes());
        b[8..12].copy_from_slice(&9000u32.to_ne_bytes());
        b[12..16].copy_from_slice(&(libc::MSG_TRUNC as u32).to_ne_bytes());
        let h = parse_out_header(&b);
        assert_eq!((h.name_len, h.payload_len), (16, 9000));
        assert_ne!(h.flags & libc::MSG_TRUNC as u32, 0);
    }
}
