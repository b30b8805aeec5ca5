//! UDP on the ring: unicast and multicast datagrams.
//!
//! The calls, in order, are listed on [`UdpSocket`]. Sockets belong to the
//! core that created them (not `Send`).

use std::future::poll_fn;
use std::io;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::{Deref, Range};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, SockRef, Socket, Type};

use crate::buf::{IoBuf, RecvBuf};
use crate::driver::op::recvmsg_multi::{DatagramEvent, DatagramReceiver, PAYLOAD_OFFSET};
use crate::driver::op::sendmsg_to::{Piece, SendMsgTo};
use crate::driver::op::Op;

/// Most datagrams one GSO send carries (the kernel's `UDP_MAX_SEGMENTS` is
/// 64 on older kernels, 128 on newer ones).
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Most payload bytes one UDP send carries (IPv4: 65535 minus the IP and
/// UDP headers); a GSO send's datagrams together stay below it.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Options for [`UdpSocket::bind_with`].
///
/// Start from the default and change what you need with the setters (the
/// struct is `#[non_exhaustive]`; its fields stay readable):
///
/// ```
/// use ringwire_runtime::net::UdpOptions;
///
/// let opts = UdpOptions::default().reuse_port(true).recv_buffer(Some(4 << 20));
/// assert!(opts.reuse_port && opts.reuse_address);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct UdpOptions {
    /// `SO_REUSEADDR`: several sockets may bind the same multicast group and
    /// port (each gets a copy of every datagram). Default: true.
    pub reuse_address: bool,
    /// `SO_REUSEPORT`: several sockets (one per core, or per process) bind
    /// the same address; unicast datagrams are spread by the sender's
    /// address and port, so one sender's datagrams stay on one socket.
    /// Default: false (a second bind of a unicast port is an error).
    pub reuse_port: bool,
    /// `SO_SNDBUF` in bytes (the kernel doubles it and caps it at
    /// `net.core.wmem_max`). Default: the system's.
    pub send_buffer: Option<usize>,
    /// `SO_RCVBUF` in bytes (the kernel doubles it and caps it at
    /// `net.core.rmem_max`): datagrams that arrive while it is full are
    /// dropped by the kernel. Default: the system's.
    pub recv_buffer: Option<usize>,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions {
            reuse_address: true,
            reuse_port: false,
            send_buffer: None,
            recv_buffer: None,
        }
    }
}

impl UdpOptions {
    /// Sets `SO_REUSEADDR` (default: true).
    pub fn reuse_address(mut self, on: bool) -> Self {
        self.reuse_address = on;
        self
    }

    /// Sets `SO_REUSEPORT` (default: false).
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }

    /// Sets `SO_SNDBUF` (default: the system's).
    pub fn send_buffer(mut self, bytes: Option<usize>) -> Self {
        self.send_buffer = bytes;
        self
    }

    /// Sets `SO_RCVBUF` (default: the system's).
    pub fn recv_buffer(mut self, bytes: Option<usize>) -> Self {
        self.recv_buffer = bytes;
        self
    }
}

/// The interface a multicast membership or send uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MulticastInterface {
    /// Let the kernel choose (by route).
    Any,
    /// The interface with this IPv4 address (IPv4 groups only).
    Addr(Ipv4Addr),
    /// The interface with this index (see [`interface_index`]).
    Index(u32),
}

/// The index of the network interface called `name`, as `ip link` shows it.
pub fn interface_index(name: &str) -> io::Result<u32> {
    crate::sys::interface_index(name)
}

/// How [`UdpSender::send_batch`] hands many datagrams to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SendMode {
    /// UDP GSO: each run of consecutive datagrams to one destination, of one
    /// size (the last may be shorter), at most [`GSO_MAX_SEGMENTS`] of them
    /// and [`MAX_UDP_PAYLOAD`] bytes together, goes out as one `SENDMSG`
    /// with a `UDP_SEGMENT` control message; the kernel cuts it into the
    /// datagrams. Where the kernel refuses GSO for a run (an MTU smaller
    /// than the datagrams, a device without checksum offload), that run is
    /// sent again one `SENDMSG` per datagram. The default: for runs of
    /// small datagrams it costs the sender about a third of one `SENDMSG`
    /// per datagram (measured with 64-byte datagrams on loopback, 32 per
    /// batch: 2.7x less sender CPU per datagram; `benches/udp.sh`).
    #[default]
    Gso,
    /// One `SENDMSG` per datagram, all submitted together.
    PerDatagram,
}

/// One datagram of a batch: bytes `offset..offset + len` of buffer `buf`
/// (an index into the batch's buffers), sent to `to` (`None`: the
/// connected peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutDatagram {
    /// Index of the buffer holding the datagram.
    pub buf: usize,
    /// Start of the datagram in that buffer.
    pub offset: usize,
    /// Length of the datagram.
    pub len: usize,
    /// Destination; `None` for the socket's connected peer.
    pub to: Option<SocketAddr>,
}

/// What [`UdpSender::send_batch`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct BatchReport {
    /// Datagrams the kernel took.
    pub datagrams: usize,
    /// Their bytes.
    pub bytes: usize,
    /// `SENDMSG` operations submitted (including GSO runs sent again one
    /// datagram at a time).
    pub sends: usize,
    /// Of those, GSO sends (several datagrams each).
    pub gso_sends: usize,
    /// GSO runs the kernel refused and that were sent again per datagram.
    pub gso_fallbacks: usize,
    /// Datagrams the kernel refused (not sent).
    pub failed: usize,
    /// The first error, if any datagram failed.
    pub error: Option<io::Error>,
}

/// A received datagram, in place in the buffer the kernel filled: derefs
/// to the payload (64 bytes into the buffer, so 16-byte aligned). Dropping
/// it returns the buffer to the core's ring. Not `Send`.
pub struct Datagram {
    buf: RecvBuf,
    source: Option<SocketAddr>,
    truncated: Option<usize>,
}

impl Datagram {
    /// The sender's address (`None` only for an address family this socket
    /// cannot receive from, which does not happen for IPv4/IPv6 sockets).
    pub fn source(&self) -> Option<SocketAddr> {
        self.source
    }

    /// The datagram's real length when it was larger than the receive
    /// buffer: the payload then holds only its first bytes.
    pub fn truncated(&self) -> Option<usize> {
        self.truncated
    }

    /// The payload's buffer (for sending it on, or keeping it).
    pub fn into_buf(self) -> RecvBuf {
        self.buf
    }
}

impl Deref for Datagram {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl std::fmt::Debug for Datagram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datagram")
            .field("len", &self.buf.len())
            .field("source", &self.source)
            .field("truncated", &self.truncated)
            .finish()
    }
}

/// A UDP socket driven by the current core's ring. Not `Send`.
///
/// In the order a program uses them:
///
/// - **make one**: [`UdpSocket::bind`] (or [`bind_with`](UdpSocket::bind_with)
///   and [`UdpOptions`]: `SO_REUSEADDR`, `SO_REUSEPORT`, buffer sizes);
///   optionally [`connect`](UdpSocket::connect) to give it a default
///   destination (and receive only from that peer);
/// - **multicast**: [`join_multicast`](UdpSocket::join_multicast) /
///   [`leave_multicast`](UdpSocket::leave_multicast) on an interface
///   ([`MulticastInterface`]: its IPv4 address, its index, or
///   [`interface_index`] of its name), and for senders
///   [`set_multicast_interface`](UdpSocket::set_multicast_interface),
///   [`set_multicast_ttl`](UdpSocket::set_multicast_ttl),
///   [`set_multicast_loop`](UdpSocket::set_multicast_loop);
/// - **receive**: [`recv_from`](UdpSocket::recv_from) /
///   [`try_recv_from`](UdpSocket::try_recv_from). One multishot `RECVMSG`
///   per socket, fed by the core's provided buffer ring, receives every
///   datagram into a buffer of its own; a [`Datagram`] derefs to the payload
///   in place, names the source address, and says when the datagram was
///   larger than the buffer ([`Datagram::truncated`]): a cut datagram is
///   reported, never passed on as if whole. When the buffer ring runs dry
///   the receive stops and is re-armed as soon as buffers come back (the
///   kernel queues, then drops, what arrives meanwhile);
/// - **send**: [`send_to`](UdpSender::send_to) / [`send`](UdpSender::send)
///   for one datagram, [`send_batch`](UdpSender::send_batch) for many in one
///   submission, either as UDP GSO (one `SENDMSG` with a `UDP_SEGMENT`
///   control message per run of equal-size datagrams) or as one `SENDMSG` per
///   datagram ([`SendMode`]). [`UdpSocket::sender`] gives a cheap, clonable
///   sending handle for other tasks on the core.
pub struct UdpSocket {
    sender: UdpSender,
    recv: Option<DatagramReceiver>,
    local: SocketAddr,
    /// Receiving ended (the core shuts down).
    done: bool,
    _not_send: PhantomData<*const ()>,
}

impl UdpSocket {
    /// Binds `addr` with default options (`SO_REUSEADDR`).
    pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
        Self::bind_with(addr, &UdpOptions::default())
    }

    /// Binds `addr` with explicit options. Bind a multicast receiver to the
    /// group's address (it then receives only that group's datagrams) and
    /// [`join_multicast`](Self::join_multicast).
    pub fn bind_with(addr: SocketAddr, opts: &UdpOptions) -> io::Result<UdpSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(opts.reuse_address)?;
        if opts.reuse_port {
            socket.set_reuse_port(true)?;
        }
        if let Some(n) = opts.send_buffer {
            socket.set_send_buffer_size(n)?;
        }
        if let Some(n) = opts.recv_buffer {
            socket.set_recv_buffer_size(n)?;
        }
        if addr.ip().is_multicast() {
            // Receive only the groups this socket joined, not every group
            // some socket of this host joined on the port.
            match addr {
                SocketAddr::V4(_) => socket.set_multicast_all_v4(false)?,
                SocketAddr::V6(_) => socket.set_multicast_all_v6(false)?,
            }
        }
        socket
            .bind(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("bind udp {addr}: {e}")))?;
        let local = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("udp socket has no IP address"))?;
        Ok(UdpSocket {
            sender: UdpSender {
                fd: Rc::new(OwnedFd::from(socket)),
            },
            recv: None,
            local,
            done: false,
            _not_send: PhantomData,
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sets the default destination: [`send`](UdpSender::send) goes there,
    /// and only datagrams from `addr` are received. Connecting to a
    /// multicast group is how a multicast sender names its group. A UDP
    /// connect exchanges nothing on the network, so this does not wait.
    pub fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        self.sock_ref()
            .connect(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("connect udp {addr}: {e}")))
    }

    /// The connected peer, if [`connect`](Self::connect) was called.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.sock_ref().peer_addr().ok()?.as_socket()
    }

    /// Joins multicast `group` on `iface`. IPv6 groups take an index (or
    /// [`MulticastInterface::Any`]); an IPv4 address names an IPv4
    /// interface only.
    pub fn join_multicast(&self, group: IpAddr, iface: &MulticastInterface) -> io::Result<()> {
        self.membership(group, iface, true)
    }

    /// Leaves multicast `group` on `iface` (closing the socket leaves every
    /// group it joined).
    pub fn leave_multicast(&self, group: IpAddr, iface: &MulticastInterface) -> io::Result<()> {
        self.membership(group, iface, false)
    }

    fn membership(&self, group: IpAddr, iface: &MulticastInterface, join: bool) -> io::Result<()> {
        let s = self.sock_ref();
        let what = if join { "join" } else { "leave" };
        let res = match (group, iface) {
            (IpAddr::V4(g), MulticastInterface::Any) => {
                let any = Ipv4Addr::UNSPECIFIED;
                if join {
                    s.join_multicast_v4(&g, &any)
                } else {
                    s.leave_multicast_v4(&g, &any)
                }
            }
            (IpAddr::V4(g), MulticastInterface::Addr(a)) => {
                if join {
                    s.join_multicast_v4(&g, a)
                } else {
                    s.leave_multicast_v4(&g, a)
                }
            }
            (IpAddr::V4(g), MulticastInterface::Index(i)) => {
                let i = InterfaceIndexOrAddress::Index(*i);
                if join {
                    s.join_multicast_v4_n(&g, &i)
                } else {
                    s.leave_multicast_v4_n(&g, &i)
                }
            }
            (IpAddr::V6(g), MulticastInterface::Any | MulticastInterface::Index(_)) => {
                let i = match iface {
                    MulticastInterface::Index(i) => *i,
                    _ => 0,
                };
                if join {
                    s.join_multicast_v6(&g, i)
                } else {
                    s.leave_multicast_v6(&g, i)
                }
            }
            (IpAddr::V6(_), MulticastInterface::Addr(a)) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an IPv6 group needs an interface index, not the IPv4 address {a}"),
            )),
        };
        res.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{what} multicast group {group} on {iface:?}: {e}"),
            )
        })
    }

    /// Sets the interface multicast datagrams leave from
    /// (`IP_MULTICAST_IF` / `IPV6_MULTICAST_IF`).
    pub fn set_multicast_interface(&self, iface: &MulticastInterface) -> io::Result<()> {
        let s = self.sock_ref();
        match (self.local, iface) {
            (SocketAddr::V4(_), MulticastInterface::Any) => {
                s.set_multicast_if_v4(&Ipv4Addr::UNSPECIFIED)
            }
            (SocketAddr::V4(_), MulticastInterface::Addr(a)) => s.set_multicast_if_v4(a),
            (SocketAddr::V4(_), MulticastInterface::Index(i)) => {
                crate::sys::set_multicast_if_index_v4(self.as_raw_fd(), *i)
            }
            (SocketAddr::V6(_), MulticastInterface::Any) => s.set_multicast_if_v6(0),
            (SocketAddr::V6(_), MulticastInterface::Index(i)) => s.set_multicast_if_v6(*i),
            (SocketAddr::V6(_), MulticastInterface::Addr(a)) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an IPv6 socket needs an interface index, not the IPv4 address {a}"),
            )),
        }
    }

    /// Sets the multicast TTL (IPv4) or hop limit (IPv6) of sent datagrams
    /// (1, the kernel's default, keeps them on the local network).
    pub fn set_multicast_ttl(&self, ttl: u32) -> io::Result<()> {
        match self.local {
            SocketAddr::V4(_) => self.sock_ref().set_multicast_ttl_v4(ttl),
            SocketAddr::V6(_) => self.sock_ref().set_multicast_hops_v6(ttl),
        }
    }

    /// Sets whether this host's own group members receive what this socket
    /// sends to a group (`IP_MULTICAST_LOOP`; the kernel's default is on).
    pub fn set_multicast_loop(&self, on: bool) -> io::Result<()> {
        match self.local {
            SocketAddr::V4(_) => self.sock_ref().set_multicast_loop_v4(on),
            SocketAddr::V6(_) => self.sock_ref().set_multicast_loop_v6(on),
        }
    }

    /// Receives the next datagram. `Ok(None)` once the core shuts down
    /// (after the datagrams already received are handed out). An error
    /// (e.g. `ECONNREFUSED` on a connected socket whose peer is not
    /// listening) costs nothing else: the next call receives again.
    pub async fn recv_from(&mut self) -> io::Result<Option<Datagram>> {
        poll_fn(|cx| self.poll_recv_from(cx)).await
    }

    /// Takes a datagram that already arrived, without waiting.
    pub fn try_recv_from(&mut self) -> Option<io::Result<Datagram>> {
        let ev = self.recv.as_mut()?.try_recv()?;
        Some(datagram(ev))
    }

    /// The polling form of [`recv_from`](Self::recv_from), for types that
    /// wrap a socket in their own futures.
    pub fn poll_recv_from(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Datagram>>> {
        if self.done {
            return Poll::Ready(Ok(None));
        }
        if self.recv.is_none() {
            if crate::context::is_shutting_down() {
                self.done = true;
                return Poll::Ready(Ok(None));
            }
            self.recv = Some(DatagramReceiver::arm(self.sender.fd.clone()));
        }
        let Some(recv) = self.recv.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        if let Some(ev) = recv.try_recv() {
            return Poll::Ready(datagram(ev).map(Some));
        }
        if crate::context::is_shutting_down() {
            self.done = true;
            return Poll::Ready(Ok(None));
        }
        recv.wait(cx);
        Poll::Pending
    }

    /// A sending handle sharing this socket (clonable; the socket stays open
    /// while any handle or pending send holds it).
    pub fn sender(&self) -> UdpSender {
        self.sender.clone()
    }

    /// Sends `buf` as one datagram to `to`; see [`UdpSender::send_to`].
    pub async fn send_to<B: IoBuf>(&self, buf: B, to: SocketAddr) -> (io::Result<usize>, B) {
        self.sender.send_to(buf, to).await
    }

    /// Sends `buf` as one datagram to the connected peer; see
    /// [`UdpSender::send`].
    pub async fn send<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
        self.sender.send(buf).await
    }

    /// Sends many datagrams in one submission; see
    /// [`UdpSender::send_batch`].
    pub async fn send_batch<B: IoBuf>(
        &self,
        bufs: Vec<B>,
        datagrams: &[OutDatagram],
        mode: SendMode,
    ) -> (BatchReport, Vec<B>) {
        self.sender.send_batch(bufs, datagrams, mode).await
    }

    fn sock_ref(&self) -> SockRef<'_> {
        SockRef::from(self)
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sender.fd.as_raw_fd()
    }
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sender.fd.as_fd()
    }
}

impl std::fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpSocket")
            .field("fd", &self.as_raw_fd())
            .field("local", &self.local)
            .finish()
    }
}

fn datagram(ev: DatagramEvent) -> io::Result<Datagram> {
    match ev {
        DatagramEvent::Data(raw) => {
            let mut buf = RecvBuf::from_chunk(raw.chunk);
            buf.slice(PAYLOAD_OFFSET..PAYLOAD_OFFSET + raw.payload_len);
            Ok(Datagram {
                buf,
                source: raw.source,
                truncated: raw.truncated,
            })
        }
        DatagramEvent::Failed(e) => Err(e),
    }
}

/// The sending side of a [`UdpSocket`], for any number of tasks on its core.
/// Cloning is cheap (it shares the socket). Not `Send`.
#[derive(Clone)]
pub struct UdpSender {
    fd: Rc<OwnedFd>,
}

impl UdpSender {
    /// Sends `buf` as one datagram to `to`; gives the buffer back with the
    /// byte count.
    pub async fn send_to<B: IoBuf>(&self, buf: B, to: SocketAddr) -> (io::Result<usize>, B) {
        self.send_one(buf, Some(to)).await
    }

    /// Sends `buf` as one datagram to the connected peer (`ENOTCONN` /
    /// `EDESTADDRREQ` when the socket is not connected).
    pub async fn send<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
        self.send_one(buf, None).await
    }

    async fn send_one<B: IoBuf>(&self, buf: B, to: Option<SocketAddr>) -> (io::Result<usize>, B) {
        let len = buf.bytes_init();
        let one = [OutDatagram {
            buf: 0,
            offset: 0,
            len,
            to,
        }];
        let (report, mut bufs) = self
            .send_batch(vec![buf], &one, SendMode::PerDatagram)
            .await;
        let res = match report.error {
            Some(e) => Err(e),
            None => Ok(report.bytes),
        };
        match bufs.pop() {
            Some(buf) => (res, buf),
            None => unreachable!("send_batch gives every buffer back"),
        }
    }

    /// Sends `datagrams` (pieces of `bufs`, each to its destination) in one
    /// submission, in order, as `mode` says; gives the buffers back with a
    /// report once the kernel took (or refused) every datagram.
    ///
    /// A datagram that does not lie inside its buffer's bytes fails the whole
    /// batch with `InvalidInput` before anything is sent. Otherwise an error
    /// costs only the datagrams of the send that failed: the report counts
    /// them and keeps the first error.
    ///
    /// The sends of a batch are submitted together and normally complete in
    /// order; only a socket send buffer that fills up meanwhile (a slow
    /// device, not loopback) could let a later `SENDMSG` overtake an earlier
    /// one. GSO sends carry their whole run in one call.
    pub async fn send_batch<B: IoBuf>(
        &self,
        bufs: Vec<B>,
        datagrams: &[OutDatagram],
        mode: SendMode,
    ) -> (BatchReport, Vec<B>) {
        let mut report = BatchReport::default();
        if let Err(e) = check_batch(&bufs, datagrams) {
            report.failed = datagrams.len();
            report.error = Some(e);
            return (report, bufs);
        }
        let bufs = Rc::new(bufs);
        let plan = match mode {
            SendMode::Gso => gso_runs(datagrams),
            SendMode::PerDatagram => (0..datagrams.len()).map(|i| (i..i + 1, None)).collect(),
        };
        let retry = self.submit(&bufs, datagrams, &plan, &mut report).await;
        if !retry.is_empty() {
            // GSO refused for these runs: nothing of them went out; send
            // them one datagram at a time.
            report.gso_fallbacks += retry.len();
            let plan: Vec<_> = retry
                .into_iter()
                .flat_map(|r| r.map(|i| (i..i + 1, None)))
                .collect();
            let again = self.submit(&bufs, datagrams, &plan, &mut report).await;
            debug_assert!(again.is_empty(), "single datagrams are never retried");
        }
        match Rc::try_unwrap(bufs) {
            Ok(bufs) => (report, bufs),
            Err(_) => unreachable!("every send of the batch completed"),
        }
    }

    /// Submits one `SENDMSG` per plan entry (all before waiting), waits for
    /// all, and returns the GSO runs the kernel refused as such.
    async fn submit<B: IoBuf>(
        &self,
        bufs: &Rc<Vec<B>>,
        datagrams: &[OutDatagram],
        plan: &[(Range<usize>, Option<u16>)],
        report: &mut BatchReport,
    ) -> Vec<Range<usize>> {
        let mut ops = Vec::with_capacity(plan.len());
        for (range, segment) in plan {
            let pieces: Vec<Piece> = datagrams[range.clone()]
                .iter()
                .map(|d| Piece {
                    buf: d.buf,
                    offset: d.offset,
                    len: d.len,
                })
                .collect();
            let to = datagrams[range.start].to.map(SockAddr::from);
            let op = SendMsgTo::new(
                self.fd.clone(),
                bufs.clone(),
                &pieces,
                to.as_ref(),
                *segment,
            )
            .map(Op::new);
            report.sends += 1;
            report.gso_sends += usize::from(segment.is_some());
            ops.push((range.clone(), *segment, op));
        }
        let mut retry = Vec::new();
        for (range, segment, op) in ops {
            let res = match op {
                Ok(op) => op.await,
                Err(e) => Err(e),
            };
            match res {
                Ok(n) => {
                    report.datagrams += range.len();
                    report.bytes += n;
                }
                Err(e)
                    if segment.is_some()
                        && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EIO)) =>
                {
                    report.gso_sends -= 1;
                    retry.push(range);
                }
                Err(e) => {
                    report.failed += range.len();
                    report.error.get_or_insert(e);
                }
            }
        }
        retry
    }
}

impl AsRawFd for UdpSender {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl std::fmt::Debug for UdpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpSender")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

/// Checks that every datagram lies inside its buffer's initialised bytes.
fn check_batch<B: IoBuf>(bufs: &[B], datagrams: &[OutDatagram]) -> io::Result<()> {
    for (i, d) in datagrams.iter().enumerate() {
        let Some(b) = bufs.get(d.buf) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("datagram {i} names buffer {} of {}", d.buf, bufs.len()),
            ));
        };
        if d.offset
            .checked_add(d.len)
            .is_none_or(|end| end > b.bytes_init())
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "datagram {i} at {}..+{} lies outside the {} bytes of buffer {}",
                    d.offset,
                    d.len,
                    b.bytes_init(),
                    d.buf
                ),
            ));
        }
    }
    Ok(())
}

/// Splits `datagrams` into GSO runs: consecutive datagrams to one
/// destination, all of the first one's size except a shorter last one, at
/// most [`GSO_MAX_SEGMENTS`] and [`MAX_UDP_PAYLOAD`] bytes. A run of one
/// goes out without a segment size.
fn gso_runs(datagrams: &[OutDatagram]) -> Vec<(Range<usize>, Option<u16>)> {
    let mut plan = Vec::new();
    let mut i = 0;
    while i < datagrams.len() {
        let first = datagrams[i];
        let mut j = i + 1;
        if first.len > 0 && first.len <= usize::from(u16::MAX) {
            let mut total = first.len;
            while j < datagrams.len() && j - i < GSO_MAX_SEGMENTS {
                let d = datagrams[j];
                if d.to != first.to
                    || d.len == 0
                    || d.len > first.len
                    || total + d.len > MAX_UDP_PAYLOAD
                {
                    break;
                }
                total += d.len;
                j += 1;
                if d.len < first.len {
                    break;
                }
            }
        }
        let segment = (j - i > 1).then_some(first.len as u16);
        plan.push((i..j, segment));
        i = j;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(len: usize, to: Option<SocketAddr>) -> OutDatagram {
        OutDatagram {
            buf: 0,
            offset: 0,
            len,
            to,
        }
    }

    #[test]
    fn gso_runs_group_equal_sizes_to_one_destination() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let list = [
            d(64, Some(a)),
            d(64, Some(a)),
            d(30, Some(a)), // a shorter last one closes the run
            d(64, Some(a)),
            d(64, Some(b)), // another destination starts a run
            d(64, Some(b)),
            d(80, Some(b)), // a longer one starts a run
            d(0, Some(b)),  // empty datagrams never join a run
        ];
        let plan = gso_runs(&list);
        assert_eq!(
            plan,
            [
                (0..3, Some(64)),
                (3..4, None),
                (4..6, Some(64)),
                (6..7, None),
                (7..8, None),
            ]
        );
    }

    #[test]
    fn gso_runs_respect_the_segment_and_size_limits() {
        let list = vec![d(100, None); GSO_MAX_SEGMENTS + 3];
        let plan = gso_runs(&list);
        assert_eq!(plan[0], (0..GSO_MAX_SEGMENTS, Some(100)));
        assert_eq!(plan[1], (GSO_MAX_SEGMENTS..GSO_MAX_SEGMENTS + 3, Some(100)));
        let big = vec![d(30_000, None); 3];
        let plan = gso_runs(&big);
        assert_eq!(plan, [(0..2, Some(30_000)), (2..3, None)]);
        let huge = vec![d(70_000, None); 2];
        assert_eq!(gso_runs(&huge), [(0..1, None), (1..2, None)]);
    }

    #[test]
    fn batches_naming_bytes_outside_their_buffers_are_refused_whole() {
        let bufs = vec![vec![0u8; 10]];
        assert!(check_batch(&bufs, &[d(10, None)]).is_ok());
        let err = check_batch(&bufs, &[d(10, None), d(11, None)]).unwrap_err();
        assert!(err.to_string().contains("datagram 1"), "{err}");
        let other = OutDatagram {
            buf: 1,
            ..d(1, None)
        };
        assert_eq!(
            check_batch(&bufs, &[other]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
