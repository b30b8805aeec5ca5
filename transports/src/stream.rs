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

use ringwire_runtime::net::{
    TcpListenOptions, TcpListener, TcpStream, UnixListener, UnixStream, WriteHalf,
};
use ringwire_runtime::{spawn_local, IoBufMut, RecvBuf};
use rkyv::util::AlignedVec;

use crate::config::Config;
use crate::conn::core::Conn;
use crate::conn::incoming::Backing;
use crate::conn::Connection;
use crate::endpoint::{Address, Endpoint, Options, Scheme};
use crate::error::Error;
use crate::framing::{Feed, Framer};
use crate::listener::AcceptQueue;

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

/// Receives, frames and delivers until the connection ends.
async fn reader(conn: Rc<Conn>, mut socket: Socket) {
    let res = read_loop(&conn, &mut socket).await;
    match res {
        Ok(()) => conn.on_eof(),
        Err(e) => conn.fail(e),
    }
}

async fn read_loop(conn: &Rc<Conn>, socket: &mut Socket) -> Result<(), Error> {
    let mut framer = Framer::new(conn.config.direct_threshold);
    loop {
        let mut next = Some(socket.recv().await);
        // Take everything that already arrived before acting on the
        // session's events: one batch of acks and wake-ups per turn.
        while let Some(chunk) = next.take() {
            let chunk = match chunk {
                Ok(Some(c)) => c,
                Ok(None) => {
                    if framer.mid_frame() {
                        return Err(Error::closed("the peer closed the connection mid-frame"));
                    }
                    conn.after_session();
                    return Ok(());
                }
                Err(e) => return Err(Error::io(format!("receive from {}", conn.remote), e)),
            };
            let chunk = Rc::new(chunk);
            let backing = Backing::Recv(chunk.clone());
            let mut pos = 0;
            loop {
                match framer.feed(conn, &chunk, &mut pos, &backing, true).await? {
                    Feed::Consumed => break,
                    Feed::DirectFrame { header, buf, have } => {
                        let len = header.payload_len as usize;
                        let (res, buf) = socket.recv_exact_into(FrameDest(buf), have..len).await;
                        let got =
                            res.map_err(|e| Error::io(format!("receive from {}", conn.remote), e))?;
                        if got < len - have {
                            return Err(Error::closed("the peer closed the connection mid-frame"));
                        }
                        framer.direct_frame_done(conn, &header, buf.0).await?;
                    }
                    Feed::DirectBulk { header, dest, have } => {
                        let len = header.payload_len as usize;
                        let (res, dest) = socket.recv_exact_into(dest, have..len).await;
                        let got =
                            res.map_err(|e| Error::io(format!("receive from {}", conn.remote), e))?;
                        if got < len - have {
                            return Err(Error::closed(
                                "the peer closed the connection mid-segment",
                            ));
                        }
                        framer.direct_bulk_done(conn, &header, dest, len - have);
                    }
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
