//! Ring set-up: the flags probed from most to least capable, and the opcodes
//! the runtime refuses to start without.

use io_uring::{opcode, IoUring};

use crate::error::StartError;

/// Ring set-up options, derived from the runtime builder.
#[derive(Clone, Debug)]
pub(crate) struct RingConfig {
    pub(crate) entries: u32,
    pub(crate) sqpoll_idle_ms: Option<u32>,
    pub(crate) buf_count: u16,
    pub(crate) buf_size: u32,
    pub(crate) send_count: u16,
    pub(crate) send_size: u32,
}

/// Which optional ring features a core ended up with
/// ([`Runtime::ring_features`](crate::Runtime::ring_features)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RingFeatures {
    /// `IORING_SETUP_SINGLE_ISSUER` is on.
    pub single_issuer: bool,
    /// `IORING_SETUP_COOP_TASKRUN` is on.
    pub coop_taskrun: bool,
    /// `IORING_SETUP_DEFER_TASKRUN` is on.
    pub defer_taskrun: bool,
    /// `IORING_SETUP_SQPOLL` is on.
    pub sqpoll: bool,
    /// `IORING_OP_SEND_ZC` is supported.
    pub send_zc: bool,
}

/// Builds the ring with the best flag set the kernel accepts and checks the
/// opcodes.
pub(super) fn build_ring(cfg: &RingConfig) -> Result<(IoUring, RingFeatures), StartError> {
    type Attempt = (RingFeatures, fn(&mut io_uring::Builder));
    let mut attempts: Vec<Attempt> = Vec::new();
    if cfg.sqpoll_idle_ms.is_none() {
        attempts.push((
            RingFeatures {
                single_issuer: true,
                coop_taskrun: true,
                defer_taskrun: true,
                ..Default::default()
            },
            |b| {
                b.setup_single_issuer()
                    .setup_coop_taskrun()
                    .setup_defer_taskrun();
            },
        ));
        attempts.push((
            RingFeatures {
                coop_taskrun: true,
                ..Default::default()
            },
            |b| {
                b.setup_coop_taskrun();
            },
        ));
        attempts.push((RingFeatures::default(), |_| {}));
    } else {
        attempts.push((
            RingFeatures {
                single_issuer: true,
                sqpoll: true,
                ..Default::default()
            },
            |b| {
                b.setup_single_issuer();
            },
        ));
        attempts.push((
            RingFeatures {
                sqpoll: true,
                ..Default::default()
            },
            |_| {},
        ));
    }
    let mut last_err = None;
    for (mut features, apply) in attempts {
        let mut builder = IoUring::builder();
        apply(&mut builder);
        builder.setup_cqsize(cfg.entries.saturating_mul(4).max(cfg.entries));
        if let Some(idle) = cfg.sqpoll_idle_ms {
            builder.setup_sqpoll(idle);
        }
        match builder.build(cfg.entries) {
            Ok(ring) => {
                features.send_zc = check_opcodes(&ring)?;
                return Ok((ring, features));
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last_err = Some(e),
            Err(e) => return Err(explain_setup_error(e, cfg)),
        }
    }
    let e = last_err.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL));
    Err(explain_setup_error(e, cfg))
}

/// Turns an `io_uring_setup` failure into an error that says what to do.
fn explain_setup_error(error: std::io::Error, cfg: &RingConfig) -> StartError {
    match error.raw_os_error() {
        Some(libc::ENOSYS) => StartError::IoUringUnsupported,
        Some(libc::EPERM) | Some(libc::EACCES) => StartError::IoUringRefused {
            error,
            sysctl: crate::sys::io_uring_disabled_sysctl(),
        },
        Some(libc::ENOMEM) => StartError::RingMemory {
            entries: cfg.entries,
            memlock: crate::sys::memlock_limit(),
            error,
        },
        Some(libc::EINVAL) => StartError::RingEntries {
            entries: cfg.entries,
            sqpoll: cfg.sqpoll_idle_ms.is_some(),
            error,
        },
        _ => StartError::RingSetup { error },
    }
}

/// Refuses to start on a kernel that lacks an opcode the runtime relies on;
/// returns whether the optional `SEND_ZC` is there.
fn check_opcodes(ring: &IoUring) -> Result<bool, StartError> {
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|error| StartError::Probe { error })?;
    let needed: [(u8, &'static str); 12] = [
        (opcode::WriteFixed::CODE, "WRITE_FIXED"),
        (opcode::Read::CODE, "READ"),
        (opcode::Send::CODE, "SEND"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::Recv::CODE, "RECV"),
        (opcode::Accept::CODE, "ACCEPT"),
        (opcode::Connect::CODE, "CONNECT"),
        (opcode::Timeout::CODE, "TIMEOUT"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::Shutdown::CODE, "SHUTDOWN"),
        (opcode::Close::CODE, "CLOSE"),
        (opcode::MsgRingData::CODE, "MSG_RING"),
    ];
    for (code, name) in needed {
        if !probe.is_supported(code) {
            return Err(StartError::MissingOpcode { opcode: name });
        }
    }
    Ok(probe.is_supported(opcode::SendZc::CODE))
}
