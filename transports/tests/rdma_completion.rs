//! The completion core against the in-memory RDMA fabric: two hosts, each
//! with its own completion core, serving the two cores of one executor
//! runtime. Queue pairs are connected with the side-channel exchange, as
//! two processes would.
#![cfg(feature = "rdma")]

use std::sync::mpsc;
use std::time::Duration;

use ringwire_runtime::{current_core, Placement, Runtime};
use ringwire_transports::rdma::completion::{
    CompletionClient, CompletionConfig, CompletionCore, ConnectParams, LaneEndpoint, LocalQp,
    PollMode, RdmaError, Region, RegionMemory, RegionSpec,
};
use ringwire_transports::rdma::mem::Fabric;
use ringwire_transports::rdma::sidechannel::{Credits, Exchange, ExposedRegion};
use ringwire_transports::rdma::verbs::{Access, QpCaps, SendOp, WcOpcode, WcStatus};

const REGION: usize = 2 << 20;
/// Each lane uses its own half of a host's region.
const LANE_SPAN: usize = REGION / 2;
const SLOT: usize = 4096;
/// Bounded waits for the executor tasks (never a timing assertion).
const JOIN: Duration = Duration::from_secs(60);

struct Host {
    core: CompletionCore,
    lanes: Vec<LaneEndpoint>,
}

fn host(fabric: &Fabric, name: &str, mode: PollMode, lane_slots: usize) -> Host {
    fabric.add_host(name).unwrap();
    let fabric = fabric.clone();
    let device = name.to_string();
    let memory = RegionMemory::new(REGION).unwrap();
    let (core, lanes) = CompletionCore::start(
        CompletionConfig::new(2)
            .poll_mode(mode)
            .cq_entries(1024)
            .mailbox_capacity(lane_slots),
        move || fabric.open(&device),
        vec![RegionSpec {
            memory,
            access: Access::LOCAL_WRITE.union(Access::REMOTE_WRITE),
        }],
    )
    .unwrap();
    assert_eq!(core.device_name(), name);
    assert_eq!(core.regions().len(), 1);
    Host { core, lanes }
}

fn executors() -> Runtime {
    Runtime::builder()
        .placement(Placement::Unpinned(2))
        .recv_buffers(16)
        .send_buffers(0)
        .build()
        .unwrap()
}

/// Two hosts on one fabric, and their lanes paired up by executor core.
fn setup(mode: PollMode) -> (Host, Host, Vec<(LaneEndpoint, LaneEndpoint)>) {
    setup_with(mode, 1024)
}

fn setup_with(
    mode: PollMode,
    lane_slots: usize,
) -> (Host, Host, Vec<(LaneEndpoint, LaneEndpoint)>) {
    let fabric = Fabric::new();
    let mut a = host(&fabric, "hca-a", mode, lane_slots);
    let mut b = host(&fabric, "hca-b", mode, lane_slots);
    let lanes = a.lanes.drain(..).zip(b.lanes.drain(..)).collect();
    (a, b, lanes)
}

/// What a side sends over the side channel for `qp`: encoded, so the other
/// side connects from the decoded bytes.
fn exchange(qp: &LocalQp, credits: u32, regions: Vec<ExposedRegion>, hello: &[u8]) -> Vec<u8> {
    let x = Exchange {
        qp_num: qp.qp_num,
        lid: qp.lid,
        gid: qp.gid,
        psn: qp.psn,
        mtu: qp.mtu,
        credits: Credits {
            count: credits,
            size: SLOT as u32,
        },
        regions,
        handshake: hello.to_vec(),
    };
    let mut bytes = Vec::new();
    x.encode(&mut bytes).unwrap();
    bytes
}

/// Creates a queue pair on each host and connects them through the
/// side-channel codec; returns (A's, B's).
async fn connect(a: &CompletionClient, b: &CompletionClient) -> (LocalQp, LocalQp) {
    let qa = a.create_qp(QpCaps::default()).await.unwrap();
    let qb = b.create_qp(QpCaps::default()).await.unwrap();
    let region = &b.regions()[0];
    let exposed = ExposedRegion {
        addr: region.memory.addr(),
        len: region.memory.len() as u64,
        rkey: region.rkey,
    };
    let from_a = Exchange::decode(&exchange(&qa, 0, vec![], b"hello from a")).unwrap();
    let from_b = Exchange::decode(&exchange(&qb, 64, vec![exposed], b"hello from b")).unwrap();
    assert_eq!(from_a.handshake, b"hello from a");
    assert_eq!(from_b.regions, vec![exposed]);
    let params = ConnectParams::default();
    b.connect(qb.id, from_a.remote_qp(), params).await.unwrap();
    a.connect(qa.id, from_b.remote_qp(), params).await.unwrap();
    (qa, qb)
}

fn base(lane: usize) -> usize {
    lane * LANE_SPAN
}

fn payload(lane: usize, i: usize) -> Vec<u8> {
    format!("core {lane} message {i} ")
        .repeat(i % 7 + 1)
        .into_bytes()
}

fn write(region: &Region, offset: usize, data: &[u8]) {
    // SAFETY: the tests give every request its own slot and touch a slot
    // only before posting it or after its completion.
    unsafe { region.memory.write(offset, data) };
}

fn read(region: &Region, offset: usize, len: usize) -> Vec<u8> {
    // SAFETY: as in `write`.
    unsafe { region.memory.bytes(offset, len) }.to_vec()
}

/// On one executor core: N messages from host A to host B, sends mostly
/// unsignaled; every future must get its own completion, on this core.
async fn round_trips(ea: LaneEndpoint, eb: LaneEndpoint, n: usize) -> usize {
    let lane = ea.lane();
    let a = CompletionClient::attach(ea);
    let b = CompletionClient::attach(eb);
    let (qa, qb) = connect(&a, &b).await;
    let (ra, rb) = (a.regions()[0].clone(), b.regions()[0].clone());
    let recvs: Vec<_> = (0..n)
        .map(|i| {
            let sge = rb.sge(base(lane) + i * SLOT, SLOT as u32).unwrap();
            b.post_recv(qb.id, &[sge])
        })
        .collect();
    let sends: Vec<_> = (0..n)
        .map(|i| {
            let data = payload(lane, i);
            let off = base(lane) + i * SLOT;
            write(&ra, off, &data);
            let sge = ra.sge(off, data.len() as u32).unwrap();
            let imm = ((lane as u32) << 16) | i as u32;
            let signaled = i % 4 == 3 || i == n - 1;
            a.post_send(qa.id, SendOp::SendWithImm(imm), &[sge], signaled)
        })
        .collect();
    for send in sends {
        let wc = send.await.unwrap();
        assert_eq!(wc.status, WcStatus::Success);
        assert_eq!(wc.opcode, WcOpcode::Send);
        assert_eq!(current_core(), lane);
    }
    for (i, recv) in recvs.into_iter().enumerate() {
        let wc = recv.await.unwrap();
        assert_eq!(current_core(), lane);
        assert_eq!(wc.imm, Some(((lane as u32) << 16) | i as u32));
        assert_eq!(wc.qp_num, qb.qp_num);
        let data = payload(lane, i);
        assert_eq!(wc.byte_len as usize, data.len());
        assert_eq!(read(&rb, base(lane) + i * SLOT, data.len()), data);
    }
    n
}

fn run_round_trips(mode: PollMode, lane_slots: usize) {
    let (a, b, lanes) = setup_with(mode, lane_slots);
    let rt = executors();
    let handles: Vec<_> = lanes
        .into_iter()
        .enumerate()
        .map(|(core, (ea, eb))| rt.spawn_on(core, move || round_trips(ea, eb, 64)))
        .collect();
    for h in handles {
        assert_eq!(h.join_timeout(JOIN).expect("bounded").unwrap(), 64);
    }
    rt.shutdown(Duration::from_secs(5));
    a.core.shutdown(Duration::from_secs(5));
    b.core.shutdown(Duration::from_secs(5));
}

#[test]
fn completions_reach_the_core_and_future_that_asked_channel_mode() {
    run_round_trips(PollMode::Channel, 1024);
}

#[test]
fn full_lanes_queue_requests_and_replies_in_order() {
    // Two-slot rings: most requests wait in the client's backlog and most
    // replies in the completion core's; order and routing must hold.
    run_round_trips(PollMode::Channel, 2);
}

#[test]
fn completions_reach_the_core_and_future_that_asked_busy_mode() {
    run_round_trips(PollMode::Busy, 1024);
}

#[test]
fn a_lane_cannot_use_another_lanes_queue_pair() {
    let (a, b, mut lanes) = setup(PollMode::Channel);
    let (ea1, _) = lanes.pop().unwrap();
    let (ea0, _) = lanes.pop().unwrap();
    let rt = executors();
    let handle = rt.spawn_on(0, move || async move {
        let zero = CompletionClient::attach(ea0);
        let one = CompletionClient::attach(ea1);
        let qp = zero.create_qp(QpCaps::default()).await.unwrap();
        let sge = zero.regions()[0].sge(0, 8).unwrap();
        match one.post_recv(qp.id, &[sge]).await {
            Err(RdmaError::NotOwner {
                owner: 0, lane: 1, ..
            }) => {}
            other => panic!("expected NotOwner, got {other:?}"),
        }
        one.destroy_qp(qp.id).await.unwrap_err();
        zero.destroy_qp(qp.id).await.unwrap();
        match zero.post_recv(qp.id, &[sge]).await {
            Err(RdmaError::UnknownQp(_)) => {}
            other => panic!("expected UnknownQp, got {other:?}"),
        }
        // More entries than a request carries.
        let err = zero.post_recv(qp.id, &[sge; 5]).await.unwrap_err();
        assert!(matches!(err, RdmaError::InvalidRequest(_)), "{err}");
    });
    handle.join_timeout(JOIN).expect("bounded").unwrap();
    rt.shutdown(Duration::from_secs(5));
    a.core.shutdown(Duration::from_secs(5));
    b.core.shutdown(Duration::from_secs(5));
}

#[test]
fn bulk_by_rdma_write_with_immediate_into_a_granted_region() {
    let (a, b, mut lanes) = setup(PollMode::Channel);
    let (ea, eb) = lanes.remove(0);
    let rt = executors();
    let handle = rt.spawn_on(0, move || async move {
        let a = CompletionClient::attach(ea);
        let b = CompletionClient::attach(eb);
        let (qa, qb) = connect(&a, &b).await;
        let (ra, rb) = (a.regions()[0].clone(), b.regions()[0].clone());
        // B grants 256 KiB at offset 512 KiB of its region (the sender only
        // knows the exposed address and rkey from the side channel).
        let (grant, len) = (512 << 10, 256 << 10);
        let notify = b.post_recv(qb.id, &[rb.sge(0, 64).unwrap()]);
        let bulk: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        write(&ra, 0, &bulk);
        let op = SendOp::RdmaWriteWithImm {
            remote_addr: rb.memory.addr() + grant as u64,
            rkey: rb.rkey,
            imm: 0xb01c,
        };
        let sent = a
            .post_send(qa.id, op, &[ra.sge(0, len as u32).unwrap()], true)
            .await
            .unwrap();
        assert_eq!(sent.opcode, WcOpcode::RdmaWrite);
        let wc = notify.await.unwrap();
        assert_eq!(wc.opcode, WcOpcode::RecvRdmaWithImm);
        assert_eq!((wc.imm, wc.byte_len as usize), (Some(0xb01c), len));
        assert_eq!(read(&rb, grant, len), bulk);
    });
    handle.join_timeout(JOIN).expect("bounded").unwrap();
    rt.shutdown(Duration::from_secs(5));
    a.core.shutdown(Duration::from_secs(5));
    b.core.shutdown(Duration::from_secs(5));
}

#[test]
fn a_queue_pair_in_error_fails_exactly_its_requests() {
    let (a, b, mut lanes) = setup(PollMode::Channel);
    let (ea1, eb1) = lanes.pop().unwrap();
    let (ea0, eb0) = lanes.pop().unwrap();
    let rt = executors();
    // Core 1 runs an unrelated stream meanwhile: it must not notice.
    let other = rt.spawn_on(1, move || round_trips(ea1, eb1, 32));
    let broken = rt.spawn_on(0, move || async move {
        let a = CompletionClient::attach(ea0);
        let b = CompletionClient::attach(eb0);
        let (ra, rb) = (a.regions()[0].clone(), b.regions()[0].clone());
        let (qa1, qb1) = connect(&a, &b).await;
        let (qa2, qb2) = connect(&a, &b).await;
        let slot = |i: usize| i * SLOT;

        // Pair 1: four receives at B, one at A; two messages get through.
        let mut b_recvs: Vec<_> = (0..4)
            .map(|i| b.post_recv(qb1.id, &[rb.sge(slot(i), SLOT as u32).unwrap()]))
            .collect();
        let a_recv = a.post_recv(qa1.id, &[ra.sge(slot(10), SLOT as u32).unwrap()]);
        for _ in 0..2 {
            write(&ra, slot(20), b"fine");
            let sge = ra.sge(slot(20), 4).unwrap();
            a.post_send(qa1.id, SendOp::Send, &[sge], true)
                .await
                .unwrap();
            b_recvs.remove(0).await.unwrap();
        }

        // Pair 2 has requests in flight too.
        let p2_recv = b.post_recv(qb2.id, &[rb.sge(slot(30), SLOT as u32).unwrap()]);

        // Mid-stream, pair 1 writes with a key the peer never granted.
        let bad = SendOp::RdmaWrite {
            remote_addr: rb.memory.addr(),
            rkey: rb.rkey ^ 0x5a5a,
        };
        let sge = ra.sge(slot(20), 4).unwrap();
        let err = a.post_send(qa1.id, bad, &[sge], true).await.unwrap_err();
        assert!(
            matches!(
                err,
                RdmaError::Completion {
                    status: WcStatus::RemoteAccess,
                    ..
                }
            ),
            "{err}"
        );
        // Exactly pair 1's outstanding requests fail, on both hosts.
        for recv in b_recvs {
            let err = recv.await.unwrap_err();
            assert!(
                matches!(
                    err,
                    RdmaError::Completion {
                        status: WcStatus::WrFlush,
                        ..
                    }
                ),
                "{err}"
            );
        }
        let err = a_recv.await.unwrap_err();
        assert!(matches!(
            err,
            RdmaError::Completion {
                status: WcStatus::WrFlush,
                ..
            }
        ));
        // And pair 1 takes nothing more.
        let err = a
            .post_send(qa1.id, SendOp::Send, &[sge], true)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RdmaError::QpBroken { .. } | RdmaError::Verbs(_)),
            "{err}"
        );

        // Pair 2 carries on: the receive posted before the failure and a
        // bulk write after it.
        write(&ra, slot(40), b"still here");
        let sge = ra.sge(slot(40), 10).unwrap();
        a.post_send(qa2.id, SendOp::SendWithImm(2), &[sge], true)
            .await
            .unwrap();
        let wc = p2_recv.await.unwrap();
        assert_eq!((wc.imm, wc.byte_len), (Some(2), 10));
        assert_eq!(read(&rb, slot(30), 10), b"still here");
        let notify = b.post_recv(qb2.id, &[rb.sge(slot(31), 64).unwrap()]);
        let op = SendOp::RdmaWriteWithImm {
            remote_addr: rb.memory.addr() + slot(50) as u64,
            rkey: rb.rkey,
            imm: 3,
        };
        // Signaled: an unsignaled send with nothing after it on its queue
        // pair would only resolve with a later send (or the pair's end).
        a.post_send(qa2.id, op, &[sge], true).await.unwrap();
        assert_eq!(notify.await.unwrap().imm, Some(3));
        assert_eq!(read(&rb, slot(50), 10), b"still here");
    });
    broken.join_timeout(JOIN).expect("bounded").unwrap();
    assert_eq!(other.join_timeout(JOIN).expect("bounded").unwrap(), 32);
    rt.shutdown(Duration::from_secs(5));
    a.core.shutdown(Duration::from_secs(5));
    b.core.shutdown(Duration::from_secs(5));
}

#[test]
fn shutdown_with_work_in_flight_fails_every_future() {
    let (a, b, lanes) = setup(PollMode::Channel);
    let rt = executors();
    let (posted_tx, posted_rx) = mpsc::channel();
    let handles: Vec<_> = lanes
        .into_iter()
        .enumerate()
        .map(|(core, (ea, eb))| {
            let posted = posted_tx.clone();
            rt.spawn_on(core, move || async move {
                let a = CompletionClient::attach(ea);
                let b = CompletionClient::attach(eb);
                let (ra, rb) = (a.regions()[0].clone(), b.regions()[0].clone());
                let (qa, qb) = connect(&a, &b).await;
                let off = base(core);
                // Receives nobody fills, at both ends.
                let mut pending: Vec<_> = (0..8)
                    .map(|i| b.post_recv(qb.id, &[rb.sge(off + i * SLOT, 64).unwrap()]))
                    .collect();
                pending.push(a.post_recv(qa.id, &[ra.sge(off, 64).unwrap()]));
                // A second pair whose receiver posts nothing: the send
                // waits for a receive forever (RNR retry 7).
                let (qa2, _qb2) = connect(&a, &b).await;
                let sge = ra.sge(off + SLOT, 8).unwrap();
                let stuck = a.post_send(qa2.id, SendOp::Send, &[sge], true);
                posted.send(()).unwrap();
                let mut errors = Vec::new();
                for p in pending.into_iter().chain(std::iter::once(stuck)) {
                    errors.push(p.await.unwrap_err());
                }
                // Once the core is gone, new requests fail at once.
                let late = a.post_send(qa.id, SendOp::Send, &[sge], true).await;
                (errors, late.unwrap_err())
            })
        })
        .collect();
    for _ in 0..2 {
        posted_rx.recv_timeout(JOIN).unwrap();
    }
    a.core.shutdown(Duration::from_secs(5));
    b.core.shutdown(Duration::from_secs(5));
    for h in handles {
        let (errors, late) = h.join_timeout(JOIN).expect("nothing hangs").unwrap();
        assert_eq!(errors.len(), 10);
        for e in errors {
            assert!(
                matches!(e, RdmaError::ShuttingDown | RdmaError::Closed),
                "{e}"
            );
        }
        assert!(
            matches!(late, RdmaError::Closed | RdmaError::ShuttingDown),
            "{late}"
        );
    }
    rt.shutdown(Duration::from_secs(5));
}
