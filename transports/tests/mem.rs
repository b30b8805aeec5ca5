//! `mem://` connections between two cores of one runtime.

mod common;

use common::*;
use ringwire_transports::{connect, listen, Endpoint};

#[test]
fn typed_messages_and_calls_cross_cores() {
    let rt = runtime();
    let ep: Endpoint = format!("mem://{}", unique("basic")).parse().unwrap();
    let server_ep = ep.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let server = rt.spawn_on(1, move || async move {
        let mut listener = listen(&server_ep, &config()).await.unwrap();
        tx.send(()).unwrap();
        let conn = listener.accept().await.unwrap().unwrap();
        let mut got = Vec::new();
        for _ in 0..100 {
            let m = conn.recv::<Order>().await.unwrap();
            assert!(!m.incoming().in_receive_buffer());
            got.push((m.id.to_native(), m.symbol.as_str().to_string()));
        }
        for _ in 0..50 {
            let req = conn.recv::<Ask>().await.unwrap();
            let n = req.n.to_native();
            req.reply(&Answer { n, square: n * n }).await.unwrap();
        }
        let last = conn.recv::<Order>().await.unwrap();
        assert_eq!(last.id.to_native(), 1000);
        drop(last);
        // The client closes: the next receive reports it.
        let end = conn.recv_any().await.unwrap_err();
        assert!(
            matches!(end, ringwire_transports::Error::Closed { .. }),
            "{end}"
        );
        got
    });
    rx.recv().unwrap();
    rt.block_on(0, move || async move {
        let conn = connect(&ep, &config()).await.unwrap();
        for i in 0..100 {
            conn.send(&order(i)).await.unwrap();
        }
        // Many calls in flight at once.
        let calls: Vec<_> = (0..50u64)
            .map(|n| {
                let conn = conn.clone();
                ringwire_runtime::spawn_local(async move {
                    let r = conn.call::<Ask, Answer>(&Ask { n }).await.unwrap();
                    (r.n.to_native(), r.square.to_native())
                })
            })
            .collect();
        for (n, c) in calls.into_iter().enumerate() {
            let (got_n, sq) = c.await.unwrap();
            assert_eq!(got_n * got_n, sq);
            let _ = n;
        }
        conn.send_acked(&order(1000)).await.unwrap();
        assert!(conn.close().await.unwrap(), "clean close");
    })
    .unwrap();
    let got = server.join().unwrap();
    assert_eq!(got.len(), 100);
    for (i, (id, sym)) in got.into_iter().enumerate() {
        assert_eq!(id, i as u64);
        assert_eq!(sym, format!("SYM{}", i % 97));
    }
    shutdown(rt);
}
