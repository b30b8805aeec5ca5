//! The stream socket machinery shared by TCP and Unix streams.
//!
//! Receiving uses one multishot `RECV` per socket, fed by the core's provided
//! buffer ring: the kernel picks a buffer for each arrival and posts a
//! completion, which queues in the socket's slot until the owner takes it.
//! When the ring runs dry the multishot stops with `ENOBUFS`; the socket is
//! then parked on the driver's starved list and re-armed as soon as buffers
//! come back. No data is lost meanwhile: it waits in the socket.
//!
//! Sending takes any [`IoBuf`] and gives it back with the result.

use std::any::Any;
use std::future::poll_fn;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll};

use io_uring::{cqueue, opcode, types};

use crate::buf::{IoBuf, RecvBuf, SendBuf};
use crate::core::with_core;
use crate::driver::bufring::BGID;
use crate::driver::op::Op;
use crate::driver::{Driver, Lifecycle, Multi};
use crate::stats::Stats;

/// `IORING_SEND_ZC_REPORT_USAGE`: the notification says whether the kernel
/// copied after all.
const IORING_SEND_ZC_REPORT_USAGE: u16 = 1 << 3;

/// A connected stream socket registered with the current core's ring.
pub(crate) struct Stream {
    /// Shared with batching writers, which may outlive the stream to flush.
    fd: Rc<OwnedFd>,
    recv_key: Option<usize>,
    eof: bool,
    _not_send: PhantomData<*const ()>,
}

impl Stream {
    pub(crate) fn new(fd: OwnedFd) -> Stream {
        Stream {
            fd: Rc::new(fd),
            recv_key: None,
            eof: false,
            _not_send: PhantomData,
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Receives the next chunk of bytes; `Ok(None)` at end of stream or when
    /// the core shuts down (after everything already received is handed out).
    pub(crate) async fn recv(&mut self) -> io::Result<Option<RecvBuf>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Takes a chunk that already arrived, without waiting.
    pub(crate) fn try_recv(&mut self) -> Option<io::Result<RecvBuf>> {
        let key = self.recv_key?;
        match self.take_queued(key) {
            Some(Ok(Some(buf))) => Some(Ok(buf)),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(Err(e)),
            None => None,
        }
    }

    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<RecvBuf>>> {
        if self.eof {
            return Poll::Ready(Ok(None));
        }
        let key = match self.recv_key {
            Some(k) => k,
            None => {
                if with_core(|core| core.is_shutting_down()) {
                    self.eof = true;
                    return Poll::Ready(Ok(None));
                }
                let k = self.arm();
                self.recv_key = Some(k);
                k
            }
        };
        if let Some(r) = self.take_queued(key) {
            return Poll::Ready(r);
        }
        with_core(|core| {
            if core.is_shutting_down() {
                self.eof = true;
                return Poll::Ready(Ok(None));
            }
            let mut driver = core.driver.borrow_mut();
            let fd = self.fd.as_raw_fd();
            let mut rearm = false;
            if let Lifecycle::Multi(m) = &mut driver.slot_mut(key).state {
                // A multishot can also stop without an error (the kernel ends
                // it on some internal conditions): start it again.
                rearm = !m.armed && !m.starved;
                match &mut m.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
            }
            if rearm {
                rearm_recv(core, &mut driver, key, fd);
            }
            Poll::Pending
        })
    }

    /// Pops queued completions until one means something for the caller.
    fn take_queued(&mut self, key: usize) -> Option<io::Result<Option<RecvBuf>>> {
        with_core(|core| {
            let mut driver = core.driver.borrow_mut();
            loop {
                let cqe = match &mut driver.slot_mut(key).state {
                    Lifecycle::Multi(m) => m.queue.pop_front()?,
                    _ => return None,
                };
                if cqe.result > 0 {
                    let Some(bid) = cqueue::buffer_select(cqe.flags) else {
                        return Some(Err(io::Error::other(
                            "receive completion without a buffer id",
                        )));
                    };
                    let len = cqe.result as usize;
                    Stats::add(&core.stats.bytes_received, len as u64);
                    let bufs = core.bufs.borrow();
                    let ptr = bufs.buf_ptr(bid);
                    return Some(Ok(Some(RecvBuf::new(ptr, len, bid, bufs.mem().clone()))));
                }
                if cqe.result == 0 {
                    if let Some(bid) = cqueue::buffer_select(cqe.flags) {
                        core.bufs.borrow_mut().recycle(bid);
                    }
                    self.eof = true;
                    return Some(Ok(None));
                }
                if cqe.result == -libc::ENOBUFS {
                    Stats::add(&core.stats.bufring_starvation, 1);
                    let fd = self.fd.as_raw_fd();
                    if let Lifecycle::Multi(m) = &mut driver.slot_mut(key).state {
                        if !m.armed && !m.starved {
                            m.starved = true;
                            driver.starved.push((key, fd));
                        }
                    }
                    continue;
                }
                // Any other error ends the stream for good (a buffer it may
                // carry goes back to the ring).
                if let Some(bid) = cqueue::buffer_select(cqe.flags) {
                    core.bufs.borrow_mut().recycle(bid);
                }
                self.eof = true;
                return Some(Err(io::Error::from_raw_os_error(-cqe.result)));
            }
        })
    }

    fn arm(&self) -> usize {
        let fd = self.fd.as_raw_fd();
        with_core(|core| {
            core.receiving_streams.set(core.receiving_streams.get() + 1);
            let mut driver = core.driver.borrow_mut();
            let state = Lifecycle::Multi(Multi {
                armed: true,
                ..Multi::default()
            });
            // SAFETY: a buffer-select receive names no memory of ours: the
            // kernel picks buffers from the registered ring, which outlives the
            // ring's operations. The fd stays open until the slot is cancelled.
            unsafe { driver.submit(state, false, || recv_entry(core, fd)) }
        })
    }

    /// Gives the descriptor back, for handing the connection to another
    /// core. Refused (the stream is returned) while a receive is armed or a
    /// batching writer shares the socket.
    pub(crate) fn into_fd(self) -> Result<OwnedFd, Stream> {
        if self.recv_key.is_some() || Rc::strong_count(&self.fd) != 1 {
            return Err(self);
        }
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never used or dropped again, so reading the field
        // moves it out exactly once; the other fields need no drop (no
        // receive slot, `PhantomData`).
        let fd = unsafe { std::ptr::read(&me.fd) };
        match Rc::try_unwrap(fd) {
            Ok(fd) => Ok(fd),
            Err(_) => unreachable!("sole owner checked above"),
        }
    }

    /// The descriptor, shared (for batching writers).
    pub(crate) fn shared_fd(&self) -> Rc<OwnedFd> {
        self.fd.clone()
    }

    /// Sends bytes from `buf` starting at `offset`; returns how many went out.
    pub(crate) async fn send_at<B: IoBuf>(&self, buf: B, offset: usize) -> (io::Result<usize>, B) {
        send_at(&self.fd, buf, offset).await
    }

    /// Sends all of `buf`.
    pub(crate) async fn send_all<B: IoBuf>(&self, buf: B) -> (io::Result<()>, B) {
        send_all(&self.fd, buf).await
    }

    /// Shuts down the write, read or both halves.
    pub(crate) async fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        let how = match how {
            std::net::Shutdown::Read => libc::SHUT_RD,
            std::net::Shutdown::Write => libc::SHUT_WR,
            std::net::Shutdown::Both => libc::SHUT_RDWR,
        };
        let entry = opcode::Shutdown::new(types::Fd(self.fd()), how).build();
        // SAFETY: a shutdown names no memory; the op holds the socket so the
        // descriptor number stays ours until the kernel is done.
        let (cqe, _fd) = unsafe { Op::submit(self.fd.clone(), entry) }.await;
        cqe.io_result().map(drop)
    }
}

/// Sends bytes from `buf` starting at `offset` on `fd`; returns how many went
/// out. Registered [`SendBuf`]s take the fixed-buffer path; sends at or above
/// the core's zero-copy threshold use `SEND_ZC`.
///
/// The op holds a reference to the socket: its descriptor cannot be closed,
/// and its number reused by another connection, before the SQE naming it has
/// been submitted and completed, even if the stream is dropped meanwhile.
pub(crate) async fn send_at<B: IoBuf>(
    sock: &Rc<OwnedFd>,
    buf: B,
    offset: usize,
) -> (io::Result<usize>, B) {
    let len = buf.bytes_init().saturating_sub(offset);
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    // SAFETY: `offset <= bytes_init()` (saturating above), so the pointer
    // is inside the buffer; `IoBuf` guarantees the bytes stay put while
    // the op owns `buf`.
    let ptr = unsafe { buf.stable_ptr().add(offset.min(buf.bytes_init())) };
    let fixed = (&buf as &dyn Any)
        .downcast_ref::<SendBuf>()
        .map(SendBuf::index);
    let fd = types::Fd(sock.as_raw_fd());
    let entry = with_core(|core| {
        let fixed = fixed.filter(|_| core.io.fixed_send);
        if core.io.zc_threshold.is_some_and(|t| len as usize >= t) {
            Stats::add(&core.stats.zc_sends, 1);
            if fixed.is_some() {
                Stats::add(&core.stats.fixed_sends, 1);
            }
            opcode::SendZc::new(fd, ptr, len)
                .buf_index(fixed)
                .flags(libc::MSG_NOSIGNAL)
                .zc_flags(IORING_SEND_ZC_REPORT_USAGE)
                .build()
        } else if let Some(index) = fixed {
            Stats::add(&core.stats.fixed_sends, 1);
            // A write on a stream socket ignores the offset. It has no
            // MSG_NOSIGNAL: Rust programs ignore SIGPIPE from the start.
            opcode::WriteFixed::new(fd, ptr, len, index).build()
        } else {
            opcode::Send::new(fd, ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        }
    });
    // SAFETY: the entry points into `buf`'s stable bytes (for a fixed
    // buffer, inside the registered buffer `index`), owned by the op, and
    // names the socket the op keeps open.
    let (cqe, (buf, _sock)) = unsafe { Op::submit((buf, sock.clone()), entry) }.await;
    match cqe.io_result() {
        Ok(n) => {
            with_core(|c| Stats::add(&c.stats.bytes_sent, u64::from(n)));
            (Ok(n as usize), buf)
        }
        Err(e) => (Err(e), buf),
    }
}

/// Sends all of `buf` on `fd`.
pub(crate) async fn send_all<B: IoBuf>(sock: &Rc<OwnedFd>, mut buf: B) -> (io::Result<()>, B) {
    let total = buf.bytes_init();
    let mut done = 0;
    while done < total {
        let (res, b) = send_at(sock, buf, done).await;
        buf = b;
        match res {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), buf),
        }
    }
    (Ok(()), buf)
}

/// The receive SQE for `fd`: multishot, or single-shot when the core is set
/// up that way; both select a buffer from the core's ring.
fn recv_entry(core: &crate::core::Core, fd: RawFd) -> io_uring::squeue::Entry {
    if core.io.recv_multishot {
        opcode::RecvMulti::new(types::Fd(fd), BGID).build()
    } else {
        opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), 0)
            .buf_group(BGID)
            .build()
            .flags(io_uring::squeue::Flags::BUFFER_SELECT)
    }
}

/// Starts (again) the receive of slot `key` on `fd`.
pub(crate) fn rearm_recv(core: &crate::core::Core, driver: &mut Driver, key: usize, fd: RawFd) {
    match &mut driver.slot_mut(key).state {
        Lifecycle::Multi(m) if !m.armed => {
            m.armed = true;
            m.starved = false;
        }
        // Owner gone (slot ignored) or already running.
        _ => return,
    }
    // SAFETY: as in `Stream::arm`: buffer-select receives name no memory of
    // ours, and the owner keeps `fd` open while the slot is live.
    unsafe { driver.resubmit(key, recv_entry(core, fd)) };
}

impl Drop for Stream {
    fn drop(&mut self) {
        let Some(key) = self.recv_key else { return };
        crate::core::try_with_core(|core| {
            core.receiving_streams
                .set(core.receiving_streams.get().saturating_sub(1));
            let mut driver = core.driver.borrow_mut();
            let slot = driver.slot_mut(key);
            let (armed, queued) = match &mut slot.state {
                Lifecycle::Multi(m) => (m.armed, std::mem::take(&mut m.queue)),
                _ => (false, Default::default()),
            };
            // Buffers that arrived but were never taken go back to the ring.
            {
                let mut bufs = core.bufs.borrow_mut();
                for cqe in queued {
                    if let Some(bid) = cqueue::buffer_select(cqe.flags) {
                        bufs.recycle(bid);
                    }
                }
            }
            if armed {
                // The slot keeps the socket open until the final CQE: an SQE
                // not yet submitted must not find its descriptor number
                // closed and handed to another connection.
                driver.slot_mut(key).state = Lifecycle::Ignored(Box::new(self.fd.clone()));
                driver.cancel(key);
            } else {
                driver.remove(key);
                driver.starved.retain(|(k, _)| *k != key);
            }
        });
        // The descriptor closes when `fd` drops; an armed receive holds its
        // own reference to the socket until its cancellation completes.
    }
}

/// The methods every stream socket type has, over the shared [`Stream`].
macro_rules! stream_methods {
    ($kind:literal) => {
        /// Receives the next chunk of bytes, in place in a kernel-filled buffer.
        /// `Ok(None)` at end of stream, or once the core shuts down and everything
        /// already received has been handed out.
        pub async fn recv(&mut self) -> io::Result<Option<RecvBuf>> {
            self.inner.recv().await
        }

        /// Takes a chunk that has already arrived, without waiting. Use after
        /// [`recv`](Self::recv) to drain everything ready in one go.
        pub fn try_recv(&mut self) -> Option<io::Result<RecvBuf>> {
            self.inner.try_recv()
        }

        /// Sends what the kernel takes of `buf` in one go; returns the count and
        /// the buffer.
        pub async fn send<B: IoBuf>(&self, buf: B) -> (io::Result<usize>, B) {
            self.inner.send_at(buf, 0).await
        }

        /// Sends all of `buf`, then gives it back.
        pub async fn send_all<B: IoBuf>(&self, buf: B) -> (io::Result<()>, B) {
            self.inner.send_all(buf).await
        }

        /// Takes the socket out of this core, for handing the connection to
        /// another core (send the descriptor through a mailbox, e.g.
        /// [`crate::mailbox::post`], and rebuild it there with
        /// [`from_fd`](Self::from_fd), which registers it on that core's ring).
        /// Refused, with the stream handed back in the error, once a receive was
        /// started or while a batching writer shares the socket.
        pub fn into_fd(self) -> Result<OwnedFd, (io::Error, Self)> {
            self.inner.into_fd().map_err(|inner| {
                (
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a stream with an armed receive or a batching writer cannot change cores",
                    ),
                    Self { inner },
                )
            })
        }

        /// Wraps a connected TCP socket (e.g. one handed over from another
        /// core by [`into_fd`](Self::into_fd)) for use on the current core.
        pub fn from_fd(fd: OwnedFd) -> Self {
            Self {
                inner: Stream::new(fd),
            }
        }

        /// A writer that queues small messages and sends each loop turn's worth
        /// in one submission (see [`BatchWriter`](crate::net::BatchWriter)).
        /// It shares the socket and may outlive this stream to finish flushing.
        pub fn batch_writer(&self) -> crate::net::BatchWriter {
            crate::net::BatchWriter::new(self.inner.shared_fd())
        }

        /// Shuts down one or both halves of the connection.
        pub async fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
            self.inner.shutdown(how).await
        }
    };
}

pub(crate) use stream_methods;
