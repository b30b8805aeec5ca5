//! `rdma-pingpong`: typed request/reply ping-pong and two-phase bulk over
//! `rdma://` between two cores of one process (feature `rdma`).
//!
//! A two-core runtime: the server listens on core 1 at
//! `rdma://127.0.0.1:PORT` (the TCP side channel), the client connects from
//! core 0; both go through one RDMA context (one device, one completion
//! core, the queue pairs connected through the device).
//!
//! * `--mode pingpong`: `--count` calls of `--size` payload bytes, one at a
//!   time; prints calls per second and the round-trip p50/p99/p99.9.
//! * `--mode bulk`: `--count` bulk sends of one `--size`-byte segment each,
//!   written by RDMA WRITE into the destination the server accepted, each
//!   confirmed by a reply; prints Gbit/s.
//!
//! `--fabric ibv` (default) needs a device (an HCA, or Soft-RoCE:
//! `rdma link add rxe0 type rxe netdev <if>`) and fails at once without one;
//! `--fabric mem` runs on the in-memory verbs fabric (checks the program,
//! measures nothing about RDMA).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use ringwire_proto::rkyv;
use ringwire_runtime::{Placement, Runtime};
use ringwire_transports::rdma::mem::Fabric;
use ringwire_transports::rdma::{Device, PollMode, RdmaConfig, RdmaContext};
use ringwire_transports::{connect, listen, type_id, Config, Endpoint, Error, Message};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FabricKind {
    /// libibverbs: a real device or Soft-RoCE.
    Ibv,
    /// The in-memory verbs fabric (no device needed; not a measurement).
    Mem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One call at a time.
    Pingpong,
    /// Bulk segments by RDMA WRITE.
    Bulk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Poll {
    /// The completion core polls in a loop.
    Busy,
    /// The completion core sleeps on the completion channel.
    Channel,
}

/// Ping-pong and bulk over rdma:// between two cores of one process.
#[derive(Parser, Debug)]
#[command(
    name = "rdma-pingpong",
    version,
    after_help = "Exit status: 0 ok, 1 runtime error (e.g. no RDMA device), 2 usage error."
)]
struct Flags {
    /// ibv | mem.
    #[arg(long, value_enum, default_value_t = FabricKind::Ibv)]
    fabric: FabricKind,
    /// The libibverbs device (default: the first one).
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
    /// pingpong | bulk.
    #[arg(long, value_enum, default_value_t = Mode::Pingpong)]
    mode: Mode,
    /// busy | channel: how the completion core waits.
    #[arg(long, value_enum, default_value_t = Poll::Busy)]
    poll: Poll,
    /// Payload bytes per call, or bytes per bulk segment.
    #[arg(long, value_name = "N", default_value_t = 64)]
    size: usize,
    /// Calls or bulk sends.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    count: u64,
    /// Side-channel port (0: any).
    #[arg(long, value_name = "P", default_value_t = 0)]
    port: u16,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
#[rkyv(crate = rkyv)]
struct Ping {
    seq: u64,
    payload: Vec<u8>,
}

impl Message for Ping {
    const TYPE_ID: u32 = type_id("bench.rdma.Ping");
    const NAME: &'static str = "bench.rdma.Ping";
}

#[derive(rkyv::Archive, rkyv::Serialize)]
#[rkyv(crate = rkyv)]
struct Pong {
    seq: u64,
}

impl Message for Pong {
    const TYPE_ID: u32 = type_id("bench.rdma.Pong");
    const NAME: &'static str = "bench.rdma.Pong";
}

fn config() -> Result<Config, Error> {
    Ok(Config::with_types::<(Ping, Pong)>()
        .map_err(|_| Error::Usage("message types"))?
        .call_timeout(Some(Duration::from_secs(10))))
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    match run(&flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdma-pingpong: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(flags: &Flags) -> Result<(), String> {
    let rt = Runtime::builder()
        .placement(Placement::Unpinned(2))
        .build()
        .map_err(|e| e.to_string())?;
    let device = match flags.fabric {
        FabricKind::Ibv => Device::Ibv(flags.device.clone()),
        FabricKind::Mem => {
            let fabric = Fabric::new();
            fabric.add_host("bench").map_err(|e| e.to_string())?;
            Device::Mem {
                fabric,
                host: "bench".into(),
            }
        }
    };
    let poll = match flags.poll {
        Poll::Busy => PollMode::Busy,
        Poll::Channel => PollMode::Channel,
    };
    let ctx = RdmaContext::start(device, 2, RdmaConfig::default().poll_mode(poll))
        .map_err(|e| e.to_string())?;
    println!("device {}", ctx.device_name());
    for core in 0..2 {
        let ctx = ctx.clone();
        rt.block_on(core, move || async move { ctx.use_here() })
            .map_err(|e| format!("{e:?}"))?
            .map_err(|e| e.to_string())?;
    }
    let ep: Endpoint = format!("rdma://127.0.0.1:{}", flags.port)
        .parse()
        .map_err(|e: ringwire_transports::EndpointError| e.to_string())?;
    let (tx, rx) = std::sync::mpsc::channel();
    let mode = flags.mode;
    let server = rt.spawn_on(1, move || async move {
        let served: Result<(), Error> = async {
            let mut l = listen(&ep, &config()?).await?;
            let _ = tx.send(Ok(l.endpoint().clone()));
            let Some(conn) = l.accept().await else {
                return Ok(());
            };
            let conn = conn?;
            loop {
                let mut req = match conn.recv::<Ping>().await {
                    Ok(r) => r,
                    Err(Error::Closed { .. }) => return Ok(()),
                    Err(e) => return Err(e),
                };
                let seq = req.seq.to_native();
                if mode == Mode::Bulk {
                    let sizes = req
                        .incoming()
                        .bulk_sizes()
                        .ok_or(Error::Usage("a bulk send without segments"))?;
                    let dests = sizes
                        .iter()
                        .map(|&s| Vec::<u8>::with_capacity(s as usize))
                        .collect();
                    req.incoming_mut().accept_bulk(dests).await?;
                    drop(req);
                    conn.send(&Pong { seq }).await?;
                } else {
                    req.reply(&Pong { seq }).await?;
                }
            }
        }
        .await;
        if let Err(e) = &served {
            let _ = tx.send(Err(e.to_string()));
        }
        served.map_err(|e| e.to_string())
    });
    let ep = rx.recv().map_err(|_| "the server ended".to_string())??;
    let (size, count) = (flags.size, flags.count);
    let report = rt
        .block_on(
            0,
            move || async move { client(&ep, mode, size, count).await },
        )
        .map_err(|e| format!("{e:?}"))?
        .map_err(|e| e.to_string())?;
    println!("{report}");
    server
        .join()
        .map_err(|e| format!("{e:?}"))?
        .map_err(|e| format!("server: {e}"))?;
    rt.shutdown(Duration::from_secs(5));
    ctx.shutdown(Duration::from_secs(5));
    Ok(())
}

async fn client(ep: &Endpoint, mode: Mode, size: usize, count: u64) -> Result<String, Error> {
    let conn = connect(ep, &config()?).await?;
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).map_err(|_| Error::Usage("histogram"))?;
    let started = Instant::now();
    match mode {
        Mode::Pingpong => {
            let mut ping = Ping {
                seq: 0,
                payload: vec![7u8; size],
            };
            for seq in 0..count {
                ping.seq = seq;
                let t = Instant::now();
                let pong = conn.call::<Ping, Pong>(&ping).await?;
                hist.record(t.elapsed().as_nanos() as u64).ok();
                if pong.seq.to_native() != seq {
                    return Err(Error::Usage("a reply to another call"));
                }
            }
        }
        Mode::Bulk => {
            let mut segment = vec![3u8; size];
            let meta = Ping {
                seq: 0,
                payload: Vec::new(),
            };
            for _ in 0..count {
                let t = Instant::now();
                let (_receipt, mut back) = conn.send_bulk(&meta, vec![segment]).await?;
                segment = back.pop().ok_or(Error::Usage("segment not handed back"))?;
                conn.recv::<Pong>().await?;
                hist.record(t.elapsed().as_nanos() as u64).ok();
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    conn.close().await?;
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(match mode {
        Mode::Pingpong => format!(
            "pingpong size={size} count={count}: {:.0} calls/s, round trip p50 {:.1} us, \
             p99 {:.1} us, p99.9 {:.1} us",
            count as f64 / secs,
            us(0.5),
            us(0.99),
            us(0.999)
        ),
        Mode::Bulk => format!(
            "bulk size={size} count={count}: {:.2} Gbit/s, per segment p50 {:.1} us, p99 {:.1} us",
            (size as f64 * count as f64 * 8.0) / secs / 1e9,
            us(0.5),
            us(0.99)
        ),
    })
}
