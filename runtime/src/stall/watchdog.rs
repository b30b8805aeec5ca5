//! The watchdog thread: looks at every core's marker a few times per
//! threshold, flags a marker that stays for at least the threshold, counts
//! the stall, captures the core thread's stack, and logs the report: once
//! when flagged (the core may never come back) and once when the flagged
//! poll ends (with the task and how long it held the core).

use std::fmt::Write;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::capture::{self, Frames};
use super::Watch;

/// The longest the watchdog sleeps between looks.
const MAX_PERIOD: Duration = Duration::from_millis(250);

/// A running watchdog; stops (and joins its thread) when dropped.
pub(crate) struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What the watchdog knows of one core.
struct Seen {
    watch: Arc<Watch>,
    marker: u64,
    since: Instant,
    /// CPU time of the core thread when the marker was first seen.
    cpu_since: Option<u64>,
    flagged: Option<Flagged>,
}

/// A stretch found running too long.
struct Flagged {
    marker: u64,
    /// When the watchdog first saw the marker (the stretch began earlier,
    /// by less than a period).
    since: Instant,
    frames: Option<Frames>,
}

impl Watchdog {
    /// Starts the thread that watches `watches` with `threshold`.
    pub(crate) fn start(watches: Vec<Arc<Watch>>, threshold: Duration) -> io::Result<Watchdog> {
        let period = (threshold / 4).clamp(Duration::from_millis(1), MAX_PERIOD);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ringwire-watchdog".to_string())
            .spawn(move || {
                let now = Instant::now();
                let mut seen: Vec<Seen> = watches
                    .into_iter()
                    .map(|watch| Seen {
                        watch,
                        marker: 0,
                        since: now,
                        cpu_since: None,
                        flagged: None,
                    })
                    .collect();
                loop {
                    match stopped.recv_timeout(period) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let now = Instant::now();
                    for s in &mut seen {
                        look(s, now, threshold);
                    }
                }
            })?;
        Ok(Watchdog {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One look at one core.
fn look(s: &mut Seen, now: Instant, threshold: Duration) {
    let marker = s.watch.marker.load(Ordering::Acquire);
    if let Some(f) = s.flagged.take_if(|f| f.marker != marker) {
        ended(&s.watch, f, now, threshold);
    }
    if marker != s.marker {
        s.marker = marker;
        s.since = now;
        s.cpu_since = if marker == 0 {
            None
        } else {
            cpu_time(&s.watch)
        };
        return;
    }
    if marker == 0 || s.flagged.is_some() || now.duration_since(s.since) < threshold {
        return;
    }
    // Flag first, so that the core reports the end of this very poll.
    s.watch.flagged.store(marker, Ordering::Relaxed);
    s.watch.stalls.fetch_add(1, Ordering::Relaxed);
    let running = now.duration_since(s.since);
    // Little CPU means the core thread blocked (a system call, a page
    // fault, a lock) or was preempted, rather than computed.
    let cpu_share = match (s.cpu_since, cpu_time(&s.watch)) {
        (Some(a), Some(b)) if running > Duration::ZERO => format!(
            "{:.0}%",
            100.0 * b.saturating_sub(a) as f64 / running.as_nanos() as f64
        ),
        _ => "unknown".to_string(),
    };
    let frames = s.watch.core_thread().and_then(|t| capture::capture(t.tid));
    let what = if marker as u32 == super::LOOP {
        "loop work (not a task poll)".to_string()
    } else {
        format!("task {}", marker as u32)
    };
    tracing::warn!(
        core = s.watch.core,
        running_ms = running.as_millis() as u64,
        "stall: core {} has been running {what} for at least {running:?} (threshold {threshold:?}; CPU use of the core thread meanwhile: {cpu_share}); stack:\n{}",
        s.watch.core,
        render(frames.as_ref()),
    );
    s.flagged = Some(Flagged {
        marker,
        since: s.since,
        frames,
    });
}

/// The flagged stretch `f` is over (the watchdog noticed at `now`).
fn ended(watch: &Watch, f: Flagged, now: Instant, threshold: Duration) {
    let report = watch.take_ended(f.marker);
    let end = report.as_ref().map_or(now, |e| e.at);
    let held = end.saturating_duration_since(f.since);
    let who = match report.as_ref().and_then(|e| e.task.as_ref()) {
        Some(task) => format!("task {task}"),
        None if f.marker as u32 == super::LOOP => "loop work (not a task poll)".to_string(),
        None => format!("task {}", f.marker as u32),
    };
    tracing::warn!(
        core = watch.core,
        held_ms = held.as_millis() as u64,
        "stall: {who} held core {} for {held:?} (threshold {threshold:?}); stack when flagged:\n{}",
        watch.core,
        render(f.frames.as_ref()),
    );
}

/// CPU time of the core thread so far, in nanoseconds.
fn cpu_time(watch: &Watch) -> Option<u64> {
    watch
        .core_thread()
        .and_then(|t| t.cpu_clock)
        .and_then(crate::sys::clock_ns)
}

/// Resolves and formats captured frames, innermost first.
fn render(frames: Option<&Frames>) -> String {
    let Some(frames) = frames else {
        return "  (no stack captured)".to_string();
    };
    let mut out = String::new();
    let mut in_loop = false;
    for (i, ip) in frames.ips[frames.start..].iter().enumerate() {
        let mut named = false;
        backtrace::resolve(*ip as *mut std::ffi::c_void, |sym| {
            named = true;
            let name = sym
                .name()
                .map_or_else(|| "<unknown>".to_string(), |n| n.to_string());
            in_loop |= name.contains("ringwire_runtime::executor::Executor::run_ready");
            let _ = write!(out, "  {i:>3}: {name}");
            if let (Some(file), Some(line)) = (sym.filename(), sym.lineno()) {
                let _ = write!(out, " at {}:{line}", file.display());
            }
            out.push('\n');
        });
        if !named {
            let _ = writeln!(out, "  {i:>3}: {ip:#x}");
        }
        if in_loop {
            // What lies below is the core's loop and thread start.
            out.push_str("  ... (the core's event loop)\n");
            break;
        }
    }
    out
}
