//! `tls://`: TCP with TLS 1.3 (rustls), records opened in place in the
//! runtime's receive buffers.
//!
//! A connection goes through three stages:
//!
//! 1. **TCP**: dialed or accepted like `tcp://` (same socket options).
//! 2. **TLS handshake** ([`handshake`]): rustls's unbuffered (sans-IO)
//!    connection API, fed from the socket, bounded by the configuration's
//!    handshake timeout. A failure is an [`Error::Tls`] naming what failed
//!    (untrusted certificate, wrong name, missing client certificate, the
//!    peer's alert, not TLS at all), on that connection only; rustls's alert
//!    goes out to the peer first.
//! 3. **Traffic**: rustls hands the traffic secrets and its post-handshake
//!    state to the record layer ([`record`]), and the connection runs the
//!    same engine as `tcp://` (the ringwire session's handshake first, then
//!    messages, calls, bulk, back-pressure, close, counters):
//!    - the **reader** takes each receive buffer the multishot receive filled,
//!      opens every whole record in it in place (decrypted where it lies,
//!      its plaintext moved by at most 15 bytes to start 16-byte aligned),
//!      and gives the plaintext to the [`Framer`], which hands most frames to
//!      the session in place (the message guard keeps the receive buffer);
//!      a record cut by the buffer's end is completed in a buffer of its own.
//!      Frames are never received direct (their bytes must be decrypted),
//!      so a frame spanning records is assembled by the framer;
//!    - the **flusher** seals each batch the engine queued (frames encoded in
//!      registered send buffers, shared broadcast payloads, bulk segments)
//!      into records written straight into registered send buffers
//!      ([`seal`]: the plaintext is gathered once, then sealed in place; full
//!      records are padded to 16 KiB on the wire, one receive buffer), which
//!      go out in one gather send per flush; once the session closed in an
//!      orderly way it sends `close_notify` and shuts the socket's sending
//!      side.
//!
//! Why rustls's kernel API after the handshake: in rustls 0.23 the
//! unbuffered API decrypts in place but then copies each record's plaintext
//! into a vector of its own before handing it out, and its encrypter copies
//! the plaintext into a fresh heap buffer per record; taking the secrets
//! after the handshake keeps key derivation (handshake, key updates) and
//! record opening in rustls while the plaintext stays in the receive buffer
//! and records are sealed in the send buffers.
//!
//! Crypto provider: *ring*. It builds with a C compiler alone (aws-lc-rs,
//! rustls's default, also needs CMake and takes several times longer to
//! build) and its AES-GCM and ChaCha20-Poly1305 use the same assembly
//! (from BoringSSL) on x86-64 and AArch64. Trust roots without `ca=`: the
//! system's store (`rustls-native-certs`), so that an operator's own CAs
//! count and updates come with the system.

mod handshake;
mod record;
mod seal;
mod settings;

use std::cell::RefCell;
use std::io;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use ringwire_runtime::net::{TcpListenOptions, TcpListener, TcpStream, WriteHalf};
use ringwire_runtime::{spawn_local, RecvBuf};
use rkyv::util::AlignedVec;

use crate::config::Config;
use crate::conn::core::Conn;
use crate::conn::incoming::Backing;
use crate::conn::Connection;
use crate::endpoint::{Address, Endpoint, Scheme};
use crate::error::{Error, TlsFailure};
use crate::framing::{Feed, Framer};
use crate::listener::AcceptQueue;
use crate::stats;
use crate::stream::{accept_failed, apply_tcp_options, connect_tcp, with_addr, StreamListener};
use handshake::Established;
use record::{Carry, Records};
use seal::Output;

/// A TLS connection has one link for its whole life: it neither reconnects
/// nor resumes (a new TCP connection would need a new TLS handshake under
/// the same session; not built yet).
const LINK: u64 = 1;

// ---------------------------------------------------------------------------
// Connect and listen

/// Connects to a `tls://` endpoint.
pub(crate) async fn connect(endpoint: &Endpoint, config: &Config) -> Result<Connection, Error> {
    if config.reconnect.is_some() {
        return Err(Error::Usage(
            "tls:// connections do not reconnect yet: drop Config::reconnect",
        ));
    }
    let client = settings::client_config(endpoint, &config.tls)?;
    let name = settings::server_name(endpoint, &config.tls)?;
    if !matches!(endpoint.address(), Address::Net { .. }) {
        return Err(Error::Usage("tls:// needs host:port"));
    }
    let mut stream = connect_tcp(endpoint).await?;
    let tls = handshake::client(client, name)?;
    let writer = stream.write_half();
    let established = within(
        config,
        handshake::run(tls, &mut stream, &writer, config.tls.key_update_after),
    )
    .await
    .inspect_err(|_| stats::connection_error(Scheme::Tls))?;
    let conn = Conn::new(Scheme::Tls, endpoint.to_string(), config, true);
    start(&conn, stream, writer, established);
    conn.handshake().await?;
    Ok(Connection::new(conn))
}

/// Bounds a TLS handshake by the configuration's handshake timeout.
async fn within<T>(
    config: &Config,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let limit = config.session.handshake_timeout;
    ringwire_runtime::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| {
            Err(Error::tls(
                TlsFailure::Handshake,
                format!("the TLS handshake did not finish within {limit:?}"),
            ))
        })
}

/// Listens on a `tls://` endpoint: the certificate (and client trust roots)
/// are loaded now, so bad files fail here.
pub(crate) fn bind(endpoint: &Endpoint, config: &Config) -> Result<StreamListener, Error> {
    let context = || format!("listen on {endpoint}");
    let server = settings::server_config(endpoint, &config.tls)?;
    if !matches!(endpoint.address(), Address::Net { .. }) {
        return Err(Error::Usage("tls:// needs host:port"));
    }
    let opts = endpoint.options();
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
    let listener = TcpListener::bind_with(addr, &lopts).map_err(|e| Error::io(context(), e))?;
    let local = with_addr(endpoint, listener.local_addr());
    let queue = Rc::new(AcceptQueue::default());
    spawn_local(accept_loop(
        listener,
        queue.clone(),
        config.clone(),
        endpoint.clone(),
        server,
    ));
    Ok(StreamListener { queue, local })
}

async fn accept_loop(
    mut listener: TcpListener,
    queue: Rc<AcceptQueue>,
    config: Config,
    endpoint: Endpoint,
    server: Arc<rustls::ServerConfig>,
) {
    while let Some(accepted) = listener.accept().await {
        if queue.is_closed() {
            return;
        }
        match accepted {
            Ok(stream) => {
                let remote = stream
                    .peer_addr()
                    .map_or_else(|_| "unknown peer".to_string(), |a| format!("tls://{a}"));
                if let Err(e) = apply_tcp_options(&stream, endpoint.options()) {
                    tracing::warn!(error = %e, %remote, "socket options refused; connection dropped");
                    continue;
                }
                spawn_local(serve(
                    stream,
                    remote,
                    config.clone(),
                    server.clone(),
                    queue.clone(),
                ));
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// The server side of an accepted connection: TLS handshake, then the
/// session's; the result (a connection or why it failed) goes to `queue`.
async fn serve(
    mut stream: TcpStream,
    remote: String,
    config: Config,
    server: Arc<rustls::ServerConfig>,
    queue: Rc<AcceptQueue>,
) {
    let res = async {
        let tls = handshake::server(server)?;
        let writer = stream.write_half();
        let established = within(
            &config,
            handshake::run(tls, &mut stream, &writer, config.tls.key_update_after),
        )
        .await
        .inspect_err(|_| stats::connection_error(Scheme::Tls))?;
        let conn = Conn::new(Scheme::Tls, remote.clone(), &config, false);
        start(&conn, stream, writer, established);
        let peer = conn.handshake().await?;
        if let Some(peers) = &config.peers {
            peers.register(&conn, peer.node_id, ringwire_runtime::current_core());
        }
        Ok(Connection::new(conn))
    }
    .await;
    if let Err(e) = &res {
        tracing::debug!(error = %e, %remote, "handshake failed");
    }
    queue.push(res);
}

/// Spawns the connection's reader, flusher and timer on this core.
fn start(conn: &Rc<Conn>, socket: TcpStream, writer: WriteHalf, established: Established) {
    let records = Rc::new(RefCell::new(established.records));
    spawn_local(flusher(conn.clone(), writer, records.clone()));
    spawn_local(reader(
        conn.clone(),
        socket,
        records,
        established.early,
        established.leftover,
    ));
    spawn_local(conn.clone().run_timer());
}

// ---------------------------------------------------------------------------
// Sending

/// Seals each batch of queued buffers into records and hands them to the
/// kernel in one submission.
async fn flusher(conn: Rc<Conn>, writer: WriteHalf, records: Rc<RefCell<Records>>) {
    let mut out = Output::new();
    while let Some((batch, messages, bytes)) = conn.next_batch(LINK).await {
        let res = {
            let slices: Vec<&[u8]> = batch.iter().map(|t| t.buf.bytes()).collect();
            records.borrow_mut().seal(&slices, &mut out)
        };
        if let Err(e) = res {
            conn.batch_done(batch, messages, bytes);
            conn.fail(e);
            return;
        }
        let mut sealed = out.finish();
        let res = match sealed.pop() {
            Some(one) if sealed.is_empty() => writer.send_all(one).await.0,
            Some(last) => {
                sealed.push(last);
                writer.send_vectored(sealed).await.0
            }
            None => Ok(()),
        };
        // The frames go back to the engine (which keeps what a resumable
        // session may have to resend).
        conn.batch_done(batch, messages, bytes);
        if let Err(e) = res {
            conn.fail(Error::io(format!("send to {}", conn.remote), e));
            return;
        }
    }
    // Over. After an orderly end (or at shutdown, with the close frame out),
    // tell the peer that nothing more comes, then end the byte stream.
    let orderly = match conn.closed_error() {
        None | Some(Error::Closed { .. }) => true,
        Some(_) => false,
    };
    if orderly {
        let notify = records.borrow_mut().close_notify(&mut out);
        if notify.is_ok() {
            let _ = writer.send_vectored(out.finish()).await;
        }
    }
    let _ = writer.shutdown(std::net::Shutdown::Write).await;
}

// ---------------------------------------------------------------------------
// Receiving

/// Receives, opens, frames and delivers until the connection ends.
async fn reader(
    conn: Rc<Conn>,
    mut socket: TcpStream,
    records: Rc<RefCell<Records>>,
    early: Vec<u8>,
    leftover: Vec<u8>,
) {
    let mut input = Input {
        framer: Framer::new(conn.config.direct_threshold, LINK),
        records,
        carry: Carry::new(),
        plain: Vec::new(),
    };
    let res = input.run(&conn, &mut socket, early, leftover).await;
    match res {
        Ok(()) => conn.on_eof(LINK),
        Err(e) => conn.fail(e),
    }
}

/// The receive side's state.
struct Input {
    framer: Framer,
    records: Rc<RefCell<Records>>,
    /// A record cut by the end of a receive buffer.
    carry: Carry,
    /// Plaintext ranges of the buffer being opened (kept for its capacity).
    plain: Vec<Range<usize>>,
}

impl Input {
    async fn run(
        &mut self,
        conn: &Rc<Conn>,
        socket: &mut TcpStream,
        early: Vec<u8>,
        leftover: Vec<u8>,
    ) -> Result<(), Error> {
        // What arrived with the handshake's last messages.
        if !early.is_empty() {
            let mut buf = AlignedVec::<16>::with_capacity(early.len());
            buf.extend_from_slice(&early);
            let len = buf.len();
            self.deliver(conn, &Backing::Heap(Rc::new(buf)), 0..len)
                .await?;
        }
        if !leftover.is_empty() {
            let mut buf = AlignedVec::<16>::with_capacity(leftover.len());
            buf.extend_from_slice(&leftover);
            self.chunk(conn, Chunk::Heap(buf)).await?;
        }
        loop {
            let mut next = Some(socket.recv().await);
            // Take everything that already arrived before acting on the
            // session's events: one batch of acks and wake-ups per turn.
            while let Some(chunk) = next.take() {
                let chunk = match chunk {
                    Ok(Some(c)) => c,
                    Ok(None) => return self.eof(conn),
                    Err(e) => return Err(Error::io(format!("receive from {}", conn.remote), e)),
                };
                {
                    let mut fed = std::pin::pin!(self.chunk(conn, Chunk::Recv(chunk)));
                    std::future::poll_fn(|cx| {
                        let r = std::future::Future::poll(fed.as_mut(), cx);
                        if r.is_pending() && !conn.reader_may_go() {
                            // Held until the application catches up: the
                            // socket must not take the core's shared receive
                            // buffers meanwhile (the next `recv` resumes).
                            socket.pause_recv();
                        }
                        r
                    })
                    .await?;
                }
                if self.records.borrow().peer_closed() {
                    return self.eof(conn);
                }
                next = socket.try_recv().map(|r| r.map(Some));
            }
            conn.after_session();
            if conn.is_closed() {
                return Ok(());
            }
        }
    }

    /// The peer's stream ended (`close_notify`, or the socket's end).
    fn eof(&self, conn: &Rc<Conn>) -> Result<(), Error> {
        if self.framer.mid_frame() {
            return Err(Error::closed("the peer closed the connection mid-frame"));
        }
        if !self.carry.is_empty() {
            return Err(Error::tls(
                TlsFailure::Record,
                "the peer closed the connection mid-record",
            ));
        }
        conn.after_session();
        Ok(())
    }

    /// Opens the records of one chunk of ciphertext and delivers their
    /// plaintext, in order.
    async fn chunk(&mut self, conn: &Rc<Conn>, mut chunk: Chunk) -> Result<(), Error> {
        // Everything that writes the chunk happens first, while it is ours
        // alone; then it is shared with the messages read from it.
        let bytes = chunk.bytes_mut();
        let mut pos = 0;
        let mut carried = None;
        if !self.carry.is_empty() {
            let (taken, whole) = self.carry.fill(bytes)?;
            pos = taken;
            if whole {
                let (mut buf, at) = self.carry.take();
                self.plain.clear();
                self.records
                    .borrow_mut()
                    .open(&mut buf[at..], &mut self.plain)?;
                let ranges: Vec<Range<usize>> = self
                    .plain
                    .iter()
                    .map(|r| r.start + at..r.end + at)
                    .collect();
                carried = Some((Backing::Heap(Rc::new(buf)), ranges));
            }
        }
        self.plain.clear();
        let rest = &mut bytes[pos..];
        let opened = if self.records.borrow().peer_closed() {
            rest.len()
        } else {
            self.records.borrow_mut().open(rest, &mut self.plain)?
        };
        if opened < rest.len() {
            self.carry.start(&rest[opened..]);
        }
        let backing = chunk.into_backing();
        if let Some((heap, ranges)) = carried {
            for r in ranges {
                self.deliver(conn, &heap, r).await?;
            }
        }
        let ranges = std::mem::take(&mut self.plain);
        for r in &ranges {
            self.deliver(conn, &backing, r.start + pos..r.end + pos)
                .await?;
        }
        self.plain = ranges;
        Ok(())
    }

    /// Gives `range` of `backing`'s plaintext to the framer.
    async fn deliver(
        &mut self,
        conn: &Rc<Conn>,
        backing: &Backing,
        range: Range<usize>,
    ) -> Result<(), Error> {
        let bytes = &backing.bytes()[range];
        let mut pos = 0;
        match self
            .framer
            .feed(conn, bytes, &mut pos, backing, false)
            .await?
        {
            Feed::Consumed => Ok(()),
            Feed::DirectFrame { .. } | Feed::DirectBulk { .. } => Err(Error::Usage(
                "internal: a direct receive was asked for on a TLS connection",
            )),
        }
    }
}

/// Ciphertext to open: a receive buffer, or bytes the handshake left.
enum Chunk {
    Recv(RecvBuf),
    Heap(AlignedVec<16>),
}

impl Chunk {
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Chunk::Recv(b) => b.as_mut_slice(),
            Chunk::Heap(b) => b,
        }
    }

    fn into_backing(self) -> Backing {
        match self {
            Chunk::Recv(b) => Backing::Recv(Rc::new(b)),
            Chunk::Heap(b) => Backing::Heap(Rc::new(b)),
        }
    }
}
