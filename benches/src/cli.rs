//! Command-line pieces shared by the load generator, the peer servers and
//! the benchmarks.
//!
//! Every binary parses its arguments with clap (derive), for the same
//! `--help`, `--version` and exit code 2 on bad arguments as ringwire's
//! example nodes. The peer servers share the nodes' `--cpus` / `--cores`
//! group ([`CoreArgs`], from `ringwire_examples::cli`), so a CPU list is
//! written the same way everywhere. This module adds the value parsers the
//! benchmarks need.

use std::time::Duration;

pub use ringwire_examples::cli::{
    parse_cores_value, parse_cpu_list, parse_wait_batch, CoreArgs, Cores, CpuList, WaitBatch,
};

/// Parses a duration given in seconds, with an optional `s` or `ms` suffix
/// (`5`, `2.5s`, `500ms`); a clap value parser.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let bad = || "expected a duration like 5, 2.5s or 500ms".to_string();
    let (num, scale) = if let Some(ms) = value.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = value.strip_suffix('s') {
        (s, 1.0)
    } else {
        (value, 1.0)
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 {
        return Err(bad());
    }
    Duration::try_from_secs_f64(n * scale).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["-1", "x", "", "s", "1e400", "NaN"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
