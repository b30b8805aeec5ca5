//! `glommio-echo`: the glommio peer echo server for the echo comparison.
//!
//! One glommio `LocalExecutor` per core, pinned with `Placement::Fixed`, each
//! binding its own `glommio::net::TcpListener` on the same address (glommio
//! sets `SO_REUSEPORT` on every listener it binds, so the kernel spreads
//! connections over the cores), `TCP_NODELAY` on every connection, and one
//! task per connection. In `raw` mode bytes are written back as they are
//! read; in `lenprefix` mode every complete message in the receive buffer is
//! written back with one `write_all` per read and a partial message is kept.
//!
//! Usage: `glommio-echo [--cores 0,1|N] [--listen ADDR] [--wire raw|lenprefix]`.

use std::io;
use std::net::SocketAddr;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use ringwire_benches::server::{run_per_core, ServerConfig, Shutdown, READ_BUF, SHUTDOWN_POLL};
use ringwire_benches::wire::{FrameBuf, Wire};

const NAME: &str = "glommio-echo";

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
    match run_per_core(NAME, &cores, move |core| {
        serve_core(core, listen, wire, &shutdown)
    }) {
        Ok(()) => eprintln!("{NAME}: stopped"),
        Err(e) => {
            eprintln!("{NAME}: {e}");
            std::process::exit(1);
        }
    }
}

/// Runs one core's executor until shutdown is requested.
fn serve_core(
    core: usize,
    addr: SocketAddr,
    wire: Wire,
    shutdown: &Shutdown,
) -> Result<(), String> {
    let executor = LocalExecutorBuilder::new(Placement::Fixed(core))
        .name(&format!("{NAME}-{core}"))
        .make()
        .map_err(|e| format!("cannot start the glommio executor: {e}"))?;
    executor.run(async {
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        glommio::spawn_local(accept_loop(listener, wire)).detach();
        while !shutdown.requested() {
            glommio::timer::sleep(SHUTDOWN_POLL).await;
        }
        Ok(())
    })
    // Dropping the executor drops the acceptor and every connection task.
}

async fn accept_loop(listener: TcpListener, wire: Wire) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(async move {
                    let peer = stream.peer_addr().ok();
                    if let Err(e) = serve_connection(stream, wire).await {
                        report(peer, &e);
                    }
                })
                .detach();
            }
            Err(e) => {
                // Typically EMFILE; back off instead of spinning.
                eprintln!("{NAME}: accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
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
fn report(peer: Option<SocketAddr>, e: &io::Error) {
    if !matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    ) {
        match peer {
            Some(peer) => eprintln!("{NAME}: connection from {peer}: {e}"),
            None => eprintln!("{NAME}: connection: {e}"),
        }
    }
}
