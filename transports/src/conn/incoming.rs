//! Received messages, read in place: [`Incoming`] (any type) and [`Msg<T>`]
//! (one type), and [`Receipt`] for sent ones.
//!
//! A received message borrows the memory its bytes arrived in: the runtime's
//! receive buffer the kernel filled (most messages), a buffer of exactly its
//! size (a frame larger than what was left of its receive buffer), or the
//! buffer another core of this process wrote it into (`mem://`). The guard
//! keeps that memory alive; dropping it releases it (a receive buffer goes
//! back to the kernel once every message in it is dropped). Hold guards only
//! as long as needed: a held receive buffer is one the kernel cannot fill.

use std::future::{poll_fn, Future};
use std::marker::PhantomData;
use std::ops::Deref;
use std::rc::Rc;

use ringwire_proto::{FrameKind, Message, Received, ReplyTo, StreamId};
use ringwire_runtime::{RecvBuf, RemoteBuf};
use rkyv::util::AlignedVec;

use super::core::Conn;
use super::out::SharedBytes;
use crate::error::Error;

/// The memory a received message lives in.
#[derive(Clone)]
pub(crate) enum Backing {
    /// A receive buffer of the core's provided buffer ring, shared by the
    /// frames it holds.
    Recv(Rc<RecvBuf>),
    /// A buffer of the frame's own size (assembled, or received direct).
    Heap(Rc<AlignedVec<16>>),
    /// A buffer another core of this process lent (`mem://`).
    Lent(Rc<RemoteBuf>),
    /// A buffer shared by many connections (a broadcast payload).
    Shared(SharedBytes),
}

impl Backing {
    /// All the bytes of the memory.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Backing::Recv(b) => b,
            Backing::Heap(b) => b,
            Backing::Lent(b) => b,
            Backing::Shared(b) => b.bytes(),
        }
    }
}

/// A received message of any registered type, validated at ingress and read
/// in place.
///
/// Ask for its type with [`get`](Incoming::get) or turn it into a typed
/// [`Msg`] with [`downcast`](Incoming::downcast); answer a request with
/// [`reply`](Incoming::reply); for a message that announced bulk segments,
/// choose their destinations with [`accept_bulk`](Incoming::accept_bulk) (or
/// [`discard_bulk`](Incoming::discard_bulk); dropping an undecided offer
/// discards it). Not `Send`: it belongs to the connection's core.
///
/// It borrows the memory its bytes arrived in: the receive buffer the kernel
/// filled (most messages), a buffer of exactly its size (a frame larger than
/// what was left of its receive buffer), or the buffer another core of this
/// process wrote it into (`mem://`), and keeps it alive while it lives (a
/// receive buffer goes back to the kernel once every message read from it is
/// dropped). Hold received messages only as long as needed: a held receive
/// buffer is one the kernel cannot fill.
pub struct Incoming {
    /// Borrows `backing`, which lives as long as `self` (the lifetime is
    /// erased; every accessor reborrows it from `&self`).
    received: Received<'static>,
    backing: Backing,
    conn: Rc<Conn>,
    bulk_open: bool,
}

impl Incoming {
    /// Wraps `received`, which must borrow memory that `backing` keeps alive.
    ///
    /// # Safety
    ///
    /// `received`'s archive and bulk descriptor point into memory owned by
    /// `backing` (and not written while it lives).
    pub(crate) unsafe fn new(received: Received<'_>, backing: Backing, conn: Rc<Conn>) -> Incoming {
        let bulk_open = received.bulk().is_some();
        // SAFETY: the caller guarantees the borrowed bytes live in `backing`,
        // which this struct owns and keeps until it drops; accessors hand out
        // borrows tied to `&self`, never the `'static` ones.
        let received: Received<'static> = unsafe { std::mem::transmute(received) };
        Incoming {
            received,
            backing,
            conn,
            bulk_open,
        }
    }

    /// The message's type id.
    pub fn type_id(&self) -> u32 {
        self.received.type_id()
    }

    /// Whether it is a one-way message, a request or a reply.
    pub fn kind(&self) -> FrameKind {
        self.received.kind()
    }

    /// The logical stream it arrived on.
    pub fn stream(&self) -> StreamId {
        self.received.stream()
    }

    /// Its sequence number on the connection.
    pub fn seq(&self) -> u64 {
        self.received.seq()
    }

    /// Whether it is a request (answer it with [`reply`](Incoming::reply)).
    pub fn is_request(&self) -> bool {
        self.received.reply_to().is_some()
    }

    /// The archived message as `T` (free: validated at ingress), or
    /// [`Error::WrongType`].
    pub fn get<T: Message>(&self) -> Result<&T::Archived, Error> {
        self.received.get::<T>().map_err(|_| Error::WrongType {
            expected: T::NAME,
            found: self.received.type_id(),
        })
    }

    /// This message as a typed [`Msg<T>`], or itself back if it is of another
    /// type.
    pub fn downcast<T: Message>(self) -> Result<Msg<T>, Incoming> {
        match self.received.get::<T>() {
            Ok(archived) => Ok(Msg {
                archived: archived as *const T::Archived,
                inner: self,
                _type: PhantomData,
            }),
            Err(_) => Err(self),
        }
    }

    /// The archive's bytes, as they arrived.
    pub fn archive_bytes(&self) -> &[u8] {
        self.received.archive_bytes()
    }

    /// Whether the bytes are read in place in a receive buffer the kernel
    /// filled (false: assembled into, or received straight into, a buffer of
    /// the frame's size, or lent by another core).
    pub fn in_receive_buffer(&self) -> bool {
        matches!(self.backing, Backing::Recv(_))
    }

    /// Answers this request. Fails with [`Error::Usage`] if it is not one.
    pub fn reply<'a, R: Message>(
        &'a self,
        value: &'a R,
    ) -> impl Future<Output = Result<(), Error>> + 'a {
        let to = self.received.reply_to();
        async move {
            let to = to.ok_or(Error::Usage("reply to a message that is not a request"))?;
            self.conn.send_reply(to, value).await
        }
    }

    /// Where a reply goes (stream and call id), for answering after this
    /// message is dropped ([`Connection::reply_to`](crate::Connection::reply_to)).
    pub fn reply_to(&self) -> Option<ReplyTo> {
        self.received.reply_to()
    }

    /// The sizes of the bulk segments this message announced, if any; the
    /// connection waits for [`accept_bulk`](Incoming::accept_bulk) or
    /// [`discard_bulk`](Incoming::discard_bulk) before reading on.
    pub fn bulk_sizes(&self) -> Option<Vec<u32>> {
        if !self.bulk_open {
            return None;
        }
        self.received.bulk().map(|b| b.iter().collect())
    }

    /// Receives the announced bulk segments straight into `dests`, one per
    /// segment, each exactly its announced size (see
    /// [`bulk_sizes`](Incoming::bulk_sizes)): over TCP and Unix sockets the
    /// bytes beyond what had already arrived are received by the kernel into
    /// `dests` directly (no user-space copy). Resolves to the filled
    /// destinations.
    pub fn accept_bulk<D: ringwire_runtime::IoBufMut>(
        &mut self,
        dests: Vec<D>,
    ) -> impl Future<Output = Result<Vec<D>, Error>> + 'static {
        let sizes = self.bulk_sizes();
        self.bulk_open = false;
        let conn = self.conn.clone();
        let seq = self.received.seq();
        async move {
            let sizes = sizes.ok_or(Error::Usage("no undecided bulk offer on this message"))?;
            conn.accept_bulk(seq, &sizes, dests).await
        }
    }

    /// Declines the announced bulk segments: the connection skips them.
    pub fn discard_bulk(&mut self) {
        if std::mem::take(&mut self.bulk_open) {
            self.conn.discard_bulk(self.received.seq());
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // An undecided bulk offer must not stall the connection.
        self.discard_bulk();
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("type_id", &format_args!("{:#010x}", self.type_id()))
            .field("kind", &self.kind())
            .field("stream", &self.stream())
            .field("seq", &self.seq())
            .finish()
    }
}

/// A received message of type `T`: derefs to its archived form, read in place
/// (see [`Incoming`] for what it keeps alive).
pub struct Msg<T: Message> {
    /// Points into `inner`'s backing memory.
    archived: *const T::Archived,
    inner: Incoming,
    _type: PhantomData<fn() -> T>,
}

impl<T: Message> Msg<T> {
    /// The untyped view (stream, sequence number, reply, bulk).
    pub fn incoming(&self) -> &Incoming {
        &self.inner
    }

    /// The untyped view, mutable (to accept or discard bulk).
    pub fn incoming_mut(&mut self) -> &mut Incoming {
        &mut self.inner
    }

    /// The untyped message back.
    pub fn into_incoming(self) -> Incoming {
        self.inner
    }

    /// Answers this request (see [`Incoming::reply`]).
    pub fn reply<'a, R: Message>(
        &'a self,
        value: &'a R,
    ) -> impl Future<Output = Result<(), Error>> + 'a {
        self.inner.reply(value)
    }
}

impl<T: Message> Deref for Msg<T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        // SAFETY: `archived` was returned by `Received::get::<T>` for bytes
        // held by `inner`'s backing, which lives (unmodified) as long as
        // `self`; the borrow handed out is tied to `&self`.
        unsafe { &*self.archived }
    }
}

impl<T: Message> std::fmt::Debug for Msg<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msg")
            .field("type", &T::NAME)
            .field("stream", &self.inner.stream())
            .field("seq", &self.inner.seq())
            .finish()
    }
}

/// What a send returns: the message's sequence number, and a way to wait for
/// the peer's acknowledgement.
#[derive(Clone)]
pub struct Receipt {
    pub(crate) seq: u64,
    pub(crate) dropped: bool,
    pub(crate) conn: Rc<Conn>,
}

impl Receipt {
    /// Sequence number of the sent message (0 if it was dropped).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether the message was dropped by the
    /// [`DropNewest`](crate::BackPressure::DropNewest) policy (and counted).
    pub fn dropped(&self) -> bool {
        self.dropped
    }

    /// Resolves once the peer's session has acknowledged the message (it
    /// received it and every message before it). Fails if the connection
    /// ends first, or at once for a dropped message.
    pub async fn acked(self) -> Result<(), Error> {
        if self.dropped {
            return Err(Error::Usage(
                "the message was dropped by the back-pressure policy",
            ));
        }
        let mut registered = false;
        poll_fn(|cx| self.conn.poll_acked(self.seq, &mut registered, cx)).await
    }
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt")
            .field("seq", &self.seq)
            .field("dropped", &self.dropped)
            .finish()
    }
}
