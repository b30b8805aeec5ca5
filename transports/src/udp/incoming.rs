//! Received datagrams, read in place: [`Incoming`] (any type) and
//! [`Msg<T>`] (one type), like a connection's messages but with the
//! datagram's sender, sequence number and source address.
//!
//! Each holds the receive buffer the kernel filled with its datagram (one
//! datagram per buffer) and gives it back to the kernel when dropped: hold
//! received datagrams only as long as needed.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::ops::Deref;

use ringwire_proto::schema::ValidatedAs;
use ringwire_proto::Message;
use ringwire_runtime::RecvBuf;

use super::wire::{DatagramHeader, HEADER_LEN};
use crate::error::Error;

/// A received datagram's message, of any type in the schema, validated at
/// ingress and read in place. Not `Send`: it belongs to the socket's core.
pub struct Incoming {
    /// The datagram (header, archive, padding), in its receive buffer.
    buf: RecvBuf,
    header: DatagramHeader,
    /// The Rust type whose validator accepted the archive.
    validated: ValidatedAs,
    source: SocketAddr,
    late: bool,
}

impl Incoming {
    /// Wraps a datagram whose header is `header` and whose archive (after
    /// the header, `header.payload_len` bytes) passed `validated`.
    pub(crate) fn new(
        buf: RecvBuf,
        header: DatagramHeader,
        validated: ValidatedAs,
        source: SocketAddr,
        late: bool,
    ) -> Incoming {
        Incoming {
            buf,
            header,
            validated,
            source,
            late,
        }
    }

    /// The sending socket's id (see [`Datagrams::sender_id`](super::Datagrams::sender_id)).
    pub fn sender(&self) -> u64 {
        self.header.sender
    }

    /// Its number in the sender's sequence to this destination.
    pub fn seq(&self) -> u64 {
        self.header.seq
    }

    /// The address it came from.
    pub fn source(&self) -> SocketAddr {
        self.source
    }

    /// Whether it arrived after a datagram the sender sent later (it filled
    /// a gap; see [`Event::Late`](super::Event::Late)).
    pub fn is_late(&self) -> bool {
        self.late
    }

    /// The message's type id.
    pub fn type_id(&self) -> u32 {
        self.header.type_id
    }

    /// The archive's bytes, as they arrived.
    pub fn archive_bytes(&self) -> &[u8] {
        let end = HEADER_LEN + self.header.payload_len as usize;
        // The header check at ingress made the datagram exactly this long
        // (plus padding); `get` keeps a malformed guard from panicking.
        self.buf.get(HEADER_LEN..end).unwrap_or_default()
    }

    /// The archived message as `T` (free: validated at ingress), or
    /// [`Error::WrongType`].
    pub fn get<T: Message>(&self) -> Result<&T::Archived, Error> {
        if self.header.type_id != T::TYPE_ID {
            return Err(Error::WrongType {
                expected: T::NAME,
                found: self.header.type_id,
            });
        }
        let bytes = self.archive_bytes();
        if self.validated.is::<T>() {
            // SAFETY: these bytes passed `rkyv::access::<T::Archived>`
            // (bytecheck and alignment) at ingress, as the token records,
            // and the receive buffer holding them is owned by `self` and not
            // written while it lives.
            Ok(unsafe { ringwire_proto::access_trusted::<T>(bytes) })
        } else {
            // Another Rust type registered under the same id validated it:
            // check again as `T`.
            ringwire_proto::access::<T>(bytes).map_err(|e| Error::Rejected(std::sync::Arc::new(e)))
        }
    }

    /// This message as a typed [`Msg<T>`], or itself back if it is of
    /// another type.
    pub fn downcast<T: Message>(self) -> Result<Msg<T>, Incoming> {
        let archived = match self.get::<T>() {
            Ok(a) => a as *const T::Archived,
            Err(_) => return Err(self),
        };
        Ok(Msg {
            archived,
            inner: self,
            _type: PhantomData,
        })
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("sender", &format_args!("{:#018x}", self.header.sender))
            .field("seq", &self.header.seq)
            .field("type_id", &format_args!("{:#010x}", self.header.type_id))
            .field("source", &self.source)
            .field("late", &self.late)
            .finish()
    }
}

/// A received datagram's message of type `T`: derefs to its archived form,
/// read in place (see [`Incoming`] for what it holds).
pub struct Msg<T: Message> {
    /// Points into `inner`'s receive buffer.
    archived: *const T::Archived,
    inner: Incoming,
    _type: PhantomData<fn() -> T>,
}

impl<T: Message> Msg<T> {
    /// The untyped view (sender, sequence number, source).
    pub fn incoming(&self) -> &Incoming {
        &self.inner
    }

    /// The untyped message back.
    pub fn into_incoming(self) -> Incoming {
        self.inner
    }

    /// The sending socket's id.
    pub fn sender(&self) -> u64 {
        self.inner.sender()
    }

    /// Its number in the sender's sequence.
    pub fn seq(&self) -> u64 {
        self.inner.seq()
    }

    /// The address it came from.
    pub fn source(&self) -> SocketAddr {
        self.inner.source()
    }
}

impl<T: Message> Deref for Msg<T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        // SAFETY: `archived` was returned by `Incoming::get::<T>` for bytes
        // in `inner`'s receive buffer, which lives (unmodified, at the same
        // address: the bytes are in the core's buffer memory, not in the
        // guard) as long as `self`; the borrow handed out is tied to `&self`.
        unsafe { &*self.archived }
    }
}

impl<T: Message> std::fmt::Debug for Msg<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msg")
            .field("type", &T::NAME)
            .field("sender", &format_args!("{:#018x}", self.inner.sender()))
            .field("seq", &self.inner.seq())
            .field("source", &self.inner.source())
            .finish()
    }
}
