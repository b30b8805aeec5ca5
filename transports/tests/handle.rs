//! A connection used from threads that are not ringwire cores: a plain
//! thread (blocking calls) and a tokio task (async), both through one
//! `ConnHandle`.

mod common;

use std::sync::mpsc;

use common::*;
use ringwire_transports::{connect, listen, ConnHandle, Endpoint, Error};

/// A server on core 1 that answers every `Ask` and echoes every `Order`
/// back; returns what it saw when the client closes.
fn echo_server(rt: &ringwire_runtime::Runtime, ep: Endpoint) -> Endpoint {
    let (tx, rx) = mpsc::channel();
    rt.spawn_on(1, move || async move {
        let mut l = listen(&ep, &config()).await.unwrap();
        tx.send(l.endpoint().clone()).unwrap();
        while let Some(conn) = l.accept().await {
            let conn = conn.unwrap();
            ringwire_runtime::spawn_local(async move {
                loop {
                    match conn.recv_any().await {
                        Ok(m) => {
                            if let Ok(o) = m.get::<Order>() {
                                let mut back = order(o.id.to_native());
                                back.symbol = format!("echo {}", o.symbol.as_str());
                                conn.send(&back).await.unwrap();
                            } else {
                                let q = m.downcast::<Ask>().unwrap();
                                let n = q.n.to_native();
                                q.reply(&Answer { n, square: n * n }).await.unwrap();
                            }
                        }
                        Err(Error::Closed { .. }) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            });
        }
    });
    rx.recv().unwrap()
}

/// A client connection made on core 0, handed out as a `ConnHandle`.
fn client_handle(rt: &ringwire_runtime::Runtime, ep: Endpoint) -> ConnHandle {
    rt.block_on(0, move || async move {
        let conn = connect(&ep, &config()).await.unwrap();
        let handle = conn.handle();
        // Keep the connection open after this task ends.
        std::mem::forget(conn);
        handle
    })
    .unwrap()
}

#[test]
fn a_plain_thread_sends_calls_and_receives_through_a_handle() {
    for ep in ["tcp://127.0.0.1:0", "mem://handle-plain"] {
        let rt = runtime();
        let bound = echo_server(&rt, ep.parse().unwrap());
        let h = client_handle(&rt, bound);
        let worker = std::thread::spawn(move || {
            for n in 0..20u64 {
                let a = h.call_blocking::<Ask, Answer>(&Ask { n }).unwrap();
                assert_eq!((a.n.to_native(), a.square.to_native()), (n, n * n));
            }
            for i in 0..10 {
                h.send_blocking(&order(i)).unwrap();
                let m = h.recv_blocking().unwrap();
                let o = m.get::<Order>().unwrap();
                assert_eq!(o.id.to_native(), i);
                assert_eq!(o.symbol.as_str(), format!("echo SYM{}", i % 97));
            }
        });
        worker.join().unwrap();
        shutdown(rt);
    }
}

#[test]
fn a_tokio_task_uses_the_handle_asynchronously() {
    let rt = runtime();
    let bound = echo_server(&rt, "tcp://127.0.0.1:0".parse().unwrap());
    let h = client_handle(&rt, bound);
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let squares = tokio_rt.block_on(async move {
        let mut tasks = Vec::new();
        for n in 0..32u64 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                let a = h.call::<Ask, Answer>(&Ask { n }).await.unwrap();
                a.square.to_native()
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        h.send(&order(5)).await.unwrap();
        let back = h.recv().await.unwrap();
        assert_eq!(back.get::<Order>().unwrap().id.to_native(), 5);
        out
    });
    assert_eq!(squares, (0..32u64).map(|n| n * n).collect::<Vec<_>>());
    shutdown(rt);
}

#[test]
fn a_handle_reports_a_gone_connection_instead_of_hanging() {
    let rt = runtime();
    let bound = echo_server(&rt, "tcp://127.0.0.1:0".parse().unwrap());
    let h = rt
        .block_on(0, move || async move {
            let conn = connect(&bound, &config()).await.unwrap();
            let h = conn.handle();
            conn.close().await.unwrap();
            h
        })
        .unwrap();
    let err = h.send_blocking(&order(1)).unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err}");
    shutdown(rt);
    // And once the runtime is gone.
    let err = h.call_blocking::<Ask, Answer>(&Ask { n: 1 }).unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err}");
}
