//! ringwire-transports: endpoints joining the runtime and the wire format.
//!
//! Not built yet. This crate will hold the one endpoint syntax
//! (`tcp://host:port`, `unix:///path`, `udp://group:port?iface=addr`,
//! `mem://name`, `tls://host:port`, `rdma://host:port` behind the `rdma`
//! feature) and the transports that drive a `ringwire_proto::Session` over
//! the runtime's sockets, buffers and mailboxes. Until then, use
//! `ringwire_runtime::net` for sockets and `ringwire_proto` for framing
//! directly; see `docs/ARCHITECTURE.md`.

#[cfg(feature = "rdma")]
pub mod rdma;
