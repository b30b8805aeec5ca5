//! RDMA building blocks (feature `rdma`): the verbs interface and its two
//! implementations, the side-channel exchange, and the completion core.
//!
//! The `rdma://` transport is built from these pieces, bottom up:
//! - [`verbs`]: the narrow interface of every verbs call the transport makes
//!   ([`verbs::Verbs`]), with its types;
//! - [`ibv`]: that interface on libibverbs (InfiniBand, RoCE, Soft-RoCE);
//! - [`mem`]: that interface on an in-memory fabric with reliable-connected
//!   semantics, so everything above runs in tests without a device;
//! - [`sidechannel`]: what two peers exchange over TCP before their queue
//!   pairs are used (queue pair numbers, addresses, PSNs, credits, exposed
//!   regions, the proto handshake), as a fixed little-endian layout;
//! - [`completion`]: the dedicated completion core that owns the device,
//!   takes work requests from executor cores through the mailboxes, and
//!   routes every completion back to the core and future that asked;
//! - [`conn`]: the `rdma://` transport on top (contexts, setup, credits).

pub mod completion;
pub mod conn;
pub mod ibv;
pub mod mem;
pub mod sidechannel;
pub mod verbs;

pub use completion::PollMode;
pub use conn::{Device, RdmaConfig, RdmaContext};
