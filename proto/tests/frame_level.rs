//! The frame-level session API that framing transports use: `check_header`,
//! `handle_frame` (and its trusted in-process form), per-message rejection of
//! corrupt archives, external bulk placement, and header-only encoding of a
//! message whose payload is shared by many connections.

mod common;

use std::sync::Arc;

use common::*;
use ringwire_proto::{
    encode_message, frame_len, BulkTarget, Config, Event, FrameHeader, FrameKind, Instant,
    ProtoError, Schema, Session, SessionState, StreamId, HEADER_LEN,
};
use rkyv::util::AlignedVec;

fn schema() -> Arc<Schema> {
    Arc::new(
        Schema::new()
            .with::<Order>()
            .unwrap()
            .with::<Ping>()
            .unwrap(),
    )
}

fn order(id: u64) -> Order {
    Order {
        id,
        price: -7,
        symbol: format!("S{id}"),
        blob: vec![id as u8; 40],
        note: None,
    }
}

/// One complete frame, payload copied into aligned memory.
struct OwnedFrame {
    header: FrameHeader,
    payload: AlignedVec<16>,
}

/// Splits a byte stream made of whole frames.
fn split(stream: &[u8]) -> Vec<OwnedFrame> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let head = stream[at..].first_chunk::<HEADER_LEN>().unwrap();
        let header = FrameHeader::parse(head).unwrap();
        let len = header.payload_len as usize;
        let mut payload = AlignedVec::<16>::new();
        payload.extend_from_slice(&stream[at + HEADER_LEN..at + HEADER_LEN + len]);
        frames.push(OwnedFrame { header, payload });
        at += frame_len(len);
    }
    frames
}

/// Everything a session wants to send now (control frames).
fn drain_control(s: &mut Session, now: Instant, out: &mut Vec<u8>) {
    let mut buf = vec![0u8; 4096];
    while let Some(n) = s.poll_transmit(now, &mut buf).unwrap() {
        out.extend_from_slice(&buf[..n]);
    }
}

/// A connected client/server pair, handshake done through `handle_frame`.
fn pair() -> (Session, Session) {
    let now = Instant::ZERO;
    let mut client = Session::connect(Config::default(), schema(), now, 9);
    let mut server = Session::accept(Config::default(), schema(), now);
    let (mut c2s, mut s2c) = (Vec::new(), Vec::new());
    drain_control(&mut client, now, &mut c2s);
    drain_control(&mut server, now, &mut s2c);
    for f in split(&c2s) {
        server.check_header(&f.header).unwrap();
        assert!(server
            .handle_frame(now, &f.header, &f.payload)
            .unwrap()
            .is_none());
    }
    for f in split(&s2c) {
        assert!(client
            .handle_frame(now, &f.header, &f.payload)
            .unwrap()
            .is_none());
    }
    assert_eq!(client.state(), SessionState::Established);
    assert_eq!(server.state(), SessionState::Established);
    (client, server)
}

#[test]
fn messages_flow_frame_by_frame() {
    let (mut client, mut server) = pair();
    let now = Instant::ZERO;
    let mut wire = vec![0u8; 4096];
    let mut stream = Vec::new();
    for id in 0..5 {
        let sent = client
            .send(now, StreamId(3), &order(id), &mut wire)
            .unwrap();
        stream.extend_from_slice(&wire[..sent.len]);
    }
    let frames = split(&stream);
    for (id, f) in frames.iter().enumerate() {
        let got = server
            .handle_frame(now, &f.header, &f.payload)
            .unwrap()
            .unwrap();
        assert_eq!(got.stream(), StreamId(3));
        let o = got.get::<Order>().unwrap();
        assert_eq!(o.id, id as u64);
        assert_eq!(o.symbol.as_str(), format!("S{id}"));
    }
    assert_eq!(server.last_received(), 5);
}

#[test]
fn a_corrupt_archive_costs_one_message_not_the_connection() {
    let (mut client, mut server) = pair();
    let now = Instant::ZERO;
    let mut wire = vec![0u8; 4096];
    let mut frames = Vec::new();
    for id in 0..3 {
        let sent = client
            .send(now, StreamId(0), &order(id), &mut wire)
            .unwrap();
        frames.extend(split(&wire[..sent.len]));
    }
    // Corrupt the middle message's archive: its root's relative pointers now
    // point far outside the payload.
    let bad = &mut frames[1].payload;
    let n = bad.len();
    for b in &mut bad[n - 24..] {
        *b = 0xff;
    }
    let first = server.handle_frame(now, &frames[0].header, &frames[0].payload);
    assert!(first.unwrap().is_some());
    let err = server
        .handle_frame(now, &frames[1].header, &frames[1].payload)
        .unwrap_err();
    assert!(matches!(err, ProtoError::Validation { .. }), "{err}");
    assert!(err.is_rejection() && !err.is_fatal());
    assert_eq!(server.state(), SessionState::Established);
    let third = server
        .handle_frame(now, &frames[2].header, &frames[2].payload)
        .unwrap()
        .unwrap();
    assert_eq!(third.get::<Order>().unwrap().id, 2);
    // The rejected message counts as received: the ack covers all three.
    assert_eq!(server.last_received(), 3);
}

#[test]
fn the_byte_level_path_reports_rejections_and_goes_on() {
    let (mut client, mut server) = pair();
    let now = Instant::ZERO;
    let mut wire = vec![0u8; 4096];
    let mut stream = AlignedVec::<16>::new();
    for id in 0..2 {
        let sent = client
            .send(now, StreamId(0), &order(id), &mut wire)
            .unwrap();
        stream.extend_from_slice(&wire[..sent.len]);
    }
    // Corrupt the first message's archive tail.
    let first_len = frame_len(
        FrameHeader::parse(stream.first_chunk().unwrap())
            .unwrap()
            .payload_len as usize,
    );
    let tail = HEADER_LEN
        + FrameHeader::parse(stream.first_chunk().unwrap())
            .unwrap()
            .payload_len as usize;
    for b in &mut stream[tail - 24..tail] {
        *b = 0xff;
    }
    let input = server.handle_input(now, &stream).unwrap();
    assert_eq!(input.consumed, first_len);
    assert!(input.received.is_none());
    assert!(matches!(
        input.rejected,
        Some(ProtoError::Validation { .. })
    ));
    let input = server.handle_input(now, &stream[first_len..]).unwrap();
    assert_eq!(input.received.unwrap().get::<Order>().unwrap().id, 1);
}

#[test]
fn trusted_frames_skip_validation_but_not_the_type_check() {
    let (mut client, mut server) = pair();
    let now = Instant::ZERO;
    let mut wire = vec![0u8; 4096];
    let sent = client.send(now, StreamId(0), &order(7), &mut wire).unwrap();
    let f = split(&wire[..sent.len]).pop().unwrap();
    // SAFETY: the frame was encoded by a session of this process as an
    // `Order`, which is what both schemas register under its type id, and
    // its payload lies in an aligned buffer.
    let got = unsafe { server.handle_frame_trusted(now, &f.header, &f.payload) }
        .unwrap()
        .unwrap();
    assert_eq!(got.get::<Order>().unwrap().id, 7);
    // A type id outside the schema is still refused, as one message.
    let sent = client.send(now, StreamId(0), &order(8), &mut wire).unwrap();
    let mut f = split(&wire[..sent.len]).pop().unwrap();
    f.header.type_id = 0x1234_5678;
    // SAFETY: the payload is a valid `Order` archive written by this
    // process; only the type id was changed, which the session checks.
    let err = unsafe { server.handle_frame_trusted(now, &f.header, &f.payload) }.unwrap_err();
    assert!(matches!(err, ProtoError::UnknownType(0x1234_5678)));
    assert_eq!(server.state(), SessionState::Established);
}

#[test]
fn oversized_headers_are_refused_before_the_payload() {
    let (_client, mut server) = pair();
    let mut header = FrameHeader::new(FrameKind::Message);
    header.payload_len = u32::MAX;
    let err = server.check_header(&header).unwrap_err();
    assert!(err.is_fatal());
    assert_eq!(server.state(), SessionState::Failed);
}

#[test]
fn a_header_the_transport_could_not_parse_fails_the_session_with_a_close() {
    let (mut client, mut server) = pair();
    let now = Instant::ZERO;
    // Bytes that are not a frame header at all.
    let parse = FrameHeader::parse(&[0xa5; HEADER_LEN]).unwrap_err();
    assert!(parse.is_fatal());
    let err = server.abort(parse);
    assert!(err.is_fatal());
    assert_eq!(server.state(), SessionState::Failed);
    // The server's last words: a `Close` with reason 2 (protocol error),
    // which the client reports as the peer closing.
    let mut wire = Vec::new();
    drain_control(&mut server, now, &mut wire);
    let frames = split(&wire);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].header.kind, FrameKind::Close);
    let reason = u32::from_le_bytes(frames[0].payload[..4].try_into().unwrap());
    assert_eq!(reason, 2);
    let _ = client.handle_frame(now, &frames[0].header, &frames[0].payload);
    assert_ne!(client.state(), SessionState::Established);
    // Failed once: a second abort queues nothing more.
    let _ = server.abort(ProtoError::Violation("again"));
    let mut more = Vec::new();
    drain_control(&mut server, now, &mut more);
    assert!(more.is_empty());
}

#[test]
fn external_bulk_destinations_are_placed_by_the_caller() {
    let (mut client, mut server) = pair();
    let now = Instant::ZERO;
    let segments = [vec![1u8; 100], vec![2u8; 3000]];
    let lens: Vec<u32> = segments.iter().map(|s| s.len() as u32).collect();
    let mut wire = vec![0u8; 8192];
    let mut stream = Vec::new();
    let sent = client
        .send_bulk(now, StreamId(0), &order(1), &lens, &mut wire)
        .unwrap();
    stream.extend_from_slice(&wire[..sent.len]);
    for s in &segments {
        let sent = client.encode_bulk_segment(now, s, &mut wire).unwrap();
        stream.extend_from_slice(&wire[..sent.len]);
    }
    let frames = split(&stream);
    let meta = server
        .handle_frame(now, &frames[0].header, &frames[0].payload)
        .unwrap()
        .unwrap();
    assert_eq!(meta.bulk().unwrap().iter().collect::<Vec<_>>(), lens);
    server.accept_bulk_external().unwrap();
    // The caller's own destinations, filled "directly".
    let mut dests: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0; l as usize]).collect();
    for f in &frames[1..] {
        server.check_header(&f.header).unwrap();
        match server.bulk_segment_start(now, &f.header).unwrap() {
            BulkTarget::Place { index } => dests[index].copy_from_slice(&f.payload),
            BulkTarget::Skip => panic!("accepted segments are placed"),
        }
        server.bulk_segment_end(now, &f.header);
    }
    assert_eq!(dests, segments);
    let mut complete = false;
    while let Some(ev) = server.poll_event() {
        if let Event::BulkComplete { msg_seq, segments } = ev {
            assert_eq!(msg_seq, 1);
            assert!(segments.is_empty());
            complete = true;
        }
    }
    assert!(complete);
    // Out-of-order segment: fatal.
    let sent = client
        .send_bulk(now, StreamId(0), &order(2), &[8], &mut wire)
        .unwrap();
    let f = split(&wire[..sent.len]).pop().unwrap();
    server.handle_frame(now, &f.header, &f.payload).unwrap();
    server.accept_bulk_external().unwrap();
    let mut wrong = FrameHeader::new(FrameKind::Bulk);
    wrong.seq = 5;
    wrong.correlation = 4;
    wrong.type_id = 1;
    wrong.payload_len = 8;
    assert!(server
        .bulk_segment_start(now, &wrong)
        .unwrap_err()
        .is_fatal());
}

#[test]
fn discarded_bulk_segments_are_skipped() {
    let (mut client, mut server) = pair();
    let now = Instant::ZERO;
    let mut wire = vec![0u8; 8192];
    let mut stream = Vec::new();
    let sent = client
        .send_bulk(now, StreamId(0), &order(1), &[64], &mut wire)
        .unwrap();
    stream.extend_from_slice(&wire[..sent.len]);
    let sent = client
        .encode_bulk_segment(now, &[9; 64], &mut wire)
        .unwrap();
    stream.extend_from_slice(&wire[..sent.len]);
    let sent = client.send(now, StreamId(0), &order(2), &mut wire).unwrap();
    stream.extend_from_slice(&wire[..sent.len]);
    let frames = split(&stream);
    server
        .handle_frame(now, &frames[0].header, &frames[0].payload)
        .unwrap();
    server.discard_bulk().unwrap();
    assert_eq!(
        server.bulk_segment_start(now, &frames[1].header).unwrap(),
        BulkTarget::Skip
    );
    server.bulk_segment_end(now, &frames[1].header);
    let next = server
        .handle_frame(now, &frames[2].header, &frames[2].payload)
        .unwrap()
        .unwrap();
    assert_eq!(next.get::<Order>().unwrap().id, 2);
}

#[test]
fn a_shared_payload_goes_out_behind_each_connections_own_header() {
    // Two connections, one encoded payload.
    let (mut client_a, mut server_a) = pair();
    let (mut client_b, mut server_b) = pair();
    let now = Instant::ZERO;
    // Advance b's sequence so the two headers differ.
    let mut wire = vec![0u8; 4096];
    let sent = server_b
        .send(now, StreamId(0), &Ping { nonce: 1 }, &mut wire)
        .unwrap();
    for f in split(&wire[..sent.len]) {
        client_b.handle_frame(now, &f.header, &f.payload).unwrap();
    }
    let mut shared = AlignedVec::<16>::new();
    shared.resize(4096, 0);
    let len = encode_message(
        &mut shared,
        FrameHeader::new(FrameKind::Message),
        &order(42),
    )
    .unwrap();
    let payload_len = FrameHeader::parse(shared.first_chunk().unwrap())
        .unwrap()
        .payload_len;
    for (server, client, seq) in [
        (&mut server_a, &mut client_a, 1),
        (&mut server_b, &mut client_b, 2),
    ] {
        let mut head = [0u8; 64];
        let sent = server
            .send_header::<Order>(now, StreamId(5), payload_len, &mut head)
            .unwrap();
        assert_eq!((sent.seq, sent.len), (seq, HEADER_LEN));
        let mut stream = head[..HEADER_LEN].to_vec();
        stream.extend_from_slice(&shared[HEADER_LEN..len]);
        let f = split(&stream).pop().unwrap();
        let got = client
            .handle_frame(now, &f.header, &f.payload)
            .unwrap()
            .unwrap();
        assert_eq!(got.stream(), StreamId(5));
        assert_eq!(got.seq(), seq);
        assert_eq!(got.get::<Order>().unwrap().id, 42);
    }
}

#[test]
fn an_owed_ack_goes_out_at_once_when_asked_and_not_before() {
    let (mut client, mut server) = pair();
    let now = Instant::ZERO;
    assert!(!server.wants_transmit(), "nothing owed after the handshake");
    assert!(!server.ack_if_pending(), "no ack owed: none queued");
    let mut wire = vec![0u8; 4096];
    for id in 0..3 {
        let sent = client
            .send(now, StreamId(0), &order(id), &mut wire)
            .unwrap();
        for f in split(&wire[..sent.len]) {
            server
                .handle_frame(now, &f.header, &f.payload)
                .unwrap()
                .unwrap();
        }
    }
    // Three frames are below the ack count: the ack waits for its delay.
    assert!(!server.wants_transmit());
    assert!(server.ack_if_pending());
    assert!(server.wants_transmit());
    let mut acks = Vec::new();
    drain_control(&mut server, now, &mut acks);
    let frames = split(&acks);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].header.kind, FrameKind::Ack);
    assert_eq!(
        frames[0].header.seq, 3,
        "cumulative, up to the last received"
    );
    assert!(!server.ack_if_pending(), "owed nothing more");
    // The client learns that everything was received.
    client
        .handle_frame(now, &frames[0].header, &frames[0].payload)
        .unwrap();
    assert_eq!(client.acked(), 3);
}

#[test]
fn a_payload_archived_by_an_earlier_session_is_sent_again_by_type_id() {
    let (mut client, mut server) = pair();
    let now = Instant::ZERO;
    let mut wire = vec![0u8; 4096];
    let sent = client.send(now, StreamId(2), &order(7), &mut wire).unwrap();
    let original = split(&wire[..sent.len]).pop().unwrap();
    // A new session sends the same archived bytes again by type id.
    let (mut client2, _) = pair();
    let len = original.payload.len();
    let mut frame = vec![0u8; frame_len(len)];
    let again = client2
        .send_header_of(
            now,
            StreamId(2),
            original.header.type_id,
            len as u32,
            &mut frame,
        )
        .unwrap();
    frame[HEADER_LEN..HEADER_LEN + len].copy_from_slice(&original.payload);
    assert_eq!(again.seq, 1);
    let f = split(&frame).pop().unwrap();
    let got = server
        .handle_frame(now, &f.header, &f.payload)
        .unwrap()
        .unwrap();
    assert_eq!(got.stream(), StreamId(2));
    assert_eq!(got.get::<Order>().unwrap().id, 7);
    // A type the schema lacks is refused.
    let err = client2
        .send_header_of(now, StreamId(0), 0xdead_beef, 8, &mut frame)
        .unwrap_err();
    assert!(
        matches!(err, ProtoError::UnknownType(0xdead_beef)),
        "{err:?}"
    );
}
