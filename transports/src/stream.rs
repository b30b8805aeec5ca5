//! `tcp://` and `unix://`: connections over the runtime's stream sockets.
//!
//! Receiving: the socket's multishot receive fills the core's provided
//! buffers; the reader splits what arrives into frames itself:
//!
//! - a frame that lies whole in one receive buffer, its payload 16-byte
//!   aligned, is handed to the session **in place** (the message guard keeps
//!   the buffer);
//! - a frame larger than what is left of its buffer, at or above the direct
//!   threshold, is received **straight into a buffer of its size**: the bytes
//!   already there are copied, the rest is one plain receive into that buffer
//!   (the kernel's copy is the only one);
//! - a bulk segment goes the same way into the destination the application
//!   chose;
//! - anything else (a small frame cut by a buffer boundary, a misaligned one)
//!   is assembled by copying, once.
//!
//! Sending: the flusher hands each batch of queued buffers (frames encoded in
//! registered send buffers, shared broadcast payloads, bulk segments in the
//! caller's memory) to the kernel in one submission: a plain send for one
//! buffer, a gather send for several.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use ringwire_proto::{padded_len, FrameHeader, FrameKind, HEADER_LEN, PAYLOAD_ALIGN};
use ringwire_runtime::net::{
    TcpListenOptions, TcpListener, TcpStream, UnixListener, UnixStream, WriteHalf,
};
use ringwire_runtime::{spawn_local, IoBufMut, RecvBuf};
use rkyv::util::AlignedVec;

use crate::config::Config;
use crate::conn::core::{Conn, DestBox};
use crate::conn::incoming::Backing;
use crate::conn::Connection;
use crate::endpoint::{Address, Endpoint, Options, Scheme};
use crate::error::Error;
use crate::listener::AcceptQueue;
use crate::stats;

/// The receiving side of a connected stream socket.
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    async fn recv(&mut self) -> io::Result<Option<RecvBuf>> {
        match self {
            Socket::Tcp(s) => s.recv().await,
            Socket::Unix(s) => s.recv().await,
        }
    }

    fn try_recv(&mut self) -> Option<io::Result<RecvBuf>> {
        match self {
            Socket::Tcp(s) => s.try_recv(),
            Socket::Unix(s) => s.try_recv(),
        }
    }

    async fn recv_exact_into<B: IoBufMut>(
        &mut self,
        buf: B,
        range: std::ops::Range<usize>,
    ) -> (io::Result<usize>, B) {
        match self {
            Socket::Tcp(s) => s.recv_exact_into(buf, range).await,
            Socket::Unix(s) => s.recv_exact_into(buf, range).await,
        }
    }

    fn write_half(&self) -> WriteHalf {
        match self {
            Socket::Tcp(s) => s.write_half(),
            Socket::Unix(s) => s.write_half(),
        }
    }
}

/// A heap buffer of one frame's size, received into directly.
struct FrameDest(AlignedVec<16>);

// SAFETY: the vector's bytes live in one heap allocation of `capacity`
// bytes that does not move when the vector moves; the receive that owns this
// value is the only writer.
unsafe impl IoBufMut for FrameDest {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.0.capacity()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if n > self.0.len() {
            // SAFETY: the caller guarantees the first `n <= capacity` bytes
            // were written.
            unsafe { self.0.set_len(n) };
        }
    }
}

// SAFETY: as above; the first `len()` bytes are initialised.
unsafe impl ringwire_runtime::IoBuf for FrameDest {
    fn stable_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.0.len()
    }
}

// ---------------------------------------------------------------------------
// Connect and listen

/// Connects to a `tcp://` or `unix://` endpoint.
pub(crate) async fn connect(endpoint: &Endpoint, config: &Config) -> Result<Connection, Error> {
    let context = || format!("connect to {endpoint}");
    let socket = match endpoint.address() {
        Address::Net { .. } => {
            let addrs = endpoint
                .socket_addrs()
                .map_err(|e| Error::io(context(), e))?;
            let mut last = None;
            let mut stream = None;
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let stream = match stream {
                Some(s) => s,
                None => {
                    return Err(Error::io(
                        context(),
                        last.unwrap_or_else(|| io::Error::other("no address to connect to")),
                    ))
                }
            };
            apply_tcp_options(&stream, endpoint.options()).map_err(|e| Error::io(context(), e))?;
            Socket::Tcp(stream)
        }
        Address::UnixPath(path) => Socket::Unix(
            UnixStream::connect(path)
                .await
                .map_err(|e| Error::io(context(), e))?,
        ),
        Address::UnixAbstract(name) => Socket::Unix(
            UnixStream::connect_abstract(name)
                .await
                .map_err(|e| Error::io(context(), e))?,
        ),
        Address::Mem(_) => return Err(Error::Usage("not a stream endpoint")),
    };
    if let Socket::Unix(s) = &socket {
        apply_buffer_options(s.as_raw_fd(), endpoint.options())
            .map_err(|e| Error::io(context(), e))?;
    }
    let conn = Conn::new(endpoint.scheme(), endpoint.to_string(), config, true);
    start(&conn, socket);
    conn.handshake().await?;
    Ok(Connection::new(conn))
}

/// A `tcp://` or `unix://` listener on the current core: an accept loop
/// feeding connections whose handshake succeeded into `queue`.
pub(crate) struct StreamListener {
    pub(crate) queue: Rc<AcceptQueue>,
    pub(crate) local: Endpoint,
}

impl Drop for StreamListener {
    fn drop(&mut self) {
        self.queue.close();
    }
}

pub(crate) fn bind(endpoint: &Endpoint, config: &Config) -> Result<StreamListener, Error> {
    let context = || format!("listen on {endpoint}");
    let queue = Rc::new(AcceptQueue::default());
    let opts = endpoint.options();
    let local = match endpoint.address() {
        Address::Net { .. } => {
            let addr = *endpoint
                .socket_addrs()
                .map_err(|e| Error::io(context(), e))?
                .first()
                .ok_or_else(|| Error::io(context(), io::Error::other("no address")))?;
            let mut lopts = TcpListenOptions::default();
            lopts.reuse_port = opts.reuseport().unwrap_or(true);
            lopts.nodelay = opts.nodelay().unwrap_or(true);
            if let Some(b) = opts.backlog() {
                lopts.backlog = i32::try_from(b).unwrap_or(i32::MAX);
            }
            let listener =
                TcpListener::bind_with(addr, &lopts).map_err(|e| Error::io(context(), e))?;
            let bound = listener.local_addr();
            spawn_local(accept_tcp(
                listener,
                queue.clone(),
                config.clone(),
                endpoint.clone(),
            ));
            with_addr(endpoint, bound)
        }
        Address::UnixPath(path) => {
            let listener = UnixListener::bind(path).map_err(|e| Error::io(context(), e))?;
            spawn_local(accept_unix(
                listener,
                queue.clone(),
                config.clone(),
                endpoint.clone(),
            ));
            endpoint.clone()
        }
        Address::UnixAbstract(name) => {
            let listener =
                UnixListener::bind_abstract(name).map_err(|e| Error::io(context(), e))?;
            spawn_local(accept_unix(
                listener,
                queue.clone(),
                config.clone(),
                endpoint.clone(),
            ));
            endpoint.clone()
        }
        Address::Mem(_) => return Err(Error::Usage("not a stream endpoint")),
    };
    Ok(StreamListener { queue, local })
}

/// `endpoint` with the address actually bound (port 0 resolved).
fn with_addr(endpoint: &Endpoint, addr: SocketAddr) -> Endpoint {
    Endpoint::socket(endpoint.scheme(), addr)
        .and_then(|e| e.with_options(endpoint.options().clone()))
        .unwrap_or_else(|_| endpoint.clone())
}

async fn accept_tcp(
    mut listener: TcpListener,
    queue: Rc<AcceptQueue>,
    config: Config,
    endpoint: Endpoint,
) {
    while let Some(accepted) = listener.accept().await {
        if queue.is_closed() {
            return;
        }
        match accepted {
            Ok(stream) => {
                let remote = stream
                    .peer_addr()
                    .map_or_else(|_| "unknown peer".to_string(), |a| format!("tcp://{a}"));
                if let Err(e) = apply_tcp_options(&stream, endpoint.options()) {
                    tracing::warn!(error = %e, %remote, "socket options refused; connection dropped");
                    continue;
                }
                serve(Socket::Tcp(stream), remote, &config, &queue);
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

async fn accept_unix(
    mut listener: UnixListener,
    queue: Rc<AcceptQueue>,
    config: Config,
    endpoint: Endpoint,
) {
    while let Some(accepted) = listener.accept().await {
        if queue.is_closed() {
            return;
        }
        match accepted {
            Ok(stream) => {
                if let Err(e) = apply_buffer_options(stream.as_raw_fd(), endpoint.options()) {
                    tracing::warn!(error = %e, "socket options refused; connection dropped");
                    continue;
                }
                serve(
                    Socket::Unix(stream),
                    format!("{endpoint} peer"),
                    &config,
                    &queue,
                );
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// Out of descriptors or similar: back off instead of spinning.
async fn accept_failed(e: io::Error) {
    tracing::warn!(error = %e, "accept failed");
    ringwire_runtime::time::sleep(std::time::Duration::from_millis(10)).await;
}

/// Starts the server side of an accepted connection; it reaches `queue`
/// once its handshake succeeded.
fn serve(socket: Socket, remote: String, config: &Config, queue: &Rc<AcceptQueue>) {
    let conn = Conn::new(
        match &socket {
            Socket::Tcp(_) => Scheme::Tcp,
            Socket::Unix(_) => Scheme::Unix,
        },
        remote,
        config,
        false,
    );
    start(&conn, socket);
    let queue = queue.clone();
    let peers = config.peers.clone();
    spawn_local(async move {
        let res = conn.handshake().await.map(|peer| {
            if let Some(peers) = &peers {
                peers.register(&conn, peer.node_id, ringwire_runtime::current_core());
            }
            Connection::new(conn)
        });
        if let Err(e) = &res {
            tracing::debug!(error = %e, "handshake failed");
        }
        queue.push(res);
    });
}

fn apply_tcp_options(stream: &TcpStream, opts: &Options) -> io::Result<()> {
    if let Some(on) = opts.nodelay() {
        stream.set_nodelay(on)?;
    }
    // SAFETY: the descriptor belongs to `stream`, which outlives this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let sock = socket2::SockRef::from(&borrowed);
    if let Some(idle) = opts.keepalive() {
        sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle))?;
    }
    if let Some(linger) = opts.linger() {
        sock.set_linger(Some(linger))?;
    }
    apply_buffer_options(stream.as_raw_fd(), opts)
}

fn apply_buffer_options(fd: std::os::fd::RawFd, opts: &Options) -> io::Result<()> {
    // SAFETY: `fd` belongs to a socket the caller owns and keeps open for the
    // duration of this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&borrowed);
    if let Some(n) = opts.sndbuf() {
        sock.set_send_buffer_size(n as usize)?;
    }
    if let Some(n) = opts.rcvbuf() {
        sock.set_recv_buffer_size(n as usize)?;
    }
    Ok(())
}

/// Spawns the connection's reader, flusher and timer on this core.
fn start(conn: &Rc<Conn>, socket: Socket) {
    let writer = socket.write_half();
    spawn_local(flusher(conn.clone(), writer));
    spawn_local(reader(conn.clone(), socket));
    spawn_local(conn.clone().run_timer());
}

// ---------------------------------------------------------------------------
// Sending

/// Hands each batch of queued buffers to the kernel in one submission.
async fn flusher(conn: Rc<Conn>, writer: WriteHalf) {
    while let Some((batch, messages, bytes)) = conn.next_batch().await {
        let mut bufs: Vec<_> = batch.into_iter().map(|t| t.buf).collect();
        let res = if bufs.len() == 1 {
            let buf = bufs.pop().expect("one buffer");
            writer.send_all(buf).await.0
        } else {
            writer.send_vectored(bufs).await.0
        };
        if let Err(e) = res {
            conn.fail(Error::io(format!("send to {}", conn.remote), e));
            return;
        }
        conn.batch_done(messages, bytes);
    }
    // Over: tell the peer nothing more comes (its reader sees the end).
    let _ = writer.shutdown(std::net::Shutdown::Write).await;
}

// ---------------------------------------------------------------------------
// Receiving

/// What the reader is in the middle of, across receive buffers.
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

#[derive(Default)]
struct Framer {
    head: [u8; HEADER_LEN],
    head_len: usize,
    /// Padding bytes still to skip.
    skip: usize,
    partial: Option<Partial>,
}

/// Receives, frames and delivers until the connection ends.
async fn reader(conn: Rc<Conn>, mut socket: Socket) {
    let res = read_loop(&conn, &mut socket).await;
    match res {
        Ok(()) => conn.on_eof(),
        Err(e) => conn.fail(e),
    }
}

async fn read_loop(conn: &Rc<Conn>, socket: &mut Socket) -> Result<(), Error> {
    let mut f = Framer::default();
    let threshold = conn.config.direct_threshold.max(1);
    let scheme = conn.scheme;
    loop {
        let first = socket.recv().await;
        let mut next = Some(first);
        // Take everything that already arrived before acting on the
        // session's events: one batch of acks and wake-ups per turn.
        while let Some(chunk) = next.take() {
            let chunk = match chunk {
                Ok(Some(c)) => c,
                Ok(None) => {
                    if f.head_len > 0 || f.partial.is_some() {
                        return Err(Error::closed("the peer closed the connection mid-frame"));
                    }
                    conn.after_session();
                    return Ok(());
                }
                Err(e) => return Err(Error::io(format!("receive from {}", conn.remote), e)),
            };
            let chunk = Rc::new(chunk);
            let backing = Backing::Recv(chunk.clone());
            let bytes: &[u8] = &chunk;
            let mut pos = 0;
            while pos < bytes.len() {
                // Padding of the previous frame.
                if f.skip > 0 {
                    let n = f.skip.min(bytes.len() - pos);
                    f.skip -= n;
                    pos += n;
                    continue;
                }
                // A frame or segment in progress.
                if let Some(partial) = f.partial.as_mut() {
                    match partial {
                        Partial::Frame { header, buf } => {
                            let want = header.payload_len as usize - buf.len();
                            let n = want.min(bytes.len() - pos);
                            buf.extend_from_slice(&bytes[pos..pos + n]);
                            pos += n;
                            if n == want {
                                let header = *header;
                                let Some(Partial::Frame { buf, .. }) = f.partial.take() else {
                                    unreachable!("matched above")
                                };
                                f.skip = padded_len(header.payload_len as usize)
                                    - header.payload_len as usize;
                                stats::frame_assembled(scheme);
                                deliver_owned(conn, &header, buf).await?;
                            }
                        }
                        Partial::Bulk {
                            header,
                            dest,
                            filled,
                        } => {
                            let len = header.payload_len as usize;
                            let n = (len - *filled).min(bytes.len() - pos);
                            if let Some(d) = dest.as_mut() {
                                d.as_mut_slice()[*filled..*filled + n]
                                    .copy_from_slice(&bytes[pos..pos + n]);
                            }
                            *filled += n;
                            pos += n;
                            if *filled == len {
                                let Some(Partial::Bulk { header, dest, .. }) = f.partial.take()
                                else {
                                    unreachable!("matched above")
                                };
                                f.skip = padded_len(len) - len;
                                conn.bulk_end(&header, dest, 0);
                            }
                        }
                    }
                    continue;
                }
                // A header, possibly across buffers.
                let header = if f.head_len == 0 && bytes.len() - pos >= HEADER_LEN {
                    let head = bytes[pos..]
                        .first_chunk::<HEADER_LEN>()
                        .expect("length checked");
                    pos += HEADER_LEN;
                    FrameHeader::parse(head)
                } else {
                    let n = (HEADER_LEN - f.head_len).min(bytes.len() - pos);
                    f.head[f.head_len..f.head_len + n].copy_from_slice(&bytes[pos..pos + n]);
                    f.head_len += n;
                    pos += n;
                    if f.head_len < HEADER_LEN {
                        continue;
                    }
                    f.head_len = 0;
                    FrameHeader::parse(&f.head)
                };
                let header = match header {
                    Ok(h) => h,
                    Err(e) => {
                        let err = Error::from_proto(e);
                        conn.fail(err.clone());
                        return Err(err);
                    }
                };
                conn.check_header(&header)?;
                let len = header.payload_len as usize;
                let rest = bytes.len() - pos;
                if header.kind == FrameKind::Bulk {
                    wait_ready(conn).await?;
                    let mut dest = conn.bulk_start(&header)?;
                    if rest >= len {
                        if let Some(d) = dest.as_mut() {
                            d.as_mut_slice().copy_from_slice(&bytes[pos..pos + len]);
                        }
                        pos += len;
                        f.skip = padded_len(len) - len;
                        conn.bulk_end(&header, dest, 0);
                    } else if dest.is_some() && len >= threshold {
                        // Straight into the destination.
                        let mut d = dest.take().expect("checked");
                        d.as_mut_slice()[..rest].copy_from_slice(&bytes[pos..]);
                        pos = bytes.len();
                        let (res, d) = socket.recv_exact_into(d, rest..len).await;
                        let got =
                            res.map_err(|e| Error::io(format!("receive from {}", conn.remote), e))?;
                        if got < len - rest {
                            return Err(Error::closed(
                                "the peer closed the connection mid-segment",
                            ));
                        }
                        f.skip = padded_len(len) - len;
                        conn.bulk_end(&header, Some(d), len - rest);
                    } else {
                        f.partial = Some(Partial::Bulk {
                            header,
                            dest,
                            filled: 0,
                        });
                    }
                    continue;
                }
                if rest >= len && (len == 0 || bytes[pos..].as_ptr() as usize % PAYLOAD_ALIGN == 0)
                {
                    // In place.
                    wait_ready(conn).await?;
                    conn.on_frame(&header, &bytes[pos..pos + len], &backing, false)?;
                    pos += len;
                    f.skip = padded_len(len) - len;
                    continue;
                }
                if rest < len && len >= threshold {
                    // Straight into a buffer of the frame's size.
                    let mut buf = FrameDest(AlignedVec::<16>::with_capacity(len));
                    buf.0.extend_from_slice(&bytes[pos..]);
                    pos = bytes.len();
                    let (res, buf) = socket.recv_exact_into(buf, rest..len).await;
                    let got =
                        res.map_err(|e| Error::io(format!("receive from {}", conn.remote), e))?;
                    if got < len - rest {
                        return Err(Error::closed("the peer closed the connection mid-frame"));
                    }
                    let mut buf = buf.0;
                    // SAFETY: `rest` bytes were copied in and the receive wrote
                    // the other `len - rest` (it reported `got` of them).
                    unsafe { buf.set_len(len) };
                    f.skip = padded_len(len) - len;
                    stats::frame_direct(scheme);
                    deliver_owned(conn, &header, buf).await?;
                    continue;
                }
                // Assemble by copying (a frame cut by the buffer's end, or
                // misaligned).
                let mut buf = AlignedVec::<16>::with_capacity(len);
                let n = rest.min(len);
                buf.extend_from_slice(&bytes[pos..pos + n]);
                pos += n;
                if n == len {
                    f.skip = padded_len(len) - len;
                    stats::frame_assembled(scheme);
                    deliver_owned(conn, &header, buf).await?;
                } else {
                    f.partial = Some(Partial::Frame { header, buf });
                }
            }
            next = socket.try_recv().map(|r| r.map(Some));
        }
        conn.after_session();
        if conn.is_closed() {
            return Ok(());
        }
    }
}

async fn wait_ready(conn: &Conn) -> Result<(), Error> {
    if conn.reader_may_go() {
        Ok(())
    } else {
        conn.after_session();
        conn.reader_ready().await
    }
}

/// Delivers a frame held in its own buffer.
async fn deliver_owned(
    conn: &Rc<Conn>,
    header: &FrameHeader,
    buf: AlignedVec<16>,
) -> Result<(), Error> {
    wait_ready(conn).await?;
    let backing = Backing::Heap(Rc::new(buf));
    let bytes = backing.bytes();
    conn.on_frame(
        header,
        &bytes[..header.payload_len as usize],
        &backing,
        false,
    )
}
