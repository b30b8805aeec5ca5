//! [`ConnHandle`]: a connection used from threads that are not ringwire
//! cores (a service's own threads, a tokio task).
//!
//! A handle is `Send + Sync + Clone`. Every operation travels to the
//! connection's core as a closure (through the runtime's cross-thread
//! queue), runs there as a task, and its outcome comes back through a
//! one-shot slot that the caller either blocks on (`*_blocking`) or awaits
//! (the `async` forms work in any executor: the slot wakes whatever waker
//! polled it). Embedding ringwire therefore never requires moving a service
//! onto ringwire's executor.
//!
//! Messages received through a handle are copied out of the receive buffer
//! into an [`Owned`] (the buffer belongs to the core and cannot cross
//! threads); sends serialize on the core, straight into its send buffers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};

use ringwire_proto::{Message, Schema};
use ringwire_runtime::RuntimeHandle;
use rkyv::util::AlignedVec;

use crate::conn::core::Conn;
use crate::conn::{Connection, Incoming};
use crate::error::Error;

thread_local! {
    /// Connections of this core that handles may name.
    static HANDLED: RefCell<HashMap<u64, Weak<Conn>>> = RefCell::new(HashMap::new());
}

fn lookup(id: u64) -> Option<Rc<Conn>> {
    HANDLED
        .try_with(|h| h.borrow().get(&id).and_then(Weak::upgrade))
        .ok()
        .flatten()
}

/// A [`Connection`] reachable from any thread (a service's own threads, a
/// tokio task). `Send + Sync + Clone`: every operation travels to the
/// connection's core through the runtime's cross-thread queue, runs there,
/// and its outcome comes back through a one-shot slot that the caller blocks
/// on (`*_blocking`) or awaits (the `async` forms work in any executor).
/// Received messages are copied out of the receive buffer for the caller's
/// thread ([`Owned`], [`OwnedAny`]).
#[derive(Clone)]
pub struct ConnHandle {
    runtime: RuntimeHandle,
    core: usize,
    conn: u64,
    schema: Arc<Schema>,
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle")
            .field("core", &self.core)
            .field("conn", &self.conn)
            .finish()
    }
}

impl Connection {
    /// A handle to this connection for other threads. Call it on the
    /// connection's core.
    pub fn handle(&self) -> ConnHandle {
        let conn = self.inner();
        HANDLED.with(|h| {
            h.borrow_mut().insert(conn.id, Rc::downgrade(conn));
        });
        let id = conn.id;
        conn.on_end(Box::new(move || {
            let _ = HANDLED.try_with(|h| h.borrow_mut().remove(&id));
        }));
        ConnHandle {
            runtime: ringwire_runtime::current_runtime(),
            core: ringwire_runtime::current_core(),
            conn: id,
            schema: conn.config.schema.clone(),
        }
    }
}

impl ConnHandle {
    /// The core the connection lives on.
    pub fn core(&self) -> usize {
        self.core
    }

    /// Runs `f` with the connection on its core and brings the result back.
    fn run<R, F, Fut>(&self, f: F) -> Reply<Result<R, Error>>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Conn>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, Error>> + 'static,
    {
        let (slot, reply) = oneshot();
        let id = self.conn;
        let posted = self.runtime.post(self.core, move || {
            let Some(conn) = lookup(id) else {
                slot.set(Err(Error::closed("the connection is gone")));
                return;
            };
            ringwire_runtime::spawn_local(async move {
                let out = f(conn).await;
                slot.set(out);
            });
        });
        if let Err(e) = posted {
            let (slot, reply) = oneshot();
            slot.set(Err(Error::closed(format!(
                "the connection's core is gone: {e}"
            ))));
            return reply;
        }
        reply
    }

    /// Sends `value` from any thread, blocking this thread until it is
    /// queued on the connection. The message is serialized here, on the
    /// calling thread, into a buffer lent to the connection's core (which
    /// adds only its frame header), so the caller keeps `value` whatever
    /// happens.
    pub fn send_blocking<T: Message>(&self, value: &T) -> Result<(), Error> {
        self.send_inner(value)?.wait()
    }

    /// Sends `value` from any executor; resolves once it is queued on the
    /// connection (see [`send_blocking`](ConnHandle::send_blocking)).
    pub async fn send<T: Message>(&self, value: &T) -> Result<(), Error> {
        self.send_inner(value)?.await
    }

    fn send_inner<T: Message>(&self, value: &T) -> Result<Reply<Result<(), Error>>, Error> {
        let (payload, payload_len) = crate::peers::encode_heap(value)?;
        Ok(self.run(move |conn| async move {
            conn.send_shared_waiting::<T>(ringwire_proto::StreamId(0), payload_len, payload)
                .await
        }))
    }

    /// Sends a request and blocks this thread until the reply arrives (or the
    /// call times out). The request is serialized on the calling thread.
    pub fn call_blocking<Req: Message, Resp: Message>(
        &self,
        request: &Req,
    ) -> Result<Owned<Resp>, Error> {
        self.call_inner::<Req, Resp>(request)?.wait()
    }

    /// Sends a request; resolves to the reply, in any executor.
    pub async fn call<Req: Message, Resp: Message>(
        &self,
        request: &Req,
    ) -> Result<Owned<Resp>, Error> {
        self.call_inner::<Req, Resp>(request)?.await
    }

    fn call_inner<Req: Message, Resp: Message>(
        &self,
        request: &Req,
    ) -> Result<Reply<Result<Owned<Resp>, Error>>, Error> {
        let (payload, payload_len) = crate::peers::encode_heap(request)?;
        Ok(self.run(move |conn| async move {
            let reply = conn
                .call_shared::<Req>(ringwire_proto::StreamId(0), payload_len, payload)
                .await?;
            let reply = reply.downcast::<Resp>().map_err(|m| Error::WrongType {
                expected: Resp::NAME,
                found: m.type_id(),
            })?;
            Ok(Owned::copy(reply.incoming()))
        }))
    }

    /// Receives the next message (any type) and blocks this thread until it
    /// is there.
    pub fn recv_blocking(&self) -> Result<OwnedAny, Error> {
        self.recv_inner().wait()
    }

    /// Receives the next message (any type), in any executor.
    pub async fn recv(&self) -> Result<OwnedAny, Error> {
        self.recv_inner().await
    }

    fn recv_inner(&self) -> Reply<Result<OwnedAny, Error>> {
        let schema = self.schema.clone();
        self.run(move |conn| async move {
            let m = conn.recv(0).await?;
            Ok(OwnedAny::copy(&m, schema))
        })
    }
}

/// A received message copied out for another thread, typed.
pub struct Owned<T: Message> {
    bytes: AlignedVec<16>,
    _type: PhantomData<fn() -> T>,
}

impl<T: Message> Owned<T> {
    fn copy(m: &Incoming) -> Owned<T> {
        let mut bytes = AlignedVec::<16>::with_capacity(m.archive_bytes().len());
        bytes.extend_from_slice(m.archive_bytes());
        Owned {
            bytes,
            _type: PhantomData,
        }
    }
}

impl<T: Message> std::fmt::Debug for Owned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owned")
            .field("type", &T::NAME)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl std::fmt::Debug for OwnedAny {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedAny")
            .field("type_id", &format_args!("{:#010x}", self.type_id))
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl<T: Message> Deref for Owned<T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        // SAFETY: the bytes are a copy, into 16-byte aligned memory, of an
        // archive the session validated as `T` when it arrived (the
        // connection's core checked the type before copying).
        unsafe { ringwire_proto::access_trusted::<T>(&self.bytes) }
    }
}

/// A received message of any type, copied out for another thread.
pub struct OwnedAny {
    type_id: u32,
    bytes: AlignedVec<16>,
    schema: Arc<Schema>,
}

impl OwnedAny {
    fn copy(m: &Incoming, schema: Arc<Schema>) -> OwnedAny {
        let mut bytes = AlignedVec::<16>::with_capacity(m.archive_bytes().len());
        bytes.extend_from_slice(m.archive_bytes());
        OwnedAny {
            type_id: m.type_id(),
            bytes,
            schema,
        }
    }

    /// The message's type id.
    pub fn type_id(&self) -> u32 {
        self.type_id
    }

    /// The message as `T`, if it is one.
    pub fn get<T: Message>(&self) -> Result<&T::Archived, Error> {
        if self.type_id != T::TYPE_ID || !self.schema.contains(T::TYPE_ID) {
            return Err(Error::WrongType {
                expected: T::NAME,
                found: self.type_id,
            });
        }
        // Validated on arrival as the schema's type for this id; validating
        // again here keeps this safe whatever Rust type the caller names.
        ringwire_proto::access::<T>(&self.bytes).map_err(|e| Error::Rejected(Arc::new(e)))
    }
}

// ---------------------------------------------------------------------------
// One-shot slots that a thread can block on or an executor can await.

struct Slot<T> {
    state: Mutex<(Option<T>, Option<Waker>, bool)>,
    ready: Condvar,
}

struct SlotTx<T> {
    slot: Arc<Slot<T>>,
}

/// The receiving end: block with [`wait`](Reply::wait) or `.await` it.
pub struct Reply<T> {
    slot: Arc<Slot<T>>,
}

fn oneshot<T>() -> (SlotTx<T>, Reply<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new((None, None, false)),
        ready: Condvar::new(),
    });
    (SlotTx { slot: slot.clone() }, Reply { slot })
}

impl<T> SlotTx<T> {
    fn set(self, value: T) {
        let waker = {
            let mut st = self.slot.state.lock().unwrap_or_else(|p| p.into_inner());
            st.0 = Some(value);
            st.2 = true;
            st.1.take()
        };
        self.slot.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Drop for SlotTx<T> {
    fn drop(&mut self) {
        // Dropped without a value (the task was dropped at shutdown): wake
        // the waiter so that it sees the slot closed.
        let waker = {
            let mut st = self.slot.state.lock().unwrap_or_else(|p| p.into_inner());
            st.2 = true;
            st.1.take()
        };
        self.slot.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T: ClosedValue> Reply<T> {
    /// Blocks the calling thread until the outcome is there.
    pub fn wait(self) -> T {
        let mut st = self.slot.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(v) = st.0.take() {
                return v;
            }
            if st.2 {
                return T::closed();
            }
            st = self.slot.ready.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl<T: ClosedValue> Future for Reply<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut st = self.slot.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = st.0.take() {
            return Poll::Ready(v);
        }
        if st.2 {
            return Poll::Ready(T::closed());
        }
        st.1 = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// What a reply slot yields when the core dropped the work without an
/// outcome (it shut down).
pub trait ClosedValue {
    /// The outcome for "the core went away".
    fn closed() -> Self;
}

impl<R> ClosedValue for Result<R, Error> {
    fn closed() -> Self {
        Err(Error::closed("the connection's core shut down"))
    }
}
