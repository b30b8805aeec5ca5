//! The stall detector: reports a task that holds its core too long.
//!
//! A core must come back to its loop often: a task that spins, blocks in a
//! system call or runs a long computation holds up every other task and
//! connection of its core. With a threshold set
//! ([`RuntimeBuilder::stall_threshold`](crate::RuntimeBuilder::stall_threshold)),
//! each runtime runs one watchdog thread that looks at every core a few
//! times per threshold; when a core has been running the same task poll (or
//! the same stretch of loop work) for at least the threshold, it counts a
//! stall (`stalls_total`), captures a backtrace of the core thread (a signal
//! whose handler walks the stack, [`capture`]), and, when the poll ends,
//! logs which task it was (its name if spawned with
//! [`spawn_local_named`](crate::executor::spawn_local_named), its id and
//! spawn location), for how long, the CPU time the core thread used
//! meanwhile (little CPU means it blocked or was preempted), and the
//! backtrace.
//!
//! What it costs the core: no clock reads and no system calls. The core
//! stores one word ([`Beat`], a *marker*: a sequence number and the task
//! key) before each task poll and at each loop turn, stores 0 before it
//! parks, and loads one word after each poll (has the watchdog flagged this
//! poll?). The watchdog wakes every quarter threshold, at most every 250 ms.
//!
//! In order: [`Watch::new`] per core at build time -> the core thread calls
//! [`Watch::attach`] and hands the [`Beat`] to its executor ->
//! [`watchdog::Watchdog::start`] with every core's watch -> the executor
//! calls [`Beat::poll`] / [`Beat::polled`] around each task poll and the
//! loop calls [`Beat::turn`] at each turn and after the polls,
//! [`Beat::idle`] before it blocks and when it ends -> snapshots read
//! [`Beat::stalls`].

pub(crate) mod capture;
pub(crate) mod watchdog;

use std::cell::Cell;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The low half of a marker while the loop runs outside any task poll.
const LOOP: u32 = u32::MAX;

/// What a core shares with the watchdog.
pub(crate) struct Watch {
    core: usize,
    /// What the core runs: `(sequence << 32) | task key` (or [`LOOP`]); 0
    /// while it is parked, not started or stopped.
    marker: AtomicU64,
    /// The marker the watchdog found running too long (0: none).
    flagged: AtomicU64,
    /// Stalls counted on this core.
    stalls: AtomicU64,
    /// The core thread's kernel id and CPU clock, once it runs.
    thread: Mutex<Option<CoreThread>>,
    /// Written by the core when a flagged poll ends.
    ended: Mutex<Option<Ended>>,
}

/// The identity of a core thread.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CoreThread {
    pub(crate) tid: libc::pid_t,
    pub(crate) cpu_clock: Option<libc::clockid_t>,
}

/// A task, as a stall report names it.
#[derive(Clone, Debug)]
pub(crate) struct TaskInfo {
    pub(crate) key: u32,
    pub(crate) name: Option<String>,
    pub(crate) spawned_at: Option<&'static Location<'static>>,
}

impl std::fmt::Display for TaskInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(name) = &self.name {
            write!(f, "{name:?} ")?;
        }
        write!(f, "(task {}", self.key)?;
        if let Some(at) = self.spawned_at {
            write!(f, ", spawned at {at}")?;
        }
        write!(f, ")")
    }
}

/// The end of a flagged poll, as the core saw it.
pub(crate) struct Ended {
    marker: u64,
    at: Instant,
    task: Option<TaskInfo>,
}

impl Watch {
    /// The watch of core `core`.
    pub(crate) fn new(core: usize) -> Arc<Watch> {
        Arc::new(Watch {
            core,
            marker: AtomicU64::new(0),
            flagged: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            thread: Mutex::new(None),
            ended: Mutex::new(None),
        })
    }

    /// Called on the core thread when it starts: records its identity and
    /// returns the core's side.
    pub(crate) fn attach(self: &Arc<Watch>) -> Beat {
        *lock(&self.thread) = Some(CoreThread {
            tid: crate::sys::gettid(),
            cpu_clock: crate::sys::thread_cpu_clock(),
        });
        Beat {
            watch: self.clone(),
            seq: Cell::new(0),
        }
    }

    /// Stalls counted on this core so far.
    pub(crate) fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    fn core_thread(&self) -> Option<CoreThread> {
        *lock(&self.thread)
    }

    /// The report of the end of flagged poll `marker`, if the core wrote it.
    fn take_ended(&self, marker: u64) -> Option<Ended> {
        let mut ended = lock(&self.ended);
        match ended.take() {
            Some(e) if e.marker == marker => Some(e),
            _ => None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The core's side of its [`Watch`]: owned by the core thread.
pub(crate) struct Beat {
    watch: Arc<Watch>,
    seq: Cell<u32>,
}

impl Beat {
    /// Stalls counted on this core so far.
    pub(crate) fn stalls(&self) -> u64 {
        self.watch.stalls()
    }

    #[inline]
    fn mark(&self, low: u32) -> u64 {
        // Never 0 (which means idle): the sequence skips it when it wraps.
        let seq = self.seq.get().wrapping_add(1).max(1);
        self.seq.set(seq);
        let marker = (u64::from(seq) << 32) | u64::from(low);
        // Release: a report written before (`ended`, under its lock) is
        // visible to a watchdog that sees this marker.
        self.watch.marker.store(marker, Ordering::Release);
        marker
    }

    /// A loop turn starts.
    #[inline]
    pub(crate) fn turn(&self) {
        self.mark(LOOP);
    }

    /// Task `key` is about to be polled; returns the poll's marker.
    #[inline]
    pub(crate) fn poll(&self, key: u32) -> u64 {
        self.mark(key)
    }

    /// Whether the watchdog flagged the poll that just ended (then call
    /// [`Beat::report_end`]).
    #[inline]
    pub(crate) fn polled(&self, marker: u64) -> bool {
        self.watch.flagged.load(Ordering::Relaxed) == marker
    }

    /// Tells the watchdog when flagged poll `marker` ended and which task it
    /// was.
    #[cold]
    #[inline(never)]
    pub(crate) fn report_end(&self, marker: u64, task: Option<TaskInfo>) {
        let at = Instant::now();
        *lock(&self.watch.ended) = Some(Ended { marker, at, task });
    }

    /// The core is about to block, or has stopped: nothing of it runs.
    #[inline]
    pub(crate) fn idle(&self) {
        self.watch.marker.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_unique_and_never_zero() {
        let w = Watch::new(0);
        let b = w.attach();
        b.seq.set(u32::MAX - 1);
        let a = b.poll(0);
        let c = b.poll(0);
        let d = b.poll(0);
        assert!(a != 0 && c != 0 && d != 0);
        assert!(a != c && c != d && a != d);
        b.idle();
        assert_eq!(w.marker.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn only_the_flagged_poll_reports() {
        let w = Watch::new(0);
        let b = w.attach();
        let first = b.poll(3);
        w.flagged.store(first, Ordering::Relaxed);
        assert!(b.polled(first));
        b.report_end(first, None);
        let second = b.poll(3);
        assert!(!b.polled(second));
        assert!(w.take_ended(second).is_none());
        b.report_end(first, None);
        assert!(w.take_ended(first).is_some());
        assert!(w.take_ended(first).is_none());
    }

    #[test]
    fn tasks_are_named_by_name_key_and_place() {
        let t = TaskInfo {
            key: 4,
            name: Some("spinner".into()),
            spawned_at: Some(Location::caller()),
        };
        let s = t.to_string();
        assert!(s.starts_with("\"spinner\" (task 4, spawned at "), "{s}");
        assert!(s.contains("stall/mod.rs"), "{s}");
    }
}
