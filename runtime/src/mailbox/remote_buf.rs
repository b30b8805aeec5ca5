//! Send-pool buffers lent to other cores ([`RemoteBuf`]).
//!
//! [`SendBuf::into_remote`] detaches a filled registered buffer from its core
//! so that any thread can read it in place (no copy), send it on another
//! core's socket, or pass it on. Dropping it returns the buffer to its home
//! core's pool: directly on that core, through the core mesh from another core
//! of the same runtime, or through the home core's control queue from any
//! other thread.

use std::ops::Deref;
use std::sync::Arc;

use super::doorbell::Peer;
use crate::buf::{IoBuf, SendBuf};

/// A send-pool buffer lent to another core (see [`SendBuf::into_remote`]).
///
/// Derefs to the bytes written into it, in place, on whatever thread holds it,
/// and can be sent on any core's socket. Dropping it returns the buffer to its
/// home core's pool.
pub struct RemoteBuf {
    ptr: *const u8,
    len: usize,
    id: u16,
    home: Arc<Peer>,
}

impl SendBuf {
    /// Lends this buffer to other cores: the returned [`RemoteBuf`] is `Send`,
    /// reads the same bytes in place (no copy), can be sent on any core's
    /// socket, and goes back to this core's pool when dropped (through the
    /// mailboxes). Use it to pass an archived message built in a registered
    /// buffer to another core.
    ///
    /// # Panics
    ///
    /// Off the core whose pool the buffer came from.
    pub fn into_remote(self) -> RemoteBuf {
        let home = super::mesh::with(|m| m.me().clone());
        let lent = self.lend();
        RemoteBuf {
            ptr: lent.ptr,
            len: lent.len,
            id: lent.id,
            home,
        }
    }
}

// SAFETY: the bytes are only read, and the memory they live in stays
// allocated while the buffer is lent: the home core frees its pool memory at
// exit only if every buffer is back, and leaks it otherwise. Returning the id
// happens on the home core, through its queues.
unsafe impl Send for RemoteBuf {}

// SAFETY: shared references only read the lent bytes (`Deref`, `len`), which
// nobody writes while the buffer is lent; dropping (which returns the buffer)
// needs ownership. So one `RemoteBuf` may be read from many threads at once,
// e.g. a broadcast payload behind an `Arc`.
unsafe impl Sync for RemoteBuf {}

impl RemoteBuf {
    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Deref for RemoteBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` was written through the `SendBuf` before it
        // was lent and is not written again while lent; the memory outlives
        // every lent buffer (see the `Send` impl).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::fmt::Debug for RemoteBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBuf")
            .field("id", &self.id)
            .field("len", &self.len)
            .field("home_core", &self.home.index)
            .finish()
    }
}

// SAFETY: the bytes stay put and unmodified while the value lives (see the
// `Send` impl); moving the value does not move them.
unsafe impl IoBuf for RemoteBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
}

impl Drop for RemoteBuf {
    fn drop(&mut self) {
        let id = self.id;
        let home = &self.home;
        let give_back = move || crate::buf::give_back(id);
        let sent = super::mesh::try_with(|m| {
            if Arc::ptr_eq(m.me(), home) {
                crate::buf::give_back(id);
                return true;
            }
            // Another core of the same runtime: the mesh ring to home.
            let same_runtime = m
                .peers
                .get(home.index)
                .is_some_and(|p| Arc::ptr_eq(p, home));
            same_runtime && super::mesh::try_post(home.index, give_back).is_ok()
        })
        .unwrap_or(false);
        if !sent {
            // A full ring, another runtime or a plain thread: the home
            // core's control queue (a gone core simply never runs it).
            home.shared.run(Box::new(give_back));
        }
    }
}
