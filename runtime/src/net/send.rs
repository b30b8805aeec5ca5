//! Sending on stream sockets: one send ([`send`]), all of a buffer
//! ([`send_all`]), a gather of many buffers in one `SENDMSG`
//! ([`send_vectored`]), shutdown, and [`WriteHalf`], a sending handle other
//! tasks share while one task receives.
//!
//! Every send takes any [`IoBuf`] and gives it back with the result, so the
//! same allocation is reused without copying. The per-message futures are
//! written by hand ([`SendOnce`], [`SendAll`]): the caller's state machine
//! moves them on every message, so they are kept small.

use std::any::Any;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll};

use crate::buf::{IoBuf, SendBuf};
use crate::driver::op::send::Send as SendOp;
use crate::driver::op::sendmsg::SendMsg;
use crate::driver::op::shutdown::Shutdown;
use crate::driver::op::Op;

/// Sends bytes from `buf` starting at `offset` on `sock`; resolves to how
/// many went out, and the buffer. Registered [`SendBuf`]s take the
/// fixed-buffer path when the core is set up for it; sends at or above the
/// core's zero-copy threshold use `SEND_ZC`.
///
/// The operation holds a reference to the socket: its descriptor cannot be
/// closed, and its number reused by another connection, before the SQE
/// naming it has completed, even if the stream is dropped meanwhile.
pub(crate) fn send_at<B: IoBuf>(sock: &Rc<OwnedFd>, buf: B, offset: usize) -> Op<SendOp<B>> {
    let registered = (&buf as &dyn Any)
        .downcast_ref::<SendBuf>()
        .map(SendBuf::index);
    Op::new(SendOp::new(sock.clone(), buf, offset, registered))
}

/// Like [`send_at`] from offset 0, but submitted when first polled (as an
/// `async fn` would be).
pub(crate) fn send<B: IoBuf>(sock: &Rc<OwnedFd>, buf: B) -> SendOnce<'_, B> {
    SendOnce {
        sock,
        state: SendOnceState::Start(buf),
    }
}

/// The future of [`send`].
pub(crate) struct SendOnce<'a, B: IoBuf> {
    sock: &'a Rc<OwnedFd>,
    state: SendOnceState<B>,
}

enum SendOnceState<B: IoBuf> {
    Start(B),
    Sending(Op<SendOp<B>>),
    Finished,
}

impl<B: IoBuf> Future for SendOnce<'_, B> {
    type Output = (io::Result<usize>, B);

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let SendOnceState::Start(_) = this.state {
            let SendOnceState::Start(buf) =
                std::mem::replace(&mut this.state, SendOnceState::Finished)
            else {
                unreachable!("matched just above")
            };
            this.state = SendOnceState::Sending(send_at(this.sock, buf, 0));
        }
        match &mut this.state {
            SendOnceState::Sending(op) => {
                let out = std::task::ready!(std::pin::Pin::new(op).poll(cx));
                this.state = SendOnceState::Finished;
                Poll::Ready(out)
            }
            _ => panic!("SendOnce polled after it completed"),
        }
    }
}

/// Sends all of `buf` on `sock` (one send, more only if the kernel takes
/// less), then gives it back.
///
/// A hand-written future rather than an `async fn` loop over [`send_at`]:
/// it stays small (the per-message path moves it into the caller's state).
pub(crate) fn send_all<B: IoBuf>(sock: &Rc<OwnedFd>, buf: B) -> SendAll<'_, B> {
    SendAll {
        sock,
        state: SendAllState::Start(buf),
    }
}

/// The future of [`send_all`].
pub(crate) struct SendAll<'a, B: IoBuf> {
    sock: &'a Rc<OwnedFd>,
    state: SendAllState<B>,
}

enum SendAllState<B: IoBuf> {
    Start(B),
    Sending {
        op: Op<SendOp<B>>,
        done: usize,
        total: usize,
    },
    Finished,
}

impl<B: IoBuf> Future for SendAll<'_, B> {
    type Output = (io::Result<()>, B);

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `SendAll` is `Unpin`: `Op` is, and `B: IoBuf` is.
        let this = &mut *self;
        loop {
            match std::mem::replace(&mut this.state, SendAllState::Finished) {
                SendAllState::Start(buf) => {
                    let total = buf.bytes_init();
                    if total == 0 {
                        return Poll::Ready((Ok(()), buf));
                    }
                    this.state = SendAllState::Sending {
                        op: send_at(this.sock, buf, 0),
                        done: 0,
                        total,
                    };
                }
                SendAllState::Sending {
                    mut op,
                    mut done,
                    total,
                } => {
                    let (res, buf) = match std::pin::Pin::new(&mut op).poll(cx) {
                        Poll::Pending => {
                            this.state = SendAllState::Sending { op, done, total };
                            return Poll::Pending;
                        }
                        Poll::Ready(out) => out,
                    };
                    match res {
                        Ok(0) => return Poll::Ready((Err(io::ErrorKind::WriteZero.into()), buf)),
                        Ok(n) => done += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Poll::Ready((Err(e), buf)),
                    }
                    if done >= total {
                        return Poll::Ready((Ok(()), buf));
                    }
                    this.state = SendAllState::Sending {
                        op: send_at(this.sock, buf, done),
                        done,
                        total,
                    };
                }
                SendAllState::Finished => panic!("SendAll polled after it completed"),
            }
        }
    }
}

/// Sends every byte of `bufs`, in order, gathered into `SENDMSG`s (one,
/// unless the kernel takes less or there are more than 1024 buffers).
pub(crate) async fn send_vectored<B: IoBuf>(
    sock: &Rc<OwnedFd>,
    mut bufs: Vec<B>,
) -> (io::Result<()>, Vec<B>) {
    let total: usize = bufs.iter().map(IoBuf::bytes_init).sum();
    let mut done = 0;
    while done < total {
        let (res, b) = Op::new(SendMsg::new(sock.clone(), bufs, done)).await;
        bufs = b;
        match res {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), bufs),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), bufs),
        }
    }
    (Ok(()), bufs)
}

/// Shuts down one or both directions of `sock`.
pub(crate) async fn shutdown(sock: &Rc<OwnedFd>, how: std::net::Shutdown) -> io::Result<()> {
    Op::new(Shutdown::new(sock.clone(), how)).await
}

/// The sending side of a stream socket, shared by any number of tasks on the
/// socket's core (see `TcpStream::write_half`).
///
/// Cloning is cheap (it shares the socket). Sends from different tasks are
/// each submitted whole, but a send the kernel takes in part is finished by
/// further sends, so give each message to one `send_all` (or
/// [`send_vectored`](WriteHalf::send_vectored)) and do not interleave
/// messages of one logical stream from several tasks without ordering them.
/// The socket stays open while any half, the stream or a pending send holds
/// it. Not `Send`: it belongs to the socket's core.
#[derive(Clone)]
pub struct WriteHalf {
    fd: Rc<OwnedFd>,
}

impl WriteHalf {
    pub(crate) fn new(fd: Rc<OwnedFd>) -> WriteHalf {
        WriteHalf { fd }
    }

    /// Sends what the kernel takes of `buf` in one go; resolves to the count
    /// and the buffer.
    pub fn send<B: IoBuf>(&self, buf: B) -> impl Future<Output = (io::Result<usize>, B)> + '_ {
        send(&self.fd, buf)
    }

    /// Sends all of `buf`, then gives it back.
    pub fn send_all<B: IoBuf>(&self, buf: B) -> impl Future<Output = (io::Result<()>, B)> + '_ {
        send_all(&self.fd, buf)
    }

    /// Sends every byte of `bufs` in order, gathered into one `SENDMSG` (the
    /// rest follows in further ones if the kernel takes less), then gives
    /// the buffers back.
    pub async fn send_vectored<B: IoBuf>(&self, bufs: Vec<B>) -> (io::Result<()>, Vec<B>) {
        send_vectored(&self.fd, bufs).await
    }

    /// Shuts down one or both directions of the connection.
    pub async fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        shutdown(&self.fd, how).await
    }
}

impl AsRawFd for WriteHalf {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl std::fmt::Debug for WriteHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteHalf")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}
