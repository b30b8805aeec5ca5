//! Cross-core mailboxes: the core mesh ([`post`], [`submit_to`]), typed
//! [`channel()`]s, doorbells, and send buffers lent across cores
//! ([`RemoteBuf`]).
//!
//! Every ordered pair of cores has one bounded single-producer
//! single-consumer [`ring`]: the sending core owns the
//! [`Producer`](ring::Producer), the receiving core the
//! [`Consumer`](ring::Consumer). Nothing is shared between more than two
//! cores and nothing takes a lock.
//!
//! How the pieces are called, in order:
//! 1. At start-up, [`ring::channel`] once per ordered pair of cores; each
//!    endpoint moves to the thread of its core.
//! 2. Sending: [`ring::Producer::try_push`] (or a batch with
//!    [`ring::Producer::push_iter`]). A full ring hands the message back
//!    ([`ring::TrySendError::Full`]): back-pressure, never a silent drop.
//!    Once per batch, [`ring::Producer::needs_wakeup`] says whether the
//!    receiving core may be asleep and its doorbell must be rung.
//! 3. Receiving, once per loop turn: drain every inbound ring in batches
//!    ([`ring::Consumer::pop_batch`]).
//! 4. Before sleeping: [`ring::Consumer::prepare_park_all`] on the inbound
//!    rings (one barrier for all of them); sleep only if it returns `true`;
//!    after waking, [`ring::Consumer::cancel_park`] on all of them. The
//!    protocol and why it never loses a wake-up are in the [`ring`] module
//!    docs.

pub mod channel;
pub(crate) mod doorbell;
pub(crate) mod mesh;
mod remote_buf;
pub mod ring;

pub use channel::{channel, Receiver, Sender};
pub use doorbell::Doorbell;
pub(crate) use mesh::{build as build_mesh, Envelope, Mesh};
pub use mesh::{post, submit_to, try_post, MailboxError, TryPostError};
pub use remote_buf::RemoteBuf;
