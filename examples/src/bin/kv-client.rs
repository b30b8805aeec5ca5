//! kv-client: kv-node's typed operations from the command line, and a load
//! generator for them.
//!
//! ```text
//! kv-client [--node tcp://127.0.0.1:7380] get KEY
//! kv-client put KEY VALUE [--ttl-ms MS]
//! kv-client cas KEY (--expected VALUE | --absent) NEW
//! kv-client incr KEY [DELTA]
//! kv-client delete KEY
//! kv-client bench [--connections N] [--depth D] [--requests N] [--get-ratio R]
//!                 [--keys N] [--value-size BYTES] [--cores N | --cpus LIST]
//! ```
//!
//! One operation prints its answer (`(nil)` for an absent key) and exits 0,
//! or prints the error and exits 1. `bench` opens N connections spread over
//! the client's cores, keeps D calls in flight on each, mixes gets and puts
//! over a key space filled first, and reports operations per second and
//! latency percentiles (each call timed from send to reply).

use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ringwire::runtime::{spawn_local, Runtime};
use ringwire::transports::Endpoint;
use ringwire_examples::cli::CoreArgs;
use ringwire_examples::kv::client::{CasOutcome, KvClient, KvError};

/// kv-node's typed operations (get, put, compare-and-set, increment,
/// delete) over ringwire, and a benchmark of them.
#[derive(Parser, Debug)]
#[command(name = "kv-client", version)]
struct Args {
    /// The node's typed listener (kv-node --listen-typed).
    #[arg(long, value_name = "ENDPOINT", default_value = "tcp://127.0.0.1:7380")]
    node: Endpoint,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Prints the value of KEY, or (nil).
    Get {
        /// The key.
        key: String,
    },
    /// Sets KEY to VALUE.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Expire the key after this many milliseconds (at least 1).
        #[arg(long, value_name = "MS")]
        ttl_ms: Option<u64>,
    },
    /// Replaces KEY's value with NEW if it is EXPECTED (or absent, with
    /// --absent); prints "swapped", or "mismatch" and the current value.
    Cas {
        /// The key.
        key: String,
        /// The value KEY must hold.
        #[arg(long, value_name = "VALUE", required_unless_present = "absent")]
        expected: Option<String>,
        /// KEY must be absent.
        #[arg(long, conflicts_with = "expected")]
        absent: bool,
        /// The new value.
        new: String,
    },
    /// Adds DELTA (default 1) to KEY's integer value; prints the sum.
    Incr {
        /// The key.
        key: String,
        /// The amount (negative to decrement).
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        delta: i64,
    },
    /// Deletes KEY; prints 1 if it existed, else 0.
    Delete {
        /// The key.
        key: String,
    },
    /// Load: N connections x D calls in flight, gets and puts mixed.
    Bench(BenchArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct BenchArgs {
    /// Connections, spread over the client's cores.
    #[arg(long, value_name = "N", default_value_t = 4)]
    connections: usize,
    /// Calls in flight on each connection.
    #[arg(long, value_name = "D", default_value_t = 16)]
    depth: usize,
    /// Operations in all (after the key space is filled).
    #[arg(long, value_name = "N", default_value_t = 400_000)]
    requests: u64,
    /// Share of gets among the operations (0 to 1); the rest are puts.
    #[arg(long, value_name = "R", default_value_t = 0.9)]
    get_ratio: f64,
    /// Distinct keys (key:0 .. key:N-1), all put before timing starts.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    value_size: usize,
    #[command(flatten)]
    cores: CoreArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    ringwire_examples::init_tracing();
    let result = match args.command {
        Command::Bench(bench_args) => bench(&args.node, bench_args),
        command => one(&args.node, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv-client: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one operation on a one-core runtime and prints its answer.
fn one(node: &Endpoint, command: Command) -> Result<(), String> {
    let rt = Runtime::builder()
        .placement(ringwire::runtime::Placement::Unpinned(1))
        .build()
        .map_err(|e| e.to_string())?;
    let node = node.clone();
    let out = rt
        .block_on(0, move || async move {
            let kv = KvClient::connect(&node).await.map_err(|e| e.to_string())?;
            let out = run_one(&kv, command).await.map_err(|e| e.to_string());
            kv.close().await;
            out
        })
        .map_err(|e| e.to_string())?;
    rt.shutdown(Duration::from_secs(1));
    println!("{}", out?);
    Ok(())
}

async fn run_one(kv: &KvClient, command: Command) -> Result<String, KvError> {
    Ok(match command {
        Command::Get { key } => match kv.get(key.as_bytes()).await? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => "(nil)".to_string(),
        },
        Command::Put { key, value, ttl_ms } => {
            kv.put(
                key.as_bytes(),
                value.as_bytes(),
                ttl_ms.map(Duration::from_millis),
            )
            .await?;
            "OK".to_string()
        }
        Command::Cas {
            key, expected, new, ..
        } => match kv
            .cas(
                key.as_bytes(),
                expected.as_deref().map(str::as_bytes),
                new.as_bytes(),
            )
            .await?
        {
            CasOutcome::Swapped => "swapped".to_string(),
            CasOutcome::Mismatch(None) => "mismatch (nil)".to_string(),
            CasOutcome::Mismatch(Some(v)) => format!("mismatch {}", String::from_utf8_lossy(&v)),
        },
        Command::Incr { key, delta } => kv.incr(key.as_bytes(), delta).await?.to_string(),
        Command::Delete { key } => u8::from(kv.delete(key.as_bytes()).await?).to_string(),
        Command::Bench(_) => unreachable!("bench is run by `bench`"),
    })
}

/// Puts in flight while `bench` fills the key space.
const FILL_DEPTH: u64 = 64;

/// What one connection measured.
#[derive(Debug, Default)]
struct Measured {
    /// Latency of each call, in nanoseconds.
    latencies: Vec<u64>,
    /// Calls that failed, and the first error.
    errors: u64,
    first_error: Option<String>,
}

fn bench(node: &Endpoint, args: BenchArgs) -> Result<(), String> {
    if !(0.0..=1.0).contains(&args.get_ratio) {
        return Err(format!("--get-ratio {} is not in 0..=1", args.get_ratio));
    }
    if args.connections == 0 || args.depth == 0 || args.keys == 0 {
        return Err("--connections, --depth and --keys must be at least 1".to_string());
    }
    let rt = Runtime::builder()
        .placement(args.cores.placement())
        .thread_name("kv-client")
        .build()
        .map_err(|e| e.to_string())?;
    let cores = rt.core_count();
    // Fill the key space from one connection, FILL_DEPTH puts in flight,
    // so that gets find values.
    {
        let node = node.clone();
        let (keys, size) = (args.keys, args.value_size);
        rt.block_on(0, move || async move {
            let kv = KvClient::connect(&node).await.map_err(|e| e.to_string())?;
            let fillers: Vec<_> = (0..FILL_DEPTH)
                .map(|i| {
                    let kv = kv.clone();
                    spawn_local(async move {
                        let value = vec![b'v'; size];
                        for k in (i..keys).step_by(FILL_DEPTH as usize) {
                            kv.put(format!("key:{k}").as_bytes(), &value, None).await?;
                        }
                        Ok::<(), KvError>(())
                    })
                })
                .collect();
            let mut result = Ok(());
            for f in fillers {
                match f.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => result = result.and(Err(e.to_string())),
                    Err(e) => result = result.and(Err(e.to_string())),
                }
            }
            kv.close().await;
            result
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("filling the key space: {e}"))?;
    }
    let per_conn = args.requests / args.connections as u64;
    let extra = args.requests % args.connections as u64;
    let started = Instant::now();
    let handles: Vec<_> = (0..args.connections)
        .map(|i| {
            let node = node.clone();
            let args = args.clone();
            let n = per_conn + u64::from((i as u64) < extra);
            rt.spawn_on(i % cores, move || connection_load(node, args, i as u64, n))
        })
        .collect();
    let mut all = Measured::default();
    for h in handles {
        let m = h.join().map_err(|e| e.to_string())??;
        all.latencies.extend(m.latencies);
        all.errors += m.errors;
        all.first_error = all.first_error.or(m.first_error);
    }
    let elapsed = started.elapsed();
    rt.shutdown(Duration::from_secs(1));
    let ok = all.latencies.len();
    all.latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if ok == 0 {
            return 0.0;
        }
        let i = ((ok as f64 * p).ceil() as usize).clamp(1, ok) - 1;
        all.latencies[i] as f64 / 1000.0
    };
    println!(
        "kv-client bench: {} connections x depth {}, {:.0}% gets, {} keys of {} bytes",
        args.connections,
        args.depth,
        args.get_ratio * 100.0,
        args.keys,
        args.value_size
    );
    println!(
        "ops: {ok}  errors: {}  elapsed: {:.3}s  ops/s: {:.0}",
        all.errors,
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency us: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
    match all.first_error {
        Some(e) => Err(format!("{} calls failed; the first: {e}", all.errors)),
        None => Ok(()),
    }
}

/// One connection's share: `requests` calls, `depth` at a time.
async fn connection_load(
    node: Endpoint,
    args: BenchArgs,
    seed: u64,
    requests: u64,
) -> Result<Measured, String> {
    let kv = KvClient::connect(&node)
        .await
        .map_err(|e| format!("connecting to {node}: {e}"))?;
    let left = Rc::new(RefCell::new(requests));
    let measured = Rc::new(RefCell::new(Measured {
        latencies: Vec::with_capacity(usize::try_from(requests).unwrap_or(0)),
        ..Measured::default()
    }));
    let workers: Vec<_> = (0..args.depth)
        .map(|w| {
            let (kv, left, measured) = (kv.clone(), left.clone(), measured.clone());
            let args = args.clone();
            spawn_local(async move {
                let mut rng = Rng::new(seed * 1_000_003 + w as u64 + 1);
                let value = vec![b'w'; args.value_size];
                let threshold = (args.get_ratio * u32::MAX as f64) as u64;
                loop {
                    {
                        let mut left = left.borrow_mut();
                        if *left == 0 {
                            return;
                        }
                        *left -= 1;
                    }
                    let key = format!("key:{}", rng.next() % args.keys);
                    let get = (rng.next() & u64::from(u32::MAX)) < threshold;
                    let start = Instant::now();
                    let result = if get {
                        kv.get(key.as_bytes()).await.map(drop)
                    } else {
                        kv.put(key.as_bytes(), &value, None).await
                    };
                    let took = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    let mut m = measured.borrow_mut();
                    match result {
                        Ok(()) => m.latencies.push(took),
                        Err(e) => {
                            m.errors += 1;
                            if m.first_error.is_none() {
                                m.first_error = Some(e.to_string());
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await
            .map_err(|e| format!("a load task of connection {seed} failed: {e}"))?;
    }
    kv.close().await;
    let measured = std::mem::take(&mut *measured.borrow_mut());
    Ok(measured)
}

/// xorshift64*: enough to spread keys and mix operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
