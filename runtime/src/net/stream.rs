//! The stream socket machinery shared by TCP and Unix streams.
//!
//! Receiving uses the driver's receive operation
//! ([`Receiver`](crate::driver::op::recv_multi::Receiver)): one multishot
//! `RECV` per socket, fed by the core's provided buffer ring; completions
//! queue in the socket's slot until the owner takes them as [`RecvBuf`]s.
//! [`Stream::recv_exact_into`] receives into caller memory instead: it copies
//! what the multishot already took, pauses it, and lets one plain `RECV`
//! (`MSG_WAITALL`) put the rest straight where the caller wants it.
//!
//! Sending lives in [`super::send`]; the stream types get both sides through
//! [`stream_methods!`](stream_methods).

use std::future::poll_fn;
use std::io;
use std::marker::PhantomData;
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll};

use crate::buf::{IoBufMut, RecvBuf};
use crate::driver::op::recv::Recv;
use crate::driver::op::recv_multi::{Receiver, RecvEvent};
use crate::driver::op::Op;
use crate::stats::{self, Stats};

/// A connected stream socket registered with the current core's ring.
pub(crate) struct Stream {
    /// Shared with write halves and batching writers, which may outlive the
    /// stream to finish sending.
    fd: Rc<OwnedFd>,
    recv: Option<Receiver>,
    /// The rest of a chunk `recv_exact_into` used in part: handed out first.
    leftover: Option<RecvBuf>,
    /// The receive is paused by `recv_exact_into`; the next `recv` resumes it.
    paused: bool,
    eof: bool,
    _not_send: PhantomData<*const ()>,
}

impl Stream {
    pub(crate) fn new(fd: OwnedFd) -> Stream {
        Stream {
            fd: Rc::new(fd),
            recv: None,
            leftover: None,
            paused: false,
            eof: false,
            _not_send: PhantomData,
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Stops the multishot receive until the next `recv` (see the stream
    /// types' `pause_recv`).
    pub(crate) fn pause_recv(&mut self) {
        if self.paused || self.eof {
            return;
        }
        if let Some(r) = self.recv.as_mut() {
            r.pause();
            self.paused = true;
        }
    }

    /// Receives the next chunk of bytes; `Ok(None)` at end of stream or when
    /// the core shuts down (after everything already received is handed out).
    pub(crate) async fn recv(&mut self) -> io::Result<Option<RecvBuf>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Takes a chunk that already arrived, without waiting.
    pub(crate) fn try_recv(&mut self) -> Option<io::Result<RecvBuf>> {
        if let Some(b) = self.leftover.take() {
            return Some(Ok(b));
        }
        let ev = self.recv.as_mut()?.try_recv()?;
        match self.event(ev) {
            Ok(Some(buf)) => Some(Ok(buf)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<RecvBuf>>> {
        if let Some(b) = self.leftover.take() {
            return Poll::Ready(Ok(Some(b)));
        }
        if self.eof {
            return Poll::Ready(Ok(None));
        }
        if self.recv.is_none() {
            if crate::context::is_shutting_down() {
                self.eof = true;
                return Poll::Ready(Ok(None));
            }
            self.recv = Some(Receiver::arm(self.fd.clone()));
        }
        let Some(recv) = self.recv.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        if let Some(ev) = recv.try_recv() {
            return Poll::Ready(self.event(ev));
        }
        if self.paused {
            // A direct receive paused the multishot: wait for the end of the
            // pause (its terminal completion), then re-arm.
            if !recv.is_idle() {
                recv.wait_paused(cx);
                return Poll::Pending;
            }
            recv.resume();
            self.paused = false;
        }
        if crate::context::is_shutting_down() {
            self.eof = true;
            return Poll::Ready(Ok(None));
        }
        recv.wait(cx);
        Poll::Pending
    }

    /// What a receive event means for the caller.
    fn event(&mut self, ev: RecvEvent) -> io::Result<Option<RecvBuf>> {
        match ev {
            RecvEvent::Data(chunk) => Ok(Some(RecvBuf::from_chunk(chunk))),
            RecvEvent::Eof => {
                self.eof = true;
                Ok(None)
            }
            RecvEvent::Failed(e) => {
                // Any error ends the stream for good.
                self.eof = true;
                Err(e)
            }
        }
    }

    /// Fills `buf[range]` with the next bytes of the stream; see the stream
    /// types' `recv_exact_into`.
    pub(crate) async fn recv_exact_into<B: IoBufMut>(
        &mut self,
        mut buf: B,
        range: Range<usize>,
    ) -> (io::Result<usize>, B) {
        if range.start > range.end
            || range.start > buf.bytes_init()
            || range.end > buf.bytes_total()
        {
            let msg = format!(
                "recv_exact_into range {range:?} does not fit the buffer ({} initialised of {} bytes)",
                buf.bytes_init(),
                buf.bytes_total()
            );
            return (Err(io::Error::new(io::ErrorKind::InvalidInput, msg)), buf);
        }
        let total = range.len();
        let mut filled = 0;
        // 1. What the multishot receive already took from the socket comes
        //    first, in order: a chunk left over by an earlier call, then the
        //    queued chunks, then whatever races with the pause.
        if let Some(chunk) = self.leftover.take() {
            filled += self.copy_chunk(chunk, &mut buf, range.start + filled, total - filled);
        }
        if filled < total && self.recv.is_some() && !self.eof {
            if !self.paused {
                if let Some(r) = self.recv.as_mut() {
                    r.pause();
                }
                self.paused = true;
            }
            loop {
                let ev = poll_fn(|cx| {
                    let Some(r) = self.recv.as_mut() else {
                        return Poll::Ready(None);
                    };
                    if let Some(ev) = r.try_recv() {
                        return Poll::Ready(Some(ev));
                    }
                    if r.is_idle() {
                        return Poll::Ready(None);
                    }
                    r.wait_paused(cx);
                    Poll::Pending
                })
                .await;
                match ev {
                    Some(RecvEvent::Data(chunk)) => {
                        let chunk = RecvBuf::from_chunk(chunk);
                        filled +=
                            self.copy_chunk(chunk, &mut buf, range.start + filled, total - filled);
                        if filled == total {
                            return (Ok(filled), buf);
                        }
                    }
                    Some(RecvEvent::Eof) => {
                        self.eof = true;
                        return (Ok(filled), buf);
                    }
                    Some(RecvEvent::Failed(e)) => {
                        self.eof = true;
                        return (Err(e), buf);
                    }
                    // The pause is complete: nothing more comes from the
                    // multishot until the next `recv`.
                    None => break,
                }
            }
        }
        if self.eof {
            return (Ok(filled), buf);
        }
        // 2. The rest straight into the caller's memory: the kernel's copy is
        //    the only one.
        while filled < total {
            let op = Recv::new(self.fd.clone(), buf, range.start + filled, total - filled);
            let (res, b) = Op::new(op).await;
            buf = b;
            match res {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(filled), buf)
    }

    /// Copies up to `want` bytes of `chunk` into `buf` at `at`; keeps the
    /// rest of the chunk for the next receive. Returns the bytes copied.
    fn copy_chunk<B: IoBufMut>(
        &mut self,
        mut chunk: RecvBuf,
        buf: &mut B,
        at: usize,
        want: usize,
    ) -> usize {
        let n = chunk.len().min(want);
        // SAFETY: `at + n <= range.end <= bytes_total()` (checked by the
        // caller), so the destination lies inside the buffer's memory, which
        // we own exclusively here; the source is the chunk's received bytes,
        // a different allocation (the core's buffer memory).
        unsafe {
            std::ptr::copy_nonoverlapping(chunk.as_ptr(), buf.stable_mut_ptr().add(at), n);
        }
        // SAFETY: `..at` was initialised (`range.start <= bytes_init()` and
        // everything from there to `at` was written before), and `at..at + n`
        // was just written.
        unsafe { buf.set_init(at + n) };
        stats::with(|s| Stats::add(&s.recv_direct_copied_bytes, n as u64));
        if n < chunk.len() {
            chunk.slice(n..chunk.len());
            self.leftover = Some(chunk);
        }
        n
    }

    /// Gives the descriptor back, for handing the connection to another
    /// core. Refused (the stream is returned) while a receive is armed or a
    /// write half or batching writer shares the socket.
    pub(crate) fn into_fd(self) -> Result<OwnedFd, Stream> {
        if self.recv.is_some() || self.leftover.is_some() || Rc::strong_count(&self.fd) != 1 {
            return Err(self);
        }
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never used or dropped again, so reading the field
        // moves it out exactly once; the other fields need no drop (no
        // receive, no leftover chunk, `PhantomData`).
        let fd = unsafe { std::ptr::read(&me.fd) };
        match Rc::try_unwrap(fd) {
            Ok(fd) => Ok(fd),
            Err(_) => unreachable!("sole owner checked above"),
        }
    }

    /// The descriptor, shared (for write halves and batching writers).
    pub(crate) fn shared_fd(&self) -> Rc<OwnedFd> {
        self.fd.clone()
    }

    /// The socket, for operations (which take their own reference).
    pub(crate) fn sock(&self) -> &Rc<OwnedFd> {
        &self.fd
    }
}

/// The methods every stream socket type has, over the shared [`Stream`].
/// `$kind` names the socket type in the docs ("TCP", "Unix stream").
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

        /// Stops the receive from taking more of the core's shared receive
        /// buffers until the next [`recv`](Self::recv): for a reader that must
        /// wait (its consumer is behind). The bytes wait in the socket, and
        /// the peer is slowed by the transport's own flow control. What
        /// already arrived stays queued for `recv` and
        /// [`try_recv`](Self::try_recv). Without it, an unread socket keeps
        /// filling buffers until the core's ring is empty, and every other
        /// socket of the core stops receiving.
        pub fn pause_recv(&mut self) {
            self.inner.pause_recv()
        }

        #[doc = concat!(
            "Fills `buf[range]` with the next bytes of the ", $kind, " stream, in order, ",
            "and gives the buffer back with the number of bytes received (less than ",
            "`range.len()` only at end of stream).\n\n",
            "Bytes the receive already took from the socket (queued chunks) are copied ",
            "first; a chunk used in part stays queued for the next [`recv`](Self::recv) or ",
            "[`try_recv`](Self::try_recv). Then the multishot receive is paused and one ",
            "plain `RECV` (`MSG_WAITALL`, repeated after a short read) puts the rest ",
            "straight into `buf`: the kernel's copy is the only one. The next `recv` ",
            "re-arms the multishot. Use it for large payloads whose destination is known ",
            "(bulk segments, frames larger than a receive buffer).\n\n",
            "Fails with `InvalidInput` when `range` starts past the buffer's initialised ",
            "bytes or ends past its capacity. The counters `recv_direct_bytes` and ",
            "`recv_direct_copied_bytes` say how the bytes arrived. Dropping the future ",
            "before it completes drops the buffer (once the kernel is done with it) and ",
            "the bytes already taken from the stream with it."
        )]
        pub async fn recv_exact_into<B: IoBufMut>(
            &mut self,
            buf: B,
            range: std::ops::Range<usize>,
        ) -> (io::Result<usize>, B) {
            self.inner.recv_exact_into(buf, range).await
        }

        /// Sends what the kernel takes of `buf` in one go; resolves to the count
        /// and the buffer.
        pub fn send<B: IoBuf>(
            &self,
            buf: B,
        ) -> impl std::future::Future<Output = (io::Result<usize>, B)> + '_ {
            crate::net::send::send(self.inner.sock(), buf)
        }

        /// Sends all of `buf`, then gives it back.
        pub fn send_all<B: IoBuf>(
            &self,
            buf: B,
        ) -> impl std::future::Future<Output = (io::Result<()>, B)> + '_ {
            crate::net::send::send_all(self.inner.sock(), buf)
        }

        /// Sends every byte of `bufs` in order, gathered into one `SENDMSG` (the
        /// rest follows in further ones if the kernel takes less), then gives
        /// the buffers back.
        pub async fn send_vectored<B: IoBuf>(&self, bufs: Vec<B>) -> (io::Result<()>, Vec<B>) {
            crate::net::send::send_vectored(self.inner.sock(), bufs).await
        }

        #[doc = concat!(
            "A sending half of this ", $kind, " connection that other tasks on this core ",
            "can use (and clone) while one task receives. It shares the socket, which ",
            "stays open while any half lives. See [`WriteHalf`](crate::net::WriteHalf)."
        )]
        pub fn write_half(&self) -> crate::net::WriteHalf {
            crate::net::WriteHalf::new(self.inner.shared_fd())
        }

        #[doc = concat!(
            "Takes the ", $kind, " socket out of this core, for handing the connection to ",
            "another core (send the descriptor through a mailbox, e.g. ",
            "[`crate::mailbox::post`], and rebuild it there with ",
            "[`from_fd`](Self::from_fd), which registers it on that core's ring). ",
            "Refused, with the stream handed back in the error, once a receive was ",
            "started or while a write half or batching writer shares the socket."
        )]
        pub fn into_fd(self) -> Result<OwnedFd, (io::Error, Self)> {
            self.inner.into_fd().map_err(|inner| {
                (
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a stream with an armed receive, a write half or a batching writer \
                         cannot change cores",
                    ),
                    Self { inner },
                )
            })
        }

        #[doc = concat!(
            "Wraps a connected ", $kind, " socket (e.g. one handed over from another ",
            "core by [`into_fd`](Self::into_fd)) for use on the current core."
        )]
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
            crate::net::send::shutdown(self.inner.sock(), how).await
        }
    };
}

pub(crate) use stream_methods;
