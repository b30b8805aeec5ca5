//! A reader held back for back-pressure keeps its connection through
//! several idle timeouts. It has a test binary of its own: its timeouts are
//! short, and the other tests running beside it in one process would make
//! the cores it depends on late.

mod common;

use common::*;
use ringwire_transports::{connect, listen, Endpoint};

#[test]
fn a_reader_that_stops_for_longer_than_the_idle_timeout_keeps_its_connection() {
    use std::time::Duration;
    let rt = runtime();
    let ep: Endpoint = format!("mem://{}?capacity=2", unique("slow"))
        .parse()
        .unwrap();
    let server_ep = ep.clone();
    let cfg = || {
        config()
            .keepalive(Duration::from_millis(50), Duration::from_millis(400))
            .recv_queue(2, 1 << 20)
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let server = rt.spawn_on(1, move || async move {
        let mut l = listen(&server_ep, &cfg()).await.unwrap();
        tx.send(()).unwrap();
        let conn = l.accept().await.unwrap().unwrap();
        // Four idle timeouts without reading: the connection is held back,
        // not lost. (The timeouts leave room for a loaded machine: the
        // other side must still see heartbeats in time.)
        ringwire_runtime::time::sleep(Duration::from_millis(1600)).await;
        let mut n = 0;
        for _ in 0..50 {
            conn.recv::<Order>().await.unwrap();
            n += 1;
        }
        n
    });
    rx.recv().unwrap();
    rt.block_on(0, move || async move {
        let conn = connect(&ep, &cfg()).await.unwrap();
        for i in 0..50 {
            conn.send(&order(i)).await.unwrap();
        }
        conn.send_acked(&order(50)).await.unwrap();
    })
    .unwrap();
    assert_eq!(server.join().unwrap(), 50);
    shutdown(rt);
}
