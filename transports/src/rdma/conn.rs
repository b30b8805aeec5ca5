//! `rdma://host:port`: typed connections over reliable-connected queue
//! pairs, set up over a TCP side channel on the same port.
//!
//! # Contexts
//!
//! An [`RdmaContext`] is one opened device and its [completion
//! core](super::completion): the thread that owns the device and does every
//! verbs call. It registers, once at start, one buffer region per executor
//! core (each connection's receive and send buffers are carved from it).
//! A core uses a context after [`RdmaContext::use_here`]; a core that calls
//! `listen`/`connect` on `rdma://` without one gets the process default, a
//! context on the first libibverbs device, started on first use with one lane
//! per core of the runtime. Without a device that fails at once with
//! [`Error::Io`] whose source says no RDMA device was found.
//!
//! Tests (and anyone who wants a device other than the first) start their
//! own context with [`Device::Mem`] (the in-memory fabric of
//! [`super::mem`]) or [`Device::Ibv`] with a name, and call
//! [`RdmaContext::use_here`] on each core before `listen`/`connect`.
//!
//! # Setup
//!
//! The dialing side connects TCP to `host:port`, creates its queue pair and
//! posts its receives, and sends a side-channel [`Exchange`] (queue pair
//! number, LID/GID, PSN, MTU, its posted receives as credits, the schema
//! fingerprint as the handshake blob); the listening side answers with its
//! own. Both move their queue pairs to RTS, send one byte over TCP to say so,
//! wait for the other's, and close the side channel. The proto hello (schema
//! check, node ids) is then the first frame on the queue pair, as on every
//! other transport.
//!
//! # Messages and credits
//!
//! Every SEND carries one chunk: a 16-byte chunk header (kind, credits
//! returned, payload length) and up to a buffer's worth of frame bytes. The
//! flusher packs each outbound batch into the connection's registered send
//! buffers, one SEND per buffer; the send's completion frees the buffer. The
//! reader takes each receive completion in order, appends the chunk's bytes
//! to its reassembly buffer, hands every complete frame to the engine
//! (validated once), and only then posts the receive again and counts one
//! credit to return. Credits ride on every chunk; when none flows the other
//! way, a credit-only chunk returns them once half the window is due (or at
//! once when this side is itself stalled). Each side keeps one credit for
//! such a chunk, so a sender never overruns its peer's receives and credit
//! returns never deadlock. A sender without credits stops taking batches:
//! the engine's send queue fills and the connection's back-pressure policy
//! (wait, fail, drop-newest) applies.
//!
//! # Bulk
//!
//! A bulk segment goes as an offer (its frame header). Once the receiving
//! application has accepted the offer with destinations of its choice, the
//! receiver registers each destination for remote write and grants it
//! (address, length, rkey); the sender registers its segment and RDMA
//! WRITEs it with an immediate naming the offer. The receive the write
//! consumes ends the segment; the destination is deregistered before the
//! application gets it back. A declined offer is granted nothing.
//!
//! # End
//!
//! The side channel stays open as the connection's lifeline. When the
//! connection ends, each side sends the number of chunks it posted and
//! waits for the peer's before its queue pair is destroyed, so the last
//! frames of an orderly close are taken before either queue pair goes; a
//! side channel that ends without that goodbye means the peer is gone.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

use ringwire_proto::{frame_len, FrameHeader, FrameKind, HEADER_LEN};
use ringwire_runtime::net::{TcpListener, TcpStream};
use ringwire_runtime::spawn_local;
use rkyv::util::AlignedVec;

use super::completion::{
    CompletionClient, CompletionConfig, CompletionCore, ConnectParams, LaneEndpoint, LocalQp,
    Pending, PollMode, RdmaError, Region, RegionMemory, RegionSpec,
};
use super::sidechannel::{self, Credits, Exchange};
use super::verbs::{Access, MrId, QpCaps, QpId, SendOp, Sge, VerbsError, WcOpcode, WorkCompletion};
use crate::config::Config;
use crate::conn::core::{Conn, DestBox};
use crate::conn::incoming::Backing;
use crate::conn::out::{OutBuf, Segment, Tagged};
use crate::conn::Connection;
use crate::endpoint::{Endpoint, Scheme};
use crate::error::Error;
use crate::listener::AcceptQueue;

/// Bytes of the chunk header at the start of every SEND.
const CHUNK_HEADER: usize = 16;
/// Chunk kinds.
const KIND_DATA: u8 = 1;
const KIND_CREDIT: u8 = 2;
const KIND_BULK_OFFER: u8 = 3;
const KIND_GRANT: u8 = 4;
/// How long the side channel may take before the setup fails.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Which device a context opens.
#[derive(Clone)]
pub enum Device {
    /// A libibverbs device: by name, or the first one found (`None`).
    Ibv(Option<String>),
    /// A host of an in-memory fabric (tests; see [`super::mem`]).
    Mem {
        /// The fabric.
        fabric: super::mem::Fabric,
        /// The host whose device to open.
        host: String,
    },
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Ibv(name) => write!(f, "Ibv({name:?})"),
            Device::Mem { host, .. } => write!(f, "Mem({host:?})"),
        }
    }
}

/// Sizes and behaviour of an [`RdmaContext`]; each setter says what it
/// costs.
#[derive(Clone, Debug)]
pub struct RdmaConfig {
    poll_mode: PollMode,
    cpu: Option<usize>,
    buffer_size: u32,
    recv_buffers: u32,
    send_buffers: u32,
    connections: usize,
    rnr_retry: u8,
}

impl Default for RdmaConfig {
    fn default() -> RdmaConfig {
        RdmaConfig {
            poll_mode: PollMode::Channel,
            cpu: None,
            buffer_size: 8192,
            recv_buffers: 32,
            send_buffers: 16,
            connections: 32,
            rnr_retry: 7,
        }
    }
}

impl RdmaConfig {
    /// Busy polling (a CPU at 100%, lowest latency) or waiting on the
    /// completion channel (default).
    pub fn poll_mode(mut self, mode: PollMode) -> Self {
        self.poll_mode = mode;
        self
    }

    /// Pins the completion core to this CPU (`None`, the default: unpinned).
    pub fn cpu(mut self, cpu: Option<usize>) -> Self {
        self.cpu = cpu;
        self
    }

    /// Bytes of each receive and send buffer, chunk header included
    /// (default 8192; at least 256). One SEND carries at most this much.
    pub fn buffer_size(mut self, bytes: u32) -> Self {
        self.buffer_size = bytes;
        self
    }

    /// Receive buffers posted per connection: the credits the peer gets
    /// (default 32; at least 2). An endpoint's `?credits=` asks for fewer.
    pub fn recv_buffers(mut self, count: u32) -> Self {
        self.recv_buffers = count;
        self
    }

    /// Send buffers per connection (default 16; at least 1).
    pub fn send_buffers(mut self, count: u32) -> Self {
        self.send_buffers = count;
        self
    }

    /// Connections each core can hold at once (default 32). Registered
    /// memory per core: `connections * (recv_buffers + send_buffers) *
    /// buffer_size` (12 MiB with the defaults).
    pub fn connections_per_core(mut self, count: usize) -> Self {
        self.connections = count;
        self
    }

    /// Receiver-not-ready retries of the queue pairs (default 7: retry
    /// forever). Credits keep a sender from ever finding no receive posted,
    /// so 0 (fail at once) turns any overrun into a connection error.
    pub fn rnr_retry(mut self, retries: u8) -> Self {
        self.rnr_retry = retries.min(7);
        self
    }

    fn block_len(&self) -> usize {
        (self.recv_buffers as usize + self.send_buffers as usize) * self.buffer_size as usize
    }

    fn check(&self) -> Result<(), Error> {
        if self.buffer_size < 256 || self.recv_buffers < 2 || self.send_buffers < 1 {
            return Err(Error::Usage(
                "RdmaConfig needs buffer_size >= 256, recv_buffers >= 2 and send_buffers >= 1",
            ));
        }
        if self.connections == 0 {
            return Err(Error::Usage("RdmaConfig needs connections_per_core >= 1"));
        }
        Ok(())
    }
}

/// An opened RDMA device with its completion core, shared by the executor
/// cores that use it.
pub struct RdmaContext {
    core: Mutex<Option<CompletionCore>>,
    lanes: Mutex<Vec<Option<LaneEndpoint>>>,
    config: RdmaConfig,
    device: String,
}

impl std::fmt::Debug for RdmaContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaContext")
            .field("device", &self.device)
            .finish()
    }
}

fn rdma_error(context: impl Into<String>, e: RdmaError) -> Error {
    let kind = match &e {
        RdmaError::Verbs(VerbsError::NoDevice { .. })
        | RdmaError::Verbs(VerbsError::DeviceNotFound { .. }) => std::io::ErrorKind::NotFound,
        RdmaError::ShuttingDown | RdmaError::Closed => std::io::ErrorKind::NotConnected,
        _ => std::io::ErrorKind::Other,
    };
    Error::io(context, std::io::Error::new(kind, e))
}

impl RdmaContext {
    /// Opens `device` and starts its completion core with one lane per
    /// executor core (`cores`: the runtime's core count). Fails at once when
    /// the device cannot be opened (no device: an error saying so).
    pub fn start(
        device: Device,
        cores: usize,
        config: RdmaConfig,
    ) -> Result<Arc<RdmaContext>, Error> {
        config.check()?;
        let per_core = config
            .block_len()
            .checked_mul(config.connections)
            .ok_or(Error::Usage("RdmaConfig's registered memory overflows"))?;
        let mut regions = Vec::with_capacity(cores);
        for _ in 0..cores {
            let memory = RegionMemory::new(per_core)
                .map_err(|e| Error::io("allocate RDMA buffer memory", e))?;
            regions.push(RegionSpec {
                memory,
                access: Access::LOCAL_WRITE,
            });
        }
        let cc = CompletionConfig::new(cores)
            .cpu(config.cpu)
            .poll_mode(config.poll_mode)
            .cq_entries(
                u32::try_from(
                    cores
                        * config.connections
                        * (config.recv_buffers + config.send_buffers) as usize
                        + 64,
                )
                .unwrap_or(u32::MAX),
            );
        let started = match device {
            Device::Ibv(name) => CompletionCore::start(
                cc,
                move || super::ibv::IbvDevice::open(name.as_deref()),
                regions,
            ),
            Device::Mem { fabric, host } => {
                CompletionCore::start(cc, move || fabric.open(&host), regions)
            }
        };
        let (core, lanes) = started.map_err(|e| rdma_error("open the RDMA device", e))?;
        Ok(Arc::new(RdmaContext {
            device: core.device_name().to_string(),
            core: Mutex::new(Some(core)),
            lanes: Mutex::new(lanes.into_iter().map(Some).collect()),
            config,
        }))
    }

    /// The device's name.
    pub fn device_name(&self) -> &str {
        &self.device
    }

    /// Makes `rdma://` endpoints used on the current core go through this
    /// context; attaches the core's lane (lane = core index).
    ///
    /// # Panics
    ///
    /// Off a ringwire core thread.
    pub fn use_here(self: &Arc<Self>) -> Result<(), Error> {
        let lane = ringwire_runtime::current_core();
        let endpoint = {
            let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            match lanes.get_mut(lane) {
                Some(slot) => slot.take(),
                None => return Err(Error::Usage("the RDMA context has no lane for this core")),
            }
        };
        let Some(endpoint) = endpoint else {
            return Err(Error::Usage(
                "this core's lane of the RDMA context is already in use",
            ));
        };
        let client = CompletionClient::attach(endpoint);
        let Some(region) = client.regions().get(lane).cloned() else {
            return Err(Error::Usage("the RDMA context has no region for this core"));
        };
        let blocks = (0..self.config.connections).rev().collect();
        let state = Rc::new(CoreState {
            _ctx: self.clone(),
            client,
            region,
            config: self.config.clone(),
            free: RefCell::new(blocks),
        });
        CORE.with(|c| *c.borrow_mut() = Some(state));
        Ok(())
    }

    /// Stops the completion core: outstanding requests fail and every
    /// connection through it ends with an error. Waits up to `grace`.
    pub fn shutdown(&self, grace: Duration) {
        let core = self.core.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(core) = core {
            core.shutdown(grace);
        }
    }
}

impl Drop for RdmaContext {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(5));
    }
}

/// What one core holds of a context.
struct CoreState {
    _ctx: Arc<RdmaContext>,
    client: CompletionClient,
    region: Region,
    config: RdmaConfig,
    /// Free connection blocks of `region`.
    free: RefCell<Vec<usize>>,
}

thread_local! {
    static CORE: RefCell<Option<Rc<CoreState>>> = const { RefCell::new(None) };
}

/// Contexts started by default (no [`RdmaContext::use_here`]), shared by
/// the cores of one runtime.
fn defaults() -> std::sync::MutexGuard<'static, Vec<Weak<RdmaContext>>> {
    static DEFAULTS: Mutex<Vec<Weak<RdmaContext>>> = Mutex::new(Vec::new());
    DEFAULTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The current core's context state, starting the default context if the
/// core has none.
fn core_state() -> Result<Rc<CoreState>, Error> {
    if let Some(s) = CORE.with(|c| c.borrow().clone()) {
        if !s.client.is_closed() {
            return Ok(s);
        }
    }
    let core = ringwire_runtime::current_core();
    let cores = ringwire_runtime::current_runtime().core_count();
    let ctx = {
        let mut all = defaults();
        all.retain(|w| w.strong_count() > 0);
        let free = all.iter().filter_map(Weak::upgrade).find(|c| {
            let lanes = c.lanes.lock().unwrap_or_else(|p| p.into_inner());
            lanes.len() == cores && lanes.get(core).is_some_and(Option::is_some)
        });
        match free {
            Some(c) => c,
            None => {
                let c = RdmaContext::start(Device::Ibv(None), cores, RdmaConfig::default())?;
                all.push(Arc::downgrade(&c));
                c
            }
        }
    };
    ctx.use_here()?;
    CORE.with(|c| c.borrow().clone())
        .ok_or(Error::Usage("the RDMA context did not attach"))
}

/// Where one connection's buffers lie in its core's registered region.
#[derive(Clone)]
struct Block {
    core: Rc<CoreState>,
    base: usize,
    size: usize,
}

impl Block {
    fn recv_offset(&self, i: u32) -> usize {
        self.base + i as usize * self.size
    }

    fn send_offset(&self, i: u32) -> usize {
        self.base + (self.core.config.recv_buffers + i) as usize * self.size
    }
}

/// A connection's lease on its block and queue pair: dropping it destroys
/// the queue pair (flushing what is posted) and only then gives the block
/// back, so the device never writes into a block that has a new owner.
struct Lease {
    core: Rc<CoreState>,
    index: usize,
    qp: Option<QpId>,
}

impl Lease {
    fn take(core: &Rc<CoreState>) -> Result<(Lease, Block), Error> {
        let index = core.free.borrow_mut().pop().ok_or_else(|| {
            Error::io(
                "open an RDMA connection",
                std::io::Error::other(format!(
                    "this core already holds its {} RDMA connections \
                     (RdmaConfig::connections_per_core)",
                    core.config.connections
                )),
            )
        })?;
        let block = Block {
            core: core.clone(),
            base: index * core.config.block_len(),
            size: core.config.buffer_size as usize,
        };
        Ok((
            Lease {
                core: core.clone(),
                index,
                qp: None,
            },
            block,
        ))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let core = self.core.clone();
        let index = self.index;
        match self.qp.take() {
            None => core.free.borrow_mut().push(index),
            Some(qp) if ringwire_runtime::try_current_core().is_some() => {
                let destroy = core.client.destroy_qp(qp);
                spawn_local(async move {
                    // Destroyed, or the completion core is gone: either way
                    // the device is done with the block.
                    let _ = destroy.await;
                    core.free.borrow_mut().push(index);
                });
            }
            // Off the core (its thread is ending): the block is not reused.
            Some(_) => {}
        }
    }
}

/// One connection's queue pair, buffers and credit state, shared by its
/// reader, flusher and send completer.
struct Link {
    conn: Rc<Conn>,
    qp: LocalQp,
    block: Block,
    /// Released when the connection ends.
    lease: RefCell<Option<Lease>>,
    /// Payload bytes per chunk (the smaller buffer of both sides, less the
    /// chunk header).
    room: usize,
    /// SENDs the peer's posted receives allow.
    credits: Cell<u32>,
    /// This side's window: the receives it keeps posted, which are the
    /// peer's credits (half of them due back triggers a credit return).
    window: u32,
    /// Receives reposted since credits last went out.
    to_return: Cell<u32>,
    /// Free send buffers.
    free_send: RefCell<Vec<u32>>,
    /// The flusher waits for credits or a send buffer.
    flusher: RefCell<Option<Waker>>,
    /// Sends posted, completing in order.
    sends: RefCell<VecDeque<(u32, Pending<WorkCompletion>)>>,
    /// The send completer waits for a send.
    completer: RefCell<Option<Waker>>,
    /// Grants to send (encoded), ahead of data.
    control: RefCell<VecDeque<[u8; GRANT_LEN]>>,
    /// Grants received for this side's offers, in order.
    grants: RefCell<VecDeque<Grant>>,
    /// Bulk offers made (the immediate of each write).
    offers: Cell<u32>,
    /// Chunks sent and taken, for the side channel's goodbye.
    sent: Cell<u64>,
    received: Cell<u64>,
    /// The side-channel task waits for the end or for `received`.
    lifeline: RefCell<Option<Waker>>,
    /// The engine ended the connection (its flusher still drains).
    ended: Cell<bool>,
    /// The flusher is gone: nothing more will be posted.
    flushed: Cell<bool>,
    /// The link is failed or torn down: every task stops.
    done: Cell<bool>,
}

impl Link {
    fn wake_flusher(&self) {
        if let Some(w) = self.flusher.borrow_mut().take() {
            w.wake();
        }
    }

    fn fail(&self, err: Error) {
        if !self.done.get() {
            self.conn.fail(err);
        }
        self.stop();
    }

    /// Stops every task of the link.
    fn stop(&self) {
        self.done.set(true);
        self.wake_all();
    }

    fn wake_all(&self) {
        self.wake_flusher();
        for w in [&self.completer, &self.lifeline] {
            if let Some(w) = w.borrow_mut().take() {
                w.wake();
            }
        }
    }

    fn qp_error(&self, e: RdmaError) -> Error {
        rdma_error(
            format!(
                "RDMA queue pair {:#x} to {}",
                self.qp.qp_num, self.conn.remote
            ),
            e,
        )
    }

    /// Whether a credit-only chunk is due.
    fn credit_due(&self, stalled: bool) -> bool {
        let due = self.to_return.get();
        due > 0
            && self.credits.get() >= 1
            && (due >= (self.window / 2).max(1) || (stalled && self.credits.get() <= 1))
    }

    /// Posts one chunk from send buffer `slot`: `len` payload bytes already
    /// written after the chunk header, which this writes.
    fn post_chunk(&self, slot: u32, kind: u8, len: usize) -> Result<(), Error> {
        let returned = self.to_return.replace(0);
        let mut head = [0u8; CHUNK_HEADER];
        head[0] = kind;
        head[4..8].copy_from_slice(&returned.to_le_bytes());
        head[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        let offset = self.block.send_offset(slot);
        // SAFETY: send buffer `slot` is this link's and free (taken from
        // `free_send`): no request on it is outstanding.
        unsafe { self.block.core.region.memory.write(offset, &head) };
        let sge = self
            .block
            .core
            .region
            .sge(offset, (CHUNK_HEADER + len) as u32)
            .ok_or(Error::Usage(
                "internal: RDMA send buffer outside its region",
            ))?;
        self.credits.set(self.credits.get() - 1);
        self.sent.set(self.sent.get() + 1);
        let pending = self
            .block
            .core
            .client
            .post_send(self.qp.id, SendOp::Send, &[sge], true);
        self.sends.borrow_mut().push_back((slot, pending));
        if let Some(w) = self.completer.borrow_mut().take() {
            w.wake();
        }
        Ok(())
    }
}

/// Sends what goes out whatever the data does: grants first, then a
/// credit return when due (`stalled`: this side waits for credits itself).
fn service(link: &Link, stalled: bool) -> Result<(), Error> {
    loop {
        if link.credits.get() < 1 || link.free_send.borrow().is_empty() {
            return Ok(());
        }
        let grant = link.control.borrow_mut().pop_front();
        if let Some(payload) = grant {
            post_control(link, KIND_GRANT, &payload)?;
            continue;
        }
        if link.credit_due(stalled) {
            post_control(link, KIND_CREDIT, &[])?;
            continue;
        }
        return Ok(());
    }
}

/// Posts a chunk of `kind` carrying `payload` from a free send buffer.
fn post_control(link: &Link, kind: u8, payload: &[u8]) -> Result<(), Error> {
    let Some(slot) = link.free_send.borrow_mut().pop() else {
        return Err(Error::Usage("internal: no free RDMA send buffer"));
    };
    let offset = link.block.send_offset(slot) + CHUNK_HEADER;
    // SAFETY: send buffer `slot` was free: no request on it is outstanding.
    unsafe { link.block.core.region.memory.write(offset, payload) };
    link.post_chunk(slot, kind, payload.len())
}

/// Waits for a free send buffer and two credits (one stays in reserve for
/// grants and credit returns), serving those meanwhile; takes the buffer.
async fn acquire(link: &Link) -> Result<u32, ()> {
    poll_fn(|cx| {
        if link.done.get() {
            return Poll::Ready(Err(()));
        }
        if let Err(e) = service(link, true) {
            link.fail(e);
            return Poll::Ready(Err(()));
        }
        if link.credits.get() >= 2 {
            if let Some(s) = link.free_send.borrow_mut().pop() {
                return Poll::Ready(Ok(s));
            }
        }
        *link.flusher.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

/// Packs each outbound batch into send buffers, one SEND per buffer, as
/// credits allow; writes bulk segments into the peer's granted
/// destinations; sends grants and credit returns when due.
async fn flusher(link: Rc<Link>, link_no: u64) {
    let conn = link.conn.clone();
    loop {
        let batch = {
            let mut next = pin!(conn.next_batch(link_no));
            poll_fn(|cx| {
                if link.done.get() {
                    return Poll::Ready(None);
                }
                if let Err(e) = service(&link, false) {
                    link.fail(e);
                    return Poll::Ready(None);
                }
                if let Poll::Ready(b) = next.as_mut().poll(cx) {
                    return Poll::Ready(b);
                }
                *link.flusher.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await
        };
        // None: the connection is over (everything queued went out).
        let Some((bufs, messages, bytes)) = batch else {
            break;
        };
        if let Err(e) = send_batch(&link, &bufs).await {
            if let Some(e) = e {
                link.fail(e);
            }
            break;
        }
        // The bytes are in registered memory or written: the batch's
        // buffers go back.
        drop(bufs);
        conn.batch_done(Vec::new(), messages, bytes);
    }
    link.flushed.set(true);
    link.wake_all();
}

/// Sends one batch. `Err(None)`: the link stopped.
async fn send_batch(link: &Link, bufs: &[Tagged]) -> Result<(), Option<Error>> {
    let room = link.room;
    let mut slot: Option<(u32, usize)> = None;
    let mut it = bufs.iter().peekable();
    while let Some(t) = it.next() {
        if let OutBuf::Header(h) = &t.buf {
            if let Some(Tagged {
                buf: OutBuf::Segment(seg),
                ..
            }) = it.peek()
            {
                // A bulk segment: what precedes it goes first, then the
                // offer, the peer's grant and the write.
                if let Some((s, used)) = slot.take() {
                    link.post_chunk(s, KIND_DATA, used).map_err(Some)?;
                }
                let header =
                    h.0.get(..HEADER_LEN)
                        .ok_or(Some(Error::Usage("internal: short bulk frame header")))?;
                bulk_write(link, header, seg).await?;
                it.next();
                if it.peek().is_some_and(|t| matches!(t.buf, OutBuf::Pad(_))) {
                    it.next();
                }
                continue;
            }
        }
        let mut bytes = t.buf.bytes();
        while !bytes.is_empty() {
            let (s, used) = match slot {
                Some(s) => s,
                None => (acquire(link).await.map_err(|()| None)?, 0),
            };
            let n = bytes.len().min(room - used);
            let offset = link.block.send_offset(s) + CHUNK_HEADER + used;
            // SAFETY: send buffer `s` is this link's and no request on it is
            // outstanding (it was free, and is posted below).
            unsafe { link.block.core.region.memory.write(offset, &bytes[..n]) };
            bytes = &bytes[n..];
            if used + n == room {
                link.post_chunk(s, KIND_DATA, room).map_err(Some)?;
                slot = None;
            } else {
                slot = Some((s, used + n));
            }
        }
    }
    if let Some((s, used)) = slot {
        link.post_chunk(s, KIND_DATA, used).map_err(Some)?;
    }
    Ok(())
}

/// A grant: where the peer lets this side write a bulk segment.
#[derive(Clone, Copy, Debug)]
struct Grant {
    addr: u64,
    len: u64,
    rkey: u32,
    granted: bool,
}

const GRANT_LEN: usize = 24;

impl Grant {
    fn encode(&self) -> [u8; GRANT_LEN] {
        let mut b = [0u8; GRANT_LEN];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..20].copy_from_slice(&self.rkey.to_le_bytes());
        b[20..24].copy_from_slice(&u32::from(self.granted).to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Grant, String> {
        let b: &[u8; GRANT_LEN] = b
            .try_into()
            .map_err(|_| format!("an RDMA grant of {} bytes, expected {GRANT_LEN}", b.len()))?;
        let word = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let long = |at: usize| u64::from(word(at)) | (u64::from(word(at + 4)) << 32);
        let granted = match word(20) {
            0 => false,
            1 => true,
            other => return Err(format!("an RDMA grant with flag {other}")),
        };
        Ok(Grant {
            addr: long(0),
            len: long(8),
            rkey: word(16),
            granted,
        })
    }
}

/// Offers one bulk segment, waits for the peer's grant, and RDMA WRITEs
/// the segment (with an immediate naming the offer) into the destination
/// the peer registered for it.
async fn bulk_write(link: &Link, header: &[u8], seg: &Segment) -> Result<(), Option<Error>> {
    let id = link.offers.get();
    link.offers.set(id.wrapping_add(1));
    let s = acquire(link).await.map_err(|()| None)?;
    let offset = link.block.send_offset(s) + CHUNK_HEADER;
    // SAFETY: send buffer `s` was free: no request on it is outstanding.
    unsafe { link.block.core.region.memory.write(offset, header) };
    link.post_chunk(s, KIND_BULK_OFFER, header.len())
        .map_err(Some)?;
    let grant = poll_fn(|cx| {
        if link.done.get() {
            return Poll::Ready(Err(None));
        }
        if let Err(e) = service(link, true) {
            return Poll::Ready(Err(Some(e)));
        }
        if let Some(g) = link.grants.borrow_mut().pop_front() {
            return Poll::Ready(Ok(g));
        }
        *link.flusher.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    })
    .await?;
    if !grant.granted {
        // The receiver declined the segment.
        return Ok(());
    }
    let bad = |why: String| {
        Some(Error::io(
            format!("RDMA bulk write to {}", link.conn.remote),
            std::io::Error::new(std::io::ErrorKind::InvalidData, why),
        ))
    };
    if grant.len != seg.len as u64 {
        return Err(bad(format!(
            "the peer granted {} bytes for a segment of {}",
            grant.len, seg.len
        )));
    }
    let Ok(len) = u32::try_from(seg.len) else {
        return Err(bad(format!(
            "a bulk segment of {} bytes exceeds one RDMA WRITE",
            seg.len
        )));
    };
    let client = &link.block.core.client;
    // SAFETY: the segment's bytes belong to the batch the flusher holds
    // until this returns, after the region is deregistered; the device only
    // reads them (no write access), and nothing writes them meanwhile (the
    // `IoBuf` contract).
    let keys = unsafe { client.reg_mr(seg.ptr as *mut u8, seg.len, Access::empty()) }
        .await
        .map_err(|e| Some(link.qp_error(e)))?;
    // A WRITE with immediate consumes one of the peer's receives.
    let ready = poll_fn(|cx| {
        if link.done.get() {
            return Poll::Ready(false);
        }
        if link.credits.get() >= 2 {
            return Poll::Ready(true);
        }
        *link.flusher.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    })
    .await;
    let written = if ready {
        link.credits.set(link.credits.get() - 1);
        link.sent.set(link.sent.get() + 1);
        let sge = Sge {
            addr: seg.ptr as u64,
            length: len,
            lkey: keys.lkey,
        };
        let op = SendOp::RdmaWriteWithImm {
            remote_addr: grant.addr,
            rkey: grant.rkey,
            imm: id,
        };
        Some(client.post_send(link.qp.id, op, &[sge], true).await)
    } else {
        None
    };
    let dereg = client.dereg_mr(keys.id).await;
    match (written, dereg) {
        (None, _) => Err(None),
        (Some(Err(e)), _) | (Some(Ok(_)), Err(e)) => Err(Some(link.qp_error(e))),
        (Some(Ok(_)), Ok(())) => Ok(()),
    }
}

/// Frees send buffers as their SENDs complete (in order); a failed send
/// fails the connection.
async fn send_completer(link: Rc<Link>) {
    loop {
        let next = poll_fn(|cx| {
            let mut sends = link.sends.borrow_mut();
            if let Some((slot, pending)) = sends.front_mut() {
                let slot = *slot;
                return match Pin::new(pending).poll(cx) {
                    Poll::Ready(r) => {
                        sends.pop_front();
                        Poll::Ready(Some((slot, r)))
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
            if link.done.get() || link.flushed.get() {
                return Poll::Ready(None);
            }
            *link.completer.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let Some((slot, res)) = next else { return };
        match res {
            Ok(_) => {
                link.free_send.borrow_mut().push(slot);
                link.wake_flusher();
            }
            Err(e) => {
                let err = link.qp_error(e);
                link.fail(err);
                return;
            }
        }
    }
}

/// A bulk segment granted to the peer, waiting for its write.
struct BulkIn {
    header: FrameHeader,
    dest: Option<DestBox>,
    mr: Option<MrId>,
    id: u32,
}

/// The reader's bulk state; a destination still registered when the reader
/// ends is deregistered before it goes back (or, off the core, leaked rather
/// than freed under the device).
#[derive(Default)]
struct BulkSlot(Option<BulkIn>);

impl BulkSlot {
    async fn release(&mut self, link: &Link) {
        if let Some(b) = self.0.as_mut() {
            if let Some(mr) = b.mr.take() {
                if let Err(e) = link.block.core.client.dereg_mr(mr).await {
                    if !matches!(e, RdmaError::Closed | RdmaError::ShuttingDown) {
                        // Still registered: never free it.
                        tracing::warn!("deregistering a bulk destination: {e}");
                        if let Some(d) = b.dest.take() {
                            std::mem::forget(d);
                        }
                    }
                }
            }
        }
    }
}

impl Drop for BulkSlot {
    fn drop(&mut self) {
        if let Some(b) = self.0.as_mut() {
            if b.mr.is_some() {
                if let Some(d) = b.dest.take() {
                    std::mem::forget(d);
                }
            }
        }
    }
}

/// Takes receive completions in order, hands complete frames to the
/// engine, grants bulk offers, reposts each receive once its bytes are
/// taken.
async fn reader(link: Rc<Link>, mut posted: VecDeque<(u32, Pending<WorkCompletion>)>) {
    let mut bulk = BulkSlot::default();
    if let Err(Some(e)) = read(&link, &mut posted, &mut bulk).await {
        link.fail(e);
    }
    bulk.release(&link).await;
    if let Some(w) = link.lifeline.borrow_mut().take() {
        w.wake();
    }
}

/// The reader's loop. `Err(None)`: the link stopped.
async fn read(
    link: &Rc<Link>,
    posted: &mut VecDeque<(u32, Pending<WorkCompletion>)>,
    bulk: &mut BulkSlot,
) -> Result<(), Option<Error>> {
    let conn = link.conn.clone();
    let mut acc = AlignedVec::<16>::new();
    let mut next_offer: u32 = 0;
    let bad = |why: String| {
        Some(Error::io(
            format!("RDMA connection to {}", conn.remote),
            std::io::Error::new(std::io::ErrorKind::InvalidData, why),
        ))
    };
    loop {
        let Some((slot, mut pending)) = posted.pop_front() else {
            return Err(None);
        };
        let res = poll_fn(|cx| match Pin::new(&mut pending).poll(cx) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending if link.done.get() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await;
        let wc = match res {
            None => return Err(None),
            Some(Ok(wc)) => wc,
            Some(Err(e)) if link.done.get() || link.ended.get() => {
                let _ = e;
                return Err(None);
            }
            Some(Err(e)) => return Err(Some(link.qp_error(e))),
        };
        drop(pending);
        link.received.set(link.received.get() + 1);
        if wc.opcode == WcOpcode::RecvRdmaWithImm {
            // A bulk segment was written into its destination.
            let Some(mut b) = bulk.0.take() else {
                return Err(bad("an RDMA WRITE nobody was granted".into()));
            };
            if wc.imm != Some(b.id) || u64::from(wc.byte_len) != u64::from(b.header.payload_len) {
                bulk.0 = Some(b);
                return Err(bad(format!(
                    "an RDMA WRITE of {} bytes (immediate {:?}) does not match its grant",
                    wc.byte_len, wc.imm
                )));
            }
            if let Some(mr) = b.mr.take() {
                if let Err(e) = link.block.core.client.dereg_mr(mr).await {
                    b.mr = Some(mr);
                    bulk.0 = Some(b);
                    return Err(Some(link.qp_error(e)));
                }
            }
            conn.bulk_end(&b.header, b.dest.take(), wc.byte_len as usize);
            conn.after_session();
        } else {
            let offset = link.block.recv_offset(slot);
            let len = (wc.byte_len as usize).min(link.block.size);
            // SAFETY: the receive on this buffer completed and is not posted
            // again until the bytes are copied out below.
            let chunk = unsafe { link.block.core.region.memory.bytes(offset, len) };
            let (kind, returned, payload) = parse_chunk(chunk).map_err(bad)?;
            link.credits
                .set(link.credits.get().saturating_add(returned));
            if returned > 0 {
                link.wake_flusher();
            }
            match kind {
                KIND_DATA => acc.extend_from_slice(payload),
                KIND_GRANT => {
                    let g = Grant::decode(payload).map_err(bad)?;
                    link.grants.borrow_mut().push_back(g);
                    link.wake_flusher();
                }
                KIND_BULK_OFFER => {
                    let mut head = [0u8; HEADER_LEN];
                    head.copy_from_slice(payload);
                    // The buffer goes back before the wait for the
                    // application's decision.
                    posted.push_back((slot, repost(link, slot).map_err(Some)?));
                    link.to_return.set(link.to_return.get() + 1);
                    offer(link, &head, next_offer, bulk).await?;
                    next_offer = next_offer.wrapping_add(1);
                    continue;
                }
                _ => {}
            }
        }
        // The bytes are out: the buffer takes the next chunk.
        posted.push_back((slot, repost(link, slot).map_err(Some)?));
        if !acc.is_empty() {
            let res = frames(&conn, &mut acc).await;
            conn.after_session();
            res.map_err(|_| None)?;
            if conn.is_closed() {
                return Err(None);
            }
        }
        link.to_return.set(link.to_return.get() + 1);
        if link.credit_due(false) {
            link.wake_flusher();
        }
        if let Some(w) = link.lifeline.borrow_mut().take() {
            w.wake();
        }
    }
}

/// A bulk offer: once the application decided, registers the destination
/// for the peer's write and grants it (or declines).
async fn offer(
    link: &Rc<Link>,
    head: &[u8; HEADER_LEN],
    id: u32,
    bulk: &mut BulkSlot,
) -> Result<(), Option<Error>> {
    let conn = &link.conn;
    if bulk.0.is_some() {
        return Err(Some(Error::io(
            format!("RDMA connection to {}", conn.remote),
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a bulk offer while another is being written",
            ),
        )));
    }
    // The metadata message came first: its receiver decides now.
    if !conn.reader_may_go() {
        conn.reader_ready().await.map_err(|_| None)?;
    }
    let header = FrameHeader::parse(head).map_err(|e| Some(Error::from_proto(e)))?;
    conn.check_header(&header).map_err(|_| None)?;
    if header.kind != FrameKind::Bulk {
        return Err(Some(Error::io(
            format!("RDMA connection to {}", conn.remote),
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a bulk offer for a frame that is not a bulk segment",
            ),
        )));
    }
    let dest = conn.bulk_start(&header).map_err(|_| None)?;
    let grant = match dest {
        Some(mut d) => {
            let dst = d.as_mut_slice();
            if dst.len() != header.payload_len as usize {
                conn.bulk_end(&header, Some(d), 0);
                return Err(Some(Error::Usage(
                    "bulk segment size differs from its destination",
                )));
            }
            let (ptr, len) = (dst.as_mut_ptr(), dst.len());
            // SAFETY: the destination is held in `bulk` (not touched) until
            // the write completed and the region is deregistered, or it is
            // leaked (`BulkSlot`); the device and the peer are its only
            // writers meanwhile.
            let keys = unsafe {
                link.block
                    .core
                    .client
                    .reg_mr(ptr, len, Access::REMOTE_WRITE)
            };
            bulk.0 = Some(BulkIn {
                header,
                dest: Some(d),
                mr: None,
                id,
            });
            let keys = keys.await.map_err(|e| Some(link.qp_error(e)))?;
            if let Some(b) = bulk.0.as_mut() {
                b.mr = Some(keys.id);
            }
            Grant {
                addr: ptr as u64,
                len: len as u64,
                rkey: keys.rkey,
                granted: true,
            }
        }
        None => {
            conn.bulk_end(&header, None, 0);
            conn.after_session();
            Grant {
                addr: 0,
                len: 0,
                rkey: 0,
                granted: false,
            }
        }
    };
    link.control.borrow_mut().push_back(grant.encode());
    link.wake_flusher();
    Ok(())
}

fn repost(link: &Link, slot: u32) -> Result<Pending<WorkCompletion>, Error> {
    let sge = link
        .block
        .core
        .region
        .sge(link.block.recv_offset(slot), link.block.size as u32)
        .ok_or(Error::Usage(
            "internal: RDMA receive buffer outside its region",
        ))?;
    Ok(link.block.core.client.post_recv(link.qp.id, &[sge]))
}

/// Splits a chunk into kind, credits returned and payload.
fn parse_chunk(chunk: &[u8]) -> Result<(u8, u32, &[u8]), String> {
    let Some(head) = chunk.first_chunk::<CHUNK_HEADER>() else {
        return Err(format!(
            "an RDMA message of {} bytes is shorter than its {CHUNK_HEADER}-byte header",
            chunk.len()
        ));
    };
    let kind = head[0];
    let returned = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if head[1..4] != [0; 3] || head[12..16] != [0; 4] {
        return Err("an RDMA message has non-zero reserved header bytes".into());
    }
    let payload = chunk.get(CHUNK_HEADER..CHUNK_HEADER + len).ok_or_else(|| {
        format!(
            "an RDMA message declares {len} payload bytes but carries {}",
            chunk.len() - CHUNK_HEADER
        )
    })?;
    match kind {
        KIND_DATA => Ok((kind, returned, payload)),
        KIND_CREDIT if len == 0 => Ok((kind, returned, payload)),
        KIND_CREDIT => Err("an RDMA credit message carries payload".into()),
        KIND_BULK_OFFER if len == HEADER_LEN => Ok((kind, returned, payload)),
        KIND_GRANT if len == GRANT_LEN => Ok((kind, returned, payload)),
        KIND_BULK_OFFER | KIND_GRANT => Err(format!(
            "an RDMA control message of kind {kind} with {len} bytes"
        )),
        other => Err(format!("an RDMA message of unknown kind {other}")),
    }
}

/// Hands every complete frame at the start of `acc` to the engine; keeps
/// the incomplete rest.
async fn frames(conn: &Rc<Conn>, acc: &mut AlignedVec<16>) -> Result<(), Error> {
    let mut end = 0;
    while let Some(head) = acc.get(end..).and_then(|b| b.first_chunk::<HEADER_LEN>()) {
        let header = FrameHeader::parse(head).map_err(Error::from_proto)?;
        conn.check_header(&header)?;
        let total = frame_len(header.payload_len as usize);
        if acc.len() - end < total {
            break;
        }
        end += total;
    }
    if end == 0 {
        return Ok(());
    }
    let mut rest = AlignedVec::<16>::with_capacity(acc.len() - end);
    rest.extend_from_slice(&acc[end..]);
    let whole = std::mem::replace(acc, rest);
    let backing = Backing::Heap(Rc::new(whole));
    let bytes = backing.bytes();
    let mut at = 0;
    while at < end {
        if !conn.reader_may_go() {
            conn.reader_ready().await?;
        }
        let head = bytes[at..]
            .first_chunk::<HEADER_LEN>()
            .ok_or(Error::Usage("internal: frame vanished"))?;
        let header = FrameHeader::parse(head).map_err(Error::from_proto)?;
        let len = header.payload_len as usize;
        let payload = bytes
            .get(at + HEADER_LEN..at + HEADER_LEN + len)
            .ok_or(Error::Usage("internal: frame vanished"))?;
        if header.kind == FrameKind::Bulk {
            // Bulk bytes come by RDMA WRITE into granted destinations only.
            let err = Error::io(
                format!("RDMA connection to {}", conn.remote),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a bulk segment sent as a message, not written into a grant",
                ),
            );
            conn.fail(err.clone());
            return Err(err);
        }
        conn.on_frame(&header, payload, &backing, false)?;
        at += frame_len(len);
    }
    Ok(())
}

// ----------------------------------------------------------------------
// Setup over the side channel

/// Reads exact byte counts from the side channel.
struct SideReader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl SideReader {
    async fn fill(&mut self, n: usize) -> Result<(), std::io::Error> {
        while self.buf.len() < n {
            match self.stream.recv().await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the peer closed the RDMA side channel during setup",
                    ))
                }
            }
        }
        Ok(())
    }

    async fn exchange(&mut self) -> Result<Exchange, Error> {
        let io = |e| Error::io("read the RDMA side channel", e);
        let bad = |e: sidechannel::SideChannelError| {
            Error::io(
                "read the RDMA side channel",
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        };
        self.fill(sidechannel::PREFIX_LEN).await.map_err(io)?;
        let total = match sidechannel::frame_len(&self.buf[..sidechannel::PREFIX_LEN]) {
            Ok(Some(n)) => n,
            Ok(None) => sidechannel::PREFIX_LEN,
            Err(e) => return Err(bad(e)),
        };
        self.fill(total).await.map_err(io)?;
        let ex = Exchange::decode(&self.buf[..total]).map_err(bad)?;
        self.buf.drain(..total);
        Ok(ex)
    }

    async fn send(&self, bytes: Vec<u8>) -> Result<(), Error> {
        self.stream
            .send_all(bytes)
            .await
            .0
            .map_err(|e| Error::io("write the RDMA side channel", e))
    }
}

/// A listener on `rdma://host:port`: the side channel's TCP listener, on
/// the current core.
pub(crate) struct RdmaListener {
    pub(crate) queue: Rc<AcceptQueue>,
    stop: Rc<RefCell<(bool, Option<Waker>)>>,
}

impl Drop for RdmaListener {
    fn drop(&mut self) {
        self.queue.close();
        let w = {
            let mut s = self.stop.borrow_mut();
            s.0 = true;
            s.1.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// The receive credits a connection posts: the context's, or fewer when
/// the endpoint asks (`?credits=`).
fn credits_for(core: &CoreState, endpoint: &Endpoint) -> Result<u32, Error> {
    let max = core.config.recv_buffers;
    match endpoint.options().credits() {
        None => Ok(max),
        Some(c) if c.get() >= 2 && c.get() <= max => Ok(c.get()),
        Some(_) => Err(Error::Usage(
            "rdma:// credits= must lie between 2 and the context's recv_buffers",
        )),
    }
}

fn first_addr(endpoint: &Endpoint) -> Result<std::net::SocketAddr, Error> {
    let what = format!("resolve {endpoint}");
    endpoint
        .socket_addrs()
        .map_err(|e| Error::io(what.clone(), e))?
        .into_iter()
        .next()
        .ok_or_else(|| {
            Error::io(
                what,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            )
        })
}

/// Listens on `endpoint`: fails at once without an RDMA device.
pub(crate) fn bind(
    endpoint: &Endpoint,
    config: &Config,
) -> Result<(RdmaListener, Endpoint), Error> {
    let core = core_state()?;
    let credits = credits_for(&core, endpoint)?;
    let addr = first_addr(endpoint)?;
    let tcp = TcpListener::bind(addr).map_err(|e| Error::io(format!("listen on {endpoint}"), e))?;
    let local = Endpoint::socket(Scheme::Rdma, tcp.local_addr())
        .and_then(|e| e.with_options(endpoint.options().clone()))
        .map_err(|_| Error::Usage("internal: the bound address is not an endpoint"))?;
    let queue = Rc::new(AcceptQueue::default());
    let stop = Rc::new(RefCell::new((false, None)));
    spawn_local(accept_loop(
        tcp,
        queue.clone(),
        stop.clone(),
        core,
        config.clone(),
        credits,
    ));
    Ok((RdmaListener { queue, stop }, local))
}

async fn accept_loop(
    mut tcp: TcpListener,
    queue: Rc<AcceptQueue>,
    stop: Rc<RefCell<(bool, Option<Waker>)>>,
    core: Rc<CoreState>,
    config: Config,
    credits: u32,
) {
    loop {
        let next = {
            let mut accept = pin!(tcp.accept());
            poll_fn(|cx| {
                if stop.borrow().0 {
                    return Poll::Ready(None);
                }
                match accept.as_mut().poll(cx) {
                    Poll::Ready(r) => Poll::Ready(r),
                    Poll::Pending => {
                        stop.borrow_mut().1 = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            })
            .await
        };
        let Some(res) = next else { return };
        let stream = match res {
            Ok(s) => s,
            Err(e) => {
                queue.push(Err(Error::io("accept an RDMA side channel", e)));
                continue;
            }
        };
        let remote = stream
            .peer_addr()
            .map_or_else(|_| "rdma peer".to_string(), |a| format!("rdma://{a}"));
        let (core, config, queue) = (core.clone(), config.clone(), queue.clone());
        spawn_local(async move {
            let res = ringwire_runtime::time::timeout(
                SETUP_TIMEOUT,
                establish(&core, stream, remote, &config, credits, false),
            )
            .await
            .unwrap_or_else(|_| Err(setup_timeout()));
            let res = match res {
                Ok(conn) => conn.handshake().await.map(|peer| {
                    if let Some(peers) = &config.peers {
                        peers.register(&conn, peer.node_id, ringwire_runtime::current_core());
                    }
                    Connection::new(conn)
                }),
                Err(e) => Err(e),
            };
            queue.push(res);
        });
    }
}

fn setup_timeout() -> Error {
    Error::Timeout {
        what: "RDMA connection setup",
        after: SETUP_TIMEOUT,
    }
}

/// Connects to `endpoint`: fails at once without an RDMA device.
pub(crate) async fn connect(endpoint: &Endpoint, config: &Config) -> Result<Connection, Error> {
    if config.reconnect.is_some() {
        return Err(Error::Usage(
            "rdma:// connections do not reconnect yet: drop Config::reconnect",
        ));
    }
    let core = core_state()?;
    let credits = credits_for(&core, endpoint)?;
    let addr = first_addr(endpoint)?;
    let conn = ringwire_runtime::time::timeout(SETUP_TIMEOUT, async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| Error::io(format!("connect to {endpoint}"), e))?;
        establish(&core, stream, endpoint.to_string(), config, credits, true).await
    })
    .await
    .unwrap_or_else(|_| Err(setup_timeout()))?;
    conn.handshake().await?;
    Ok(Connection::new(conn))
}

/// Makes the queue pair, exchanges over the side channel, connects, and
/// starts the connection's tasks.
async fn establish(
    core: &Rc<CoreState>,
    stream: TcpStream,
    remote: String,
    config: &Config,
    credits: u32,
    client: bool,
) -> Result<Rc<Conn>, Error> {
    let mut side = SideReader {
        stream,
        buf: Vec::new(),
    };
    let (mut lease, block) = Lease::take(core)?;
    let cfg = &core.config;
    let caps = QpCaps {
        max_send_wr: cfg.send_buffers + 1,
        max_recv_wr: cfg.recv_buffers,
        max_send_sge: 1,
        max_recv_sge: 1,
    };
    let qp = core
        .client
        .create_qp(caps)
        .await
        .map_err(|e| rdma_error("create an RDMA queue pair", e))?;
    lease.qp = Some(qp.id);
    let mut posted = VecDeque::with_capacity(credits as usize);
    for slot in 0..credits {
        let sge = core
            .region
            .sge(block.recv_offset(slot), block.size as u32)
            .ok_or(Error::Usage(
                "internal: RDMA receive buffer outside its region",
            ))?;
        posted.push_back((slot, core.client.post_recv(qp.id, &[sge])));
    }
    let mine = Exchange {
        qp_num: qp.qp_num,
        lid: qp.lid,
        gid: qp.gid,
        psn: qp.psn,
        mtu: qp.mtu,
        credits: Credits {
            count: credits,
            size: cfg.buffer_size,
        },
        regions: Vec::new(),
        handshake: config.schema().fingerprint().to_le_bytes().to_vec(),
    };
    let mut out = Vec::with_capacity(mine.encoded_len());
    mine.encode(&mut out).map_err(|e| {
        Error::io(
            "encode the RDMA side-channel exchange",
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        )
    })?;
    side.send(out).await?;
    let theirs = side.exchange().await?;
    let refuse = |why: String| {
        Error::io(
            format!("RDMA setup with {remote}"),
            std::io::Error::new(std::io::ErrorKind::InvalidData, why),
        )
    };
    if theirs.credits.count < 2 {
        return Err(refuse(format!(
            "the peer posts {} receive buffers; at least 2 are needed",
            theirs.credits.count
        )));
    }
    if (theirs.credits.size as usize) < CHUNK_HEADER + 64 {
        return Err(refuse(format!(
            "the peer's receive buffers of {} bytes are too small",
            theirs.credits.size
        )));
    }
    let mtu = if theirs.mtu.bytes() < qp.mtu.bytes() {
        theirs.mtu
    } else {
        qp.mtu
    };
    core.client
        .connect(
            qp.id,
            theirs.remote_qp(),
            ConnectParams {
                mtu,
                rnr_retry: cfg.rnr_retry,
                ..ConnectParams::default()
            },
        )
        .await
        .map_err(|e| rdma_error(format!("connect the RDMA queue pair to {remote}"), e))?;
    // Both queue pairs are ready before either sends.
    side.send(vec![1]).await?;
    side.fill(1)
        .await
        .map_err(|e| Error::io("read the RDMA side channel", e))?;
    if side.buf[0] != 1 {
        return Err(refuse("the peer's ready byte is wrong".into()));
    }
    side.buf.drain(..1);

    let conn = Conn::new(Scheme::Rdma, remote, config, client);
    let room = (cfg.buffer_size.min(theirs.credits.size) as usize) - CHUNK_HEADER;
    let link = Rc::new(Link {
        conn: conn.clone(),
        qp,
        block,
        lease: RefCell::new(Some(lease)),
        room,
        credits: Cell::new(theirs.credits.count),
        window: credits,
        to_return: Cell::new(0),
        free_send: RefCell::new((0..cfg.send_buffers).rev().collect()),
        flusher: RefCell::new(None),
        sends: RefCell::new(VecDeque::new()),
        completer: RefCell::new(None),
        control: RefCell::new(VecDeque::new()),
        grants: RefCell::new(VecDeque::new()),
        offers: Cell::new(0),
        sent: Cell::new(0),
        received: Cell::new(0),
        lifeline: RefCell::new(None),
        ended: Cell::new(false),
        flushed: Cell::new(false),
        done: Cell::new(false),
    });
    let ender = link.clone();
    conn.on_end(Box::new(move || {
        ender.ended.set(true);
        ender.wake_all();
    }));
    let link_no = conn.link();
    spawn_local(flusher(link.clone(), link_no));
    spawn_local(send_completer(link.clone()));
    spawn_local(reader(link.clone(), posted));
    spawn_local(lifeline(link, side, link_no));
    spawn_local(conn.clone().run_timer());
    Ok(conn)
}

/// How long an ended connection keeps its queue pair for the peer's
/// goodbye, at most.
const LINGER: Duration = Duration::from_secs(5);

/// What the side channel said.
enum Heard {
    /// The peer's goodbye: the number of chunks it sent.
    Goodbye(u64),
    /// End of stream or an error without a goodbye.
    Gone,
}

/// Reads the peer's goodbye (8 bytes: chunks sent) or the end of the side
/// channel.
async fn hear(side: &mut SideReader) -> Heard {
    match side.fill(8).await {
        Ok(()) => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&side.buf[..8]);
            side.buf.drain(..8);
            Heard::Goodbye(u64::from_le_bytes(n))
        }
        Err(_) => Heard::Gone,
    }
}

/// The connection's lifeline: the side channel stays open while the queue
/// pair is in use. When the connection ends, this side says goodbye (the
/// number of chunks it sent) and waits for the peer's before destroying its
/// queue pair, so neither side's last messages meet a queue pair that is
/// gone. When the peer says goodbye first, its chunks are taken before the
/// engine learns the peer is done; when the side channel breaks without a
/// goodbye, the peer is gone.
async fn lifeline(link: Rc<Link>, mut side: SideReader, link_no: u64) {
    let conn = link.conn.clone();
    let heard = {
        let mut heard = pin!(hear(&mut side));
        poll_fn(|cx| {
            if let Poll::Ready(h) = heard.as_mut().poll(cx) {
                return Poll::Ready(Some(h));
            }
            if link.done.get() || link.ended.get() {
                return Poll::Ready(None);
            }
            *link.lifeline.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    };
    let wait = |cond: fn(&Link) -> bool| {
        let link = link.clone();
        poll_fn(move |cx| {
            if link.done.get() || cond(&link) {
                return Poll::Ready(());
            }
            *link.lifeline.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
    };
    match heard {
        Some(Heard::Goodbye(n)) => {
            // Everything the peer sent is taken first (unless the
            // connection ended meanwhile).
            let link2 = link.clone();
            poll_fn(|cx| {
                if link2.done.get() || link2.ended.get() || link2.received.get() >= n {
                    return Poll::Ready(());
                }
                *link2.lifeline.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            conn.on_eof(link_no);
            // What the engine still sends (a close answer) goes first.
            let _ = ringwire_runtime::time::timeout(LINGER, wait(|l| l.flushed.get())).await;
            let _ = goodbye(&link, &side).await;
        }
        Some(Heard::Gone) => {
            conn.on_eof(link_no);
        }
        None => {
            // This side ended first: its last frames go out, then it says
            // so and waits for the peer's goodbye (or its end, or the
            // linger time) before the queue pair goes.
            let _ = ringwire_runtime::time::timeout(LINGER, wait(|l| l.flushed.get())).await;
            if goodbye(&link, &side).await.is_ok() {
                let _ = ringwire_runtime::time::timeout(LINGER, hear(&mut side)).await;
            }
        }
    }
    link.stop();
    // Destroys the queue pair (what is still posted is flushed), then gives
    // the block back.
    drop(link.lease.borrow_mut().take());
}

/// Sends this side's goodbye and shuts the side channel's write half.
async fn goodbye(link: &Link, side: &SideReader) -> Result<(), Error> {
    // Sends still posted complete before the count means anything to the
    // peer: they were posted before it, and the queue pair delivers in
    // order.
    side.send(link.sent.get().to_le_bytes().to_vec()).await?;
    side.stream
        .shutdown(std::net::Shutdown::Write)
        .await
        .map_err(|e| Error::io("shut the RDMA side channel", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(kind: u8, returned: u32, payload: &[u8]) -> Vec<u8> {
        let mut c = vec![0u8; CHUNK_HEADER];
        c[0] = kind;
        c[4..8].copy_from_slice(&returned.to_le_bytes());
        c[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        c.extend_from_slice(payload);
        c
    }

    #[test]
    fn chunks_parse_and_bad_ones_are_refused() {
        let c = chunk(KIND_DATA, 3, b"frames");
        assert_eq!(parse_chunk(&c).unwrap(), (KIND_DATA, 3, &b"frames"[..]));
        // Trailing bytes past the declared length are ignored.
        let mut longer = c.clone();
        longer.extend_from_slice(&[0; 8]);
        assert_eq!(parse_chunk(&longer).unwrap().2, b"frames");
        assert_eq!(parse_chunk(&chunk(KIND_CREDIT, 9, &[])).unwrap().1, 9);
        let offer = [0u8; HEADER_LEN];
        assert!(parse_chunk(&chunk(KIND_BULK_OFFER, 0, &offer)).is_ok());
        assert!(parse_chunk(&chunk(KIND_GRANT, 0, &[0; GRANT_LEN])).is_ok());

        let bad: Vec<(Vec<u8>, &str)> = vec![
            (vec![1, 0, 0], "shorter than"),
            (chunk(KIND_CREDIT, 1, b"x"), "credit message carries"),
            (chunk(KIND_BULK_OFFER, 0, &[0; 3]), "control message"),
            (chunk(KIND_GRANT, 0, &[0; 3]), "control message"),
            (chunk(99, 0, &[]), "unknown kind"),
            (
                {
                    let mut c = chunk(KIND_DATA, 0, b"ab");
                    c[8] = 200;
                    c
                },
                "declares 200",
            ),
            (
                {
                    let mut c = chunk(KIND_DATA, 0, b"ab");
                    c[13] = 1;
                    c
                },
                "reserved",
            ),
        ];
        for (c, want) in bad {
            let e = parse_chunk(&c).unwrap_err();
            assert!(e.contains(want), "{e} (wanted {want:?})");
        }
    }

    #[test]
    fn grants_round_trip_and_bad_flags_are_refused() {
        let g = Grant {
            addr: 0x7f00_1234_5678,
            len: 300_000,
            rkey: 0xabcd,
            granted: true,
        };
        let back = Grant::decode(&g.encode()).unwrap();
        assert_eq!(
            (back.addr, back.len, back.rkey, back.granted),
            (g.addr, g.len, g.rkey, g.granted)
        );
        let mut b = g.encode();
        b[20] = 2;
        assert!(Grant::decode(&b).unwrap_err().contains("flag 2"));
        assert!(Grant::decode(&b[..5]).is_err());
    }

    #[test]
    fn config_limits_are_checked() {
        assert!(RdmaConfig::default().check().is_ok());
        assert!(RdmaConfig::default().recv_buffers(1).check().is_err());
        assert!(RdmaConfig::default().buffer_size(64).check().is_err());
        assert!(RdmaConfig::default().send_buffers(0).check().is_err());
        assert!(RdmaConfig::default()
            .connections_per_core(0)
            .check()
            .is_err());
        assert_eq!(RdmaConfig::default().block_len(), (32 + 16) * 8192);
    }
}
