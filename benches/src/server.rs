//! Command line, shutdown signal and per-core threads shared by the peer
//! echo servers (`tokio-echo`, `glommio-echo`).
//!
//! Both servers take the same flags as ringwire's `echo-node`:
//! `--cores 0,1|N --listen ADDR --wire raw|lenprefix`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::cli::{parse_args, parse_value, Arg, CliError};
use crate::cores::{parse_cores, pin_current_thread, CoreSpec};
use crate::wire::Wire;

/// Receive buffer size per connection.
pub const READ_BUF: usize = 64 * 1024;

/// How often a server checks the shutdown flag.
pub const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

/// Settings of a peer echo server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Cores to run one pinned executor on each.
    pub cores: CoreSpec,
    /// Address every core listens on (with `SO_REUSEPORT`).
    pub listen: SocketAddr,
    /// Wire mode.
    pub wire: Wire,
}

/// Usage text shared by the peer servers.
pub fn usage(name: &str) -> String {
    format!(
        "usage: {name} [--cores 0,1|N] [--listen ADDR] [--wire raw|lenprefix]\n\
         \n\
         Echo server, one pinned single-threaded executor per core, each with its\n\
         own SO_REUSEPORT listener on ADDR. Stops cleanly on SIGINT/SIGTERM.\n\
         \n\
         --cores   CPU ids `0,1`, or a count N = the first N CPUs this process may\n\
         \x20         run on (so `taskset -c 3 ... --cores 1` uses CPU 3); default 1\n\
         --listen  address to listen on; default 127.0.0.1:7000\n\
         --wire    raw (echo bytes as-is) or lenprefix (4-byte LE length + payload,\n\
         \x20         echo whole messages); default lenprefix\n"
    )
}

impl ServerConfig {
    /// Parses the server flags; `Ok(None)` means help was asked for.
    pub fn from_args<I>(args: I) -> Result<Option<Self>, CliError>
    where
        I: IntoIterator<Item = String>,
    {
        let mut cfg = ServerConfig {
            cores: CoreSpec::Count(1),
            listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            wire: Wire::LenPrefix,
        };
        for arg in parse_args(args)? {
            match arg {
                Arg::Help => return Ok(None),
                Arg::Opt { name, value } => match name.as_str() {
                    "cores" => cfg.cores = parse_cores(&value)?,
                    "listen" => cfg.listen = parse_value(&name, &value)?,
                    "wire" => cfg.wire = parse_value(&name, &value)?,
                    _ => return Err(CliError(format!("unknown option `--{name}`"))),
                },
            }
        }
        Ok(Some(cfg))
    }

    /// Parses `std::env::args()`, printing usage and exiting on `--help` or
    /// on an error.
    pub fn from_env_or_exit(name: &str) -> Self {
        match Self::from_args(std::env::args().skip(1)) {
            Ok(Some(cfg)) => cfg,
            Ok(None) => {
                print!("{}", usage(name));
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("{name}: {e}\n\n{}", usage(name));
                std::process::exit(2);
            }
        }
    }
}

/// Flag set once SIGINT or SIGTERM arrives.
#[derive(Debug, Clone)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// Installs SIGINT and SIGTERM handlers that raise the flag.
    pub fn install() -> std::io::Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&flag))?;
        }
        Ok(Self(flag))
    }

    /// Whether shutdown was requested.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Runs `serve(core)` on one thread per CPU in `cores`, pinned to it, and
/// waits for all of them. Returns an error if any core failed.
pub fn run_per_core<F>(name: &str, cores: &[usize], serve: F) -> Result<(), String>
where
    F: Fn(usize) -> Result<(), String> + Send + Sync + 'static,
{
    let serve = Arc::new(serve);
    let mut handles = Vec::new();
    for &core in cores {
        let serve = Arc::clone(&serve);
        let handle = std::thread::Builder::new()
            .name(format!("{name}-core{core}"))
            .spawn(move || {
                pin_current_thread(core)?;
                serve(core)
            })
            .map_err(|e| format!("cannot spawn the thread for core {core}: {e}"))?;
        handles.push((core, handle));
    }
    let mut errors = Vec::new();
    for (core, handle) in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("core {core}: {e}")),
            Err(_) => errors.push(format!("core {core}: thread panicked")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn defaults_and_flags() {
        let cfg = ServerConfig::from_args(Vec::new()).unwrap().unwrap();
        assert_eq!(cfg.cores, CoreSpec::Count(1));
        assert_eq!(cfg.wire, Wire::LenPrefix);
        let cfg = ServerConfig::from_args(strings(&[
            "--cores",
            "0,1",
            "--listen",
            "127.0.0.1:7100",
            "--wire=raw",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(cfg.cores, CoreSpec::List(vec![0, 1]));
        assert_eq!(cfg.listen.port(), 7100);
        assert_eq!(cfg.wire, Wire::Raw);
        assert!(ServerConfig::from_args(strings(&["--bogus", "1"])).is_err());
        assert!(ServerConfig::from_args(strings(&["--help"]))
            .unwrap()
            .is_none());
    }
}
