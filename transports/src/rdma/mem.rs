//! An in-memory RDMA fabric with reliable-connected semantics, for tests.
//!
//! A [`Fabric`] holds several hosts, each a device with its own LID and GID.
//! [`Fabric::open`] gives a [`MemDevice`], which implements [`Verbs`] like
//! the libibverbs device does, so two endpoints in one process connect
//! exactly as they would over a real fabric (exchange [`RemoteQp`] data,
//! INIT -> RTR -> RTS) and the code above cannot tell the difference.
//!
//! The rules it keeps (each has a unit test below):
//! - Per queue pair, send requests execute in order; a request that cannot
//!   proceed blocks the ones behind it.
//! - SEND consumes the oldest posted receive of the remote queue pair; the
//!   bytes are copied into its scatter/gather entries. A receive too small
//!   completes with [`WcStatus::LocalLength`] on the receiver, the sender's
//!   request with [`WcStatus::RemoteInvalidRequest`], and both queue pairs go
//!   to the error state.
//! - No receive posted: "receiver not ready". The sender retries after the
//!   receiver's `min_rnr_timer`, `rnr_retry` times (7: forever), then fails
//!   with [`WcStatus::RnrRetryExceeded`] and goes to the error state.
//! - RDMA WRITE is checked against the remote's registered regions: rkey,
//!   bounds, [`Access::REMOTE_WRITE`] on the region and on the queue pair.
//!   A violation completes with [`WcStatus::RemoteAccess`] (or
//!   `RemoteInvalidRequest` when the queue pair refuses writes) and breaks
//!   both queue pairs, as the responder does on real hardware.
//! - WRITE with immediate also consumes a receive, whose completion carries
//!   the immediate and the length written (the receive's buffers are not
//!   touched).
//! - Scatter/gather entries must lie in a region of the queue pair's
//!   protection domain with a matching lkey (and local write access for
//!   receives): otherwise [`WcStatus::LocalProtection`].
//! - Packet sequence numbers must match what the peer was told, and the
//!   remote queue pair must be connected back to the sender and ready;
//!   otherwise the sender's request fails with [`WcStatus::RetryExceeded`]
//!   (a real sender would retransmit into the void until its retry count
//!   ran out).
//! - A queue pair in the error state flushes every outstanding request, send
//!   and receive, with [`WcStatus::WrFlush`], whether signaled or not.
//! - The state machine is enforced: RESET -> INIT -> RTR -> RTS, anything ->
//!   ERROR; sends are accepted in RTS only, receives in INIT, RTR and RTS.
//! - Successful sends complete only when signaled; errors always complete.
//! - Completion queues hold at most their capacity (more is an overrun), and
//!   a completion channel (an eventfd) becomes readable when a completion
//!   arrives on an armed queue.
//!
//! Data moves when it can: at the post, when the receiver posts a receive,
//! or when an RNR retry falls due. With the real clock ([`Fabric::new`]) a
//! background thread runs the retry timers while any sender waits, as a
//! device would; with a manual clock ([`Fabric::manual_clock`]) time moves
//! only by [`Fabric::advance`], so tests are deterministic.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use slab::Slab;

use super::verbs::{
    Access, CqId, Gid, LinkLayer, MrId, MrKeys, Mtu, PdId, PortInfo, QpCaps, QpId, QpInfo, QpState,
    QpTransition, RecvWr, RemoteQp, SendOp, SendWr, Sge, Verbs, VerbsError, VerbsResult, WcOpcode,
    WcStatus, WorkCompletion, MAX_SGE,
};

/// PSNs are 24-bit.
const PSN_MASK: u32 = (1 << 24) - 1;

/// RNR NAK timer values of the verbs' 5-bit `min_rnr_timer` code, in
/// microseconds (InfiniBand specification, table 45).
const RNR_TIMER_US: [u32; 32] = [
    655_360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1_280, 1_920, 2_560, 3_840,
    5_120, 7_680, 10_240, 15_360, 20_480, 30_720, 40_960, 61_440, 81_920, 122_880, 163_840,
    245_760, 327_680, 491_520,
];

/// How long a sender waits after "receiver not ready" for this code.
pub fn rnr_delay(min_rnr_timer: u8) -> Duration {
    Duration::from_micros(u64::from(RNR_TIMER_US[usize::from(min_rnr_timer & 31)]))
}

/// A fabric of in-memory RDMA hosts. Cheap to clone (shared).
#[derive(Clone)]
pub struct Fabric {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the retry timer thread when a new wait begins.
    timer: Condvar,
}

enum Clock {
    Real(Instant),
    Manual(Duration),
}

struct State {
    hosts: Vec<Host>,
    clock: Clock,
    next_ctx: u32,
    timer_running: bool,
}

struct Host {
    name: String,
    lid: u16,
    gid: Gid,
    next_qpn: u32,
    next_key: u32,
    qp_by_num: HashMap<u32, usize>,
    pds: Slab<u32>,
    mrs: Slab<Mr>,
    cqs: Slab<Cq>,
    qps: Slab<Qp>,
}

struct Mr {
    ctx: u32,
    pd: usize,
    /// Start address, with its provenance exposed at registration.
    addr: usize,
    len: usize,
    access: Access,
    lkey: u32,
    rkey: u32,
}

struct Cq {
    ctx: u32,
    capacity: u32,
    entries: VecDeque<WorkCompletion>,
    armed: bool,
    overrun: bool,
    /// The completion channel: an eventfd counting events.
    channel: Option<OwnedFd>,
}

#[derive(Clone, Copy)]
struct SgeList {
    sges: [Sge; MAX_SGE],
    len: usize,
}

impl SgeList {
    fn new(sges: &[Sge], max: u32) -> VerbsResult<SgeList> {
        if sges.len() > max as usize || sges.len() > MAX_SGE {
            return Err(VerbsError::InvalidArgument(format!(
                "{} scatter/gather entries, the queue pair allows {}",
                sges.len(),
                max.min(MAX_SGE as u32)
            )));
        }
        let mut list = SgeList {
            sges: [Sge::default(); MAX_SGE],
            len: sges.len(),
        };
        list.sges[..sges.len()].copy_from_slice(sges);
        Ok(list)
    }

    fn as_slice(&self) -> &[Sge] {
        &self.sges[..self.len]
    }

    fn total(&self) -> u64 {
        self.as_slice().iter().map(|s| u64::from(s.length)).sum()
    }
}

#[derive(Clone, Copy)]
struct PendingSend {
    wr_id: u64,
    op: SendOp,
    sges: SgeList,
    signaled: bool,
    /// Set after the first "receiver not ready": retries left and when the
    /// next one is due.
    rnr: Option<(u8, Duration)>,
}

#[derive(Clone, Copy)]
struct PendingRecv {
    wr_id: u64,
    sges: SgeList,
}

struct Qp {
    ctx: u32,
    pd: usize,
    qp_num: u32,
    send_cq: usize,
    recv_cq: usize,
    caps: QpCaps,
    state: QpState,
    access: Access,
    remote: Option<RemoteQp>,
    min_rnr_timer: u8,
    rnr_retry: u8,
    sq_psn: u32,
    rq_psn: u32,
    sq: VecDeque<PendingSend>,
    rq: VecDeque<PendingRecv>,
}

impl State {
    fn now(&self) -> Duration {
        match self.clock {
            Clock::Real(start) => start.elapsed(),
            Clock::Manual(now) => now,
        }
    }

    /// The host a remote address names: by GID, or by LID when it has none.
    fn find_host(&self, remote: &RemoteQp) -> Option<usize> {
        self.hosts.iter().position(|h| {
            if remote.gid.is_zero() {
                h.lid == remote.lid
            } else {
                h.gid == remote.gid
            }
        })
    }

    fn find_qp(&self, remote: &RemoteQp) -> Option<(usize, usize)> {
        let h = self.find_host(remote)?;
        let q = *self.hosts[h].qp_by_num.get(&remote.qp_num)?;
        Some((h, q))
    }

    fn push_cqe(&mut self, h: usize, cq: usize, wc: WorkCompletion) {
        let Some(cq) = self.hosts[h].cqs.get_mut(cq) else {
            return;
        };
        if cq.entries.len() >= cq.capacity as usize {
            cq.overrun = true;
            return;
        }
        cq.entries.push_back(wc);
        if cq.armed {
            cq.armed = false;
            if let Some(fd) = &cq.channel {
                signal_eventfd(fd);
            }
        }
    }

    /// Moves a queue pair to the error state and flushes every outstanding
    /// request.
    fn set_error(&mut self, h: usize, q: usize) {
        let Some(qp) = self.hosts[h].qps.get_mut(q) else {
            return;
        };
        qp.state = QpState::Error;
        let sq: Vec<PendingSend> = qp.sq.drain(..).collect();
        let rq: Vec<PendingRecv> = qp.rq.drain(..).collect();
        let (qp_num, send_cq, recv_cq) = (qp.qp_num, qp.send_cq, qp.recv_cq);
        for wr in sq {
            let wc = completion(wr.wr_id, WcStatus::WrFlush, wr.op.wc_opcode(), qp_num);
            self.push_cqe(h, send_cq, wc);
        }
        for wr in rq {
            let wc = completion(wr.wr_id, WcStatus::WrFlush, WcOpcode::Recv, qp_num);
            self.push_cqe(h, recv_cq, wc);
        }
    }

    /// Runs the send queue of queue pair `q` on host `h` as far as it goes.
    /// Returns true if its head waits for an RNR retry.
    fn run_sq(&mut self, h: usize, q: usize) -> bool {
        loop {
            let now = self.now();
            let Some(qp) = self.hosts[h].qps.get(q) else {
                return false;
            };
            if qp.state != QpState::Rts {
                return false;
            }
            let Some(wr) = qp.sq.front().copied() else {
                return false;
            };
            let (qp_num, send_cq, rnr_retry) = (qp.qp_num, qp.send_cq, qp.rnr_retry);
            match self.execute(h, q, &wr) {
                Outcome::Done => {
                    self.hosts[h].qps[q].sq.pop_front();
                    if wr.signaled {
                        let wc = completion(wr.wr_id, WcStatus::Success, wr.op.wc_opcode(), qp_num);
                        self.push_cqe(h, send_cq, wc);
                    }
                }
                Outcome::Fail(status) => {
                    self.hosts[h].qps[q].sq.pop_front();
                    let wc = completion(wr.wr_id, status, wr.op.wc_opcode(), qp_num);
                    self.push_cqe(h, send_cq, wc);
                    self.set_error(h, q);
                    return false;
                }
                Outcome::ReceiverNotReady { min_rnr_timer } => {
                    let delay = rnr_delay(min_rnr_timer);
                    let next = match wr.rnr {
                        // First NAK: no retries allowed means failure now.
                        None if rnr_retry == 0 => None,
                        None => Some((rnr_retry, now + delay)),
                        // Not due yet: keep waiting.
                        Some((left, due)) if now < due => Some((left, due)),
                        // A retry fell due and found no receive either.
                        Some((left, _)) if rnr_retry == 7 => Some((left, now + delay)),
                        Some((left, _)) if left > 1 => Some((left - 1, now + delay)),
                        Some(_) => None,
                    };
                    match next {
                        Some(rnr) => {
                            if let Some(head) = self.hosts[h].qps[q].sq.front_mut() {
                                head.rnr = Some(rnr);
                            }
                            return true;
                        }
                        None => {
                            self.hosts[h].qps[q].sq.pop_front();
                            let wc = completion(
                                wr.wr_id,
                                WcStatus::RnrRetryExceeded,
                                wr.op.wc_opcode(),
                                qp_num,
                            );
                            self.push_cqe(h, send_cq, wc);
                            self.set_error(h, q);
                            return false;
                        }
                    }
                }
            }
        }
    }

    /// Tries to carry out one send request end to end.
    fn execute(&mut self, h: usize, q: usize, wr: &PendingSend) -> Outcome {
        let qp = &self.hosts[h].qps[q];
        let (pd, qp_num, sq_psn) = (qp.pd, qp.qp_num, qp.sq_psn);
        let Some(remote) = qp.remote else {
            return Outcome::Fail(WcStatus::RetryExceeded);
        };
        let Some((rh, rq)) = self.find_qp(&remote) else {
            return Outcome::Fail(WcStatus::RetryExceeded);
        };
        let rqp = &self.hosts[rh].qps[rq];
        let connected_back = rqp
            .remote
            .is_some_and(|r| r.qp_num == qp_num && self.find_host(&r) == Some(h));
        if !matches!(rqp.state, QpState::Rtr | QpState::Rts)
            || !connected_back
            || rqp.rq_psn != sq_psn
        {
            return Outcome::Fail(WcStatus::RetryExceeded);
        }
        let Some(data) = gather(&self.hosts[h], pd, wr.sges.as_slice()) else {
            return Outcome::Fail(WcStatus::LocalProtection);
        };
        if wr.op.consumes_recv() && rqp.rq.is_empty() {
            return Outcome::ReceiverNotReady {
                min_rnr_timer: rqp.min_rnr_timer,
            };
        }
        let (rpd, rqp_num, recv_cq) = (rqp.pd, rqp.qp_num, rqp.recv_cq);
        let len = data.len() as u32;
        match wr.op {
            SendOp::RdmaWrite { remote_addr, rkey }
            | SendOp::RdmaWriteWithImm {
                remote_addr, rkey, ..
            } => {
                if !self.hosts[rh].qps[rq].access.contains(Access::REMOTE_WRITE) {
                    self.set_error(rh, rq);
                    return Outcome::Fail(WcStatus::RemoteInvalidRequest);
                }
                let Some(dst) = find_remote(&self.hosts[rh], rpd, rkey, remote_addr, data.len())
                else {
                    self.set_error(rh, rq);
                    return Outcome::Fail(WcStatus::RemoteAccess);
                };
                // SAFETY: `dst..dst + len` lies inside a region registered on
                // the remote host with remote write access; `reg_mr`'s
                // contract keeps it allocated and lets the device write it.
                // `data` is a separate heap buffer.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
            }
            SendOp::Send | SendOp::SendWithImm(_) => {}
        }
        if wr.op.consumes_recv() {
            let Some(recv) = self.hosts[rh].qps[rq].rq.pop_front() else {
                return Outcome::Fail(WcStatus::RemoteOperation);
            };
            let (imm, opcode) = match wr.op {
                SendOp::Send => (None, WcOpcode::Recv),
                SendOp::SendWithImm(imm) => (Some(imm), WcOpcode::Recv),
                SendOp::RdmaWriteWithImm { imm, .. } => (Some(imm), WcOpcode::RecvRdmaWithImm),
                SendOp::RdmaWrite { .. } => (None, WcOpcode::RecvRdmaWithImm),
            };
            if opcode == WcOpcode::Recv {
                if recv.sges.total() < u64::from(len) {
                    let wc = completion(recv.wr_id, WcStatus::LocalLength, opcode, rqp_num);
                    self.push_cqe(rh, recv_cq, wc);
                    self.set_error(rh, rq);
                    return Outcome::Fail(WcStatus::RemoteInvalidRequest);
                }
                if !scatter(&self.hosts[rh], rpd, recv.sges.as_slice(), &data) {
                    let wc = completion(recv.wr_id, WcStatus::LocalProtection, opcode, rqp_num);
                    self.push_cqe(rh, recv_cq, wc);
                    self.set_error(rh, rq);
                    return Outcome::Fail(WcStatus::RemoteOperation);
                }
            }
            let mut wc = completion(recv.wr_id, WcStatus::Success, opcode, rqp_num);
            wc.byte_len = len;
            wc.imm = imm;
            self.push_cqe(rh, recv_cq, wc);
        }
        let qp = &mut self.hosts[h].qps[q];
        qp.sq_psn = (qp.sq_psn + 1) & PSN_MASK;
        let rqp = &mut self.hosts[rh].qps[rq];
        rqp.rq_psn = (rqp.rq_psn + 1) & PSN_MASK;
        Outcome::Done
    }

    /// Runs the send queues whose heads wait for an RNR retry; returns the
    /// earliest retry still pending.
    fn run_due(&mut self, only_host: Option<usize>) -> Option<Duration> {
        let mut waiting = Vec::new();
        for (h, host) in self.hosts.iter().enumerate() {
            if only_host.is_some_and(|o| o != h) {
                continue;
            }
            for (q, qp) in host.qps.iter() {
                if qp.sq.front().is_some_and(|wr| wr.rnr.is_some()) {
                    waiting.push((h, q));
                }
            }
        }
        for &(h, q) in &waiting {
            self.run_sq(h, q);
        }
        self.hosts
            .iter()
            .flat_map(|h| h.qps.iter())
            .filter_map(|(_, qp)| qp.sq.front().and_then(|wr| wr.rnr).map(|(_, due)| due))
            .min()
    }
}

enum Outcome {
    Done,
    Fail(WcStatus),
    ReceiverNotReady { min_rnr_timer: u8 },
}

fn completion(wr_id: u64, status: WcStatus, opcode: WcOpcode, qp_num: u32) -> WorkCompletion {
    WorkCompletion {
        wr_id,
        status,
        opcode,
        byte_len: 0,
        imm: None,
        qp_num,
        vendor_err: 0,
    }
}

/// The region of protection domain `pd` that holds `sge` with the needed
/// rights; returns the address of its first byte.
fn find_local(host: &Host, pd: usize, sge: &Sge, need: Access) -> Option<*mut u8> {
    let start = usize::try_from(sge.addr).ok()?;
    let end = start.checked_add(sge.length as usize)?;
    host.mrs.iter().find_map(|(_, mr)| {
        let inside = mr.pd == pd
            && mr.lkey == sge.lkey
            && mr.access.contains(need)
            && start >= mr.addr
            && end <= mr.addr + mr.len;
        inside.then(|| std::ptr::with_exposed_provenance_mut::<u8>(start))
    })
}

/// The destination of an RDMA WRITE of `len` bytes at `addr` under `rkey`.
fn find_remote(host: &Host, pd: usize, rkey: u32, addr: u64, len: usize) -> Option<*mut u8> {
    let start = usize::try_from(addr).ok()?;
    let end = start.checked_add(len)?;
    host.mrs.iter().find_map(|(_, mr)| {
        let inside = mr.pd == pd
            && mr.rkey == rkey
            && mr.access.contains(Access::REMOTE_WRITE)
            && start >= mr.addr
            && end <= mr.addr + mr.len;
        inside.then(|| std::ptr::with_exposed_provenance_mut::<u8>(start))
    })
}

/// Copies the bytes a send request names; `None` on a protection error.
fn gather(host: &Host, pd: usize, sges: &[Sge]) -> Option<Vec<u8>> {
    let total: usize = sges.iter().map(|s| s.length as usize).sum();
    let mut data = Vec::with_capacity(total);
    for sge in sges {
        let src = find_local(host, pd, sge, Access::empty())?;
        // SAFETY: `src..src + length` lies inside a registered region, which
        // `reg_mr`'s contract keeps allocated and readable by the device.
        let bytes = unsafe { std::slice::from_raw_parts(src, sge.length as usize) };
        data.extend_from_slice(bytes);
    }
    Some(data)
}

/// Copies `data` into a receive's entries; false on a protection error
/// (nothing is written then).
fn scatter(host: &Host, pd: usize, sges: &[Sge], data: &[u8]) -> bool {
    let mut targets = Vec::with_capacity(sges.len());
    for sge in sges {
        match find_local(host, pd, sge, Access::LOCAL_WRITE) {
            Some(dst) => targets.push((dst, sge.length as usize)),
            None => return false,
        }
    }
    let mut rest = data;
    for (dst, cap) in targets {
        let n = cap.min(rest.len());
        // SAFETY: `dst..dst + cap` lies inside a region registered with local
        // write access, posted as a receive: `reg_mr`'s contract lets the
        // device write it. `n <= cap`; `rest` is a separate heap buffer.
        unsafe { std::ptr::copy_nonoverlapping(rest.as_ptr(), dst, n) };
        rest = &rest[n..];
        if rest.is_empty() {
            break;
        }
    }
    true
}

fn signal_eventfd(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. A full
    // counter (EAGAIN) still leaves the fd readable, which is all we need.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

fn new_eventfd() -> VerbsResult<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(VerbsError::Call {
            call: "eventfd",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Fabric {
    /// An empty fabric on the real clock: RNR retries fall due as time
    /// passes, driven by a background thread while any sender waits.
    pub fn new() -> Fabric {
        Fabric::with_clock(Clock::Real(Instant::now()))
    }

    /// An empty fabric whose clock moves only by [`Fabric::advance`].
    pub fn manual_clock() -> Fabric {
        Fabric::with_clock(Clock::Manual(Duration::ZERO))
    }

    fn with_clock(clock: Clock) -> Fabric {
        Fabric {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    hosts: Vec::new(),
                    clock,
                    next_ctx: 1,
                    timer_running: false,
                }),
                timer: Condvar::new(),
            }),
        }
    }

    /// Adds a host (a device with one active port) named `name`; its LID is
    /// its position plus one and its GID `fe80::<lid>`.
    pub fn add_host(&self, name: &str) -> VerbsResult<()> {
        let mut st = lock(&self.shared);
        if st.hosts.iter().any(|h| h.name == name) {
            return Err(VerbsError::InvalidArgument(format!(
                "a host named {name:?} already exists"
            )));
        }
        let lid = u16::try_from(st.hosts.len() + 1)
            .map_err(|_| VerbsError::InvalidArgument("too many hosts".into()))?;
        let mut gid = [0u8; 16];
        gid[0] = 0xfe;
        gid[1] = 0x80;
        gid[14..].copy_from_slice(&lid.to_be_bytes());
        st.hosts.push(Host {
            name: name.to_string(),
            lid,
            gid: Gid(gid),
            // Distinct QP numbers and keys per host make mix-ups visible.
            next_qpn: 0x100 * u32::from(lid) + 0x11,
            next_key: 0x1000 * u32::from(lid) + 1,
            qp_by_num: HashMap::new(),
            pds: Slab::new(),
            mrs: Slab::new(),
            cqs: Slab::new(),
            qps: Slab::new(),
        });
        Ok(())
    }

    /// Opens the device of host `name`.
    pub fn open(&self, name: &str) -> VerbsResult<MemDevice> {
        let mut st = lock(&self.shared);
        if st.hosts.is_empty() {
            return Err(VerbsError::NoDevice {
                reason: "the in-memory fabric has no hosts".into(),
            });
        }
        let Some(h) = st.hosts.iter().position(|h| h.name == name) else {
            return Err(VerbsError::DeviceNotFound {
                name: name.to_string(),
                present: st.hosts.iter().map(|h| h.name.clone()).collect(),
            });
        };
        let ctx = st.next_ctx;
        st.next_ctx += 1;
        let host = &st.hosts[h];
        Ok(MemDevice {
            shared: self.shared.clone(),
            host: h,
            ctx,
            name: host.name.clone(),
            port: PortInfo {
                port_num: 1,
                lid: host.lid,
                gid: host.gid,
                gid_index: 0,
                active_mtu: Mtu::Mtu4096,
                link_layer: LinkLayer::InfiniBand,
            },
        })
    }

    /// Numbers of the queue pairs of host `name`, ascending (the order they
    /// were created in); empty for an unknown host. For fault injection.
    pub fn qp_nums(&self, name: &str) -> Vec<u32> {
        let st = lock(&self.shared);
        let mut nums: Vec<u32> = st
            .hosts
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.qps.iter().map(|(_, q)| q.qp_num).collect())
            .unwrap_or_default();
        nums.sort_unstable();
        nums
    }

    /// Moves queue pair `qp_num` of host `name` to the error state, as a
    /// failing link or device would: every outstanding request, send and
    /// receive, completes with [`WcStatus::WrFlush`]. Returns whether the
    /// queue pair existed. For fault injection in tests.
    pub fn break_qp(&self, name: &str, qp_num: u32) -> bool {
        let mut st = lock(&self.shared);
        let Some(h) = st.hosts.iter().position(|h| h.name == name) else {
            return false;
        };
        let Some(&q) = st.hosts[h].qp_by_num.get(&qp_num) else {
            return false;
        };
        st.set_error(h, q);
        true
    }

    /// Moves a manual clock forward and runs the retries that fell due.
    /// Does nothing on the real clock.
    pub fn advance(&self, by: Duration) {
        let mut st = lock(&self.shared);
        if let Clock::Manual(now) = &mut st.clock {
            *now += by;
            st.run_due(None);
        }
    }

    /// Starts the retry timer thread (real clock only) if it is not running.
    fn ensure_timer(shared: &Arc<Shared>, st: &mut State) {
        if !matches!(st.clock, Clock::Real(_)) {
            return;
        }
        if st.timer_running {
            shared.timer.notify_one();
            return;
        }
        st.timer_running = true;
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("rdma-mem-timer".into())
            .spawn(move || {
                let mut st = lock(&shared);
                loop {
                    let Some(due) = st.run_due(None) else {
                        st.timer_running = false;
                        return;
                    };
                    let wait = due.saturating_sub(st.now()).max(Duration::from_micros(10));
                    st = shared
                        .timer
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            });
        if spawned.is_err() {
            // Without the thread, retries still fall due on the next call.
            st.timer_running = false;
        }
    }
}

impl Default for Fabric {
    fn default() -> Fabric {
        Fabric::new()
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// One opened device of an in-memory [`Fabric`] host.
pub struct MemDevice {
    shared: Arc<Shared>,
    host: usize,
    ctx: u32,
    name: String,
    port: PortInfo,
}

impl MemDevice {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    fn qp_index(&self, st: &State, qp: QpId) -> VerbsResult<usize> {
        match st.hosts[self.host].qps.get(qp.0 as usize) {
            Some(q) if q.ctx == self.ctx => Ok(qp.0 as usize),
            _ => Err(VerbsError::UnknownHandle("queue pair")),
        }
    }

    fn cq_index(&self, st: &State, cq: CqId) -> VerbsResult<usize> {
        match st.hosts[self.host].cqs.get(cq.0 as usize) {
            Some(c) if c.ctx == self.ctx => Ok(cq.0 as usize),
            _ => Err(VerbsError::UnknownHandle("completion queue")),
        }
    }
}

impl Verbs for MemDevice {
    fn device_name(&self) -> &str {
        &self.name
    }

    fn port(&self) -> &PortInfo {
        &self.port
    }

    fn alloc_pd(&mut self) -> VerbsResult<PdId> {
        let mut st = self.state();
        let key = st.hosts[self.host].pds.insert(self.ctx);
        Ok(PdId(key as u32))
    }

    unsafe fn reg_mr(
        &mut self,
        pd: PdId,
        addr: *mut u8,
        len: usize,
        access: Access,
    ) -> VerbsResult<MrKeys> {
        let mut st = self.state();
        let host = &mut st.hosts[self.host];
        if host.pds.get(pd.0 as usize) != Some(&self.ctx) {
            return Err(VerbsError::UnknownHandle("protection domain"));
        }
        if len == 0 || addr.is_null() || (addr as usize).checked_add(len).is_none() {
            return Err(VerbsError::InvalidArgument(format!(
                "cannot register {len} bytes at {addr:p}"
            )));
        }
        let lkey = host.next_key;
        let rkey = host.next_key.wrapping_add(0x8000_0000);
        host.next_key = host.next_key.wrapping_add(1);
        let key = host.mrs.insert(Mr {
            ctx: self.ctx,
            pd: pd.0 as usize,
            addr: addr.expose_provenance(),
            len,
            access,
            lkey,
            rkey,
        });
        Ok(MrKeys {
            id: MrId(key as u32),
            lkey,
            rkey,
        })
    }

    fn dereg_mr(&mut self, mr: MrId) -> VerbsResult<()> {
        let mut st = self.state();
        let mrs = &mut st.hosts[self.host].mrs;
        match mrs.get(mr.0 as usize) {
            Some(m) if m.ctx == self.ctx => {
                mrs.remove(mr.0 as usize);
                Ok(())
            }
            _ => Err(VerbsError::UnknownHandle("memory region")),
        }
    }

    fn create_cq(&mut self, entries: u32, channel: bool) -> VerbsResult<CqId> {
        if entries == 0 {
            return Err(VerbsError::InvalidArgument(
                "a completion queue needs at least one entry".into(),
            ));
        }
        let channel = if channel { Some(new_eventfd()?) } else { None };
        let mut st = self.state();
        let key = st.hosts[self.host].cqs.insert(Cq {
            ctx: self.ctx,
            capacity: entries,
            entries: VecDeque::new(),
            armed: false,
            overrun: false,
            channel,
        });
        Ok(CqId(key as u32))
    }

    fn cq_channel_fd(&self, cq: CqId) -> Option<BorrowedFd<'_>> {
        let st = self.state();
        let fd = st.hosts[self.host]
            .cqs
            .get(cq.0 as usize)
            .filter(|c| c.ctx == self.ctx)?
            .channel
            .as_ref()?
            .as_raw_fd();
        // SAFETY: the eventfd is owned by the queue, which lives as long as
        // this context (`&self`) unless destroyed through `&mut self`, which
        // the borrow excludes.
        Some(unsafe { BorrowedFd::borrow_raw(fd) })
    }

    fn create_qp(
        &mut self,
        pd: PdId,
        send_cq: CqId,
        recv_cq: CqId,
        caps: &QpCaps,
    ) -> VerbsResult<QpInfo> {
        let mut st = self.state();
        let send_cq = self.cq_index(&st, send_cq)?;
        let recv_cq = self.cq_index(&st, recv_cq)?;
        if caps.max_send_sge as usize > MAX_SGE || caps.max_recv_sge as usize > MAX_SGE {
            return Err(VerbsError::InvalidArgument(format!(
                "at most {MAX_SGE} scatter/gather entries per request"
            )));
        }
        let host = &mut st.hosts[self.host];
        if host.pds.get(pd.0 as usize) != Some(&self.ctx) {
            return Err(VerbsError::UnknownHandle("protection domain"));
        }
        let qp_num = host.next_qpn;
        host.next_qpn += 1;
        let key = host.qps.insert(Qp {
            ctx: self.ctx,
            pd: pd.0 as usize,
            qp_num,
            send_cq,
            recv_cq,
            caps: *caps,
            state: QpState::Reset,
            access: Access::empty(),
            remote: None,
            min_rnr_timer: 0,
            rnr_retry: 0,
            sq_psn: 0,
            rq_psn: 0,
            sq: VecDeque::new(),
            rq: VecDeque::new(),
        });
        host.qp_by_num.insert(qp_num, key);
        Ok(QpInfo {
            id: QpId(key as u32),
            qp_num,
        })
    }

    fn modify_qp(&mut self, qp: QpId, to: &QpTransition) -> VerbsResult<()> {
        let mut st = self.state();
        let q = self.qp_index(&st, qp)?;
        let entry = &mut st.hosts[self.host].qps[q];
        let refuse = |state, op| VerbsError::InvalidState {
            qp_num: entry.qp_num,
            state,
            op,
        };
        match *to {
            QpTransition::Init { access } => {
                if entry.state != QpState::Reset {
                    return Err(refuse(entry.state, "move to INIT (needs RESET)"));
                }
                entry.access = access;
                entry.state = QpState::Init;
            }
            QpTransition::Rtr(attr) => {
                if entry.state != QpState::Init {
                    return Err(refuse(entry.state, "move to RTR (needs INIT)"));
                }
                if attr.remote.psn > PSN_MASK {
                    return Err(VerbsError::InvalidArgument(format!(
                        "receive PSN {:#x} exceeds 24 bits",
                        attr.remote.psn
                    )));
                }
                entry.remote = Some(attr.remote);
                entry.rq_psn = attr.remote.psn;
                entry.min_rnr_timer = attr.min_rnr_timer & 31;
                entry.state = QpState::Rtr;
            }
            QpTransition::Rts(attr) => {
                if entry.state != QpState::Rtr {
                    return Err(refuse(entry.state, "move to RTS (needs RTR)"));
                }
                if attr.sq_psn > PSN_MASK || attr.rnr_retry > 7 {
                    return Err(VerbsError::InvalidArgument(format!(
                        "send PSN {:#x} (24 bits) or RNR retry {} (0..=7) out of range",
                        attr.sq_psn, attr.rnr_retry
                    )));
                }
                entry.sq_psn = attr.sq_psn;
                entry.rnr_retry = attr.rnr_retry;
                entry.state = QpState::Rts;
            }
            QpTransition::Error => {
                st.set_error(self.host, q);
            }
        }
        Ok(())
    }

    fn qp_state(&self, qp: QpId) -> VerbsResult<QpState> {
        let st = self.state();
        let q = self.qp_index(&st, qp)?;
        Ok(st.hosts[self.host].qps[q].state)
    }

    fn destroy_qp(&mut self, qp: QpId) -> VerbsResult<()> {
        let mut st = self.state();
        let q = self.qp_index(&st, qp)?;
        let host = &mut st.hosts[self.host];
        let removed = host.qps.remove(q);
        host.qp_by_num.remove(&removed.qp_num);
        Ok(())
    }

    fn post_recv(&mut self, qp: QpId, wr: &RecvWr<'_>) -> VerbsResult<()> {
        let shared = self.shared.clone();
        let mut st = self.state();
        let q = self.qp_index(&st, qp)?;
        let entry = &mut st.hosts[self.host].qps[q];
        if !matches!(entry.state, QpState::Init | QpState::Rtr | QpState::Rts) {
            return Err(VerbsError::InvalidState {
                qp_num: entry.qp_num,
                state: entry.state,
                op: "post a receive",
            });
        }
        if entry.rq.len() >= entry.caps.max_recv_wr as usize {
            return Err(VerbsError::QueueFull {
                qp_num: entry.qp_num,
                queue: "receive",
                capacity: entry.caps.max_recv_wr,
            });
        }
        let sges = SgeList::new(wr.sges, entry.caps.max_recv_sge)?;
        entry.rq.push_back(PendingRecv {
            wr_id: wr.wr_id,
            sges,
        });
        // A sender waiting for a receive here may proceed now.
        if let Some(remote) = entry.remote {
            if let Some((rh, rq)) = st.find_qp(&remote) {
                if st.run_sq(rh, rq) {
                    Fabric::ensure_timer(&shared, &mut st);
                }
            }
        }
        Ok(())
    }

    fn post_send(&mut self, qp: QpId, wr: &SendWr<'_>) -> VerbsResult<()> {
        let shared = self.shared.clone();
        let mut st = self.state();
        let q = self.qp_index(&st, qp)?;
        let entry = &mut st.hosts[self.host].qps[q];
        if entry.state != QpState::Rts {
            return Err(VerbsError::InvalidState {
                qp_num: entry.qp_num,
                state: entry.state,
                op: "post a send (needs RTS)",
            });
        }
        if entry.sq.len() >= entry.caps.max_send_wr as usize {
            return Err(VerbsError::QueueFull {
                qp_num: entry.qp_num,
                queue: "send",
                capacity: entry.caps.max_send_wr,
            });
        }
        let sges = SgeList::new(wr.sges, entry.caps.max_send_sge)?;
        if sges.total() > u64::from(u32::MAX >> 1) {
            return Err(VerbsError::InvalidArgument(
                "a message is at most 2^31 bytes".into(),
            ));
        }
        entry.sq.push_back(PendingSend {
            wr_id: wr.wr_id,
            op: wr.op,
            sges,
            signaled: wr.signaled,
            rnr: None,
        });
        if st.run_sq(self.host, q) {
            Fabric::ensure_timer(&shared, &mut st);
        }
        Ok(())
    }

    fn poll_cq(
        &mut self,
        cq: CqId,
        out: &mut Vec<WorkCompletion>,
        max: usize,
    ) -> VerbsResult<usize> {
        let mut st = self.state();
        let c = self.cq_index(&st, cq)?;
        st.run_due(Some(self.host));
        let cq = &mut st.hosts[self.host].cqs[c];
        if cq.overrun {
            return Err(VerbsError::CqOverrun {
                capacity: cq.capacity,
            });
        }
        let n = max.min(cq.entries.len());
        out.extend(cq.entries.drain(..n));
        Ok(n)
    }

    fn req_notify_cq(&mut self, cq: CqId, _solicited_only: bool) -> VerbsResult<()> {
        let mut st = self.state();
        let c = self.cq_index(&st, cq)?;
        let cq = &mut st.hosts[self.host].cqs[c];
        if cq.channel.is_none() {
            return Err(VerbsError::InvalidArgument(
                "the completion queue has no completion channel".into(),
            ));
        }
        cq.armed = true;
        Ok(())
    }

    fn get_cq_events(&mut self, cq: CqId) -> VerbsResult<u32> {
        let st = self.state();
        let c = self.cq_index(&st, cq)?;
        let Some(fd) = &st.hosts[self.host].cqs[c].channel else {
            return Ok(0);
        };
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from an eventfd we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        if n == 8 {
            Ok(u32::try_from(count).unwrap_or(u32::MAX))
        } else {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(VerbsError::Call {
                    call: "read(completion channel)",
                    source: err,
                })
            }
        }
    }
}

impl Drop for MemDevice {
    fn drop(&mut self) {
        let mut st = self.state();
        let ctx = self.ctx;
        let host = &mut st.hosts[self.host];
        let qps: Vec<usize> = host
            .qps
            .iter()
            .filter(|(_, q)| q.ctx == ctx)
            .map(|(k, _)| k)
            .collect();
        for k in qps {
            let qp = host.qps.remove(k);
            host.qp_by_num.remove(&qp.qp_num);
        }
        host.mrs.retain(|_, m| m.ctx != ctx);
        host.cqs.retain(|_, c| c.ctx != ctx);
        host.pds.retain(|_, p| *p != ctx);
    }
}

impl std::fmt::Debug for MemDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemDevice")
            .field("name", &self.name)
            .field("port", &self.port)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdma::verbs::{RtrAttr, RtsAttr};
    use std::rc::Rc;

    /// Whether `fd` is readable now (for tests of completion channels).
    fn fd_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        n == 1 && pfd.revents & libc::POLLIN != 0
    }

    /// Test memory that outlives its registration: the owning [`End`]
    /// drops its device before it releases the memory.
    struct Mem {
        ptr: *mut u8,
        len: usize,
    }

    impl Drop for Mem {
        fn drop(&mut self) {
            let slice = std::ptr::slice_from_raw_parts_mut(self.ptr, self.len);
            // SAFETY: made by `Box::into_raw` in `Buf::new`, freed once here.
            drop(unsafe { Box::from_raw(slice) });
        }
    }

    /// A registered buffer. Read and written through its raw pointer, as
    /// the device does.
    struct Buf {
        mem: Rc<Mem>,
        keys: MrKeys,
    }

    impl Buf {
        fn new(e: &mut End, len: usize, access: Access) -> Buf {
            let ptr = Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>();
            let mem = Rc::new(Mem { ptr, len });
            e.keep.push(mem.clone());
            // SAFETY: `End` keeps the memory until after its device is
            // dropped; tests touch it only through the raw pointer, never
            // while a request on it is in flight.
            let keys = unsafe { e.dev.reg_mr(e.pd, ptr, len, access) }.unwrap();
            Buf { mem, keys }
        }

        fn sge(&self, off: usize, len: usize) -> Sge {
            Sge {
                addr: self.addr(off),
                length: len as u32,
                lkey: self.keys.lkey,
            }
        }

        fn addr(&self, off: usize) -> u64 {
            self.mem.ptr as u64 + off as u64
        }

        fn bytes(&self, off: usize, len: usize) -> Vec<u8> {
            assert!(off + len <= self.mem.len);
            // SAFETY: inside the allocation; no request on it is in flight.
            unsafe { std::slice::from_raw_parts(self.mem.ptr.add(off), len) }.to_vec()
        }

        fn fill(&self, off: usize, data: &[u8]) {
            assert!(off + data.len() <= self.mem.len);
            // SAFETY: inside the allocation; no request on it is in flight.
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), self.mem.ptr.add(off), data.len())
            };
        }
    }

    struct End {
        // Dropped first: the device, then the memory it had registered.
        dev: MemDevice,
        keep: Vec<Rc<Mem>>,
        pd: PdId,
        cq: CqId,
        qp: QpInfo,
    }

    fn end(fabric: &Fabric, host: &str, caps: QpCaps) -> End {
        end_with_cq(fabric, host, caps, 64)
    }

    fn end_with_cq(fabric: &Fabric, host: &str, caps: QpCaps, cq_entries: u32) -> End {
        let mut dev = fabric.open(host).unwrap();
        let pd = dev.alloc_pd().unwrap();
        let cq = dev.create_cq(cq_entries, true).unwrap();
        let qp = dev.create_qp(pd, cq, cq, &caps).unwrap();
        End {
            dev,
            keep: Vec::new(),
            pd,
            cq,
            qp,
        }
    }

    fn remote_of(e: &End, psn: u32) -> RemoteQp {
        RemoteQp {
            qp_num: e.qp.qp_num,
            lid: e.dev.port().lid,
            gid: e.dev.port().gid,
            psn,
        }
    }

    fn bring_up(e: &mut End, remote: RemoteQp, my_psn: u32, rnr_timer: u8, rnr_retry: u8) {
        let access = Access::LOCAL_WRITE | Access::REMOTE_WRITE;
        e.dev
            .modify_qp(e.qp.id, &QpTransition::Init { access })
            .unwrap();
        e.dev
            .modify_qp(
                e.qp.id,
                &QpTransition::Rtr(RtrAttr {
                    remote,
                    mtu: Mtu::Mtu4096,
                    min_rnr_timer: rnr_timer,
                    max_dest_rd_atomic: 0,
                }),
            )
            .unwrap();
        e.dev
            .modify_qp(
                e.qp.id,
                &QpTransition::Rts(RtsAttr {
                    sq_psn: my_psn,
                    timeout: 14,
                    retry_cnt: 7,
                    rnr_retry,
                    max_rd_atomic: 0,
                }),
            )
            .unwrap();
    }

    /// Two connected ends on hosts "a" and "b" of a manual-clock fabric.
    fn pair_with(rnr_timer: u8, rnr_retry: u8, caps: QpCaps) -> (Fabric, End, End) {
        let fabric = Fabric::manual_clock();
        fabric.add_host("a").unwrap();
        fabric.add_host("b").unwrap();
        let mut a = end(&fabric, "a", caps);
        let mut b = end(&fabric, "b", caps);
        let (ra, rb) = (remote_of(&a, 100), remote_of(&b, 200));
        bring_up(&mut a, rb, 100, rnr_timer, rnr_retry);
        bring_up(&mut b, ra, 200, rnr_timer, rnr_retry);
        (fabric, a, b)
    }

    fn pair() -> (Fabric, End, End) {
        pair_with(12, 3, QpCaps::default())
    }

    fn poll(e: &mut End) -> Vec<WorkCompletion> {
        let mut out = Vec::new();
        e.dev.poll_cq(e.cq, &mut out, 64).unwrap();
        out
    }

    fn send(e: &mut End, wr_id: u64, op: SendOp, sges: &[Sge], signaled: bool) {
        e.dev
            .post_send(
                e.qp.id,
                &SendWr {
                    wr_id,
                    op,
                    sges,
                    signaled,
                },
            )
            .unwrap();
    }

    fn recv(e: &mut End, wr_id: u64, sges: &[Sge]) {
        e.dev.post_recv(e.qp.id, &RecvWr { wr_id, sges }).unwrap();
    }

    const RW: Access = Access::LOCAL_WRITE.union(Access::REMOTE_WRITE);

    #[test]
    fn send_fills_the_oldest_receive_in_order() {
        let (_f, mut a, mut b) = pair();
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        let rbuf = Buf::new(&mut b, 4096, Access::LOCAL_WRITE);
        recv(&mut b, 11, &[rbuf.sge(0, 64)]);
        recv(&mut b, 12, &[rbuf.sge(64, 32), rbuf.sge(1024, 32)]);
        sbuf.fill(0, b"first message");
        sbuf.fill(100, b"second, spanning two entries of the receive");
        send(&mut a, 1, SendOp::Send, &[sbuf.sge(0, 13)], true);
        send(
            &mut a,
            2,
            SendOp::SendWithImm(0xabcd),
            &[sbuf.sge(100, 43)],
            true,
        );

        let sent = poll(&mut a);
        assert_eq!(sent.len(), 2);
        assert_eq!((sent[0].wr_id, sent[0].status), (1, WcStatus::Success));
        assert_eq!((sent[1].wr_id, sent[1].opcode), (2, WcOpcode::Send));
        let got = poll(&mut b);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].wr_id, got[0].byte_len, got[0].imm), (11, 13, None));
        assert_eq!(got[0].qp_num, b.qp.qp_num);
        assert_eq!((got[1].wr_id, got[1].byte_len), (12, 43));
        assert_eq!(got[1].imm, Some(0xabcd));
        assert_eq!(rbuf.bytes(0, 13), b"first message");
        let mut second = rbuf.bytes(64, 32);
        second.extend(rbuf.bytes(1024, 11));
        assert_eq!(second, b"second, spanning two entries of the receive");
    }

    #[test]
    fn unsignaled_success_is_silent() {
        let (_f, mut a, mut b) = pair();
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        let rbuf = Buf::new(&mut b, 4096, Access::LOCAL_WRITE);
        recv(&mut b, 1, &[rbuf.sge(0, 64)]);
        recv(&mut b, 2, &[rbuf.sge(64, 64)]);
        send(&mut a, 7, SendOp::Send, &[sbuf.sge(0, 8)], false);
        send(&mut a, 8, SendOp::Send, &[sbuf.sge(0, 8)], true);
        let sent = poll(&mut a);
        assert_eq!(sent.iter().map(|w| w.wr_id).collect::<Vec<_>>(), vec![8]);
        assert_eq!(poll(&mut b).len(), 2);
    }

    #[test]
    fn receive_too_small_breaks_both_ends() {
        let (_f, mut a, mut b) = pair();
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        let rbuf = Buf::new(&mut b, 4096, Access::LOCAL_WRITE);
        recv(&mut b, 1, &[rbuf.sge(0, 16)]);
        recv(&mut b, 2, &[rbuf.sge(16, 4000)]);
        send(&mut a, 5, SendOp::Send, &[sbuf.sge(0, 100)], true);

        let got = poll(&mut b);
        assert_eq!(got[0].wr_id, 1);
        assert_eq!(got[0].status, WcStatus::LocalLength);
        assert_eq!((got[1].wr_id, got[1].status), (2, WcStatus::WrFlush));
        assert_eq!(b.dev.qp_state(b.qp.id).unwrap(), QpState::Error);
        let sent = poll(&mut a);
        assert_eq!(
            sent.iter().map(|w| (w.wr_id, w.status)).collect::<Vec<_>>(),
            vec![(5, WcStatus::RemoteInvalidRequest)]
        );
        assert_eq!(a.dev.qp_state(a.qp.id).unwrap(), QpState::Error);
        let sges = [sbuf.sge(0, 10)];
        let wr = SendWr {
            wr_id: 6,
            op: SendOp::Send,
            sges: &sges,
            signaled: true,
        };
        assert!(matches!(
            a.dev.post_send(a.qp.id, &wr),
            Err(VerbsError::InvalidState {
                state: QpState::Error,
                ..
            })
        ));
    }

    #[test]
    fn receiver_not_ready_waits_then_delivers() {
        let (fabric, mut a, mut b) = pair_with(12, 3, QpCaps::default());
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        let rbuf = Buf::new(&mut b, 4096, Access::LOCAL_WRITE);
        send(&mut a, 1, SendOp::Send, &[sbuf.sge(0, 8)], true);
        // A WRITE behind the blocked SEND waits too (ordering).
        let wbuf = Buf::new(&mut b, 4096, RW);
        let write = SendOp::RdmaWrite {
            remote_addr: wbuf.addr(0),
            rkey: wbuf.keys.rkey,
        };
        send(&mut a, 2, write, &[sbuf.sge(0, 8)], true);
        assert!(poll(&mut a).is_empty());
        fabric.advance(rnr_delay(12));
        fabric.advance(rnr_delay(12));
        assert!(poll(&mut a).is_empty(), "two of three retries used");
        recv(&mut b, 9, &[rbuf.sge(0, 64)]);
        let sent = poll(&mut a);
        assert_eq!(
            sent.iter().map(|w| (w.wr_id, w.status)).collect::<Vec<_>>(),
            vec![(1, WcStatus::Success), (2, WcStatus::Success)]
        );
        assert_eq!(poll(&mut b)[0].wr_id, 9);
    }

    #[test]
    fn receiver_not_ready_exhausts_retries() {
        let (fabric, mut a, b) = pair_with(1, 2, QpCaps::default());
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        send(&mut a, 1, SendOp::Send, &[sbuf.sge(0, 8)], true);
        send(&mut a, 2, SendOp::Send, &[sbuf.sge(0, 8)], false);
        fabric.advance(rnr_delay(1));
        assert!(poll(&mut a).is_empty(), "one retry left");
        fabric.advance(rnr_delay(1));
        let sent = poll(&mut a);
        assert_eq!(
            sent.iter().map(|w| (w.wr_id, w.status)).collect::<Vec<_>>(),
            vec![(1, WcStatus::RnrRetryExceeded), (2, WcStatus::WrFlush)]
        );
        assert_eq!(a.dev.qp_state(a.qp.id).unwrap(), QpState::Error);
        // The receiver is untouched.
        assert_eq!(b.dev.qp_state(b.qp.id).unwrap(), QpState::Rts);
    }

    #[test]
    fn no_rnr_retries_fails_at_once_and_seven_means_forever() {
        let (_f, mut a, _b) = pair_with(1, 0, QpCaps::default());
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        send(&mut a, 1, SendOp::Send, &[sbuf.sge(0, 8)], true);
        assert_eq!(poll(&mut a)[0].status, WcStatus::RnrRetryExceeded);

        let (fabric, mut a, mut b) = pair_with(1, 7, QpCaps::default());
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        let rbuf = Buf::new(&mut b, 4096, Access::LOCAL_WRITE);
        send(&mut a, 1, SendOp::Send, &[sbuf.sge(0, 8)], true);
        for _ in 0..100 {
            fabric.advance(rnr_delay(1));
        }
        assert!(poll(&mut a).is_empty());
        recv(&mut b, 3, &[rbuf.sge(0, 8)]);
        assert_eq!(poll(&mut a)[0].status, WcStatus::Success);
    }

    #[test]
    fn rdma_write_lands_in_the_granted_region_silently() {
        let (_f, mut a, mut b) = pair();
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        let dst = Buf::new(&mut b, 8192, RW);
        sbuf.fill(0, b"bulk bytes");
        let op = SendOp::RdmaWrite {
            remote_addr: dst.addr(5000),
            rkey: dst.keys.rkey,
        };
        send(&mut a, 1, op, &[sbuf.sge(0, 10)], true);
        assert_eq!(poll(&mut a)[0].status, WcStatus::Success);
        assert!(
            poll(&mut b).is_empty(),
            "a plain write is invisible to the peer"
        );
        assert_eq!(dst.bytes(5000, 10), b"bulk bytes");
    }

    #[test]
    fn rdma_write_checks_key_bounds_and_access() {
        // Wrong rkey (the lkey), out of bounds, and a region without remote
        // write: each a remote access error that breaks both ends.
        for case in 0..3 {
            let (_f, mut a, mut b) = pair();
            let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
            let dst = Buf::new(&mut b, 4096, RW);
            let local_only = Buf::new(&mut b, 4096, Access::LOCAL_WRITE);
            let rbuf = Buf::new(&mut b, 4096, Access::LOCAL_WRITE);
            recv(&mut b, 77, &[rbuf.sge(0, 64)]);
            let (remote_addr, rkey) = match case {
                0 => (dst.addr(0), dst.keys.lkey),
                1 => (dst.addr(4090), dst.keys.rkey),
                _ => (local_only.addr(0), local_only.keys.rkey),
            };
            let op = SendOp::RdmaWrite { remote_addr, rkey };
            send(&mut a, 1, op, &[sbuf.sge(0, 10)], false);
            let sent = poll(&mut a);
            assert_eq!((sent[0].wr_id, sent[0].status), (1, WcStatus::RemoteAccess));
            assert_eq!(b.dev.qp_state(b.qp.id).unwrap(), QpState::Error);
            let got = poll(&mut b);
            assert_eq!((got[0].wr_id, got[0].status), (77, WcStatus::WrFlush));
            assert_eq!(dst.bytes(0, 10), vec![0; 10], "nothing written");
        }
    }

    #[test]
    fn rdma_write_needs_the_queue_pairs_remote_write_right() {
        let fabric = Fabric::manual_clock();
        fabric.add_host("a").unwrap();
        fabric.add_host("b").unwrap();
        let mut a = end(&fabric, "a", QpCaps::default());
        let mut b = end(&fabric, "b", QpCaps::default());
        let (ra, rb) = (remote_of(&a, 1), remote_of(&b, 2));
        bring_up(&mut a, rb, 1, 12, 3);
        b.dev
            .modify_qp(
                b.qp.id,
                &QpTransition::Init {
                    access: Access::LOCAL_WRITE,
                },
            )
            .unwrap();
        let rtr = RtrAttr {
            remote: ra,
            mtu: Mtu::Mtu1024,
            min_rnr_timer: 12,
            max_dest_rd_atomic: 0,
        };
        b.dev.modify_qp(b.qp.id, &QpTransition::Rtr(rtr)).unwrap();
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        let dst = Buf::new(&mut b, 4096, RW);
        let op = SendOp::RdmaWrite {
            remote_addr: dst.addr(0),
            rkey: dst.keys.rkey,
        };
        send(&mut a, 1, op, &[sbuf.sge(0, 10)], true);
        assert_eq!(poll(&mut a)[0].status, WcStatus::RemoteInvalidRequest);
    }

    #[test]
    fn write_with_immediate_consumes_a_receive() {
        let (_f, mut a, mut b) = pair();
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        let dst = Buf::new(&mut b, 4096, RW);
        let rbuf = Buf::new(&mut b, 4096, Access::LOCAL_WRITE);
        recv(&mut b, 40, &[rbuf.sge(0, 64)]);
        sbuf.fill(0, &[7u8; 300]);
        let op = SendOp::RdmaWriteWithImm {
            remote_addr: dst.addr(100),
            rkey: dst.keys.rkey,
            imm: 0x5eed,
        };
        send(&mut a, 1, op, &[sbuf.sge(0, 300)], true);
        let got = poll(&mut b);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].opcode, WcOpcode::RecvRdmaWithImm);
        assert_eq!(
            (got[0].wr_id, got[0].byte_len, got[0].imm),
            (40, 300, Some(0x5eed))
        );
        assert_eq!(dst.bytes(100, 300), vec![7u8; 300]);
        assert_eq!(rbuf.bytes(0, 64), vec![0u8; 64], "receive buffer untouched");
        assert_eq!(poll(&mut a)[0].opcode, WcOpcode::RdmaWrite);
    }

    #[test]
    fn write_with_immediate_without_receive_is_rnr() {
        let (fabric, mut a, mut b) = pair_with(1, 1, QpCaps::default());
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        let dst = Buf::new(&mut b, 4096, RW);
        let op = SendOp::RdmaWriteWithImm {
            remote_addr: dst.addr(0),
            rkey: dst.keys.rkey,
            imm: 1,
        };
        send(&mut a, 1, op, &[sbuf.sge(0, 8)], true);
        fabric.advance(rnr_delay(1));
        assert_eq!(poll(&mut a)[0].status, WcStatus::RnrRetryExceeded);
    }

    #[test]
    fn local_entries_are_checked() {
        let (_f, mut a, mut b) = pair();
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        let rbuf = Buf::new(&mut b, 4096, Access::LOCAL_WRITE);
        recv(&mut b, 1, &[rbuf.sge(0, 64)]);
        let past_the_end = sbuf.sge(4000, 200);
        send(&mut a, 1, SendOp::Send, &[past_the_end], true);
        assert_eq!(poll(&mut a)[0].status, WcStatus::LocalProtection);
        assert_eq!(a.dev.qp_state(a.qp.id).unwrap(), QpState::Error);
        // The receive was not consumed.
        assert!(poll(&mut b).is_empty());

        // A receive in a region without local write access.
        let (_f, mut a, mut b) = pair();
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        let ro = Buf::new(&mut b, 4096, Access::empty());
        recv(&mut b, 2, &[ro.sge(0, 64)]);
        send(&mut a, 3, SendOp::Send, &[sbuf.sge(0, 8)], true);
        assert_eq!(poll(&mut b)[0].status, WcStatus::LocalProtection);
        assert_eq!(poll(&mut a)[0].status, WcStatus::RemoteOperation);

        // An lkey of no region.
        let (_f, mut a, _b) = pair();
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        let mut wrong_key = sbuf.sge(0, 8);
        wrong_key.lkey ^= 0x40;
        send(&mut a, 4, SendOp::Send, &[wrong_key], true);
        assert_eq!(poll(&mut a)[0].status, WcStatus::LocalProtection);
    }

    #[test]
    fn state_machine_is_enforced() {
        let fabric = Fabric::manual_clock();
        fabric.add_host("a").unwrap();
        let mut a = end(&fabric, "a", QpCaps::default());
        let buf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        let wr = RecvWr {
            wr_id: 1,
            sges: &[buf.sge(0, 8)],
        };
        assert!(matches!(
            a.dev.post_recv(a.qp.id, &wr),
            Err(VerbsError::InvalidState {
                state: QpState::Reset,
                ..
            })
        ));
        let rts = QpTransition::Rts(RtsAttr {
            sq_psn: 0,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            max_rd_atomic: 0,
        });
        assert!(a.dev.modify_qp(a.qp.id, &rts).is_err(), "RESET -> RTS");
        let init = QpTransition::Init {
            access: Access::LOCAL_WRITE,
        };
        a.dev.modify_qp(a.qp.id, &init).unwrap();
        a.dev.post_recv(a.qp.id, &wr).unwrap();
        let sges = [buf.sge(0, 8)];
        let swr = SendWr {
            wr_id: 2,
            op: SendOp::Send,
            sges: &sges,
            signaled: true,
        };
        assert!(matches!(
            a.dev.post_send(a.qp.id, &swr),
            Err(VerbsError::InvalidState {
                state: QpState::Init,
                ..
            })
        ));
        a.dev.modify_qp(a.qp.id, &QpTransition::Error).unwrap();
        let got = poll(&mut a);
        assert_eq!((got[0].wr_id, got[0].status), (1, WcStatus::WrFlush));
        assert!(a.dev.post_recv(a.qp.id, &wr).is_err());
        assert!(a.dev.post_send(a.qp.id, &swr).is_err());
    }

    #[test]
    fn queues_have_their_capacity() {
        let caps = QpCaps {
            max_send_wr: 2,
            max_recv_wr: 1,
            ..QpCaps::default()
        };
        let (_f, mut a, mut b) = pair_with(12, 7, caps);
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        let rbuf = Buf::new(&mut b, 4096, Access::LOCAL_WRITE);
        recv(&mut b, 1, &[rbuf.sge(0, 8)]);
        let wr = RecvWr {
            wr_id: 2,
            sges: &[rbuf.sge(8, 8)],
        };
        assert!(matches!(
            b.dev.post_recv(b.qp.id, &wr),
            Err(VerbsError::QueueFull { .. })
        ));
        // The first send is delivered, two more wait for receives (RNR).
        send(&mut a, 1, SendOp::Send, &[sbuf.sge(0, 8)], false);
        send(&mut a, 2, SendOp::Send, &[sbuf.sge(0, 8)], false);
        send(&mut a, 3, SendOp::Send, &[sbuf.sge(0, 8)], false);
        let sges = [sbuf.sge(0, 8)];
        let wr = SendWr {
            wr_id: 4,
            op: SendOp::Send,
            sges: &sges,
            signaled: false,
        };
        assert!(matches!(
            a.dev.post_send(a.qp.id, &wr),
            Err(VerbsError::QueueFull { queue: "send", .. })
        ));
    }

    #[test]
    fn sequence_numbers_and_the_connection_must_match() {
        let fabric = Fabric::manual_clock();
        fabric.add_host("a").unwrap();
        fabric.add_host("b").unwrap();
        let mut a = end(&fabric, "a", QpCaps::default());
        let mut b = end(&fabric, "b", QpCaps::default());
        let (ra, rb) = (remote_of(&a, 100), remote_of(&b, 200));
        // `a` starts at PSN 100 but told `b` it starts at 101.
        bring_up(&mut a, rb, 100, 12, 3);
        bring_up(&mut b, RemoteQp { psn: 101, ..ra }, 200, 12, 3);
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        let rbuf = Buf::new(&mut b, 4096, Access::LOCAL_WRITE);
        recv(&mut b, 1, &[rbuf.sge(0, 8)]);
        send(&mut a, 1, SendOp::Send, &[sbuf.sge(0, 8)], true);
        assert_eq!(poll(&mut a)[0].status, WcStatus::RetryExceeded);

        // A peer that went away: retries run out.
        let (_f, mut a, b) = pair();
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        drop(b);
        send(&mut a, 1, SendOp::Send, &[sbuf.sge(0, 8)], true);
        assert_eq!(poll(&mut a)[0].status, WcStatus::RetryExceeded);
    }

    #[test]
    fn completion_channel_signals_armed_queues_only() {
        let (_f, mut a, mut b) = pair();
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        let rbuf = Buf::new(&mut b, 4096, Access::LOCAL_WRITE);
        recv(&mut b, 1, &[rbuf.sge(0, 8)]);
        recv(&mut b, 2, &[rbuf.sge(8, 8)]);
        send(&mut a, 1, SendOp::Send, &[sbuf.sge(0, 8)], false);
        let fd_readable_now = |e: &End| fd_readable(e.dev.cq_channel_fd(e.cq).unwrap(), 0);
        assert!(!fd_readable_now(&b), "not armed: no event");
        assert_eq!(b.dev.get_cq_events(b.cq).unwrap(), 0);
        b.dev.req_notify_cq(b.cq, false).unwrap();
        send(&mut a, 2, SendOp::Send, &[sbuf.sge(0, 8)], false);
        assert!(fd_readable_now(&b));
        assert_eq!(b.dev.get_cq_events(b.cq).unwrap(), 1);
        assert!(!fd_readable_now(&b), "taking the event clears it");
        assert_eq!(poll(&mut b).len(), 2);
    }

    #[test]
    fn completion_queue_overrun_is_reported() {
        let fabric = Fabric::manual_clock();
        fabric.add_host("a").unwrap();
        let mut a = end_with_cq(&fabric, "a", QpCaps::default(), 2);
        let init = QpTransition::Init {
            access: Access::LOCAL_WRITE,
        };
        a.dev.modify_qp(a.qp.id, &init).unwrap();
        let buf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        for i in 0..3 {
            recv(&mut a, i, &[buf.sge(0, 8)]);
        }
        a.dev.modify_qp(a.qp.id, &QpTransition::Error).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            a.dev.poll_cq(a.cq, &mut out, 8),
            Err(VerbsError::CqOverrun { capacity: 2 })
        ));
    }

    #[test]
    fn devices_are_found_by_name_with_their_own_addresses() {
        let fabric = Fabric::manual_clock();
        assert!(matches!(fabric.open("a"), Err(VerbsError::NoDevice { .. })));
        fabric.add_host("a").unwrap();
        fabric.add_host("b").unwrap();
        assert!(fabric.add_host("a").is_err());
        let a = fabric.open("a").unwrap();
        let b = fabric.open("b").unwrap();
        assert_ne!(a.port().lid, b.port().lid);
        assert_ne!(a.port().gid, b.port().gid);
        match fabric.open("c") {
            Err(VerbsError::DeviceNotFound { present, .. }) => {
                assert_eq!(present, vec!["a".to_string(), "b".to_string()])
            }
            other => panic!("expected DeviceNotFound, got {other:?}"),
        }
    }

    #[test]
    fn handles_of_another_context_are_refused() {
        let fabric = Fabric::manual_clock();
        fabric.add_host("a").unwrap();
        let mut one = fabric.open("a").unwrap();
        let mut two = fabric.open("a").unwrap();
        let pd = one.alloc_pd().unwrap();
        let cq = one.create_cq(4, false).unwrap();
        assert!(matches!(
            two.create_qp(pd, cq, cq, &QpCaps::default()),
            Err(VerbsError::UnknownHandle(_))
        ));
        let qp = one.create_qp(pd, cq, cq, &QpCaps::default()).unwrap();
        assert!(two.qp_state(qp.id).is_err());
        drop(one);
        assert!(two.alloc_pd().is_ok());
    }

    #[test]
    fn real_clock_retries_run_without_calls() {
        // With the real clock, the timer thread fails the send once its
        // retries are spent, and the armed channel wakes a sleeper: no poll
        // is needed to make time pass.
        let fabric = Fabric::new();
        fabric.add_host("a").unwrap();
        fabric.add_host("b").unwrap();
        let mut a = end(&fabric, "a", QpCaps::default());
        let mut b = end(&fabric, "b", QpCaps::default());
        let (ra, rb) = (remote_of(&a, 5), remote_of(&b, 6));
        bring_up(&mut a, rb, 5, 1, 2);
        bring_up(&mut b, ra, 6, 1, 2);
        let sbuf = Buf::new(&mut a, 4096, Access::LOCAL_WRITE);
        a.dev.req_notify_cq(a.cq, false).unwrap();
        send(&mut a, 1, SendOp::Send, &[sbuf.sge(0, 8)], true);
        // Bounded wait (not a timing assertion): the retries take ~30 us.
        assert!(fd_readable(a.dev.cq_channel_fd(a.cq).unwrap(), 10_000));
        assert_eq!(poll(&mut a)[0].status, WcStatus::RnrRetryExceeded);
    }
}
