//! An rkyv archive built in a registered send buffer on one core is read in
//! place, validated, on another core, and the buffer goes home afterwards.

use std::time::Duration;

use ringwire::proto::rkyv::{self, Archive, Serialize};
use ringwire::proto::{encode_message, Decoder, FrameHeader, FrameKind, Item, Message};
use ringwire::runtime::mailbox::channel;
use ringwire::runtime::time::timeout;
use ringwire::runtime::{core_stats, Placement, RemoteBuf, Runtime, SendBuf};

#[derive(Archive, Serialize, Debug, PartialEq)]
#[rkyv(crate = rkyv)]
struct Quote {
    id: u64,
    symbol: String,
    levels: Vec<i64>,
}

impl Message for Quote {
    const TYPE_ID: u32 = ringwire::proto::type_id("test.Quote");
    const NAME: &'static str = "test.Quote";
}

#[test]
fn archived_message_crosses_cores_without_a_copy() {
    let rt = Runtime::builder()
        .placement(Placement::Unpinned(2))
        .send_buffers(4)
        .build()
        .unwrap();
    let (mut tx, mut rx) = channel::<RemoteBuf>(8);
    let reader = rt.spawn_on(1, move || async move {
        let mut seen = Vec::new();
        while let Some(buf) = rx.recv().await {
            let addr = buf.as_ptr() as usize;
            let mut decoder = Decoder::new(1 << 20, 1 << 20);
            let decoded = decoder.decode(&buf).unwrap();
            let Some(Item::Frame(frame)) = decoded.item else {
                panic!("expected a whole frame in the buffer")
            };
            // Read in place: the payload lies inside the lent buffer.
            assert!(frame.is_borrowed());
            let payload = frame.payload().as_ptr() as usize;
            assert!(payload >= addr && payload < addr + buf.len());
            let quote = frame.access::<Quote>().unwrap();
            seen.push((quote.id.to_native(), quote.symbol.as_str().to_string()));
            // Dropping `buf` sends it back to core 0's pool.
        }
        seen
    });
    let free_after = rt
        .block_on(0, move || async move {
            for i in 0..20u64 {
                let mut buf = SendBuf::acquire().await;
                let quote = Quote {
                    id: i,
                    symbol: format!("SYM{i}"),
                    levels: (0..32).map(|l| l * i as i64).collect(),
                };
                let n = encode_message(
                    buf.spare_mut(),
                    FrameHeader::new(FrameKind::Message),
                    &quote,
                )
                .unwrap();
                buf.advance(n);
                tx.send(buf.into_remote()).await.unwrap();
            }
            drop(tx);
            // All 20 went through a 4-buffer pool, so buffers came back while
            // we sent; wait for the last ones by taking all four (`acquire`
            // waits for each to come home; the timeout only bounds a failure).
            let all = timeout(Duration::from_secs(10), async {
                let mut held = Vec::new();
                for _ in 0..4 {
                    held.push(SendBuf::acquire().await);
                }
                held
            })
            .await
            .expect("every lent buffer comes home");
            let total = core_stats().send_buffers_total;
            drop(all);
            total
        })
        .unwrap();
    let seen = reader.join().unwrap();
    assert_eq!(seen.len(), 20);
    for (i, (id, sym)) in seen.into_iter().enumerate() {
        assert_eq!(id, i as u64);
        assert_eq!(sym, format!("SYM{i}"));
    }
    assert_eq!(free_after, 4, "the pool has four buffers, all taken back");
}
