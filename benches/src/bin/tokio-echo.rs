//! `tokio-echo`: the tokio peer echo server for the echo comparison.
//!
//! One current-thread tokio runtime per pinned core, each with its own
//! `SO_REUSEPORT` listener on the same address (the kernel spreads
//! connections over them), `TCP_NODELAY` on every connection, and one task
//! per connection. In `raw` mode bytes are written back as they are read; in
//! `lenprefix` mode every complete message in the receive buffer is written
//! back with one `write_all` per read and a partial message is kept.
//!
//! Usage: `tokio-echo [--cores 0,1|N] [--listen ADDR] [--wire raw|lenprefix]`.

use std::io;
use std::net::SocketAddr;

use ringwire_benches::server::{run_per_core, ServerConfig, Shutdown, READ_BUF, SHUTDOWN_POLL};
use ringwire_benches::wire::{FrameBuf, Wire};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NAME: &str = "tokio-echo";

fn main() {
    let cfg = ServerConfig::from_env_or_exit(NAME);
    let shutdown = match Shutdown::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{NAME}: cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };
    let cores = match cfg.cores.resolve() {
        Ok(cores) => cores,
        Err(e) => {
            eprintln!("{NAME}: --cores: {e}");
            std::process::exit(2);
        }
    };
    let (listen, wire) = (cfg.listen, cfg.wire);
    eprintln!("{NAME}: listening on {listen}, wire {wire}, CPUs {cores:?}");
    match run_per_core(NAME, &cores, move |_core| {
        serve_core(listen, wire, &shutdown)
    }) {
        Ok(()) => eprintln!("{NAME}: stopped"),
        Err(e) => {
            eprintln!("{NAME}: {e}");
            std::process::exit(1);
        }
    }
}

/// A listening socket with `SO_REUSEPORT`, so every core can bind `addr`.
fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Runs one core's runtime until shutdown is requested.
fn serve_core(addr: SocketAddr, wire: Wire, shutdown: &Shutdown) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build the tokio runtime: {e}"))?;
    let std_listener = bind_reuseport(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    rt.block_on(async {
        let listener = TcpListener::from_std(std_listener)
            .map_err(|e| format!("cannot register the listener: {e}"))?;
        tokio::spawn(accept_loop(listener, wire));
        let mut tick = tokio::time::interval(SHUTDOWN_POLL);
        while !shutdown.requested() {
            tick.tick().await;
        }
        Ok(())
    })
    // Dropping the runtime cancels the acceptor and every connection task.
}

async fn accept_loop(listener: TcpListener, wire: Wire) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, wire).await {
                        report(peer, &e);
                    }
                });
            }
            Err(e) => {
                // Typically EMFILE; back off instead of spinning.
                eprintln!("{NAME}: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_connection(mut stream: TcpStream, wire: Wire) -> io::Result<()> {
    stream.set_nodelay(true)?;
    match wire {
        Wire::Raw => {
            let mut buf = vec![0u8; READ_BUF];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                stream.write_all(&buf[..n]).await?;
            }
        }
        Wire::LenPrefix => {
            let mut buf = FrameBuf::with_capacity(READ_BUF);
            loop {
                let n = stream.read(buf.read_space()).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.filled(n);
                let complete = buf.complete()?;
                if !complete.is_empty() {
                    let len = complete.len();
                    stream.write_all(complete).await?;
                    buf.consume(len);
                }
            }
        }
    }
}

/// Prints a connection error, except the resets a closing client causes.
fn report(peer: SocketAddr, e: &io::Error) {
    if !matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    ) {
        eprintln!("{NAME}: connection from {peer}: {e}");
    }
}
