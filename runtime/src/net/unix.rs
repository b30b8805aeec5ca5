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

    /// Binds `name` in Linux's abstract socket namespace (no file is
    /// created; the name disappears with the last socket bound to it).
    pub fn bind_abstract(name: &[u8]) -> io::Result<UnixListener> {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.bind(&abstract_addr(name)?).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("bind @{}: {e}", String::from_utf8_lossy(name)),
            )
        })?;
        socket.listen(1024)?;
        Ok(UnixListener {
            inner: Listener::new(OwnedFd::from(socket)),
            path: abstract_path(name),
        })
    }

    /// The path this listener is bound to (for an abstract name: the name
    /// behind a leading NUL byte).
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

    /// Connects to `name` in Linux's abstract socket namespace.
    pub async fn connect_abstract(name: &[u8]) -> io::Result<UnixStream> {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        let fd = connect_fd(OwnedFd::from(socket), abstract_addr(name)?).await?;
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

/// The path form of an abstract name: a leading NUL byte, then the name
/// (how the kernel and socket2 tell the two namespaces apart).
fn abstract_path(name: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let mut bytes = Vec::with_capacity(name.len() + 1);
    bytes.push(0);
    bytes.extend_from_slice(name);
    PathBuf::from(std::ffi::OsStr::from_bytes(&bytes))
}

fn abstract_addr(name: &[u8]) -> io::Result<SockAddr> {
    if name.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an abstract socket name must not be empty",
        ));
    }
    SockAddr::unix(abstract_path(name))
}
