//! [`RuntimeBuilder`]: the knobs of a runtime and its start-up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::placement::Placement;
use super::{CoreHandle, Runtime};
use crate::core::{run_core, CoreConfig, IdleStrategy};
use crate::driver::{IoConfig, RingConfig};
use crate::error::{BuildError, StartError};
use crate::mailbox::build_mesh;
use crate::mailbox::doorbell::{Doorbell, Peer};
use crate::remote::Shared;

/// Builder of a [`Runtime`]; see each method for the knob's memory cost.
#[derive(Clone, Debug)]
pub struct RuntimeBuilder {
    placement: Placement,
    ring_entries: u32,
    idle: IdleStrategy,
    sqpoll_idle_ms: Option<u32>,
    recv_buffers: u16,
    recv_buffer_size: u32,
    send_buffers: u16,
    send_buffer_size: u32,
    io: IoConfig,
    doorbell: Doorbell,
    mailbox_capacity: usize,
    wait_batch: Option<(u32, Duration)>,
    loop_timing: bool,
    metrics: Option<SocketAddr>,
    stall_threshold: Option<Duration>,
    thread_name: String,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            placement: Placement::AllOnline,
            ring_entries: 1024,
            idle: IdleStrategy::DEFAULT,
            sqpoll_idle_ms: None,
            recv_buffers: 1024,
            recv_buffer_size: 16 * 1024,
            send_buffers: 64,
            send_buffer_size: 64 * 1024,
            io: IoConfig {
                recv_multishot: true,
                fixed_send: false,
                zc_threshold: None,
            },
            doorbell: Doorbell::MsgRing,
            mailbox_capacity: 1024,
            wait_batch: Some((16, Duration::from_micros(50))),
            loop_timing: true,
            metrics: None,
            stall_threshold: None,
            thread_name: "ringwire-core".to_string(),
        }
    }
}

impl RuntimeBuilder {
    /// Where to run cores. Default: [`Placement::AllOnline`].
    pub fn placement(mut self, placement: Placement) -> Self {
        self.placement = placement;
        self
    }

    /// Shorthand for `placement(Placement::Cpus(cpus))`.
    pub fn cpus(self, cpus: impl Into<Vec<usize>>) -> Self {
        self.placement(Placement::Cpus(cpus.into()))
    }

    /// Submission queue entries per ring (power of two, up to 32768; the
    /// completion queue gets four times as many). Memory: about 64 bytes per
    /// SQ entry plus 64 per CQ entry (16 + 16 per entry in the rings, the rest
    /// in kernel bookkeeping), per core. Default: 1024.
    pub fn ring_entries(mut self, entries: u32) -> Self {
        self.ring_entries = entries;
        self
    }

    /// What an idle core does. Default: [`IdleStrategy::DEFAULT`] (spin
    /// 50 us, then park).
    pub fn idle(mut self, idle: IdleStrategy) -> Self {
        self.idle = idle;
        self
    }

    /// Use a kernel submission-polling thread per ring that sleeps after
    /// `idle_ms` without work. Costs one kernel thread (and, while busy, a
    /// CPU) per core; turns off DEFER_TASKRUN, which cannot be combined with
    /// it. Default: off.
    pub fn sqpoll(mut self, idle_ms: Option<u32>) -> Self {
        self.sqpoll_idle_ms = idle_ms;
        self
    }

    /// Receive buffers per core in the provided buffer ring (power of two, up
    /// to 32768). Memory: `count * size` bytes per core, plus 16 bytes per
    /// buffer of pinned ring. Default: 1024.
    pub fn recv_buffers(mut self, count: u16) -> Self {
        self.recv_buffers = count;
        self
    }

    /// Size of each receive buffer in bytes; a multiple of 4096 keeps every
    /// buffer page aligned. Default: 16 KiB (so 16 MiB per core by default).
    pub fn recv_buffer_size(mut self, size: u32) -> Self {
        self.recv_buffer_size = size;
        self
    }

    /// Registered (fixed) send buffers per core, handed out as
    /// [`crate::SendBuf`]. Memory: `count * size` bytes per core, pinned, so
    /// it counts against the locked-memory limit (`ulimit -l`) unless the
    /// process has CAP_IPC_LOCK. 0 disables the pool. Default: 64.
    pub fn send_buffers(mut self, count: u16) -> Self {
        self.send_buffers = count;
        self
    }

    /// Size of each registered send buffer. Default: 64 KiB (4 MiB per core
    /// with the default count).
    pub fn send_buffer_size(mut self, size: u32) -> Self {
        self.send_buffer_size = size;
        self
    }

    /// Receive with one multishot `RECV` per socket (default, true) or with
    /// one single-shot `RECV` per arrival (false; kept for A/B measurement).
    /// Both pick buffers from the provided buffer ring.
    pub fn recv_multishot(mut self, on: bool) -> Self {
        self.io.recv_multishot = on;
        self
    }

    /// Send [`crate::SendBuf`]s through the registered-buffer path
    /// (`WRITE_FIXED`) rather than a plain `SEND` of the same memory.
    /// Default: false: on this project's loopback measurements `WRITE_FIXED`
    /// on a socket gained 8% at 64 B and lost 5-40% from 1 KiB up (sockets
    /// copy the bytes either way; see docs/BENCHMARKS.md). The pool buffers
    /// are pre-registered either way, so the path can be chosen per
    /// deployment.
    pub fn fixed_send(mut self, on: bool) -> Self {
        self.io.fixed_send = on;
        self
    }

    /// Sends of at least this many bytes use `SEND_ZC` (the buffer is given
    /// back only after the kernel's release notification). `None` turns
    /// zero-copy sends off. Default: `None`, because on loopback the kernel
    /// copies anyway and `SEND_ZC` measured slower than a plain send at every
    /// size (see docs/BENCHMARKS.md); over a real NIC, large sends may gain.
    pub fn zero_copy_threshold(mut self, bytes: Option<usize>) -> Self {
        self.io.zc_threshold = bytes;
        self
    }

    /// How a core wakes a parked peer for mailbox traffic. Default:
    /// [`Doorbell::MsgRing`].
    pub fn doorbell(mut self, doorbell: Doorbell) -> Self {
        self.doorbell = doorbell;
        self
    }

    /// Slots in each core-to-core mesh ring (one ring per ordered pair of
    /// cores, rounded up to a power of two). Memory: 16 bytes per slot per
    /// pair, so `cores * (cores - 1) * capacity * 16` bytes. Default: 1024.
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.mailbox_capacity = capacity;
        self
    }

    /// When parking with many streams receiving, wait for up to `max`
    /// completions (a quarter of the receiving streams, at most `max`) but no
    /// longer than `max_wait`, instead of waking on the first. Fewer, fuller
    /// wake-ups mean fewer and larger sends under load; a single busy
    /// connection still wakes at once. `None` always wakes on the first
    /// completion. Default: `Some((16, 50 µs))`.
    pub fn wait_batch(mut self, batch: Option<(u32, Duration)>) -> Self {
        self.wait_batch = batch;
        self
    }

    /// Time every event loop turn into the `loop_turn` histogram of
    /// [`CoreStats`](crate::CoreStats) (`ringwire_loop_turn_seconds`). Costs
    /// one clock read (a vDSO call) per busy turn; time parked is measured
    /// either way, since parking already costs a system call. Default: true.
    pub fn loop_timing(mut self, on: bool) -> Self {
        self.loop_timing = on;
        self
    }

    /// Serve the metrics endpoint on `addr` (`GET /metrics`: Prometheus text
    /// format; `GET /`: a per-core summary), from a task on core 0. The
    /// address is bound at [`build`](Self::build), whose error says so if
    /// it cannot be; port 0 picks a free port, which
    /// [`Runtime::metrics_addr`] tells. See [`crate::metrics`]. Default:
    /// none.
    pub fn metrics(mut self, addr: impl Into<Option<SocketAddr>>) -> Self {
        self.metrics = addr.into();
        self
    }

    /// Report a task that holds its core for at least `threshold` without
    /// returning to the loop (or `None`: no stall detector). A watchdog
    /// thread looks at every core a few times per threshold (at most every
    /// 250 ms); on a stall it counts it (`stalls_total`), captures the core
    /// thread's stack with a signal (`SIGRTMIN+3`, left alone if the
    /// process handles it already) and logs a warning with the task (its
    /// name from [`spawn_local_named`](crate::executor::spawn_local_named),
    /// its id and where it was spawned), how long it held the core, and the
    /// stack. The core's side costs a store before and a load after each
    /// task poll: no clock read, no system call. Default: `None` (off):
    /// the signal and the watchdog thread are the process's business, so a
    /// program turns them on (the example nodes with `--stall-ms`).
    pub fn stall_threshold(mut self, threshold: Option<Duration>) -> Self {
        self.stall_threshold = threshold;
        self
    }

    /// Name prefix of the core threads (the core index is appended).
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = name.into();
        self
    }

    /// Starts the cores. Each core thread pins itself, creates its ring and
    /// registers its buffers; the first failure is returned (with the other
    /// cores stopped) as a [`BuildError`] that says what went wrong and how
    /// to fix it.
    pub fn build(self) -> Result<Runtime, BuildError> {
        let cpus = self.placement.resolve()?;
        let ring = RingConfig {
            entries: self.ring_entries,
            sqpoll_idle_ms: self.sqpoll_idle_ms,
            buf_count: self.recv_buffers,
            buf_size: self.recv_buffer_size,
            send_count: self.send_buffers,
            send_size: self.send_buffer_size,
        };
        let shareds = (0..cpus.len())
            .map(|core| Shared::new().map_err(|error| BuildError::EventFd { core, error }))
            .collect::<Result<Vec<_>, _>>()?;
        let peers: Arc<Vec<Arc<Peer>>> = Arc::new(
            shareds
                .iter()
                .enumerate()
                .map(|(i, s)| Arc::new(Peer::new(i, s.clone())))
                .collect(),
        );
        let mesh = build_mesh(cpus.len(), self.mailbox_capacity);
        let watches: Option<Vec<_>> = self
            .stall_threshold
            .map(|_| (0..cpus.len()).map(crate::stall::Watch::new).collect());
        let mut rt = Runtime {
            cores: Vec::with_capacity(cpus.len()),
            peers: peers.clone(),
            metrics_addr: None,
            watchdog: None,
        };
        for ((index, &cpu), (shared, (mesh_out, mesh_in))) in
            cpus.iter().enumerate().zip(shareds.into_iter().zip(mesh))
        {
            let (tx, rx) = std::sync::mpsc::channel();
            let cfg = CoreConfig {
                index,
                cpu,
                ring: ring.clone(),
                io: self.io,
                idle: self.idle,
                doorbell: self.doorbell,
                peers: peers.clone(),
                mesh_out,
                mesh_in,
                wait_batch: self.wait_batch,
                loop_timing: self.loop_timing,
                watch: watches.as_ref().map(|w| w[index].clone()),
            };
            let thread_shared = shared.clone();
            let spawned = thread::Builder::new()
                .name(format!("{}-{index}", self.thread_name))
                .spawn(move || run_core(cfg, thread_shared, tx));
            let thread = match spawned {
                Ok(t) => t,
                Err(error) => {
                    rt.shutdown(Duration::from_secs(1));
                    return Err(BuildError::ThreadSpawn { core: index, error });
                }
            };
            let started = rx.recv().unwrap_or(Err(StartError::ThreadDied));
            match started {
                Ok(features) => rt.cores.push(CoreHandle {
                    shared,
                    cpu,
                    features,
                    thread: Some(thread),
                }),
                Err(error) => {
                    let _ = thread.join();
                    rt.shutdown(Duration::from_secs(1));
                    return Err(BuildError::Core {
                        core: index,
                        cpu,
                        error,
                    });
                }
            }
        }
        if let (Some(threshold), Some(watches)) = (self.stall_threshold, watches) {
            match crate::stall::watchdog::Watchdog::start(watches, threshold) {
                Ok(w) => rt.watchdog = Some(w),
                Err(error) => {
                    rt.shutdown(Duration::from_secs(1));
                    return Err(BuildError::Watchdog { error });
                }
            }
        }
        if let Some(addr) = self.metrics {
            let bound = rt.block_on(0, move || async move {
                // No SO_REUSEPORT: a second process asking for the same
                // address must fail, not split the scrapes.
                let opts = crate::net::TcpListenOptions::default().reuse_port(false);
                let listener = crate::net::TcpListener::bind_with(addr, &opts)?;
                let local = listener.local_addr();
                crate::executor::spawn_local(crate::metrics::serve(listener));
                Ok::<_, std::io::Error>(local)
            });
            let bound = bound
                .unwrap_or_else(|_| Err(std::io::Error::other("core 0 stopped before binding")));
            match bound {
                Ok(local) => {
                    tracing::info!(addr = %local, "metrics endpoint listening");
                    rt.metrics_addr = Some(local);
                }
                Err(error) => {
                    rt.shutdown(Duration::from_secs(1));
                    return Err(BuildError::Metrics { addr, error });
                }
            }
        }
        Ok(rt)
    }
}
