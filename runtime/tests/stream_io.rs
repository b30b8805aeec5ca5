//! Stream I/O for the transports, on loopback: direct receive into caller
//! memory (`recv_exact_into`), gather send (`send_vectored`), and write
//! halves shared by several tasks.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;

use ringwire_runtime::net::TcpStream;
use ringwire_runtime::{core_stats, spawn_local, AlignedBuf, Placement, Runtime};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A runtime of one unpinned core with small receive buffers, so that a
/// write of a few KiB arrives as several chunks.
fn runtime(buf_size: u32) -> Runtime {
    Runtime::builder()
        .placement(Placement::Unpinned(1))
        .recv_buffers(64)
        .recv_buffer_size(buf_size)
        .build()
        .expect("runtime starts")
}

/// A std listener whose single connection is handed to `peer` on a thread.
fn peer<F>(peer: F) -> (SocketAddr, std::thread::JoinHandle<()>)
where
    F: FnOnce(std::net::TcpStream) + Send + 'static,
{
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        peer(s);
    });
    (addr, h)
}

#[test]
fn direct_receive_takes_queued_chunks_first_then_receives_in_place() {
    const FIRST: usize = 5000;
    const REST: usize = 100_000;
    let data = pattern(FIRST + REST);
    let expect = data.clone();
    let rt = runtime(1024);
    let (more_tx, more_rx) = mpsc::channel::<()>();
    let (addr, h) = peer(move |mut s| {
        // One write: it arrives at once and the multishot receive turns it
        // into several 1 KiB chunks in one go.
        s.write_all(&data[..FIRST]).unwrap();
        more_rx.recv().unwrap();
        s.write_all(&data[FIRST..]).unwrap();
        // Dropping the stream closes it.
    });
    let result = rt
        .block_on(0, move || async move {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            // Arms the multishot receive; the rest of the write is queued as
            // chunks behind this one.
            let first = conn.recv().await.unwrap().unwrap();
            assert!(first.len() < FIRST, "the buffers are 1 KiB");
            got.extend_from_slice(&first);
            drop(first);
            // 1. Only queued chunks, the last one used in part.
            let (res, buf) = conn.recv_exact_into(vec![0u8; 2500], 0..2500).await;
            assert_eq!(res.unwrap(), 2500);
            got.extend_from_slice(&buf);
            let after_queued = core_stats();
            // The rest of the partly used chunk comes next, on its own.
            let leftover = conn.recv().await.unwrap().unwrap();
            assert!(leftover.len() < 1024, "{} bytes", leftover.len());
            got.extend_from_slice(&leftover);
            drop(leftover);
            // 2. What is still queued, then straight into our memory: ask for
            //    everything that is left (and more, to meet the end).
            more_tx.send(()).unwrap();
            let left = FIRST + REST - got.len();
            let mut into = Vec::with_capacity(4 + left + 10);
            into.extend_from_slice(b"keep");
            let (res, into) = conn.recv_exact_into(into, 4..4 + left + 10).await;
            let n = res.unwrap();
            assert_eq!(n, left, "short only at end of stream");
            assert_eq!(&into[..4], b"keep", "bytes before the range untouched");
            got.extend_from_slice(&into[4..4 + n]);
            // The stream is over for `recv` too.
            assert!(conn.recv().await.unwrap().is_none());
            (got, n, (after_queued, core_stats()))
        })
        .unwrap();
    h.join().unwrap();
    let (got, n, (after_queued, end)) = result;
    assert!(got == expect, "received bytes differ from what was sent");
    assert_eq!(after_queued.recv_direct_copied_bytes, 2500);
    assert_eq!(after_queued.recv_direct_bytes, 0);
    assert!(
        end.recv_direct_bytes > 0,
        "the kernel wrote into our memory: {end:?}"
    );
    assert_eq!(
        end.recv_direct_bytes + end.recv_direct_copied_bytes,
        2500 + n as u64,
        "every byte of the two calls was either copied or received directly"
    );
}

#[test]
fn direct_receive_stops_short_at_end_of_stream() {
    let rt = runtime(4096);
    let data = pattern(300);
    let expect = data.clone();
    let (addr, h) = peer(move |mut s| {
        s.write_all(&data).unwrap();
    });
    let (n, buf, after) = rt
        .block_on(0, move || async move {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            let (res, buf) = conn.recv_exact_into(vec![0u8; 1000], 0..1000).await;
            let after = conn.recv().await.unwrap().is_none();
            (res.unwrap(), buf, after)
        })
        .unwrap();
    h.join().unwrap();
    assert_eq!(n, 300);
    assert_eq!(&buf[..300], &expect[..]);
    assert!(buf[300..].iter().all(|&b| b == 0), "nothing past the data");
    assert!(after, "recv reports the end too");
}

#[test]
fn direct_receive_refuses_a_range_outside_the_buffer() {
    let rt = runtime(4096);
    let (addr, h) = peer(|_s| {});
    let kinds = rt
        .block_on(0, move || async move {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            // Past the capacity.
            let (a, _) = conn.recv_exact_into(vec![0u8; 10], 0..11).await;
            // Starting past the initialised bytes of a Vec.
            let (b, _) = conn
                .recv_exact_into(Vec::<u8>::with_capacity(64), 8..16)
                .await;
            (a.unwrap_err().kind(), b.unwrap_err().kind())
        })
        .unwrap();
    h.join().unwrap();
    assert_eq!(
        kinds,
        (
            std::io::ErrorKind::InvalidInput,
            std::io::ErrorKind::InvalidInput
        )
    );
}

#[test]
fn two_mebibytes_land_in_caller_memory_byte_for_byte() {
    const LEN: usize = 2 << 20;
    let rt = runtime(16 * 1024);
    let data = pattern(LEN);
    let expect = data.clone();
    let (addr, h) = peer(move |mut s| {
        s.write_all(&data).unwrap();
    });
    let (n, buf, stats) = rt
        .block_on(0, move || async move {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            let dest = AlignedBuf::new(LEN, 4096);
            let (res, dest) = conn.recv_exact_into(dest, 0..LEN).await;
            (res.unwrap(), dest, core_stats())
        })
        .unwrap();
    h.join().unwrap();
    assert_eq!(n, LEN);
    assert_eq!(buf.as_ptr() as usize % 4096, 0);
    assert!(buf[..] == expect[..], "the 2 MiB differ");
    // No receive was armed before: the kernel's copy was the only one.
    assert_eq!(stats.recv_direct_bytes, LEN as u64, "{stats:?}");
    assert_eq!(stats.recv_direct_copied_bytes, 0);
}

#[test]
fn gather_send_of_many_buffers_arrives_in_order() {
    // 3000 buffers of varying sizes, some 4 MiB in all: more than one
    // SENDMSG can carry (1024 pieces) and more than the socket buffers hold,
    // so the send continues in further SENDMSGs from where the previous one
    // stopped, mid-buffer when the kernel took part of one.
    let bufs: Vec<Vec<u8>> = (0..3000)
        .map(|i| {
            let len = 1 + (i * 977) % 2800;
            (0..len).map(|k| (i * 13 + k) as u8).collect()
        })
        .collect();
    let expect: Vec<u8> = bufs.concat();
    let total = expect.len();
    let rt = runtime(4096);
    let (addr, h) = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all
        });
        (addr, h)
    };
    let (sent_back, lens_ok) = rt
        .block_on(0, move || async move {
            let conn = TcpStream::connect(addr).await.unwrap();
            let lens: Vec<usize> = bufs.iter().map(Vec::len).collect();
            let (res, back) = conn.send_vectored(bufs).await;
            res.unwrap();
            let ok = back.iter().map(Vec::len).eq(lens.iter().copied());
            (back.len(), ok)
        })
        .unwrap();
    let got = h.join().unwrap();
    assert_eq!(sent_back, 3000, "every buffer comes back");
    assert!(lens_ok);
    assert_eq!(got.len(), total);
    assert!(got == expect, "gathered bytes differ");
}

#[test]
fn write_halves_send_from_two_tasks_while_a_third_receives() {
    const PER_TASK: u32 = 2000;
    let rt = runtime(4096);
    // The peer echoes everything back.
    let (addr, h) = peer(|mut s| {
        let mut r = s.try_clone().unwrap();
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let echoed = rt
        .block_on(0, move || async move {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            let writers: Vec<_> = (0..2u32)
                .map(|task| {
                    let w = conn.write_half().clone();
                    spawn_local(async move {
                        for seq in 0..PER_TASK {
                            let mut msg = task.to_le_bytes().to_vec();
                            msg.extend_from_slice(&seq.to_le_bytes());
                            let (res, _) = w.send_all(msg).await;
                            res.unwrap();
                            if seq % 64 == 0 {
                                ringwire_runtime::yield_now().await;
                            }
                        }
                    })
                })
                .collect();
            // This task receives while the others send.
            let mut got = Vec::new();
            while got.len() < 2 * PER_TASK as usize * 8 {
                match conn.recv().await.unwrap() {
                    Some(b) => got.extend_from_slice(&b),
                    None => break,
                }
            }
            for w in writers {
                w.await.unwrap();
            }
            got
        })
        .unwrap();
    h.join().unwrap();
    assert_eq!(echoed.len(), 2 * PER_TASK as usize * 8);
    // Messages of the two tasks interleave, but each arrives whole and in
    // its task's order.
    let mut next = [0u32; 2];
    for m in echoed.chunks_exact(8) {
        let task = u32::from_le_bytes(m[..4].try_into().unwrap()) as usize;
        let seq = u32::from_le_bytes(m[4..].try_into().unwrap());
        assert!(task < 2, "garbled message {m:?}");
        assert_eq!(seq, next[task], "task {task} out of order");
        next[task] += 1;
    }
    assert_eq!(next, [PER_TASK, PER_TASK]);
}
