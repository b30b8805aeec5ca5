//! `RuntimeHandle` from plain threads and after shutdown, and named
//! per-core counters in snapshots and the Prometheus output.

use std::sync::mpsc;
use std::time::Duration;

use ringwire_runtime::mailbox::MailboxError;
use ringwire_runtime::stats::{render_prometheus, Counter};
use ringwire_runtime::{current_core, current_runtime, JoinError, Placement, Runtime};

fn runtime(cores: usize) -> Runtime {
    Runtime::builder()
        .placement(Placement::Unpinned(cores))
        .build()
        .expect("runtime starts")
}

#[test]
fn handle_runs_work_from_a_plain_thread_and_fails_clearly_after_shutdown() {
    let rt = runtime(2);
    let handle = rt.handle();
    assert_eq!(handle.core_count(), 2);
    let h2 = handle.clone();
    let from_thread = std::thread::spawn(move || {
        // spawn_on: the future runs as a task on the core, the result comes
        // back through the returned handle.
        let on = h2
            .spawn_on(1, || async { current_core() })
            .unwrap()
            .join()
            .unwrap();
        // post: fire and forget.
        let (tx, rx) = mpsc::channel();
        h2.post(0, move || tx.send(current_core()).unwrap())
            .unwrap();
        let posted = rx.recv().unwrap();
        let missing = h2.post(7, || {}).unwrap_err();
        (on, posted, missing)
    })
    .join()
    .unwrap();
    assert_eq!(from_thread, (1, 0, MailboxError::NoSuchCore(7)));

    // On a core, the runtime it runs in.
    let (tx, rx) = mpsc::channel();
    rt.block_on(0, move || async move {
        current_runtime()
            .post(1, move || tx.send(current_core()).unwrap())
            .unwrap();
    })
    .unwrap();
    assert_eq!(rx.recv().unwrap(), 1);

    let report = rt.shutdown(Duration::from_secs(2));
    assert_eq!(report.cores_panicked, 0);
    // The handle outlives the runtime: everything now fails with `Closed`
    // (and the work is dropped at once, not kept somewhere forever).
    let (tx, rx) = mpsc::channel::<()>();
    assert_eq!(
        handle.post(0, move || drop(tx)).unwrap_err(),
        MailboxError::Closed(0)
    );
    assert!(rx.recv().is_err(), "the refused closure was dropped");
    assert_eq!(
        handle.spawn_on(1, || async {}).err(),
        Some(MailboxError::Closed(1))
    );
}

#[test]
fn runtime_spawn_on_a_stopped_core_reports_cancellation() {
    let rt = runtime(1);
    let handle = rt.handle();
    let (tx, rx) = mpsc::channel();
    let sent = std::thread::spawn(move || {
        // Once the runtime has shut down, the handle refuses.
        rx.recv().unwrap();
        handle.spawn_on(0, || async { 1 }).err()
    });
    rt.shutdown(Duration::from_secs(1));
    tx.send(()).unwrap();
    assert_eq!(sent.join().unwrap(), Some(MailboxError::Closed(0)));
    // Joining work the core dropped reports cancellation, not a hang.
    let rt = runtime(1);
    let h = rt.spawn_on(0, std::future::pending::<()>);
    rt.shutdown(Duration::from_millis(50));
    assert!(matches!(h.join(), Err(JoinError::Cancelled)));
}

#[test]
fn named_counters_are_per_core_in_snapshots_and_prometheus() {
    let sent = Counter::register(
        "test_transport_messages_sent_total",
        "messages sent by the transports",
        &[("scheme", "tcp")],
    );
    let other = Counter::register(
        "test_transport_messages_sent_total",
        "messages sent by the transports",
        &[("scheme", "unix")],
    );
    let rt = runtime(2);
    for core in 0..2u64 {
        rt.block_on(core as usize, move || async move {
            sent.add(10 + core);
            sent.add(1);
            other.add(100);
            assert_eq!(sent.get(), 11 + core);
        })
        .unwrap();
    }
    let stats = rt.stats();
    assert_eq!(stats[0].counter(&sent), 11);
    assert_eq!(stats[1].counter(&sent), 12);
    assert_eq!(stats[1].counter(&other), 100);
    let text = render_prometheus(&stats);
    assert!(text.contains(
        "# HELP ringwire_test_transport_messages_sent_total messages sent by the transports\n"
    ));
    assert_eq!(
        text.matches("# TYPE ringwire_test_transport_messages_sent_total counter")
            .count(),
        1,
        "one family, however many label sets"
    );
    assert!(
        text.contains(
            "ringwire_test_transport_messages_sent_total{core=\"0\",scheme=\"tcp\"} 11\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "ringwire_test_transport_messages_sent_total{core=\"1\",scheme=\"tcp\"} 12\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "ringwire_test_transport_messages_sent_total{core=\"1\",scheme=\"unix\"} 100\n"
        ),
        "{text}"
    );
}
