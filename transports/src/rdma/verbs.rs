//! The narrow verbs interface: every RDMA call the transport makes.
//!
//! [`Verbs`] is one opened device context that owns everything created
//! through it (protection domains, memory regions, completion queues, queue
//! pairs) and names them by small copyable handles ([`PdId`], [`MrId`],
//! [`CqId`], [`QpId`]); dropping it destroys them in the right order. Two
//! implementations: [`super::ibv::IbvDevice`] (libibverbs) and
//! [`super::mem::MemDevice`] (an in-memory fabric with RC semantics, for
//! tests).
//!
//! How the calls are made, in order:
//! 1. open a device (implementation specific), read its [`PortInfo`];
//! 2. [`Verbs::alloc_pd`], then [`Verbs::reg_mr`] for every buffer pool;
//! 3. [`Verbs::create_cq`] (with a completion channel for the wait-on-fd
//!    mode), [`Verbs::create_qp`] (reliable connected);
//! 4. exchange [`RemoteQp`] data with the peer out of band, then
//!    [`Verbs::modify_qp`] through INIT, RTR and RTS;
//! 5. [`Verbs::post_recv`] / [`Verbs::post_send`], [`Verbs::poll_cq`];
//!    to sleep instead of spinning: [`Verbs::req_notify_cq`], wait until
//!    [`Verbs::cq_channel_fd`] is readable, [`Verbs::get_cq_events`], poll
//!    again.
//!
//! Immediate data is a host-order `u32` here; the ibverbs implementation
//! converts to and from the wire's big-endian form.

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;

/// Most scatter/gather entries in one work request.
pub const MAX_SGE: usize = 4;

/// Result of a verbs call.
pub type VerbsResult<T> = Result<T, VerbsError>;

/// A verbs call that failed (as opposed to a work request that completed
/// with an error status, which is a [`WorkCompletion`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerbsError {
    /// No RDMA device can be opened on this machine.
    #[error(
        "no RDMA device: {reason}. RDMA needs an InfiniBand or RoCE adapter, or Soft-RoCE on a \
         kernel with the rdma_rxe module (`modprobe rdma_rxe && rdma link add rxe0 type rxe \
         netdev <interface>`)"
    )]
    NoDevice {
        /// What was found missing.
        reason: String,
    },
    /// The named device does not exist.
    #[error("RDMA device {name:?} not found; devices present: {present:?}")]
    DeviceNotFound {
        /// The name asked for.
        name: String,
        /// The devices that do exist.
        present: Vec<String>,
    },
    /// A verbs library call failed.
    #[error("{call} failed: {source}")]
    Call {
        /// The call, e.g. `ibv_create_qp`.
        call: &'static str,
        /// The error it reported.
        #[source]
        source: io::Error,
    },
    /// The queue pair is not in a state that allows the operation.
    #[error("queue pair {qp_num:#x} is in state {state:?}: cannot {op}")]
    InvalidState {
        /// The queue pair's number.
        qp_num: u32,
        /// Its state.
        state: QpState,
        /// What was refused.
        op: &'static str,
    },
    /// A work queue already holds as many requests as it was created for.
    #[error("the {queue} queue of queue pair {qp_num:#x} is full ({capacity} requests)")]
    QueueFull {
        /// The queue pair's number.
        qp_num: u32,
        /// `"send"` or `"receive"`.
        queue: &'static str,
        /// Its capacity.
        capacity: u32,
    },
    /// A handle that this context did not create, or already destroyed.
    #[error("unknown {0} handle")]
    UnknownHandle(&'static str),
    /// An argument the device cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// More completions arrived than the completion queue holds; the queue
    /// is unusable.
    #[error("completion queue overrun: more than {capacity} completions were not polled")]
    CqOverrun {
        /// The queue's capacity.
        capacity: u32,
    },
}

impl VerbsError {
    /// The error of a failed call, from the errno it returned or set.
    #[allow(dead_code)] // used by the ibverbs implementation
    pub(crate) fn call(call: &'static str, errno: i32) -> VerbsError {
        VerbsError::Call {
            call,
            source: io::Error::from_raw_os_error(errno),
        }
    }
}

/// A protection domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PdId(pub(crate) u32);

/// A registered memory region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MrId(pub(crate) u32);

/// A completion queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CqId(pub(crate) u32);

/// A queue pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QpId(pub(crate) u32);

/// A 128-bit global identifier (an IPv6-format address of a port).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    /// Whether every byte is zero (no GID: route by LID only).
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Debug for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pair) in self.0.chunks(2).enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{:02x}{:02x}", pair[0], pair[1])?;
        }
        Ok(())
    }
}

/// Path MTU, as the verbs encode it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Mtu {
    /// 256 bytes.
    Mtu256 = 1,
    /// 512 bytes.
    Mtu512 = 2,
    /// 1024 bytes.
    Mtu1024 = 3,
    /// 2048 bytes.
    Mtu2048 = 4,
    /// 4096 bytes.
    Mtu4096 = 5,
}

impl Mtu {
    /// The verbs code (1..=5).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// From the verbs code; `None` outside 1..=5.
    pub fn from_code(code: u8) -> Option<Mtu> {
        Some(match code {
            1 => Mtu::Mtu256,
            2 => Mtu::Mtu512,
            3 => Mtu::Mtu1024,
            4 => Mtu::Mtu2048,
            5 => Mtu::Mtu4096,
            _ => return None,
        })
    }

    /// In bytes.
    pub fn bytes(self) -> u32 {
        128 << self.code()
    }
}

/// The link layer of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLayer {
    /// InfiniBand: routed by LID; a GID is optional.
    InfiniBand,
    /// Ethernet (RoCE, Soft-RoCE): routed by GID; LIDs are zero.
    Ethernet,
    /// Not reported.
    Unspecified,
}

/// What a peer needs to know about the local port, read at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// Port number on the device (verbs count from 1).
    pub port_num: u8,
    /// Local identifier (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// The GID used to address this port, and its index in the GID table.
    pub gid: Gid,
    /// Index of [`PortInfo::gid`] in the port's GID table.
    pub gid_index: u8,
    /// The active path MTU.
    pub active_mtu: Mtu,
    /// InfiniBand or Ethernet.
    pub link_layer: LinkLayer,
}

/// Access rights of a memory region or of a queue pair's responder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Access(u32);

impl Access {
    /// The local device may write (needed for receive buffers).
    pub const LOCAL_WRITE: Access = Access(1);
    /// Remote peers may RDMA WRITE into it.
    pub const REMOTE_WRITE: Access = Access(2);
    /// Remote peers may RDMA READ from it.
    pub const REMOTE_READ: Access = Access(4);

    /// No rights beyond local read.
    pub const fn empty() -> Access {
        Access(0)
    }

    /// The verbs bit mask.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The rights of both.
    pub const fn union(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }

    /// Whether every right in `other` is in `self`.
    pub const fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// Keys of a registered memory region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MrKeys {
    /// The handle, for [`Verbs::dereg_mr`].
    pub id: MrId,
    /// Local key, for scatter/gather entries of this context's work requests.
    pub lkey: u32,
    /// Remote key, handed to peers that may access the region.
    pub rkey: u32,
}

/// Sizes of a queue pair's work queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpCaps {
    /// Send requests outstanding at once.
    pub max_send_wr: u32,
    /// Receive requests outstanding at once.
    pub max_recv_wr: u32,
    /// Scatter/gather entries per send request (at most [`MAX_SGE`]).
    pub max_send_sge: u32,
    /// Scatter/gather entries per receive request (at most [`MAX_SGE`]).
    pub max_recv_sge: u32,
}

impl Default for QpCaps {
    fn default() -> QpCaps {
        QpCaps {
            max_send_wr: 256,
            max_recv_wr: 256,
            max_send_sge: MAX_SGE as u32,
            max_recv_sge: MAX_SGE as u32,
        }
    }
}

/// A created queue pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpInfo {
    /// The handle.
    pub id: QpId,
    /// The number peers address it by.
    pub qp_num: u32,
}

/// States of a queue pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpState {
    /// Just created, or reset.
    Reset,
    /// Initialised: receives may be posted.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Broken: every outstanding request was flushed.
    Error,
}

/// The remote end of a reliable connection, as learnt from the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteQp {
    /// The remote queue pair's number.
    pub qp_num: u32,
    /// The remote port's LID.
    pub lid: u16,
    /// The remote port's GID (zero: route by LID).
    pub gid: Gid,
    /// The remote's initial send packet sequence number (24 bits): our
    /// expected receive PSN.
    pub psn: u32,
}

/// Ready-to-receive attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtrAttr {
    /// The peer.
    pub remote: RemoteQp,
    /// Path MTU (at most both ports' active MTU).
    pub mtu: Mtu,
    /// How long a sender that found no posted receive waits before retrying
    /// (the verbs' 5-bit code; 12 is 0.64 ms).
    pub min_rnr_timer: u8,
    /// RDMA READ / atomic requests the peer may have outstanding here.
    pub max_dest_rd_atomic: u8,
}

/// Ready-to-send attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtsAttr {
    /// Our initial send packet sequence number (24 bits), as told to the peer.
    pub sq_psn: u32,
    /// Local ACK timeout (the verbs' code: 4.096 us * 2^timeout).
    pub timeout: u8,
    /// Transport retries before a send fails with `RetryExceeded`.
    pub retry_cnt: u8,
    /// Retries after "receiver not ready" (7: forever).
    pub rnr_retry: u8,
    /// RDMA READ / atomic requests we may have outstanding.
    pub max_rd_atomic: u8,
}

/// A queue pair state transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpTransition {
    /// RESET -> INIT, with the responder's access rights.
    Init {
        /// What remote peers may do through this queue pair.
        access: Access,
    },
    /// INIT -> RTR.
    Rtr(RtrAttr),
    /// RTR -> RTS.
    Rts(RtsAttr),
    /// Any state -> ERROR: outstanding requests are flushed.
    Error,
}

/// A scatter/gather entry: bytes in a registered memory region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sge {
    /// Address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub length: u32,
    /// Local key of the region that holds the bytes.
    pub lkey: u32,
}

/// What a send request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOp {
    /// Consumes a receive posted by the peer and fills it.
    Send,
    /// As `Send`, and the peer's receive completion carries `imm`.
    SendWithImm(u32),
    /// Writes into the peer's memory; the peer sees no completion.
    RdmaWrite {
        /// Destination address in the peer's region.
        remote_addr: u64,
        /// The peer region's remote key.
        rkey: u32,
    },
    /// Writes into the peer's memory and consumes one of its receives, whose
    /// completion carries `imm` and the length written.
    RdmaWriteWithImm {
        /// Destination address in the peer's region.
        remote_addr: u64,
        /// The peer region's remote key.
        rkey: u32,
        /// Immediate data for the peer's receive completion.
        imm: u32,
    },
}

impl SendOp {
    /// Whether the peer must have a receive posted.
    pub fn consumes_recv(&self) -> bool {
        !matches!(self, SendOp::RdmaWrite { .. })
    }

    /// The completion opcode of this request on the sender.
    pub fn wc_opcode(&self) -> WcOpcode {
        match self {
            SendOp::Send | SendOp::SendWithImm(_) => WcOpcode::Send,
            SendOp::RdmaWrite { .. } | SendOp::RdmaWriteWithImm { .. } => WcOpcode::RdmaWrite,
        }
    }
}

/// A send work request.
#[derive(Clone, Copy, Debug)]
pub struct SendWr<'a> {
    /// Echoed in the completion.
    pub wr_id: u64,
    /// What to do.
    pub op: SendOp,
    /// Where the bytes come from.
    pub sges: &'a [Sge],
    /// Whether a successful completion is reported (errors always are).
    pub signaled: bool,
}

/// A receive work request.
#[derive(Clone, Copy, Debug)]
pub struct RecvWr<'a> {
    /// Echoed in the completion.
    pub wr_id: u64,
    /// Where an incoming message lands.
    pub sges: &'a [Sge],
}

/// Status of a work completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WcStatus {
    /// Done.
    Success,
    /// A receive was too small for the message, or a message too large.
    LocalLength,
    /// Internal queue pair consistency error.
    LocalQpOperation,
    /// A scatter/gather entry names memory not registered for the access.
    LocalProtection,
    /// Flushed: the queue pair went to the error state first.
    WrFlush,
    /// The responder refused the request (e.g. its receive was too small,
    /// or it does not allow the operation).
    RemoteInvalidRequest,
    /// RDMA access outside the remote's registered regions or rights.
    RemoteAccess,
    /// The responder failed to complete the operation.
    RemoteOperation,
    /// The transport retry count was exceeded: the peer did not answer.
    RetryExceeded,
    /// The peer had no receive posted for longer than the RNR retries allow.
    RnrRetryExceeded,
    /// Any other status, by its verbs code.
    Other(u32),
}

impl fmt::Display for WcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            WcStatus::Success => "success",
            WcStatus::LocalLength => "local length error",
            WcStatus::LocalQpOperation => "local QP operation error",
            WcStatus::LocalProtection => "local protection error",
            WcStatus::WrFlush => "flushed (queue pair in error state)",
            WcStatus::RemoteInvalidRequest => "remote invalid request",
            WcStatus::RemoteAccess => "remote access error",
            WcStatus::RemoteOperation => "remote operation error",
            WcStatus::RetryExceeded => "transport retry counter exceeded",
            WcStatus::RnrRetryExceeded => "RNR retry counter exceeded (no receive posted)",
            WcStatus::Other(code) => return write!(f, "work completion status {code}"),
        };
        f.write_str(s)
    }
}

/// Kind of a work completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WcOpcode {
    /// A send (with or without immediate) finished.
    Send,
    /// An RDMA WRITE (with or without immediate) finished.
    RdmaWrite,
    /// A receive was filled by a send.
    Recv,
    /// A receive was consumed by an RDMA WRITE with immediate.
    RecvRdmaWithImm,
    /// Any other opcode, by its verbs code.
    Other(u32),
}

/// A work completion, polled from a completion queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkCompletion {
    /// The request's id.
    pub wr_id: u64,
    /// How it ended.
    pub status: WcStatus,
    /// What it was (valid only on success).
    pub opcode: WcOpcode,
    /// Bytes received (receives only).
    pub byte_len: u32,
    /// Immediate data, if the message carried one.
    pub imm: Option<u32>,
    /// The local queue pair's number.
    pub qp_num: u32,
    /// Vendor error syndrome (errors only).
    pub vendor_err: u32,
}

/// One opened RDMA device context: the only verbs calls the transport makes.
///
/// See the module docs for the order of calls. Every object belongs to the
/// context and is destroyed when it is dropped.
pub trait Verbs {
    /// The device's name (e.g. `mlx5_0`, `rxe0`).
    fn device_name(&self) -> &str;

    /// The port in use.
    fn port(&self) -> &PortInfo;

    /// Allocates a protection domain.
    fn alloc_pd(&mut self) -> VerbsResult<PdId>;

    /// Registers `len` bytes at `addr` with the device.
    ///
    /// # Safety
    ///
    /// The range must stay allocated until [`Verbs::dereg_mr`] or the drop
    /// of this context. While registered, the device may read it at any time
    /// and write it as `access` allows: locally into receive buffers posted
    /// on it, and, with [`Access::REMOTE_WRITE`], wherever a peer holding the
    /// rkey writes. The caller treats the range as memory shared with the
    /// device: it does not keep Rust references to bytes the device may be
    /// writing.
    unsafe fn reg_mr(
        &mut self,
        pd: PdId,
        addr: *mut u8,
        len: usize,
        access: Access,
    ) -> VerbsResult<MrKeys>;

    /// Deregisters a region: the device no longer touches it.
    fn dereg_mr(&mut self, mr: MrId) -> VerbsResult<()>;

    /// Creates a completion queue of at least `entries` entries; with
    /// `channel`, a completion channel whose descriptor signals events.
    fn create_cq(&mut self, entries: u32, channel: bool) -> VerbsResult<CqId>;

    /// The completion channel's descriptor (non-blocking; readable when an
    /// event is pending), if the queue was created with one.
    fn cq_channel_fd(&self, cq: CqId) -> Option<BorrowedFd<'_>>;

    /// Creates a reliable-connected queue pair, in the RESET state.
    fn create_qp(
        &mut self,
        pd: PdId,
        send_cq: CqId,
        recv_cq: CqId,
        caps: &QpCaps,
    ) -> VerbsResult<QpInfo>;

    /// Moves a queue pair to another state.
    fn modify_qp(&mut self, qp: QpId, to: &QpTransition) -> VerbsResult<()>;

    /// The queue pair's current state.
    fn qp_state(&self, qp: QpId) -> VerbsResult<QpState>;

    /// Destroys a queue pair; its outstanding requests end without
    /// completions.
    fn destroy_qp(&mut self, qp: QpId) -> VerbsResult<()>;

    /// Posts a receive (allowed in INIT, RTR and RTS). The entries must name
    /// memory registered with [`Access::LOCAL_WRITE`], or the request
    /// completes with [`WcStatus::LocalProtection`].
    fn post_recv(&mut self, qp: QpId, wr: &RecvWr<'_>) -> VerbsResult<()>;

    /// Posts a send (allowed in RTS only).
    fn post_send(&mut self, qp: QpId, wr: &SendWr<'_>) -> VerbsResult<()>;

    /// Moves up to `max` completions into `out`; returns how many.
    fn poll_cq(
        &mut self,
        cq: CqId,
        out: &mut Vec<WorkCompletion>,
        max: usize,
    ) -> VerbsResult<usize>;

    /// Arms the completion channel: the next completion makes its descriptor
    /// readable.
    fn req_notify_cq(&mut self, cq: CqId, solicited_only: bool) -> VerbsResult<()>;

    /// Takes (and acknowledges) the events pending on the queue's channel
    /// without blocking; returns how many there were.
    fn get_cq_events(&mut self, cq: CqId) -> VerbsResult<u32>;
}
