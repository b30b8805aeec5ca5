//! The completion core: one dedicated thread that owns the verbs context,
//! protection domain, completion queue and queue pairs, and does every verbs
//! call on behalf of the executor cores.
//!
//! The core is a one-core ringwire [`Runtime`] (pinned to the CPU given in
//! [`CompletionConfig::cpu`], or unpinned), so executor cores reach it
//! through typed mailbox channels, one pair per executor core ("lane"):
//! work requests one way, replies the other, both SPSC rings that ring a
//! doorbell only when the other side sleeps.
//!
//! How it is used, in order:
//! 1. [`CompletionCore::start`] with a device opener (run on the core, so
//!    the device context never leaves it), the buffer memory to register
//!    ([`RegionSpec`], each region once, at start) and one lane per executor
//!    core. It returns the running core and one [`LaneEndpoint`] per lane,
//!    or the device's error at once (no device: [`VerbsError::NoDevice`]).
//! 2. Move each endpoint to its executor core and [`CompletionClient::attach`]
//!    it there: this spawns the task that routes replies to the futures
//!    waiting on that core.
//! 3. Make queue pairs ([`CompletionClient::create_qp`]), connect them with
//!    what the peer sent over the side channel ([`CompletionClient::connect`]),
//!    then post receives and sends. Posting is immediate (the request is in
//!    the lane's ring when the call returns); the returned [`Pending`]
//!    resolves with the request's work completion, on the core that posted
//!    it.
//! 4. [`CompletionCore::shutdown`]: every request still pending, and every
//!    request made later, fails with [`RdmaError::ShuttingDown`] or
//!    [`RdmaError::Closed`]; nothing hangs.
//!
//! The core polls its completion queue either busily ([`PollMode::Busy`]:
//! the runtime never blocks, lowest latency, one CPU at 100%) or by waiting
//! on the completion channel's descriptor on its own ring
//! ([`PollMode::Channel`]: arm, re-poll, sleep until the channel or a lane
//! has something). Completions are matched to requests by work request id;
//! an unsignaled send resolves when a later send on the same queue pair
//! completes (reliable connections complete in order), or fails with the
//! queue pair.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ringwire_runtime::mailbox::ring::{TryRecvError, TrySendError};
use ringwire_runtime::mailbox::{channel, Receiver, Sender};
use ringwire_runtime::{
    is_shutting_down, spawn_local, yield_now, Doorbell, IdleStrategy, Placement, Runtime,
    ShutdownReport,
};
use slab::Slab;

use super::verbs::{
    Access, CqId, Gid, MrId, MrKeys, Mtu, PdId, PortInfo, QpCaps, QpId, QpTransition, RecvWr,
    RemoteQp, RtrAttr, RtsAttr, SendOp, SendWr, Sge, Verbs, VerbsError, WcOpcode, WcStatus,
    WorkCompletion, MAX_SGE,
};

/// How the completion core waits for completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollMode {
    /// Poll the completion queue in a loop: the lowest latency, and a CPU
    /// kept at 100%.
    Busy,
    /// Sleep on the completion channel's descriptor (and the lanes) when
    /// there is nothing to do; a wake-up costs a context switch.
    Channel,
}

/// Configuration of a [`CompletionCore`]; each setter says what it costs.
#[derive(Clone, Debug)]
pub struct CompletionConfig {
    lanes: usize,
    cpu: Option<usize>,
    mode: PollMode,
    cq_entries: u32,
    mailbox_capacity: usize,
    poll_batch: usize,
}

impl CompletionConfig {
    /// A configuration for `lanes` executor cores: unpinned, waiting on the
    /// completion channel, a 4096-entry completion queue, 1024-slot lanes.
    pub fn new(lanes: usize) -> CompletionConfig {
        CompletionConfig {
            lanes,
            cpu: None,
            mode: PollMode::Channel,
            cq_entries: 4096,
            mailbox_capacity: 1024,
            poll_batch: 64,
        }
    }

    /// Pin the core to this CPU (`None`: unpinned, for tests). A dedicated
    /// CPU is what the busy mode assumes.
    pub fn cpu(mut self, cpu: Option<usize>) -> Self {
        self.cpu = cpu;
        self
    }

    /// Busy polling or waiting on the completion channel.
    pub fn poll_mode(mut self, mode: PollMode) -> Self {
        self.mode = mode;
        self
    }

    /// Completion queue entries: at least every receive and signaled send
    /// outstanding at once on all queue pairs. About 64 bytes each, pinned
    /// device memory.
    pub fn cq_entries(mut self, entries: u32) -> Self {
        self.cq_entries = entries;
        self
    }

    /// Slots in each lane's request and reply rings (rounded up to a power
    /// of two). Memory per lane: at most 128 bytes per request slot plus 64
    /// per reply slot (112 + 64 on x86-64).
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.mailbox_capacity = capacity;
        self
    }

    /// Completions taken per poll of the completion queue.
    pub fn poll_batch(mut self, batch: usize) -> Self {
        self.poll_batch = batch.max(1);
        self
    }
}

/// Errors of the completion core and its requests.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RdmaError {
    /// A verbs call failed (including: no device).
    #[error(transparent)]
    Verbs(#[from] VerbsError),
    /// The work request completed with an error status.
    #[error("work request on queue pair {qp_num:#x} failed: {status}")]
    Completion {
        /// How it ended.
        status: WcStatus,
        /// The local queue pair.
        qp_num: u32,
        /// Vendor error syndrome.
        vendor_err: u32,
    },
    /// The queue pair does not exist (or was destroyed).
    #[error("unknown queue pair {0:?}")]
    UnknownQp(QpId),
    /// The queue pair belongs to another executor core's lane.
    #[error("queue pair {qp:?} belongs to lane {owner}, not lane {lane}")]
    NotOwner {
        /// The queue pair.
        qp: QpId,
        /// Its lane.
        owner: usize,
        /// The lane that asked.
        lane: usize,
    },
    /// The queue pair went to the error state; it takes no more requests.
    #[error("queue pair {qp_num:#x} is in the error state")]
    QpBroken {
        /// The queue pair.
        qp_num: u32,
    },
    /// A request the core cannot carry out as asked.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The completion core is shutting down; the request did not complete.
    #[error("the RDMA completion core is shutting down")]
    ShuttingDown,
    /// The completion core is gone.
    #[error("the RDMA completion core is gone")]
    Closed,
    /// The completion core's thread could not start.
    #[error("the RDMA completion core could not start: {0}")]
    Start(#[source] std::io::Error),
}

/// Memory handed to the device: page aligned, zeroed, shared between the
/// executor core that fills or reads it and the completion core that
/// registered it, and freed only when both are done with it.
pub struct RegionMemory {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the allocation is plain bytes owned by this value; access to the
// bytes goes through `unsafe` methods whose contracts exclude data races.
unsafe impl Send for RegionMemory {}
// SAFETY: as above.
unsafe impl Sync for RegionMemory {}

const PAGE: usize = 4096;

impl RegionMemory {
    /// `len` zeroed bytes, page aligned.
    pub fn new(len: usize) -> std::io::Result<Arc<RegionMemory>> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), PAGE)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("cannot allocate {len} bytes for an RDMA region"),
            ));
        }
        Ok(Arc::new(RegionMemory { ptr, len }))
    }

    /// Address of the first byte.
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes at `offset..offset + len`.
    ///
    /// # Safety
    ///
    /// While the slice lives, neither the device nor a peer may write those
    /// bytes: no receive posted on them is outstanding, and they are not in
    /// a range granted to a peer for RDMA WRITE.
    ///
    /// # Panics
    ///
    /// When the range is outside the region.
    pub unsafe fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: inside the allocation; the caller excludes writers.
        unsafe { std::slice::from_raw_parts(self.ptr.add(offset), len) }
    }

    /// Copies `data` to `offset`.
    ///
    /// # Safety
    ///
    /// Nothing else reads or writes those bytes meanwhile: no request on
    /// them is outstanding and no other thread uses them.
    ///
    /// # Panics
    ///
    /// When the range is outside the region.
    pub unsafe fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset
            .checked_add(data.len())
            .is_some_and(|end| end <= self.len));
        // SAFETY: inside the allocation; the caller excludes other access.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset), data.len()) };
    }
}

impl Drop for RegionMemory {
    fn drop(&mut self) {
        if let Ok(layout) = std::alloc::Layout::from_size_align(self.len.max(1), PAGE) {
            // SAFETY: allocated in `new` with this layout, freed once.
            unsafe { std::alloc::dealloc(self.ptr, layout) };
        }
    }
}

impl std::fmt::Debug for RegionMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegionMemory({:#x}, {} bytes)", self.addr(), self.len)
    }
}

/// Memory to register at start, with the rights the device gets.
#[derive(Clone, Debug)]
pub struct RegionSpec {
    /// The memory.
    pub memory: Arc<RegionMemory>,
    /// Local write for receive buffers; remote write for regions exposed to
    /// peers for bulk.
    pub access: Access,
}

/// A registered region: its memory and keys.
#[derive(Clone, Debug)]
pub struct Region {
    /// The memory.
    pub memory: Arc<RegionMemory>,
    /// Local key, for scatter/gather entries.
    pub lkey: u32,
    /// Remote key, for peers granted writes into it.
    pub rkey: u32,
    /// The rights it was registered with.
    pub access: Access,
}

impl Region {
    /// A scatter/gather entry for `len` bytes at `offset`; `None` outside
    /// the region.
    pub fn sge(&self, offset: usize, len: u32) -> Option<Sge> {
        let end = offset.checked_add(len as usize)?;
        (end <= self.memory.len()).then(|| Sge {
            addr: self.memory.addr() + offset as u64,
            length: len,
            lkey: self.lkey,
        })
    }
}

/// A queue pair made by the completion core, initialised and ready to be
/// connected: what to send the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalQp {
    /// The handle for later requests.
    pub id: QpId,
    /// Its number.
    pub qp_num: u32,
    /// The port's LID.
    pub lid: u16,
    /// The port's GID.
    pub gid: Gid,
    /// Its initial send PSN (random, 24 bits).
    pub psn: u32,
    /// The port's active MTU.
    pub mtu: Mtu,
}

/// Connection parameters beyond the peer's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectParams {
    /// Path MTU cap (the smaller of this and the local port's is used).
    pub mtu: Mtu,
    /// Receiver-not-ready timer code (12: 0.64 ms).
    pub min_rnr_timer: u8,
    /// ACK timeout code (14: about 67 ms).
    pub timeout: u8,
    /// Transport retries.
    pub retry_cnt: u8,
    /// RNR retries (7: forever; credits should make RNR impossible).
    pub rnr_retry: u8,
}

impl Default for ConnectParams {
    fn default() -> ConnectParams {
        ConnectParams {
            mtu: Mtu::Mtu4096,
            min_rnr_timer: 12,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
        }
    }
}

/// Scatter/gather entries carried inline through the mailbox.
#[derive(Clone, Copy, Debug)]
struct SgeArray {
    sges: [Sge; MAX_SGE],
    len: u8,
}

impl SgeArray {
    fn new(sges: &[Sge]) -> Result<SgeArray, RdmaError> {
        if sges.len() > MAX_SGE {
            return Err(RdmaError::InvalidRequest(format!(
                "{} scatter/gather entries, at most {MAX_SGE}",
                sges.len()
            )));
        }
        let mut a = SgeArray {
            sges: [Sge::default(); MAX_SGE],
            len: sges.len() as u8,
        };
        a.sges[..sges.len()].copy_from_slice(sges);
        Ok(a)
    }

    fn as_slice(&self) -> &[Sge] {
        &self.sges[..usize::from(self.len)]
    }
}

enum Request {
    CreateQp(QpCaps),
    Connect(QpId, RemoteQp, ConnectParams),
    PostRecv(QpId, SgeArray),
    PostSend {
        qp: QpId,
        op: SendOp,
        sges: SgeArray,
        signaled: bool,
    },
    DestroyQp(QpId),
    RegMr {
        addr: u64,
        len: usize,
        access: Access,
    },
    DeregMr(MrId),
}

/// A request travelling to the completion core.
pub struct Envelope {
    token: u64,
    request: Request,
}

enum Outcome {
    Qp(LocalQp),
    Mr(MrKeys),
    Done,
    Completion(WorkCompletion),
}

/// A reply travelling back to an executor core.
pub struct Reply {
    token: u64,
    outcome: Result<Outcome, RdmaError>,
}

/// One executor core's ends of its lane, to be moved to that core and
/// attached there ([`CompletionClient::attach`]).
pub struct LaneEndpoint {
    lane: usize,
    requests: Sender<Envelope>,
    replies: Receiver<Reply>,
    port: PortInfo,
    regions: Arc<[Region]>,
}

impl LaneEndpoint {
    /// The lane's index.
    pub fn lane(&self) -> usize {
        self.lane
    }
}

/// A running completion core.
pub struct CompletionCore {
    runtime: Option<Runtime>,
    port: PortInfo,
    device: String,
    regions: Arc<[Region]>,
}

impl CompletionCore {
    /// Starts the core: opens the device with `open` (on the core's thread),
    /// allocates the protection domain and completion queue, registers
    /// `regions`, and returns the core with one endpoint per lane. Fails at
    /// once, with the device's error, when the device cannot be opened.
    pub fn start<V, F>(
        config: CompletionConfig,
        open: F,
        regions: Vec<RegionSpec>,
    ) -> Result<(CompletionCore, Vec<LaneEndpoint>), RdmaError>
    where
        V: Verbs + 'static,
        F: FnOnce() -> Result<V, VerbsError> + Send + 'static,
    {
        if config.lanes == 0 {
            return Err(RdmaError::InvalidRequest(
                "a completion core needs at least one lane".into(),
            ));
        }
        let placement = match config.cpu {
            Some(cpu) => Placement::Cpus(vec![cpu]),
            None => Placement::Unpinned(1),
        };
        let idle = match config.mode {
            PollMode::Busy => IdleStrategy::Poll,
            PollMode::Channel => IdleStrategy::Park,
        };
        // The core needs its ring for the channel and the mailboxes only:
        // no receive or send buffer pools to speak of. Its doorbells are
        // eventfds: the executor cores belong to another runtime.
        let runtime = Runtime::builder()
            .placement(placement)
            .idle(idle)
            .ring_entries(64)
            .recv_buffers(1)
            .recv_buffer_size(4096)
            .send_buffers(0)
            .doorbell(Doorbell::EventFd)
            .wait_batch(None)
            .thread_name("ringwire-rdma")
            .build()
            .map_err(|e| RdmaError::Start(e.into()))?;

        let mut endpoints = Vec::with_capacity(config.lanes);
        let mut lanes = Vec::with_capacity(config.lanes);
        for _ in 0..config.lanes {
            let (req_tx, req_rx) = channel::<Envelope>(config.mailbox_capacity);
            let (rep_tx, rep_rx) = channel::<Reply>(config.mailbox_capacity);
            endpoints.push((req_tx, rep_rx));
            lanes.push(Lane {
                requests: req_rx,
                replies: rep_tx,
                backlog: VecDeque::new(),
                open: true,
            });
        }

        let cfg = config.clone();
        let started = runtime.block_on(0, move || async move {
            let mut engine = Engine::open(open, regions, cfg, lanes)?;
            let info = (
                *engine.verbs.port(),
                engine.verbs.device_name().to_string(),
                engine.regions.clone(),
            );
            spawn_local(async move { engine.run().await });
            Ok::<_, RdmaError>(info)
        });
        let (port, device, regions) = match started {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                runtime.shutdown(Duration::from_secs(1));
                return Err(e);
            }
            Err(_) => {
                runtime.shutdown(Duration::from_secs(1));
                return Err(RdmaError::Start(std::io::Error::other(
                    "the completion core's start-up panicked",
                )));
            }
        };
        let endpoints = endpoints
            .into_iter()
            .enumerate()
            .map(|(lane, (requests, replies))| LaneEndpoint {
                lane,
                requests,
                replies,
                port,
                regions: regions.clone(),
            })
            .collect();
        Ok((
            CompletionCore {
                runtime: Some(runtime),
                port,
                device,
                regions,
            },
            endpoints,
        ))
    }

    /// The port in use.
    pub fn port(&self) -> &PortInfo {
        &self.port
    }

    /// The device's name.
    pub fn device_name(&self) -> &str {
        &self.device
    }

    /// The registered regions, in the order given to [`CompletionCore::start`].
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Stops the core: pending requests fail, queue pairs are destroyed,
    /// regions deregistered, the device closed; waits up to `grace`.
    pub fn shutdown(mut self, grace: Duration) -> ShutdownReport {
        self.runtime
            .take()
            .map(|rt| rt.shutdown(grace))
            .unwrap_or_default()
    }
}

impl Drop for CompletionCore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown(Duration::from_secs(5));
        }
    }
}

/// The completion core's end of one lane.
struct Lane {
    requests: Receiver<Envelope>,
    replies: Sender<Reply>,
    /// Replies that found the ring full, in order.
    backlog: VecDeque<Reply>,
    /// The executor side is still there.
    open: bool,
}

impl Lane {
    fn reply(&mut self, reply: Reply) {
        if !self.open {
            return;
        }
        if !self.backlog.is_empty() {
            self.backlog.push_back(reply);
            return;
        }
        match self.replies.try_send(reply) {
            Ok(()) => {}
            Err(TrySendError::Full(r)) => self.backlog.push_back(r),
            Err(TrySendError::Closed(_)) => self.open = false,
        }
    }

    fn flush(&mut self) {
        while let Some(r) = self.backlog.pop_front() {
            match self.replies.try_send(r) {
                Ok(()) => {}
                Err(TrySendError::Full(r)) => {
                    self.backlog.push_front(r);
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    self.open = false;
                    self.backlog.clear();
                    return;
                }
            }
        }
    }
}

/// A request posted to the device, waiting for its completion.
struct Inflight {
    /// Upper half of the work request id: a completion left over from a
    /// destroyed queue pair never matches a request that reused the key.
    generation: u32,
    lane: usize,
    token: u64,
    qp: QpId,
    /// The completion opcode of a send; `None` for a receive.
    send: Option<(WcOpcode, bool)>,
}

struct QpEntry {
    owner: usize,
    qp_num: u32,
    psn: u32,
    broken: bool,
    /// Work request ids of outstanding sends, in post order.
    sends: VecDeque<u64>,
    /// Work request ids of outstanding receives.
    recvs: Vec<u64>,
}

/// Everything the completion core owns. Field order is drop order: the
/// device context (and all its objects) goes before the memory it had
/// registered.
struct Engine<V: Verbs> {
    verbs: V,
    regions: Arc<[Region]>,
    pd: PdId,
    cq: CqId,
    channel: Option<Rc<OwnedFd>>,
    config: CompletionConfig,
    lanes: Vec<Lane>,
    inflight: Slab<Inflight>,
    qps: HashMap<QpId, QpEntry>,
    qp_by_num: HashMap<u32, QpId>,
    /// Regions registered on request, by owning lane.
    mrs: HashMap<MrId, usize>,
    wcs: Vec<WorkCompletion>,
    psn_seed: u64,
    generation: u32,
}

/// What woke the channel-mode wait.
enum Wake {
    Request(usize, Envelope),
    LaneClosed(usize),
    Channel,
    Timer,
}

impl<V: Verbs> Engine<V> {
    fn open<F>(
        open: F,
        specs: Vec<RegionSpec>,
        config: CompletionConfig,
        lanes: Vec<Lane>,
    ) -> Result<Engine<V>, RdmaError>
    where
        F: FnOnce() -> Result<V, VerbsError>,
    {
        let mut verbs = open()?;
        let pd = verbs.alloc_pd()?;
        let with_channel = config.mode == PollMode::Channel;
        let cq = verbs.create_cq(config.cq_entries, with_channel)?;
        let channel = match verbs.cq_channel_fd(cq) {
            Some(fd) if with_channel => Some(Rc::new(fd.try_clone_to_owned().map_err(|e| {
                VerbsError::Call {
                    call: "dup(completion channel)",
                    source: e,
                }
            })?)),
            _ => None,
        };
        let mut regions = Vec::with_capacity(specs.len());
        for spec in specs {
            // Remote write needs local write too (a verbs rule).
            let access = spec.access.union(Access::LOCAL_WRITE);
            // SAFETY: the memory is an `Arc<RegionMemory>` kept in
            // `Engine::regions`, which is dropped after `verbs` (field
            // order), so it outlives the registration; `RegionMemory`'s
            // accessors are `unsafe` with contracts that exclude access to
            // bytes the device may be writing.
            let keys = unsafe { verbs.reg_mr(pd, spec.memory.ptr, spec.memory.len(), access) }?;
            regions.push(Region {
                memory: spec.memory,
                lkey: keys.lkey,
                rkey: keys.rkey,
                access,
            });
        }
        Ok(Engine {
            verbs,
            regions: regions.into(),
            pd,
            cq,
            channel,
            config,
            lanes,
            inflight: Slab::new(),
            qps: HashMap::new(),
            qp_by_num: HashMap::new(),
            mrs: HashMap::new(),
            wcs: Vec::new(),
            generation: 0,
            psn_seed: std::collections::hash_map::RandomState::new().hash_one(0u64),
        })
    }

    async fn run(&mut self) {
        let mut fd_wait: Option<Pin<Box<ringwire_runtime::net::Readable>>> = None;
        loop {
            if is_shutting_down() {
                break;
            }
            let mut work = self.take_requests();
            match self.poll_cq() {
                Ok(n) => work += n,
                Err(e) => {
                    tracing::error!("RDMA completion queue failed: {e}; stopping");
                    break;
                }
            }
            for lane in &mut self.lanes {
                lane.flush();
            }
            if self.lanes.iter().all(|l| !l.open) {
                // Every executor side is gone: nobody can ask for anything.
                break;
            }
            if work > 0 || self.config.mode == PollMode::Busy {
                yield_now().await;
                continue;
            }
            // Channel mode, nothing to do: arm, re-poll (completions that
            // arrived before the arm raise no event), then sleep.
            if let Err(e) = self.verbs.req_notify_cq(self.cq, false) {
                tracing::error!("RDMA completion channel failed: {e}; stopping");
                break;
            }
            match self.poll_cq() {
                Ok(0) => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!("RDMA completion queue failed: {e}; stopping");
                    break;
                }
            }
            let backlog = self.lanes.iter().any(|l| !l.backlog.is_empty());
            let wake = {
                let lanes = &mut self.lanes;
                let channel = &self.channel;
                let mut backoff = backlog
                    .then(|| Box::pin(ringwire_runtime::time::sleep(Duration::from_micros(100))));
                poll_fn(|cx| {
                    for (i, lane) in lanes.iter_mut().enumerate().filter(|(_, l)| l.open) {
                        // The receiver keeps its waker and park state; the
                        // future itself holds nothing and may be dropped.
                        match pin!(lane.requests.recv()).poll(cx) {
                            Poll::Ready(Some(envelope)) => {
                                return Poll::Ready(Wake::Request(i, envelope))
                            }
                            Poll::Ready(None) => return Poll::Ready(Wake::LaneClosed(i)),
                            Poll::Pending => {}
                        }
                    }
                    if let Some(fd) = channel {
                        let wait = fd_wait.get_or_insert_with(|| {
                            Box::pin(ringwire_runtime::net::readable(fd.clone()))
                        });
                        if wait.as_mut().poll(cx).is_ready() {
                            fd_wait = None;
                            return Poll::Ready(Wake::Channel);
                        }
                    }
                    if let Some(b) = backoff.as_mut() {
                        if b.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Wake::Timer);
                        }
                    }
                    if is_shutting_down() {
                        return Poll::Ready(Wake::Timer);
                    }
                    Poll::Pending
                })
                .await
            };
            match wake {
                Wake::Request(lane, envelope) => self.handle(lane, envelope),
                Wake::LaneClosed(lane) => self.close_lane(lane),
                Wake::Channel => {
                    if let Err(e) = self.verbs.get_cq_events(self.cq) {
                        tracing::error!("RDMA completion channel failed: {e}; stopping");
                        break;
                    }
                }
                Wake::Timer => {}
            }
        }
        self.fail_everything().await;
    }
}

impl<V: Verbs> Engine<V> {
    /// Takes what the lanes sent (a bounded batch per lane); returns how
    /// many requests it handled.
    fn take_requests(&mut self) -> usize {
        let mut handled = 0;
        for lane in 0..self.lanes.len() {
            for _ in 0..self.config.poll_batch {
                if !self.lanes[lane].open {
                    break;
                }
                match self.lanes[lane].requests.try_recv() {
                    Ok(envelope) => {
                        self.handle(lane, envelope);
                        handled += 1;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => {
                        self.close_lane(lane);
                        break;
                    }
                }
            }
        }
        handled
    }

    /// The executor side of a lane is gone: its queue pairs go with it.
    fn close_lane(&mut self, lane: usize) {
        self.lanes[lane].open = false;
        let owned: Vec<QpId> = self
            .qps
            .iter()
            .filter(|(_, q)| q.owner == lane)
            .map(|(id, _)| *id)
            .collect();
        for qp in owned {
            self.destroy(qp);
        }
        // The lane's memory may go with its core: the device lets go first.
        let mrs: Vec<MrId> = self
            .mrs
            .iter()
            .filter(|(_, owner)| **owner == lane)
            .map(|(id, _)| *id)
            .collect();
        for mr in mrs {
            self.mrs.remove(&mr);
            if let Err(e) = self.verbs.dereg_mr(mr) {
                tracing::warn!("deregistering an RDMA region of a closed lane: {e}");
            }
        }
    }

    fn reply(&mut self, lane: usize, token: u64, outcome: Result<Outcome, RdmaError>) {
        self.lanes[lane].reply(Reply { token, outcome });
    }

    fn handle(&mut self, lane: usize, Envelope { token, request }: Envelope) {
        let outcome = match request {
            Request::CreateQp(caps) => self.create_qp(lane, &caps).map(Outcome::Qp),
            Request::Connect(qp, remote, params) => match self.owned(lane, qp) {
                Ok(_) => self.connect(qp, remote, params).map(|()| Outcome::Done),
                Err(e) => Err(e),
            },
            Request::DestroyQp(qp) => match self.owned(lane, qp) {
                Ok(_) => {
                    self.destroy(qp);
                    Ok(Outcome::Done)
                }
                Err(e) => Err(e),
            },
            Request::RegMr { addr, len, access } => {
                // Remote write needs local write too (a verbs rule).
                let access = if access.contains(Access::REMOTE_WRITE) {
                    access.union(Access::LOCAL_WRITE)
                } else {
                    access
                };
                // SAFETY: `CompletionClient::reg_mr`'s contract: the range
                // stays allocated, and is treated as shared with the device,
                // until the region is deregistered or the lane closes (which
                // deregisters it, above).
                match unsafe { self.verbs.reg_mr(self.pd, addr as *mut u8, len, access) } {
                    Ok(keys) => {
                        self.mrs.insert(keys.id, lane);
                        Ok(Outcome::Mr(keys))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Request::DeregMr(mr) => match self.mrs.get(&mr) {
                Some(&owner) if owner == lane => {
                    self.mrs.remove(&mr);
                    self.verbs
                        .dereg_mr(mr)
                        .map(|()| Outcome::Done)
                        .map_err(RdmaError::from)
                }
                _ => Err(RdmaError::InvalidRequest(
                    "no such region registered by this lane".into(),
                )),
            },
            Request::PostRecv(qp, sges) => match self.post_recv(lane, token, qp, &sges) {
                // The reply comes with the completion.
                Ok(()) => return,
                Err(e) => Err(e),
            },
            Request::PostSend {
                qp,
                op,
                sges,
                signaled,
            } => match self.post_send(lane, token, qp, op, &sges, signaled) {
                Ok(()) => return,
                Err(e) => Err(e),
            },
        };
        self.reply(lane, token, outcome);
    }

    /// The queue pair, if `lane` owns it and it still takes requests.
    fn owned(&self, lane: usize, qp: QpId) -> Result<&QpEntry, RdmaError> {
        let entry = self.qps.get(&qp).ok_or(RdmaError::UnknownQp(qp))?;
        if entry.owner != lane {
            return Err(RdmaError::NotOwner {
                qp,
                owner: entry.owner,
                lane,
            });
        }
        Ok(entry)
    }

    fn next_psn(&mut self) -> u32 {
        self.psn_seed = self.psn_seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write_u64(self.psn_seed);
        (h.finish() as u32) & 0x00ff_ffff
    }

    fn create_qp(&mut self, lane: usize, caps: &QpCaps) -> Result<LocalQp, RdmaError> {
        let info = self.verbs.create_qp(self.pd, self.cq, self.cq, caps)?;
        let access = Access::LOCAL_WRITE.union(Access::REMOTE_WRITE);
        if let Err(e) = self
            .verbs
            .modify_qp(info.id, &QpTransition::Init { access })
        {
            let _ = self.verbs.destroy_qp(info.id);
            return Err(e.into());
        }
        let psn = self.next_psn();
        self.qps.insert(
            info.id,
            QpEntry {
                owner: lane,
                qp_num: info.qp_num,
                psn,
                broken: false,
                sends: VecDeque::new(),
                recvs: Vec::new(),
            },
        );
        self.qp_by_num.insert(info.qp_num, info.id);
        let port = self.verbs.port();
        Ok(LocalQp {
            id: info.id,
            qp_num: info.qp_num,
            lid: port.lid,
            gid: port.gid,
            psn,
            mtu: port.active_mtu,
        })
    }

    fn connect(
        &mut self,
        qp: QpId,
        remote: RemoteQp,
        params: ConnectParams,
    ) -> Result<(), RdmaError> {
        let psn = self.qps.get(&qp).map(|q| q.psn).unwrap_or(0);
        let mtu = params.mtu.min(self.verbs.port().active_mtu);
        let rtr = RtrAttr {
            remote,
            mtu,
            min_rnr_timer: params.min_rnr_timer,
            max_dest_rd_atomic: 1,
        };
        self.verbs.modify_qp(qp, &QpTransition::Rtr(rtr))?;
        let rts = RtsAttr {
            sq_psn: psn,
            timeout: params.timeout,
            retry_cnt: params.retry_cnt,
            rnr_retry: params.rnr_retry,
            max_rd_atomic: 1,
        };
        self.verbs.modify_qp(qp, &QpTransition::Rts(rts))?;
        Ok(())
    }

    fn usable(&self, lane: usize, qp: QpId) -> Result<(), RdmaError> {
        let entry = self.owned(lane, qp)?;
        if entry.broken {
            return Err(RdmaError::QpBroken {
                qp_num: entry.qp_num,
            });
        }
        Ok(())
    }

    fn post_recv(
        &mut self,
        lane: usize,
        token: u64,
        qp: QpId,
        sges: &SgeArray,
    ) -> Result<(), RdmaError> {
        self.usable(lane, qp)?;
        self.generation = self.generation.wrapping_add(1);
        let key = self.inflight.insert(Inflight {
            generation: self.generation,
            lane,
            token,
            qp,
            send: None,
        });
        let wr_id = (u64::from(self.generation) << 32) | key as u64;
        let wr = RecvWr {
            wr_id,
            sges: sges.as_slice(),
        };
        if let Err(e) = self.verbs.post_recv(qp, &wr) {
            self.inflight.remove(key);
            return Err(e.into());
        }
        if let Some(entry) = self.qps.get_mut(&qp) {
            entry.recvs.push(wr_id);
        }
        Ok(())
    }

    fn post_send(
        &mut self,
        lane: usize,
        token: u64,
        qp: QpId,
        op: SendOp,
        sges: &SgeArray,
        signaled: bool,
    ) -> Result<(), RdmaError> {
        self.usable(lane, qp)?;
        self.generation = self.generation.wrapping_add(1);
        let key = self.inflight.insert(Inflight {
            generation: self.generation,
            lane,
            token,
            qp,
            send: Some((op.wc_opcode(), signaled)),
        });
        let wr_id = (u64::from(self.generation) << 32) | key as u64;
        let wr = SendWr {
            wr_id,
            op,
            sges: sges.as_slice(),
            signaled,
        };
        if let Err(e) = self.verbs.post_send(qp, &wr) {
            self.inflight.remove(key);
            return Err(e.into());
        }
        if let Some(entry) = self.qps.get_mut(&qp) {
            entry.sends.push_back(wr_id);
        }
        Ok(())
    }

    /// Destroys a queue pair; its outstanding requests fail (the device
    /// reports nothing for them once it is gone).
    fn destroy(&mut self, qp: QpId) {
        let Some(entry) = self.qps.remove(&qp) else {
            return;
        };
        self.qp_by_num.remove(&entry.qp_num);
        if let Err(e) = self.verbs.destroy_qp(qp) {
            tracing::warn!("destroying RDMA queue pair {:#x}: {e}", entry.qp_num);
        }
        let status = WcStatus::WrFlush;
        for wr_id in entry.sends.iter().chain(entry.recvs.iter()) {
            if let Some(inflight) = self.take_inflight(*wr_id) {
                let err = RdmaError::Completion {
                    status,
                    qp_num: entry.qp_num,
                    vendor_err: 0,
                };
                self.reply(inflight.lane, inflight.token, Err(err));
            }
        }
    }

    /// Polls the completion queue once (one batch); routes every
    /// completion. Returns how many there were.
    fn poll_cq(&mut self) -> Result<usize, RdmaError> {
        let mut wcs = std::mem::take(&mut self.wcs);
        wcs.clear();
        let n = self
            .verbs
            .poll_cq(self.cq, &mut wcs, self.config.poll_batch)?;
        for wc in wcs.drain(..) {
            self.route(wc);
        }
        self.wcs = wcs;
        Ok(n)
    }

    /// The request with this work request id, if it is still in flight.
    fn take_inflight(&mut self, wr_id: u64) -> Option<Inflight> {
        let key = (wr_id & 0xffff_ffff) as usize;
        let generation = (wr_id >> 32) as u32;
        match self.inflight.get(key) {
            Some(i) if i.generation == generation => Some(self.inflight.remove(key)),
            _ => None,
        }
    }

    fn route(&mut self, wc: WorkCompletion) {
        let Some(inflight) = self.take_inflight(wc.wr_id) else {
            tracing::warn!("RDMA completion for unknown work request {}", wc.wr_id);
            return;
        };
        let failed = wc.status != WcStatus::Success;
        let mut silent = Vec::new();
        if let Some(entry) = self.qps.get_mut(&inflight.qp) {
            if failed {
                entry.broken = true;
            }
            if inflight.send.is_some() {
                // Sends complete in order: those posted before this one that
                // reported nothing (unsignaled) have completed successfully.
                while let Some(id) = entry.sends.pop_front() {
                    if id == wc.wr_id {
                        break;
                    }
                    silent.push(id);
                }
            } else if let Some(at) = entry.recvs.iter().position(|&id| id == wc.wr_id) {
                entry.recvs.swap_remove(at);
            }
        }
        for id in silent {
            if let Some(done) = self.take_inflight(id) {
                let opcode = done.send.map(|(op, _)| op).unwrap_or(WcOpcode::Send);
                let ok = WorkCompletion {
                    wr_id: id,
                    status: WcStatus::Success,
                    opcode,
                    byte_len: 0,
                    imm: None,
                    qp_num: wc.qp_num,
                    vendor_err: 0,
                };
                self.reply(done.lane, done.token, Ok(Outcome::Completion(ok)));
            }
        }
        let outcome = if failed {
            Err(RdmaError::Completion {
                status: wc.status,
                qp_num: wc.qp_num,
                vendor_err: wc.vendor_err,
            })
        } else {
            Ok(Outcome::Completion(wc))
        };
        self.reply(inflight.lane, inflight.token, outcome);
    }

    /// Shutdown: every request in flight or still in a lane fails, the
    /// replies go out (while the runtime's grace lasts), queue pairs are
    /// destroyed.
    async fn fail_everything(&mut self) {
        let pending: Vec<Inflight> = self.inflight.drain().collect();
        for p in pending {
            self.reply(p.lane, p.token, Err(RdmaError::ShuttingDown));
        }
        for lane in 0..self.lanes.len() {
            while self.lanes[lane].open {
                match self.lanes[lane].requests.try_recv() {
                    Ok(Envelope { token, .. }) => {
                        self.reply(lane, token, Err(RdmaError::ShuttingDown))
                    }
                    Err(_) => break,
                }
            }
        }
        let qps: Vec<QpId> = self.qps.keys().copied().collect();
        for qp in qps {
            self.destroy(qp);
        }
        // Replies that found a full ring: retry while the grace period
        // lasts (the runtime drops this task at its deadline; the clients
        // then see the lane closed and fail what is left).
        loop {
            for lane in &mut self.lanes {
                lane.flush();
            }
            if self.lanes.iter().all(|l| l.backlog.is_empty()) {
                break;
            }
            yield_now().await;
        }
    }
}

/// Where a request's reply lands on the executor core.
enum Slot {
    Waiting(Option<Waker>),
    Done(Result<Outcome, RdmaError>),
}

struct ClientInner {
    lane: usize,
    requests: RefCell<Sender<Envelope>>,
    /// Requests that found the lane's ring full, in order.
    backlog: RefCell<VecDeque<Envelope>>,
    flusher: Cell<bool>,
    /// Waiting requests by slab key, with the generation in the token's
    /// upper half, so a late reply to an abandoned request finds nothing.
    slots: RefCell<Slab<(u32, Slot)>>,
    generation: Cell<u32>,
    closed: Cell<bool>,
    port: PortInfo,
    regions: Arc<[Region]>,
}

/// An executor core's handle on the completion core. Cheap to clone; stays
/// on the core it was attached on.
#[derive(Clone)]
pub struct CompletionClient {
    inner: Rc<ClientInner>,
}

impl CompletionClient {
    /// Attaches a lane on the current executor core and starts the task
    /// that routes its replies.
    ///
    /// # Panics
    ///
    /// Off a ringwire core thread.
    pub fn attach(endpoint: LaneEndpoint) -> CompletionClient {
        let LaneEndpoint {
            lane,
            requests,
            mut replies,
            port,
            regions,
        } = endpoint;
        let inner = Rc::new(ClientInner {
            lane,
            requests: RefCell::new(requests),
            backlog: RefCell::new(VecDeque::new()),
            flusher: Cell::new(false),
            slots: RefCell::new(Slab::new()),
            generation: Cell::new(0),
            closed: Cell::new(false),
            port,
            regions,
        });
        let router = inner.clone();
        spawn_local(async move {
            loop {
                // Routes until the completion core is gone, or until this
                // core shuts down with nobody waiting for a reply.
                let next = poll_fn(|cx| {
                    if is_shutting_down() && router.slots.borrow().is_empty() {
                        return Poll::Ready(None);
                    }
                    pin!(replies.recv()).poll(cx)
                })
                .await;
                match next {
                    Some(reply) => router.complete(reply.token, reply.outcome),
                    None => break,
                }
            }
            router.close();
        });
        CompletionClient { inner }
    }

    /// This client's lane.
    pub fn lane(&self) -> usize {
        self.inner.lane
    }

    /// The completion core's port (LID, GID, MTU).
    pub fn port(&self) -> &PortInfo {
        &self.inner.port
    }

    /// The regions registered at start.
    pub fn regions(&self) -> &[Region] {
        &self.inner.regions
    }

    /// Whether the completion core is gone.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.get()
    }

    /// Creates a queue pair and initialises it; the result is what the peer
    /// needs to connect (see the side channel's `Exchange`).
    pub fn create_qp(&self, caps: QpCaps) -> Pending<LocalQp> {
        self.submit(Request::CreateQp(caps))
    }

    /// Connects a queue pair to the peer's (INIT -> RTR -> RTS).
    pub fn connect(&self, qp: QpId, remote: RemoteQp, params: ConnectParams) -> Pending<()> {
        self.submit(Request::Connect(qp, remote, params))
    }

    /// Posts a receive into `sges`; resolves when a message (or an RDMA
    /// WRITE with immediate) consumed it.
    pub fn post_recv(&self, qp: QpId, sges: &[Sge]) -> Pending<WorkCompletion> {
        match SgeArray::new(sges) {
            Ok(sges) => self.submit(Request::PostRecv(qp, sges)),
            Err(e) => Pending::failed(e),
        }
    }

    /// Posts a send; resolves when it completed (an unsignaled one: when a
    /// later send on the queue pair did).
    pub fn post_send(
        &self,
        qp: QpId,
        op: SendOp,
        sges: &[Sge],
        signaled: bool,
    ) -> Pending<WorkCompletion> {
        match SgeArray::new(sges) {
            Ok(sges) => self.submit(Request::PostSend {
                qp,
                op,
                sges,
                signaled,
            }),
            Err(e) => Pending::failed(e),
        }
    }

    /// Destroys a queue pair; its outstanding requests fail.
    pub fn destroy_qp(&self, qp: QpId) -> Pending<()> {
        self.submit(Request::DestroyQp(qp))
    }

    /// Registers `len` bytes at `addr` with the device, for scatter/gather
    /// entries (`Access::empty()`: the device reads them) or as a region a
    /// peer may write ([`Access::REMOTE_WRITE`]). Closing the lane
    /// deregisters what it registered.
    ///
    /// # Safety
    ///
    /// Once the request is made, and until [`deregistration`](Self::dereg_mr)
    /// has completed (successfully or with [`RdmaError::Closed`] or
    /// [`RdmaError::ShuttingDown`]), or the lane has closed, the range must
    /// stay allocated, and the caller must treat it as memory shared with
    /// the device: no Rust reference to bytes the device or a peer may write
    /// (with [`Access::REMOTE_WRITE`]: all of them) is kept meanwhile.
    pub unsafe fn reg_mr(&self, addr: *mut u8, len: usize, access: Access) -> Pending<MrKeys> {
        self.submit(Request::RegMr {
            addr: addr as u64,
            len,
            access,
        })
    }

    /// Deregisters a region [`reg_mr`](Self::reg_mr) registered.
    pub fn dereg_mr(&self, mr: MrId) -> Pending<()> {
        self.submit(Request::DeregMr(mr))
    }

    fn submit<T>(&self, request: Request) -> Pending<T> {
        let inner = &self.inner;
        if inner.closed.get() {
            return Pending::failed(RdmaError::Closed);
        }
        let generation = inner.generation.get().wrapping_add(1);
        inner.generation.set(generation);
        let key = inner
            .slots
            .borrow_mut()
            .insert((generation, Slot::Waiting(None)));
        let token = (u64::from(generation) << 32) | key as u64;
        let envelope = Envelope { token, request };
        if inner.backlog.borrow().is_empty() {
            let sent = inner.requests.borrow_mut().try_send(envelope);
            match sent {
                Ok(()) => {}
                Err(TrySendError::Full(envelope)) => self.queue(envelope),
                Err(TrySendError::Closed(_)) => {
                    inner.slots.borrow_mut().remove(key);
                    inner.close();
                    return Pending::failed(RdmaError::Closed);
                }
            }
        } else {
            self.queue(envelope);
        }
        Pending {
            inner: Some(inner.clone()),
            token,
            early: None,
            _out: PhantomData,
        }
    }

    /// Keeps a request that found the ring full; a task sends the backlog
    /// in order as room appears.
    fn queue(&self, envelope: Envelope) {
        self.inner.backlog.borrow_mut().push_back(envelope);
        if self.inner.flusher.replace(true) {
            return;
        }
        let inner = self.inner.clone();
        spawn_local(async move {
            loop {
                let next = inner.backlog.borrow_mut().pop_front();
                let Some(envelope) = next else {
                    break;
                };
                let sent = inner.requests.borrow_mut().try_send(envelope);
                match sent {
                    Ok(()) => {}
                    Err(TrySendError::Full(envelope)) => {
                        inner.backlog.borrow_mut().push_front(envelope);
                        yield_now().await;
                    }
                    Err(TrySendError::Closed(_)) => {
                        inner.close();
                        break;
                    }
                }
            }
            inner.flusher.set(false);
        });
    }
}

impl ClientInner {
    fn complete(&self, token: u64, outcome: Result<Outcome, RdmaError>) {
        let key = (token & 0xffff_ffff) as usize;
        let generation = (token >> 32) as u32;
        let waker = {
            let mut slots = self.slots.borrow_mut();
            match slots.get_mut(key) {
                Some((g, slot)) if *g == generation => {
                    match std::mem::replace(slot, Slot::Done(outcome)) {
                        Slot::Waiting(w) => w,
                        Slot::Done(_) => None,
                    }
                }
                // Abandoned: the future was dropped.
                _ => None,
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The completion core is gone: everything waiting fails.
    fn close(&self) {
        self.closed.set(true);
        self.backlog.borrow_mut().clear();
        let wakers: Vec<Waker> = {
            let mut slots = self.slots.borrow_mut();
            slots
                .iter_mut()
                .filter_map(|(_, (_, slot))| match slot {
                    Slot::Waiting(w) => {
                        let w = w.take();
                        *slot = Slot::Done(Err(RdmaError::Closed));
                        w
                    }
                    Slot::Done(_) => None,
                })
                .collect()
        };
        for w in wakers {
            w.wake();
        }
    }
}

/// What a request's reply turns into.
fn expect_qp(outcome: Outcome) -> Result<LocalQp, RdmaError> {
    match outcome {
        Outcome::Qp(qp) => Ok(qp),
        _ => Err(RdmaError::InvalidRequest("reply of another kind".into())),
    }
}

fn expect_mr(outcome: Outcome) -> Result<MrKeys, RdmaError> {
    match outcome {
        Outcome::Mr(keys) => Ok(keys),
        _ => Err(RdmaError::InvalidRequest("reply of another kind".into())),
    }
}

fn expect_done(outcome: Outcome) -> Result<(), RdmaError> {
    match outcome {
        Outcome::Done => Ok(()),
        _ => Err(RdmaError::InvalidRequest("reply of another kind".into())),
    }
}

fn expect_completion(outcome: Outcome) -> Result<WorkCompletion, RdmaError> {
    match outcome {
        Outcome::Completion(wc) => Ok(wc),
        _ => Err(RdmaError::InvalidRequest("reply of another kind".into())),
    }
}

/// A request on its way; resolves on the core that made it. Dropping it
/// abandons the reply, not the request: a posted receive stays posted.
#[must_use = "the result of an RDMA request says whether it completed"]
pub struct Pending<T> {
    inner: Option<Rc<ClientInner>>,
    token: u64,
    early: Option<RdmaError>,
    _out: PhantomData<T>,
}

impl<T> Pending<T> {
    fn failed(e: RdmaError) -> Pending<T> {
        Pending {
            inner: None,
            token: 0,
            early: Some(e),
            _out: PhantomData,
        }
    }
}

impl<T> Pending<T> {
    fn poll_outcome(&mut self, cx: &mut Context<'_>) -> Poll<Result<Outcome, RdmaError>> {
        if let Some(e) = self.early.take() {
            return Poll::Ready(Err(e));
        }
        let Some(inner) = self.inner.as_ref() else {
            return Poll::Ready(Err(RdmaError::Closed));
        };
        let key = (self.token & 0xffff_ffff) as usize;
        let mut slots = inner.slots.borrow_mut();
        let done = match slots.get_mut(key) {
            Some((_, Slot::Waiting(w))) => {
                match w {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            Some((_, Slot::Done(_))) => slots.remove(key).1,
            None => Slot::Done(Err(RdmaError::Closed)),
        };
        drop(slots);
        self.inner = None;
        match done {
            Slot::Done(result) => Poll::Ready(result),
            Slot::Waiting(_) => Poll::Ready(Err(RdmaError::Closed)),
        }
    }
}

macro_rules! pending_future {
    ($t:ty, $convert:ident) => {
        impl Future for Pending<$t> {
            type Output = Result<$t, RdmaError>;

            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
                self.poll_outcome(cx).map(|r| r.and_then($convert))
            }
        }
    };
}

pending_future!(LocalQp, expect_qp);
pending_future!(MrKeys, expect_mr);
pending_future!((), expect_done);
pending_future!(WorkCompletion, expect_completion);

impl<T> Drop for Pending<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let key = (self.token & 0xffff_ffff) as usize;
            let generation = (self.token >> 32) as u32;
            let mut slots = inner.slots.borrow_mut();
            if slots.get(key).is_some_and(|(g, _)| *g == generation) {
                slots.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_messages_fit_the_documented_slot_cost() {
        // `CompletionConfig::mailbox_capacity` documents the cost per slot.
        assert!(std::mem::size_of::<Envelope>() <= 128);
        assert!(std::mem::size_of::<Reply>() <= 64);
    }

    #[test]
    fn region_entries_stay_inside_the_region() {
        let memory = RegionMemory::new(8192).unwrap();
        assert_eq!(memory.addr() % 4096, 0, "page aligned");
        let region = Region {
            memory,
            lkey: 1,
            rkey: 2,
            access: Access::LOCAL_WRITE,
        };
        let sge = region.sge(4096, 4096).unwrap();
        assert_eq!(
            (sge.addr, sge.length, sge.lkey),
            (region.memory.addr() + 4096, 4096, 1)
        );
        assert!(region.sge(4097, 4096).is_none());
        assert!(region.sge(usize::MAX, 2).is_none());
    }
}
