//! sendpath: A/B of ringwire's send mechanisms in one run.
//!
//! For each message size and each mode, a one-core ringwire runtime pinned
//! to `--sender-cpu` sends the same buffer over TCP loopback, one send in
//! flight, for `--duration` seconds, to a sink thread pinned to `--sink-cpu`
//! that reads and discards. Modes:
//!
//! - `plain`: a heap `Vec<u8>` with `IORING_OP_SEND`;
//! - `fixed`: a registered pool buffer (`SendBuf`) with `IORING_OP_WRITE_FIXED`;
//! - `zc`: a heap buffer with `IORING_OP_SEND_ZC` (buffer returned after the
//!   kernel's notification);
//! - `zc-fixed`: a registered buffer with `SEND_ZC`.
//!
//! Reported per mode and size: messages/s, sender CPU seconds (the core
//! thread's CLOCK_THREAD_CPUTIME, which includes the kernel's send work under
//! DEFER_TASKRUN) and messages per sender CPU-second, with the ratio to
//! `plain` of the same size. Modes run interleaved per size, so drift in
//! machine load touches all of them alike. Each line ends with a
//! machine-readable `RESULT`.
//!
//! ```text
//! sendpath [--sizes 64,1024,16384,262144,1048576] [--modes plain,fixed,zc,zc-fixed]
//!          [--duration SECS] [--sender-cpu 0] [--sink-cpu 1]
//! ```

use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use ringwire::runtime::net::TcpStream;
use ringwire::runtime::{Placement, Runtime, SendBuf};
use ringwire_benches::cli::parse_duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// A heap `Vec<u8>` with IORING_OP_SEND.
    Plain,
    /// A registered pool buffer with IORING_OP_WRITE_FIXED.
    Fixed,
    /// A heap buffer with IORING_OP_SEND_ZC.
    Zc,
    /// A registered buffer with SEND_ZC.
    ZcFixed,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Fixed => "fixed",
            Mode::Zc => "zc",
            Mode::ZcFixed => "zc-fixed",
        }
    }
}

/// A/B of ringwire's send mechanisms in one run: per message size and mode,
/// messages/s and messages per sender CPU-second.
#[derive(Parser, Debug)]
#[command(name = "sendpath", version)]
struct Opts {
    /// Message sizes in bytes.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "64,1024,16384,262144,1048576"
    )]
    sizes: Vec<usize>,
    /// Send modes to compare.
    #[arg(
        long,
        value_name = "LIST",
        value_enum,
        value_delimiter = ',',
        default_value = "plain,fixed,zc,zc-fixed"
    )]
    modes: Vec<Mode>,
    /// Duration of each run, in seconds (or 2.5s, 500ms).
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_duration)]
    duration: Duration,
    /// CPU of the sending core.
    #[arg(long, value_name = "CPU", default_value_t = 0)]
    sender_cpu: usize,
    /// CPU of the sink thread.
    #[arg(long, value_name = "CPU", default_value_t = 1)]
    sink_cpu: usize,
}

/// A sink pinned to `cpu` that reads one connection to the end; returns the
/// address and the byte count at the end.
fn sink(cpu: usize) -> std::io::Result<(SocketAddr, std::thread::JoinHandle<u64>)> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let h = std::thread::spawn(move || {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
        let Ok((mut s, _)) = l.accept() else { return 0 };
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
        }
    });
    Ok((addr, h))
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct Run {
    msgs: u64,
    secs: f64,
    cpu_secs: f64,
    received: u64,
}

fn run_one(o: &Opts, mode: Mode, size: usize) -> Result<Run, String> {
    let zc = matches!(mode, Mode::Zc | Mode::ZcFixed);
    let pool_size = size.next_multiple_of(4096).max(64 << 10);
    let rt = Runtime::builder()
        .placement(Placement::Cpus(vec![o.sender_cpu]))
        .zero_copy_threshold(if zc { Some(0) } else { None })
        .fixed_send(true)
        .send_buffers(4)
        .send_buffer_size(pool_size as u32)
        .recv_buffers(16)
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    if zc && !rt.ring_features()[0].send_zc {
        return Err("this kernel has no SEND_ZC".into());
    }
    let (addr, sink) = sink(o.sink_cpu).map_err(|e| format!("sink: {e}"))?;
    let duration = o.duration;
    let fixed = matches!(mode, Mode::Fixed | Mode::ZcFixed);
    let (msgs, secs, cpu_secs) = rt
        .block_on(0, move || async move {
            let conn = TcpStream::connect(addr).await?;
            let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let mut heap = payload.clone();
            let mut pooled = SendBuf::acquire().await;
            assert!(pooled.extend_from_slice(&payload));
            let start = Instant::now();
            let cpu0 = thread_cpu();
            let mut msgs = 0u64;
            while start.elapsed() < duration {
                // Check the clock every 64 messages only.
                for _ in 0..64 {
                    if fixed {
                        let (res, b) = conn.send_all(pooled).await;
                        res?;
                        pooled = b;
                    } else {
                        let (res, b) = conn.send_all(heap).await;
                        res?;
                        heap = b;
                    }
                    msgs += 1;
                }
            }
            let cpu = (thread_cpu() - cpu0).as_secs_f64();
            let secs = start.elapsed().as_secs_f64();
            Ok::<_, std::io::Error>((msgs, secs, cpu))
        })
        .map_err(|e| format!("sender task: {e}"))?
        .map_err(|e| format!("send: {e}"))?;
    drop(rt);
    let received = sink.join().map_err(|_| "sink panicked".to_string())?;
    Ok(Run {
        msgs,
        secs,
        cpu_secs,
        received,
    })
}

fn main() -> ExitCode {
    // Bad arguments: clap prints the error and exits with code 2.
    let o = Opts::parse();
    println!(
        "send path A/B: sender on CPU {}, sink on CPU {}, {:.1} s per run, one send in flight",
        o.sender_cpu,
        o.sink_cpu,
        o.duration.as_secs_f64()
    );
    println!(
        "{:>8} | {:>8} | {:>10} | {:>8} | {:>13} | {:>8}",
        "size", "mode", "msgs/s", "cpu s", "msgs/cpu-s", "x plain"
    );
    let mut failed = false;
    for &size in &o.sizes {
        let mut plain_eff = None;
        for &mode in &o.modes {
            match run_one(&o, mode, size) {
                Ok(r) => {
                    if r.received != r.msgs * size as u64 {
                        eprintln!(
                            "sendpath: {} {size}: sink got {} bytes, sent {}",
                            mode.name(),
                            r.received,
                            r.msgs * size as u64
                        );
                        failed = true;
                    }
                    let eff = r.msgs as f64 / r.cpu_secs.max(1e-9);
                    if mode == Mode::Plain {
                        plain_eff = Some(eff);
                    }
                    let ratio = plain_eff.map_or("-".to_string(), |p| format!("{:.2}x", eff / p));
                    println!(
                        "{:>8} | {:>8} | {:>10.0} | {:>8.3} | {:>13.0} | {:>8}",
                        size,
                        mode.name(),
                        r.msgs as f64 / r.secs,
                        r.cpu_secs,
                        eff,
                        ratio
                    );
                    println!(
                        "RESULT bench=sendpath size={size} mode={} msgs={} secs={:.3} msgs_per_s={:.0} sender_cpu_s={:.3} msgs_per_cpu_s={:.0}",
                        mode.name(),
                        r.msgs,
                        r.secs,
                        r.msgs as f64 / r.secs,
                        r.cpu_secs,
                        eff
                    );
                }
                Err(e) => {
                    eprintln!("sendpath: {} {size}: {e}", mode.name());
                    failed = true;
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
