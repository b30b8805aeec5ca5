//! Two sessions wired back to back in memory, on virtual time: handshake,
//! refusal, heartbeats and timeouts, resume after a cut, request/reply,
//! bulk, close.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ringwire_proto::{
    encode_frame, peek_hello, CallId, CloseReason, Config, Event, FrameHeader, FrameKind, Hello,
    Instant, LostReason, Message, ProtoError, ReplayBuffer, ReplyTo, Schema, Session, SessionState,
    StreamId,
};
use rkyv::util::AlignedVec;

/// What a peer got, copied out of the receive buffer.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Order {
        stream: u32,
        seq: u64,
        order: Order,
    },
    Ping {
        stream: u32,
        nonce: u64,
        call: Option<CallId>,
        reply_to: Option<ReplyTo>,
    },
    BulkOffer {
        seq: u64,
        sizes: Vec<u32>,
    },
}

#[derive(Clone, Copy, PartialEq)]
enum BulkPolicy {
    Accept,
    Discard,
    Undecided,
}

struct Peer {
    session: Session,
    replay: ReplayBuffer,
    out: Vec<u8>,
    got: Vec<Got>,
    events: Vec<Event<Vec<u8>>>,
    error: Option<ProtoError>,
    bulk: BulkPolicy,
    /// While frozen the peer neither sends nor handles timers (a hung node).
    frozen: bool,
}

impl Peer {
    fn new(session: Session) -> Self {
        Peer {
            session,
            replay: ReplayBuffer::new(1 << 24),
            out: Vec::new(),
            got: Vec::new(),
            events: Vec::new(),
            error: None,
            bulk: BulkPolicy::Accept,
            frozen: false,
        }
    }

    fn connected(&self) -> bool {
        matches!(
            self.session.state(),
            SessionState::Handshaking
                | SessionState::Established
                | SessionState::Draining
                | SessionState::Closing
        )
    }

    /// Queues a data frame: retained for resend, written if connected.
    fn push_data(&mut self, seq: u64, frame: &[u8]) {
        self.replay.push(seq, frame).unwrap();
        if self.connected() {
            self.out.extend_from_slice(frame);
        }
    }

    fn send_order(&mut self, now: Instant, stream: u32, order: &Order) -> u64 {
        let mut buf = vec![0u8; 1 << 17];
        let sent = self
            .session
            .send(now, StreamId(stream), order, &mut buf)
            .unwrap();
        self.push_data(sent.seq, &buf[..sent.len]);
        sent.seq
    }

    fn call_ping(&mut self, now: Instant, stream: u32, nonce: u64) -> CallId {
        let mut buf = vec![0u8; 256];
        let (sent, call) = self
            .session
            .call(now, StreamId(stream), &Ping { nonce }, &mut buf)
            .unwrap();
        self.push_data(sent.seq, &buf[..sent.len]);
        call
    }

    fn reply_ping(&mut self, now: Instant, to: ReplyTo, nonce: u64) {
        let mut buf = vec![0u8; 256];
        let sent = self
            .session
            .reply(now, to, &Ping { nonce }, &mut buf)
            .unwrap();
        self.push_data(sent.seq, &buf[..sent.len]);
    }

    fn send_bulk(&mut self, now: Instant, meta: &Order, segments: &[Vec<u8>]) {
        let lens: Vec<u32> = segments.iter().map(|s| s.len() as u32).collect();
        let mut buf = vec![0u8; 4096];
        let sent = self
            .session
            .send_bulk(now, StreamId(9), meta, &lens, &mut buf)
            .unwrap();
        self.push_data(sent.seq, &buf[..sent.len]);
        for (i, seg) in segments.iter().enumerate() {
            let mut frame = vec![0u8; seg.len() + 64];
            if i % 2 == 0 {
                let sent = self
                    .session
                    .encode_bulk_segment(now, seg, &mut frame)
                    .unwrap();
                self.push_data(sent.seq, &frame[..sent.len]);
            } else {
                // Gather-style: header, then the data from its own memory, then padding.
                let head = self.session.bulk_segment_header(now, &mut frame).unwrap();
                let mut wire = frame[..head.header_len].to_vec();
                wire.extend_from_slice(seg);
                wire.resize(wire.len() + head.pad, 0);
                self.push_data(head.seq, &wire);
            }
        }
    }

    fn flush_control(&mut self, now: Instant) {
        let mut buf = [0u8; 4096];
        while let Some(n) = self.session.poll_transmit(now, &mut buf).unwrap() {
            if self.connected()
                || self.session.state() == SessionState::Failed
                || self.session.state() == SessionState::Closed
            {
                self.out.extend_from_slice(&buf[..n]);
            }
        }
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match &event {
                Event::Acked { up_to } => self.replay.ack(*up_to),
                Event::Connected {
                    resumed: true,
                    resend_after,
                    ..
                } => {
                    for (_, frame) in self.replay.resend_after(*resend_after) {
                        self.out.extend_from_slice(frame);
                    }
                }
                _ => {}
            }
            self.events.push(event);
        }
    }

    /// Feeds `bytes` in chunks of `chunk` bytes, each in its own aligned
    /// buffer (like provided receive buffers).
    fn receive(&mut self, now: Instant, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk.max(1)) {
            let mut aligned = AlignedVec::<16>::new();
            aligned.extend_from_slice(piece);
            let mut at = 0;
            while at < aligned.len() {
                if self.error.is_some() {
                    return;
                }
                if let Some((_, sizes)) = self.session.bulk_offer() {
                    let sizes = sizes.to_vec();
                    match self.bulk {
                        BulkPolicy::Accept => {
                            let dests = sizes.iter().map(|&s| vec![0u8; s as usize]).collect();
                            self.session.accept_bulk(dests).map_err(|(e, _)| e).unwrap();
                        }
                        BulkPolicy::Discard => self.session.discard_bulk().unwrap(),
                        BulkPolicy::Undecided => {
                            let err = self.session.handle_input(now, &aligned[at..]).unwrap_err();
                            assert!(matches!(err, ProtoError::BulkDecisionPending));
                            assert!(!err.is_fatal());
                            // Wrong sizes are handed back and the offer stays.
                            let wrong = vec![vec![0u8; 1]; sizes.len()];
                            let (err, back) = self.session.accept_bulk(wrong).unwrap_err();
                            assert!(matches!(err, ProtoError::BulkSize { index: 0, .. }));
                            assert_eq!(back.len(), sizes.len());
                            self.bulk = BulkPolicy::Accept;
                            continue;
                        }
                    }
                }
                match self.session.handle_input(now, &aligned[at..]) {
                    Ok(input) => {
                        assert!(input.consumed > 0);
                        at += input.consumed;
                        if let Some(msg) = input.received {
                            let got = if let Ok(order) = msg.get::<Order>() {
                                Got::Order {
                                    stream: msg.stream().0,
                                    seq: msg.seq(),
                                    order: to_owned(order),
                                }
                            } else {
                                let ping = msg.get::<Ping>().unwrap();
                                Got::Ping {
                                    stream: msg.stream().0,
                                    nonce: ping.nonce.to_native(),
                                    call: msg.call(),
                                    reply_to: msg.reply_to(),
                                }
                            };
                            let offer = msg.bulk().map(|s| Got::BulkOffer {
                                seq: msg.seq(),
                                sizes: s.iter().collect(),
                            });
                            self.got.push(got);
                            self.got.extend(offer);
                        }
                    }
                    Err(err) => {
                        self.error = Some(err);
                        return;
                    }
                }
            }
        }
    }
}

struct Net {
    a: Peer,
    b: Peer,
    now: Instant,
    chunk: usize,
}

fn schema() -> Arc<Schema> {
    Arc::new(
        Schema::new()
            .with::<Order>()
            .unwrap()
            .with::<Ping>()
            .unwrap(),
    )
}

fn config(node_id: u64) -> Config {
    Config::default().node_id(node_id)
}

impl Net {
    fn new(chunk: usize) -> Self {
        Self::with(config(1), schema(), config(2), schema(), chunk)
    }

    fn with(ca: Config, sa: Arc<Schema>, cb: Config, sb: Arc<Schema>, chunk: usize) -> Self {
        let now = Instant::from_nanos(1_000_000_000);
        let a = Peer::new(Session::connect(ca, sa, now, 0xC0FFEE));
        let b = Peer::new(Session::accept(cb, sb, now));
        let mut net = Net { a, b, now, chunk };
        net.pump();
        net
    }

    /// Moves bytes both ways until nothing moves.
    fn pump(&mut self) {
        for _ in 0..100 {
            let now = self.now;
            for p in [&mut self.a, &mut self.b] {
                if !p.frozen {
                    p.flush_control(now);
                }
                p.drain_events();
            }
            let to_b = std::mem::take(&mut self.a.out);
            let to_a = if self.b.frozen {
                Vec::new()
            } else {
                std::mem::take(&mut self.b.out)
            };
            if to_a.is_empty() && to_b.is_empty() {
                return;
            }
            if !self.b.frozen {
                self.b.receive(now, &to_b, self.chunk);
            }
            self.a.receive(now, &to_a, self.chunk);
        }
        panic!("network did not settle");
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        for p in [&mut self.a, &mut self.b] {
            if !p.frozen {
                p.session.handle_timeout(self.now);
            }
        }
        self.pump();
    }

    /// Cuts the connection, delivering only `deliver` bytes of what A had in
    /// flight, then reconnects both sides (the server routes by peeking at
    /// the client's hello).
    fn cut_and_resume(&mut self, deliver: usize) {
        let in_flight = std::mem::take(&mut self.a.out);
        let now = self.now;
        self.b
            .receive(now, &in_flight[..deliver.min(in_flight.len())], self.chunk);
        self.b.out.clear();
        self.a.session.connection_lost(now);
        self.b.session.connection_lost(now);
        self.a.drain_events();
        self.b.drain_events();
        // A sends while disconnected: retained, resent after resume.
        self.a.send_order(now, 1, &order(99));
        self.a.session.reconnect(now).unwrap();
        self.a.flush_control(now);
        let hello = peek_hello(&self.a.out).unwrap().expect("hello is complete");
        assert!(hello.resume);
        assert_eq!(hello.session_id, self.b.session.session_id());
        self.b.session.reconnect(now).unwrap();
        self.pump();
    }
}

fn order(n: u64) -> Order {
    Order {
        id: n,
        price: n as i32 * 3,
        symbol: format!("S{n}"),
        blob: vec![n as u8; (n as usize * 37) % 400],
        note: None,
    }
}

fn orders(got: &[Got]) -> Vec<u64> {
    got.iter()
        .filter_map(|g| match g {
            Got::Order { order, .. } => Some(order.id),
            _ => None,
        })
        .collect()
}

fn connected(events: &[Event<Vec<u8>>]) -> Vec<(u64, bool, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Connected {
                peer,
                resumed,
                resend_after,
            } => Some((peer.node_id, *resumed, *resend_after)),
            _ => None,
        })
        .collect()
}

#[test]
fn handshake_establishes_both_sides() {
    let net = Net::new(7);
    assert_eq!(net.a.session.state(), SessionState::Established);
    assert_eq!(net.b.session.state(), SessionState::Established);
    assert_eq!(connected(&net.a.events), [(2, false, 0)]);
    assert_eq!(connected(&net.b.events), [(1, false, 0)]);
    assert_eq!(
        net.b.session.session_id(),
        0xC0FFEE,
        "server adopts the client's session id"
    );
}

#[test]
fn incompatible_schemas_are_refused_with_the_difference() {
    let bigger = Arc::new(
        Schema::new()
            .with::<Order>()
            .unwrap()
            .with::<Ping>()
            .unwrap()
            .with::<Extra>()
            .unwrap(),
    );
    let net = Net::with(config(1), schema(), config(2), bigger, 64);
    let a = net.a.error.as_ref().expect("client refuses");
    let b = net.b.error.as_ref().expect("server refuses");
    assert!(matches!(a, ProtoError::Incompatible(_)));
    assert!(
        a.to_string()
            .contains(&format!("only at peer: {:#010x}", Extra::TYPE_ID)),
        "{a}"
    );
    assert!(b.to_string().contains("only here: test.Extra"), "{b}");
    assert_eq!(net.a.session.state(), SessionState::Failed);
    assert!(connected(&net.a.events).is_empty());
}

#[test]
fn missing_capability_and_foreign_format_are_refused() {
    let needs = config(2).required_capabilities(0x8000);
    let net = Net::with(config(1), schema(), needs, schema(), 64);
    let b = net.b.error.as_ref().unwrap().to_string();
    assert!(b.contains("lacks required capabilities 0x8000"), "{b}");

    // A peer whose rkyv uses 64-bit pointers and big-endian integers.
    let now = Instant::ZERO;
    let mut session: Session = Session::accept(config(2), schema(), now);
    let mut foreign = Hello {
        protocol_version: 1,
        resume: false,
        capabilities: 3,
        node_id: 5,
        session_id: 77,
        rx_seq: 0,
        max_payload: 1024,
        format: schema().format(),
        type_ids: schema().type_ids().collect(),
    };
    foreign.format.pointer_width = 8;
    foreign.format.little_endian = false;
    let mut payload = vec![0u8; foreign.encoded_len()];
    foreign.write(&mut payload).unwrap();
    let mut frame = AlignedVec::<16>::new();
    frame.resize(payload.len() + 64, 0);
    let n = encode_frame(&mut frame, FrameHeader::new(FrameKind::Hello), &payload).unwrap();
    let err = session.handle_input(now, &frame[..n]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("ours little-endian, aligned, 32-bit pointers, peer big-endian, aligned, 64-bit pointers"), "{text}");
    // The refusal is announced to the peer.
    let mut buf = [0u8; 64];
    let n = session.poll_transmit(now, &mut buf).unwrap().unwrap();
    assert_eq!(buf[1], FrameKind::Close as u8);
    assert_eq!(
        u32::from_le_bytes([buf[32], buf[33], buf[34], buf[35]]),
        CloseReason::Incompatible.code()
    );
    assert!(n >= 48);
}

#[test]
fn messages_arrive_in_order_over_any_chunking() {
    let chunks: &[usize] = if cfg!(miri) {
        &[5, 4096]
    } else {
        &[1, 5, 16, 100, 4096]
    };
    for &chunk in chunks {
        let mut net = Net::new(chunk);
        for n in 0..20 {
            let now = net.now;
            net.a.send_order(now, (n % 3) as u32, &order(n));
        }
        net.pump();
        assert_eq!(
            orders(&net.b.got),
            (0..20).collect::<Vec<_>>(),
            "chunk {chunk}"
        );
        if let Got::Order {
            stream,
            seq,
            order: o,
        } = &net.b.got[4]
        {
            assert_eq!((*stream, *seq), (1, 5));
            assert_eq!(o, &order(4));
        }
        net.advance(Duration::from_millis(10));
        assert_eq!(net.a.session.acked(), 20, "delayed ack covers everything");
        assert!(net.a.replay.is_empty());
    }
}

#[test]
fn heartbeats_keep_an_idle_connection_alive_and_silence_times_out() {
    let mut net = Net::new(64);
    for _ in 0..40 {
        net.advance(Duration::from_millis(500));
    }
    assert_eq!(net.a.session.state(), SessionState::Established);
    assert_eq!(net.b.session.state(), SessionState::Established);
    assert!(net.a.session.poll_timeout().is_some());

    net.b.frozen = true;
    let mut lost_at = None;
    for step in 1..=20 {
        net.advance(Duration::from_millis(500));
        if net
            .a
            .events
            .iter()
            .any(|e| matches!(e, Event::ConnectionLost(LostReason::IdleTimeout)))
        {
            lost_at = Some(step);
            break;
        }
    }
    // idle_timeout is 5 s: lost on the 10th half-second step after B froze.
    assert_eq!(lost_at, Some(10));
    assert_eq!(net.a.session.state(), SessionState::Disconnected);
    assert_eq!(net.a.session.poll_timeout(), None);
}

#[test]
fn a_silent_peer_fails_the_handshake() {
    let now = Instant::ZERO;
    let mut s: Session = Session::connect(config(1), schema(), now, 5);
    let deadline = s.poll_timeout().unwrap();
    assert_eq!(deadline, now + Duration::from_secs(5));
    s.handle_timeout(now + Duration::from_secs(4));
    assert_eq!(s.state(), SessionState::Handshaking);
    s.handle_timeout(deadline);
    assert!(matches!(
        s.poll_event(),
        Some(Event::ConnectionLost(LostReason::HandshakeTimeout))
    ));
}

#[test]
fn resume_after_a_cut_delivers_everything_exactly_once() {
    for deliver in [0, 100, 333, 1000] {
        let mut net = Net::new(48);
        for n in 0..10 {
            let now = net.now;
            net.a.send_order(now, 0, &order(n));
        }
        net.cut_and_resume(deliver);
        let mut expected: Vec<u64> = (0..10).collect();
        expected.push(99);
        assert_eq!(
            orders(&net.b.got),
            expected,
            "delivered {deliver} bytes before the cut"
        );
        assert_eq!(connected(&net.a.events).last().map(|c| c.1), Some(true));
        // Everything the peer had is not resent: resend_after matches what B got before the cut.
        let before = connected(&net.a.events).last().map(|c| c.2).unwrap();
        assert!(before <= 10);
        net.advance(Duration::from_millis(10));
        assert!(net.a.replay.is_empty(), "all acknowledged after resume");
        assert_eq!(net.b.session.last_received(), 11);
    }
}

#[test]
fn a_fresh_server_refuses_a_resume_and_a_lost_session_is_reported() {
    let mut net = Net::new(64);
    let now = net.now;
    net.a.send_order(now, 0, &order(1));
    net.pump();
    net.a.session.connection_lost(now);
    net.a.session.reconnect(now).unwrap();
    // The server lost the session: a fresh accept receives the resume hello.
    net.b = Peer::new(Session::accept(config(2), schema(), now));
    net.a.out.clear();
    net.pump();
    assert!(
        matches!(net.b.error, Some(ProtoError::Resume(_))),
        "{:?}",
        net.b.error
    );
    assert!(
        matches!(net.a.error, Some(ProtoError::Resume(_))),
        "{:?}",
        net.a.error
    );
}

#[test]
fn request_reply_over_multiplexed_streams() {
    let mut net = Net::new(33);
    let now = net.now;
    let c1 = net.a.call_ping(now, 1, 10);
    let c2 = net.a.call_ping(now, 2, 20);
    net.pump();
    let requests: Vec<(u32, u64, ReplyTo)> = net
        .b
        .got
        .iter()
        .filter_map(|g| match g {
            Got::Ping {
                stream,
                nonce,
                reply_to: Some(to),
                ..
            } => Some((*stream, *nonce, *to)),
            _ => None,
        })
        .collect();
    assert_eq!(requests.len(), 2);
    assert_eq!(net.a.session.outstanding_calls(), 2);
    // Reply out of order.
    for (_, nonce, to) in requests.iter().rev() {
        net.b.reply_ping(now, *to, nonce + 1);
    }
    net.pump();
    let replies: Vec<(u32, u64, Option<CallId>)> = net
        .a
        .got
        .iter()
        .filter_map(|g| match g {
            Got::Ping {
                stream,
                nonce,
                call,
                ..
            } => Some((*stream, *nonce, *call)),
            _ => None,
        })
        .collect();
    assert_eq!(replies, [(2, 21, Some(c2)), (1, 11, Some(c1))]);
    assert_eq!(net.a.session.outstanding_calls(), 0);
}

#[test]
fn calls_time_out_and_late_replies_are_dropped() {
    let mut net = Net::new(64);
    let now = net.now;
    let call = net.a.call_ping(now, 0, 1);
    net.pump();
    let Some(Got::Ping {
        reply_to: Some(to), ..
    }) = net.b.got.first().cloned()
    else {
        panic!("request not delivered");
    };
    for _ in 0..31 {
        net.advance(Duration::from_secs(1));
    }
    assert!(net
        .a
        .events
        .iter()
        .any(|e| matches!(e, Event::CallTimedOut(c) if *c == call)));
    let before = net.a.got.len();
    let now = net.now;
    net.b.reply_ping(now, to, 2);
    net.pump();
    assert_eq!(net.a.got.len(), before, "late reply dropped");
    assert!(net.a.error.is_none());
}

/// A segment spanning many receive chunks (smaller under miri, which is slow).
fn big_segment() -> u32 {
    if cfg!(miri) {
        3_000
    } else {
        70_000
    }
}

#[test]
fn bulk_lands_in_exactly_sized_destinations() {
    for policy in [BulkPolicy::Accept, BulkPolicy::Undecided] {
        let mut net = Net::new(1000);
        net.b.bulk = policy;
        let segments = vec![
            (0..big_segment())
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>(),
            Vec::new(),
            b"tail".to_vec(),
        ];
        let now = net.now;
        net.a.send_bulk(now, &order(7), &segments);
        net.a.send_order(now, 0, &order(8));
        net.pump();
        assert_eq!(
            net.b.got[1],
            Got::BulkOffer {
                seq: 1,
                sizes: vec![big_segment(), 0, 4]
            },
            "metadata and sizes come first"
        );
        let done: Vec<&Vec<Vec<u8>>> = net
            .b
            .events
            .iter()
            .filter_map(|e| match e {
                Event::BulkComplete {
                    msg_seq: 1,
                    segments,
                } => Some(segments),
                _ => None,
            })
            .collect();
        assert_eq!(done, [&segments]);
        assert_eq!(
            orders(&net.b.got),
            [7, 8],
            "messages after the bulk flow normally"
        );
    }
}

#[test]
fn discarded_bulk_is_skipped() {
    let mut net = Net::new(512);
    net.b.bulk = BulkPolicy::Discard;
    let now = net.now;
    net.a
        .send_bulk(now, &order(1), &[vec![1; 5000], vec![2; 3]]);
    net.a.send_order(now, 0, &order(2));
    net.pump();
    assert_eq!(orders(&net.b.got), [1, 2]);
    assert!(!net
        .b
        .events
        .iter()
        .any(|e| matches!(e, Event::BulkComplete { .. })));
    net.advance(Duration::from_millis(10));
    assert_eq!(net.a.session.acked(), 4);
}

#[test]
fn orderly_close_flushes_everything_first() {
    let mut net = Net::new(20);
    let now = net.now;
    for n in 0..5 {
        net.a.send_order(now, 0, &order(n));
    }
    net.a.session.close(now).unwrap();
    assert!(net
        .a
        .session
        .send(now, StreamId(0), &order(9), &mut [0u8; 1024])
        .is_err());
    net.pump();
    assert_eq!(orders(&net.b.got), [0, 1, 2, 3, 4]);
    assert!(net.b.events.iter().any(|e| matches!(
        e,
        Event::Closed {
            by_peer: true,
            clean: true,
            ..
        }
    )));
    assert!(net.a.events.iter().any(|e| matches!(
        e,
        Event::Closed {
            by_peer: false,
            clean: true,
            ..
        }
    )));
    assert_eq!(net.a.session.state(), SessionState::Closed);
    assert_eq!(net.b.session.state(), SessionState::Closed);
}

#[test]
fn close_times_out_when_the_peer_is_gone() {
    let mut net = Net::new(64);
    let now = net.now;
    net.b.frozen = true;
    net.a.session.close(now).unwrap();
    net.advance(Duration::from_secs(1));
    net.advance(Duration::from_secs(4));
    assert!(net
        .a
        .events
        .iter()
        .any(|e| matches!(e, Event::Closed { clean: false, .. })));
}

#[test]
fn garbage_after_the_handshake_is_fatal_and_announced() {
    let mut net = Net::new(64);
    let now = net.now;
    net.b.receive(now, &[0xAB; 64], 64);
    let err = net.b.error.take().unwrap();
    assert!(err.is_fatal(), "{err}");
    assert_eq!(net.b.session.state(), SessionState::Failed);
    net.b.flush_control(now);
    assert_eq!(net.b.out[1], FrameKind::Close as u8);
    net.b.out.clear();
    // A message before the hello is refused too.
    let mut fresh: Session = Session::accept(config(2), schema(), now);
    let mut buf = AlignedVec::<16>::new();
    buf.resize(256, 0);
    let n = ringwire_proto::encode_message(
        &mut buf,
        FrameHeader::new(FrameKind::Message),
        &Ping { nonce: 1 },
    )
    .unwrap();
    assert!(matches!(
        fresh.handle_input(now, &buf[..n]),
        Err(ProtoError::ExpectedHello("message"))
    ));
}
