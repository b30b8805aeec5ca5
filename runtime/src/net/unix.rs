//! Unix domain stream sockets on the ring.
//!
//! Unix sockets have no `SO_REUSEPORT`: bind a path on one core and hand
//! connections to others, or give each core its own path.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use super::listener::Listener;
use super::stream::Stream;
use super::tcp::connect_fd;
use crate::buf::{IoBuf, RecvBuf};

/// A Unix stream listener whose accepts run on the current core's ring.
pub struct UnixListener {
    inner: Listener,
    path: PathBuf,
}

impl UnixListener {
    /// Binds `path`. Fails if the path exists (remove stale sockets first).
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
        let path = path.as_ref();
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket
            .bind(&SockAddr::unix(path)?)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", path.display())))?;
        socket.listen(1024)?;
        Ok(UnixListener {
            inner: Listener::new(OwnedFd::from(socket)),
            path: path.to_path_buf(),
        })
    }

    /// The path this listener is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next connection. `None` once the core shuts down.
    pub async fn accept(&mut self) -> Option<io::Result<UnixStream>> {
        Some(self.inner.accept().await?.map(|fd| UnixStream {
            inner: Stream::new(fd),
        }))
    }
}

impl AsRawFd for UnixListener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.fd()
    }
}

/// A Unix stream connection driven by the current core's ring.
pub struct UnixStream {
    inner: Stream,
}

impl UnixStream {
    /// Connects to the socket at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        let fd = connect_fd(OwnedFd::from(socket), SockAddr::unix(path)?).await?;
        Ok(UnixStream {
            inner: Stream::new(fd),
        })
    }

    /// Receives the next chunk, in place; `Ok(None)` at end of stream or
    /// shutdown. See [`crate::net::TcpStream::recv`].
    pub async fn recv(&mut self) -> io::Result<Option<RecvBuf>> {
        self.inner.recv().await
    }

    /// Takes a chunk that has already arrived, without waiting.
    pub fn try_recv(&mut self) -> Option<io::Result<RecvBuf>> {
        self.inner.try_recv()
    }

    /// Sends what the kernel takes of `buf` in one go.
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

    /// Wraps a connected Unix stream socket (e.g. one handed over from another
    /// core by [`into_fd`](Self::into_fd)) for use on the current core.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self {
            inner: Stream::new(fd),
        }
    }

    /// A writer that queues small messages and sends each loop turn's worth
    /// in one submission (see [`BatchWriter`](crate::net::BatchWriter)).
    /// It shares the socket and may outlive this stream to finish flushing.
    pub fn batch_writer(&self) -> super::BatchWriter {
        super::BatchWriter::new(self.inner.shared_fd())
    }

    /// Shuts down one or both halves of the connection.
    pub async fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        self.inner.shutdown(how).await
    }
}

impl AsRawFd for UnixStream {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.fd()
    }
}
