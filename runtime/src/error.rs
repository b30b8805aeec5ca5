//! Start-up errors of a runtime: [`BuildError`] and, for a failure on one
//! core, [`StartError`].
//!
//! A leaf module (it imports nothing of the crate), so that every layer that
//! can fail at start-up (ring set-up in the driver, pinning in the loop,
//! placement in the builder) reports through the same type. Each message says
//! what went wrong and how to fix it; tests and callers match the variants.

use std::io;

/// Why [`RuntimeBuilder::build`](crate::RuntimeBuilder::build) failed.
///
/// Converts into an [`io::Error`] (of a fitting kind, carrying this error) for
/// callers that propagate I/O errors with `?`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The placement asked for no core at all.
    #[error("a runtime needs at least one core")]
    NoCores,
    /// A listed CPU does not exist or the process may not run on it.
    #[error(
        "CPU {cpu} does not exist or is outside this process's CPU set (available: {available:?})"
    )]
    UnknownCpu {
        /// The CPU asked for.
        cpu: usize,
        /// The CPUs this process may run on.
        available: Vec<usize>,
    },
    /// A CPU is listed twice.
    #[error("CPU {cpu} is listed twice; one core per CPU")]
    DuplicateCpu {
        /// The CPU listed twice.
        cpu: usize,
    },
    /// More pinned cores were asked for than the process has CPUs.
    #[error("asked for {asked} pinned cores but only {} CPUs are available ({available:?})", available.len())]
    TooFewCpus {
        /// Cores asked for.
        asked: usize,
        /// The CPUs this process may run on.
        available: Vec<usize>,
    },
    /// The control eventfd of a core could not be created.
    #[error("core {core}: creating its control eventfd failed: {error}")]
    EventFd {
        /// Index of the core.
        core: usize,
        /// The error of `eventfd(2)`.
        error: io::Error,
    },
    /// The stall detector's watchdog thread could not be started.
    #[error("starting the stall detector's watchdog thread failed: {error}")]
    Watchdog {
        /// The error of starting the thread.
        error: io::Error,
    },
    /// The metrics endpoint could not listen on its address.
    #[error("metrics endpoint: listening on {addr} failed: {error}")]
    Metrics {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The error of `bind(2)` or `listen(2)`.
        error: io::Error,
    },
    /// The thread of a core could not be started.
    #[error("core {core}: starting its thread failed: {error}")]
    ThreadSpawn {
        /// Index of the core.
        core: usize,
        /// The error of `std::thread::Builder::spawn`.
        error: io::Error,
    },
    /// A core failed to set itself up (the other cores were stopped).
    #[error("core {core} ({}): {error}", cpu_label(.cpu))]
    Core {
        /// Index of the core.
        core: usize,
        /// The CPU it was to be pinned to (`None`: unpinned).
        cpu: Option<usize>,
        /// What failed.
        error: StartError,
    },
}

/// Why one core failed to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The thread could not be pinned to its CPU.
    #[error("could not pin a thread to CPU {cpu} (sched_setaffinity refused)")]
    Pin {
        /// The CPU.
        cpu: usize,
    },
    /// The kernel has no io_uring (ENOSYS).
    #[error("io_uring is not available: this kernel was built without it (ENOSYS)")]
    IoUringUnsupported,
    /// `io_uring_setup` was refused (EPERM/EACCES).
    #[error(
        "io_uring is not permitted for this process ({error}); kernel.io_uring_disabled = \
         {sysctl} (0 allows everyone, 1 only the io_uring_group, 2 nobody), or a seccomp \
         filter (a container runtime's default profile) blocks io_uring_setup"
    )]
    IoUringRefused {
        /// The error of `io_uring_setup`.
        error: io::Error,
        /// The value of `/proc/sys/kernel/io_uring_disabled` (0 when absent).
        sysctl: u32,
    },
    /// `io_uring_setup` ran out of (locked) memory (ENOMEM).
    #[error(
        "io_uring_setup with {entries} entries failed for lack of memory ({error}); the \
         locked-memory limit (ulimit -l) is {} — raise it or ask for fewer ring entries",
        memlock_label(.memlock)
    )]
    RingMemory {
        /// Submission queue entries asked for.
        entries: u32,
        /// The RLIMIT_MEMLOCK soft limit in bytes (`None`: unlimited).
        memlock: Option<u64>,
        /// The error of `io_uring_setup`.
        error: io::Error,
    },
    /// `io_uring_setup` refused the entry count (EINVAL).
    #[error(
        "io_uring_setup refused {entries} entries{} ({error}); entries must be a power of two \
         between 1 and 32768",
        if *.sqpoll { " with SQPOLL" } else { "" }
    )]
    RingEntries {
        /// Submission queue entries asked for.
        entries: u32,
        /// Whether SQPOLL was asked for.
        sqpoll: bool,
        /// The error of `io_uring_setup`.
        error: io::Error,
    },
    /// `io_uring_setup` failed otherwise.
    #[error("io_uring_setup failed: {error}")]
    RingSetup {
        /// The error of `io_uring_setup`.
        error: io::Error,
    },
    /// The opcode probe failed (kernel older than 5.6).
    #[error("io_uring probe failed ({error}); ringwire needs Linux 6.1 or newer")]
    Probe {
        /// The error of `IORING_REGISTER_PROBE`.
        error: io::Error,
    },
    /// An opcode the runtime relies on is missing.
    #[error("this kernel's io_uring lacks IORING_OP_{opcode}; ringwire needs Linux 6.1 or newer")]
    MissingOpcode {
        /// The opcode's name without the `IORING_OP_` prefix.
        opcode: &'static str,
    },
    /// The receive buffer count is not a power of two in 1..=32768.
    #[error("receive buffer count must be a power of two in 1..=32768, got {count}")]
    RecvBufferCount {
        /// The count asked for.
        count: u16,
    },
    /// A buffer size of zero.
    #[error("{what} buffer size must not be zero")]
    ZeroBufferSize {
        /// `"receive"` or `"send"`.
        what: &'static str,
    },
    /// The buffer memory could not be allocated.
    #[error("allocating {bytes} bytes of {what} buffers failed")]
    BufferMemory {
        /// `"receive"`, `"receive ring"` or `"send"`.
        what: &'static str,
        /// Bytes asked for.
        bytes: usize,
    },
    /// Registering the provided buffer ring failed.
    #[error(
        "registering a provided buffer ring of {count} x {size} bytes failed ({error}); the \
         locked-memory limit (ulimit -l) is {}",
        memlock_label(.memlock)
    )]
    RegisterRecvBuffers {
        /// Buffers.
        count: u16,
        /// Bytes per buffer.
        size: u32,
        /// The RLIMIT_MEMLOCK soft limit in bytes (`None`: unlimited).
        memlock: Option<u64>,
        /// The error of `IORING_REGISTER_PBUF_RING`.
        error: io::Error,
    },
    /// Registering the send pool failed (usually the locked-memory limit).
    #[error(
        "registering {count} send buffers of {size} bytes ({} KiB pinned) failed ({error}); the \
         locked-memory limit (ulimit -l) is {} — raise it, grant CAP_IPC_LOCK, or shrink the \
         send pool",
        usize::from(*.count) * *.size as usize / 1024,
        memlock_label(.memlock)
    )]
    RegisterSendBuffers {
        /// Buffers.
        count: u16,
        /// Bytes per buffer.
        size: u32,
        /// The RLIMIT_MEMLOCK soft limit in bytes (`None`: unlimited).
        memlock: Option<u64>,
        /// The error of `IORING_REGISTER_BUFFERS`.
        error: io::Error,
    },
    /// The core's thread ended before reporting.
    #[error("core thread died during start-up")]
    ThreadDied,
}

fn cpu_label(cpu: &Option<usize>) -> String {
    match cpu {
        Some(cpu) => format!("CPU {cpu}"),
        None => "unpinned".to_string(),
    }
}

fn memlock_label(memlock: &Option<u64>) -> String {
    match memlock {
        None => "unlimited".to_string(),
        Some(bytes) => format!("{} KiB", bytes / 1024),
    }
}

impl StartError {
    /// The [`io::ErrorKind`] that fits this failure.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            StartError::Pin { .. } => io::ErrorKind::PermissionDenied,
            StartError::IoUringUnsupported | StartError::MissingOpcode { .. } => {
                io::ErrorKind::Unsupported
            }
            StartError::IoUringRefused { error, .. }
            | StartError::RingMemory { error, .. }
            | StartError::RingEntries { error, .. }
            | StartError::RingSetup { error }
            | StartError::Probe { error }
            | StartError::RegisterRecvBuffers { error, .. }
            | StartError::RegisterSendBuffers { error, .. } => error.kind(),
            StartError::RecvBufferCount { .. } | StartError::ZeroBufferSize { .. } => {
                io::ErrorKind::InvalidInput
            }
            StartError::BufferMemory { .. } => io::ErrorKind::OutOfMemory,
            StartError::ThreadDied => io::ErrorKind::Other,
        }
    }
}

impl BuildError {
    /// The [`io::ErrorKind`] that fits this failure.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            BuildError::NoCores
            | BuildError::UnknownCpu { .. }
            | BuildError::DuplicateCpu { .. }
            | BuildError::TooFewCpus { .. } => io::ErrorKind::InvalidInput,
            BuildError::EventFd { error, .. }
            | BuildError::ThreadSpawn { error, .. }
            | BuildError::Metrics { error, .. }
            | BuildError::Watchdog { error } => error.kind(),
            BuildError::Core { error, .. } => error.kind(),
        }
    }
}

impl From<BuildError> for io::Error {
    fn from(e: BuildError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_explanations() {
        let e = BuildError::Core {
            core: 1,
            cpu: Some(3),
            error: StartError::RegisterSendBuffers {
                count: 64,
                size: 65536,
                memlock: Some(65536),
                error: io::Error::from_raw_os_error(libc::ENOMEM),
            },
        };
        let text = e.to_string();
        assert!(
            text.starts_with(
                "core 1 (CPU 3): registering 64 send buffers of 65536 bytes (4096 KiB pinned)"
            ),
            "{text}"
        );
        assert!(
            text.contains("locked-memory limit (ulimit -l) is 64 KiB"),
            "{text}"
        );
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::OutOfMemory);

        let e = StartError::RingEntries {
            entries: 3,
            sqpoll: true,
            error: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert!(e
            .to_string()
            .starts_with("io_uring_setup refused 3 entries with SQPOLL ("));
        let e = BuildError::Core {
            core: 0,
            cpu: None,
            error: StartError::ThreadDied,
        };
        assert_eq!(
            e.to_string(),
            "core 0 (unpinned): core thread died during start-up"
        );
    }
}
