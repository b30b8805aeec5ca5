//! Capturing the stack of a core thread, from a signal handler on it.
//!
//! The watchdog thread cannot unwind another thread's stack, so it asks the
//! thread to do it: it arms the process-wide [`Slot`] for that thread's id,
//! sends it a real-time signal ([`signal`]) with `tgkill`, and waits
//! (bounded) for the handler to fill the slot.
//!
//! The handler is async-signal-safe: it allocates nothing, takes no lock and
//! touches only the slot's atomics. It claims the slot with one
//! compare-and-swap (`armed for my thread id` -> `writing`), so a signal that
//! arrives late, twice, or on a thread the slot is not armed for writes
//! nothing; it stores the return addresses of the frames (no symbol lookup:
//! the watchdog resolves them later, off the core) and publishes them with a
//! release store (`done`). The watchdog gives up after a while by swapping
//! `armed` back to `idle`; if the handler has claimed the slot meanwhile, it
//! waits for `done` instead (the handler is short and bounded), so the slot
//! is never read while written nor re-armed under a writer. This protocol is
//! model-checked by loom (`loom_tests` below).
//!
//! Walking the stack inside the handler uses `backtrace::trace_unsynchronized`,
//! which on Linux is libgcc's `_Unwind_Backtrace`. That is safe to call
//! there on this platform because:
//! - it finds each frame's unwind table through glibc's `_dl_find_object`
//!   (glibc 2.35 and later; libgcc 12 and later use it), which glibc
//!   documents as async-signal-safe and which takes no lock; without it
//!   libgcc falls back to `dl_iterate_phdr`, which takes the loader lock,
//!   so a signal landing inside `dlopen` could deadlock: stacks are captured
//!   only where the check [`unwinder_is_signal_safe`] passes;
//! - its one-time initialisation (a `pthread_once`) is done outside any
//!   handler, by [`install`], before the first signal is ever sent;
//! - the rest is reading the stack and the unwind tables, with no allocation
//!   (frames registered at run time with `__register_frame`, which would take
//!   libgcc's object lock, are not used by Rust programs);
//! - `backtrace`'s own lock is not taken by the unsynchronized variant.
//!
//! The handler saves and restores `errno`, since it may interrupt code
//! between a failing call and its reading of `errno`.

#[cfg(not(loom))]
use std::sync::OnceLock;
#[cfg(not(loom))]
use std::time::{Duration, Instant};

use crate::loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Most frames kept per capture (the handler's own frames included).
#[cfg(not(loom))]
pub(crate) const MAX_FRAMES: usize = 96;
#[cfg(loom)]
pub(crate) const MAX_FRAMES: usize = 2;

/// How long the watchdog waits for the handler before giving up.
#[cfg(not(loom))]
const CAPTURE_TIMEOUT: Duration = Duration::from_millis(200);

const IDLE: u64 = 0;
const WRITING: u64 = 1;
const DONE: u64 = 2;
/// `ARMED | tid`: armed for the thread with kernel id `tid`.
const ARMED: u64 = 1 << 32;

/// Return addresses of a captured stack, innermost first.
#[derive(Clone, Debug, Default)]
pub(crate) struct Frames {
    /// Every frame walked, the signal handler's own included.
    pub(crate) ips: Vec<usize>,
    /// Index of the first frame below the signal handler (0 when the
    /// handler's frame was not recognised).
    pub(crate) start: usize,
}

/// Where one capture is written: by the handler on the core thread, read by
/// the watchdog. One per process; captures are serialised by [`CAPTURING`].
pub(crate) struct Slot {
    state: AtomicU64,
    len: AtomicUsize,
    start: AtomicUsize,
    ips: [AtomicUsize; MAX_FRAMES],
}

impl Slot {
    #[cfg(not(loom))]
    const fn new() -> Slot {
        Slot {
            state: AtomicU64::new(IDLE),
            len: AtomicUsize::new(0),
            start: AtomicUsize::new(0),
            ips: [const { AtomicUsize::new(0) }; MAX_FRAMES],
        }
    }

    #[cfg(loom)]
    fn new() -> Slot {
        Slot {
            state: AtomicU64::new(IDLE),
            len: AtomicUsize::new(0),
            start: AtomicUsize::new(0),
            ips: std::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }

    /// Arms the (idle) slot for thread `tid`. Watchdog side, under
    /// [`CAPTURING`].
    fn arm(&self, tid: u32) {
        self.state.store(ARMED | u64::from(tid), Ordering::Release);
    }

    /// Handler side: if the slot is armed for `tid`, claims it, lets `walk`
    /// report frames (`push(ip, is_handler_frame)` returns whether to go on)
    /// and publishes them. Returns whether it wrote. Async-signal-safe when
    /// `walk` is.
    fn fill(&self, tid: u32, walk: impl FnOnce(&mut dyn FnMut(usize, bool) -> bool)) -> bool {
        if self
            .state
            .compare_exchange(
                ARMED | u64::from(tid),
                WRITING,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return false;
        }
        let mut n = 0;
        let mut start = 0;
        walk(&mut |ip, is_handler| {
            if n >= MAX_FRAMES {
                return false;
            }
            self.ips[n].store(ip, Ordering::Relaxed);
            n += 1;
            if is_handler {
                start = n;
            }
            n < MAX_FRAMES
        });
        self.len.store(n, Ordering::Relaxed);
        self.start.store(start, Ordering::Relaxed);
        self.state.store(DONE, Ordering::Release);
        true
    }

    /// Watchdog side, after [`arm`](Self::arm): waits for the handler,
    /// asking `give_up` between looks whether to stop waiting (it may sleep).
    /// Leaves the slot idle. `None` when the handler never claimed it.
    fn take(&self, mut give_up: impl FnMut() -> bool) -> Option<Frames> {
        loop {
            match self.state.load(Ordering::Acquire) {
                DONE => break,
                WRITING => {}
                _ => {
                    if give_up() {
                        // Disarm, unless the handler claimed the slot in
                        // the meantime: then wait for it to finish.
                        let armed = self.state.load(Ordering::Relaxed);
                        if armed >= ARMED
                            && self
                                .state
                                .compare_exchange(armed, IDLE, Ordering::Relaxed, Ordering::Relaxed)
                                .is_ok()
                        {
                            return None;
                        }
                        continue;
                    }
                }
            }
            crate::loom::spin_loop();
        }
        let len = self.len.load(Ordering::Relaxed).min(MAX_FRAMES);
        let frames = Frames {
            ips: self.ips[..len]
                .iter()
                .map(|ip| ip.load(Ordering::Relaxed))
                .collect(),
            start: self.start.load(Ordering::Relaxed).min(len),
        };
        self.state.store(IDLE, Ordering::Release);
        Some(frames)
    }
}

#[cfg(not(loom))]
static SLOT: Slot = Slot::new();

/// Serialises captures (one slot per process; several runtimes may have
/// watchdogs).
#[cfg(not(loom))]
static CAPTURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The signal used to capture a core thread's stack: `SIGRTMIN + 3`.
#[cfg(not(loom))]
pub(crate) fn signal() -> libc::c_int {
    crate::sys::realtime_signal(3)
}

/// Whether this process's unwinder finds unwind tables without taking a lock
/// (glibc's `_dl_find_object`, glibc 2.35 and later), which is what makes
/// walking the stack in a signal handler safe.
#[cfg(not(loom))]
fn unwinder_is_signal_safe() -> bool {
    // SAFETY: gnu_get_libc_version returns a pointer to a static,
    // NUL-terminated string.
    let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
    let mut parts = version.to_str().unwrap_or("").split('.');
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (2, 35)
}

/// Installs the capture signal's handler once per process. Returns whether
/// stacks can be captured: `false` when the process handles that signal
/// itself, when installing failed, or when the unwinder is not safe to call
/// from a signal handler (logged once).
#[cfg(not(loom))]
pub(crate) fn install() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        if !unwinder_is_signal_safe() {
            tracing::warn!(
                "stall reports come without backtraces: this glibc has no _dl_find_object (2.35+), so unwinding in a signal handler could deadlock"
            );
            return false;
        }
        // Run the unwinder's one-time initialisation here, outside any
        // signal handler.
        backtrace::trace(|_| false);
        match crate::sys::install_signal_handler(signal(), on_signal) {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(
                    signal = signal(),
                    "stall reports come without backtraces: the process already handles SIGRTMIN+3"
                );
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "stall reports come without backtraces: installing the signal handler failed");
                false
            }
        }
    })
}

/// Captures the stack of thread `tid` of this process (a core thread):
/// `None` when stacks cannot be captured, the thread is gone, or its handler
/// did not answer in time (it may be blocked in the kernel with the signal
/// pending, which cannot happen while it runs user code).
#[cfg(not(loom))]
pub(crate) fn capture(tid: libc::pid_t) -> Option<Frames> {
    if !install() || tid <= 0 {
        return None;
    }
    let _one_at_a_time = CAPTURING.lock().unwrap_or_else(|p| p.into_inner());
    SLOT.arm(tid as u32);
    if crate::sys::tgkill(tid, signal()).is_err() {
        // No signal was sent: nobody can claim the slot.
        return SLOT.take(|| true);
    }
    let deadline = Instant::now() + CAPTURE_TIMEOUT;
    SLOT.take(|| {
        if Instant::now() >= deadline {
            return true;
        }
        std::thread::sleep(Duration::from_micros(50));
        false
    })
}

/// Under loom (which models the slot only) no stack is ever captured.
#[cfg(loom)]
pub(crate) fn capture(_tid: libc::pid_t) -> Option<Frames> {
    None
}

/// The signal handler: fills the slot if it is armed for this thread.
#[cfg(not(loom))]
extern "C" fn on_signal(_sig: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: __errno_location returns this thread's errno, valid for the
    // thread's lifetime.
    let errno = unsafe { *libc::__errno_location() };
    let tid = crate::sys::gettid() as u32;
    let handler = on_signal as *const () as usize;
    SLOT.fill(tid, |push| {
        // SAFETY: trace_unsynchronized must not run concurrently with other
        // unsynchronized traces or symbol resolutions on the same thread;
        // this thread was interrupted in user code that does not unwind
        // (a core's task), and the watchdog resolves symbols on its own
        // thread, with the synchronized API. Why the unwinder is safe to
        // call in a signal handler at all is argued in the module docs
        // (checked by `install`).
        unsafe {
            backtrace::trace_unsynchronized(|frame| {
                push(
                    frame.ip() as usize,
                    frame.symbol_address() as usize == handler,
                )
            });
        }
    });
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_slot_armed_for_another_thread_is_not_written() {
        let slot = Slot::new();
        slot.arm(7);
        assert!(!slot.fill(8, |push| {
            push(1, false);
        }));
        assert!(slot.take(|| true).is_none());
        // Idle again: a late signal writes nothing.
        assert!(!slot.fill(7, |push| {
            push(1, false);
        }));
    }

    #[test]
    fn frames_are_kept_with_the_first_frame_below_the_handler() {
        let slot = Slot::new();
        slot.arm(7);
        assert!(slot.fill(7, |push| {
            for ip in [10, 11, 12, 13] {
                if !push(ip, ip == 11) {
                    break;
                }
            }
        }));
        let f = slot.take(|| false).expect("filled");
        assert_eq!(f.ips, vec![10, 11, 12, 13]);
        assert_eq!(f.start, 2);
    }

    #[test]
    fn a_deep_stack_is_cut_at_the_slot_size() {
        let slot = Slot::new();
        slot.arm(1);
        slot.fill(1, |push| {
            let mut ip = 0;
            while push(ip, false) {
                ip += 1;
            }
        });
        assert_eq!(slot.take(|| false).expect("filled").ips.len(), MAX_FRAMES);
    }

    #[inline(never)]
    fn spin_until(flag: &std::sync::atomic::AtomicBool) {
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn the_stack_of_a_spinning_thread_is_captured() {
        use std::sync::atomic::{AtomicBool, AtomicI32};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicI32::new(0));
        let t = {
            let (stop, tid) = (stop.clone(), tid.clone());
            std::thread::spawn(move || {
                tid.store(crate::sys::gettid(), std::sync::atomic::Ordering::Release);
                spin_until(&stop);
            })
        };
        while tid.load(std::sync::atomic::Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        let frames = capture(tid.load(std::sync::atomic::Ordering::Acquire));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        t.join().unwrap();
        let frames = frames.expect("the spinning thread answered");
        assert!(frames.start > 0, "the handler's frame was recognised");
        let mut names = Vec::new();
        for ip in &frames.ips[frames.start..] {
            backtrace::resolve(*ip as *mut std::ffi::c_void, |s| {
                if let Some(n) = s.name() {
                    names.push(n.to_string());
                }
            });
        }
        assert!(
            names.iter().any(|n| n.contains("spin_until")),
            "frames below the handler: {names:?}"
        );
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// The watchdog arms, waits a little and may give up; the handler may
    /// run at any point. Whatever the interleaving, frames handed out are
    /// complete, the slot ends idle, and a handler that runs after the
    /// watchdog gave up writes nothing.
    #[test]
    fn capture_handshake() {
        loom::model(|| {
            let slot = Arc::new(Slot::new());
            slot.arm(5);
            let handler = {
                let slot = slot.clone();
                loom::thread::spawn(move || {
                    slot.fill(5, |push| {
                        if push(100, true) {
                            push(200, false);
                        }
                    })
                })
            };
            let mut looks = 0;
            let got = slot.take(|| {
                looks += 1;
                looks > 1
            });
            let wrote = handler.join().unwrap();
            match got {
                Some(f) => {
                    assert!(wrote);
                    assert_eq!(f.ips, vec![100, 200]);
                    assert_eq!(f.start, 1);
                }
                None => assert!(!wrote, "a write after giving up"),
            }
            assert_eq!(slot.state.load(Ordering::Relaxed), IDLE);
        });
    }
}
