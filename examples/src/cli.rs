//! Command-line pieces shared by the example nodes.
//!
//! The nodes parse their arguments with clap (derive); the argument groups
//! every node has live here, so that they read and fail the same way:
//!
//! - [`CoreArgs`]: `--cpus LIST` or `--cores N`, turned into a
//!   [`Placement`] by [`CoreArgs::placement`];
//! - [`IdleArgs`]: `--idle park|spin[:MICROS]|poll`;
//! - [`parse_tcp_listen`]: the value parser of a node's `--listen`, which
//!   takes an endpoint (`tcp://127.0.0.1:6380`, or plain `HOST:PORT`) and
//!   gives a [`TcpListen`] ready to bind. Each node declares its own
//!   `--listen` with its own default port.
//!
//! ```
//! use clap::Parser;
//! use ringwire::runtime::{IdleStrategy, Placement};
//! use ringwire_examples::cli::{parse_tcp_listen, CoreArgs, IdleArgs, TcpListen};
//!
//! #[derive(Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     cores: CoreArgs,
//!     #[command(flatten)]
//!     idle: IdleArgs,
//!     #[arg(long, default_value = "tcp://127.0.0.1:7000", value_parser = parse_tcp_listen)]
//!     listen: TcpListen,
//! }
//!
//! let args = Args::try_parse_from(["node", "--cpus", "0-2,5", "--idle", "spin:20"]).unwrap();
//! assert_eq!(args.cores.placement(), Placement::Cpus(vec![0, 1, 2, 5]));
//! assert_eq!(args.idle.idle, IdleStrategy::Spin(std::time::Duration::from_micros(20)));
//! assert_eq!(args.listen.addr.port(), 7000);
//! assert!(Args::try_parse_from(["node", "--cpus", "0", "--cores", "2"]).is_err());
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use ringwire::runtime::net::TcpListenOptions;
use ringwire::runtime::{IdleStrategy, Placement};
use ringwire::transports::{Endpoint, Scheme};

/// `--cpus LIST` / `--cores N`: where a node's cores run.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreArgs {
    /// Run one core on each listed CPU, in this order (taskset syntax:
    /// `0`, `0,2`, `0-3`).
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list)]
    pub cpus: Option<CpuList>,
    /// Run N cores, pinned to the first CPUs this process may use (see
    /// `taskset`). A CPU list here (`0,1`, or `3,` for CPU 3 alone) is read
    /// as --cpus. Without --cpus or --cores: one core per CPU this process
    /// may use.
    #[arg(long, value_name = "N", value_parser = parse_cores_value, conflicts_with = "cpus")]
    pub cores: Option<Cores>,
}

impl CoreArgs {
    /// The runtime placement these arguments ask for.
    pub fn placement(&self) -> Placement {
        match (&self.cpus, &self.cores) {
            (Some(CpuList(cpus)), _) | (None, Some(Cores::List(CpuList(cpus)))) => {
                Placement::Cpus(cpus.clone())
            }
            (None, Some(Cores::Count(n))) => Placement::Count(*n),
            (None, None) => Placement::AllOnline,
        }
    }
}

/// A list of CPU ids, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// The value of `--cores`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cores {
    /// That many cores.
    Count(usize),
    /// Explicit CPUs (the older spelling of `--cpus`).
    List(CpuList),
}

/// Parses a CPU list in taskset syntax: ids and inclusive ranges separated
/// by commas (`0`, `0,2`, `0-3,8`). Empty items are ignored (`3,` is CPU
/// 3); an id listed twice is refused.
pub fn parse_cpu_list(v: &str) -> Result<CpuList, String> {
    let mut cpus: Vec<usize> = Vec::new();
    for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|e| format!("{s:?} is not a CPU id: {e}"))
        };
        let range = match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("range {item} runs backwards"));
                }
                a..=b
            }
            None => {
                let a = num(item)?;
                a..=a
            }
        };
        for cpu in range {
            if cpus.contains(&cpu) {
                return Err(format!("CPU {cpu} is listed twice"));
            }
            cpus.push(cpu);
        }
    }
    if cpus.is_empty() {
        return Err("no CPU listed".to_string());
    }
    Ok(CpuList(cpus))
}

/// Parses `--cores`: a count of at least 1, or a CPU list (anything with a
/// `,` or `-`).
pub fn parse_cores_value(v: &str) -> Result<Cores, String> {
    if v.contains(',') || v.contains('-') {
        return parse_cpu_list(v).map(Cores::List);
    }
    let n: usize = v
        .trim()
        .parse()
        .map_err(|e| format!("{e} (expected a count, or a CPU list like 0,1 or 3,)"))?;
    if n == 0 {
        return Err("at least 1 core (for CPU 0 alone: --cpus 0)".to_string());
    }
    Ok(Cores::Count(n))
}

/// `--idle`: what a core does when it has nothing to run.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct IdleArgs {
    /// What an idle core does: park (block in the kernel until work comes),
    /// spin[:MICROS] (poll that long, default 50, then park) or poll (never
    /// block: lowest latency, one busy CPU per core).
    #[arg(long, value_name = "MODE", default_value = "park", value_parser = parse_idle)]
    pub idle: IdleStrategy,
}

/// The value of `--wait-batch`: how many completions a parked core waits
/// for, and for how long at most (`None`: it wakes at the first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitBatch(pub Option<(u32, Duration)>);

/// Parses `--wait-batch N:MICROS` or `--wait-batch off`.
pub fn parse_wait_batch(v: &str) -> Result<WaitBatch, String> {
    if v == "off" {
        return Ok(WaitBatch(None));
    }
    let (n, us) = v
        .split_once(':')
        .ok_or_else(|| "expected N:MICROS or off".to_string())?;
    let n: u32 = n.parse().map_err(|e| format!("{n:?}: {e}"))?;
    let us: u64 = us.parse().map_err(|e| format!("{us:?}: {e}"))?;
    if n == 0 {
        return Err("N must be at least 1 (or say off)".to_string());
    }
    Ok(WaitBatch(Some((n, Duration::from_micros(us)))))
}

/// A TCP listening address parsed from an endpoint: what to bind and how.
#[derive(Clone, Debug)]
pub struct TcpListen {
    /// The endpoint as given (canonical form when printed).
    pub endpoint: Endpoint,
    /// The address to bind (a host name resolved to its first address).
    pub addr: SocketAddr,
    /// Socket options from the endpoint (`nodelay`, `backlog`,
    /// `reuseport`), the runtime's defaults otherwise.
    pub options: TcpListenOptions,
}

/// Parses a `--listen` value for a TCP listener: an endpoint
/// `tcp://HOST:PORT[?options]`, or `HOST:PORT` alone, read as `tcp://`.
/// Other schemes, and options this listener cannot apply, are refused.
pub fn parse_tcp_listen(v: &str) -> Result<TcpListen, String> {
    let text = if v.contains("://") {
        v.to_string()
    } else {
        format!("tcp://{v}")
    };
    let endpoint: Endpoint = text.parse().map_err(|e| format!("{e}"))?;
    if endpoint.scheme() != Scheme::Tcp {
        return Err(format!(
            "{endpoint}: this listener speaks tcp:// only (e.g. tcp://127.0.0.1:6380)"
        ));
    }
    let opts = endpoint.options();
    let unsupported = [
        ("keepalive", opts.keepalive().is_some()),
        ("linger", opts.linger().is_some()),
        ("sndbuf", opts.sndbuf().is_some()),
        ("rcvbuf", opts.rcvbuf().is_some()),
    ];
    if let Some((name, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(format!(
            "{endpoint}: option {name:?} is not applied by this listener; it takes nodelay, backlog, reuseport"
        ));
    }
    let mut options = TcpListenOptions::default();
    if let Some(on) = opts.nodelay() {
        options.nodelay = on;
    }
    if let Some(backlog) = opts.backlog() {
        options.backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    }
    if let Some(on) = opts.reuseport() {
        options.reuse_port = on;
    }
    let addr = endpoint
        .socket_addrs()
        .map_err(|e| format!("{endpoint}: {e}"))?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{endpoint}: no address"))?;
    Ok(TcpListen {
        endpoint,
        addr,
        options,
    })
}

/// Iterates over `--flag value` pairs.
pub struct Args {
    inner: std::vec::IntoIter<String>,
}

impl Args {
    /// The process arguments, without the program name.
    pub fn from_env() -> Args {
        Self::from_vec(std::env::args().skip(1).collect())
    }

    /// Arguments from a list (for tests).
    pub fn from_vec(v: Vec<String>) -> Args {
        Args {
            inner: v.into_iter(),
        }
    }

    /// The next flag, `--name` or `--name=value` (the value is then kept for
    /// [`value`](Self::value)).
    pub fn next_flag(&mut self) -> Result<Option<String>, String> {
        match self.inner.next() {
            None => Ok(None),
            Some(a) if a.starts_with('-') => {
                if let Some((flag, value)) = a.split_once('=') {
                    let rest: Vec<String> = std::iter::once(value.to_string())
                        .chain(self.inner.by_ref())
                        .collect();
                    self.inner = rest.into_iter();
                    Ok(Some(flag.to_string()))
                } else {
                    Ok(Some(a))
                }
            }
            Some(a) => Err(format!("unexpected argument {a:?}")),
        }
    }

    /// The value of `flag`.
    pub fn value(&mut self, flag: &str) -> Result<String, String> {
        self.inner
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))
    }
}

/// `--cores 0,2,3` or `--cores 0-3` (a CPU list, ranges allowed; a single
/// CPU is written with a trailing comma, `--cores 3,`) or `--cores 2` (that
/// many cores, pinned to the first CPUs this process may use).
pub fn parse_cores(v: &str) -> Result<Placement, String> {
    if v.contains(',') || v.contains('-') {
        let mut cpus = Vec::new();
        for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let num = |s: &str| {
                s.trim()
                    .parse::<usize>()
                    .map_err(|e| format!("--cores {v}: {s:?}: {e}"))
            };
            match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(format!("--cores {v}: range {item} runs backwards"));
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(num(item)?),
            }
        }
        if cpus.is_empty() {
            return Err(format!("--cores {v}: no CPU listed"));
        }
        return Ok(Placement::Cpus(cpus));
    }
    let n: usize = v
        .parse()
        .map_err(|e| format!("--cores {v}: {e} (expected a count, or a list like 0,1 or 3,)"))?;
    if n == 0 {
        return Err("--cores must be at least 1 (for CPU 0 alone write --cores 0,)".to_string());
    }
    Ok(Placement::Count(n))
}

/// `--idle park|spin|spin:MICROS|poll`.
pub fn parse_idle(v: &str) -> Result<IdleStrategy, String> {
    match v {
        "park" => Ok(IdleStrategy::Park),
        "poll" => Ok(IdleStrategy::Poll),
        "spin" => Ok(IdleStrategy::Spin(Duration::from_micros(50))),
        s if s.starts_with("spin:") => {
            let us: u64 = s[5..]
                .parse()
                .map_err(|e| format!("--idle {s}: {e} (expected spin:MICROSECONDS)"))?;
            Ok(IdleStrategy::Spin(Duration::from_micros(us)))
        }
        other => Err(format!(
            "--idle {other}: expected park, spin[:MICROS] or poll"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_list_and_count() {
        assert_eq!(parse_cores("0,1").unwrap(), Placement::Cpus(vec![0, 1]));
        assert_eq!(parse_cores("3,").unwrap(), Placement::Cpus(vec![3]));
        assert_eq!(
            parse_cores("0-2,5").unwrap(),
            Placement::Cpus(vec![0, 1, 2, 5])
        );
        assert_eq!(parse_cores("2").unwrap(), Placement::Count(2));
        assert!(parse_cores("0").is_err());
        assert!(parse_cores("a,1").is_err());
        assert!(parse_cores("3-1").is_err());
        assert!(parse_cores(",").is_err());
    }

    #[test]
    fn idle_forms() {
        assert_eq!(parse_idle("park").unwrap(), IdleStrategy::Park);
        assert_eq!(
            parse_idle("spin:20").unwrap(),
            IdleStrategy::Spin(Duration::from_micros(20))
        );
        assert!(parse_idle("nap").is_err());
    }

    #[test]
    fn flags_with_equals() {
        let mut a = Args::from_vec(vec!["--wire=raw".into(), "--stats".into()]);
        assert_eq!(a.next_flag().unwrap().as_deref(), Some("--wire"));
        assert_eq!(a.value("--wire").unwrap(), "raw");
        assert_eq!(a.next_flag().unwrap().as_deref(), Some("--stats"));
        assert_eq!(a.next_flag().unwrap(), None);
    }
}
