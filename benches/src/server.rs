//! Command line, shutdown signal and per-core threads shared by the peer
//! echo servers (`tokio-echo`, `glommio-echo`).
//!
//! Both servers take the same flags as ringwire's `echo-node`:
//! `--cpus LIST | --cores N`, `--listen ADDR`, `--wire raw|lenprefix`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::cli::{server_cores_help, CoreArgs};
use crate::cores::{pin_current_thread, CoreSpec};
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

/// Echo server, one pinned single-threaded executor per core, each with its
/// own SO_REUSEPORT listener on the address. Stops cleanly on
/// SIGINT/SIGTERM.
#[derive(Parser, Debug)]
#[command(version)]
struct ServerArgs {
    #[command(flatten)]
    cores: CoreArgs,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// raw (echo bytes as they are read) or lenprefix (4-byte little-endian
    /// length, then the payload; echo whole messages).
    #[arg(long, value_name = "WIRE", default_value = "lenprefix")]
    wire: Wire,
}

impl ServerConfig {
    /// Parses the server flags of the server called `name` (`args` starts
    /// with the program name). Without `--cpus` or `--cores`, one core.
    pub fn from_args<I, T>(name: &'static str, args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = server_cores_help(ServerArgs::command(), 1)
            .name(name)
            .bin_name(name)
            .try_get_matches_from(args)?;
        let args = ServerArgs::from_arg_matches(&matches)?;
        Ok(ServerConfig {
            cores: CoreSpec::from_args(&args.cores, 1),
            listen: args.listen,
            wire: args.wire,
        })
    }

    /// Parses `std::env::args()`; on `--help` or `--version` prints and
    /// exits with 0, on an error prints it and exits with 2.
    pub fn from_env_or_exit(name: &'static str) -> Self {
        Self::from_args(name, std::env::args_os()).unwrap_or_else(|e| e.exit())
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

    fn parse(args: &[&str]) -> Result<ServerConfig, clap::Error> {
        ServerConfig::from_args("peer", std::iter::once("peer").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_and_flags() {
        let cfg = parse(&[]).unwrap();
        assert_eq!(cfg.cores, CoreSpec::Count(1));
        assert_eq!(cfg.listen.port(), 7000);
        assert_eq!(cfg.wire, Wire::LenPrefix);
        let cfg = parse(&["--cores", "0,1", "--listen", "127.0.0.1:7100", "--wire=raw"]).unwrap();
        assert_eq!(cfg.cores, CoreSpec::List(vec![0, 1]));
        assert_eq!(cfg.listen.port(), 7100);
        assert_eq!(cfg.wire, Wire::Raw);
        assert_eq!(
            parse(&["--cpus", "1"]).unwrap().cores,
            CoreSpec::List(vec![1])
        );
        assert_eq!(parse(&["--bogus", "1"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["--wire", "nope"]).unwrap_err().exit_code(), 2);
        let help = parse(&["--help"]).unwrap_err();
        assert_eq!(help.exit_code(), 0);
        let help = help.to_string();
        assert!(help.contains("Usage: peer"));
        assert!(
            help.contains("Without --cpus or --cores: 1 core."),
            "{help}"
        );
    }
}
