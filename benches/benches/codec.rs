//! proto codec: encode, decode+validate and decode unchecked of one message
//! type at three sizes, with a bincode round trip of the same struct for
//! comparison.
//!
//! Run: `nice -n 10 cargo bench -p ringwire-benches --bench codec`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringwire_proto::rkyv::util::AlignedVec;
use ringwire_proto::{
    encode_message, type_id, Decoder, FrameHeader, FrameKind, Item, Message, Schema,
};

/// The benchmarked message: a few fixed fields and a byte payload.
#[derive(
    ringwire_proto::rkyv::Archive,
    ringwire_proto::rkyv::Serialize,
    serde::Serialize,
    serde::Deserialize,
    Clone,
)]
#[rkyv(crate = ringwire_proto::rkyv)]
struct Tick {
    id: u64,
    timestamp_ns: u64,
    venue: u32,
    data: Vec<u8>,
}

impl Message for Tick {
    const TYPE_ID: u32 = type_id("bench.Tick");
    const NAME: &'static str = "bench.Tick";
}

/// Message sizes: the `data` vector holds size - 32 bytes, so the archive
/// (fixed fields + vector) is about `size` bytes.
const SIZES: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (64 * 1024, "64KiB")];

fn tick(size: usize) -> Tick {
    Tick {
        id: 7,
        timestamp_ns: 1_700_000_000_000_000_000,
        venue: 3,
        data: (0..size - 32).map(|i| i as u8).collect(),
    }
}

fn encoded(value: &Tick) -> AlignedVec<16> {
    let mut buf = AlignedVec::<16>::new();
    buf.resize(value.data.len() + 256, 0);
    let n = encode_message(&mut buf, FrameHeader::new(FrameKind::Message), value).unwrap();
    buf.resize(n, 0);
    buf
}

fn decode_one<'a>(decoder: &'a mut Decoder, frame: &'a [u8]) -> ringwire_proto::Frame<'a> {
    match decoder.decode(frame).unwrap().item {
        Some(Item::Frame(f)) => f,
        _ => panic!("expected one whole frame"),
    }
}

fn codec(c: &mut Criterion) {
    let schema = Schema::new().with::<Tick>().unwrap();
    let mut group = c.benchmark_group("proto_codec");
    for (size, name) in SIZES {
        let value = tick(size);
        let frame = encoded(&value);
        group.throughput(Throughput::Bytes(frame.len() as u64));

        let mut out = AlignedVec::<16>::new();
        out.resize(frame.len() + 64, 0);
        group.bench_with_input(BenchmarkId::new("encode", name), &value, |b, v| {
            b.iter(|| {
                encode_message(&mut out, FrameHeader::new(FrameKind::Message), black_box(v))
                    .unwrap()
            })
        });

        let mut decoder = Decoder::new(1 << 20, 1 << 20);
        group.bench_function(BenchmarkId::new("decode_validate", name), |b| {
            b.iter(|| {
                let f = decode_one(&mut decoder, black_box(&frame));
                let (_, archive) = f.body().unwrap();
                schema.validate(f.header().type_id, archive).unwrap();
                // SAFETY: validated as `Tick` on the line above.
                let t = unsafe { f.access_trusted::<Tick>() }.unwrap();
                t.data.len() + t.id.to_native() as usize
            })
        });

        group.bench_function(BenchmarkId::new("decode_unchecked", name), |b| {
            b.iter(|| {
                let f = decode_one(&mut decoder, black_box(&frame));
                // SAFETY: this process encoded the frame as a `Tick` above,
                // into a 16-byte aligned buffer.
                let t = unsafe { f.access_trusted::<Tick>() }.unwrap();
                t.data.len() + t.id.to_native() as usize
            })
        });

        group.bench_function(BenchmarkId::new("rkyv_round_trip", name), |b| {
            b.iter(|| {
                let n =
                    encode_message(&mut out, FrameHeader::new(FrameKind::Message), &value).unwrap();
                let f = decode_one(&mut decoder, black_box(&out[..n]));
                f.access::<Tick>().unwrap().data.len()
            })
        });

        let mut bin = Vec::with_capacity(size + 64);
        group.bench_function(BenchmarkId::new("bincode_round_trip", name), |b| {
            b.iter(|| {
                bin.clear();
                bincode::serialize_into(&mut bin, black_box(&value)).unwrap();
                let back: Tick = bincode::deserialize(black_box(&bin)).unwrap();
                back.data.len()
            })
        });

        bin.clear();
        bincode::serialize_into(&mut bin, &value).unwrap();
        group.bench_function(BenchmarkId::new("bincode_decode", name), |b| {
            b.iter(|| {
                let back: Tick = bincode::deserialize(black_box(&bin)).unwrap();
                back.data.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
