//! [`Peers`]: the connections a server accepted, on every core, by peer id,
//! and broadcast to them.
//!
//! Give the same `Peers` to the listeners of every core (through
//! [`Config::peers`](crate::Config::peers)); every connection they accept is
//! registered under its peer id (the node id from the peer's handshake)
//! until it ends. [`Peers::broadcast`] serializes a message **once** into a
//! registered send buffer and sends that same buffer on every peer's
//! connection: on this core directly, on other cores by lending the buffer
//! through the mailboxes (each connection adds only its own 32-byte frame
//! header). This is net-queue's `put(data, *peers)`.
//!
//! A peer with several connections (a client's pool) gets the message once,
//! on one of them.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};

use ringwire_proto::{encode_message, FrameHeader, FrameKind, Message, StreamId, HEADER_LEN};
use ringwire_runtime::{mailbox, SendBuf};
use rkyv::util::AlignedVec;

use crate::conn::core::Conn;
use crate::conn::out::{SharedBytes, SharedPayload};
use crate::error::Error;

/// A registry of accepted connections across cores. Cheap to clone, `Send`
/// and `Sync`: create it once, hand clones to every core.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<Shared>,
}

struct Shared {
    id: u64,
    /// Peer id -> the connections of that peer: (core, connection id).
    directory: Mutex<BTreeMap<u64, Vec<(usize, u64)>>>,
}

thread_local! {
    /// This core's registered connections: registry id -> connection id ->
    /// connection.
    static LOCAL: RefCell<HashMap<u64, HashMap<u64, Weak<Conn>>>> = RefCell::new(HashMap::new());
}

impl Default for Peers {
    fn default() -> Self {
        Peers::new()
    }
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("peers", &self.peer_ids().len())
            .finish()
    }
}

impl Peers {
    /// An empty registry.
    pub fn new() -> Peers {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Peers {
            inner: Arc::new(Shared {
                id: NEXT.fetch_add(1, Ordering::Relaxed),
                directory: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    fn directory(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Vec<(usize, u64)>>> {
        self.inner
            .directory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The ids of the peers connected now, ascending.
    pub fn peer_ids(&self) -> Vec<u64> {
        self.directory().keys().copied().collect()
    }

    /// Number of connected peers.
    pub fn len(&self) -> usize {
        self.directory().len()
    }

    /// Whether no peer is connected.
    pub fn is_empty(&self) -> bool {
        self.directory().is_empty()
    }

    /// Registers `conn` (accepted on the current core) until it ends.
    pub(crate) fn register(&self, conn: &Rc<Conn>, peer_id: u64, core: usize) {
        self.directory()
            .entry(peer_id)
            .or_default()
            .push((core, conn.id));
        LOCAL.with(|l| {
            l.borrow_mut()
                .entry(self.inner.id)
                .or_default()
                .insert(conn.id, Rc::downgrade(conn))
        });
        let peers = self.clone();
        let id = conn.id;
        conn.on_end(Box::new(move || peers.unregister(peer_id, id)));
    }

    fn unregister(&self, peer_id: u64, conn_id: u64) {
        let mut dir = self.directory();
        if let Some(list) = dir.get_mut(&peer_id) {
            list.retain(|&(_, c)| c != conn_id);
            if list.is_empty() {
                dir.remove(&peer_id);
            }
        }
        drop(dir);
        let _ = LOCAL.try_with(|l| {
            if let Some(m) = l.borrow_mut().get_mut(&self.inner.id) {
                m.remove(&conn_id);
            }
        });
    }

    /// Sends `value` to every connected peer (once per peer), serializing it
    /// once. Call it on a core. Returns how many peers it was queued for.
    /// A connection whose send queue is full waits (back-pressure policy
    /// `Wait`) or drops it and counts the drop.
    pub async fn broadcast<T: Message>(&self, value: &T) -> Result<usize, Error> {
        self.send_to_matching(value, None).await
    }

    /// Sends `value` to the listed peers only (once each), serializing it
    /// once. Ids not connected are skipped. Returns how many peers it was
    /// queued for.
    pub async fn broadcast_to<T: Message>(&self, value: &T, peers: &[u64]) -> Result<usize, Error> {
        self.send_to_matching(value, Some(peers)).await
    }

    async fn send_to_matching<T: Message>(
        &self,
        value: &T,
        only: Option<&[u64]>,
    ) -> Result<usize, Error> {
        // One connection per peer, grouped by core.
        let mut by_core: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        let mut count = 0;
        for (peer, conns) in self.directory().iter() {
            if only.is_some_and(|o| !o.contains(peer)) {
                continue;
            }
            if let Some(&(core, conn)) = conns.iter().min_by_key(|(_, c)| *c) {
                by_core.entry(core).or_default().push(conn);
                count += 1;
            }
        }
        if count == 0 {
            return Ok(0);
        }
        let (payload, payload_len) = encode_shared(value).await?;
        let here = ringwire_runtime::current_core();
        let registry = self.inner.id;
        for (core, conns) in by_core {
            let payload = payload.clone();
            let send = move || send_local::<T>(registry, &conns, payload, payload_len);
            if core == here {
                send();
            } else {
                mailbox::post(core, send)
                    .await
                    .map_err(|e| Error::closed(format!("broadcast to core {core}: {e}")))?;
            }
        }
        Ok(count)
    }
}

/// Encodes `value` once as a whole message frame into a lendable buffer; the
/// shared part is everything after the frame's own header.
async fn encode_shared<T: Message>(value: &T) -> Result<(SharedPayload, u32), Error> {
    let header = FrameHeader::new(FrameKind::Message);
    if let Some(mut buf) = SendBuf::try_acquire() {
        match encode_message(buf.spare_mut(), header, value) {
            Ok(len) => {
                buf.advance(len);
                let payload_len = payload_len_of(&buf)?;
                return Ok((
                    SharedPayload {
                        buf: SharedBytes::Pool(Arc::new(buf.into_remote())),
                        start: HEADER_LEN,
                        end: len,
                    },
                    payload_len,
                ));
            }
            Err(ringwire_proto::ProtoError::BufferTooSmall { .. }) => {}
            Err(e) => return Err(Error::from_proto(e)),
        }
    }
    // Larger than a pool buffer (or the pool is empty): a heap buffer.
    encode_heap(value)
}

/// Encodes `value` as a whole message frame into a heap buffer (any thread:
/// the buffer is `Send`); the shared part is everything after the frame's
/// own header.
pub(crate) fn encode_heap<T: Message>(value: &T) -> Result<(SharedPayload, u32), Error> {
    let header = FrameHeader::new(FrameKind::Message);
    let mut size = 4096usize;
    loop {
        let mut heap = AlignedVec::<16>::with_capacity(size);
        heap.resize(size, 0);
        match encode_message(&mut heap, header, value) {
            Ok(len) => {
                heap.resize(len, 0);
                let payload_len = payload_len_of(&heap)?;
                return Ok((
                    SharedPayload {
                        buf: SharedBytes::Heap(Arc::new(heap)),
                        start: HEADER_LEN,
                        end: len,
                    },
                    payload_len,
                ));
            }
            Err(ringwire_proto::ProtoError::BufferTooSmall { needed, .. }) => {
                size = needed.max(size * 2).next_power_of_two();
            }
            Err(e) => return Err(Error::from_proto(e)),
        }
    }
}

fn payload_len_of(frame: &[u8]) -> Result<u32, Error> {
    let head = frame.first_chunk::<HEADER_LEN>().ok_or(Error::Usage(
        "internal: encoded frame shorter than a header",
    ))?;
    Ok(FrameHeader::parse(head)
        .map_err(Error::from_proto)?
        .payload_len)
}

/// Runs on a core: queues the shared payload on this core's listed
/// connections.
fn send_local<T: Message>(registry: u64, conns: &[u64], payload: SharedPayload, payload_len: u32) {
    let targets: Vec<Rc<Conn>> = LOCAL
        .try_with(|l| {
            let l = l.borrow();
            let Some(m) = l.get(&registry) else {
                return Vec::new();
            };
            conns
                .iter()
                .filter_map(|c| m.get(c).and_then(Weak::upgrade))
                .collect()
        })
        .unwrap_or_default();
    for conn in targets {
        conn.send_shared_or_wait::<T>(StreamId(0), payload_len, payload.clone());
    }
}
