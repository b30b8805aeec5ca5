//! Sockets driven by the current core's io_uring ring.
//!
//! All types here belong to the core that created them (they are not `Send`).
//! Create listeners on every core that should accept (TCP listeners share the
//! port through `SO_REUSEPORT`), then `accept` and `recv`/`send` in tasks.

mod batch;
pub(crate) mod listener;
mod readiness;
pub(crate) mod send;
pub(crate) mod stream;
mod tcp;
mod udp;
mod unix;

pub use batch::BatchWriter;
pub use readiness::{readable, Readable};
pub use send::WriteHalf;
pub use tcp::{TcpListenOptions, TcpListener, TcpStream};
pub use udp::{
    interface_index, BatchReport, Datagram, MulticastInterface, OutDatagram, SendMode, UdpOptions,
    UdpSender, UdpSocket, GSO_MAX_SEGMENTS, MAX_UDP_PAYLOAD,
};
pub use unix::{UnixListener, UnixStream};
