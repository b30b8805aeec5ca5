//! The engine of one connection, shared by every backend.
//!
//! A [`Conn`] lives on the core that accepted or dialed it and holds the
//! connection's [`Session`] (sequencing, acks, calls, bulk, close), its
//! outbound queue and its inbound queues. Backends (a byte stream for TCP and
//! Unix sockets, lent buffers for `mem://`) run three tasks around it:
//!
//! - a **reader** that turns what arrives into whole frames and hands them to
//!   [`Conn::on_frame`] (and bulk segment bytes to their destinations);
//! - a **flusher** that waits for [`Conn::next_batch`] (everything queued
//!   since its last turn: one submission per loop turn and connection) and
//!   transmits it;
//! - a **timer** ([`run_timer`]) for the session's deadlines (heartbeats,
//!   delayed acks, idle and call timeouts).
//!
//! Users reach it through [`Connection`](crate::Connection) and the guards.
//! Nothing here blocks; every wait is a future woken by the engine.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use ringwire_proto::{
    CallId, Event, FrameHeader, FrameKind, Instant, LostReason, Message, PeerInfo, ProtoError,
    ReplyTo, Sent, Session, StreamId,
};
use ringwire_runtime::{IoBuf, SendBuf};

use ringwire_runtime::IoBufMut;
use rkyv::util::AlignedVec;

use super::incoming::{Backing, Incoming, Receipt};
use super::out::{HeapFrames, OutBuf, OutQueue, Segment, SharedPayload, Tagged, ZEROS};
use crate::clock;
use crate::config::{BackPressure, Config};
use crate::endpoint::Scheme;
use crate::error::Error;
use crate::stats;

/// Where a connection is in its life.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    /// Hellos exchanged or on their way.
    Handshaking,
    /// Messages flow.
    Open,
    /// A close was started (by this side); waiting for the peer's answer.
    Closing,
    /// The transport was cut; a new link is being made (client) or awaited
    /// (server). Sends queue; receives wait.
    Suspended,
    /// Over; every operation reports this error.
    Closed(Error),
}

/// A call waiting for its reply.
#[derive(Default)]
pub(super) struct CallSlot {
    pub(super) waker: Option<Waker>,
    pub(super) result: Option<Result<Incoming, Error>>,
}

/// A received message (or one rejected on arrival) waiting for the
/// application.
enum Queued {
    Msg(Incoming, usize),
    Rejected(Error),
}

/// Inbound queues, one per logical stream. Connections use few streams, so
/// they are found by a short linear search (stream 0 first), not hashing.
#[derive(Default)]
pub(super) struct Inbound {
    streams: Vec<StreamQueue>,
    messages: usize,
    bytes: usize,
}

struct StreamQueue {
    id: u32,
    queue: VecDeque<Queued>,
    waiters: Wakers,
}

/// Tasks to wake: almost always none or one, kept inline so that taking
/// them for a wake-up allocates nothing.
pub(crate) type Wakers = smallvec::SmallVec<[Waker; 4]>;

impl Inbound {
    fn stream(&mut self, id: u32) -> &mut StreamQueue {
        let at = match self.streams.iter().position(|s| s.id == id) {
            Some(at) => at,
            None => {
                self.streams.push(StreamQueue {
                    id,
                    queue: VecDeque::new(),
                    waiters: Wakers::new(),
                });
                self.streams.len() - 1
            }
        };
        &mut self.streams[at]
    }
}

/// A bulk transfer accepted into the caller's destinations.
pub(super) struct BulkRecv {
    msg_seq: u64,
    dests: Vec<Option<DestBox>>,
    done: bool,
    waker: Option<Waker>,
}

/// A bulk destination of any [`IoBufMut`] type, type-erased.
pub(crate) struct DestBox {
    ptr: *mut u8,
    len: usize,
    owner: Box<dyn Any>,
    set_init: fn(&mut dyn Any, usize),
}

impl DestBox {
    fn new<D: IoBufMut>(mut d: D, len: usize) -> DestBox {
        fn set_init<D: IoBufMut>(any: &mut dyn Any, n: usize) {
            if let Some(d) = any.downcast_mut::<D>() {
                // SAFETY: called once the first `n` bytes were written (the
                // whole announced segment), and `n` is at most the buffer's
                // total size, checked in `DestBox::new`'s caller.
                unsafe { d.set_init(n) };
            }
        }
        DestBox {
            ptr: d.stable_mut_ptr(),
            len,
            owner: Box::new(d),
            set_init: set_init::<D>,
        }
    }

    /// The destination's bytes.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is the stable pointer of the `IoBufMut` in `owner`,
        // valid for `len` bytes (at most its total size, checked when the
        // transfer was accepted), and only this value touches it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn finish(mut self) -> Box<dyn Any> {
        (self.set_init)(&mut *self.owner, self.len);
        self.owner
    }
}

// SAFETY: the bytes are the `IoBufMut`'s stable memory (its contract), which
// stays put while `owner` lives; the receive op owns this value meanwhile.
unsafe impl IoBuf for DestBox {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

// SAFETY: as above; `stable_mut_ptr` is the same stable pointer, valid for
// `bytes_total` bytes, which the kernel may write.
unsafe impl IoBufMut for DestBox {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
    fn bytes_total(&self) -> usize {
        self.len
    }
    unsafe fn set_init(&mut self, _n: usize) {}
}

/// Everything mutable of a connection.
pub(crate) struct State {
    pub(crate) session: Session,
    pub(crate) phase: Phase,
    pub(crate) peer: Option<PeerInfo>,
    pub(super) out: OutQueue,
    pub(super) inbound: Inbound,
    pub(super) calls: HashMap<u64, CallSlot>,
    pub(super) acked: u64,
    pub(super) ack_waiters: VecDeque<(u64, Waker)>,
    pub(super) send_waiters: Vec<Waker>,
    /// Shared payloads (broadcasts) that found the send queue full under
    /// [`BackPressure::Wait`], in the order they were sent; one task sends
    /// them as room frees, and later shared payloads queue behind them.
    pub(super) shared_backlog: VecDeque<ParkedShared>,
    /// A task drains `shared_backlog`.
    pub(super) shared_drainer: bool,
    pub(super) flusher: Option<Waker>,
    pub(super) timer: Option<Waker>,
    pub(super) timer_at: Option<Instant>,
    pub(super) timer_kick: bool,
    /// The reader waits for room in the inbound queues or a bulk decision.
    pub(super) reader: Option<Waker>,
    /// A message announced bulk and the application has not decided yet.
    pub(super) bulk_undecided: Option<u64>,
    pub(super) bulk: Option<BulkRecv>,
    /// Segment index of the bulk segment being received.
    pub(super) bulk_index: usize,
    /// The core is shutting down: the flusher and timer end once what is
    /// queued has gone out.
    pub(super) draining: bool,
    /// Tasks waiting for the handshake or the end of the connection.
    pub(super) phase_waiters: Vec<Waker>,
    /// A pool buffer's size (frames up to it are encoded into pool buffers).
    pub(super) pool_buf_size: usize,
    /// Run once when the connection ends (unregistering it from `Peers`).
    pub(super) on_end: Vec<Box<dyn FnOnce()>>,
    /// The current transport link (a generation number; tasks of an older
    /// link end). Changes when a cut connection gets a new link.
    pub(super) link: u64,
    /// Whether this side is the dialing one.
    pub(super) client: bool,
    /// Whether sent data is kept until acknowledged (to resend after a
    /// resume).
    pub(super) retain: bool,
    /// Sent, not yet acknowledged data, in sequence order (when `retain`).
    pub(super) retained: VecDeque<Tagged>,
    pub(super) retained_bytes: usize,
    /// A new link's handshake is under way.
    pub(super) reattaching: bool,
    /// The peer no longer holds the session: the next link starts a new one.
    pub(super) reset: bool,
    /// How the connection gets a new link after a cut (the client's
    /// reconnect loop, the server's resume registry).
    pub(super) relink: Option<Rc<dyn Fn(Rc<Conn>)>>,
    /// Lifecycle events for the application ([`Conn::next_event`]).
    pub(super) events: VecDeque<super::resume::ConnEvent>,
    pub(super) event_waiters: Vec<Waker>,
    /// Readers of the current link, woken when it changes.
    pub(super) link_waiters: Vec<Waker>,
    /// Batches taken by flushers (of any link) and not yet given back.
    pub(super) batches_out: usize,
    /// A resumed link waits to resend what the peer lacks (above this
    /// position) until every batch of older links is back.
    pub(super) pending_resend: Option<u64>,
    /// Shuts the current link's socket down (so that a send pending on a
    /// dead link fails at once).
    pub(super) link_closer: Option<Box<dyn FnOnce()>>,
    /// After a session reset: batches of the old session still out (their
    /// data is handed back, never resent) ...
    pub(super) old_batches: usize,
    /// ... and what is handed back once they are all in.
    pub(super) reset_unacked: Option<Vec<super::resume::Unacked>>,
    /// A fresh session (after a reset) waits for the old batches before its
    /// data flows.
    pub(super) pending_fresh: bool,
    /// Since when the connection has had no working link (a cut, until a
    /// new link's handshake answered): what a reconnect policy's give-up
    /// time counts, however many new links fail on the way.
    pub(super) down_since: Option<std::time::Instant>,
    /// Messages and bytes counted since the per-core counters were last
    /// updated (in batches: once per received chunk and per flush).
    pub(super) tally: stats::Tally,
    /// The time the reader read the bytes it is handing over now (one clock
    /// read per chunk, not per frame); `None` outside a reader's pass.
    pub(super) input_time: Option<Instant>,
}

/// One connection's engine.
pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) scheme: Scheme,
    /// The peer's address, for errors and logs.
    pub(crate) remote: String,
    pub(crate) config: Config,
    pub(crate) st: RefCell<State>,
}

/// The error of a connection its session declared lost.
fn lost_error(reason: LostReason, config: &Config) -> Error {
    match reason {
        LostReason::IdleTimeout => Error::Timeout {
            what: "the idle timeout (nothing received from the peer)",
            after: config.session.idle_timeout,
        },
        LostReason::HandshakeTimeout => Error::Timeout {
            what: "the peer's handshake",
            after: config.session.handshake_timeout,
        },
        LostReason::Transport => Error::closed("the transport reported the connection lost"),
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.st.get_mut().tally.flush(self.scheme);
        stats::connection_freed(self.scheme);
    }
}

fn next_conn_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Conn {
    /// A connection whose session starts now: the dialing side
    /// (`client == true`) or the accepting side.
    pub(crate) fn new(scheme: Scheme, remote: String, config: &Config, client: bool) -> Rc<Conn> {
        let now = clock::now();
        let session = if client {
            Session::connect(
                config.session.clone(),
                config.schema.clone(),
                now,
                crate::config::random_u64(),
            )
        } else {
            Session::accept(config.session.clone(), config.schema.clone(), now)
        };
        let pool_buf_size = SendBuf::try_acquire().map_or(0, |b| b.capacity());
        let conn = Rc::new(Conn {
            id: next_conn_id(),
            scheme,
            remote,
            config: config.clone(),
            st: RefCell::new(State {
                session,
                phase: Phase::Handshaking,
                peer: None,
                out: OutQueue::default(),
                inbound: Inbound::default(),
                calls: HashMap::new(),
                acked: 0,
                ack_waiters: VecDeque::new(),
                send_waiters: Vec::new(),
                flusher: None,
                timer: None,
                timer_at: None,
                timer_kick: false,
                reader: None,
                bulk_undecided: None,
                bulk: None,
                bulk_index: 0,
                draining: false,
                on_end: Vec::new(),
                link: 1,
                client,
                retain: if client {
                    config.reconnect.is_some()
                } else {
                    config.resume_window.is_some()
                },
                retained: VecDeque::new(),
                retained_bytes: 0,
                reattaching: false,
                reset: false,
                relink: None,
                events: VecDeque::new(),
                event_waiters: Vec::new(),
                link_waiters: Vec::new(),
                batches_out: 0,
                pending_resend: None,
                link_closer: None,
                old_batches: 0,
                reset_unacked: None,
                pending_fresh: false,
                down_since: None,
                tally: stats::Tally::default(),
                input_time: None,
                phase_waiters: Vec::new(),
                shared_backlog: VecDeque::new(),
                shared_drainer: false,
                pool_buf_size,
            }),
        });
        stats::connection_opened(scheme);
        // The hello goes first.
        conn.after_session();
        conn
    }

    // ------------------------------------------------------------------
    // Life cycle

    /// Waits for the handshake; fails if it is refused or times out.
    pub(crate) async fn handshake(&self) -> Result<PeerInfo, Error> {
        poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            match &st.phase {
                Phase::Handshaking => {
                    st.phase_waiters.push(cx.waker().clone());
                    Poll::Pending
                }
                Phase::Closed(e) => Poll::Ready(Err(e.clone())),
                _ => Poll::Ready(
                    st.peer
                        .ok_or(Error::Usage("handshake finished without a peer")),
                ),
            }
        })
        .await
    }

    /// The terminal error, if the connection is over.
    pub(crate) fn closed_error(&self) -> Option<Error> {
        match &self.st.borrow().phase {
            Phase::Closed(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// Ends the connection with `err` (unless already over) and wakes every
    /// waiter so that each sees it.
    pub(crate) fn fail(self: &Rc<Self>, err: Error) {
        let mut close_link = None;
        let farewell;
        let wakers = {
            let mut st = self.st.borrow_mut();
            if matches!(st.phase, Phase::Closed(_)) {
                return;
            }
            tracing::debug!(conn = self.id, remote = %self.remote, error = %err, "connection ended");
            if !matches!(err, Error::Closed { .. }) {
                stats::connection_error(self.scheme);
            }
            st.phase = Phase::Closed(err.clone());
            super::resume::hand_back_on_failure(&mut st, &err);
            // A protocol error or a refused handshake: the session queued a
            // `Close` saying why (docs/WIRE.md). On a stream link it goes
            // out before the cut: data is dropped, control frames stay for
            // the flusher, which sends them and shuts its side.
            farewell = matches!(err, Error::Protocol(_) | Error::Refused(_))
                && st.link_closer.is_some()
                && st.out.has_control();
            if farewell {
                st.out.clear_data();
            } else {
                st.out.clear();
            }
            // Shut the transport now (after the farewell, at the latest
            // FAREWELL_LINGER later), so that the peer learns at once and
            // a reader parked on a silent peer ends.
            if let Some(close) = st.link_closer.take() {
                close_link = Some(close);
            }
            let mut w = take_all_waiters(&mut st);
            for slot in st.calls.values_mut() {
                if slot.result.is_none() {
                    slot.result = Some(Err(err.clone()));
                }
                w.extend(slot.waker.take());
            }
            if let Some(b) = st.bulk.as_mut() {
                w.extend(b.waker.take());
            }
            (w, std::mem::take(&mut st.on_end))
        };
        if let Some(close) = close_link {
            if farewell {
                // The flusher (woken below) sends the close frame; a peer
                // that does not read cannot hold the link open longer.
                ringwire_runtime::spawn_local(async move {
                    ringwire_runtime::time::sleep(FAREWELL_LINGER).await;
                    close();
                });
            } else {
                close();
            }
        }
        wake_all(wakers.0);
        for hook in wakers.1 {
            hook();
        }
    }

    /// Runs `hook` once when the connection ends (at once if it has).
    pub(crate) fn on_end(&self, hook: Box<dyn FnOnce()>) {
        let mut st = self.st.borrow_mut();
        if matches!(st.phase, Phase::Closed(_)) {
            drop(st);
            hook();
        } else {
            st.on_end.push(hook);
        }
    }

    /// The transport saw the end of the byte stream (or the peer core went
    /// away) on link `link`.
    pub(crate) fn on_eof(self: &Rc<Self>, link: u64) {
        let reason = match &self.st.borrow().phase {
            Phase::Closed(_) => return,
            Phase::Closing => "the peer went away before confirming the close",
            _ => "the peer closed the connection without an orderly close",
        };
        if ringwire_runtime::is_shutting_down() {
            self.shutdown_close();
            return;
        }
        // An end of stream without the session's close is an error of the
        // connection (counted here: the `Closed` error it ends with, or the
        // resume it starts, is not counted again).
        stats::connection_error(self.scheme);
        self.link_lost(link, Error::closed(reason));
    }

    /// The core is shutting down: close orderly as far as can be (the close
    /// frame goes out with everything queued before it; the peer's answer can
    /// no longer be read).
    pub(crate) fn shutdown_close(self: &Rc<Self>) {
        let started = {
            let mut st = self.st.borrow_mut();
            matches!(st.phase, Phase::Open) && st.session.close(clock::now()).is_ok()
        };
        if started {
            self.after_session();
        }
        // The flusher drains what is queued, then ends.
        let wakers = {
            let mut st = self.st.borrow_mut();
            if !matches!(st.phase, Phase::Closed(_)) {
                st.phase = Phase::Closing;
            }
            st.draining = true;
            take_all_waiters(&mut st)
        };
        wake_all(wakers);
    }

    /// Starts an orderly close and waits for the peer's confirmation (or the
    /// close timeout). Returns whether every message sent was acknowledged.
    pub(crate) async fn close(self: &Rc<Self>) -> Result<bool, Error> {
        {
            let mut st = self.st.borrow_mut();
            match &st.phase {
                Phase::Closed(Error::Closed { .. }) => return Ok(true),
                Phase::Closed(e) => return Err(e.clone()),
                Phase::Closing => {}
                _ => {
                    st.session.close(clock::now()).map_err(Error::from_proto)?;
                    st.phase = Phase::Closing;
                }
            }
        }
        self.after_session();
        poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            match &st.phase {
                Phase::Closed(Error::Closed { reason }) => {
                    Poll::Ready(Ok(reason.as_ref() == CLEAN_CLOSE))
                }
                Phase::Closed(e) => Poll::Ready(Err(e.clone())),
                // Shutting down: the close frame goes out with what was
                // queued, but the peer's answer can no longer be read.
                _ if st.draining => Poll::Ready(Ok(false)),
                _ => {
                    st.phase_waiters.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    // ------------------------------------------------------------------
    // Session events, control frames, timers

    /// Acts on the session's events, queues its control frames, and wakes
    /// whoever must act. Call after every session input or timeout.
    pub(crate) fn after_session(self: &Rc<Self>) {
        let mut wakers = Wakers::new();
        let mut end: Option<Error> = None;
        let mut lost: Option<Error> = None;
        {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            while let Some(ev) = st.session.poll_event() {
                match ev {
                    Event::Connected {
                        peer,
                        resumed,
                        resend_after,
                    } => {
                        st.peer = Some(peer);
                        if matches!(st.phase, Phase::Handshaking) {
                            st.phase = Phase::Open;
                        }
                        if st.reattaching {
                            super::resume::relinked(st, resumed, resend_after, &mut wakers);
                        }
                        wakers.extend(st.phase_waiters.drain(..));
                    }
                    Event::Acked { up_to } => {
                        st.acked = up_to;
                        while st.retained.front().is_some_and(|t| t.last_seq <= up_to) {
                            if let Some(t) = st.retained.pop_front() {
                                st.retained_bytes -= t.buf.len();
                            }
                        }
                        while st.ack_waiters.front().is_some_and(|(s, _)| *s <= up_to) {
                            if let Some((_, w)) = st.ack_waiters.pop_front() {
                                wakers.push(w);
                            }
                        }
                    }
                    Event::CallTimedOut(CallId(id)) => {
                        if let Some(slot) = st.calls.get_mut(&id) {
                            slot.result = Some(Err(Error::Timeout {
                                what: crate::error::CALL_TIMEOUT,
                                after: self.config.session.call_timeout.unwrap_or_default(),
                            }));
                            wakers.extend(slot.waker.take());
                        }
                    }
                    Event::BulkComplete { msg_seq, .. } => {
                        if let Some(b) = st.bulk.as_mut() {
                            if b.msg_seq == msg_seq {
                                b.done = true;
                                wakers.extend(b.waker.take());
                            }
                        }
                    }
                    // Emitted by `Session::connection_lost`, which the engine
                    // itself calls when a link breaks: already handled.
                    Event::ConnectionLost(LostReason::Transport) => {}
                    Event::ConnectionLost(reason) if st.retain && st.peer.is_some() => {
                        lost = Some(lost_error(reason, &self.config));
                    }
                    Event::ConnectionLost(reason) => {
                        end = Some(lost_error(reason, &self.config));
                    }
                    Event::Closed {
                        reason,
                        by_peer,
                        clean,
                    } => {
                        end = Some(Error::closed(if clean {
                            CLEAN_CLOSE.to_string()
                        } else {
                            format!(
                                "closed by {} ({reason:?}) with messages unacknowledged",
                                if by_peer { "the peer" } else { "this side" }
                            )
                        }));
                    }
                }
            }
            if let Err(e) = pump_control(st) {
                end.get_or_insert(e);
            }
            if !st.out.is_empty() {
                wakers.extend(st.flusher.take());
            }
            // An earlier deadline than the armed timer: re-arm it.
            if let Some(at) = st.session.poll_timeout() {
                if st.timer_at.is_none_or(|t| at < t) {
                    st.timer_kick = true;
                    wakers.extend(st.timer.take());
                }
            }
            st.tally.flush(self.scheme);
        }
        wake_all(wakers);
        if let Some(e) = end {
            // Control frames queued above (close-ack, ack) still go out: the
            // flusher drains before it ends.
            self.finish(e);
        } else if let Some(e) = lost {
            let link = self.st.borrow().link;
            self.link_lost(link, e);
        }
    }

    /// Re-arms the timer if the session now has an earlier deadline than the
    /// one it waits for.
    fn check_timer(&self) {
        let waker = {
            let mut st = self.st.borrow_mut();
            match st.session.poll_timeout() {
                Some(at) if st.timer_at.is_none_or(|t| at < t) => {
                    st.timer_kick = true;
                    st.timer.take()
                }
                _ => None,
            }
        };
        wake_all(waker);
    }

    /// Ends the connection after the session ended (orderly close or loss)
    /// while letting the flusher send what is queued.
    fn finish(self: &Rc<Self>, err: Error) {
        let wakers = {
            let mut st = self.st.borrow_mut();
            if matches!(st.phase, Phase::Closed(_)) {
                return;
            }
            if !matches!(err, Error::Closed { .. }) {
                // The idle and handshake timeouts end here.
                stats::connection_error(self.scheme);
            }
            st.phase = Phase::Closed(err.clone());
            let mut w = take_all_waiters(&mut st);
            for slot in st.calls.values_mut() {
                if slot.result.is_none() {
                    slot.result = Some(Err(err.clone()));
                }
                w.extend(slot.waker.take());
            }
            (w, std::mem::take(&mut st.on_end))
        };
        wake_all(wakers.0);
        for hook in wakers.1 {
            hook();
        }
    }

    /// Runs the session's deadlines until the connection ends.
    ///
    /// One timer operation stays armed while it fires no later than the
    /// session's earliest deadline (deadlines that move later, such as the
    /// heartbeat after each send, only make it fire early and re-arm). A
    /// kick for an earlier deadline (an ack owed) first lets the loop turn
    /// finish: when replies go out in the same turn the ack rides with them
    /// and no earlier timer is needed.
    pub(crate) async fn run_timer(self: Rc<Self>) {
        let mut armed: Option<(Instant, ringwire_runtime::time::Sleep)> = None;
        loop {
            {
                let mut st = self.st.borrow_mut();
                if matches!(st.phase, Phase::Closed(_)) || st.draining {
                    return;
                }
                st.timer_kick = false;
                match st.session.poll_timeout() {
                    None => armed = None,
                    Some(at) => {
                        if armed.as_ref().is_none_or(|(t, _)| at < *t) {
                            let sleep = ringwire_runtime::time::sleep(clock::until(at));
                            armed = Some((at, sleep));
                        }
                    }
                }
                st.timer_at = armed.as_ref().map(|(t, _)| *t);
            }
            let fired = poll_fn(|cx| {
                let mut st = self.st.borrow_mut();
                if st.draining || matches!(st.phase, Phase::Closed(_)) {
                    return Poll::Ready(false);
                }
                if st.timer_kick {
                    return Poll::Ready(false);
                }
                if let Some((_, s)) = armed.as_mut() {
                    if std::pin::Pin::new(s).poll(cx).is_ready() {
                        return Poll::Ready(true);
                    }
                }
                st.timer = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            if !fired {
                // Kicked: let this turn's other tasks run first.
                ringwire_runtime::yield_now().await;
                continue;
            }
            armed = None;
            let due = {
                let mut st = self.st.borrow_mut();
                let now = clock::now();
                let due = st.session.poll_timeout().is_some_and(|t| t <= now);
                if due {
                    // A reader stopped for back-pressure is not the peer
                    // falling silent.
                    if st.reader.is_some() {
                        st.session.input_held(now);
                    }
                    st.session.handle_timeout(now);
                }
                due
            };
            if due {
                self.after_session();
            }
        }
    }

    // ------------------------------------------------------------------
    // Inbound

    /// Hands one complete, non-bulk frame to the session and routes what
    /// comes out. `payload` lies in memory `backing` keeps alive (or is
    /// `'static`); `trusted`
    /// skips validation (frames this process encoded: `mem://`).
    pub(crate) fn on_frame(
        self: &Rc<Self>,
        header: &FrameHeader,
        payload: &[u8],
        backing: &Backing,
        trusted: bool,
    ) -> Result<(), Error> {
        let mut st = self.st.borrow_mut();
        let now = st.input_time.unwrap_or_else(clock::now);
        let res = if trusted {
            // SAFETY: trusted frames come from `mem://` peers, which are
            // sessions of this process encoding with the same schema (the
            // handshake checked the type sets match), into aligned buffers.
            unsafe { st.session.handle_frame_trusted(now, header, payload) }
        } else {
            st.session.handle_frame(now, header, payload)
        };
        match res {
            Ok(None) => Ok(()),
            Ok(Some(received)) => {
                let len = payload.len();
                let kind = received.kind();
                let stream = received.stream().0;
                let call = received.call();
                if received.bulk().is_some() {
                    st.bulk_undecided = Some(received.seq());
                }
                // SAFETY: `received` borrows `payload`, which lies in memory
                // `backing` owns (the caller's contract), or is the framer's
                // static empty payload; the clone keeps `backing` alive.
                let msg = unsafe { Incoming::new(received, backing.clone(), self.clone()) };
                st.tally.msg_in(len);
                let waker = match (kind, call) {
                    (FrameKind::Reply, Some(CallId(id))) => match st.calls.get_mut(&id) {
                        Some(slot) => {
                            slot.result = Some(Ok(msg));
                            slot.waker.take().into_iter().collect()
                        }
                        None => Wakers::new(),
                    },
                    _ => push_inbound(&mut st.inbound, stream, Queued::Msg(msg, len)),
                };
                drop(st);
                wake_all(waker);
                Ok(())
            }
            Err(err) if err.is_rejection() => {
                stats::message_rejected(self.scheme);
                tracing::debug!(conn = self.id, error = %err, "message rejected");
                let err = Error::from_proto(err);
                let wakers = match (header.kind, header.correlation) {
                    (FrameKind::Reply, id) if st.calls.contains_key(&id) => {
                        let slot = st.calls.get_mut(&id).expect("checked above");
                        slot.result = Some(Err(err));
                        slot.waker.take().into_iter().collect()
                    }
                    _ => push_inbound(&mut st.inbound, header.stream, Queued::Rejected(err)),
                };
                drop(st);
                wake_all(wakers);
                Ok(())
            }
            Err(err) => {
                drop(st);
                if self.resume_refused(&err) {
                    // The link is dead (the peer refuses it); a new one
                    // starts a new session.
                    let link = self.st.borrow().link;
                    let e = Error::from_proto(err);
                    self.link_lost(link, e.clone());
                    return Err(e);
                }
                let err = Error::from_proto(err);
                self.after_session();
                self.fail(err.clone());
                Err(err)
            }
        }
    }

    /// For a reader: the bytes about to be handed over were read now
    /// (`Some`), or the pass is over (`None`). Frames handed over meanwhile
    /// take this time instead of reading the clock each.
    pub(crate) fn set_input_time(&self, now: Option<Instant>) {
        self.st.borrow_mut().input_time = now;
    }

    /// After a reader waited: its pass goes on with a fresh time.
    pub(crate) fn refresh_input_time(&self) {
        let mut st = self.st.borrow_mut();
        if st.input_time.is_some() {
            st.input_time = Some(clock::now());
        }
    }

    /// The peer's bytes broke the protocol before the session saw them (a
    /// header that does not parse): the session fails too, so that its
    /// `Close` goes out before the link is cut. Returns the error.
    pub(crate) fn abort(self: &Rc<Self>, e: ringwire_proto::ProtoError) -> Error {
        let e = self.st.borrow_mut().session.abort(e);
        let err = Error::from_proto(e);
        self.after_session();
        self.fail(err.clone());
        err
    }

    /// Checks a frame header as soon as it is complete (limits; fatal).
    pub(crate) fn check_header(self: &Rc<Self>, header: &FrameHeader) -> Result<(), Error> {
        let res = self.st.borrow_mut().session.check_header(header);
        res.map_err(|e| {
            let err = Error::from_proto(e);
            self.after_session();
            self.fail(err.clone());
            err
        })
    }

    /// Waits until the reader may hand over more frames: the inbound queues
    /// are under their limits and no bulk offer waits for a decision.
    pub(crate) async fn reader_ready(&self) -> Result<(), Error> {
        poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            if let Phase::Closed(e) = &st.phase {
                return Poll::Ready(Err(e.clone()));
            }
            let full = st.inbound.messages >= self.config.recv_queue_messages
                || st.inbound.bytes >= self.config.recv_queue_bytes;
            if full || st.bulk_undecided.is_some() {
                st.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Whether the reader may hand over more frames right now (see
    /// [`reader_ready`](Self::reader_ready)).
    pub(crate) fn reader_may_go(&self) -> bool {
        let st = self.st.borrow();
        st.bulk_undecided.is_none()
            && st.inbound.messages < self.config.recv_queue_messages
            && st.inbound.bytes < self.config.recv_queue_bytes
    }

    /// Starts a bulk segment: where do its bytes go?
    pub(crate) fn bulk_start(
        self: &Rc<Self>,
        header: &FrameHeader,
    ) -> Result<Option<DestBox>, Error> {
        let res = {
            let mut st = self.st.borrow_mut();
            match st.session.bulk_segment_start(clock::now(), header) {
                Ok(ringwire_proto::BulkTarget::Place { index }) => Ok(st
                    .bulk
                    .as_mut()
                    .and_then(|b| b.dests.get_mut(index))
                    .and_then(Option::take)
                    .map(|d| (index, d))),
                Ok(ringwire_proto::BulkTarget::Skip) => Ok(None),
                Err(e) => Err(e),
            }
        };
        match res {
            Ok(Some((index, dest))) => {
                self.st.borrow_mut().bulk_index = index;
                Ok(Some(dest))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                let err = Error::from_proto(e);
                self.after_session();
                self.fail(err.clone());
                Err(err)
            }
        }
    }

    /// Ends a bulk segment, giving its destination back.
    pub(crate) fn bulk_end(
        self: &Rc<Self>,
        header: &FrameHeader,
        dest: Option<DestBox>,
        direct: usize,
    ) {
        {
            let mut st = self.st.borrow_mut();
            if let Some(dest) = dest {
                let index = st.bulk_index;
                if let Some(slot) = st.bulk.as_mut().and_then(|b| b.dests.get_mut(index)) {
                    *slot = Some(dest);
                }
            }
            st.session.bulk_segment_end(clock::now(), header);
        }
        stats::bulk_in(self.scheme, header.payload_len as usize, direct);
        self.after_session();
    }

    /// Accepts the undecided bulk offer of message `seq` into `dests`.
    pub(crate) async fn accept_bulk<D: IoBufMut>(
        &self,
        seq: u64,
        sizes: &[u32],
        dests: Vec<D>,
    ) -> Result<Vec<D>, Error> {
        if dests.len() != sizes.len() {
            return Err(Error::Usage(
                "accept_bulk needs exactly one destination per announced segment",
            ));
        }
        if dests
            .iter()
            .zip(sizes)
            .any(|(d, &s)| d.bytes_total() < s as usize)
        {
            return Err(Error::Usage(
                "a bulk destination is smaller than its announced segment",
            ));
        }
        let reader = {
            let mut st = self.st.borrow_mut();
            if let Phase::Closed(e) = &st.phase {
                return Err(e.clone());
            }
            if st.bulk_undecided != Some(seq) {
                return Err(Error::Usage("this bulk offer is no longer pending"));
            }
            st.session
                .accept_bulk_external()
                .map_err(Error::from_proto)?;
            st.bulk_undecided = None;
            st.bulk = Some(BulkRecv {
                msg_seq: seq,
                dests: dests
                    .into_iter()
                    .zip(sizes)
                    .map(|(d, &s)| Some(DestBox::new(d, s as usize)))
                    .collect(),
                done: false,
                waker: None,
            });
            st.reader.take()
        };
        wake_all(reader);
        poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            let failed = match &st.phase {
                Phase::Closed(e) => Some(e.clone()),
                _ => None,
            };
            let Some(b) = st.bulk.as_mut() else {
                return Poll::Ready(Err(Error::Usage("bulk transfer lost")));
            };
            if b.done {
                let b = st.bulk.take().expect("present above");
                let mut out = Vec::with_capacity(b.dests.len());
                for d in b.dests {
                    let Some(d) = d else {
                        return Poll::Ready(Err(Error::Usage("bulk destination lost")));
                    };
                    match d.finish().downcast::<D>() {
                        Ok(d) => out.push(*d),
                        Err(_) => return Poll::Ready(Err(Error::Usage("bulk destination lost"))),
                    }
                }
                return Poll::Ready(Ok(out));
            }
            if let Some(e) = failed {
                st.bulk = None;
                return Poll::Ready(Err(e));
            }
            b.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Declines the undecided bulk offer of message `seq`.
    pub(crate) fn discard_bulk(&self, seq: u64) {
        let reader = {
            let mut st = self.st.borrow_mut();
            if st.bulk_undecided != Some(seq) {
                return;
            }
            st.bulk_undecided = None;
            if st.session.discard_bulk().is_err() {
                return;
            }
            st.reader.take()
        };
        wake_all(reader);
    }

    /// Takes the next message on `stream`, waiting for one.
    pub(crate) async fn recv(&self, stream: u32) -> Result<Incoming, Error> {
        poll_fn(|cx| self.poll_recv(stream, cx)).await
    }

    /// Takes the next message on `stream` if one is there.
    pub(crate) fn try_recv(&self, stream: u32) -> Option<Result<Incoming, Error>> {
        let (item, reader) = {
            let mut st = self.st.borrow_mut();
            let item = pop_inbound(&mut st, stream);
            let reader = item.as_ref().and_then(|_| st.reader.take());
            (item, reader)
        };
        wake_all(reader);
        match item {
            Some(Queued::Msg(m, _)) => Some(Ok(m)),
            Some(Queued::Rejected(e)) => Some(Err(e)),
            None => {
                if let Some(e) = self.closed_error() {
                    return Some(Err(e));
                }
                // Draining at shutdown: nothing more will arrive.
                self.st
                    .borrow()
                    .draining
                    .then(|| Err(Error::closed("the core is shutting down")))
            }
        }
    }

    fn poll_recv(&self, stream: u32, cx: &mut Context<'_>) -> Poll<Result<Incoming, Error>> {
        if let Some(r) = self.try_recv(stream) {
            return Poll::Ready(r);
        }
        let mut st = self.st.borrow_mut();
        let waiters = &mut st.inbound.stream(stream).waiters;
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    // ------------------------------------------------------------------
    // Outbound

    /// Waits while the send queue is at its high-water mark (per policy).
    /// `Ok(false)`: drop this message (DropNewest).
    async fn admit(&self) -> Result<bool, Error> {
        poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            match &st.phase {
                Phase::Closed(e) => return Poll::Ready(Err(e.clone())),
                Phase::Closing => {
                    return Poll::Ready(Err(Error::Usage("the connection is closing")))
                }
                _ => {}
            }
            let (messages, bytes) = st.out.load();
            if messages < self.config.send_queue_messages && bytes < self.config.send_queue_bytes {
                return Poll::Ready(Ok(true));
            }
            match self.config.back_pressure {
                BackPressure::Wait => {
                    stats::back_pressure_wait(self.scheme);
                    st.send_waiters.push(cx.waker().clone());
                    Poll::Pending
                }
                BackPressure::Fail => Poll::Ready(Err(Error::BackPressure {
                    queued_messages: messages,
                    queued_bytes: bytes,
                })),
                BackPressure::DropNewest => {
                    stats::dropped(self.scheme);
                    Poll::Ready(Ok(false))
                }
            }
        })
        .await
    }

    /// Encodes one data frame with `encode` (a session call writing into the
    /// buffer it is given) and queues it.
    fn queue_frame(
        &self,
        st: &mut State,
        mut encode: impl FnMut(&mut Session, Instant, &mut [u8]) -> Result<Sent, ProtoError>,
    ) -> Result<Sent, Error> {
        pump_control(st)?;
        let sent = encode_queued(st, &mut encode).map_err(Error::from_proto)?;
        st.out.messages += 1;
        st.out.bytes += sent.len;
        st.tally.msg_out(sent.len);
        Ok(sent)
    }

    fn wake_flusher(&self) {
        let w = self.st.borrow_mut().flusher.take();
        wake_all(w);
    }

    /// Sends a one-way message on `stream`.
    pub(crate) async fn send<T: Message>(
        self: &Rc<Self>,
        stream: StreamId,
        value: &T,
    ) -> Result<Receipt, Error> {
        if !self.admit().await? {
            return Ok(Receipt {
                seq: 0,
                dropped: true,
                conn: self.clone(),
            });
        }
        let sent = {
            let mut st = self.st.borrow_mut();
            self.queue_frame(&mut st, |s, now, buf| s.send(now, stream, value, buf))?
        };
        self.wake_flusher();
        Ok(Receipt {
            seq: sent.seq,
            dropped: false,
            conn: self.clone(),
        })
    }

    /// Sends again, on this connection's session, a message handed back by
    /// another session ([`Unacked`]): a one-way message without bulk
    /// segments, whose type this connection's schema has. Its payload is
    /// copied into a send buffer as archived (not validated again: this
    /// process archived it).
    pub(crate) async fn send_again(
        self: &Rc<Self>,
        msg: &super::resume::Unacked,
    ) -> Result<Receipt, Error> {
        if !msg.is_plain_message() {
            return Err(Error::Usage(
                "only one-way messages without bulk segments can be sent again",
            ));
        }
        if !self.admit().await? {
            return Ok(Receipt {
                seq: 0,
                dropped: true,
                conn: self.clone(),
            });
        }
        let payload = msg.payload();
        let (stream, type_id) = (StreamId(msg.stream()), msg.type_id());
        let need = ringwire_proto::frame_len(payload.len());
        let sent = {
            let mut st = self.st.borrow_mut();
            self.queue_frame(&mut st, |s, now, buf| {
                let available = buf.len();
                let Some(frame) = buf.get_mut(..need) else {
                    return Err(ProtoError::BufferTooSmall {
                        needed: need,
                        available,
                    });
                };
                let sent = s.send_header_of(now, stream, type_id, payload.len() as u32, frame)?;
                let (body, pad) = frame[ringwire_proto::HEADER_LEN..].split_at_mut(payload.len());
                body.copy_from_slice(payload);
                pad.fill(0);
                Ok(Sent {
                    seq: sent.seq,
                    len: need,
                })
            })?
        };
        self.wake_flusher();
        Ok(Receipt {
            seq: sent.seq,
            dropped: false,
            conn: self.clone(),
        })
    }

    /// Sends a request on `stream` and waits for its reply.
    pub(crate) async fn call<Req: Message>(
        self: &Rc<Self>,
        stream: StreamId,
        value: &Req,
    ) -> Result<Incoming, Error> {
        if !self.admit().await? {
            return Err(Error::BackPressure {
                queued_messages: 0,
                queued_bytes: 0,
            });
        }
        let id = {
            let mut st = self.st.borrow_mut();
            let mut call = None;
            self.queue_frame(&mut st, |s, now, buf| {
                let (sent, id) = s.call(now, stream, value, buf)?;
                call = Some(id);
                Ok(sent)
            })?;
            let CallId(id) = call.ok_or(Error::Usage("call id missing"))?;
            st.calls.insert(id, CallSlot::default());
            id
        };
        self.wake_flusher();
        self.await_reply(id).await
    }

    /// Waits for the reply to call `id` (registered in `calls`).
    async fn await_reply(self: &Rc<Self>, id: u64) -> Result<Incoming, Error> {
        // The call's deadline may be the earliest.
        self.check_timer();
        let mut guard = CallGuard { conn: self, id };
        let out = poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            let Some(slot) = st.calls.get_mut(&id) else {
                return Poll::Ready(Err(Error::Usage("call slot lost")));
            };
            match slot.result.take() {
                Some(r) => Poll::Ready(r),
                None => {
                    slot.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        guard.id = 0;
        self.st.borrow_mut().calls.remove(&id);
        out
    }

    /// A shared payload (encoded elsewhere, for example on another thread)
    /// sent as a one-way message, waiting for room in the send queue.
    pub(crate) async fn send_shared_waiting<T: Message>(
        self: &Rc<Self>,
        stream: StreamId,
        payload_len: u32,
        shared: SharedPayload,
    ) -> Result<(), Error> {
        if !self.admit().await? {
            return Ok(());
        }
        self.send_shared::<T>(stream, payload_len, shared)
    }

    /// A shared payload sent as a request; waits for the reply.
    pub(crate) async fn call_shared<Req: Message>(
        self: &Rc<Self>,
        stream: StreamId,
        payload_len: u32,
        shared: SharedPayload,
    ) -> Result<Incoming, Error> {
        if !self.admit().await? {
            return Err(Error::BackPressure {
                queued_messages: 0,
                queued_bytes: 0,
            });
        }
        let id = {
            let mut st = self.st.borrow_mut();
            pump_control(&mut st)?;
            let mut head = AlignedVec::<16>::with_capacity(ringwire_proto::HEADER_LEN);
            head.resize(ringwire_proto::HEADER_LEN, 0);
            let (sent, CallId(id)) = st
                .session
                .call_header::<Req>(clock::now(), stream, payload_len, &mut head)
                .map_err(Error::from_proto)?;
            let len = head.len() + shared.end - shared.start;
            st.out.push(OutBuf::Header(HeapFrames(head)), sent.seq);
            st.out.push(OutBuf::Shared(shared), sent.seq);
            st.out.messages += 1;
            st.out.bytes += len;
            st.tally.msg_out(len);
            st.calls.insert(id, CallSlot::default());
            id
        };
        self.wake_flusher();
        self.await_reply(id).await
    }

    /// Sends the reply to a request.
    pub(crate) async fn send_reply<T: Message>(
        self: &Rc<Self>,
        to: ReplyTo,
        value: &T,
    ) -> Result<(), Error> {
        if !self.admit().await? {
            return Ok(());
        }
        {
            let mut st = self.st.borrow_mut();
            self.queue_frame(&mut st, |s, now, buf| s.reply(now, to, value, buf))?;
        }
        self.wake_flusher();
        Ok(())
    }

    /// Sends a message whose payload was encoded once for many connections:
    /// this connection's own header, then the shared bytes.
    fn send_shared<T: Message>(
        self: &Rc<Self>,
        stream: StreamId,
        payload_len: u32,
        shared: SharedPayload,
    ) -> Result<(), Error> {
        self.send_shared_with(stream, payload_len, shared, header_of::<T>)
            .map_err(|(e, _)| e)
    }

    /// [`send_shared`](Self::send_shared) with the message type erased into
    /// the function that writes its header. A payload that was not queued
    /// comes back with the error (for the backlog, without a clone per
    /// message).
    fn send_shared_with(
        self: &Rc<Self>,
        stream: StreamId,
        payload_len: u32,
        shared: SharedPayload,
        header: HeaderFn,
    ) -> Result<(), (Error, SharedPayload)> {
        {
            let mut st = self.st.borrow_mut();
            match &st.phase {
                Phase::Closed(e) => return Err((e.clone(), shared)),
                Phase::Closing => return Err((Error::Usage("the connection is closing"), shared)),
                _ => {}
            }
            let (messages, bytes) = st.out.load();
            if messages >= self.config.send_queue_messages || bytes >= self.config.send_queue_bytes
            {
                let full = Error::BackPressure {
                    queued_messages: messages,
                    queued_bytes: bytes,
                };
                return Err((full, shared));
            }
            if let Err(e) = pump_control(&mut st) {
                return Err((e, shared));
            }
            let mut head = AlignedVec::<16>::with_capacity(ringwire_proto::HEADER_LEN);
            head.resize(ringwire_proto::HEADER_LEN, 0);
            let sent = match header(
                &mut st.session,
                clock::now(),
                stream,
                payload_len,
                &mut head,
            ) {
                Ok(sent) => sent,
                Err(e) => return Err((Error::from_proto(e), shared)),
            };
            let len = head.len() + shared.end - shared.start;
            st.out.push(OutBuf::Header(HeapFrames(head)), sent.seq);
            st.out.push(OutBuf::Shared(shared), sent.seq);
            st.out.messages += 1;
            st.out.bytes += len;
            st.tally.msg_out(len);
        }
        self.wake_flusher();
        Ok(())
    }

    /// Sends a shared payload now, or, when the send queue is full and the
    /// policy is to wait, later, from the connection's backlog of shared
    /// payloads (a broadcast never blocks on one slow connection). Shared
    /// payloads leave in the order they were sent: one that finds others
    /// waiting queues behind them. Drops are counted.
    pub(crate) fn send_shared_or_wait<T: Message>(
        self: &Rc<Self>,
        stream: StreamId,
        payload_len: u32,
        shared: SharedPayload,
    ) {
        let wait = self.config.back_pressure == BackPressure::Wait;
        if wait && !self.st.borrow().shared_backlog.is_empty() {
            self.park_shared(stream, payload_len, shared, header_of::<T>);
            return;
        }
        match self.send_shared_with(stream, payload_len, shared, header_of::<T>) {
            Err((Error::BackPressure { .. }, shared)) if wait => {
                self.park_shared(stream, payload_len, shared, header_of::<T>);
            }
            Err((Error::BackPressure { .. }, _)) => stats::dropped(self.scheme),
            _ => {}
        }
    }

    /// Queues a shared payload behind the others waiting for room, starting
    /// the task that sends them if none runs. The backlog holds at most
    /// [`SHARED_BACKLOG_QUEUES`] times `send_queue_messages` payloads; a
    /// connection that would need more ends with an error, so that a peer
    /// that stopped reading costs bounded memory and nothing is dropped
    /// silently.
    fn park_shared(
        self: &Rc<Self>,
        stream: StreamId,
        payload_len: u32,
        shared: SharedPayload,
        header: HeaderFn,
    ) {
        let start = {
            let mut st = self.st.borrow_mut();
            let limit = self
                .config
                .send_queue_messages
                .saturating_mul(SHARED_BACKLOG_QUEUES);
            if st.shared_backlog.len() >= limit {
                // A peer that does not keep up: under `Wait` nothing is
                // dropped silently, so the connection ends instead of
                // holding ever more for it.
                drop(st);
                stats::connection_error(self.scheme);
                self.fail(Error::closed(format!(
                    "the peer fell {limit} broadcasts behind a full send queue \
                     (the backlog holds {SHARED_BACKLOG_QUEUES} send queues' worth)"
                )));
                return;
            }
            st.shared_backlog.push_back(ParkedShared {
                stream,
                payload_len,
                shared,
                header,
            });
            !std::mem::replace(&mut st.shared_drainer, true)
        };
        if start {
            ringwire_runtime::spawn_local(self.clone().drain_shared());
        }
    }

    /// Sends the shared backlog in order as room frees, until it is empty
    /// or the connection ends (what is left is dropped with it).
    async fn drain_shared(self: Rc<Self>) {
        loop {
            if !matches!(self.admit().await, Ok(true)) {
                break;
            }
            loop {
                // Taken out and, if it does not fit, put back at once (no
                // other task runs in between): the order is kept.
                let Some(p) = self.st.borrow_mut().shared_backlog.pop_front() else {
                    self.st.borrow_mut().shared_drainer = false;
                    return;
                };
                match self.send_shared_with(p.stream, p.payload_len, p.shared, p.header) {
                    Ok(()) => {}
                    // Full again: wait for room.
                    Err((Error::BackPressure { .. }, shared)) => {
                        self.st
                            .borrow_mut()
                            .shared_backlog
                            .push_front(ParkedShared { shared, ..p });
                        break;
                    }
                    Err(_) => {
                        self.end_shared_backlog();
                        return;
                    }
                }
            }
        }
        self.end_shared_backlog();
    }

    fn end_shared_backlog(&self) {
        let dropped = {
            let mut st = self.st.borrow_mut();
            st.shared_drainer = false;
            std::mem::take(&mut st.shared_backlog)
        };
        drop(dropped);
    }

    /// Sends a message announcing bulk segments, then the segments straight
    /// from the caller's memory; resolves once all of it was handed to the
    /// transport, giving the segments back.
    pub(crate) async fn send_bulk<T: Message, B: IoBuf>(
        self: &Rc<Self>,
        stream: StreamId,
        meta: &T,
        segments: Vec<B>,
    ) -> Result<(Receipt, Vec<B>), Error> {
        let lens: Vec<u32> = segments
            .iter()
            .map(|s| u32::try_from(s.bytes_init()))
            .collect::<Result<_, _>>()
            .map_err(|_| Error::Usage("a bulk segment is larger than 4 GiB"))?;
        if !self.admit().await? {
            return Ok((
                Receipt {
                    seq: 0,
                    dropped: true,
                    conn: self.clone(),
                },
                segments,
            ));
        }
        let back: super::out::SegmentSlots =
            Rc::new(RefCell::new((0..segments.len()).map(|_| None).collect()));
        let seq = {
            let mut st = self.st.borrow_mut();
            let sent = self.queue_frame(&mut st, |s, now, buf| {
                s.send_bulk(now, stream, meta, &lens, buf)
            })?;
            for (index, seg) in segments.into_iter().enumerate() {
                let mut head = AlignedVec::<16>::with_capacity(ringwire_proto::HEADER_LEN);
                head.resize(ringwire_proto::HEADER_LEN, 0);
                let h = st
                    .session
                    .bulk_segment_header(clock::now(), &mut head)
                    .map_err(Error::from_proto)?;
                let mut seg = Segment::new(seg);
                seg.back = Some((back.clone(), index));
                st.out.bytes += h.header_len + h.data_len + h.pad;
                st.out.push(OutBuf::Header(HeapFrames(head)), h.seq);
                st.out.push(OutBuf::Segment(seg), h.seq);
                if h.pad > 0 {
                    st.out.push(OutBuf::Pad(&ZEROS[..h.pad]), h.seq);
                }
            }
            sent.seq
        };
        self.wake_flusher();
        // The segments come back as the flusher finishes with them.
        let count = back.borrow().len();
        poll_fn(|cx| {
            if back.borrow().iter().all(Option::is_some) {
                return Poll::Ready(Ok(()));
            }
            let mut st = self.st.borrow_mut();
            if let Phase::Closed(e) = &st.phase {
                return Poll::Ready(Err(e.clone()));
            }
            st.send_waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        let mut out = Vec::with_capacity(count);
        for b in back.borrow_mut().drain(..) {
            match b.map(|b| b.downcast::<B>()) {
                Some(Ok(b)) => out.push(*b),
                _ => return Err(Error::Usage("bulk segment lost")),
            }
        }
        Ok((
            Receipt {
                seq,
                dropped: false,
                conn: self.clone(),
            },
            out,
        ))
    }

    /// For [`Receipt::acked`].
    pub(crate) fn poll_acked(
        &self,
        seq: u64,
        registered: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        let mut st = self.st.borrow_mut();
        if st.acked >= seq {
            return Poll::Ready(Ok(()));
        }
        if let Phase::Closed(e) = &st.phase {
            return Poll::Ready(Err(e.clone()));
        }
        if !*registered {
            *registered = true;
            // Sequence numbers are queued in order of registration; keep the
            // queue sorted so that acks pop a prefix.
            let at = st.ack_waiters.partition_point(|(s, _)| *s <= seq);
            st.ack_waiters.insert(at, (seq, cx.waker().clone()));
        } else if let Some(entry) = st.ack_waiters.iter_mut().find(|(s, _)| *s == seq) {
            entry.1 = cx.waker().clone();
        }
        Poll::Pending
    }

    /// For the flusher: waits until something is queued; takes it all, with
    /// its message and byte counts (give them back to
    /// [`batch_done`](Self::batch_done)). `None` once the connection is over
    /// (or draining at shutdown) and nothing is left to send.
    pub(crate) async fn next_batch(&self, link: u64) -> Option<(Vec<Tagged>, usize, usize)> {
        poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            if st.link != link {
                return Poll::Ready(None);
            }
            piggyback_ack(&mut st);
            if !st.out.is_empty() {
                let messages = if st.out.hold_data { 0 } else { st.out.messages };
                let before = st.out.in_flight_bytes;
                let batch = st.out.take();
                let bytes = st.out.in_flight_bytes - before;
                st.batches_out += 1;
                st.tally.flush(self.scheme);
                return Poll::Ready(Some((batch, messages, bytes)));
            }
            if matches!(st.phase, Phase::Closed(_)) || st.draining {
                return Poll::Ready(None);
            }
            st.flusher = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Like [`next_batch`](Self::next_batch), into the flusher's own
    /// vectors (empty on entry): buffers and the last sequence number each
    /// carries. Returns the batch's messages and bytes.
    pub(crate) async fn next_batch_into(
        &self,
        link: u64,
        bufs: &mut Vec<OutBuf>,
        seqs: &mut Vec<u64>,
    ) -> Option<(usize, usize)> {
        poll_fn(|cx| {
            let mut st = self.st.borrow_mut();
            if st.link != link {
                return Poll::Ready(None);
            }
            piggyback_ack(&mut st);
            if !st.out.is_empty() {
                let messages = if st.out.hold_data { 0 } else { st.out.messages };
                let before = st.out.in_flight_bytes;
                st.out.take_into(bufs, seqs);
                let bytes = st.out.in_flight_bytes - before;
                st.batches_out += 1;
                st.tally.flush(self.scheme);
                return Poll::Ready(Some((messages, bytes)));
            }
            if matches!(st.phase, Phase::Closed(_)) || st.draining {
                return Poll::Ready(None);
            }
            st.flusher = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Like [`batch_done`](Self::batch_done), from the flusher's vectors
    /// (left empty, their capacity kept).
    pub(crate) fn batch_done_from(
        &self,
        bufs: &mut Vec<OutBuf>,
        seqs: &mut Vec<u64>,
        messages: usize,
        bytes: usize,
    ) {
        let keep = {
            let st = self.st.borrow();
            st.old_batches > 0 || (st.retain && !matches!(st.phase, Phase::Closed(_)))
        };
        let sent: Vec<Tagged> = if keep {
            bufs.drain(..)
                .zip(seqs.drain(..))
                .map(|(buf, last_seq)| Tagged { buf, last_seq })
                .collect()
        } else {
            // Nothing to keep: the buffers go back to their pools here.
            bufs.clear();
            seqs.clear();
            Vec::new()
        };
        self.batch_done(sent, messages, bytes);
    }

    /// For the flusher: a batch was handed over; frees its queue space.
    ///
    /// `sent` gives the batch's buffers back: when the connection retains
    /// data for a resume, those not yet acknowledged are kept.
    pub(crate) fn batch_done(&self, sent: Vec<Tagged>, messages: usize, bytes: usize) {
        let wakers = {
            let mut st = self.st.borrow_mut();
            st.out.in_flight_messages = st.out.in_flight_messages.saturating_sub(messages);
            st.out.in_flight_bytes = st.out.in_flight_bytes.saturating_sub(bytes);
            st.batches_out = st.batches_out.saturating_sub(1);
            let mut w = Wakers::new();
            if st.old_batches > 0 {
                // A batch of a session that is over (the peer no longer
                // holds it, or the connection ended).
                super::resume::old_batch_back(&mut st, sent);
                w.extend(st.event_waiters.drain(..));
            } else if st.retain && !matches!(st.phase, Phase::Closed(_)) {
                let acked = st.acked;
                for t in sent {
                    if t.last_seq > acked {
                        st.retained_bytes += t.buf.len();
                        st.retained.push_back(t);
                    }
                }
            }
            w.extend(st.send_waiters.drain(..));
            super::resume::try_resend(&mut st, &mut w);
            w
        };
        wake_all(wakers);
    }

    /// The current link's number.
    pub(crate) fn link(&self) -> u64 {
        self.st.borrow().link
    }

    /// Sets how link `link`'s socket is shut down when the link is lost.
    pub(crate) fn set_link_closer(&self, link: u64, closer: Box<dyn FnOnce()>) {
        let mut st = self.st.borrow_mut();
        if st.link == link {
            st.link_closer = Some(closer);
        }
    }

    /// Registers the caller to be woken when the link changes (or the
    /// connection ends).
    pub(crate) fn wait_link_change(&self, cx: &mut Context<'_>) {
        let mut st = self.st.borrow_mut();
        if !st.link_waiters.iter().any(|w| w.will_wake(cx.waker())) {
            st.link_waiters.push(cx.waker().clone());
        }
    }

    /// The peer, once the handshake is done.
    pub(crate) fn peer(&self) -> Option<PeerInfo> {
        self.st.borrow().peer
    }

    /// How long the connection has been without a working link (zero while
    /// it has one).
    pub(crate) fn down_for(&self) -> std::time::Duration {
        self.st
            .borrow()
            .down_since
            .map_or(std::time::Duration::ZERO, |t| t.elapsed())
    }

    /// Whether messages flow now (open, not waiting for a new link).
    pub(crate) fn is_linked(&self) -> bool {
        matches!(self.st.borrow().phase, Phase::Open)
    }

    /// Whether the connection is over.
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.st.borrow().phase, Phase::Closed(_))
    }

    /// Drops the messages received and never taken. For a closed connection
    /// whose application dropped its last handle: nobody can take them any
    /// more, and each holds the connection (a cycle that would keep its
    /// state, and the receive buffers the messages lie in, forever).
    pub(crate) fn drop_unread(&self) {
        let unread = std::mem::take(&mut self.st.borrow_mut().inbound);
        let mut wakers = Vec::new();
        for s in unread.streams {
            wakers.extend(s.waiters);
            // Dropped here, outside the borrow: a message's drop may touch
            // the connection (an undecided bulk offer).
            drop(s.queue);
        }
        wake_all(wakers);
    }
}

/// How many send queues' worth of broadcasts (`send_queue_messages` each) a
/// connection holds for a peer that does not keep up, under
/// [`BackPressure::Wait`], before it ends the connection.
const SHARED_BACKLOG_QUEUES: usize = 4;

/// Writes the header of a message of one type (see [`header_of`]).
type HeaderFn = fn(&mut Session, Instant, StreamId, u32, &mut [u8]) -> Result<Sent, ProtoError>;

/// The header writer of messages of type `T`.
fn header_of<T: Message>(
    s: &mut Session,
    now: Instant,
    stream: StreamId,
    payload_len: u32,
    buf: &mut [u8],
) -> Result<Sent, ProtoError> {
    s.send_header::<T>(now, stream, payload_len, buf)
}

/// A shared payload waiting for room in a connection's send queue.
pub(crate) struct ParkedShared {
    stream: StreamId,
    payload_len: u32,
    shared: SharedPayload,
    header: HeaderFn,
}

/// How long a link that failed with a protocol error stays open for its
/// `Close` frame to leave before it is shut anyway.
const FAREWELL_LINGER: std::time::Duration = std::time::Duration::from_millis(200);

/// The reason text of a clean orderly close.
pub(crate) const CLEAN_CLOSE: &str = "closed in an orderly way, everything acknowledged";

/// Removes the call slot if the caller's future is dropped before the reply.
struct CallGuard<'a> {
    conn: &'a Conn,
    id: u64,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self.id != 0 {
            self.conn.st.borrow_mut().calls.remove(&self.id);
        }
    }
}

fn push_inbound(inbound: &mut Inbound, stream: u32, item: Queued) -> Wakers {
    if let Queued::Msg(_, len) = &item {
        inbound.bytes += len;
    }
    inbound.messages += 1;
    let q = inbound.stream(stream);
    q.queue.push_back(item);
    std::mem::take(&mut q.waiters)
}

fn pop_inbound(st: &mut State, stream: u32) -> Option<Queued> {
    let item = st
        .inbound
        .streams
        .iter_mut()
        .find(|s| s.id == stream)?
        .queue
        .pop_front()?;
    st.inbound.messages -= 1;
    if let Queued::Msg(_, len) = &item {
        st.inbound.bytes -= len;
    }
    Some(item)
}

/// Every waiter but call slots and bulk (the caller handles those).
fn take_all_waiters(st: &mut State) -> Vec<Waker> {
    let mut w: Vec<Waker> = Vec::new();
    w.extend(st.flusher.take());
    w.extend(st.timer.take());
    w.extend(st.reader.take());
    w.append(&mut st.phase_waiters);
    w.append(&mut st.send_waiters);
    w.extend(st.ack_waiters.drain(..).map(|(_, w)| w));
    w.append(&mut st.link_waiters);
    w.append(&mut st.event_waiters);
    for s in &mut st.inbound.streams {
        w.extend(s.waiters.drain(..));
    }
    w
}

fn wake_all(wakers: impl IntoIterator<Item = Waker>) {
    for w in wakers {
        w.wake();
    }
}

/// Queues every control frame the session has (hello, acks, heartbeats,
/// close) into the send queue, before any data frame encoded after. Control
/// frames are small: they are written on the stack and copied in.
fn pump_control(st: &mut State) -> Result<(), Error> {
    if !st.session.wants_transmit() {
        return Ok(());
    }
    let mut stack = [0u8; 256];
    let now = clock::now();
    loop {
        match st.session.poll_transmit(now, &mut stack) {
            Ok(Some(len)) => append_bytes(st, &stack[..len]),
            Ok(None) => return Ok(()),
            Err(ProtoError::BufferTooSmall { .. }) => {
                // A hello listing many types: straight into the queue.
                let sent = encode_queued(st, &mut |s: &mut Session, now, buf: &mut [u8]| match s
                    .poll_transmit(now, buf)?
                {
                    Some(len) => Ok(Sent { seq: 0, len }),
                    None => Ok(Sent { seq: 0, len: 0 }),
                })
                .map_err(Error::from_proto)?;
                st.out.bytes += sent.len;
            }
            Err(e) => return Err(Error::from_proto(e)),
        }
    }
}

/// Data is about to go out: an acknowledgement the session owes goes with
/// it (one write) instead of waiting for its own timer.
fn piggyback_ack(st: &mut State) {
    if st.out.has_data() && st.session.ack_if_pending() {
        // A failure here surfaces on the next session call.
        let _ = pump_control(st);
    }
}

/// Appends a control frame to the send queue's control buffer.
fn append_bytes(st: &mut State, bytes: &[u8]) {
    st.out.bytes += bytes.len();
    st.out.control.extend_from_slice(bytes);
}

/// A session call writing one frame into the buffer it is given.
type Encoder<'a> = dyn FnMut(&mut Session, Instant, &mut [u8]) -> Result<Sent, ProtoError> + 'a;

/// Runs `encode` on the current pool buffer's free space, moving to a fresh
/// pool buffer, or a heap buffer of the frame's size, when it does not fit.
fn encode_queued(st: &mut State, encode: &mut Encoder<'_>) -> Result<Sent, ProtoError> {
    let now = clock::now();
    let mut needed = 0;
    if let Some(cur) = st.out.cur.as_mut() {
        match encode(&mut st.session, now, cur.spare_mut()) {
            Ok(sent) => {
                cur.advance(sent.len);
                st.out.cur_last_seq = sent.seq;
                return Ok(sent);
            }
            Err(ProtoError::BufferTooSmall { needed: n, .. }) => needed = n,
            Err(e) => return Err(e),
        }
    }
    if needed <= st.pool_buf_size {
        if let Some(mut fresh) = SendBuf::try_acquire() {
            match encode(&mut st.session, now, fresh.spare_mut()) {
                Ok(sent) => {
                    fresh.advance(sent.len);
                    st.out.seal();
                    st.out.cur = Some(fresh);
                    st.out.cur_last_seq = sent.seq;
                    return Ok(sent);
                }
                Err(ProtoError::BufferTooSmall { needed: n, .. }) => needed = needed.max(n),
                Err(e) => return Err(e),
            }
        } else {
            stats::send_pool_empty();
        }
    }
    // A frame of its own, on the heap: grow until it fits (`needed` is a
    // lower bound when serialization overflowed part-way).
    let mut size = needed.max(256).next_power_of_two();
    loop {
        let mut heap = AlignedVec::<16>::with_capacity(size);
        heap.resize(size, 0);
        match encode(&mut st.session, now, &mut heap) {
            Ok(sent) => {
                heap.resize(sent.len, 0);
                if sent.len > 0 {
                    st.out.push(OutBuf::Heap(HeapFrames(heap)), sent.seq);
                }
                return Ok(sent);
            }
            Err(ProtoError::BufferTooSmall { needed: n, .. }) if n > size => {
                size = n.next_power_of_two();
            }
            Err(ProtoError::BufferTooSmall { .. }) => size *= 2,
            Err(e) => return Err(e),
        }
    }
}
