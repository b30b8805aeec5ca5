//! ringwire-runtime: a thread-per-core runtime on io_uring.
//!
//! A [`Runtime`] runs one pinned thread per core. Each core owns one io_uring
//! ring, a single-threaded executor of `!Send` tasks, a provided buffer ring
//! for receives, and plain counters; cores share no lock on the data path.
//!
//! ```no_run
//! use ringwire_runtime::{net::TcpListener, spawn_local, Runtime};
//! use std::time::Duration;
//!
//! let rt = Runtime::builder().cpus([0]).build()?;
//! rt.spawn_on_all(|_core| async move {
//!     let mut listener = TcpListener::bind("127.0.0.1:7000".parse().unwrap())?;
//!     while let Some(conn) = listener.accept().await {
//!         let mut conn = conn?;
//!         spawn_local(async move {
//!             while let Ok(Some(buf)) = conn.recv().await {
//!                 // Echo straight from the kernel-filled buffer.
//!                 if conn.send_all(buf).await.0.is_err() {
//!                     break;
//!                 }
//!             }
//!         });
//!     }
//!     Ok::<_, std::io::Error>(())
//! });
//! # std::thread::sleep(Duration::from_millis(10));
//! rt.shutdown(Duration::from_secs(1));
//! # Ok::<_, std::io::Error>(())
//! ```
//!
//! Modules, in the order a program meets them: [`runtime`] (builder, cores,
//! shutdown, handles), [`executor`] (tasks), [`net`] (sockets), [`time`]
//! (timers), [`buf`] (buffers handed to and from the kernel), [`mailbox`]
//! (cross-core messages), [`stats`] (counters and histograms), [`metrics`]
//! (the HTTP endpoint), [`signal`] (Ctrl-C).
//!
//! Inside, the modules form layers that import only downwards (checked by
//! `.ci/layers.py`; the map is in `docs/ARCHITECTURE.md`): `sys`, `loom`,
//! `scoped`, `error`, `histogram` -> `stats`, `stall` -> `context` -> `driver` -> `buf` -> `remote`
//! -> `executor` -> `time`, `net` -> `mailbox` -> `core` (the event loop) ->
//! `metrics` -> `runtime`, `signal`.

pub mod buf;
mod context;
mod core;
mod driver;
mod error;
pub mod executor;
mod histogram;
mod loom;
pub mod mailbox;
pub mod metrics;
pub mod net;
mod remote;
pub mod runtime;
mod scoped;
pub mod signal;
mod stall;
pub mod stats;
mod sys;
pub mod time;

pub use crate::buf::{AlignedBuf, IoBuf, IoBufMut, RecvBuf, SendBuf};
pub use crate::context::{current_core, current_cpu, is_shutting_down, try_current_core};
pub use crate::core::core_stats;
pub use crate::driver::RingFeatures;
pub use crate::executor::{spawn_local, spawn_local_named, yield_now, JoinError, JoinHandle};
pub use crate::mailbox::{submit_to, Doorbell, RemoteBuf};
pub use crate::runtime::{
    current_runtime, BuildError, IdleStrategy, Placement, RemoteHandle, Runtime, RuntimeBuilder,
    RuntimeHandle, ShutdownHandle, ShutdownReport, StartError,
};
pub use crate::stats::{CoreStats, Counter, Histogram};
