//! [`Connection`]: typed messages over any scheme.
//!
//! In the order a program uses them:
//!
//! - **make one**: [`connect`](crate::connect), or
//!   [`Listener::accept`](crate::Listener::accept) on the serving side; both
//!   return once the handshake has succeeded (the peer's schema matches);
//! - **send**: [`send`](Connection::send) (returns once the message is
//!   queued; everything sent to one connection in a loop turn leaves in one
//!   submission), [`send_acked`](Connection::send_acked) (returns once the
//!   peer acknowledged it), [`send_bulk`](Connection::send_bulk) (metadata
//!   plus bulk segments sent straight from the caller's memory);
//! - **receive**: [`recv`](Connection::recv) (one type, a guard that derefs
//!   to the archived message, read in place) or
//!   [`recv_any`](Connection::recv_any) (several types);
//! - **request/reply**: [`call`](Connection::call) on one side,
//!   [`Msg::reply`] / [`Incoming::reply`] on the other, any number of calls
//!   in flight;
//! - **streams**: [`stream`](Connection::stream) for a view that sends and
//!   receives on one logical stream of the connection;
//! - **end**: [`close`](Connection::close) (orderly: flushes what was sent
//!   and waits for the peer's confirmation), or drop every handle (the
//!   connection then closes orderly in the background).
//!
//! A `Connection` belongs to the core it was made on (it is not `Send`);
//! clones share it. Threads that are not ringwire cores use a
//! [`ConnHandle`](crate::ConnHandle).

pub(crate) mod core;
pub(crate) mod incoming;
pub(crate) mod out;
pub(crate) mod resume;

use std::rc::Rc;

use ringwire_proto::{Message, PeerInfo, ReplyTo, StreamId};
use ringwire_runtime::IoBuf;

use self::core::Conn;
pub use self::incoming::{Incoming, Msg, Receipt};
pub use self::resume::{ConnEvent, Unacked};
use crate::endpoint::Scheme;
use crate::error::Error;

/// A connection carrying typed messages; see the [module docs](self).
#[derive(Clone)]
pub struct Connection {
    conn: Rc<Conn>,
    _user: Rc<UserRef>,
}

/// Closes the connection in the background when the application drops its
/// last handle, then drops the messages it left unread.
struct UserRef(Rc<Conn>);

impl Drop for UserRef {
    fn drop(&mut self) {
        // Messages received and not taken hold the connection: once it is
        // closed they are dropped (`drop_unread`), or the connection and
        // their receive buffers would never be freed.
        let conn = self.0.clone();
        if conn.is_closed() {
            conn.drop_unread();
            return;
        }
        // Off a core (a runtime being torn down) there is nothing to run on.
        if ringwire_runtime::try_current_core().is_none() {
            return;
        }
        if ringwire_runtime::is_shutting_down() {
            // No time to wait for the peer's confirmation.
            conn.shutdown_close();
            conn.drop_unread();
            return;
        }
        ringwire_runtime::spawn_local(async move {
            let _ = conn.close().await;
            conn.drop_unread();
        });
    }
}

impl Connection {
    pub(crate) fn new(conn: Rc<Conn>) -> Connection {
        Connection {
            _user: Rc::new(UserRef(conn.clone())),
            conn,
        }
    }

    pub(crate) fn inner(&self) -> &Rc<Conn> {
        &self.conn
    }

    /// The peer, from its handshake: its node id (the peer id), capabilities
    /// and largest accepted payload.
    pub fn peer(&self) -> PeerInfo {
        self.conn.peer().unwrap_or(PeerInfo {
            node_id: 0,
            capabilities: 0,
            max_payload: 0,
        })
    }

    /// The peer's node id (the handshake's): the peer id of this connection.
    pub fn peer_id(&self) -> u64 {
        self.peer().node_id
    }

    /// The peer's address, for logs.
    pub fn remote(&self) -> &str {
        &self.conn.remote
    }

    /// The scheme this connection runs over.
    pub fn scheme(&self) -> Scheme {
        self.conn.scheme
    }

    /// A number that identifies this connection within the process.
    pub fn id(&self) -> u64 {
        self.conn.id
    }

    /// Whether the connection is over (every operation now fails with the
    /// reason).
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Why the connection is over, if it is.
    pub fn closed_reason(&self) -> Option<Error> {
        self.conn.closed_error()
    }

    /// Whether messages flow now: the connection is open and not waiting for
    /// a new link after a cut (sends then queue until it resumes).
    pub fn is_linked(&self) -> bool {
        self.conn.is_linked()
    }

    /// The next event of the connection's transport (cut, resumed, session
    /// reset with the messages never acknowledged), waiting for one; `None`
    /// once the connection is over. Only connections that survive cuts
    /// ([`Config::reconnect`](crate::Config::reconnect),
    /// [`Config::resume`](crate::Config::resume)) have events.
    pub async fn next_event(&self) -> Option<ConnEvent> {
        self.conn.next_event().await
    }

    /// A view that sends, calls and receives on logical stream `id` (the
    /// connection's own methods use stream 0).
    pub fn stream(&self, id: u32) -> StreamRef<'_> {
        StreamRef {
            conn: self,
            id: StreamId(id),
        }
    }

    /// Queues `value` for the peer: serialized straight into a registered
    /// send buffer, so `value` is free as soon as this returns. Waits while
    /// the send queue is full (back-pressure policy
    /// [`Wait`](crate::BackPressure::Wait)); fails, or drops and counts the
    /// message, under the other policies.
    pub async fn send<T: Message>(&self, value: &T) -> Result<Receipt, Error> {
        self.conn.send(StreamId(0), value).await
    }

    /// Sends again, on this connection, a message another session handed
    /// back ([`ConnEvent::SessionReset`], [`ConnEvent::Failed`]): its archived
    /// bytes are copied into a send buffer as they are. Only one-way messages
    /// without bulk segments ([`Unacked::is_plain_message`]) whose type this
    /// connection's schema has; anything else is an [`Error::Usage`] or
    /// [`Error::Protocol`].
    pub async fn send_again(&self, msg: &Unacked) -> Result<Receipt, Error> {
        self.conn.send_again(msg).await
    }

    /// Sends `value` and waits until the peer's session acknowledged it.
    pub async fn send_acked<T: Message>(&self, value: &T) -> Result<(), Error> {
        self.conn.send(StreamId(0), value).await?.acked().await
    }

    /// Receives the next message, which must be a `T`; a message of another
    /// type is consumed and reported as [`Error::WrongType`]. A message that
    /// failed validation on arrival is reported as [`Error::Rejected`]. Both
    /// cost that message only; the connection goes on.
    pub async fn recv<T: Message>(&self) -> Result<Msg<T>, Error> {
        typed(self.conn.recv(0).await?)
    }

    /// Receives the next message, of any type.
    pub async fn recv_any(&self) -> Result<Incoming, Error> {
        self.conn.recv(0).await
    }

    /// Takes a message that already arrived, without waiting.
    pub fn try_recv_any(&self) -> Option<Result<Incoming, Error>> {
        self.conn.try_recv(0)
    }

    /// Sends a request and waits for its reply, which must be a `Resp`. Fails
    /// with [`Error::Timeout`] after the configured call timeout. Many calls
    /// may be in flight on one connection; replies are matched by id.
    pub async fn call<Req: Message, Resp: Message>(
        &self,
        request: &Req,
    ) -> Result<Msg<Resp>, Error> {
        typed(self.conn.call(StreamId(0), request).await?)
    }

    /// Answers a request after its message was dropped (keep its
    /// [`Incoming::reply_to`]).
    pub async fn reply_to<T: Message>(&self, to: ReplyTo, value: &T) -> Result<(), Error> {
        self.conn.send_reply(to, value).await
    }

    /// Sends `meta` announcing one bulk segment per buffer in `segments`, then
    /// the segments themselves, straight from their memory (over sockets: a
    /// gather send; no copy). The peer chooses where they land
    /// ([`Incoming::accept_bulk`]). Resolves once everything was handed to the
    /// kernel (or the peer core), giving the segments back.
    pub async fn send_bulk<T: Message, B: IoBuf>(
        &self,
        meta: &T,
        segments: Vec<B>,
    ) -> Result<(Receipt, Vec<B>), Error> {
        if segments.is_empty() {
            return Err(Error::Usage("send_bulk needs at least one segment"));
        }
        self.conn.send_bulk(StreamId(0), meta, segments).await
    }

    /// Closes the connection in an orderly way: what was sent before goes
    /// out, the peer confirms once it has received all of it, then the
    /// transport closes. Returns whether everything sent was acknowledged.
    /// Other handles to the connection see it closed.
    pub async fn close(&self) -> Result<bool, Error> {
        self.conn.close().await
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.conn.id)
            .field("scheme", &self.conn.scheme)
            .field("remote", &self.conn.remote)
            .finish()
    }
}

/// One logical stream of a [`Connection`] (see [`Connection::stream`]).
/// Messages on one stream stay in order; streams share the connection.
#[derive(Clone, Copy)]
pub struct StreamRef<'a> {
    conn: &'a Connection,
    id: StreamId,
}

impl StreamRef<'_> {
    /// The stream's id.
    pub fn id(&self) -> u32 {
        self.id.0
    }

    /// As [`Connection::send`], on this stream.
    pub async fn send<T: Message>(&self, value: &T) -> Result<Receipt, Error> {
        self.conn.conn.send(self.id, value).await
    }

    /// As [`Connection::recv`], on this stream.
    pub async fn recv<T: Message>(&self) -> Result<Msg<T>, Error> {
        typed(self.conn.conn.recv(self.id.0).await?)
    }

    /// As [`Connection::recv_any`], on this stream.
    pub async fn recv_any(&self) -> Result<Incoming, Error> {
        self.conn.conn.recv(self.id.0).await
    }

    /// As [`Connection::call`], on this stream.
    pub async fn call<Req: Message, Resp: Message>(
        &self,
        request: &Req,
    ) -> Result<Msg<Resp>, Error> {
        typed(self.conn.conn.call(self.id, request).await?)
    }
}

fn typed<T: Message>(incoming: Incoming) -> Result<Msg<T>, Error> {
    incoming.downcast::<T>().map_err(|m| Error::WrongType {
        expected: T::NAME,
        found: m.type_id(),
    })
}
