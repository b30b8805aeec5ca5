//! A core thread that panics outside task polling (injected with
//! `RuntimeHandle::inject_core_panic`, which makes the event loop itself
//! panic, as a bug in the runtime would): the panic is reported with the core
//! index and its message, work aimed at the dead core fails instead of
//! waiting forever (from other threads and from other cores, including calls
//! already in flight), the other cores keep running, and shutdown or drop
//! returns promptly with `cores_panicked == 1`.
//!
//! Every step that could hang runs under [`bounded`], so a hang fails the
//! test instead of blocking the run.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ringwire_runtime::mailbox::{self, MailboxError};
use ringwire_runtime::{
    current_core, spawn_local, submit_to, yield_now, Doorbell, JoinError, Placement, Runtime,
    RuntimeHandle,
};

/// How long any single step may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(20);

/// Runs `f` on its own thread; fails the test if it has not finished within
/// [`HANG`].
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(HANG) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what}: hung (no result after {HANG:?})"),
    }
}

/// Waits until core `core` has stopped (work sent to it is refused).
fn wait_until_stopped(handle: &RuntimeHandle, core: usize) {
    let start = Instant::now();
    loop {
        match handle.post(core, || {}) {
            Err(MailboxError::Closed(c)) => {
                assert_eq!(c, core);
                return;
            }
            Ok(()) => {}
            Err(e) => panic!("post to core {core}: {e}"),
        }
        assert!(start.elapsed() < HANG, "core {core} never stopped");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Everything the runtime logs in this test process (the cores log from
/// their own threads, so the subscriber is the global one).
fn log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        struct Capture;
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                log().lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(|| Capture)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        Mutex::new(Vec::new())
    })
}

fn logged() -> String {
    String::from_utf8_lossy(&log().lock().unwrap()).into_owned()
}

fn runtime(doorbell: Doorbell) -> Runtime {
    Runtime::builder()
        .placement(Placement::Unpinned(2))
        .doorbell(doorbell)
        .build()
        .unwrap()
}

/// Waits (bounded) until `flag` is set.
fn wait_for(flag: &AtomicBool, what: &str) {
    let start = Instant::now();
    while !flag.load(Ordering::Acquire) {
        assert!(start.elapsed() < HANG, "{what}: never happened");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_core_whose_loop_panics_is_reported_and_nothing_waits_for_it() {
    let _ = log();
    let rt = runtime(Doorbell::MsgRing);
    let handle = rt.handle();

    // Before the fault: a task on core 1 that never finishes, awaited from
    // this thread, and a call from core 0 whose work is running on core 1.
    let stuck = rt.spawn_on(1, std::future::pending::<()>);
    // And one whose drop panics when the dying core drops it.
    let drop_panics = rt.spawn_on(1, || async {
        let _guard = PanicOnDrop;
        std::future::pending::<()>().await
    });
    let running = Arc::new(AtomicBool::new(false));
    let in_flight = {
        let running = running.clone();
        rt.spawn_on(0, move || async move {
            submit_to(1, move || async move {
                running.store(true, Ordering::Release);
                std::future::pending::<u32>().await
            })
            .await
        })
    };
    wait_for(&running, "the call's work starting on core 1");

    // Core 1 busy in one task (not yielding), so what core 0 sends next
    // stays in core 1's inbound ring; the fault goes into its control queue.
    let spinning = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    let spinner = {
        let (spinning, release) = (spinning.clone(), release.clone());
        rt.spawn_on(1, move || async move {
            spinning.store(true, Ordering::Release);
            let start = Instant::now();
            while !release.load(Ordering::Acquire) && start.elapsed() < HANG {
                std::hint::spin_loop();
            }
        })
    };
    wait_for(&spinning, "core 1 spinning");
    handle.inject_core_panic(1).unwrap();
    const QUEUED: usize = 8;
    let sent = Arc::new(AtomicUsize::new(0));
    let queued = {
        let sent = sent.clone();
        rt.spawn_on(0, move || async move {
            let calls: Vec<_> = (0..QUEUED as u32)
                .map(|i| spawn_local(submit_to(1, move || async move { i })))
                .collect();
            // Each call sends its work on its first poll, which comes before
            // this task's second turn.
            yield_now().await;
            yield_now().await;
            sent.store(QUEUED, Ordering::Release);
            let mut out = Vec::new();
            for c in calls {
                out.push(c.await.unwrap());
            }
            out
        })
    };
    let start = Instant::now();
    while sent.load(Ordering::Acquire) < QUEUED {
        assert!(start.elapsed() < HANG, "core 0 never sent its calls");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Core 1 finishes the spinner, drains its control queue and panics
    // there, before it gets to its inbound ring.
    let died = Instant::now();
    release.store(true, Ordering::Release);
    wait_until_stopped(&handle, 1);
    let stopped_after = died.elapsed();

    // Work that was on core 1 or on its way there comes back as an error.
    // The spinner finished before the loop panicked: its result came back.
    let r = bounded("the spinner's handle", move || spinner.join());
    assert!(matches!(r, Ok(())), "{r:?}");
    let r = bounded("a task stuck on the dead core", move || stuck.join());
    assert!(matches!(r, Err(JoinError::Cancelled)), "{r:?}");
    let r = bounded("a task whose drop panics", move || drop_panics.join());
    assert!(matches!(r, Err(JoinError::Cancelled)), "{r:?}");
    let in_flight = bounded("a call whose work ran on the dead core", move || {
        in_flight.join()
    })
    .unwrap();
    assert!(
        matches!(
            in_flight,
            Err(MailboxError::Cancelled(1) | MailboxError::Closed(1))
        ),
        "{in_flight:?}"
    );
    let queued = bounded("calls left in the dead core's inbound ring", move || {
        queued.join()
    })
    .unwrap();
    assert_eq!(queued.len(), QUEUED);
    for r in &queued {
        assert_eq!(*r, Err(MailboxError::Closed(1)), "{queued:?}");
    }

    // New work aimed at the dead core fails at once, whoever sends it.
    let rt = Arc::new(rt);
    let r = {
        let rt = rt.clone();
        bounded("block_on on the dead core", move || {
            rt.block_on(1, || async { current_core() })
        })
    };
    assert!(matches!(r, Err(JoinError::Cancelled)), "{r:?}");
    assert!(matches!(
        handle.spawn_on(1, || async {}),
        Err(MailboxError::Closed(1))
    ));
    assert_eq!(handle.post(1, || {}), Err(MailboxError::Closed(1)));
    assert_eq!(handle.inject_core_panic(1), Err(MailboxError::Closed(1)));
    assert_eq!(
        handle.inject_core_panic(5),
        Err(MailboxError::NoSuchCore(5))
    );
    let from_core_0 = {
        let rt = rt.clone();
        bounded("posts from core 0 to the dead core", move || {
            rt.block_on(0, || async {
                let call = submit_to(1, || async { 1u32 }).await;
                let post = mailbox::post(1, || {}).await;
                let try_post = mailbox::try_post(1, || {}).map_err(|e| e.mailbox_error());
                // The live core still works, inline and for another thread.
                let here = submit_to(0, || async { current_core() }).await;
                (call, post, try_post, here)
            })
        })
    };
    assert_eq!(
        from_core_0.unwrap(),
        (
            Err(MailboxError::Closed(1)),
            Err(MailboxError::Closed(1)),
            Err(Some(MailboxError::Closed(1))),
            Ok(0)
        )
    );
    assert_eq!(rt.block_on(0, || async { current_core() }).unwrap(), 0);
    // Stats skip the dead core rather than waiting for it.
    let stats = rt.stats();
    assert_eq!(
        stats.iter().map(|s| s.core).collect::<Vec<_>>(),
        vec![0],
        "{stats:?}"
    );

    // Reported: the core index and the panic message.
    let text = logged();
    let line = text
        .lines()
        .find(|l| l.contains("core loop panicked") && l.contains("core=1"))
        .unwrap_or_else(|| panic!("no error logged for the panic; log:\n{text}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("injected fault: core 1's event loop panics"),
        "{line}"
    );

    // Shutdown returns promptly, counting the dead core.
    let rt = Arc::into_inner(rt).unwrap();
    let stop = Instant::now();
    let report = bounded("shutdown", move || rt.shutdown(Duration::from_secs(5)));
    println!(
        "CORE PANIC (busy core, MsgRing): {QUEUED} queued calls and 1 running call failed \
         with Closed/Cancelled, block_on/spawn_on/post/submit_to to the dead core failed at \
         once; core 1 stopped {:.1} ms after the fault fired; shutdown took {:.1} ms: {report:?}",
        stopped_after.as_secs_f64() * 1e3,
        stop.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(report.cores_panicked, 1, "{report:?}");
    // The dead core dropped its three unfinished tasks (the stuck one, the
    // one whose drop panics, the running call's work) and still cancelled
    // and drained its operations; core 0 had none left.
    assert_eq!(report.tasks_aborted, 3, "{report:?}");
    assert_eq!(report.ops_leaked, 0, "{report:?}");
    assert!(
        logged().contains("dropping an unfinished task panicked"),
        "{}",
        logged()
    );
}

/// A value whose drop panics.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("a task's Drop panics as its core drops it");
    }
}

#[test]
fn dropping_a_runtime_whose_parked_core_panicked_does_not_hang() {
    let _ = log();
    let rt = runtime(Doorbell::EventFd);
    let handle = rt.handle();
    // A task on core 1 waiting on a channel fed by core 0 ends when core 0's
    // end drops the sender.
    let (tx, mut rx) = mailbox::channel::<u32>(4);
    rt.spawn_on(0, move || async move {
        let _tx = tx;
        std::future::pending::<()>().await
    });
    let receiver = rt.spawn_on(1, move || async move { rx.recv().await });
    // Core 0 has nothing ready to run: it is parked in io_uring_enter when
    // the fault arrives, and the control queue's eventfd wakes it.
    assert_eq!(rt.block_on(0, || async { current_core() }).unwrap(), 0);
    std::thread::sleep(Duration::from_millis(50));
    handle.inject_core_panic(0).unwrap();
    wait_until_stopped(&handle, 0);
    let r = bounded("a receiver fed by the dead core", move || receiver.join());
    assert!(matches!(r, Ok(None)), "{r:?}");
    assert_eq!(rt.block_on(1, || async { current_core() }).unwrap(), 1);
    let start = Instant::now();
    bounded("dropping the runtime", move || drop(rt));
    println!(
        "CORE PANIC (parked core, EventFd): dropping the runtime took {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let text = logged();
    assert!(
        text.lines().any(|l| l.contains("core loop panicked")
            && l.contains("core=0")
            && l.contains("injected fault: core 0's event loop panics")),
        "{text}"
    );
}
