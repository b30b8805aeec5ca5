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

/// Gives `--cores` of a peer server's [`CoreArgs`] the help that fits it.
///
/// The peer servers resolve a count themselves
/// ([`CoreSpec::resolve`](crate::cores::CoreSpec::resolve)): `N` cores on the
/// first `N` CPUs of the process's affinity mask, and `default` cores when
/// neither `--cpus` nor `--cores` is given, where ringwire's nodes order CPUs
/// by physical core and default to all of them.
pub fn server_cores_help(cmd: clap::Command, default: usize) -> clap::Command {
    let cores = if default == 1 { "core" } else { "cores" };
    cmd.mut_arg("cores", |arg| {
        arg.help(format!(
            "Run N cores, pinned to the first N CPUs this process may use (see \
             `taskset`). A CPU list here (`0,1`, or `3,` for CPU 3 alone) is read as \
             --cpus. Without --cpus or --cores: {default} {cores}."
        ))
    })
}

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
