//! Batching writer: many small messages, one send per loop turn.
//!
//! A [`BatchWriter`] copies each message into the current registered send
//! buffer ([`SendBuf`]) of its connection. Its flusher task, woken by the
//! first write of a loop turn, runs on the next turn and sends everything
//! queued by then in one submission (one send per filled buffer, typically
//! one). While a send is in flight, writes keep accumulating and leave with
//! the next one, so a connection never has more than one send in flight and
//! bytes stay in order.
//!
//! Calls, in order: [`crate::net::TcpStream::batch_writer`] (or the Unix
//! equivalent) -> [`BatchWriter::write`] / [`BatchWriter::try_write`] /
//! [`BatchWriter::write_with`] any number of times -> optionally
//! [`BatchWriter::flush`] to wait until all of it has left -> drop (the
//! flusher still sends what was queued, then ends).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::task::{Poll, Waker};

use crate::buf::SendBuf;
use crate::executor::spawn_local;
use crate::stats::{self, Stats};

#[derive(Default)]
struct State {
    /// Buffer being filled.
    cur: Option<SendBuf>,
    /// Messages in `cur`.
    cur_msgs: u64,
    /// Filled buffers waiting for the flusher, with their message counts.
    full: VecDeque<(SendBuf, u64)>,
    /// The flusher's waker, taken by the first write that needs it.
    flusher: Option<Waker>,
    /// Tasks waiting in `flush`.
    flush_waiters: Vec<Waker>,
    /// A send is in flight.
    sending: bool,
    /// The connection failed; every later write reports this.
    error: Option<(io::ErrorKind, String)>,
    /// The writer was dropped; the flusher ends once everything is sent.
    closed: bool,
}

impl State {
    fn idle(&self) -> bool {
        self.cur.as_ref().is_none_or(|b| b.is_empty()) && self.full.is_empty() && !self.sending
    }

    fn wake_flusher(&mut self) {
        if let Some(w) = self.flusher.take() {
            w.wake();
        }
    }

    fn check(&self) -> io::Result<()> {
        match &self.error {
            Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
            None => Ok(()),
        }
    }
}

/// Queues messages for one connection and sends each loop turn's worth in
/// one submission. Not `Send`; create it on the connection's core.
pub struct BatchWriter {
    state: Rc<RefCell<State>>,
}

impl BatchWriter {
    pub(crate) fn new(fd: Rc<OwnedFd>) -> BatchWriter {
        let state = Rc::new(RefCell::new(State::default()));
        spawn_local(flusher(fd, state.clone()));
        BatchWriter { state }
    }

    /// Queues `msg` without waiting. Fails with `WouldBlock` when the send
    /// pool has no free buffer (back-pressure: use [`write`](Self::write) to
    /// wait instead), with `InvalidInput` when `msg` is larger than one send
    /// buffer, or with the connection's error once a send failed.
    pub fn try_write(&self, msg: &[u8]) -> io::Result<()> {
        self.try_write_with(msg.len(), |dst| dst.copy_from_slice(msg))
    }

    /// Queues a message of exactly `len` bytes written in place by `fill`
    /// (serialize straight into the registered buffer). Errors as for
    /// [`try_write`](Self::try_write).
    pub fn try_write_with(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        st.check()?;
        let fits = st.cur.as_ref().is_some_and(|b| b.remaining() >= len);
        if !fits {
            let fresh = SendBuf::try_acquire()
                .ok_or_else(|| io::Error::new(io::ErrorKind::WouldBlock, "send pool exhausted"))?;
            if fresh.capacity() < len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a {len}-byte message does not fit a {}-byte send buffer; send it with send_all",
                        fresh.capacity()
                    ),
                ));
            }
            if let Some(old) = st.cur.replace(fresh) {
                let msgs = std::mem::take(&mut st.cur_msgs);
                if !old.is_empty() {
                    st.full.push_back((old, msgs));
                }
            }
        }
        let buf = st
            .cur
            .as_mut()
            .expect("a buffer with room was just ensured");
        fill(&mut buf.spare_mut()[..len]);
        buf.advance(len);
        st.cur_msgs += 1;
        st.wake_flusher();
        Ok(())
    }

    /// Queues `msg`, waiting for a send buffer if the pool is exhausted.
    pub async fn write(&self, msg: &[u8]) -> io::Result<()> {
        self.write_with(msg.len(), |dst| dst.copy_from_slice(msg))
            .await
    }

    /// Queues a message of `len` bytes written in place by `fill`, waiting
    /// for a send buffer if the pool is exhausted.
    pub async fn write_with(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> io::Result<()> {
        loop {
            let fits = {
                let st = self.state.borrow();
                st.check()?;
                st.cur.as_ref().is_some_and(|b| b.remaining() >= len)
            };
            if fits || SendBuf::available() {
                return self.try_write_with(len, fill);
            }
            // Wait for any buffer to come back, then look again.
            drop(SendBuf::acquire().await);
        }
    }

    /// Waits until everything queued so far has been handed to the kernel.
    pub async fn flush(&self) -> io::Result<()> {
        poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            st.check()?;
            if st.idle() {
                return Poll::Ready(Ok(()));
            }
            st.flush_waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Bytes queued and not yet handed to the kernel.
    pub fn queued_bytes(&self) -> usize {
        let st = self.state.borrow();
        st.cur.as_ref().map_or(0, |b| b.len()) + st.full.iter().map(|(b, _)| b.len()).sum::<usize>()
    }
}

impl Drop for BatchWriter {
    fn drop(&mut self) {
        let mut st = self.state.borrow_mut();
        st.closed = true;
        st.wake_flusher();
    }
}

/// Sends what the writer queued, one batch per wake-up, until closed and
/// drained or the connection fails.
async fn flusher(fd: Rc<OwnedFd>, state: Rc<RefCell<State>>) {
    let mut batch: Vec<(SendBuf, u64)> = Vec::new();
    loop {
        let go = poll_fn(|cx| {
            let mut st = state.borrow_mut();
            if st.error.is_some() {
                return Poll::Ready(false);
            }
            let has_data = !st.full.is_empty() || st.cur.as_ref().is_some_and(|b| !b.is_empty());
            if has_data {
                return Poll::Ready(true);
            }
            if st.closed {
                return Poll::Ready(false);
            }
            for w in st.flush_waiters.drain(..) {
                w.wake();
            }
            st.flusher = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        if !go {
            break;
        }
        {
            let mut st = state.borrow_mut();
            batch.extend(st.full.drain(..));
            if let Some(cur) = st.cur.take() {
                let msgs = std::mem::take(&mut st.cur_msgs);
                batch.push((cur, msgs));
            }
            st.sending = true;
        }
        let msgs: u64 = batch.iter().map(|(_, m)| m).sum();
        stats::with(|s| {
            Stats::add(&s.batch_sends, batch.len() as u64);
            Stats::add(&s.batched_messages, msgs);
        });
        for (buf, _) in batch.drain(..) {
            let (res, buf) = crate::net::send::send_all(&fd, buf).await;
            drop(buf);
            if let Err(e) = res {
                let mut st = state.borrow_mut();
                st.error = Some((e.kind(), format!("batched send failed: {e}")));
                break;
            }
        }
        let mut st = state.borrow_mut();
        st.sending = false;
        if st.idle() || st.error.is_some() {
            for w in st.flush_waiters.drain(..) {
                w.wake();
            }
        }
        if st.error.is_some() {
            // Drop whatever is still queued: the connection is gone.
            st.cur = None;
            st.full.clear();
            break;
        }
    }
}
