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
//! shutdown), [`executor`] (tasks), [`net`] (sockets), [`time`] (timers),
//! [`buf`] (buffers handed to and from the kernel), [`stats`] (counters),
//! [`signal`] (Ctrl-C).

pub mod buf;
mod core;
mod driver;
pub mod executor;
mod loom;
pub mod mailbox;
pub mod net;
pub mod runtime;
pub mod signal;
pub mod stats;
mod sys;
pub mod time;

pub use crate::buf::{IoBuf, RecvBuf, RemoteBuf, SendBuf};
pub use crate::core::{core_stats, current_core, current_cpu, is_shutting_down, try_current_core};
pub use crate::driver::RingFeatures;
pub use crate::executor::{spawn_local, yield_now, JoinError, JoinHandle};
pub use crate::mailbox::{submit_to, Doorbell};
pub use crate::runtime::{
    IdleStrategy, Placement, RemoteHandle, Runtime, RuntimeBuilder, ShutdownHandle, ShutdownReport,
};
pub use crate::stats::CoreStats;
