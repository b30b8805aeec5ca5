//! TCP on the ring.
//!
//! [`TcpListener::bind`] sets `SO_REUSEPORT` by default, so every core can bind
//! the same address and the kernel spreads incoming connections across them.
//! Accepted and connected streams get `TCP_NODELAY` by default.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::listener::Listener;
use super::stream::Stream;
use crate::buf::{IoBuf, IoBufMut, RecvBuf};
use crate::driver::op::connect::Connect;
use crate::driver::op::Op;

/// Options for [`TcpListener::bind_with`].
///
/// Start from the default and change what you need with the setters (the
/// struct is `#[non_exhaustive]`, so that options can be added without
/// breaking callers; its fields stay readable):
///
/// ```
/// use ringwire_runtime::net::TcpListenOptions;
///
/// let opts = TcpListenOptions::default().reuse_port(false).backlog(128);
/// assert!(!opts.reuse_port);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TcpListenOptions {
    /// Set `SO_REUSEPORT` so several cores (or processes) can listen on the
    /// same address. Default: true.
    pub reuse_port: bool,
    /// Listen backlog. Default: 1024.
    pub backlog: i32,
    /// Set `TCP_NODELAY` on accepted streams. Default: true.
    pub nodelay: bool,
}

impl Default for TcpListenOptions {
    fn default() -> Self {
        TcpListenOptions {
            reuse_port: true,
            backlog: 1024,
            nodelay: true,
        }
    }
}

impl TcpListenOptions {
    /// Sets `SO_REUSEPORT` (default: true).
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }

    /// Sets the listen backlog (default: 1024).
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Sets `TCP_NODELAY` on accepted streams (default: true).
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }
}

/// A TCP listener whose accepts run on the current core's ring.
pub struct TcpListener {
    inner: Listener,
    nodelay: bool,
    local: SocketAddr,
}

impl TcpListener {
    /// Binds `addr` with default options (`SO_REUSEPORT`, backlog 1024).
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        Self::bind_with(addr, &TcpListenOptions::default())
    }

    /// Binds `addr` with explicit options.
    pub fn bind_with(addr: SocketAddr, opts: &TcpListenOptions) -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if opts.reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket
            .bind(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
        socket.listen(opts.backlog)?;
        let local = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("listener has no IP address"))?;
        Ok(TcpListener {
            inner: Listener::new(OwnedFd::from(socket)),
            nodelay: opts.nodelay,
            local,
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Waits for the next connection. `None` once the core shuts down.
    pub async fn accept(&mut self) -> Option<io::Result<TcpStream>> {
        let fd = match self.inner.accept().await? {
            Ok(fd) => fd,
            Err(e) => return Some(Err(e)),
        };
        let socket = Socket::from(fd);
        if self.nodelay {
            if let Err(e) = socket.set_tcp_nodelay(true) {
                return Some(Err(e));
            }
        }
        Some(Ok(TcpStream {
            inner: Stream::new(OwnedFd::from(socket)),
        }))
    }
}

impl AsRawFd for TcpListener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.fd()
    }
}

/// A TCP connection driven by the current core's ring.
///
/// Receives use a multishot receive with the core's provided buffers; sends
/// take ownership of the buffer until the kernel is done with it.
pub struct TcpStream {
    inner: Stream,
}

impl TcpStream {
    /// Connects to `addr` (with `TCP_NODELAY` set).
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_tcp_nodelay(true)?;
        let fd = connect_fd(OwnedFd::from(socket), SockAddr::from(addr)).await?;
        Ok(TcpStream {
            inner: Stream::new(fd),
        })
    }

    super::stream::stream_methods!("TCP");

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        socket_ref(&self.inner)
            .peer_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("peer has no IP address"))
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        socket_ref(&self.inner)
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("socket has no IP address"))
    }

    /// Sets or clears `TCP_NODELAY`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        socket_ref(&self.inner).set_tcp_nodelay(on)
    }
}

impl AsRawFd for TcpStream {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.fd()
    }
}

fn socket_ref(s: &Stream) -> socket2::SockRef<'_> {
    socket2::SockRef::from(s)
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd()
    }
}

impl std::os::fd::AsFd for Stream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the descriptor is owned by the stream and open while the
        // borrow (tied to `&self`) lives.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd()) }
    }
}

/// Connects `fd` to `addr` on the ring.
pub(crate) async fn connect_fd(fd: OwnedFd, addr: SockAddr) -> io::Result<OwnedFd> {
    let (res, fd, addr) = Op::new(Connect::new(fd, addr)).await;
    match res {
        Ok(()) => Ok(fd),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("connect to {}: {e}", describe(&addr)),
        )),
    }
}

fn describe(addr: &SockAddr) -> String {
    if let Some(a) = addr.as_socket() {
        a.to_string()
    } else if let Some(p) = addr.as_pathname() {
        p.display().to_string()
    } else {
        "address".to_string()
    }
}
