//! [`Pool`]: several connections to one peer, used as one.
//!
//! A pool spreads one-way messages and calls round-robin over its members,
//! skipping members whose link is down. Every member retains what it sent
//! until the peer acknowledged it, and survives cuts the way any
//! [reconnecting](crate::Config::reconnect) connection does:
//!
//! - a member cut from a peer that still holds its session reconnects and
//!   resumes on its own: nothing lost, nothing repeated;
//! - a member whose session the peer no longer holds
//!   ([`ConnEvent::SessionReset`]), or that gave up reconnecting
//!   ([`ConnEvent::Failed`]), hands back what was never acknowledged: the
//!   pool sends those messages again on its members
//!   ([`PoolEvent::Moved`]);
//! - a member that ended is replaced in the background by a new connection
//!   through the same endpoints ([`PoolEvent::MemberLost`],
//!   [`PoolEvent::MemberReplaced`]), retried with the reconnect policy's
//!   backoff until the pool is closed.
//!
//! So a one-way message sent through a pool is delivered at least once:
//! exactly once, unless a member's session was lost, in which case what the
//! peer had received but not yet acknowledged arrives again through another
//! member. Order holds among the messages of one member, not across the
//! pool. Calls in flight on a member that fails report the error; a request
//! or a message with bulk segments is never sent twice by the pool
//! ([`PoolEvent::NotMoved`] hands them to the application).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use ringwire_proto::Message;

use crate::config::{Config, Reconnect};
use crate::conn::{ConnEvent, Connection, Msg, Receipt, Unacked};
use crate::endpoint::Endpoint;
use crate::error::Error;

/// How long a pool member keeps reconnecting before it is given up and
/// replaced, when the pool's configuration sets no reconnect policy.
pub const DEFAULT_MEMBER_GIVE_UP: Duration = Duration::from_secs(5);

/// Something that happened to a pool's members
/// ([`Pool::next_event`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum PoolEvent {
    /// Member `member` ended (it gave up reconnecting, or the peer refused
    /// it); a replacement is being connected.
    MemberLost {
        /// The member's index (`0..size`).
        member: usize,
        /// Why it ended.
        error: Error,
    },
    /// Member `member` has a new connection.
    MemberReplaced {
        /// The member's index.
        member: usize,
    },
    /// `count` messages handed back by a member were sent again through the
    /// pool.
    Moved {
        /// How many.
        count: usize,
    },
    /// Messages handed back by a member that the pool does not send again
    /// (requests, messages with bulk segments): the application decides.
    NotMoved {
        /// The messages, in the order they were sent.
        unacked: Vec<Unacked>,
    },
}

/// Several connections to one peer used as one; see the [module
/// docs](self). Clones share the pool; it belongs to the core it was made
/// on. Dropping the last handle closes every member in the background.
#[derive(Clone)]
pub struct Pool {
    inner: Rc<Inner>,
}

struct Inner {
    endpoints: Vec<Endpoint>,
    config: Config,
    policy: Reconnect,
    members: RefCell<Vec<Option<Connection>>>,
    next: Cell<usize>,
    /// Handed-back messages no member could take yet.
    backlog: RefCell<VecDeque<Unacked>>,
    events: RefCell<VecDeque<PoolEvent>>,
    event_waiters: RefCell<Vec<Waker>>,
    closed: Cell<bool>,
    moved: Cell<u64>,
    replaced: Cell<u64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.set(true);
        // Members' supervisors hold their own handles: close explicitly.
        for conn in self.members.get_mut().drain(..).flatten() {
            if conn.is_closed() || ringwire_runtime::try_current_core().is_none() {
                continue;
            }
            ringwire_runtime::spawn_local(async move {
                let _ = conn.close().await;
            });
        }
    }
}

impl Pool {
    /// Connects `size` members to the first of `endpoints` that answers (in
    /// order, as [`connect_any`](crate::connect_any)); returns once every
    /// member's handshake succeeded. Members use `config`'s reconnect policy,
    /// or, without one, the default backoff giving up after
    /// [`DEFAULT_MEMBER_GIVE_UP`].
    ///
    /// # Panics
    ///
    /// Off a ringwire core thread.
    pub async fn connect(
        endpoints: &[Endpoint],
        config: &Config,
        size: usize,
    ) -> Result<Pool, Error> {
        if size == 0 {
            return Err(Error::Usage("a pool needs at least one member"));
        }
        let policy = config
            .reconnect
            .unwrap_or_else(|| Reconnect::default().give_up_after(Some(DEFAULT_MEMBER_GIVE_UP)));
        let config = config.clone().reconnect(policy);
        let mut members = Vec::with_capacity(size);
        for _ in 0..size {
            match crate::connect_any(endpoints, &config).await {
                Ok(c) => members.push(c),
                Err(e) => {
                    for c in members {
                        let _ = c.close().await;
                    }
                    return Err(e);
                }
            }
        }
        let inner = Rc::new(Inner {
            endpoints: endpoints.to_vec(),
            config,
            policy,
            members: RefCell::new(members.iter().cloned().map(Some).collect()),
            next: Cell::new(0),
            backlog: RefCell::default(),
            events: RefCell::default(),
            event_waiters: RefCell::default(),
            closed: Cell::new(false),
            moved: Cell::new(0),
            replaced: Cell::new(0),
        });
        for (i, conn) in members.into_iter().enumerate() {
            ringwire_runtime::spawn_local(supervise(Rc::downgrade(&inner), i, conn));
        }
        Ok(Pool { inner })
    }

    /// How many members the pool keeps.
    pub fn size(&self) -> usize {
        self.inner.members.borrow().len()
    }

    /// How many members have a working link now.
    pub fn linked(&self) -> usize {
        self.inner
            .members
            .borrow()
            .iter()
            .flatten()
            .filter(|c| c.is_linked())
            .count()
    }

    /// The members' connections now (a member being replaced is missing),
    /// for receiving or for anything the pool does not do itself.
    pub fn members(&self) -> Vec<Connection> {
        self.inner
            .members
            .borrow()
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Messages the pool sent again after a member handed them back, and
    /// members replaced, since the pool was made.
    pub fn moved_and_replaced(&self) -> (u64, u64) {
        (self.inner.moved.get(), self.inner.replaced.get())
    }

    /// Queues `value` on the next member (round-robin over members with a
    /// working link; while none has one, on a member that is reconnecting,
    /// where it waits for the link). Fails only when no member exists (all
    /// are being replaced) or the pool is closed.
    pub async fn send<T: Message>(&self, value: &T) -> Result<Receipt, Error> {
        let mut last = None;
        for _ in 0..self.size() {
            let Some(conn) = self.inner.pick() else { break };
            match conn.send(value).await {
                // Ended between the pick and the send: the next member.
                Err(e @ Error::Closed { .. }) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| self.inner.no_member()))
    }

    /// Sends a request on the next member (as [`send`](Pool::send) picks it)
    /// and waits for its reply. A call is never sent twice: if its member
    /// fails first, the call fails.
    pub async fn call<Req: Message, Resp: Message>(
        &self,
        request: &Req,
    ) -> Result<Msg<Resp>, Error> {
        let conn = self.inner.pick().ok_or_else(|| self.inner.no_member())?;
        conn.call(request).await
    }

    /// The next event of the pool's members, waiting for one; `None` once
    /// the pool is closed and every event was taken.
    pub async fn next_event(&self) -> Option<PoolEvent> {
        poll_fn(|cx| {
            if let Some(e) = self.inner.events.borrow_mut().pop_front() {
                return Poll::Ready(Some(e));
            }
            if self.inner.closed.get() {
                return Poll::Ready(None);
            }
            self.inner
                .event_waiters
                .borrow_mut()
                .push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Closes every member in an orderly way (what was sent goes out and is
    /// acknowledged first); returns whether everything sent through the
    /// pool was acknowledged.
    pub async fn close(&self) -> Result<bool, Error> {
        self.inner.closed.set(true);
        self.inner.wake_events();
        let members: Vec<Connection> = self
            .inner
            .members
            .borrow_mut()
            .drain(..)
            .flatten()
            .collect();
        let mut all = self.inner.backlog.borrow().is_empty();
        for conn in members {
            all &= conn.close().await.unwrap_or(false);
        }
        Ok(all)
    }
}

impl Inner {
    /// The next member round-robin with a working link, else one that is
    /// reconnecting.
    fn pick(&self) -> Option<Connection> {
        if self.closed.get() {
            return None;
        }
        let members = self.members.borrow();
        let n = members.len();
        let start = self.next.get();
        let mut fallback = None;
        for k in 0..n {
            let i = (start + k) % n;
            let Some(conn) = &members[i] else { continue };
            if conn.is_linked() {
                self.next.set(i + 1);
                return Some(conn.clone());
            }
            if fallback.is_none() && !conn.is_closed() {
                fallback = Some(i);
            }
        }
        let i = fallback?;
        self.next.set(i + 1);
        members[i].clone()
    }

    fn no_member(&self) -> Error {
        if self.closed.get() {
            Error::closed("the pool is closed")
        } else {
            Error::closed("no member of the pool is connected (all are being replaced)")
        }
    }

    fn push_event(&self, e: PoolEvent) {
        let mut events = self.events.borrow_mut();
        // Bounded: the oldest informative event goes first.
        if events.len() >= 256 {
            if let Some(i) = events
                .iter()
                .position(|e| !matches!(e, PoolEvent::NotMoved { .. }))
            {
                events.remove(i);
            }
        }
        events.push_back(e);
        drop(events);
        self.wake_events();
    }

    fn wake_events(&self) {
        let waiters = std::mem::take(&mut *self.event_waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }
}

/// Takes handed-back messages: the plain ones go back out through the pool
/// (from a task, since sends may wait for room); the rest go to the
/// application.
fn hand_back(inner: &Rc<Inner>, unacked: Vec<Unacked>) {
    let (plain, other): (Vec<Unacked>, Vec<Unacked>) =
        unacked.into_iter().partition(Unacked::is_plain_message);
    if !other.is_empty() {
        inner.push_event(PoolEvent::NotMoved { unacked: other });
    }
    if plain.is_empty() {
        return;
    }
    inner.backlog.borrow_mut().extend(plain);
    ringwire_runtime::spawn_local(drain_backlog(Rc::downgrade(inner)));
}

/// Sends the backlog's messages again, each on the next member; what no
/// member can take stays for the next replacement.
async fn drain_backlog(weak: Weak<Inner>) {
    let mut count = 0;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let Some(msg) = inner.backlog.borrow_mut().pop_front() else {
            break;
        };
        let Some(conn) = inner.pick() else {
            inner.backlog.borrow_mut().push_front(msg);
            break;
        };
        drop(inner);
        match conn.send_again(&msg).await {
            Ok(_) => count += 1,
            Err(Error::Closed { .. }) => {
                // The member ended meanwhile (its own hand-back comes as an
                // event): this message goes to another one.
                let Some(inner) = weak.upgrade() else { return };
                inner.backlog.borrow_mut().push_front(msg);
            }
            Err(e) => {
                tracing::warn!(error = %e, "a handed-back message cannot be sent again");
                let Some(inner) = weak.upgrade() else { return };
                inner.push_event(PoolEvent::NotMoved { unacked: vec![msg] });
            }
        }
    }
    if count > 0 {
        if let Some(inner) = weak.upgrade() {
            inner.moved.set(inner.moved.get() + count as u64);
            inner.push_event(PoolEvent::Moved { count });
        }
    }
}

/// Watches member `index`: moves what it hands back, and replaces it when
/// it ends, until the pool is gone or closed.
async fn supervise(weak: Weak<Inner>, index: usize, mut conn: Connection) {
    loop {
        while let Some(event) = conn.next_event().await {
            let Some(inner) = weak.upgrade() else { return };
            match event {
                ConnEvent::SessionReset { unacked } | ConnEvent::Failed { unacked, .. } => {
                    hand_back(&inner, unacked)
                }
                ConnEvent::Disconnected { reason } => {
                    tracing::debug!(member = index, %reason, "pool member cut; it reconnects");
                }
                _ => {}
            }
        }
        let (endpoints, config, policy) = {
            let Some(inner) = weak.upgrade() else { return };
            if inner.closed.get() {
                return;
            }
            let error = conn
                .closed_reason()
                .unwrap_or_else(|| Error::closed("the connection ended"));
            tracing::debug!(member = index, %error, "pool member lost; replacing it");
            if let Some(slot) = inner.members.borrow_mut().get_mut(index) {
                *slot = None;
            }
            inner.push_event(PoolEvent::MemberLost {
                member: index,
                error,
            });
            (inner.endpoints.clone(), inner.config.clone(), inner.policy)
        };
        let mut attempt = 0u32;
        conn = loop {
            let noise = crate::config::random_u64() as f64 / u64::MAX as f64;
            ringwire_runtime::time::sleep(policy.delay(attempt, noise)).await;
            attempt = attempt.saturating_add(1);
            match weak.upgrade() {
                Some(inner) if !inner.closed.get() => {}
                _ => return,
            }
            let attempt = ringwire_runtime::time::timeout(
                policy.attempt_timeout,
                crate::connect_any(&endpoints, &config),
            );
            match attempt.await {
                Ok(Ok(c)) => break c,
                Ok(Err(e)) => {
                    tracing::debug!(member = index, error = %e, "pool member replacement failed")
                }
                Err(_) => tracing::debug!(
                    member = index,
                    after = ?policy.attempt_timeout,
                    "pool member replacement timed out"
                ),
            }
        };
        let Some(inner) = weak.upgrade().filter(|i| !i.closed.get()) else {
            let _ = conn.close().await;
            return;
        };
        if let Some(slot) = inner.members.borrow_mut().get_mut(index) {
            *slot = Some(conn.clone());
        }
        inner.replaced.set(inner.replaced.get() + 1);
        inner.push_event(PoolEvent::MemberReplaced { member: index });
        if !inner.backlog.borrow().is_empty() {
            ringwire_runtime::spawn_local(drain_backlog(Rc::downgrade(&inner)));
        }
    }
}
