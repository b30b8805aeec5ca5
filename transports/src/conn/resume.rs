//! Connections that survive a cut: retaining unacknowledged data, getting a
//! new link, resuming the session on it, or starting a new session and
//! handing back what was never acknowledged.
//!
//! How it goes, on the side that can resume (a client whose configuration
//! has [`Config::reconnect`](crate::Config::reconnect), a server whose
//! configuration has [`Config::resume`](crate::Config::resume)):
//!
//! 1. While the link works, every data buffer sent stays in `retained` until
//!    the peer acknowledges its last frame.
//! 2. The link breaks (end of stream, reset, idle timeout): the session is
//!    told ([`Session::connection_lost`]), the connection is `Suspended`
//!    (sends queue, receives wait), and its `relink` hook runs: the client
//!    starts its reconnect loop; the server files the session under its id
//!    for the resume window.
//! 3. A new link arrives ([`Conn::attach`]): the session's hello asks to
//!    resume; data is held back until the peer answers.
//! 4. The peer resumes: everything retained above the peer's position is
//!    queued again, ahead of newer data, byte-identical; the peer drops what
//!    it already had by sequence number. Nothing is lost, nothing repeated.
//! 5. The peer no longer holds the session (it restarted): every message
//!    never acknowledged (sent or still queued) is handed to the application
//!    ([`ConnEvent::SessionReset`]), calls in flight fail, and a new session
//!    starts on the next link.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use ringwire_proto::{frame_len, FrameHeader, FrameKind, Message, Session, HEADER_LEN};
use rkyv::util::AlignedVec;

use super::core::{Conn, Phase, State, Wakers};
use super::out::{OutBuf, Tagged};
use crate::clock;
use crate::error::Error;

/// Something that happened to a connection's transport, for the
/// application ([`Connection::next_event`](crate::Connection::next_event)).
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnEvent {
    /// The transport was cut; a new one is being made (or awaited). Sends
    /// queue and receives wait meanwhile.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// A new transport resumed the session: nothing lost, nothing repeated.
    Resumed,
    /// The peer no longer held the session (it restarted): these messages
    /// were never acknowledged and will not be resent; calls in flight
    /// failed. A new session started.
    SessionReset {
        /// Every message never acknowledged, in order.
        unacked: Vec<Unacked>,
    },
    /// The connection ended for good (reconnecting gave up, or the peer
    /// refused it) while messages were unacknowledged: they are handed
    /// back, in order. The last event of the connection.
    Failed {
        /// Why the connection ended.
        error: Error,
        /// Every message never acknowledged, in order.
        unacked: Vec<Unacked>,
    },
}

/// A message the peer never acknowledged, handed back after a session reset.
pub struct Unacked {
    header: FrameHeader,
    /// The frame's payload (bulk descriptor and archive), 16-byte aligned.
    payload: AlignedVec<16>,
}

impl Unacked {
    /// Message, request, reply or bulk segment.
    pub fn kind(&self) -> FrameKind {
        self.header.kind
    }

    /// The message's type id (bulk segments: the segment index).
    pub fn type_id(&self) -> u32 {
        self.header.type_id
    }

    /// The logical stream it was sent on.
    pub fn stream(&self) -> u32 {
        self.header.stream
    }

    /// The message as `T` (validated here), for resending or reporting.
    pub fn get<T: Message>(&self) -> Result<&T::Archived, Error> {
        if self.header.type_id != T::TYPE_ID || !self.header.kind.carries_message() {
            return Err(Error::WrongType {
                expected: T::NAME,
                found: self.header.type_id,
            });
        }
        let archive = match ringwire_proto::bulk_body(&self.header, &self.payload) {
            Ok((_, archive)) => archive,
            Err(e) => return Err(Error::Rejected(std::sync::Arc::new(e))),
        };
        ringwire_proto::access::<T>(archive).map_err(|e| Error::Rejected(std::sync::Arc::new(e)))
    }

    /// Whether this is a one-way message without bulk segments: what
    /// [`Pool`](crate::Pool) and
    /// [`Connection::send_again`](crate::Connection::send_again) can send
    /// again on another session.
    pub fn is_plain_message(&self) -> bool {
        self.header.kind == FrameKind::Message && !self.header.has_bulk()
    }

    /// The payload's bytes (a bulk segment's data, or a message's bulk
    /// descriptor and archive).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl std::fmt::Debug for Unacked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unacked")
            .field("kind", &self.header.kind)
            .field("type_id", &format_args!("{:#010x}", self.header.type_id))
            .field("seq", &self.header.seq)
            .field("len", &self.payload.len())
            .finish()
    }
}

impl Conn {
    /// Sets how the connection gets a new link after a cut.
    pub(crate) fn set_relink(&self, relink: Rc<dyn Fn(Rc<Conn>)>) {
        self.st.borrow_mut().relink = Some(relink);
    }

    /// Whether this connection resumes after a cut rather than ending.
    fn resumable(st: &State) -> bool {
        st.retain
            && st.relink.is_some()
            && st.peer.is_some()
            && matches!(
                st.phase,
                Phase::Open | Phase::Handshaking | Phase::Suspended
            )
    }

    /// Link `link` broke with `err`: suspend and get a new link if the
    /// connection can resume, end it otherwise. A stale link's report (the
    /// connection has moved on) is ignored.
    pub(crate) fn link_lost(self: &Rc<Self>, link: u64, err: Error) {
        let relink = {
            let mut st = self.st.borrow_mut();
            if st.link != link || matches!(st.phase, Phase::Closed(_)) {
                return;
            }
            if !Conn::resumable(&st) {
                tracing::debug!(
                    conn = self.id,
                    retain = st.retain,
                    relink = st.relink.is_some(),
                    peer = st.peer.is_some(),
                    phase = ?st.phase,
                    "link lost and the connection cannot resume"
                );
                None
            } else {
                let now = clock::now();
                st.session.connection_lost(now);
                if let Some(close) = st.link_closer.take() {
                    close();
                }
                // Drop the session's events about the old link.
                st.link += 1;
                st.phase = Phase::Suspended;
                st.down_since.get_or_insert_with(std::time::Instant::now);
                st.out.hold_data = true;
                st.reattaching = false;
                // Control frames of the old link are meaningless on the next.
                st.out.control = AlignedVec::new();
                push_event(
                    &mut st,
                    ConnEvent::Disconnected {
                        reason: err.to_string(),
                    },
                );
                st.relink.clone()
            }
        };
        match relink {
            Some(relink) => {
                tracing::debug!(conn = self.id, remote = %self.remote, error = %err, "link lost; getting a new one");
                if !matches!(err, Error::Closed { .. }) {
                    // A lost link is a connection error even when the
                    // connection resumes (an unannounced end of stream was
                    // counted where it was seen).
                    crate::stats::connection_error(self.scheme);
                }
                let wakers = {
                    let mut st = self.st.borrow_mut();
                    let mut w: Vec<Waker> = Vec::new();
                    w.extend(st.flusher.take());
                    w.extend(st.timer.take());
                    w.extend(st.reader.take());
                    w.append(&mut st.event_waiters);
                    w.append(&mut st.link_waiters);
                    w
                };
                for w in wakers {
                    w.wake();
                }
                relink(self.clone());
            }
            None => self.fail(err),
        }
    }

    /// A new link is up: starts its handshake (resume, or a new session
    /// after a reset) and returns its number, for the link's reader and
    /// flusher. Data waits until the peer answers.
    pub(crate) fn attach(self: &Rc<Self>) -> Result<u64, Error> {
        let link = {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            if matches!(st.phase, Phase::Closed(_)) {
                return Err(self.closed_error().unwrap_or(Error::closed("closed")));
            }
            let now = clock::now();
            if st.reset {
                st.reset = false;
                st.session = if st.client {
                    Session::connect(
                        self.config.session.clone(),
                        self.config.schema.clone(),
                        now,
                        crate::config::random_u64(),
                    )
                } else {
                    Session::accept(self.config.session.clone(), self.config.schema.clone(), now)
                };
            } else {
                st.session.reconnect(now).map_err(Error::from_proto)?;
            }
            st.link += 1;
            st.pending_resend = None;
            if let Some(close) = st.link_closer.take() {
                close();
            }
            let mut old: Vec<Waker> = std::mem::take(&mut st.link_waiters);
            for w in old.drain(..) {
                w.wake();
            }
            st.phase = Phase::Handshaking;
            st.out.hold_data = true;
            st.out.control = AlignedVec::new();
            st.reattaching = true;
            st.link
        };
        self.after_session();
        Ok(link)
    }

    /// The link that the given session refused to resume (the peer lost the
    /// session): hands back every unacknowledged message and makes the next
    /// link start a new session. Returns true if it handled `err`.
    pub(crate) fn resume_refused(self: &Rc<Self>, err: &ringwire_proto::ProtoError) -> bool {
        let wakers = {
            let mut st = self.st.borrow_mut();
            if !(st.reattaching
                && st.client
                && matches!(err, ringwire_proto::ProtoError::Resume(_)))
            {
                return false;
            }
            let unacked = take_unacked(&mut st);
            let lost = Error::closed(
                "the peer lost the session (it restarted); the call may or may not have run",
            );
            let mut w: Vec<Waker> = Vec::new();
            for slot in st.calls.values_mut() {
                if slot.result.is_none() {
                    slot.result = Some(Err(lost.clone()));
                }
                w.extend(slot.waker.take());
            }
            // A new session now, so that what the application sends meanwhile
            // queues on it (it goes out after the next link's handshake).
            st.session = Session::connect(
                self.config.session.clone(),
                self.config.schema.clone(),
                clock::now(),
                crate::config::random_u64(),
            );
            st.reset = false;
            st.acked = 0;
            for (_, waker) in st.ack_waiters.drain(..) {
                w.push(waker);
            }
            if st.batches_out == 0 {
                push_event(&mut st, ConnEvent::SessionReset { unacked });
            } else {
                // Batches still out belong to the old session: what they
                // carry is handed back with the rest once they are in.
                st.old_batches = st.batches_out;
                st.reset_unacked = Some(unacked);
            }
            w.append(&mut st.event_waiters);
            w
        };
        for w in wakers {
            w.wake();
        }
        true
    }

    /// The next transport event, waiting for one; `None` once the connection
    /// is over.
    pub(crate) async fn next_event(&self) -> Option<ConnEvent> {
        poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            if let Some(e) = st.events.pop_front() {
                return Poll::Ready(Some(e));
            }
            if matches!(st.phase, Phase::Closed(_)) && st.old_batches == 0 {
                return Poll::Ready(None);
            }
            st.event_waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// The session on a new link answered: resume or start afresh.
pub(super) fn relinked(st: &mut State, resumed: bool, resend_after: u64, wakers: &mut Wakers) {
    st.reattaching = false;
    st.down_since = None;
    if resumed {
        st.pending_resend = Some(resend_after);
        push_event(st, ConnEvent::Resumed);
    } else {
        st.pending_resend = None;
        st.pending_fresh = true;
    }
    try_resend(st, wakers);
    wakers.extend(st.event_waiters.drain(..));
}

/// Lets data flow on a new link once it is safe. Resumed: every batch taken
/// by an older link's flusher must be back (kept, if not acknowledged)
/// before what the peer lacks is queued again, ahead of newer data; frames
/// resent later than newer ones would reach the peer out of sequence. Fresh
/// session: the old session's batches must be in (handed back).
pub(super) fn try_resend(st: &mut State, wakers: &mut Wakers) {
    if st.pending_fresh {
        if st.old_batches > 0 {
            return;
        }
        st.pending_fresh = false;
        st.out.hold_data = false;
        wakers.extend(st.flusher.take());
        return;
    }
    let Some(resend_after) = st.pending_resend else {
        return;
    };
    if st.batches_out > 0 {
        return;
    }
    st.pending_resend = None;
    let mut again: VecDeque<Tagged> = VecDeque::new();
    while let Some(t) = st.retained.pop_front() {
        st.retained_bytes -= t.buf.len();
        if t.last_seq > resend_after {
            st.out.bytes += t.buf.len();
            again.push_back(t);
        }
    }
    st.out.seal();
    while let Some(t) = again.pop_back() {
        st.out.ready.push_front(t);
    }
    st.out.hold_data = false;
    wakers.extend(st.flusher.take());
}

/// A batch of the old session came back after a reset: what it carries is
/// handed back; once all are in, the reset is reported.
pub(super) fn old_batch_back(st: &mut State, sent: Vec<Tagged>) {
    st.old_batches -= 1;
    let mut late = Vec::new();
    unacked_from(sent.into_iter().map(|t| t.buf).collect(), &mut late);
    if let Some(list) = st.reset_unacked.as_mut() {
        list.extend(late);
    }
    if st.old_batches == 0 {
        let unacked = st.reset_unacked.take().unwrap_or_default();
        match &st.phase {
            Phase::Closed(error) => {
                let error = error.clone();
                push_event(st, ConnEvent::Failed { error, unacked });
            }
            _ => push_event(st, ConnEvent::SessionReset { unacked }),
        }
    }
}

/// The connection ended for good: a connection that retains data hands back
/// what was never acknowledged ([`ConnEvent::Failed`]), now or once the
/// batches still out come back.
pub(super) fn hand_back_on_failure(st: &mut State, error: &Error) {
    if !st.retain {
        return;
    }
    let mut unacked = take_unacked(st);
    if let Some(earlier) = st.reset_unacked.take() {
        // A reset's hand-back was still waiting for old batches.
        let mut all = earlier;
        all.append(&mut unacked);
        unacked = all;
    }
    if st.batches_out > 0 {
        st.old_batches = st.batches_out;
        st.reset_unacked = Some(unacked);
    } else if !unacked.is_empty() {
        push_event(
            st,
            ConnEvent::Failed {
                error: error.clone(),
                unacked,
            },
        );
    }
}

fn push_event(st: &mut State, ev: ConnEvent) {
    // Disconnected/Resumed pairs are only informative: keep the queue
    // bounded by dropping the oldest of them; a reset is never dropped.
    if st.events.len() >= 64 {
        if let Some(i) = st
            .events
            .iter()
            .position(|e| matches!(e, ConnEvent::Disconnected { .. } | ConnEvent::Resumed))
        {
            st.events.remove(i);
        }
    }
    st.events.push_back(ev);
}

/// Every data frame not acknowledged: retained (sent) first, then queued.
fn take_unacked(st: &mut State) -> Vec<Unacked> {
    let mut bufs: Vec<OutBuf> = st.retained.drain(..).map(|t| t.buf).collect();
    st.retained_bytes = 0;
    st.out.seal();
    bufs.extend(st.out.ready.drain(..).map(|t| t.buf));
    st.out.messages = 0;
    st.out.bytes = st.out.control.len();
    let mut out = Vec::new();
    unacked_from(bufs, &mut out);
    out
}

/// The data frames in `bufs` (in order), as handed-back messages.
fn unacked_from(bufs: Vec<OutBuf>, out: &mut Vec<Unacked>) {
    let mut pending: Option<FrameHeader> = None;
    for buf in bufs {
        match buf {
            OutBuf::Pool(_) | OutBuf::Heap(_) => split_frames(buf.bytes(), out),
            OutBuf::Header(h) => {
                pending =
                    h.0.first_chunk::<HEADER_LEN>()
                        .and_then(|b| FrameHeader::parse(b).ok());
            }
            OutBuf::Shared(_) | OutBuf::Segment(_) => {
                if let Some(header) = pending.take() {
                    let bytes = buf.bytes();
                    let len = (header.payload_len as usize).min(bytes.len());
                    let mut payload = AlignedVec::<16>::with_capacity(len);
                    payload.extend_from_slice(&bytes[..len]);
                    out.push(Unacked { header, payload });
                }
            }
            OutBuf::Pad(_) => {}
        }
    }
}

fn split_frames(bytes: &[u8], out: &mut Vec<Unacked>) {
    let mut at = 0;
    while let Some(head) = bytes.get(at..).and_then(|b| b.first_chunk::<HEADER_LEN>()) {
        let Ok(header) = FrameHeader::parse(head) else {
            return;
        };
        let len = header.payload_len as usize;
        let Some(body) = bytes.get(at + HEADER_LEN..at + HEADER_LEN + len) else {
            return;
        };
        if header.kind.is_sequenced() {
            let mut payload = AlignedVec::<16>::with_capacity(len);
            payload.extend_from_slice(body);
            out.push(Unacked { header, payload });
        }
        at += frame_len(len);
    }
}

// ---------------------------------------------------------------------------
// The server's resumable sessions, by session id: live ones (a client may
// come back before this side noticed its old connection die) and suspended
// ones (waiting for their client within the resume window).

fn registry() -> std::sync::MutexGuard<'static, std::collections::HashMap<u64, usize>> {
    static MAP: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<u64, usize>>> =
        std::sync::OnceLock::new();
    MAP.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

thread_local! {
    /// This core's resumable sessions.
    static LOCAL: std::cell::RefCell<std::collections::HashMap<u64, Rc<Conn>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Files a server connection under its session id (after its handshake) so
/// that a client coming back can resume it, until the connection ends.
pub(crate) fn register(conn: &Rc<Conn>) {
    let id = conn.st.borrow().session.session_id();
    if id == 0 {
        return;
    }
    registry().insert(id, ringwire_runtime::current_core());
    LOCAL.with(|l| l.borrow_mut().insert(id, conn.clone()));
    conn.on_end(Box::new(move || forget(id)));
}

/// Removes session `id` from the registries (if this core holds it).
fn forget(id: u64) {
    let _ = LOCAL.try_with(|l| l.borrow_mut().remove(&id));
    let mut map = registry();
    if ringwire_runtime::try_current_core().is_some_and(|c| map.get(&id) == Some(&c)) {
        map.remove(&id);
    }
}

/// How often a suspended session's timer looks whether it is still needed.
const SUSPEND_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// A cut server connection waits for its client for `window`, then ends.
///
/// The timer task ends early (within [`SUSPEND_CHECK`]) once the session
/// has resumed on a new link or closed; when the runtime shuts down it ends
/// the session (tasks waiting on it see it closed). A long window neither
/// keeps a task for nothing nor holds up a shutdown.
pub(crate) fn suspend(conn: Rc<Conn>, window: std::time::Duration) {
    let link = conn.st.borrow().link;
    let deadline = std::time::Instant::now() + window;
    ringwire_runtime::spawn_local(async move {
        loop {
            let waiting = {
                let st = conn.st.borrow();
                st.link == link && matches!(st.phase, Phase::Suspended)
            };
            if !waiting {
                return;
            }
            if ringwire_runtime::is_shutting_down() {
                // No client can come back: end the session now, so that
                // tasks waiting on it see it closed and end too.
                conn.fail(Error::closed("the runtime is shutting down"));
                return;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                conn.fail(Error::closed(format!(
                    "the client did not come back within the resume window ({window:?})"
                )));
                return;
            }
            ringwire_runtime::time::sleep((deadline - now).min(SUSPEND_CHECK)).await;
        }
    });
}

/// The core holding resumable session `id`, if any.
pub(crate) fn registered_on(id: u64) -> Option<usize> {
    registry().get(&id).copied()
}

/// Session `id` on this core, taken over for a new link: a live old link is
/// cut first. `None` (and a stale registration dropped) if this core does
/// not hold it.
pub(crate) fn take_over(id: u64) -> Option<Rc<Conn>> {
    let conn = LOCAL
        .try_with(|l| l.borrow().get(&id).cloned())
        .ok()
        .flatten();
    let Some(conn) = conn else {
        forget(id);
        return None;
    };
    let (link, live) = {
        let st = conn.st.borrow();
        (
            st.link,
            !matches!(st.phase, Phase::Suspended | Phase::Closed(_)),
        )
    };
    if live {
        conn.link_lost(
            link,
            Error::closed("replaced by a new connection resuming the session"),
        );
    }
    if conn.is_closed() {
        forget(id);
        return None;
    }
    Some(conn)
}
