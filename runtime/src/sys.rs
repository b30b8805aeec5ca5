//! Raw system calls, kept in one place.
//!
//! Every direct `libc` call of the runtime lives here, each turning the C
//! convention (`-1` and `errno`) into [`io::Error`] through [`cvt`].
//! Descriptors cross this boundary as [`OwnedFd`] (closing one is dropping
//! it): no function here closes a raw number it does not own.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Turns a C return value into an [`io::Result`]: `-1` becomes the last OS error.
pub(crate) fn cvt(res: libc::c_int) -> io::Result<libc::c_int> {
    if res == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(res)
    }
}

/// Creates a non-blocking, close-on-exec eventfd with a zero counter.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; flags are valid constants.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd counter, waking whoever reads it.
pub(crate) fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: `one` is a live 8-byte value for the duration of the call. A
    // failure (EAGAIN when the counter is saturated) still leaves the reader
    // woken, so the result is deliberately ignored.
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// A close-on-exec duplicate of `fd` (which the caller keeps open for the
/// duration of the call).
pub(crate) fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes no pointers; an invalid `fd` only makes
    // the call fail with EBADF.
    let dup = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `dup` was just returned by fcntl and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Current CLOCK_MONOTONIC time, the clock io_uring absolute timeouts use.
pub(crate) fn monotonic_now() -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts
}

/// The RLIMIT_MEMLOCK soft limit in bytes (`None` when unlimited).
pub(crate) fn memlock_limit() -> Option<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } != 0 {
        return None;
    }
    (rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur)
}

/// Reads `/proc/sys/kernel/io_uring_disabled` (0 when absent).
pub(crate) fn io_uring_disabled_sysctl() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Blocks SIGINT and SIGTERM in the calling thread (threads it spawns
/// afterwards inherit the mask), so that [`wait_for_signal`] can take them.
pub(crate) fn block_termination_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; zeroed then initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t for all three calls.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    // SAFETY: `set` is initialised; the old mask is not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(set)
}

/// Waits for one of the signals in `set` (which must be blocked) and returns it.
pub(crate) fn wait_for_signal(set: &libc::sigset_t) -> io::Result<libc::c_int> {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` and `sig` are valid for the call.
        let rc = unsafe { libc::sigwait(set, &mut sig) };
        match rc {
            0 => return Ok(sig),
            libc::EINTR => continue,
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// The index of the network interface called `name` (`if_nametoindex`).
pub(crate) fn interface_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} contains a NUL byte"),
        )
    })?;
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("interface {name:?}: {e}")));
    }
    Ok(index)
}

/// Sets `IP_MULTICAST_IF` by interface index (`struct ip_mreqn`), which
/// `socket2` offers only by address.
pub(crate) fn set_multicast_if_index_v4(fd: RawFd, index: u32) -> io::Result<()> {
    let mreqn = libc::ip_mreqn {
        imr_multiaddr: libc::in_addr { s_addr: 0 },
        imr_address: libc::in_addr { s_addr: 0 },
        imr_ifindex: index as libc::c_int,
    };
    // SAFETY: `mreqn` is a valid `ip_mreqn` that lives for the call, and the
    // length passed is its size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            (&mreqn as *const libc::ip_mreqn).cast(),
            std::mem::size_of::<libc::ip_mreqn>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The calling thread's kernel id (`gettid`).
pub(crate) fn gettid() -> libc::pid_t {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

/// Sends `sig` to thread `tid` of this process (`tgkill`).
// Used only to capture stacks, which loom builds leave out.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn tgkill(tid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: tgkill takes no pointers; a thread that no longer exists makes
    // it fail with ESRCH. `getpid` cannot fail.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, sig) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The CPU-time clock of the calling thread, readable from any thread of
/// the process while this one lives (`pthread_getcpuclockid`).
pub(crate) fn thread_cpu_clock() -> Option<libc::clockid_t> {
    let mut id: libc::clockid_t = 0;
    // SAFETY: `id` is a valid, writable clockid_t; `pthread_self` is the
    // calling thread, which is alive.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
    (rc == 0).then_some(id)
}

/// Reads `clock` in nanoseconds (`None` when it no longer exists, e.g. the
/// CPU clock of a thread that ended).
pub(crate) fn clock_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; an invalid clock id only
    // makes the call fail with EINVAL.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Installs `handler` for `sig` (with `SA_SIGINFO | SA_RESTART`), unless the
/// process already handles that signal: returns `Ok(false)` then and leaves
/// the existing disposition alone.
// Used only to capture stacks, which loom builds leave out.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn install_signal_handler(
    sig: libc::c_int,
    handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
) -> io::Result<bool> {
    // SAFETY: sigaction is plain data; zeroed is a valid value to query into.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries; `old` is valid and writable.
    cvt(unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) })?;
    if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
        return Ok(false);
    }
    // SAFETY: as above; every field is then set explicitly.
    let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
    new.sa_sigaction = handler as usize;
    new.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `new.sa_mask` is a valid sigset_t to empty.
    unsafe { libc::sigemptyset(&mut new.sa_mask) };
    // SAFETY: `new` is fully initialised and names a handler of the
    // signature SA_SIGINFO expects; the old action is not requested.
    cvt(unsafe { libc::sigaction(sig, &new, std::ptr::null_mut()) })?;
    Ok(true)
}

/// The real-time signal `SIGRTMIN + n` (glibc reserves the first few
/// real-time signals for itself; `SIGRTMIN()` is the first one it leaves).
// Used only to capture stacks, which loom builds leave out.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn realtime_signal(n: libc::c_int) -> libc::c_int {
    libc::SIGRTMIN() + n
}
