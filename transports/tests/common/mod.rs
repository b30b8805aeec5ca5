//! Message types and runtime helpers shared by the transports' tests.
#![allow(dead_code)]

use std::time::Duration;

pub mod netns;
pub mod relay;

use ringwire_proto::rkyv;
use ringwire_runtime::{Placement, Runtime};
use ringwire_transports::{type_id, Config, Message};

/// A message with a bit of everything.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct Order {
    pub id: u64,
    pub symbol: String,
    pub qty: i64,
    pub blob: Vec<u8>,
}

impl Message for Order {
    const TYPE_ID: u32 = type_id("test.Order");
    const NAME: &'static str = "test.Order";
}

/// A request.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct Ask {
    pub n: u64,
}

impl Message for Ask {
    const TYPE_ID: u32 = type_id("test.Ask");
    const NAME: &'static str = "test.Ask";
}

/// A reply.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct Answer {
    pub n: u64,
    pub square: u64,
}

impl Message for Answer {
    const TYPE_ID: u32 = type_id("test.Answer");
    const NAME: &'static str = "test.Answer";
}

/// A type only one side knows (schema mismatch).
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct Extra {
    pub x: u8,
}

impl Message for Extra {
    const TYPE_ID: u32 = type_id("test.Extra");
    const NAME: &'static str = "test.Extra";
}

/// The configuration both sides of most tests use.
pub fn config() -> Config {
    Config::with_types::<(Order, Ask, Answer)>().unwrap()
}

pub fn order(id: u64) -> Order {
    Order {
        id,
        symbol: format!("SYM{}", id % 97),
        qty: -(id as i64),
        blob: vec![(id % 251) as u8; (id % 300) as usize],
    }
}

/// A two-core runtime (unpinned, so tests run anywhere).
pub fn runtime() -> Runtime {
    Runtime::builder()
        .placement(Placement::Unpinned(2))
        .recv_buffers(256)
        .send_buffers(64)
        .build()
        .unwrap()
}

/// Stops the runtime, checking that nothing had to be abandoned.
pub fn shutdown(rt: Runtime) {
    let report = rt.shutdown(Duration::from_secs(5));
    assert_eq!(report.cores_panicked, 0, "{report:?}");
}

/// A process-unique name for a test endpoint.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
