//! The verbs interface on libibverbs (InfiniBand, RoCE, Soft-RoCE).
//!
//! Every raw verbs call of the crate is in this file. It uses the
//! `ibverbs-sys` bindings (pinned to 0.3.2, bindgen over rdma-core v55
//! headers, linked against the system's libibverbs) rather than the safe
//! `ibverbs` crate: the latest release of the safe crate (0.9.2) cannot
//! register caller-owned memory, create a completion channel, post RDMA
//! WRITE (with or without immediate) or unsignaled sends, or set the send
//! PSN, and it does not hand out its raw handles, so the missing calls could
//! not be made beside it. Its main branch has all of that but is not
//! released, and this project builds from crates.io only. The wrappers here
//! own each object and destroy them in order when [`IbvDevice`] is dropped.
//!
//! Without a device, [`IbvDevice::open`] fails at once with
//! [`VerbsError::NoDevice`], saying why and how to get one.

use std::ffi::{c_int, c_void, CStr};
use std::io;
use std::os::fd::BorrowedFd;
use std::ptr;

use ibverbs_sys as ffi;
use slab::Slab;

use super::verbs::{
    Access, CqId, Gid, LinkLayer, MrId, MrKeys, Mtu, PdId, PortInfo, QpCaps, QpId, QpInfo, QpState,
    QpTransition, RecvWr, SendOp, SendWr, Sge, Verbs, VerbsError, VerbsResult, WcOpcode, WcStatus,
    WorkCompletion, MAX_SGE,
};

/// Most completions taken per `ibv_poll_cq` call.
const POLL_CHUNK: usize = 64;

/// The device list returned by `ibv_get_device_list`, freed on drop.
struct DeviceList {
    list: *mut *mut ffi::ibv_device,
    len: usize,
}

impl DeviceList {
    fn get() -> VerbsResult<DeviceList> {
        let mut n: c_int = 0;
        // SAFETY: `n` is a valid out-pointer for the call's duration.
        let list = unsafe { ffi::ibv_get_device_list(&mut n) };
        if list.is_null() {
            let err = io::Error::last_os_error();
            let reason = match err.raw_os_error() {
                Some(libc::ENOSYS) => {
                    "the kernel has no RDMA support (ibv_get_device_list: ENOSYS; no \
                     /sys/class/infiniband_verbs)"
                        .to_string()
                }
                Some(libc::EPERM) => {
                    "permission denied listing RDMA devices (ibv_get_device_list: EPERM)"
                        .to_string()
                }
                _ => format!("ibv_get_device_list failed: {err}"),
            };
            return Err(VerbsError::NoDevice { reason });
        }
        Ok(DeviceList {
            list,
            len: usize::try_from(n).unwrap_or(0),
        })
    }

    fn devices(&self) -> &[*mut ffi::ibv_device] {
        // SAFETY: libibverbs returned `len` device pointers at `list`, valid
        // until `ibv_free_device_list`, which only `drop` calls.
        unsafe { std::slice::from_raw_parts(self.list, self.len) }
    }

    fn name(dev: *mut ffi::ibv_device) -> String {
        // SAFETY: `dev` comes from a live device list.
        let name = unsafe { ffi::ibv_get_device_name(dev) };
        if name.is_null() {
            return String::new();
        }
        // SAFETY: libibverbs returns a NUL-terminated name that lives as
        // long as the device entry.
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: `list` came from `ibv_get_device_list` and is freed once.
        unsafe { ffi::ibv_free_device_list(self.list) };
    }
}

/// The names of the RDMA devices on this machine.
pub fn device_names() -> VerbsResult<Vec<String>> {
    let list = DeviceList::get()?;
    Ok(list
        .devices()
        .iter()
        .map(|&d| DeviceList::name(d))
        .collect())
}

struct IbvCq {
    cq: *mut ffi::ibv_cq,
    channel: *mut ffi::ibv_comp_channel,
}

/// An opened libibverbs device context and everything created through it.
pub struct IbvDevice {
    ctx: *mut ffi::ibv_context,
    name: String,
    port: PortInfo,
    pds: Slab<*mut ffi::ibv_pd>,
    mrs: Slab<*mut ffi::ibv_mr>,
    cqs: Slab<IbvCq>,
    qps: Slab<*mut ffi::ibv_qp>,
    wcs: Vec<ffi::ibv_wc>,
}

// SAFETY: libibverbs objects may be used from any thread (the library
// locks internally where needed); the context and its objects are owned by
// this value alone and moved, never shared, between threads.
unsafe impl Send for IbvDevice {}

/// Which port and GID to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortChoice {
    /// Port number (verbs count from 1). Default: 1.
    pub port_num: Option<u8>,
    /// GID table index. Default: on Ethernet (RoCE) the first IPv4-mapped
    /// GID (RoCE v2 over IPv4), else the first non-zero one.
    pub gid_index: Option<u8>,
}

impl IbvDevice {
    /// Opens the device named `name`, or the first one, on port 1.
    pub fn open(name: Option<&str>) -> VerbsResult<IbvDevice> {
        IbvDevice::open_with(name, PortChoice::default())
    }

    /// Opens the device named `name`, or the first one, on the chosen port.
    pub fn open_with(name: Option<&str>, choice: PortChoice) -> VerbsResult<IbvDevice> {
        let list = DeviceList::get()?;
        if list.devices().is_empty() {
            return Err(VerbsError::NoDevice {
                reason: "no RDMA device found (libibverbs lists none)".into(),
            });
        }
        let names: Vec<String> = list
            .devices()
            .iter()
            .map(|&d| DeviceList::name(d))
            .collect();
        let index =
            match name {
                None => 0,
                Some(want) => names.iter().position(|n| n == want).ok_or_else(|| {
                    VerbsError::DeviceNotFound {
                        name: want.to_string(),
                        present: names.clone(),
                    }
                })?,
            };
        let dev = list.devices()[index];
        // SAFETY: `dev` is an entry of the live device list.
        let ctx = unsafe { ffi::ibv_open_device(dev) };
        if ctx.is_null() {
            return Err(VerbsError::Call {
                call: "ibv_open_device",
                source: io::Error::last_os_error(),
            });
        }
        // The context does not depend on the list once opened.
        drop(list);
        let mut device = IbvDevice {
            ctx,
            name: names[index].clone(),
            port: PortInfo {
                port_num: 1,
                lid: 0,
                gid: Gid::default(),
                gid_index: 0,
                active_mtu: Mtu::Mtu1024,
                link_layer: LinkLayer::Unspecified,
            },
            pds: Slab::new(),
            mrs: Slab::new(),
            cqs: Slab::new(),
            qps: Slab::new(),
            wcs: vec![ffi::ibv_wc::default(); POLL_CHUNK],
        };
        device.port = device.query_port(choice)?;
        Ok(device)
    }

    fn query_port(&self, choice: PortChoice) -> VerbsResult<PortInfo> {
        let port_num = choice.port_num.unwrap_or(1);
        let mut attr = ffi::ibv_port_attr::default();
        // SAFETY: `ctx` is open; `attr` is a valid out-pointer. The exported
        // symbol fills the leading (compatible) part of the struct.
        let rc = unsafe {
            ffi::ibv_query_port(
                self.ctx,
                port_num,
                (&mut attr as *mut ffi::ibv_port_attr).cast(),
            )
        };
        if rc != 0 {
            return Err(VerbsError::call("ibv_query_port", rc));
        }
        if attr.state != ffi::ibv_port_state::IBV_PORT_ACTIVE {
            return Err(VerbsError::NoDevice {
                reason: format!(
                    "port {port_num} of RDMA device {} is not active (state {}); check the link \
                     (`ibv_devinfo`, `rdma link`)",
                    self.name, attr.state
                ),
            });
        }
        let link_layer = match u32::from(attr.link_layer) {
            ffi::IBV_LINK_LAYER_INFINIBAND => LinkLayer::InfiniBand,
            ffi::IBV_LINK_LAYER_ETHERNET => LinkLayer::Ethernet,
            _ => LinkLayer::Unspecified,
        };
        let active_mtu = Mtu::from_code(attr.active_mtu as u8).unwrap_or(Mtu::Mtu1024);
        let (gid_index, gid) = self.pick_gid(port_num, attr.gid_tbl_len, link_layer, choice)?;
        Ok(PortInfo {
            port_num,
            lid: attr.lid,
            gid,
            gid_index,
            active_mtu,
            link_layer,
        })
    }

    fn query_gid(&self, port_num: u8, index: u8) -> Option<Gid> {
        let mut gid = ffi::ibv_gid { raw: [0; 16] };
        // SAFETY: `ctx` is open; `gid` is a valid out-pointer.
        let rc = unsafe { ffi::ibv_query_gid(self.ctx, port_num, c_int::from(index), &mut gid) };
        // SAFETY: the union was initialised through `raw`, and every bit
        // pattern is a valid byte array.
        let raw = unsafe { gid.raw };
        (rc == 0).then_some(Gid(raw))
    }

    fn pick_gid(
        &self,
        port_num: u8,
        table_len: c_int,
        link_layer: LinkLayer,
        choice: PortChoice,
    ) -> VerbsResult<(u8, Gid)> {
        if let Some(index) = choice.gid_index {
            return self
                .query_gid(port_num, index)
                .map(|g| (index, g))
                .ok_or_else(|| {
                    VerbsError::InvalidArgument(format!(
                        "GID index {index} of port {port_num} of {} cannot be read",
                        self.name
                    ))
                });
        }
        let len = u8::try_from(table_len.clamp(0, 255)).unwrap_or(0);
        let gids: Vec<(u8, Gid)> = (0..len)
            .filter_map(|i| self.query_gid(port_num, i).map(|g| (i, g)))
            .filter(|(_, g)| !g.is_zero())
            .collect();
        let ipv4_mapped = |g: &Gid| g.0[..10] == [0; 10] && g.0[10..12] == [0xff, 0xff];
        let picked = match link_layer {
            LinkLayer::Ethernet => gids
                .iter()
                .find(|(_, g)| ipv4_mapped(g))
                .or(gids.first())
                .copied(),
            _ => gids.first().copied(),
        };
        match (picked, link_layer) {
            (Some(p), _) => Ok(p),
            // InfiniBand routes by LID within a subnet: no GID needed.
            (None, LinkLayer::InfiniBand) => Ok((0, Gid::default())),
            (None, _) => Err(VerbsError::NoDevice {
                reason: format!(
                    "port {port_num} of RDMA device {} has no usable GID (RoCE needs an IP \
                     address on the bound network interface)",
                    self.name
                ),
            }),
        }
    }

    fn pd(&self, pd: PdId) -> VerbsResult<*mut ffi::ibv_pd> {
        self.pds
            .get(pd.0 as usize)
            .copied()
            .ok_or(VerbsError::UnknownHandle("protection domain"))
    }

    fn cq(&self, cq: CqId) -> VerbsResult<&IbvCq> {
        self.cqs
            .get(cq.0 as usize)
            .ok_or(VerbsError::UnknownHandle("completion queue"))
    }

    fn qp(&self, qp: QpId) -> VerbsResult<*mut ffi::ibv_qp> {
        self.qps
            .get(qp.0 as usize)
            .copied()
            .ok_or(VerbsError::UnknownHandle("queue pair"))
    }
}

fn ffi_sges(sges: &[Sge]) -> VerbsResult<[ffi::ibv_sge; MAX_SGE]> {
    if sges.len() > MAX_SGE {
        return Err(VerbsError::InvalidArgument(format!(
            "{} scatter/gather entries, at most {MAX_SGE}",
            sges.len()
        )));
    }
    let mut out = [ffi::ibv_sge::default(); MAX_SGE];
    for (o, s) in out.iter_mut().zip(sges) {
        *o = ffi::ibv_sge {
            addr: s.addr,
            length: s.length,
            lkey: s.lkey,
        };
    }
    Ok(out)
}

fn wc_status(code: ffi::ibv_wc_status::Type) -> WcStatus {
    use ffi::ibv_wc_status as s;
    match code {
        s::IBV_WC_SUCCESS => WcStatus::Success,
        s::IBV_WC_LOC_LEN_ERR => WcStatus::LocalLength,
        s::IBV_WC_LOC_QP_OP_ERR => WcStatus::LocalQpOperation,
        s::IBV_WC_LOC_PROT_ERR => WcStatus::LocalProtection,
        s::IBV_WC_WR_FLUSH_ERR => WcStatus::WrFlush,
        s::IBV_WC_REM_INV_REQ_ERR => WcStatus::RemoteInvalidRequest,
        s::IBV_WC_REM_ACCESS_ERR => WcStatus::RemoteAccess,
        s::IBV_WC_REM_OP_ERR => WcStatus::RemoteOperation,
        s::IBV_WC_RETRY_EXC_ERR => WcStatus::RetryExceeded,
        s::IBV_WC_RNR_RETRY_EXC_ERR => WcStatus::RnrRetryExceeded,
        other => WcStatus::Other(other),
    }
}

fn wc_opcode(code: ffi::ibv_wc_opcode::Type) -> WcOpcode {
    use ffi::ibv_wc_opcode as o;
    match code {
        o::IBV_WC_SEND => WcOpcode::Send,
        o::IBV_WC_RDMA_WRITE => WcOpcode::RdmaWrite,
        o::IBV_WC_RECV => WcOpcode::Recv,
        o::IBV_WC_RECV_RDMA_WITH_IMM => WcOpcode::RecvRdmaWithImm,
        other => WcOpcode::Other(other),
    }
}

impl Verbs for IbvDevice {
    fn device_name(&self) -> &str {
        &self.name
    }

    fn port(&self) -> &PortInfo {
        &self.port
    }

    fn alloc_pd(&mut self) -> VerbsResult<PdId> {
        // SAFETY: `ctx` is open.
        let pd = unsafe { ffi::ibv_alloc_pd(self.ctx) };
        if pd.is_null() {
            return Err(VerbsError::Call {
                call: "ibv_alloc_pd",
                source: io::Error::last_os_error(),
            });
        }
        Ok(PdId(self.pds.insert(pd) as u32))
    }

    unsafe fn reg_mr(
        &mut self,
        pd: PdId,
        addr: *mut u8,
        len: usize,
        access: Access,
    ) -> VerbsResult<MrKeys> {
        let pd = self.pd(pd)?;
        // SAFETY: `pd` is live; the caller upholds that `addr..addr + len`
        // stays allocated while registered (this method's contract).
        let mr = unsafe { ffi::ibv_reg_mr(pd, addr.cast::<c_void>(), len, access.bits() as c_int) };
        if mr.is_null() {
            return Err(VerbsError::Call {
                call: "ibv_reg_mr",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: a non-null MR returned by `ibv_reg_mr` is readable.
        let (lkey, rkey) = unsafe { ((*mr).lkey, (*mr).rkey) };
        let id = MrId(self.mrs.insert(mr) as u32);
        Ok(MrKeys { id, lkey, rkey })
    }

    fn dereg_mr(&mut self, mr: MrId) -> VerbsResult<()> {
        let Some(ptr) = self.mrs.try_remove(mr.0 as usize) else {
            return Err(VerbsError::UnknownHandle("memory region"));
        };
        // SAFETY: `ptr` is a live MR, removed from the table: deregistered once.
        let rc = unsafe { ffi::ibv_dereg_mr(ptr) };
        if rc != 0 {
            return Err(VerbsError::call("ibv_dereg_mr", rc));
        }
        Ok(())
    }

    fn create_cq(&mut self, entries: u32, channel: bool) -> VerbsResult<CqId> {
        let entries = c_int::try_from(entries)
            .map_err(|_| VerbsError::InvalidArgument(format!("{entries} CQ entries")))?;
        let mut comp = ptr::null_mut();
        if channel {
            // SAFETY: `ctx` is open.
            comp = unsafe { ffi::ibv_create_comp_channel(self.ctx) };
            if comp.is_null() {
                return Err(VerbsError::Call {
                    call: "ibv_create_comp_channel",
                    source: io::Error::last_os_error(),
                });
            }
            // SAFETY: `comp` is a live channel; its fd is open. Non-blocking,
            // so `get_cq_events` never sleeps.
            let set = unsafe {
                let fd = (*comp).fd;
                let flags = libc::fcntl(fd, libc::F_GETFL);
                flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
            };
            if !set {
                let err = io::Error::last_os_error();
                // SAFETY: `comp` is live and unused by anything else.
                unsafe { ffi::ibv_destroy_comp_channel(comp) };
                return Err(VerbsError::Call {
                    call: "fcntl(completion channel, O_NONBLOCK)",
                    source: err,
                });
            }
        }
        // SAFETY: `ctx` is open; `comp` is null or a live channel of it.
        let cq = unsafe { ffi::ibv_create_cq(self.ctx, entries, ptr::null_mut(), comp, 0) };
        if cq.is_null() {
            let err = io::Error::last_os_error();
            if !comp.is_null() {
                // SAFETY: no CQ uses `comp`.
                unsafe { ffi::ibv_destroy_comp_channel(comp) };
            }
            return Err(VerbsError::Call {
                call: "ibv_create_cq",
                source: err,
            });
        }
        Ok(CqId(self.cqs.insert(IbvCq { cq, channel: comp }) as u32))
    }

    fn cq_channel_fd(&self, cq: CqId) -> Option<BorrowedFd<'_>> {
        let cq = self.cq(cq).ok()?;
        if cq.channel.is_null() {
            return None;
        }
        // SAFETY: the channel is live and owns its fd until it is destroyed
        // in `drop`, which needs `&mut self`; the borrow excludes it.
        Some(unsafe { BorrowedFd::borrow_raw((*cq.channel).fd) })
    }

    fn create_qp(
        &mut self,
        pd: PdId,
        send_cq: CqId,
        recv_cq: CqId,
        caps: &QpCaps,
    ) -> VerbsResult<QpInfo> {
        let pd = self.pd(pd)?;
        let send_cq = self.cq(send_cq)?.cq;
        let recv_cq = self.cq(recv_cq)?.cq;
        let mut attr = ffi::ibv_qp_init_attr {
            send_cq,
            recv_cq,
            cap: ffi::ibv_qp_cap {
                max_send_wr: caps.max_send_wr,
                max_recv_wr: caps.max_recv_wr,
                max_send_sge: caps.max_send_sge,
                max_recv_sge: caps.max_recv_sge,
                max_inline_data: 0,
            },
            qp_type: ffi::ibv_qp_type::IBV_QPT_RC,
            sq_sig_all: 0,
            ..Default::default()
        };
        // SAFETY: `pd` and both CQs are live; `attr` is valid for the call.
        let qp = unsafe { ffi::ibv_create_qp(pd, &mut attr) };
        if qp.is_null() {
            return Err(VerbsError::Call {
                call: "ibv_create_qp",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: a non-null QP returned by `ibv_create_qp` is readable.
        let qp_num = unsafe { (*qp).qp_num };
        Ok(QpInfo {
            id: QpId(self.qps.insert(qp) as u32),
            qp_num,
        })
    }

    fn modify_qp(&mut self, qp: QpId, to: &QpTransition) -> VerbsResult<()> {
        use ffi::ibv_qp_attr_mask as m;
        let qp = self.qp(qp)?;
        let mut attr = ffi::ibv_qp_attr::default();
        let mask = match *to {
            QpTransition::Init { access } => {
                attr.qp_state = ffi::ibv_qp_state::IBV_QPS_INIT;
                attr.pkey_index = 0;
                attr.port_num = self.port.port_num;
                attr.qp_access_flags = access.bits();
                m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS
            }
            QpTransition::Rtr(rtr) => {
                attr.qp_state = ffi::ibv_qp_state::IBV_QPS_RTR;
                attr.path_mtu = ffi::ibv_mtu::from(rtr.mtu.code());
                attr.dest_qp_num = rtr.remote.qp_num;
                attr.rq_psn = rtr.remote.psn;
                attr.max_dest_rd_atomic = rtr.max_dest_rd_atomic;
                attr.min_rnr_timer = rtr.min_rnr_timer;
                attr.ah_attr.dlid = rtr.remote.lid;
                attr.ah_attr.sl = 0;
                attr.ah_attr.src_path_bits = 0;
                attr.ah_attr.port_num = self.port.port_num;
                let global =
                    !rtr.remote.gid.is_zero() || self.port.link_layer == LinkLayer::Ethernet;
                if global {
                    attr.ah_attr.is_global = 1;
                    attr.ah_attr.grh.dgid = ffi::ibv_gid {
                        raw: rtr.remote.gid.0,
                    };
                    attr.ah_attr.grh.sgid_index = self.port.gid_index;
                    attr.ah_attr.grh.hop_limit = 0xff;
                }
                m::IBV_QP_STATE
                    | m::IBV_QP_AV
                    | m::IBV_QP_PATH_MTU
                    | m::IBV_QP_DEST_QPN
                    | m::IBV_QP_RQ_PSN
                    | m::IBV_QP_MAX_DEST_RD_ATOMIC
                    | m::IBV_QP_MIN_RNR_TIMER
            }
            QpTransition::Rts(rts) => {
                attr.qp_state = ffi::ibv_qp_state::IBV_QPS_RTS;
                attr.sq_psn = rts.sq_psn;
                attr.timeout = rts.timeout;
                attr.retry_cnt = rts.retry_cnt;
                attr.rnr_retry = rts.rnr_retry;
                attr.max_rd_atomic = rts.max_rd_atomic;
                m::IBV_QP_STATE
                    | m::IBV_QP_SQ_PSN
                    | m::IBV_QP_TIMEOUT
                    | m::IBV_QP_RETRY_CNT
                    | m::IBV_QP_RNR_RETRY
                    | m::IBV_QP_MAX_QP_RD_ATOMIC
            }
            QpTransition::Error => {
                attr.qp_state = ffi::ibv_qp_state::IBV_QPS_ERR;
                m::IBV_QP_STATE
            }
        };
        // SAFETY: `qp` is live; `attr` is valid for the call.
        let rc = unsafe { ffi::ibv_modify_qp(qp, &mut attr, mask.0 as c_int) };
        if rc != 0 {
            return Err(VerbsError::call("ibv_modify_qp", rc));
        }
        Ok(())
    }

    fn qp_state(&self, qp: QpId) -> VerbsResult<QpState> {
        let qp = self.qp(qp)?;
        let mut attr = ffi::ibv_qp_attr::default();
        let mut init = ffi::ibv_qp_init_attr::default();
        let mask = ffi::ibv_qp_attr_mask::IBV_QP_STATE;
        // SAFETY: `qp` is live; both out-pointers are valid for the call.
        let rc = unsafe { ffi::ibv_query_qp(qp, &mut attr, mask.0 as c_int, &mut init) };
        if rc != 0 {
            return Err(VerbsError::call("ibv_query_qp", rc));
        }
        use ffi::ibv_qp_state as s;
        Ok(match attr.qp_state {
            s::IBV_QPS_RESET => QpState::Reset,
            s::IBV_QPS_INIT => QpState::Init,
            s::IBV_QPS_RTR => QpState::Rtr,
            s::IBV_QPS_RTS => QpState::Rts,
            _ => QpState::Error,
        })
    }

    fn destroy_qp(&mut self, qp: QpId) -> VerbsResult<()> {
        let Some(ptr) = self.qps.try_remove(qp.0 as usize) else {
            return Err(VerbsError::UnknownHandle("queue pair"));
        };
        // SAFETY: `ptr` is live and removed from the table: destroyed once.
        let rc = unsafe { ffi::ibv_destroy_qp(ptr) };
        if rc != 0 {
            return Err(VerbsError::call("ibv_destroy_qp", rc));
        }
        Ok(())
    }

    fn post_recv(&mut self, qp: QpId, wr: &RecvWr<'_>) -> VerbsResult<()> {
        let qp = self.qp(qp)?;
        let mut sges = ffi_sges(wr.sges)?;
        let mut req = ffi::ibv_recv_wr {
            wr_id: wr.wr_id,
            next: ptr::null_mut(),
            sg_list: sges.as_mut_ptr(),
            num_sge: wr.sges.len() as c_int,
        };
        let mut bad = ptr::null_mut();
        // SAFETY: `qp` is live, so is its context; `ibv_post_recv` is an
        // inline wrapper that calls this function pointer. The request and
        // its entries are valid for the call (the device copies them). The
        // memory they name is registered: `reg_mr`'s contract covers it.
        let rc = unsafe {
            let ctx = (*qp).context;
            match (*ctx).ops.post_recv {
                Some(post) => post(qp, &mut req, &mut bad),
                None => libc::ENOSYS,
            }
        };
        if rc != 0 {
            return Err(VerbsError::call("ibv_post_recv", rc));
        }
        Ok(())
    }

    fn post_send(&mut self, qp: QpId, wr: &SendWr<'_>) -> VerbsResult<()> {
        let qp = self.qp(qp)?;
        let mut sges = ffi_sges(wr.sges)?;
        let mut req = ffi::ibv_send_wr {
            wr_id: wr.wr_id,
            next: ptr::null_mut(),
            sg_list: sges.as_mut_ptr(),
            num_sge: wr.sges.len() as c_int,
            send_flags: if wr.signaled {
                ffi::ibv_send_flags::IBV_SEND_SIGNALED.0
            } else {
                0
            },
            ..Default::default()
        };
        let (opcode, imm, remote) = match wr.op {
            SendOp::Send => (ffi::ibv_wr_opcode::IBV_WR_SEND, None, None),
            SendOp::SendWithImm(imm) => (ffi::ibv_wr_opcode::IBV_WR_SEND_WITH_IMM, Some(imm), None),
            SendOp::RdmaWrite { remote_addr, rkey } => (
                ffi::ibv_wr_opcode::IBV_WR_RDMA_WRITE,
                None,
                Some((remote_addr, rkey)),
            ),
            SendOp::RdmaWriteWithImm {
                remote_addr,
                rkey,
                imm,
            } => (
                ffi::ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM,
                Some(imm),
                Some((remote_addr, rkey)),
            ),
        };
        req.opcode = opcode;
        if let Some(imm) = imm {
            // The wire carries immediate data big-endian.
            req.__bindgen_anon_1.imm_data = imm.to_be();
        }
        if let Some((remote_addr, rkey)) = remote {
            req.wr.rdma = ffi::ibv_send_wr__bindgen_ty_2__bindgen_ty_1 { remote_addr, rkey };
        }
        let mut bad = ptr::null_mut();
        // SAFETY: as in `post_recv`: `qp` and its context are live, the
        // request is valid for the call, and the memory it names is
        // registered (`reg_mr`'s contract).
        let rc = unsafe {
            let ctx = (*qp).context;
            match (*ctx).ops.post_send {
                Some(post) => post(qp, &mut req, &mut bad),
                None => libc::ENOSYS,
            }
        };
        if rc != 0 {
            return Err(VerbsError::call("ibv_post_send", rc));
        }
        Ok(())
    }

    fn poll_cq(
        &mut self,
        cq: CqId,
        out: &mut Vec<WorkCompletion>,
        max: usize,
    ) -> VerbsResult<usize> {
        let cq = self.cq(cq)?.cq;
        let want = max.min(self.wcs.len());
        // SAFETY: `cq` and its context are live; `ibv_poll_cq` is an inline
        // wrapper that calls this function pointer; `wcs` holds `want`
        // writable entries.
        let n = unsafe {
            let ctx = (*cq).context;
            match (*ctx).ops.poll_cq {
                Some(poll) => poll(cq, want as c_int, self.wcs.as_mut_ptr()),
                None => -libc::ENOSYS,
            }
        };
        if n < 0 {
            return Err(VerbsError::Call {
                call: "ibv_poll_cq",
                source: io::Error::from_raw_os_error(libc::EIO),
            });
        }
        let n = n as usize;
        for wc in &self.wcs[..n] {
            let (status, vendor_err) = match wc.error() {
                None => (WcStatus::Success, 0),
                Some((code, vendor)) => (wc_status(code), vendor),
            };
            out.push(WorkCompletion {
                wr_id: wc.wr_id(),
                status,
                opcode: wc_opcode(wc.opcode()),
                byte_len: wc.len() as u32,
                imm: wc.imm_data().map(u32::from_be),
                qp_num: wc.qp_num,
                vendor_err,
            });
        }
        Ok(n)
    }

    fn req_notify_cq(&mut self, cq: CqId, solicited_only: bool) -> VerbsResult<()> {
        let cq = self.cq(cq)?.cq;
        // SAFETY: `cq` and its context are live; `ibv_req_notify_cq` is an
        // inline wrapper that calls this function pointer.
        let rc = unsafe {
            let ctx = (*cq).context;
            match (*ctx).ops.req_notify_cq {
                Some(notify) => notify(cq, c_int::from(solicited_only)),
                None => libc::ENOSYS,
            }
        };
        if rc != 0 {
            return Err(VerbsError::call("ibv_req_notify_cq", rc));
        }
        Ok(())
    }

    fn get_cq_events(&mut self, cq: CqId) -> VerbsResult<u32> {
        let IbvCq { cq, channel } = *self.cq(cq)?;
        if channel.is_null() {
            return Ok(0);
        }
        let mut events: u32 = 0;
        loop {
            let mut ev_cq = ptr::null_mut();
            let mut ev_ctx = ptr::null_mut();
            // SAFETY: `channel` is live and non-blocking; the out-pointers
            // are valid for the call.
            let rc = unsafe { ffi::ibv_get_cq_event(channel, &mut ev_cq, &mut ev_ctx) };
            if rc != 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::WouldBlock {
                    break;
                }
                if events > 0 {
                    // SAFETY: `cq` is live; these events were taken from it.
                    unsafe { ffi::ibv_ack_cq_events(cq, events) };
                }
                return Err(VerbsError::Call {
                    call: "ibv_get_cq_event",
                    source: err,
                });
            }
            events += 1;
        }
        if events > 0 {
            // SAFETY: `cq` is live; acknowledges exactly the events taken.
            unsafe { ffi::ibv_ack_cq_events(cq, events) };
        }
        Ok(events)
    }
}

impl Drop for IbvDevice {
    fn drop(&mut self) {
        // Dependents first: queue pairs, regions, queues (then their
        // channels), protection domains, the context.
        for qp in self.qps.drain() {
            // SAFETY: live, destroyed once.
            let rc = unsafe { ffi::ibv_destroy_qp(qp) };
            if rc != 0 {
                tracing::warn!("ibv_destroy_qp: errno {rc}");
            }
        }
        for mr in self.mrs.drain() {
            // SAFETY: live, deregistered once.
            let rc = unsafe { ffi::ibv_dereg_mr(mr) };
            if rc != 0 {
                tracing::warn!("ibv_dereg_mr: errno {rc}");
            }
        }
        for IbvCq { cq, channel } in self.cqs.drain() {
            // SAFETY: live, destroyed once; every event taken was acked.
            let rc = unsafe { ffi::ibv_destroy_cq(cq) };
            if rc != 0 {
                tracing::warn!("ibv_destroy_cq: errno {rc}");
            }
            if !channel.is_null() {
                // SAFETY: live, its only CQ destroyed above.
                unsafe { ffi::ibv_destroy_comp_channel(channel) };
            }
        }
        for pd in self.pds.drain() {
            // SAFETY: live, deallocated once, nothing left in it.
            let rc = unsafe { ffi::ibv_dealloc_pd(pd) };
            if rc != 0 {
                tracing::warn!("ibv_dealloc_pd: errno {rc}");
            }
        }
        // SAFETY: open, closed once, every object of it destroyed above.
        unsafe { ffi::ibv_close_device(self.ctx) };
    }
}

impl std::fmt::Debug for IbvDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IbvDevice")
            .field("name", &self.name)
            .field("port", &self.port)
            .finish()
    }
}
