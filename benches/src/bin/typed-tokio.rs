//! `typed-tokio`: the tokio peer of the typed request/reply benchmark
//! (`benches/typed.sh`): what a Rust user writes instead of ringwire's typed
//! transports.
//!
//! Both halves use tokio-util's `LengthDelimitedCodec` over `Framed` TCP or
//! Unix streams (or TLS streams of tokio-rustls over TCP for `tls://`, with
//! `--tls-dir`; see `ringwire_benches::tls`), and the benchmark's own message types
//! ([`Req`]/[`Resp`]) serialized with rkyv (`to_bytes_in` a `Vec` handed to
//! the codec; `access` with validation on the way in, after copying a frame
//! that is not aligned for the archive) or, with `--codec bincode`, bincode
//! (payloads as byte strings, borrowed on decode).
//!
//! * `typed-tokio server --endpoint E [--cores N]`: one current-thread
//!   runtime per pinned core (TCP: each with its own `SO_REUSEPORT`
//!   listener), one task per connection answering requests in order; the
//!   replies to every request already buffered go out with one flush.
//! * `typed-tokio client --endpoint E ...`: one current-thread runtime on the
//!   calling thread (pin it with `--core`), one task per connection keeping
//!   `--depth` requests in flight; replies are matched to requests in order
//!   and every one is checked. See `ringwire_benches::measure` for the flags
//!   and the RESULT line.
//!
//! [`Req`]: ringwire_benches::typed::Req
//! [`Resp`]: ringwire_benches::typed::Resp

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use ringwire_benches::measure::{
    arm_hard_limit, role_from_env_or_exit, ClientArgs, Meter, Report, Role, ServerArgs,
};
use ringwire_benches::server::{run_per_core, Shutdown, SHUTDOWN_POLL};
use ringwire_benches::typed::{
    request_id, Answerer, Asker, Codec, PayloadGen, Target, MAX_FRAME, MAX_LEN,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

const NAME: &str = "typed-tokio";

/// Read buffer of each `Framed` stream.
const FRAMED_BUF: usize = 64 * 1024;

fn main() {
    let code = match role_from_env_or_exit(NAME) {
        Role::Server(args) => server(&args),
        Role::Client(args) => client(&args),
    };
    if let Err(e) = code {
        eprintln!("{NAME}: error: {e}");
        std::process::exit(1);
    }
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

// ---------------------------------------------------------------- server

/// A listening socket made on the main thread and handed to one core.
enum Bound {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
    Tls(std::net::TcpListener, tokio_rustls::TlsAcceptor),
}

/// A listening TCP socket with `SO_REUSEPORT`, so every core can bind `addr`.
fn bind_reuseport(addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn server(args: &ServerArgs) -> Result<(), String> {
    let target = Target::parse(&args.endpoint)?;
    let shutdown =
        Shutdown::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let cores = args.cores.resolve().map_err(|e| format!("--cores: {e}"))?;
    let acceptor = match &target {
        Target::Tls(_) => {
            let dir = args
                .tls_dir
                .as_deref()
                .ok_or("a tls:// endpoint needs --tls-dir")?;
            Some(tokio_rustls::TlsAcceptor::from(
                ringwire_benches::tls::rustls_server(dir)?,
            ))
        }
        _ => None,
    };
    let mut bound = HashMap::new();
    for &core in &cores {
        let listener = match &target {
            Target::Tcp(addr) => Bound::Tcp(
                bind_reuseport(*addr).map_err(|e| format!("cannot listen on {target}: {e}"))?,
            ),
            Target::Tls(addr) => Bound::Tls(
                bind_reuseport(*addr).map_err(|e| format!("cannot listen on {target}: {e}"))?,
                acceptor.clone().ok_or("no TLS acceptor")?,
            ),
            Target::Unix(path) => {
                if cores.len() > 1 {
                    return Err("a unix endpoint is served by one core; use --cores 1".into());
                }
                let _ = std::fs::remove_file(path);
                let l = std::os::unix::net::UnixListener::bind(path)
                    .map_err(|e| format!("cannot listen on {target}: {e}"))?;
                l.set_nonblocking(true)
                    .map_err(|e| format!("cannot configure {target}: {e}"))?;
                Bound::Unix(l)
            }
        };
        bound.insert(core, listener);
    }
    let bound = Arc::new(Mutex::new(bound));
    let codec_kind = args.codec;
    eprintln!("{NAME}: listening on {target}, codec {codec_kind}, CPUs {cores:?}");
    eprintln!("READY {target}");
    let result = run_per_core(NAME, &cores, move |core| {
        let listener = bound
            .lock()
            .map_err(|_| "listener table poisoned".to_owned())?
            .remove(&core)
            .ok_or_else(|| format!("no listener for core {core}"))?;
        serve_core(listener, codec_kind, &shutdown)
    });
    if let Target::Unix(path) = &target {
        let _ = std::fs::remove_file(path);
    }
    result?;
    eprintln!("{NAME}: stopped");
    Ok(())
}

fn serve_core(listener: Bound, codec_kind: Codec, shutdown: &Shutdown) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build the tokio runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let gen = Rc::new(PayloadGen::new(MAX_LEN));
        match listener {
            Bound::Tcp(l) => {
                let l = tokio::net::TcpListener::from_std(l)
                    .map_err(|e| format!("cannot register the listener: {e}"))?;
                tokio::task::spawn_local(async move {
                    loop {
                        match l.accept().await {
                            Ok((stream, _)) => {
                                let _ = stream.set_nodelay(true);
                                spawn_connection(stream, codec_kind, gen.clone());
                            }
                            Err(e) => accept_failed(&e).await,
                        }
                    }
                });
            }
            Bound::Tls(l, acceptor) => {
                let l = tokio::net::TcpListener::from_std(l)
                    .map_err(|e| format!("cannot register the listener: {e}"))?;
                tokio::task::spawn_local(async move {
                    loop {
                        match l.accept().await {
                            Ok((stream, _)) => {
                                let _ = stream.set_nodelay(true);
                                let (acceptor, gen) = (acceptor.clone(), gen.clone());
                                // The handshake in the connection's own task.
                                tokio::task::spawn_local(async move {
                                    match acceptor.accept(stream).await {
                                        Ok(tls) => spawn_connection(tls, codec_kind, gen),
                                        Err(e) => eprintln!("{NAME}: TLS handshake failed: {e}"),
                                    }
                                });
                            }
                            Err(e) => accept_failed(&e).await,
                        }
                    }
                });
            }
            Bound::Unix(l) => {
                let l = tokio::net::UnixListener::from_std(l)
                    .map_err(|e| format!("cannot register the listener: {e}"))?;
                tokio::task::spawn_local(async move {
                    loop {
                        match l.accept().await {
                            Ok((stream, _)) => spawn_connection(stream, codec_kind, gen.clone()),
                            Err(e) => accept_failed(&e).await,
                        }
                    }
                });
            }
        }
        let mut tick = tokio::time::interval(SHUTDOWN_POLL);
        while !shutdown.requested() {
            tick.tick().await;
        }
        Ok(())
    })
    // Dropping the runtime cancels the acceptor and every connection task.
}

async fn accept_failed(e: &io::Error) {
    // Typically EMFILE; back off instead of spinning.
    eprintln!("{NAME}: accept failed: {e}");
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
}

fn spawn_connection<S>(stream: S, codec_kind: Codec, gen: Rc<PayloadGen>)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    tokio::task::spawn_local(async move {
        if let Err(e) = serve_connection(stream, codec_kind, gen).await {
            if !matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) {
                eprintln!("{NAME}: connection: {e}");
            }
        }
    });
}

async fn serve_connection<S>(stream: S, codec_kind: Codec, gen: Rc<PayloadGen>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = Framed::with_capacity(stream, codec(), FRAMED_BUF);
    let mut answerer = Answerer::new(gen, codec_kind);
    let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    loop {
        let Some(frame) = framed.next().await else {
            return Ok(());
        };
        let mut frame = Some(frame?);
        // Answer every request already buffered, then flush once.
        while let Some(f) = frame.take() {
            let reply = Bytes::from(answerer.answer(&f).map_err(bad)?);
            framed.feed(reply).await?;
            frame = match framed.next().now_or_never() {
                Some(Some(f)) => Some(f?),
                Some(None) => {
                    SinkExt::<Bytes>::flush(&mut framed).await?;
                    return Ok(());
                }
                None => None,
            };
        }
        SinkExt::<Bytes>::flush(&mut framed).await?;
    }
}

// ---------------------------------------------------------------- client

fn client(args: &ClientArgs) -> Result<(), String> {
    arm_hard_limit(NAME, args.hard_limit());
    let target = args.target()?;
    if let Some(core) = args.core {
        ringwire_benches::cores::pin_current_thread(core)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build the tokio runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    let measured = local.block_on(&rt, run_client(args, &target))?;
    Report {
        workload: args.workload(target.transport()),
        measured,
        latency: "rtt",
    }
    .print();
    Ok(())
}

async fn connect_tcp(addr: std::net::SocketAddr) -> io::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn run_client(
    args: &ClientArgs,
    target: &Target,
) -> Result<ringwire_benches::measure::Measured, String> {
    let gen = Rc::new(PayloadGen::new(MAX_LEN));
    let meter = Rc::new(RefCell::new(Meter::new(args.meter.clone())?));
    let deadline = Instant::now() + args.wait;
    let connector = match target {
        Target::Tls(_) => {
            let dir = args
                .tls_dir
                .as_deref()
                .ok_or("a tls:// endpoint needs --tls-dir")?;
            Some(tokio_rustls::TlsConnector::from(
                ringwire_benches::tls::rustls_client(dir)?,
            ))
        }
        _ => None,
    };
    for i in 0..args.conns {
        let conn = i as u32;
        let ctx = || Ctx {
            conn,
            depth: args.depth,
            size: args.size,
            reply_size: args.reply_size,
            codec: args.codec,
            gen: gen.clone(),
            meter: meter.clone(),
        };
        loop {
            let connected = match target {
                Target::Tcp(addr) => connect_tcp(*addr).await.map(|s| ctx().spawn(s)),
                Target::Unix(path) => tokio::net::UnixStream::connect(path)
                    .await
                    .map(|s| ctx().spawn(s)),
                Target::Tls(addr) => match (connect_tcp(*addr).await, &connector) {
                    (Ok(s), Some(c)) => c
                        .connect(ringwire_benches::tls::server_name(), s)
                        .await
                        .map(|s| ctx().spawn(s)),
                    (Ok(_), None) => Err(io::Error::other("no TLS connector")),
                    (Err(e), _) => Err(e),
                },
            };
            match connected {
                Ok(()) => break,
                Err(e) if i == 0 && Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(format!(
                        "cannot connect connection {i} of {} to {target}: {e}",
                        args.conns
                    ))
                }
            }
        }
    }
    loop {
        let next = meter.borrow_mut().poll(Instant::now())?;
        match next {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => break,
        }
    }
    let measured = meter.borrow().finish();
    measured
}

/// What one connection's task needs.
struct Ctx {
    conn: u32,
    depth: usize,
    size: usize,
    reply_size: usize,
    codec: Codec,
    gen: Rc<PayloadGen>,
    meter: Rc<RefCell<Meter>>,
}

impl Ctx {
    fn spawn<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
    {
        tokio::task::spawn_local(async move {
            if let Err(e) = self.drive(stream).await {
                self.meter
                    .borrow_mut()
                    .fail(format!("connection {}: {e}", self.conn));
            }
        });
    }

    async fn drive<S>(&self, stream: S) -> Result<(), String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let io = |e: io::Error| e.to_string();
        let mut framed = Framed::with_capacity(stream, codec(), FRAMED_BUF);
        let mut asker = Asker::new(self.gen.clone(), self.codec, self.size, self.reply_size);
        let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(self.depth);
        let mut seq = 0u64;
        for _ in 0..self.depth {
            let id = request_id(self.conn, seq);
            seq += 1;
            let frame = Bytes::from(asker.request(id)?);
            in_flight.push_back((id, Instant::now()));
            framed.feed(frame).await.map_err(io)?;
        }
        SinkExt::<Bytes>::flush(&mut framed).await.map_err(io)?;
        loop {
            let mut frame = match framed.next().await {
                Some(f) => Some(f.map_err(io)?),
                None => return Err("the server closed the connection".into()),
            };
            // Take every reply already buffered, then flush the new requests once.
            while let Some(f) = frame.take() {
                let now = Instant::now();
                let (expect_id, sent) = in_flight
                    .pop_front()
                    .ok_or("a reply arrived with no request in flight")?;
                asker.check(&f, expect_id)?;
                {
                    let mut meter = self.meter.borrow_mut();
                    meter.record(now.duration_since(sent), self.reply_size, now);
                    if meter.is_done() {
                        return Ok(());
                    }
                }
                let id = request_id(self.conn, seq);
                seq += 1;
                let out = Bytes::from(asker.request(id)?);
                in_flight.push_back((id, Instant::now()));
                framed.feed(out).await.map_err(io)?;
                frame = match framed.next().now_or_never() {
                    Some(Some(f)) => Some(f.map_err(io)?),
                    Some(None) => return Err("the server closed the connection".into()),
                    None => None,
                };
            }
            SinkExt::<Bytes>::flush(&mut framed).await.map_err(io)?;
        }
    }
}
