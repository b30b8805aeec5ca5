//! The send side of a datagram socket: messages are encoded straight into
//! registered send buffers as they are sent, and a flusher task hands each
//! loop turn's worth to the kernel in one submission
//! ([`UdpSender::send_batch`]: UDP GSO runs, or one `SENDMSG` per datagram).
//!
//! The queue is bounded by the configuration's send-queue marks; at a mark,
//! `send` waits, fails or drops as the back-pressure policy says. Kernel
//! errors cost the datagrams of the send that failed: they are counted,
//! reported as an event, and returned by the next `flush`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use ringwire_proto::Message;
use ringwire_runtime::net::{OutDatagram, SendMode, UdpSender};
use ringwire_runtime::{IoBuf, SendBuf};

use super::wire::{self, EncodeFailure};
use crate::endpoint::Scheme;
use crate::error::Error;
use crate::stats;

/// Size of a heap buffer used when the core's send pool is empty or its
/// buffers are smaller than a datagram.
const HEAP_BUF: usize = 64 * 1024;

/// A buffer datagrams are encoded into.
pub(crate) enum Out {
    /// A registered buffer of the core's send pool.
    Pool(SendBuf),
    /// A heap buffer and the bytes written.
    Heap(Box<[u8]>, usize),
}

impl Out {
    fn fresh(min: usize) -> Out {
        if let Some(b) = SendBuf::try_acquire() {
            if b.capacity() >= min {
                return Out::Pool(b);
            }
        } else {
            stats::send_pool_empty();
        }
        Out::Heap(vec![0; HEAP_BUF.max(min)].into_boxed_slice(), 0)
    }

    fn len(&self) -> usize {
        match self {
            Out::Pool(b) => b.len(),
            Out::Heap(_, n) => *n,
        }
    }

    fn spare(&mut self) -> &mut [u8] {
        match self {
            Out::Pool(b) => b.spare_mut(),
            Out::Heap(b, n) => &mut b[*n..],
        }
    }

    fn advance(&mut self, n: usize) {
        match self {
            Out::Pool(b) => b.advance(n),
            Out::Heap(_, len) => *len += n,
        }
    }
}

// SAFETY: a `SendBuf`'s bytes live in pinned pool memory and a boxed slice's
// on the heap; neither moves when the value moves, and nothing writes them
// while a send owns the value (writing needs `&mut`, which the send holds).
unsafe impl IoBuf for Out {
    fn stable_ptr(&self) -> *const u8 {
        match self {
            Out::Pool(b) => b.as_ptr(),
            Out::Heap(b, _) => b.as_ptr(),
        }
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

/// What `send` queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    pub(crate) seq: u64,
    pub(crate) len: usize,
    pub(crate) dropped: bool,
}

impl Sent {
    /// The datagram's sequence number (0 when it was dropped).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The datagram's length in bytes (header, archive, padding).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was queued (only for a dropped message).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the message was dropped by the
    /// [`DropNewest`](crate::BackPressure::DropNewest) policy (and counted).
    pub fn dropped(&self) -> bool {
        self.dropped
    }
}

/// The queue shared by the sockets' handles and the flusher.
pub(crate) struct SendState {
    /// Buffers with queued datagrams; the last one is being filled.
    bufs: Vec<Out>,
    list: Vec<OutDatagram>,
    queued_bytes: usize,
    /// Per destination: the next sequence number and the tick of its last
    /// use (bounded by `SendConfig::max_destinations`).
    seqs: HashMap<SocketAddr, (u64, u64)>,
    tick: u64,
    /// A batch is with the kernel.
    sending: bool,
    flusher: Option<Waker>,
    /// Tasks waiting for room (back-pressure) or for the queue to empty
    /// (`flush`).
    waiters: Vec<Waker>,
    /// The first send error since the last `flush`.
    error: Option<Error>,
    /// Failed sends not yet taken as events: (datagrams, error).
    failures: Vec<(usize, Arc<std::io::Error>)>,
    /// Every handle is gone: the flusher sends what is left and ends.
    closed: bool,
    /// The flusher ended (the core shuts down): nothing more is sent.
    ended: bool,
}

/// Limits and identity of one socket's sends.
pub(crate) struct SendConfig {
    pub(crate) sender: u64,
    pub(crate) max_datagram: usize,
    pub(crate) high_messages: usize,
    pub(crate) high_bytes: usize,
    pub(crate) policy: crate::BackPressure,
    pub(crate) mode: SendMode,
    pub(crate) max_destinations: usize,
}

impl SendState {
    pub(crate) fn new() -> SendState {
        SendState {
            bufs: Vec::new(),
            list: Vec::new(),
            queued_bytes: 0,
            seqs: HashMap::new(),
            tick: 0,
            sending: false,
            flusher: None,
            waiters: Vec::new(),
            error: None,
            failures: Vec::new(),
            closed: false,
            ended: false,
        }
    }

    fn full(&self, cfg: &SendConfig) -> bool {
        self.list.len() >= cfg.high_messages || self.queued_bytes >= cfg.high_bytes
    }

    fn wake_flusher(&mut self) {
        if let Some(w) = self.flusher.take() {
            w.wake();
        }
    }

    /// Encodes `value` into the queue, to `to` (`None`: the connected peer,
    /// whose address is `key`). Returns the sequence number and length.
    fn encode<T: Message>(
        &mut self,
        cfg: &SendConfig,
        key: SocketAddr,
        to: Option<SocketAddr>,
        value: &T,
    ) -> Result<Sent, Error> {
        let seq = self.seqs.get(&key).map_or(1, |&(next, _)| next);
        let mut fresh = false;
        loop {
            if self.bufs.is_empty() {
                self.bufs.push(Out::fresh(cfg.max_datagram));
                fresh = true;
            }
            let Some(cur) = self.bufs.last_mut() else {
                unreachable!("a buffer was just pushed")
            };
            let offset = cur.len();
            let spare = cur.spare();
            let room = spare.len().min(cfg.max_datagram);
            match wire::encode(&mut spare[..room], cfg.sender, seq, value) {
                Ok(n) => {
                    cur.advance(n);
                    self.list.push(OutDatagram {
                        buf: self.bufs.len() - 1,
                        offset,
                        len: n,
                        to,
                    });
                    self.queued_bytes += n;
                    self.count_destination(cfg, key, seq + 1);
                    self.wake_flusher();
                    return Ok(Sent {
                        seq,
                        len: n,
                        dropped: false,
                    });
                }
                Err(EncodeFailure::Full { needed }) => {
                    if needed > cfg.max_datagram || fresh {
                        return Err(Error::DatagramTooLarge {
                            needed,
                            limit: cfg.max_datagram,
                        });
                    }
                    // Room for it in a fresh buffer.
                    self.bufs.push(Out::fresh(cfg.max_datagram));
                    fresh = true;
                }
                Err(EncodeFailure::Serialize(why)) => {
                    return Err(Error::Io {
                        context: format!("serializing a {}", T::NAME),
                        source: Arc::new(std::io::Error::other(why)),
                    })
                }
            }
        }
    }

    /// Records `next` as `key`'s next sequence number. A new destination
    /// beyond the limit first makes room: the least recently used half of
    /// the destinations is forgotten (each starts over at 1 if sent to
    /// again).
    fn count_destination(&mut self, cfg: &SendConfig, key: SocketAddr, next: u64) {
        self.tick += 1;
        if self.seqs.len() >= cfg.max_destinations && !self.seqs.contains_key(&key) {
            // Ticks are unique: keeping those above the half-th smallest
            // forgets exactly half (at least one).
            let mut ticks: Vec<u64> = self.seqs.values().map(|&(_, t)| t).collect();
            let last_forgotten = (ticks.len() / 2).max(1) - 1;
            let (_, &mut cut, _) = ticks.select_nth_unstable(last_forgotten);
            let before = self.seqs.len();
            self.seqs.retain(|_, &mut (_, t)| t > cut);
            stats::udp_destinations_forgotten((before - self.seqs.len()) as u64);
        }
        self.seqs.insert(key, (next, self.tick));
    }

    /// The first send error since the last call.
    pub(crate) fn take_error(&mut self) -> Option<Error> {
        self.error.take()
    }

    /// Send failures not yet reported as events.
    pub(crate) fn take_failures(&mut self) -> Vec<(usize, Arc<std::io::Error>)> {
        std::mem::take(&mut self.failures)
    }

    /// Every handle is gone: let the flusher finish.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.wake_flusher();
    }
}

/// Whether a message may be queued now.
enum Room {
    Yes,
    Fail(Error),
    Drop,
}

/// Queues `value` for `to`, applying back-pressure at the queue's marks.
pub(crate) async fn send<T: Message>(
    state: &RefCell<SendState>,
    cfg: &SendConfig,
    key: SocketAddr,
    to: Option<SocketAddr>,
    value: &T,
) -> Result<Sent, Error> {
    let mut waited = false;
    let room = poll_fn(|cx| {
        let mut st = state.borrow_mut();
        if st.ended {
            return Poll::Ready(Room::Fail(Error::closed(
                "the socket's core is shutting down",
            )));
        }
        if !st.full(cfg) {
            return Poll::Ready(Room::Yes);
        }
        match cfg.policy {
            crate::BackPressure::Fail => Poll::Ready(Room::Fail(Error::BackPressure {
                queued_messages: st.list.len(),
                queued_bytes: st.queued_bytes,
            })),
            crate::BackPressure::DropNewest => Poll::Ready(Room::Drop),
            crate::BackPressure::Wait => {
                if !waited {
                    waited = true;
                    stats::back_pressure_wait(Scheme::Udp);
                }
                st.waiters.push(cx.waker().clone());
                st.wake_flusher();
                Poll::Pending
            }
        }
    })
    .await;
    match room {
        Room::Yes => {}
        Room::Fail(e) => return Err(e),
        Room::Drop => {
            stats::dropped(Scheme::Udp);
            return Ok(Sent {
                seq: 0,
                len: 0,
                dropped: true,
            });
        }
    }
    let sent = state.borrow_mut().encode(cfg, key, to, value)?;
    stats::message_out(Scheme::Udp, sent.len);
    Ok(sent)
}

/// Waits until everything queued so far was handed to the kernel; returns
/// the first send error since the last flush.
pub(crate) async fn flush(state: &RefCell<SendState>) -> Result<(), Error> {
    poll_fn(|cx| {
        let mut st = state.borrow_mut();
        if (st.list.is_empty() && !st.sending) || st.ended {
            return Poll::Ready(());
        }
        st.waiters.push(cx.waker().clone());
        st.wake_flusher();
        Poll::Pending
    })
    .await;
    match state.borrow_mut().take_error() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The flusher task of one socket: hands everything queued to the kernel,
/// one batch per loop turn, until every handle is gone (or the core shuts
/// down) and nothing is left.
pub(crate) async fn flusher(state: Rc<RefCell<SendState>>, sender: UdpSender, mode: SendMode) {
    loop {
        let batch = poll_fn(|cx| {
            let mut st = state.borrow_mut();
            if !st.list.is_empty() {
                st.sending = true;
                let bufs = std::mem::take(&mut st.bufs);
                let list = std::mem::take(&mut st.list);
                return Poll::Ready(Some((bufs, list)));
            }
            if st.closed || ringwire_runtime::is_shutting_down() {
                return Poll::Ready(None);
            }
            st.flusher = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let Some((bufs, list)) = batch else { break };
        let bytes: usize = list.iter().map(|d| d.len).sum();
        let (report, bufs) = sender.send_batch(bufs, &list, mode).await;
        // The buffers go back to the pool here.
        drop(bufs);
        stats::udp_sent(&report);
        let waiters = {
            let mut st = state.borrow_mut();
            st.sending = false;
            st.queued_bytes = st.queued_bytes.saturating_sub(bytes);
            if let Some(e) = report.error {
                let e = Arc::new(e);
                st.failures.push((report.failed, e.clone()));
                st.error.get_or_insert(Error::Io {
                    context: format!("sending {} datagrams", report.failed),
                    source: e,
                });
            }
            std::mem::take(&mut st.waiters)
        };
        for w in waiters {
            w.wake();
        }
    }
    // Wake whoever still waits (a flush or a full queue at shutdown).
    let waiters = {
        let mut st = state.borrow_mut();
        st.ended = true;
        std::mem::take(&mut st.waiters)
    };
    for w in waiters {
        w.wake();
    }
}
