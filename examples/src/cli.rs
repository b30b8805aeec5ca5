//! Command-line pieces shared by the example nodes.
//!
//! The nodes parse their arguments with clap (derive); the argument groups
//! every node has live here, so that they read and fail the same way:
//!
//! - [`CoreArgs`]: `--cpus LIST` or `--cores N`, turned into a
//!   [`Placement`] by [`CoreArgs::placement`];
//! - [`IdleArgs`]: `--idle park|spin[:MICROS]|poll`;
//! - [`MetricsArgs`]: `--metrics ADDR`, the runtime's HTTP metrics endpoint,
//!   and `--stall-ms MS`, its stall detector
//!   (a node adds it with `#[command(flatten)] metrics: MetricsArgs` and
//!   `args.metrics.apply(builder)`, and may announce it with
//!   [`MetricsArgs::announce`]);
//! - [`parse_wait_batch`]: the value parser of `--wait-batch N:MICROS|off`;
//! - [`parse_tcp_listen`]: the value parser of a node's `--listen`, which
//!   takes an endpoint (`tcp://127.0.0.1:6380`, or plain `HOST:PORT`) and
//!   gives a [`TcpListen`] ready to bind. Each node declares its own
//!   `--listen` with its own default port.
//!
//! ```
//! use clap::Parser;
//! use ringwire::runtime::{IdleStrategy, Placement, Runtime, RuntimeBuilder};
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
use ringwire::runtime::{IdleStrategy, Placement, Runtime, RuntimeBuilder};
use ringwire::transports::{Endpoint, Scheme};

/// `--cpus LIST` / `--cores N`: where a node's cores run.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreArgs {
    /// Run one core on each listed CPU, in this order (taskset syntax:
    /// `0`, `0,2`, `0-3`).
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list)]
    pub cpus: Option<CpuList>,
    /// Run N cores, pinned to CPUs this process may use (see `taskset`), one
    /// per physical core before any hyperthread sibling. A CPU list here
    /// (`0,1`, or `3,` for CPU 3 alone) is read as --cpus. Without --cpus or
    /// --cores: one core per CPU this process may use.
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
    /// spin or spin:MICROS (poll that long, default 50, then park) or poll
    /// (never block: lowest latency, one busy CPU per core). The default,
    /// spin:50, answers a ping-pong in about a third of parking's time and
    /// parks an idle node within 50 us.
    #[arg(long, value_name = "MODE", default_value = "spin:50", value_parser = parse_idle)]
    pub idle: IdleStrategy,
}

/// `--metrics ADDR`: serve the runtime's metrics over HTTP.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsArgs {
    /// Serve metrics over HTTP on ADDR (e.g. 127.0.0.1:9100), from a task
    /// on core 0: GET /metrics (Prometheus text format), GET / (a per-core
    /// summary). Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Report (log a warning with the task and the core's stack) and count
    /// (stalls_total) every task that holds its core for MS milliseconds or
    /// more. Off by default.
    #[arg(long, value_name = "MS")]
    pub stall_ms: Option<u64>,
}

impl MetricsArgs {
    /// Asks `builder` for the endpoint if `--metrics` was given, and for
    /// the stall detector if `--stall-ms` was.
    pub fn apply(&self, builder: RuntimeBuilder) -> RuntimeBuilder {
        builder
            .metrics(self.metrics)
            .stall_threshold(self.stall_ms.map(Duration::from_millis))
    }

    /// Prints where the endpoint listens (to stderr), if it runs.
    pub fn announce(&self, rt: &Runtime) {
        if let Some(addr) = rt.metrics_addr() {
            eprintln!("metrics on http://{addr}/metrics");
        }
    }
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

/// Parses `--idle park|spin|spin:MICROS|poll` (see [`IdleStrategy`]'s
/// `FromStr`).
pub fn parse_idle(v: &str) -> Result<IdleStrategy, String> {
    v.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Node {
        #[command(flatten)]
        cores: CoreArgs,
        #[command(flatten)]
        idle: IdleArgs,
        #[arg(long, default_value = "127.0.0.1:7000", value_parser = parse_tcp_listen)]
        listen: TcpListen,
        #[arg(long, default_value = "16:50", value_parser = parse_wait_batch)]
        wait_batch: WaitBatch,
    }

    fn node(args: &[&str]) -> Result<Node, clap::Error> {
        Node::try_parse_from(std::iter::once("node").chain(args.iter().copied()))
    }

    #[test]
    fn cpus_and_cores() {
        let placement = |args: &[&str]| node(args).map(|n| n.cores.placement());
        assert_eq!(placement(&[]).unwrap(), Placement::AllOnline);
        assert_eq!(
            placement(&["--cpus", "0"]).unwrap(),
            Placement::Cpus(vec![0])
        );
        assert_eq!(
            placement(&["--cpus", "0-2,5"]).unwrap(),
            Placement::Cpus(vec![0, 1, 2, 5])
        );
        assert_eq!(
            placement(&["--cpus=3,1"]).unwrap(),
            Placement::Cpus(vec![3, 1])
        );
        assert_eq!(placement(&["--cores", "2"]).unwrap(), Placement::Count(2));
        // A list after --cores is the older spelling of --cpus.
        assert_eq!(
            placement(&["--cores", "0,1"]).unwrap(),
            Placement::Cpus(vec![0, 1])
        );
        assert_eq!(
            placement(&["--cores", "3,"]).unwrap(),
            Placement::Cpus(vec![3])
        );
        for bad in [
            &["--cores", "0"][..],
            &["--cores", "x"],
            &["--cpus", ""],
            &["--cpus", ","],
            &["--cpus", "a,1"],
            &["--cpus", "3-1"],
            &["--cpus", "0,0"],
            &["--cpus", "0-2,1"],
            &["--cpus", "0", "--cores", "1"],
        ] {
            let e = node(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn idle_forms() {
        let idle = |v: &str| node(&["--idle", v]).map(|n| n.idle.idle);
        assert_eq!(node(&[]).unwrap().idle.idle, IdleStrategy::DEFAULT);
        assert_eq!(idle("poll").unwrap(), IdleStrategy::Poll);
        assert_eq!(
            idle("spin").unwrap(),
            IdleStrategy::Spin(Duration::from_micros(50))
        );
        assert_eq!(
            idle("spin:20").unwrap(),
            IdleStrategy::Spin(Duration::from_micros(20))
        );
        assert!(idle("nap").is_err());
        assert!(idle("spin:x").is_err());
    }

    #[test]
    fn wait_batch_forms() {
        let wb = |v: &str| node(&["--wait-batch", v]).map(|n| n.wait_batch);
        assert_eq!(
            node(&[]).unwrap().wait_batch,
            WaitBatch(Some((16, Duration::from_micros(50))))
        );
        assert_eq!(wb("off").unwrap(), WaitBatch(None));
        assert_eq!(
            wb("4:10").unwrap(),
            WaitBatch(Some((4, Duration::from_micros(10))))
        );
        for bad in ["", "4", "0:10", "4:x", "x:4"] {
            assert!(wb(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tcp_listen_endpoints() {
        let listen = |v: &str| node(&["--listen", v]).map(|n| n.listen);
        let l = node(&[]).unwrap().listen;
        assert_eq!(l.addr, "127.0.0.1:7000".parse::<SocketAddr>().unwrap());
        assert!(l.options.reuse_port && l.options.nodelay);
        let l = listen("tcp://[::1]:0?nodelay=0&backlog=16&reuseport=0").unwrap();
        assert_eq!(l.addr, "[::1]:0".parse::<SocketAddr>().unwrap());
        assert!(!l.options.nodelay && !l.options.reuse_port);
        assert_eq!(l.options.backlog, 16);
        assert_eq!(
            l.endpoint.to_string(),
            "tcp://[::1]:0?nodelay=0&reuseport=0&backlog=16"
        );
        assert_eq!(listen("localhost:6380").unwrap().addr.port(), 6380);
        for bad in [
            "udp://127.0.0.1:1",
            "unix:///tmp/x.sock",
            "tcp://127.0.0.1:1?keepalive=1s",
            "tcp://127.0.0.1:1?sndbuf=1M",
            "tcp://127.0.0.1",
            "127.0.0.1:99999",
            "",
        ] {
            assert_eq!(listen(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }
}
