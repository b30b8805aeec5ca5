//! The core mesh: one SPSC ring of closures per ordered pair of cores.
//!
//! Each core owns the producers of its rings to every other core and the
//! consumers of the rings from them. It drains its inbound rings once per
//! loop turn (in batches), and before parking runs the park handshake on all
//! of them, so a sender rings the doorbell only when the target may be asleep.
//!
//! What travels is a boxed closure (an [`Envelope`]) run on the target core:
//! [`post`] / [`try_post`] start work there, [`submit_to`] also brings the
//! result back (through the reverse ring), and connections move between cores
//! as a closure owning the descriptor (see `TcpStream::into_fd`).

use std::any::Any;
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::{Poll, Waker};

use slab::Slab;

use super::doorbell::{Doorbell, Peer};
use super::ring::{Consumer, Producer, TryRecvError, TrySendError};
use crate::executor::{spawn_local, yield_now};
use crate::scoped::scoped_thread_local;

/// Work run on another core: a closure that can also be handed back whole
/// when the ring refuses it.
pub(crate) trait Work: Send {
    fn run(self: Box<Self>);
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

impl<F: FnOnce() + Send + 'static> Work for F {
    fn run(self: Box<Self>) {
        (*self)()
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

/// A closure run on another core.
pub(crate) type Envelope = Box<dyn Work>;

/// Errors of cross-core calls.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum MailboxError {
    /// No core with this index.
    #[error("core {0} does not exist in this runtime")]
    NoSuchCore(usize),
    /// The target core is shutting down or gone; the work did not run (or its
    /// result could not come back).
    #[error("core {0} is gone")]
    Closed(usize),
    /// The work panicked on the target core, or was dropped there before it
    /// finished (shutdown).
    #[error("the work sent to core {0} panicked or was dropped")]
    Cancelled(usize),
}

/// The caller's side of a `submit_to` call.
enum Call {
    Waiting(Option<Waker>),
    /// The reply: the output, or `None` if the work panicked or was dropped.
    Done(Option<Box<dyn Any + Send>>),
    Abandoned,
}

/// Why [`try_post`] handed the closure back.
#[derive(thiserror::Error)]
pub enum TryPostError<F> {
    /// The ring to the target core is full: try again later (or use
    /// [`post`], which waits).
    #[error("the mailbox ring to the target core is full")]
    Full(F),
    /// The post failed as [`post`] would have failed:
    /// [`MailboxError::NoSuchCore`] or [`MailboxError::Closed`].
    #[error("{0}")]
    Refused(MailboxError, F),
}

impl<F> TryPostError<F> {
    /// The closure that was not posted.
    pub fn into_inner(self) -> F {
        match self {
            TryPostError::Full(f) | TryPostError::Refused(_, f) => f,
        }
    }

    /// Whether the ring was full (a retry may succeed).
    pub fn is_full(&self) -> bool {
        matches!(self, TryPostError::Full(_))
    }

    /// Whether the target core is gone.
    pub fn is_closed(&self) -> bool {
        matches!(self, TryPostError::Refused(MailboxError::Closed(_), _))
    }

    /// The error [`post`] would have returned, if the post was refused.
    pub fn mailbox_error(&self) -> Option<MailboxError> {
        match self {
            TryPostError::Full(_) => None,
            TryPostError::Refused(e, _) => Some(*e),
        }
    }
}

impl<F> std::fmt::Debug for TryPostError<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TryPostError::Full(_) => f.write_str("Full(..)"),
            TryPostError::Refused(e, _) => write!(f, "Refused({e:?}, ..)"),
        }
    }
}

/// A core's ends of the mesh, plus the waiters of typed channels bound to it.
pub(crate) struct Mesh {
    pub(crate) index: usize,
    pub(crate) doorbell: Doorbell,
    pub(crate) peers: Arc<Vec<Arc<Peer>>>,
    out: Vec<Option<RefCell<Producer<Envelope>>>>,
    inbound: RefCell<Vec<Consumer<Envelope>>>,
    /// Wakers of typed-channel receivers on this core, by token - 1.
    pub(crate) waiters: RefCell<Slab<Option<Waker>>>,
    calls: RefCell<Slab<Call>>,
}

/// One core's mesh endpoints: producers by target core (none to itself) and
/// the consumers of its inbound rings.
pub(crate) type MeshEnds = (Vec<Option<Producer<Envelope>>>, Vec<Consumer<Envelope>>);

/// The mesh endpoints of every core, built before the cores start.
pub(crate) fn build(cores: usize, capacity: usize) -> Vec<MeshEnds> {
    let mut ends: Vec<MeshEnds> = (0..cores)
        .map(|_| ((0..cores).map(|_| None).collect(), Vec::new()))
        .collect();
    for from in 0..cores {
        for to in 0..cores {
            if from != to {
                let (p, c) = super::ring::channel(capacity);
                ends[from].0[to] = Some(p);
                ends[to].1.push(c);
            }
        }
    }
    ends
}

scoped_thread_local!(static CURRENT: Mesh);

/// Runs `f` with the current core's mesh.
///
/// # Panics
///
/// Off a ringwire core thread.
pub(crate) fn with<R>(f: impl FnOnce(&Mesh) -> R) -> R {
    CURRENT.with(f)
}

/// Runs `f` with the current core's mesh, if on a core.
pub(crate) fn try_with<R>(f: impl FnOnce(&Mesh) -> R) -> Option<R> {
    CURRENT.try_with(f)
}

impl Mesh {
    /// Publishes `self` as the current core's mesh while `f` runs.
    pub(crate) fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.set(self, f)
    }

    pub(crate) fn new(
        index: usize,
        doorbell: Doorbell,
        peers: Arc<Vec<Arc<Peer>>>,
        out: Vec<Option<Producer<Envelope>>>,
        inbound: Vec<Consumer<Envelope>>,
    ) -> Mesh {
        Mesh {
            index,
            doorbell,
            peers,
            out: out.into_iter().map(|p| p.map(RefCell::new)).collect(),
            inbound: RefCell::new(inbound),
            waiters: RefCell::new(Slab::new()),
            calls: RefCell::new(Slab::new()),
        }
    }

    /// This core's doorbell target.
    pub(crate) fn me(&self) -> &Arc<Peer> {
        &self.peers[self.index]
    }

    /// Runs every closure waiting in the inbound rings (in batches of up to
    /// 64 per ring and turn), each under `guard` (which reports a panic
    /// instead of unwinding into the loop). Returns how many ran.
    pub(crate) fn drain(&self, guard: impl Fn(Envelope)) -> usize {
        let mut ran = 0;
        let count = self.inbound.borrow().len();
        for i in 0..count {
            // Take a batch out first: closures may post to other cores.
            let batch: Vec<Envelope> = {
                let mut inbound = self.inbound.borrow_mut();
                let batch = match inbound[i].pop_batch(64) {
                    Ok(b) => b.collect(),
                    Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => continue,
                };
                batch
            };
            ran += batch.len();
            for f in batch {
                guard(f);
            }
        }
        ran
    }

    /// Park handshake on every inbound ring, with one barrier for all of
    /// them: true if the core may sleep.
    pub(crate) fn prepare_park(&self) -> bool {
        Consumer::prepare_park_all(&mut self.inbound.borrow_mut())
    }

    /// Withdraws the park handshake after waking.
    pub(crate) fn cancel_park(&self) {
        for c in self.inbound.borrow_mut().iter_mut() {
            c.cancel_park();
        }
    }

    /// Values waiting in the inbound rings.
    pub(crate) fn depth(&self) -> usize {
        self.inbound.borrow().iter().map(|c| c.len()).sum()
    }

    /// Wakes the typed-channel waiter `token` (0 wakes nobody: the doorbell
    /// only had to get the core out of its wait).
    pub(crate) fn wake_waiter(&self, token: u64) {
        if token == 0 {
            return;
        }
        let w = self
            .waiters
            .borrow_mut()
            .get_mut(token as usize - 1)
            .and_then(Option::take);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// After an eventfd doorbell: wakes every typed-channel waiter, which
    /// re-checks its ring.
    pub(crate) fn take_pending(&self) {
        if self.me().pending.take() {
            self.wake_all_waiters();
        }
    }

    /// Wakes every typed-channel waiter (after an eventfd doorbell).
    fn wake_all_waiters(&self) {
        let wakers: Vec<Waker> = self
            .waiters
            .borrow_mut()
            .iter_mut()
            .filter_map(|(_, w)| w.take())
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    fn try_send(&self, to: usize, env: Envelope) -> Result<(), TrySendError<Envelope>> {
        let Some(p) = self.out.get(to).and_then(Option::as_ref) else {
            return Err(TrySendError::Closed(env));
        };
        let mut p = p.borrow_mut();
        p.try_push(env)?;
        if p.needs_wakeup() {
            self.peers[to].ring(0, self.doorbell == Doorbell::MsgRing);
        }
        Ok(())
    }

    /// Whether this core may ring `peer` through MSG_RING: it is set up for
    /// it and `peer` belongs to the same runtime (whose peers outlive this
    /// core's loop, see `Peer::ring`).
    pub(crate) fn can_msg_ring(&self, peer: &Arc<Peer>) -> bool {
        self.doorbell == Doorbell::MsgRing
            && self
                .peers
                .get(peer.index)
                .is_some_and(|p| Arc::ptr_eq(p, peer))
    }

    /// Tells every other core that this one has stopped: each wakes its
    /// callers waiting for a [`submit_to`] reply, which then find the target
    /// stopped and fail with [`MailboxError::Closed`] instead of waiting for
    /// a reply that will not come. Goes through the control queues (a core
    /// stops once, so this is off every hot path).
    pub(crate) fn tell_peers_stopped(&self) {
        for peer in self.peers.iter().filter(|p| p.index != self.index) {
            peer.shared.run(Box::new(|| {
                let _ = try_with(Mesh::wake_callers);
            }));
        }
    }

    /// Wakes every task waiting for a [`submit_to`] reply (they re-check).
    fn wake_callers(&self) {
        let wakers: Vec<Waker> = self
            .calls
            .borrow_mut()
            .iter_mut()
            .filter_map(|(_, c)| match c {
                Call::Waiting(w) => w.take(),
                _ => None,
            })
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    fn complete_call(&self, token: usize, result: Option<Box<dyn Any + Send>>) {
        let mut calls = self.calls.borrow_mut();
        let waker = match calls.get_mut(token) {
            Some(c @ Call::Waiting(_)) => match std::mem::replace(c, Call::Done(result)) {
                Call::Waiting(w) => w,
                _ => None,
            },
            Some(Call::Abandoned) => {
                calls.remove(token);
                None
            }
            _ => None,
        };
        drop(calls);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Whether core `to` exists and has not stopped (a stopped core, one that
/// panicked included, runs nothing more: work sent to it would be dropped).
fn check_core(to: usize) -> Result<(), MailboxError> {
    with(|m| match m.peers.get(to) {
        None => Err(MailboxError::NoSuchCore(to)),
        Some(peer) if peer.shared.is_stopped() => Err(MailboxError::Closed(to)),
        Some(_) => Ok(()),
    })
}

/// Sends `env` to core `to`, waiting while its ring is full.
async fn send_envelope(to: usize, mut env: Envelope) -> Result<(), MailboxError> {
    loop {
        match with(|m| m.try_send(to, env)) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(_)) => return Err(MailboxError::Closed(to)),
            Err(TrySendError::Full(e)) => {
                // A stopped core will never make room (its inbound rings
                // close once its thread has wound down).
                if with(|m| m.peers[to].shared.is_stopped()) {
                    return Err(MailboxError::Closed(to));
                }
                env = e;
                crate::stats::with(|s| crate::stats::Stats::add(&s.mailbox_full, 1));
                // Back-pressure: try again next loop turn.
                yield_now().await;
            }
        }
    }
}

/// Runs `f` on core `to` without waiting for space: a full ring hands `f`
/// back (`Err(TryPostError::Full(f))`); a core index that does not exist or a
/// core that is gone too, with the error [`post`] would return
/// (`Err(TryPostError::Refused(MailboxError::..., f))`). `f` typically calls
/// [`spawn_local`] there. On the calling core itself, `f` runs at once.
///
/// # Panics
///
/// Off a ringwire core thread.
pub fn try_post<F>(to: usize, f: F) -> Result<(), TryPostError<F>>
where
    F: FnOnce() + Send + 'static,
{
    if let Err(e) = check_core(to) {
        return Err(TryPostError::Refused(e, f));
    }
    if with(|m| m.index) == to {
        f();
        return Ok(());
    }
    match with(|m| m.try_send(to, Box::new(f))) {
        Ok(()) => Ok(()),
        Err(e) => {
            let full = e.is_full();
            if full {
                crate::stats::with(|s| crate::stats::Stats::add(&s.mailbox_full, 1));
            }
            let f = match e.into_inner().into_any().downcast::<F>() {
                Ok(f) => *f,
                Err(_) => unreachable_type(),
            };
            Err(if full {
                TryPostError::Full(f)
            } else {
                TryPostError::Refused(MailboxError::Closed(to), f)
            })
        }
    }
}

/// Runs `f` on core `to`, waiting while the ring to it is full. On the calling
/// core itself, `f` runs at once.
///
/// Fails with [`MailboxError::NoSuchCore`] for a bad index and
/// [`MailboxError::Closed`] once the target has stopped (shut down, or its
/// event loop panicked), also while waiting for room. A closure accepted
/// just before the target stops is dropped there without running.
pub async fn post<F>(to: usize, f: F) -> Result<(), MailboxError>
where
    F: FnOnce() + Send + 'static,
{
    check_core(to)?;
    if with(|m| m.index) == to {
        f();
        return Ok(());
    }
    send_envelope(to, Box::new(f)).await
}

/// Runs `f` on core `to` and returns the output of the future it makes
/// (like Seastar's `submit_to`). The call and the result each travel through
/// the mesh ring between the two cores; a full ring makes the caller wait.
/// On the calling core itself, the future runs inline. A panic in the work,
/// or its being dropped at the target's shutdown, comes back as
/// [`MailboxError::Cancelled`], never as a hang.
///
/// A target that stops (shut down, or its event loop panicked) fails the
/// call with [`MailboxError::Closed`] (or `Cancelled` if its work was
/// dropped running there): at once if it has stopped already, otherwise as
/// soon as it stops, whether the work was still in its inbound ring, running,
/// or its reply on the way.
pub async fn submit_to<F, Fut, R>(to: usize, f: F) -> Result<R, MailboxError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
    R: Send + 'static,
{
    check_core(to)?;
    let (from, home) = with(|m| (m.index, m.me().clone()));
    if from == to {
        return Ok(f().await);
    }
    let token = with(|m| m.calls.borrow_mut().insert(Call::Waiting(None)));
    let mut guard = CallGuard {
        token,
        sent: false,
        done: false,
    };
    let env: Envelope = Box::new(move || {
        spawn_local(async move {
            let mut reply = Reply {
                token,
                from,
                home,
                sent: false,
            };
            let r = f().await;
            let back = reply_envelope(token, Some(Box::new(r)));
            // If the caller's core is gone, nobody waits for the result.
            if send_envelope(from, back).await.is_ok() {
                reply.sent = true;
            }
        });
    });
    send_envelope(to, env).await?;
    guard.sent = true;
    let out = poll_fn(|cx| {
        with(|m| {
            let mut calls = m.calls.borrow_mut();
            let ready = match calls.get_mut(token) {
                Some(call @ Call::Waiting(_)) => {
                    // The target may have stopped without running the work.
                    if !m.peers[to].shared.is_stopped() {
                        *call = Call::Waiting(Some(cx.waker().clone()));
                        return Poll::Pending;
                    }
                    // A cancel reply may still be on its way: leave the slot
                    // for it to free, so the key is not reused before.
                    *call = Call::Abandoned;
                    return Poll::Ready(Err(MailboxError::Closed(to)));
                }
                Some(Call::Done(Some(_))) => match calls.remove(token) {
                    Call::Done(Some(b)) => Ok(b),
                    _ => Err(MailboxError::Cancelled(to)),
                },
                _ => Err(MailboxError::Cancelled(to)),
            };
            if calls.contains(token) {
                calls.remove(token);
            }
            Poll::Ready(ready)
        })
    })
    .await;
    guard.done = true;
    match out?.downcast::<R>() {
        Ok(r) => Ok(*r),
        Err(_) => unreachable_type(),
    }
}

fn reply_envelope(token: usize, value: Option<Box<dyn Any + Send>>) -> Envelope {
    Box::new(move || {
        with(|m| m.complete_call(token, value));
    })
}

/// The target's side of a call: if the work is dropped or panics before its
/// result went out, tell the caller.
struct Reply {
    token: usize,
    from: usize,
    home: Arc<Peer>,
    sent: bool,
}

impl Drop for Reply {
    fn drop(&mut self) {
        if self.sent {
            return;
        }
        let env = reply_envelope(self.token, None);
        let refused = try_with(|m| match m.try_send(self.from, env) {
            Ok(()) => None,
            Err(e) => Some(e.into_inner()),
        })
        .flatten();
        if let Some(env) = refused {
            // A full ring: the caller's control queue takes it instead.
            self.home.shared.run(Box::new(move || env.run()));
        }
    }
}

#[cold]
fn unreachable_type() -> ! {
    panic!("mailbox value of an unexpected type")
}

/// Cleans up the caller's slot when its future ends or is dropped.
struct CallGuard {
    token: usize,
    /// The call went out (a reply will come).
    sent: bool,
    /// The future finished and removed the slot.
    done: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (token, sent) = (self.token, self.sent);
        try_with(|m| {
            let mut calls = m.calls.borrow_mut();
            match calls.get_mut(token) {
                // A reply is coming: let it find the slot and free it.
                Some(call @ Call::Waiting(_)) if sent => *call = Call::Abandoned,
                Some(_) => {
                    calls.remove(token);
                }
                None => {}
            }
        });
    }
}
