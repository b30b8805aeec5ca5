//! `mem://name`: connections between cores of one process, through the
//! runtime's mailboxes.
//!
//! The same sessions, frames and API as the socket transports, without a
//! socket: each loop turn's frames are encoded into a registered send buffer
//! on the sending core, and that buffer is lent to the receiving core
//! ([`SendBuf::into_remote`](ringwire_runtime::SendBuf::into_remote)) through
//! a typed mailbox channel. The receiver reads the archives in place, without
//! validation (this process wrote them; see
//! `Session::handle_frame_trusted`), and the buffer goes home when the last
//! message read from it is dropped. No payload byte is copied.
//!
//! A listener registers its name for the whole process; `connect` finds the
//! listener's core and asks it, through the core mesh, to accept. Both ends
//! must be cores of the same runtime. Bulk segments are copied once into a
//! buffer the receiving core can read (there is no kernel to do it).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::sync::Mutex;
use std::task::Poll;

use ringwire_proto::{frame_len, FrameHeader, FrameKind, HEADER_LEN};
use ringwire_runtime::mailbox::{self, channel, Receiver, Sender};
use ringwire_runtime::{spawn_local, RemoteBuf};
use rkyv::util::AlignedVec;

use crate::config::Config;
use crate::conn::core::Conn;
use crate::conn::incoming::Backing;
use crate::conn::out::{OutBuf, SharedPayload};
use crate::conn::Connection;
use crate::endpoint::{Endpoint, Scheme};
use crate::error::Error;
use crate::listener::AcceptQueue;

/// Default slots of each direction's channel.
const DEFAULT_CAPACITY: usize = 1024;

/// What travels between the two cores of a `mem://` connection.
enum Item {
    /// Whole frames in a lent pool buffer.
    Lent(RemoteBuf),
    /// Whole frames in a heap buffer (a frame larger than a pool buffer).
    Heap(AlignedVec<16>),
    /// One message: its header here, its payload shared with other
    /// connections (broadcast).
    Shared {
        header: [u8; HEADER_LEN],
        payload: SharedPayload,
    },
    /// One bulk segment frame: its header and its bytes.
    Segment {
        header: [u8; HEADER_LEN],
        data: AlignedVec<16>,
    },
    /// The connection was refused (no listener of that name on that core).
    Refused(String),
}

/// Which core serves each name.
fn registry() -> std::sync::MutexGuard<'static, HashMap<String, usize>> {
    static REGISTRY: std::sync::OnceLock<Mutex<HashMap<String, usize>>> =
        std::sync::OnceLock::new();
    REGISTRY
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// This core's `mem://` listeners, by name.
    static LISTENERS: RefCell<HashMap<String, (Rc<AcceptQueue>, Config)>> =
        RefCell::new(HashMap::new());
}

/// A `mem://` listener on the current core.
pub(crate) struct MemListener {
    name: String,
    pub(crate) queue: Rc<AcceptQueue>,
}

impl MemListener {
    pub(crate) fn bind(
        endpoint: &Endpoint,
        name: &str,
        config: &Config,
    ) -> Result<MemListener, Error> {
        let core = ringwire_runtime::try_current_core()
            .ok_or(Error::Usage("listen must be called on a ringwire core"))?;
        {
            let mut reg = registry();
            if reg.contains_key(name) {
                return Err(Error::io(
                    format!("listen on {endpoint}"),
                    std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another listener in this process has that name",
                    ),
                ));
            }
            reg.insert(name.to_string(), core);
        }
        let queue = Rc::new(AcceptQueue::default());
        LISTENERS.with(|l| {
            l.borrow_mut()
                .insert(name.to_string(), (queue.clone(), config.clone()))
        });
        Ok(MemListener {
            name: name.to_string(),
            queue,
        })
    }
}

impl Drop for MemListener {
    fn drop(&mut self) {
        registry().remove(&self.name);
        let _ = LISTENERS.try_with(|l| l.borrow_mut().remove(&self.name));
        self.queue.close();
    }
}

/// Connects to the `mem://` listener `name`.
pub(crate) async fn connect(
    endpoint: &Endpoint,
    name: &str,
    config: &Config,
) -> Result<Connection, Error> {
    let refused = |why: &str| {
        Error::io(
            format!("connect to {endpoint}"),
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, why.to_string()),
        )
    };
    let Some(core) = registry().get(name).copied() else {
        return Err(refused("no listener of that name in this process"));
    };
    let capacity = endpoint
        .options()
        .capacity()
        .map_or(DEFAULT_CAPACITY, |c| c.get() as usize);
    let (to_server, from_client) = channel::<Item>(capacity);
    let (to_client, from_server) = channel::<Item>(capacity);
    let here = ringwire_runtime::current_core();
    let conn = Conn::new(
        Scheme::Mem,
        format!("{endpoint} (core {core})"),
        config,
        true,
    );
    start(&conn, to_server, from_server);
    let name = name.to_string();
    let remote = format!("mem://{name} client on core {here}");
    mailbox::post(core, move || {
        accept_here(name, remote, from_client, to_client)
    })
    .await
    .map_err(|e| refused(&e.to_string()))?;
    conn.handshake().await?;
    Ok(Connection::new(conn))
}

/// Runs on the listener's core: makes the server side of a connection.
fn accept_here(name: String, remote: String, rx: Receiver<Item>, mut tx: Sender<Item>) {
    let found = LISTENERS
        .try_with(|l| l.borrow().get(&name).cloned())
        .ok()
        .flatten();
    let Some((queue, config)) = found else {
        let _ = tx.try_send(Item::Refused(format!(
            "no listener named {name:?} on core {} (a core of another runtime?)",
            ringwire_runtime::current_core()
        )));
        return;
    };
    let conn = Conn::new(Scheme::Mem, remote, &config, false);
    start(&conn, tx, rx);
    spawn_local(async move {
        let res = conn.handshake().await.map(|peer| {
            if let Some(peers) = &config.peers {
                peers.register(&conn, peer.node_id, ringwire_runtime::current_core());
            }
            Connection::new(conn)
        });
        queue.push(res);
    });
}

/// Spawns the connection's reader, flusher and timer on this core.
fn start(conn: &Rc<Conn>, tx: Sender<Item>, rx: Receiver<Item>) {
    spawn_local(flusher(conn.clone(), tx));
    spawn_local(reader(conn.clone(), rx));
    spawn_local(conn.clone().run_timer());
}

/// Hands each batch of queued frames to the peer core.
async fn flusher(conn: Rc<Conn>, mut tx: Sender<Item>) {
    while let Some((bufs, messages, bytes)) = conn.next_batch(1).await {
        let mut items = Vec::with_capacity(bufs.len());
        let mut bufs = bufs.into_iter().map(|t| t.buf).peekable();
        while let Some(buf) = bufs.next() {
            match buf {
                OutBuf::Pool(b) => items.push(Item::Lent(b.into_remote())),
                OutBuf::Heap(h) => items.push(Item::Heap(h.0)),
                OutBuf::Header(h) => {
                    let mut header = [0u8; HEADER_LEN];
                    header.copy_from_slice(&h.0[..HEADER_LEN]);
                    match bufs.next() {
                        Some(OutBuf::Shared(payload)) => {
                            items.push(Item::Shared { header, payload })
                        }
                        Some(OutBuf::Segment(seg)) => {
                            let mut data = AlignedVec::<16>::with_capacity(seg.len);
                            data.extend_from_slice(seg.bytes());
                            // The caller's buffer goes back now.
                            drop(seg);
                            if matches!(bufs.peek(), Some(OutBuf::Pad(_))) {
                                bufs.next();
                            }
                            items.push(Item::Segment { header, data });
                        }
                        _ => {
                            conn.fail(Error::Usage("internal: header without its payload"));
                            return;
                        }
                    }
                }
                OutBuf::Shared(_) | OutBuf::Segment(_) | OutBuf::Pad(_) => {
                    conn.fail(Error::Usage("internal: payload without its header"));
                    return;
                }
            }
        }
        for item in items {
            if tx.send(item).await.is_err() {
                conn.on_eof(1);
                return;
            }
        }
        conn.batch_done(Vec::new(), messages, bytes);
    }
    // Dropping `tx` tells the peer's reader that this side is done.
}

/// Takes what the peer core lent and hands its frames to the session.
async fn reader(conn: Rc<Conn>, mut rx: Receiver<Item>) {
    loop {
        let item = poll_fn(|cx| {
            let mut recv = std::pin::pin!(rx.recv());
            match recv.as_mut().poll(cx) {
                Poll::Ready(item) => Poll::Ready(item),
                // The runtime wakes every task when shutdown starts: treat
                // it as the end of input, as sockets do.
                Poll::Pending if ringwire_runtime::is_shutting_down() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        let Some(item) = item else { break };
        let res = match item {
            Item::Lent(buf) => {
                let backing = Backing::Lent(Rc::new(buf));
                frames(&conn, &backing).await
            }
            Item::Heap(buf) => {
                let backing = Backing::Heap(Rc::new(buf));
                frames(&conn, &backing).await
            }
            Item::Shared { header, payload } => match parse(&header) {
                Ok(h) => {
                    let backing = Backing::Shared(payload.buf.clone());
                    // The shared bytes carry the frame's padding too.
                    match payload.bytes().get(..h.payload_len as usize) {
                        Some(bytes) => match wait_ready(&conn).await {
                            Ok(()) => conn.on_frame(&h, bytes, &backing, true),
                            Err(e) => Err(e),
                        },
                        None => Err(Error::Usage(
                            "internal: shared payload shorter than its header says",
                        )),
                    }
                }
                Err(e) => Err(e),
            },
            Item::Segment { header, data } => match parse(&header) {
                Ok(h) => match wait_ready(&conn).await {
                    Ok(()) => segment(&conn, &h, &data),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            Item::Refused(why) => {
                conn.fail(Error::io(
                    format!("connect to {}", conn.remote),
                    std::io::Error::new(std::io::ErrorKind::ConnectionRefused, why),
                ));
                return;
            }
        };
        // Acks, close answers and events the frames caused.
        conn.after_session();
        if res.is_err() || conn.is_closed() {
            return;
        }
    }
    conn.on_eof(1);
}

fn parse(header: &[u8; HEADER_LEN]) -> Result<FrameHeader, Error> {
    FrameHeader::parse(header).map_err(Error::from_proto)
}

async fn wait_ready(conn: &Rc<Conn>) -> Result<(), Error> {
    if conn.reader_may_go() {
        Ok(())
    } else {
        conn.reader_ready().await
    }
}

/// Hands every frame of a lent buffer to the session, in place.
async fn frames(conn: &Rc<Conn>, backing: &Backing) -> Result<(), Error> {
    let bytes = backing.bytes();
    let mut at = 0;
    while at < bytes.len() {
        wait_ready(conn).await?;
        let head = bytes[at..]
            .first_chunk::<HEADER_LEN>()
            .ok_or_else(|| Error::Usage("internal: truncated frame in a lent buffer"))?;
        let header = parse(head)?;
        conn.check_header(&header)?;
        let len = header.payload_len as usize;
        let payload = bytes
            .get(at + HEADER_LEN..at + HEADER_LEN + len)
            .ok_or_else(|| Error::Usage("internal: truncated frame in a lent buffer"))?;
        if header.kind == FrameKind::Bulk {
            segment(conn, &header, payload)?;
        } else {
            conn.on_frame(&header, payload, backing, true)?;
        }
        at += frame_len(len);
    }
    Ok(())
}

/// Copies one bulk segment into its destination.
fn segment(conn: &Rc<Conn>, header: &FrameHeader, data: &[u8]) -> Result<(), Error> {
    conn.check_header(header)?;
    let mut dest = conn.bulk_start(header)?;
    if let Some(d) = dest.as_mut() {
        let dst = d.as_mut_slice();
        if dst.len() != data.len() {
            return Err(Error::Usage(
                "internal: bulk segment size changed in flight",
            ));
        }
        dst.copy_from_slice(data);
    }
    conn.bulk_end(header, dest, 0);
    Ok(())
}
