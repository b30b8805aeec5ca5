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

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::task::Poll;

use ringwire_proto::{FrameHeader, HEADER_LEN};

use ringwire_runtime::net::{
    TcpListenOptions, TcpListener, TcpStream, UnixListener, UnixStream, WriteHalf,
};
use ringwire_runtime::{spawn_local, IoBufMut, RecvBuf};
use rkyv::util::AlignedVec;

use crate::config::{Config, Reconnect};
use crate::conn::core::Conn;
use crate::conn::incoming::Backing;
use crate::conn::resume;
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

    fn pause_recv(&mut self) {
        match self {
            Socket::Tcp(s) => s.pause_recv(),
            Socket::Unix(s) => s.pause_recv(),
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

/// Connects to the first of a `host:port` endpoint's addresses that answers
/// (names resolved now), its TCP options applied: `tcp://` and `tls://`.
pub(crate) async fn connect_tcp(endpoint: &Endpoint) -> Result<TcpStream, Error> {
    let context = || format!("connect to {endpoint}");
    let addrs = endpoint
        .socket_addrs()
        .map_err(|e| Error::io(context(), e))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                apply_tcp_options(&stream, endpoint.options())
                    .map_err(|e| Error::io(context(), e))?;
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(Error::io(
        context(),
        last.unwrap_or_else(|| io::Error::other("no address to connect to")),
    ))
}

/// Opens a socket to a `tcp://` or `unix://` endpoint, its options applied.
async fn open_socket(endpoint: &Endpoint) -> Result<Socket, Error> {
    let context = || format!("connect to {endpoint}");
    let socket = match endpoint.address() {
        Address::Net { .. } => Socket::Tcp(connect_tcp(endpoint).await?),
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
    Ok(socket)
}

/// Connects to the first of `endpoints` (`tcp://` or `unix://`) that
/// answers; with [`Config::reconnect`](crate::Config::reconnect), a cut
/// connection comes back through the same list, starting with the one that
/// worked last.
pub(crate) async fn connect(endpoints: &[Endpoint], config: &Config) -> Result<Connection, Error> {
    let mut last = Error::Usage("no endpoint to connect to");
    for (i, endpoint) in endpoints.iter().enumerate() {
        let socket = match open_socket(endpoint).await {
            Ok(s) => s,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let conn = Conn::new(endpoint.scheme(), endpoint.to_string(), config, true);
        if let Some(policy) = config.reconnect {
            let order: Vec<Endpoint> = endpoints[i..]
                .iter()
                .chain(&endpoints[..i])
                .cloned()
                .collect();
            let order = Rc::new(order);
            conn.set_relink(Rc::new(move |conn: Rc<Conn>| {
                spawn_local(reconnect(conn, order.clone(), policy));
            }));
        }
        start(&conn, socket, 1, None, true);
        match conn.handshake().await {
            Ok(_) => return Ok(Connection::new(conn)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The client's way back after a cut: retries `endpoints` in order with
/// exponential backoff and jitter until one answers (then the session
/// resumes on it) or the policy gives up.
async fn reconnect(conn: Rc<Conn>, endpoints: Rc<Vec<Endpoint>>, policy: Reconnect) {
    let mut attempt = 0u32;
    let mut last: Option<Error> = None;
    loop {
        if conn.is_closed() {
            return;
        }
        // Counted from the cut, not from this loop: links that connect and
        // then fail their handshake do not restart the clock.
        let down = conn.down_for();
        if policy.give_up_after.is_some_and(|limit| down >= limit) {
            let why = last.map_or_else(String::new, |e| format!(": {e}"));
            conn.fail(Error::closed(format!(
                "gave up reconnecting after {down:?} without a working link{why}"
            )));
            return;
        }
        let noise = crate::config::random_u64() as f64 / u64::MAX as f64;
        ringwire_runtime::time::sleep(policy.delay(attempt, noise)).await;
        attempt = attempt.saturating_add(1);
        for endpoint in endpoints.iter() {
            if conn.is_closed() {
                return;
            }
            let attempt =
                ringwire_runtime::time::timeout(policy.attempt_timeout, open_socket(endpoint));
            match attempt.await {
                Ok(Ok(socket)) => {
                    match conn.attach() {
                        Ok(link) => start(&conn, socket, link, None, false),
                        Err(e) => conn.fail(e),
                    }
                    return;
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(Error::Timeout {
                        what: "a reconnect attempt's connect",
                        after: policy.attempt_timeout,
                    })
                }
            }
        }
    }
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
pub(crate) fn with_addr(endpoint: &Endpoint, addr: SocketAddr) -> Endpoint {
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
pub(crate) async fn accept_failed(e: io::Error) {
    tracing::warn!(error = %e, "accept failed");
    ringwire_runtime::time::sleep(std::time::Duration::from_millis(10)).await;
}

/// Starts the server side of an accepted connection; it reaches `queue`
/// once its handshake succeeded. With a resume window, the client's first
/// frame (its hello) is read first: a client resuming a suspended session is
/// given back to it, on whatever core holds it.
fn serve(socket: Socket, remote: String, config: &Config, queue: &Rc<AcceptQueue>) {
    let scheme = match &socket {
        Socket::Tcp(_) => Scheme::Tcp,
        Socket::Unix(_) => Scheme::Unix,
    };
    let queue = queue.clone();
    let config = config.clone();
    if config.resume_window.is_none() {
        new_session(socket, scheme, remote, &config, &queue, None);
        return;
    }
    spawn_local(async move {
        let mut socket = socket;
        let limit = config.session.handshake_timeout;
        let hello = match ringwire_runtime::time::timeout(limit, read_hello(&mut socket)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, %remote, "no valid hello; connection dropped");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "no hello within the handshake timeout; connection dropped");
                return;
            }
        };
        let (bytes, session, resume) = hello;
        tracing::debug!(%remote, session, resume, registered = ?resume::registered_on(session), "first frame read");
        if resume {
            if let Some(core) = resume::registered_on(session) {
                if core == ringwire_runtime::current_core() {
                    if let Some(conn) = resume::take_over(session) {
                        match conn.attach() {
                            Ok(link) => start(&conn, socket, link, Some(bytes), false),
                            Err(e) => conn.fail(e),
                        }
                        return;
                    }
                } else {
                    hand_over(socket, scheme, core, session, bytes);
                    return;
                }
            }
        }
        // A new session (or a resume of a session this process does not
        // hold: the session refuses it in the handshake, and the client
        // starts anew).
        new_session(socket, scheme, remote, &config, &queue, Some(bytes));
    });
}

/// A server connection with a fresh session; `first` holds bytes already
/// read from the socket (the client's hello).
fn new_session(
    socket: Socket,
    scheme: Scheme,
    remote: String,
    config: &Config,
    queue: &Rc<AcceptQueue>,
    first: Option<AlignedVec<16>>,
) {
    let conn = Conn::new(scheme, remote, config, false);
    if let Some(window) = config.resume_window {
        conn.set_relink(Rc::new(move |conn: Rc<Conn>| resume::suspend(conn, window)));
    }
    start(&conn, socket, 1, first, true);
    let queue = queue.clone();
    let peers = config.peers.clone();
    let resumable = config.resume_window.is_some();
    spawn_local(async move {
        let res = conn.handshake().await.map(|peer| {
            if let Some(peers) = &peers {
                peers.register(&conn, peer.node_id, ringwire_runtime::current_core());
            }
            if resumable {
                resume::register(&conn);
            }
            Connection::new(conn)
        });
        if let Err(e) = &res {
            tracing::debug!(error = %e, "handshake failed");
        }
        queue.push(res);
    });
}

/// Reads the first frame, which must be a hello, straight from the socket
/// (before its multishot receive is armed, so that the socket can still
/// change cores). Returns its bytes, the session id and whether it asks to
/// resume.
async fn read_hello(socket: &mut Socket) -> Result<(AlignedVec<16>, u64, bool), Error> {
    let io_err = |e| Error::io("reading the first frame", e);
    let mut head = AlignedVec::<16>::with_capacity(HEADER_LEN);
    head.resize(HEADER_LEN, 0);
    let (res, head) = socket.recv_exact_into(FrameDest(head), 0..HEADER_LEN).await;
    if res.map_err(io_err)? < HEADER_LEN {
        return Err(Error::closed("closed before its hello"));
    }
    let header = FrameHeader::parse(
        head.0
            .first_chunk::<HEADER_LEN>()
            .ok_or(Error::Usage("header"))?,
    )
    .map_err(Error::from_proto)?;
    let max = ringwire_proto::hello::HELLO_FIXED_LEN + 4 * ringwire_proto::hello::MAX_HELLO_TYPES;
    if header.kind != ringwire_proto::FrameKind::Hello || header.payload_len as usize > max {
        return Err(Error::Protocol(std::sync::Arc::new(
            ringwire_proto::ProtoError::ExpectedHello(header.kind.name()),
        )));
    }
    let total = ringwire_proto::frame_len(header.payload_len as usize);
    let mut frame = head.0;
    frame.reserve(total - HEADER_LEN);
    let (res, frame) = socket
        .recv_exact_into(FrameDest(frame), HEADER_LEN..total)
        .await;
    let mut frame = frame.0;
    if res.map_err(io_err)? < total - HEADER_LEN {
        return Err(Error::closed("closed during its hello"));
    }
    // SAFETY: the first `total` bytes were written (header, then the rest
    // by the receive, which reported all of them).
    unsafe { frame.set_len(total) };
    let hello = ringwire_proto::peek_hello(&frame)
        .map_err(Error::from_proto)?
        .ok_or(Error::Usage("internal: hello incomplete"))?;
    Ok((frame, hello.session_id, hello.resume))
}

/// Moves an accepted socket to the core holding the session it resumes.
fn hand_over(socket: Socket, scheme: Scheme, core: usize, session: u64, first: AlignedVec<16>) {
    let fd = match socket {
        Socket::Tcp(s) => s.into_fd().map_err(|(e, _)| e),
        Socket::Unix(s) => s.into_fd().map_err(|(e, _)| e),
    };
    let fd = match fd {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot move a resuming connection to its core; dropped");
            return;
        }
    };
    let posted = ringwire_runtime::current_runtime().post(core, move || {
        let Some(conn) = resume::take_over(session) else {
            // Ended meanwhile (its registration is gone now): the client's
            // next attempt starts a new session.
            return;
        };
        let socket = match scheme {
            Scheme::Unix => Socket::Unix(UnixStream::from_fd(fd)),
            _ => Socket::Tcp(TcpStream::from_fd(fd)),
        };
        match conn.attach() {
            Ok(link) => start(&conn, socket, link, Some(first), false),
            Err(e) => conn.fail(e),
        }
    });
    if let Err(e) = posted {
        tracing::warn!(error = %e, "the session's core is gone; resuming connection dropped");
    }
}

pub(crate) fn apply_tcp_options(stream: &TcpStream, opts: &Options) -> io::Result<()> {
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

/// Spawns link `link`'s reader and flusher (and, for a new connection, its
/// timer) on this core. `first` holds bytes already read from the socket.
fn start(conn: &Rc<Conn>, socket: Socket, link: u64, first: Option<AlignedVec<16>>, new: bool) {
    let writer = socket.write_half();
    let closer = writer.clone();
    conn.set_link_closer(
        link,
        Box::new(move || {
            spawn_local(async move {
                let _ = closer.shutdown(std::net::Shutdown::Both).await;
            });
        }),
    );
    spawn_local(flusher(conn.clone(), writer, link));
    spawn_local(reader(conn.clone(), socket, link, first));
    if new {
        spawn_local(conn.clone().run_timer());
    }
}

// ---------------------------------------------------------------------------
// Sending

/// Hands each batch of queued buffers to the kernel in one submission, until
/// the connection ends or moves to another link.
async fn flusher(conn: Rc<Conn>, writer: WriteHalf, link: u64) {
    // Kept across batches: a flush allocates no vectors of its own.
    let mut bufs = Vec::new();
    let mut seqs = Vec::new();
    while let Some((messages, bytes)) = conn.next_batch_into(link, &mut bufs, &mut seqs).await {
        let res = if bufs.len() == 1 {
            let buf = bufs.pop().expect("one buffer");
            let (res, buf) = writer.send_all(buf).await;
            bufs.push(buf);
            res
        } else {
            let (res, back) = writer.send_vectored(std::mem::take(&mut bufs)).await;
            bufs = back;
            res
        };
        conn.batch_done_from(&mut bufs, &mut seqs, messages, bytes);
        if let Err(e) = res {
            conn.link_lost(link, Error::io(format!("send to {}", conn.remote), e));
            return;
        }
    }
    if conn.link() == link {
        // Over: tell the peer nothing more comes (its reader sees the end).
        let _ = writer.shutdown(std::net::Shutdown::Write).await;
    }
}

// ---------------------------------------------------------------------------
// Receiving

/// Receives, frames and delivers until the connection ends or moves to
/// another link.
async fn reader(conn: Rc<Conn>, mut socket: Socket, link: u64, first: Option<AlignedVec<16>>) {
    match read_loop(&conn, &mut socket, link, first).await {
        Ok(()) => conn.on_eof(link),
        // Protocol errors already ended the connection; the rest is the link.
        Err(e @ (Error::Io { .. } | Error::Closed { .. })) => conn.link_lost(link, e),
        Err(_) => {}
    }
}

async fn read_loop(
    conn: &Rc<Conn>,
    socket: &mut Socket,
    link: u64,
    first: Option<AlignedVec<16>>,
) -> Result<(), Error> {
    let mut framer = Framer::new(conn.config.direct_threshold, link);
    // A pass of an earlier link may have ended early (an error).
    conn.set_input_time(None);
    if let Some(bytes) = first {
        let backing = Backing::Heap(Rc::new(bytes));
        let mut pos = 0;
        framer
            .feed(conn, backing.bytes(), &mut pos, &backing, false)
            .await?;
        conn.after_session();
    }
    loop {
        let received = poll_fn(|cx| {
            if conn.link() != link || conn.is_closed() {
                return Poll::Ready(None);
            }
            // Woken when the link changes or the connection ends.
            conn.wait_link_change(cx);
            let mut recv = std::pin::pin!(socket.recv());
            recv.as_mut().poll(cx).map(Some)
        })
        .await;
        let Some(received) = received else {
            // The connection moved on (a new link, or it ended): this
            // socket is done.
            return Err(Error::closed("link replaced"));
        };
        let mut next = Some(received);
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
            conn.set_input_time(Some(crate::clock::now()));
            let chunk = Rc::new(chunk);
            let backing = Backing::Recv(chunk.clone());
            let mut pos = 0;
            loop {
                let fed = {
                    let mut feed =
                        std::pin::pin!(framer.feed(conn, &chunk, &mut pos, &backing, true));
                    poll_fn(|cx| {
                        let r = feed.as_mut().poll(cx);
                        if r.is_pending() && !conn.reader_may_go() {
                            // Held until the application catches up: the
                            // socket must not take the core's shared receive
                            // buffers meanwhile (the next `recv` resumes).
                            socket.pause_recv();
                        }
                        r
                    })
                    .await?
                };
                match fed {
                    Feed::Consumed => break,
                    Feed::DirectFrame { header, buf, have } => {
                        let len = header.payload_len as usize;
                        let (res, buf) = socket.recv_exact_into(FrameDest(buf), have..len).await;
                        conn.refresh_input_time();
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
                        conn.refresh_input_time();
                        let got =
                            res.map_err(|e| Error::io(format!("receive from {}", conn.remote), e))?;
                        if got < len - have {
                            return Err(Error::closed(
                                "the peer closed the connection mid-segment",
                            ));
                        }
                        framer.direct_bulk_done(conn, &header, dest, len - have)?;
                    }
                }
            }
            next = socket.try_recv().map(|r| r.map(Some));
        }
        conn.set_input_time(None);
        conn.after_session();
        if conn.is_closed() || conn.link() != link {
            return Ok(());
        }
    }
}
