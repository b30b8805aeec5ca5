//! The single-threaded task executor of one core.
//!
//! Tasks are `!Send` futures stored in a slab; a ready queue holds the keys
//! of tasks to poll. A task's [`Waker`] is a plain integer (the executor's id
//! in the upper 32 bits, the task key in the lower 32), so cloning and dropping
//! it costs nothing. Waking on the owning core pushes the key on the ready
//! queue; waking from another thread goes through that core's control queue
//! (`remote`). A stale waker of a finished task whose slot was
//! reused causes one spurious poll, which futures tolerate.
//!
//! Calls: [`spawn_local`] from any task on a core; the core's loop publishes
//! its `Executor` for the core's lifetime and calls `Executor::run_ready`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, Location, UnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use slab::Slab;

use crate::scoped::scoped_thread_local;
use crate::stall::{Beat, TaskInfo};

type BoxFuture = Pin<Box<dyn Future<Output = ()>>>;

struct Task {
    future: Option<BoxFuture>,
    scheduled: bool,
    /// Where it was spawned and its name, for stall reports.
    spawned_at: &'static Location<'static>,
    name: Option<Box<str>>,
}

/// Tasks of one core and the queue of those ready to run.
pub(crate) struct Executor {
    id: u32,
    tasks: RefCell<Slab<Task>>,
    ready: RefCell<VecDeque<u32>>,
    /// This core's side of the stall detector, when one runs.
    beat: Option<Beat>,
}

scoped_thread_local!(static CURRENT: Executor);

/// Runs `f` with the current core's executor.
///
/// # Panics
///
/// Off a ringwire core thread.
fn with<R>(f: impl FnOnce(&Executor) -> R) -> R {
    CURRENT.with(f)
}

/// Stalls the stall detector counted on the current core (0 when none
/// runs).
///
/// # Panics
///
/// Off a ringwire core thread.
pub(crate) fn stalls() -> u64 {
    with(|e| e.beat().map_or(0, Beat::stalls))
}

/// Number of live tasks on the current core.
///
/// # Panics
///
/// Off a ringwire core thread.
pub(crate) fn task_count() -> usize {
    with(Executor::task_count)
}

impl Executor {
    /// Publishes `self` as the current core's executor while `f` runs.
    pub(crate) fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.set(self, f)
    }

    /// An executor whose wakers carry `id` (the core's control queue is
    /// registered under the same id).
    pub(crate) fn new(id: u32, beat: Option<Beat>) -> Executor {
        Executor {
            id,
            tasks: RefCell::new(Slab::with_capacity(64)),
            ready: RefCell::new(VecDeque::with_capacity(64)),
            beat,
        }
    }

    /// This core's side of the stall detector, when one runs.
    pub(crate) fn beat(&self) -> Option<&Beat> {
        self.beat.as_ref()
    }

    /// Task `key` as a stall report names it.
    #[cold]
    fn task_info(&self, key: u32) -> Option<TaskInfo> {
        let tasks = self.tasks.borrow();
        let task = tasks.get(key as usize)?;
        Some(TaskInfo {
            key,
            name: task.name.as_deref().map(str::to_string),
            spawned_at: Some(task.spawned_at),
        })
    }

    /// Number of live tasks.
    pub(crate) fn task_count(&self) -> usize {
        self.tasks.borrow().len()
    }

    /// Whether any task is ready to run.
    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.borrow().is_empty()
    }

    /// Adds a task and schedules it.
    pub(crate) fn spawn(
        &self,
        future: BoxFuture,
        spawned_at: &'static Location<'static>,
        name: Option<Box<str>>,
    ) {
        let key = self.tasks.borrow_mut().insert(Task {
            future: Some(future),
            scheduled: true,
            spawned_at,
            name,
        });
        let key = u32::try_from(key).unwrap_or_else(|_| too_many_tasks());
        self.ready.borrow_mut().push_back(key);
    }

    /// Schedules task `key` if it exists and is not already scheduled.
    pub(crate) fn schedule(&self, key: u32) {
        let mut tasks = self.tasks.borrow_mut();
        if let Some(task) = tasks.get_mut(key as usize) {
            if !task.scheduled {
                task.scheduled = true;
                self.ready.borrow_mut().push_back(key);
            }
        }
    }

    /// Schedules every task (used when shutdown starts, so that every task
    /// sees it).
    pub(crate) fn schedule_all(&self) {
        let keys: Vec<u32> = self.tasks.borrow().iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            self.schedule(key);
        }
    }

    /// Polls the tasks that are ready now (not those that become ready while
    /// this runs, so that completions get reaped between rounds). Returns how
    /// many were polled.
    pub(crate) fn run_ready(&self) -> usize {
        let n = self.ready.borrow().len();
        for _ in 0..n {
            let Some(key) = self.ready.borrow_mut().pop_front() else {
                break;
            };
            let future = {
                let mut tasks = self.tasks.borrow_mut();
                match tasks.get_mut(key as usize) {
                    Some(task) => {
                        task.scheduled = false;
                        task.future.take()
                    }
                    None => None,
                }
            };
            let Some(mut future) = future else { continue };
            let waker = waker_for(self.id, key);
            let mut cx = Context::from_waker(&waker);
            let marker = self.beat.as_ref().map(|b| b.poll(key));
            let poll = future.as_mut().poll(&mut cx);
            if let (Some(beat), Some(marker)) = (&self.beat, marker) {
                if beat.polled(marker) {
                    beat.report_end(marker, self.task_info(key));
                }
            }
            match poll {
                Poll::Ready(()) => {
                    self.tasks.borrow_mut().remove(key as usize);
                    drop(future);
                }
                Poll::Pending => {
                    if let Some(task) = self.tasks.borrow_mut().get_mut(key as usize) {
                        task.future = Some(future);
                    }
                }
            }
        }
        // Back to loop work: a long stretch from here on is not the last
        // task's.
        if let Some(beat) = &self.beat {
            beat.turn();
        }
        n
    }

    /// Drops every task (their futures, and so their operations, which hand
    /// their resources to the driver). Returns how many there were.
    pub(crate) fn drop_all(&self) -> usize {
        let mut dropped = 0;
        loop {
            // Dropping a future may spawn or drop other tasks; take them out
            // first so that no borrow is held while user code runs.
            let futures: Vec<BoxFuture> = {
                let mut tasks = self.tasks.borrow_mut();
                let v = tasks.drain().filter_map(|t| t.future).collect();
                self.ready.borrow_mut().clear();
                v
            };
            if futures.is_empty() {
                return dropped;
            }
            dropped += futures.len();
            // A panicking `Drop` of one task must not leave the others (or
            // the core's winding down, which cancels kernel operations
            // next) undone.
            for f in futures {
                if std::panic::catch_unwind(AssertUnwindSafe(move || drop(f))).is_err() {
                    tracing::error!("dropping an unfinished task panicked; the others are dropped");
                }
            }
        }
    }
}

#[cold]
fn too_many_tasks() -> ! {
    panic!("more than 2^32 tasks on one ringwire core")
}

// ---------------------------------------------------------------------------
// Wakers

fn waker_for(exec_id: u32, key: u32) -> Waker {
    let data = ((exec_id as usize) << 32) | key as usize;
    // SAFETY: the vtable functions treat the data pointer as a plain integer
    // and never dereference it, so any value is valid and the waker is
    // trivially `Send + Sync`.
    unsafe { Waker::from_raw(RawWaker::new(data as *const (), &VTABLE)) }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone_raw, wake_raw, wake_raw, drop_raw);

fn clone_raw(data: *const ()) -> RawWaker {
    RawWaker::new(data, &VTABLE)
}

fn wake_raw(data: *const ()) {
    let data = data as usize;
    let exec_id = (data >> 32) as u32;
    let key = data as u32;
    let local = CURRENT
        .try_with(|exec| {
            if exec.id == exec_id {
                exec.schedule(key);
                true
            } else {
                false
            }
        })
        .unwrap_or(false);
    if !local {
        crate::remote::wake_remote(exec_id, key);
    }
}

fn drop_raw(_: *const ()) {}

// ---------------------------------------------------------------------------
// Spawning and joining

/// Error of a task that did not produce its output.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The task panicked.
    #[error("task panicked: {0}")]
    Panicked(String),
    /// The task was dropped before it finished (core shut down).
    #[error("task was cancelled before it finished")]
    Cancelled,
}

struct JoinState<T> {
    result: Option<Result<T, JoinError>>,
    waker: Option<Waker>,
}

/// Awaits the output of a task started with [`spawn_local`].
///
/// Dropping the handle detaches the task; it keeps running.
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> JoinHandle<T> {
    /// Whether the task has finished (its output is waiting).
    pub fn is_finished(&self) -> bool {
        self.state.borrow().result.is_some()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.state.borrow_mut();
        match st.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Reports cancellation to the join handle if the task is dropped unfinished.
struct CompleteOnDrop<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> Drop for CompleteOnDrop<T> {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.state.borrow_mut();
            if st.result.is_none() {
                st.result = Some(Err(JoinError::Cancelled));
            }
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Spawns a `!Send` future on the current core and returns a handle to its
/// output.
///
/// A panic inside the task is caught and reported through the handle; the
/// core keeps running.
///
/// # Panics
///
/// When called outside a ringwire core thread.
#[track_caller]
pub fn spawn_local<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    spawn_inner(future, Location::caller(), None)
}

/// Like [`spawn_local`], with a name that stall reports use (see
/// [`RuntimeBuilder::stall_threshold`](crate::RuntimeBuilder::stall_threshold)).
///
/// # Panics
///
/// When called outside a ringwire core thread.
#[track_caller]
pub fn spawn_local_named<F>(name: impl Into<String>, future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    spawn_inner(
        future,
        Location::caller(),
        Some(name.into().into_boxed_str()),
    )
}

fn spawn_inner<F>(
    future: F,
    spawned_at: &'static Location<'static>,
    name: Option<Box<str>>,
) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let state = Rc::new(RefCell::new(JoinState {
        result: None,
        waker: None,
    }));
    let guard = CompleteOnDrop {
        state: state.clone(),
    };
    let task = async move {
        let guard = guard;
        let out = CatchUnwind {
            inner: AssertUnwindSafe(future),
        }
        .await;
        guard.state.borrow_mut().result = Some(out);
        // `guard` drops here and wakes the joiner.
    };
    with(|exec| exec.spawn(Box::pin(task), spawned_at, name));
    JoinHandle { state }
}

/// Spawns `future` on the current core as one task and hands its result (or
/// its panic) to `on_done`. Used for work sent from other threads.
#[track_caller]
pub(crate) fn spawn_reporting<F, C>(future: F, on_done: C)
where
    F: Future + 'static,
    C: FnOnce(Result<F::Output, JoinError>) + 'static,
{
    let task = async move {
        let out = CatchUnwind {
            inner: AssertUnwindSafe(future),
        }
        .await;
        on_done(out);
    };
    let spawned_at = Location::caller();
    with(|exec| exec.spawn(Box::pin(task), spawned_at, None));
}

/// Catches a panic while polling the inner future.
struct CatchUnwind<F> {
    inner: F,
}

impl<F: Future + UnwindSafe> Future for CatchUnwind<F> {
    type Output = Result<F::Output, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `inner` is structurally pinned: it is never moved out of
        // `self` and `CatchUnwind` has no `Drop` impl or `Unpin` override.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.inner) };
        let mut cx = AssertUnwindSafe(cx);
        let mut inner = AssertUnwindSafe(inner);
        match std::panic::catch_unwind(move || inner.as_mut().poll(&mut cx)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_string());
                Poll::Ready(Err(JoinError::Panicked(msg)))
            }
        }
    }
}

/// Yields once to the executor, letting other ready tasks run.
pub async fn yield_now() {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                Poll::Ready(())
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
    YieldNow(false).await
}
