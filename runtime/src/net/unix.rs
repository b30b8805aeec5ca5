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
use crate::buf::{IoBuf, IoBufMut, RecvBuf};

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

    super::stream::stream_methods!("Unix stream");
}

impl AsRawFd for UnixStream {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.fd()
    }
}
