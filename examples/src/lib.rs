//! Shared pieces of ringwire's example nodes: command-line parsing, the
//! length-prefixed echo framing, kv-node's protocol engine, and logging
//! set-up.

pub mod cli;
pub mod held;
pub mod kv;
pub mod lenprefix;

/// Installs a `tracing` subscriber filtered by `RUST_LOG` (default `info`),
/// writing to stderr (in colour only when stderr is a terminal).
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
