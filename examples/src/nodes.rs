//! Pieces shared by the messaging example nodes (`pingpong`, `pubsub`,
//! `chat`): the clock their timestamps come from, latency histograms and
//! their report, endpoint arguments, and the stop flag set by Ctrl-C or
//! SIGTERM.
//!
//! ```
//! use ringwire_examples::nodes::{parse_endpoint, Latency};
//!
//! let ep = parse_endpoint("127.0.0.1:7000").unwrap();
//! assert_eq!(ep.to_string(), "tcp://127.0.0.1:7000");
//! let mut lat = Latency::new();
//! for ns in [1_000, 2_000, 3_000] {
//!     lat.record(ns);
//! }
//! assert_eq!(lat.count(), 3);
//! assert!(lat.report_line("rtt").starts_with("rtt: n=3 "));
//! ```

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use ringwire::runtime::signal::{Termination, TerminationSignals};
use ringwire::transports::Endpoint;

/// Nanoseconds on `CLOCK_MONOTONIC`: one clock for every process of a host
/// (it is not stepped by NTP or by hand, unlike `CLOCK_REALTIME`), so a
/// timestamp taken by one process and read by another on the same host
/// gives a one-way latency. Meaningless between hosts.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always
    // available on Linux, so the call only writes `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// A latency histogram in nanoseconds (HDR, 3 significant digits, 1 ns to
/// 100 s; larger values are clamped to the top).
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Latency {
        Latency {
            // Constant, valid bounds: this cannot fail.
            hist: Histogram::new_with_bounds(1, 100_000_000_000, 3)
                .expect("valid histogram bounds"),
        }
    }

    /// Records one latency.
    pub fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns.max(1));
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at quantile `q` (0.0..=1.0), in nanoseconds.
    pub fn quantile(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }

    /// `label: n=.. p50=..us p90=.. p99=.. p99.9=.. max=..` (microseconds,
    /// two decimals), or `label: n=0` when nothing was recorded.
    pub fn report_line(&self, label: &str) -> String {
        if self.hist.is_empty() {
            return format!("{label}: n=0");
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        format!(
            "{label}: n={} p50={:.2}us p90={:.2}us p99={:.2}us p99.9={:.2}us max={:.2}us",
            self.hist.len(),
            us(self.quantile(0.5)),
            us(self.quantile(0.9)),
            us(self.quantile(0.99)),
            us(self.quantile(0.999)),
            us(self.hist.max()),
        )
    }
}

/// Parses an endpoint argument: `scheme://...`, or `HOST:PORT` alone, read
/// as `tcp://`.
pub fn parse_endpoint(v: &str) -> Result<Endpoint, String> {
    let text = if v.contains("://") {
        v.to_string()
    } else {
        format!("tcp://{v}")
    };
    text.parse().map_err(|e| format!("{e}"))
}

/// Parses a duration: a number with a unit `ns`, `us`, `ms`, `s` or `m`
/// (`500ms`, `10s`), or plain seconds (`10`).
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{v:?}: expected a number with a unit, like 500ms or 10s"))?;
    let secs = match unit {
        "ns" => n / 1e9,
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "" | "s" => n,
        "m" => n * 60.0,
        _ => {
            return Err(format!(
                "{v:?}: unit {unit:?} is not one of ns, us, ms, s, m"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{v:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C or SIGTERM arrived (see [`watch_signals`]).
pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// For nodes that end on their own (a client, a publisher): takes the
/// blocked termination signals on a thread of their own; the first sets
/// [`stopping`], which the node's loops check, so that it finishes and
/// reports what it has. If the node has not exited `grace` later, the
/// process exits with status 130 (a loop blocked on a silent peer).
///
/// Call [`TerminationSignals::block`] before building the runtime.
pub fn watch_signals(signals: TerminationSignals, grace: Duration) -> io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Ok(sig) = signals.wait() else { return };
            tracing::info!(?sig, "stopping");
            STOP.store(true, Ordering::Relaxed);
            std::thread::sleep(grace);
            eprintln!("not finished {grace:?} after the signal; exiting");
            std::process::exit(match sig {
                Termination::Interrupt => 130,
                Termination::Terminate => 143,
            });
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7us").unwrap(), Duration::from_micros(7));
        for bad in ["", "ms", "10h", "-1s", "1e999"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn latency_quantiles() {
        let mut l = Latency::new();
        for i in 1..=1000u64 {
            l.record(i * 1000);
        }
        assert_eq!(l.count(), 1000);
        let p50 = l.quantile(0.5);
        assert!((499_000..=501_000).contains(&p50), "{p50}");
        assert!(l.report_line("x").contains("max=1000."));
        assert_eq!(Latency::new().report_line("y"), "y: n=0");
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("unix:///tmp/a.sock").unwrap().to_string(),
            "unix:///tmp/a.sock"
        );
        assert!(parse_endpoint("tcp://127.0.0.1:99999").is_err());
    }
}
