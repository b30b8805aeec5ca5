//! The event loop of one core.
//!
//! One turn:
//!
//! 1. run the tasks that are ready now (tasks woken during this step run next
//!    turn);
//! 2. drop resources of finished abandoned operations (outside any borrow);
//! 3. re-arm multishot receives that stopped for lack of buffers, if buffers
//!    are back;
//! 4. if the wake flag is set, drain the control queue (closures from other
//!    threads, cross-thread wakes, the shutdown request);
//! 5. drain the inbound mesh rings (closures from other cores, up to 64 per
//!    ring), and if an eventfd doorbell raised the pending flag, wake the
//!    typed-channel receivers so they re-check;
//! 6. one `io_uring_enter`: non-blocking if tasks are ready, otherwise as the
//!    idle strategy says (parking runs the park handshake on every inbound
//!    mesh ring first, so senders know to ring);
//! 7. dispatch every completion to its slot, waking tasks; MSG_RING doorbells
//!    wake the typed-channel receivers they name, failed ones fall back to the
//!    target's eventfd.

use std::any::Any;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{run_guarded, CoreExit, IdleStrategy};
use crate::context::Context;
use crate::executor::Executor;
use crate::mailbox::Mesh;
use crate::remote::Shared;
use crate::stats::Stats;

/// Everything one core owns. Private to the loop: other layers reach their
/// own part through their accessors while the loop runs.
pub(super) struct Core {
    pub(super) stats: Stats,
    pub(super) context: Context,
    pub(super) driver: crate::driver::Context,
    pub(super) exec: Executor,
    pub(super) mesh: Mesh,
    pub(super) shared: Arc<Shared>,
    pub(super) idle: IdleStrategy,
    pub(super) wait_batch: Option<(u32, Duration)>,
    /// Time every loop turn (one clock read per turn) into the `loop_turn`
    /// histogram.
    pub(super) loop_timing: bool,
}

impl Core {
    /// Publishes every subsystem, runs the loop, winds down; returns what
    /// the core reports (a panic of the loop or of its winding down is
    /// logged here and reported as `panicked`).
    pub(super) fn run_to_end(self) -> CoreExit {
        let (outcome, finished) = self.stats.enter(|| {
            self.context.enter(|| {
                self.driver.enter(|| {
                    self.exec.enter(|| {
                        self.mesh.enter(|| {
                            // User code runs inside the loop (task polls are
                            // caught already; closures and drops are caught
                            // here too): whatever happens, the loop's end
                            // must reach `finish` and the leak-or-free
                            // decision below, or memory the kernel or other
                            // cores still use would be freed.
                            let outcome =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    self.run()
                                }));
                            match &outcome {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => {
                                    tracing::error!(error = %e, "io_uring_enter failed; core stops")
                                }
                                Err(panic) => tracing::error!(
                                    core = self.context.index(),
                                    panic = panic_message(panic.as_ref()),
                                    "core loop panicked; the core stops (work sent to it \
                                     fails from now on), the other cores keep running"
                                ),
                            }
                            let finished =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    self.finish(outcome.is_err())
                                }));
                            if let Err(panic) = &finished {
                                tracing::error!(
                                    core = self.context.index(),
                                    panic = panic_message(panic.as_ref()),
                                    "core panicked while winding down; its buffer memory is \
                                     leaked rather than freed"
                                );
                            }
                            (outcome, finished)
                        })
                    })
                })
            })
        });
        // Closures that arrived too late are dropped here, outside the
        // subsystems' scopes (a channel sender they own rings by eventfd),
        // which reports their remote handles as cancelled.
        self.shared.queue().close();
        let mut exit = finished.unwrap_or(CoreExit {
            tasks_aborted: 0,
            ops_leaked: usize::MAX,
            panicked: true,
        });
        exit.panicked |= outcome.is_err();
        let Core { driver, .. } = self;
        driver.close(exit.ops_leaked);
        exit
    }

    fn run(&self) -> io::Result<()> {
        // Start of the current turn's busy time (loop timing only).
        let mut turn_start = self.loop_timing.then(Instant::now);
        loop {
            Stats::add(&self.stats.loop_turns, 1);
            self.exec.run_ready();
            self.bury();
            self.driver.rearm_starved();
            if self.shared.queue().is_notified() {
                self.drain_remote();
            }
            let received = self
                .mesh
                .drain(|f| run_guarded(|| f.run(), "a closure posted to this core"));
            if received > 0 {
                Stats::add(&self.stats.mailbox_received, received as u64);
            }
            self.mesh.take_pending();
            if let Some(deadline) = self.context.shutdown_deadline() {
                if self.exec.task_count() == 0 || Instant::now() >= deadline {
                    return Ok(());
                }
            }
            if self.exec.has_ready() {
                self.driver.driver.borrow_mut().enter(false)?;
                self.dispatch();
                if let Some(start) = turn_start {
                    let now = Instant::now();
                    self.stats.loop_turn.record(now - start);
                    turn_start = Some(now);
                }
            } else {
                // The park path reads the clock anyway (around the wait, for
                // the `park` histogram); the turn's busy time ends where the
                // wait begins, and the next turn starts when it ends.
                let parked_at = Instant::now();
                if let Some(start) = turn_start {
                    self.stats.loop_turn.record(parked_at - start);
                }
                if let Some(beat) = self.exec.beat() {
                    beat.idle();
                }
                self.idle_wait()?;
                if let Some(beat) = self.exec.beat() {
                    beat.turn();
                }
                let woke = Instant::now();
                self.stats.park.record(woke - parked_at);
                if turn_start.is_some() {
                    turn_start = Some(woke);
                }
                self.dispatch();
            }
        }
    }

    /// Waits for completions as the idle strategy says. Before blocking, the
    /// park handshake runs on every inbound mesh ring, so that senders know
    /// to ring the doorbell; a ring that turns out non-empty cancels the park.
    fn idle_wait(&self) -> io::Result<()> {
        let shutting_down = self.context.shutdown_deadline().is_some();
        if self.idle == IdleStrategy::Poll && !shutting_down {
            return self.driver.driver.borrow_mut().enter(false);
        }
        if !self.mesh.prepare_park() {
            return self.driver.driver.borrow_mut().enter(false);
        }
        let r = self.idle_block(shutting_down);
        self.mesh.cancel_park();
        r
    }

    fn idle_block(&self, shutting_down: bool) -> io::Result<()> {
        let mut driver = self.driver.driver.borrow_mut();
        if shutting_down {
            // Wake at least every few milliseconds to check the deadline.
            Stats::add(&self.stats.parks, 1);
            return driver.enter_timeout(Duration::from_millis(5));
        }
        match self.idle {
            IdleStrategy::Park => {
                Stats::add(&self.stats.parks, 1);
                match self.batch_target() {
                    Some((want, max_wait)) => driver.enter_batch(want, max_wait),
                    None => driver.enter(true),
                }
            }
            IdleStrategy::Poll => driver.enter(false),
            IdleStrategy::Spin(budget) => {
                let start = Instant::now();
                loop {
                    driver.enter(false)?;
                    if driver.has_completions() || self.shared.queue().is_notified() {
                        return Ok(());
                    }
                    if start.elapsed() >= budget {
                        Stats::add(&self.stats.parks, 1);
                        return driver.enter(true);
                    }
                    std::hint::spin_loop();
                }
            }
        }
    }

    /// With many streams receiving, wait for several completions (bounded in
    /// time) rather than the first one: each wake-up then carries more data
    /// per connection, and fewer, larger sends follow. A lone connection
    /// (ping-pong) still wakes on its first completion.
    fn batch_target(&self) -> Option<(u32, Duration)> {
        let (max, max_wait) = self.wait_batch?;
        let want = (self.driver.receiving_streams() / 4).min(max as usize) as u32;
        (want > 1).then_some((want, max_wait))
    }

    /// Dispatches completions; hands MSG_RING doorbells to the mesh.
    fn dispatch(&self) {
        if !self.driver.dispatch() {
            return;
        }
        let Some((doorbells, failed)) = self.driver.take_doorbells() else {
            return;
        };
        Stats::add(&self.stats.doorbells_received, doorbells.len() as u64);
        for token in doorbells {
            self.mesh.wake_waiter(token);
        }
        for target in failed {
            if let Some(peer) = self.mesh.peers.get(target) {
                peer.ring_eventfd();
            }
        }
    }

    /// Drops resources of finished abandoned operations, outside any borrow.
    fn bury(&self) {
        let grave = self.driver.take_graveyard();
        if grave.is_empty() {
            return;
        }
        run_guarded(
            move || drop(grave),
            "dropping a finished operation's buffer",
        );
    }

    fn drain_remote(&self) {
        let Some(pending) = self.shared.queue().take() else {
            return;
        };
        Stats::add(&self.stats.remote_wakeups, pending.wakes.len() as u64);
        for key in pending.wakes {
            self.exec.schedule(key);
        }
        for f in pending.closures {
            run_guarded(f, "a closure sent to this core");
        }
        if let Some(deadline) = pending.shutdown {
            if self.context.start_shutdown(deadline) {
                tracing::debug!(core = self.context.index(), "shutdown started");
                self.exec.schedule_all();
            }
        }
        if let Some(message) = pending.fault {
            // Deliberately outside every panic guard: this is the loop
            // itself failing, as a bug in the runtime would.
            panic!("{message}");
        }
    }

    /// Drops remaining tasks and waits (bounded) for the kernel to finish
    /// every operation and to consume every queued SQE, so that no buffer is
    /// freed, and no descriptor an SQE names is closed, while still in use.
    /// `after_panic`: the loop ended by panicking (rather than at the
    /// shutdown deadline or for lack of tasks).
    fn finish(&self, after_panic: bool) -> CoreExit {
        if let Some(beat) = self.exec.beat() {
            beat.idle();
        }
        self.shared.mark_stopped();
        // Callers on other cores waiting for a `submit_to` reply from this
        // core re-check it: work still in this core's inbound rings will
        // never run, and nothing else would wake them.
        self.mesh.tell_peers_stopped();
        let tasks_aborted = self.exec.drop_all();
        if tasks_aborted > 0 && after_panic {
            tracing::warn!(
                core = self.context.index(),
                tasks_aborted,
                "the core's loop panicked; dropped its unfinished tasks"
            );
        } else if tasks_aborted > 0 {
            tracing::warn!(
                core = self.context.index(),
                tasks_aborted,
                "shutdown deadline passed; dropped unfinished tasks"
            );
        }
        self.bury();
        self.driver.driver.borrow_mut().cancel_all();
        // Always enter once: dropping tasks may have queued SQEs (doorbells
        // telling other cores a channel closed) even with no op in the table.
        let _ = self.driver.driver.borrow_mut().enter(false);
        self.dispatch();
        let start = Instant::now();
        loop {
            let busy = {
                let mut d = self.driver.driver.borrow_mut();
                d.ops_in_kernel() > 0 || d.has_unsubmitted()
            };
            if !busy || start.elapsed() >= Duration::from_secs(2) {
                break;
            }
            if self
                .driver
                .driver
                .borrow_mut()
                .enter_timeout(Duration::from_millis(10))
                .is_err()
            {
                break;
            }
            self.dispatch();
            self.bury();
        }
        let ops_leaked = self.driver.driver.borrow().ops_in_kernel();
        CoreExit {
            tasks_aborted,
            ops_leaked,
            panicked: false,
        }
    }
}

/// The message of a panic payload (`panic!` with a literal or a format).
pub(super) fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(a panic payload that is not a string)"
    }
}
