//! [`Listener`]: accepts connections on an endpoint.
//!
//! Accepted connections do their handshake in the background; `accept`
//! hands out only those whose handshake succeeded, in the order they
//! finished, so one slow or hostile peer never holds up the others (its
//! handshake times out on its own).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use crate::conn::Connection;
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::mem::MemListener;

/// Connections whose handshake finished, waiting for `accept`.
#[derive(Default)]
pub(crate) struct AcceptQueue {
    inner: RefCell<AcceptInner>,
}

#[derive(Default)]
struct AcceptInner {
    ready: VecDeque<Result<Connection, Error>>,
    waker: Option<Waker>,
    closed: bool,
}

impl AcceptQueue {
    /// Queues a finished handshake (or its failure, which `accept` reports
    /// without stopping).
    pub(crate) fn push(&self, conn: Result<Connection, Error>) {
        let waker = {
            let mut q = self.inner.borrow_mut();
            if q.closed {
                return;
            }
            q.ready.push_back(conn);
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the listener is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.borrow().closed
    }

    /// No more connections will come.
    pub(crate) fn close(&self) {
        let waker = {
            let mut q = self.inner.borrow_mut();
            q.closed = true;
            q.ready.clear();
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub(crate) async fn next(&self) -> Option<Result<Connection, Error>> {
        poll_fn(|cx| {
            let mut q = self.inner.borrow_mut();
            if let Some(c) = q.ready.pop_front() {
                return Poll::Ready(Some(c));
            }
            if q.closed || ringwire_runtime::is_shutting_down() {
                return Poll::Ready(None);
            }
            q.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

pub(crate) enum Kind {
    Mem(MemListener),
    Stream(Box<crate::stream::StreamListener>),
    #[cfg(feature = "rdma")]
    Rdma(crate::rdma::conn::RdmaListener),
}

/// Accepts connections on one endpoint, on the current core. Not `Send`.
pub struct Listener {
    pub(crate) kind: Kind,
    pub(crate) endpoint: Endpoint,
}

impl Listener {
    /// The next connection whose handshake succeeded. A handshake that
    /// failed comes out as an error (the listener goes on); `None` once the
    /// core shuts down.
    pub async fn accept(&mut self) -> Option<Result<Connection, Error>> {
        match &self.kind {
            Kind::Mem(m) => m.queue.next().await,
            Kind::Stream(s) => s.queue.next().await,
            #[cfg(feature = "rdma")]
            Kind::Rdma(r) => r.queue.next().await,
        }
    }

    /// The endpoint listened on (for `tcp://` with port 0, the port bound).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("endpoint", &self.endpoint.to_string())
            .finish()
    }
}
