//! Tests of the buffer path: registered send buffers, SEND_ZC notifications,
//! batching writers, and the single-shot receive mode.

use std::io::{Read, Write};
use std::net::SocketAddr;

use ringwire_runtime::net::{TcpListener, TcpStream};
use ringwire_runtime::{core_stats, spawn_local, Placement, Runtime, RuntimeBuilder, SendBuf};

fn builder() -> RuntimeBuilder {
    Runtime::builder().placement(Placement::Unpinned(1))
}

/// A std listener whose accepted connection is read to the end on a thread;
/// returns the address and a handle yielding every byte received.
fn sink() -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all
    });
    (addr, h)
}

fn expected(n: usize, size: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (0..size).map(move |k| (i * 13 + k) as u8))
        .collect()
}

/// Sends `n` messages of `size` bytes from pool buffers; returns the core's
/// counters afterwards.
fn send_from_pool(
    rt: &Runtime,
    addr: SocketAddr,
    n: usize,
    size: usize,
) -> ringwire_runtime::CoreStats {
    rt.block_on(0, move || async move {
        let conn = TcpStream::connect(addr).await.unwrap();
        for i in 0..n {
            let mut buf = SendBuf::acquire().await;
            let msg: Vec<u8> = (0..size).map(|k| (i * 13 + k) as u8).collect();
            assert!(buf.extend_from_slice(&msg));
            let (res, buf) = conn.send_all(buf).await;
            res.unwrap();
            drop(buf);
        }
        drop(conn);
        core_stats()
    })
    .unwrap()
}

#[test]
fn registered_send_buffers_carry_data_and_all_come_back() {
    let rt = builder().send_buffers(8).fixed_send(true).build().unwrap();
    let (addr, h) = sink();
    let stats = send_from_pool(&rt, addr, 100_000, 32);
    assert_eq!(h.join().unwrap(), expected(100_000, 32));
    assert_eq!(stats.fixed_sends, 100_000);
    assert_eq!(stats.send_buffers_free, stats.send_buffers_total);
    assert_eq!(stats.send_buffers_total, 8);
}

#[test]
fn pool_buffers_without_the_fixed_path_still_work() {
    let rt = builder().fixed_send(false).build().unwrap();
    let (addr, h) = sink();
    let stats = send_from_pool(&rt, addr, 1000, 700);
    assert_eq!(h.join().unwrap(), expected(1000, 700));
    assert_eq!(stats.fixed_sends, 0);
}

#[test]
fn zero_copy_sends_give_buffers_back_only_after_the_notification() {
    let rt = builder().zero_copy_threshold(Some(0)).build().unwrap();
    if !rt.ring_features()[0].send_zc {
        eprintln!("SEND_ZC not supported by this kernel; nothing to test");
        return;
    }
    let (addr, h) = sink();
    let ok = rt
        .block_on(0, move || async move {
            let conn = TcpStream::connect(addr).await.unwrap();
            let mut every_return_after_notif = true;
            for i in 0..2000usize {
                let mut buf = SendBuf::acquire().await;
                let msg: Vec<u8> = (0..4096).map(|k| (i * 13 + k) as u8).collect();
                assert!(buf.extend_from_slice(&msg));
                let (res, buf) = conn.send_all(buf).await;
                res.unwrap();
                // The buffer is back in our hands: the kernel must have
                // released it, i.e. every ZC send so far was notified.
                let s = core_stats();
                every_return_after_notif &= s.zc_sends == s.zc_notifications;
                drop(buf);
            }
            // Heap buffers take the zero-copy path too.
            let (res, _) = conn.send_all(vec![1u8; 100_000]).await;
            res.unwrap();
            let s = core_stats();
            (every_return_after_notif, s.zc_sends, s.zc_notifications)
        })
        .unwrap();
    let got = h.join().unwrap();
    assert_eq!(got.len(), 2000 * 4096 + 100_000);
    assert_eq!(got[..2000 * 4096], expected(2000, 4096)[..]);
    assert!(ok.0, "a buffer came back before its notification");
    assert!(ok.1 >= 2001);
    assert_eq!(ok.1, ok.2);
}

#[test]
fn batching_writer_sends_a_turn_of_messages_in_one_submission() {
    let rt = builder().build().unwrap();
    let (addr, h) = sink();
    let (batch_sends, batched) = rt
        .block_on(0, move || async move {
            let conn = TcpStream::connect(addr).await.unwrap();
            let w = conn.batch_writer();
            let before = core_stats();
            // 1000 small messages in one loop turn (no await in between).
            for i in 0..1000usize {
                let msg: Vec<u8> = (0..16).map(|k| (i * 13 + k) as u8).collect();
                w.try_write(&msg).unwrap();
            }
            w.flush().await.unwrap();
            let after = core_stats();
            drop(w);
            drop(conn);
            (
                after.batch_sends - before.batch_sends,
                after.batched_messages - before.batched_messages,
            )
        })
        .unwrap();
    assert_eq!(h.join().unwrap(), expected(1000, 16));
    assert_eq!(batch_sends, 1, "one turn of writes leaves in one send");
    assert_eq!(batched, 1000);
}

#[test]
fn batching_writer_spills_into_several_buffers_and_keeps_order() {
    let rt = builder()
        .send_buffers(4)
        .send_buffer_size(4096)
        .build()
        .unwrap();
    let (addr, h) = sink();
    rt.block_on(0, move || async move {
        let conn = TcpStream::connect(addr).await.unwrap();
        let w = conn.batch_writer();
        // 3000 x 100 B = 300 KB through four 4 KiB buffers: writes must wait
        // for buffers to come back (back-pressure), never drop or reorder.
        for i in 0..3000usize {
            let msg: Vec<u8> = (0..100).map(|k| (i * 13 + k) as u8).collect();
            w.write(&msg).await.unwrap();
        }
        w.flush().await.unwrap();
        // Too large for one buffer: refused, not truncated.
        let err = w.try_write(&[0u8; 5000]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    })
    .unwrap();
    assert_eq!(h.join().unwrap(), expected(3000, 100));
}

#[test]
fn batching_writer_flushes_after_being_dropped() {
    let rt = builder().build().unwrap();
    let (addr, h) = sink();
    rt.block_on(0, move || async move {
        let conn = TcpStream::connect(addr).await.unwrap();
        let w = conn.batch_writer();
        w.try_write(b"queued before drop").unwrap();
        drop(w);
        drop(conn);
        // The flusher owns the socket until it has sent what was queued; the
        // sink reads until the flusher closes it.
    })
    .unwrap();
    assert_eq!(h.join().unwrap(), b"queued before drop");
}

#[test]
fn single_shot_receive_mode_echoes_correctly() {
    let rt = builder()
        .recv_multishot(false)
        .recv_buffers(4)
        .recv_buffer_size(4096)
        .build()
        .unwrap();
    let addr = rt
        .block_on(0, || async {
            let mut l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = l.local_addr();
            spawn_local(async move {
                while let Some(Ok(mut c)) = l.accept().await {
                    spawn_local(async move {
                        while let Ok(Some(b)) = c.recv().await {
                            if c.send_all(b).await.0.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
            addr
        })
        .unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let data = expected(100, 1000);
    let mut r = s.try_clone().unwrap();
    let d2 = data.clone();
    let w = std::thread::spawn(move || s.write_all(&d2).unwrap());
    let mut back = vec![0; data.len()];
    r.read_exact(&mut back).unwrap();
    w.join().unwrap();
    assert!(back == data);
    let stats = rt.stats();
    assert_eq!(stats[0].recv_buffers_free, 4);
}
