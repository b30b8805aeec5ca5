//! Connection configuration: the message schema, the session's protocol
//! knobs, and the queue limits that bound each connection's memory.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use ringwire_proto::{Message, ProtoError, Schema};

/// What a connection does when its send queue is at its high-water mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackPressure {
    /// `send` waits until the queue drains below the mark (default).
    #[default]
    Wait,
    /// `send` fails at once with [`Error::BackPressure`](crate::Error::BackPressure);
    /// nothing is queued and the caller keeps the message.
    Fail,
    /// `send` drops the new message and counts it (`transport_dropped_total`);
    /// it returns a receipt whose [`dropped`](crate::Receipt::dropped) is true.
    DropNewest,
}

/// Configuration shared by the connections made with it (`listen`,
/// `connect`). Cheap to clone.
///
/// Memory per connection, at most: the send queue's high-water mark
/// ([`send_queue`](Config::send_queue), default 4 MiB) plus the receive
/// side's held buffers ([`recv_queue`](Config::recv_queue), default 4 MiB),
/// plus one frame being assembled when a frame spans receive buffers (up to
/// [`max_payload`](Config::max_payload)).
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) schema: Arc<Schema>,
    pub(crate) session: ringwire_proto::Config,
    pub(crate) send_queue_messages: usize,
    pub(crate) send_queue_bytes: usize,
    pub(crate) back_pressure: BackPressure,
    pub(crate) recv_queue_messages: usize,
    pub(crate) recv_queue_bytes: usize,
    pub(crate) direct_threshold: usize,
    pub(crate) peers: Option<crate::peers::Peers>,
    pub(crate) tls: TlsConfig,
    pub(crate) reconnect: Option<Reconnect>,
    pub(crate) resume_window: Option<Duration>,
}

/// How a client connection comes back after a cut
/// ([`Config::reconnect`]): exponential backoff with jitter and a cap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reconnect {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
    pub(crate) jitter: f64,
    pub(crate) give_up_after: Option<Duration>,
    pub(crate) attempt_timeout: Duration,
}

impl Default for Reconnect {
    /// 10 ms doubling to 1 s, ±20% jitter, each attempt's connect bounded
    /// by 3 s, giving up after 60 s.
    fn default() -> Self {
        Reconnect {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(1),
            jitter: 0.2,
            give_up_after: Some(Duration::from_secs(60)),
            attempt_timeout: Duration::from_secs(3),
        }
    }
}

impl Reconnect {
    /// The first retry's delay and the cap the doubling delays stop at.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial = initial;
        self.max = max.max(initial);
        self
    }

    /// Each delay is varied by up to this fraction, so that many clients cut
    /// at once do not come back at once (0 to 1; default 0.2).
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// Stop trying after this long without a link (the connection then
    /// ends); `None` tries forever. Default: 60 s.
    pub fn give_up_after(mut self, d: Option<Duration>) -> Self {
        self.give_up_after = d;
        self
    }

    /// How long one attempt's connect may take before the next is tried
    /// (default 3 s: one lost SYN, retried by the kernel after 1 s, still
    /// gets through). Without it an attempt made while the path is cut
    /// would wait for the kernel's SYN retries, seconds to minutes, and
    /// come back that much later than the path.
    pub fn attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// The delay before retry number `attempt` (0-based), with `noise` in
    /// [0, 1) choosing where in the jitter band it falls.
    pub(crate) fn delay(&self, attempt: u32, noise: f64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX))
            .min(self.max);
        let factor = 1.0 + self.jitter * (2.0 * noise - 1.0);
        base.mul_f64(factor.max(0.0))
    }
}

impl Config {
    /// A configuration for connections that carry the message types of
    /// `schema`. The node id (the peer id the other side sees) is random.
    pub fn new(schema: Schema) -> Config {
        let mut session = ringwire_proto::Config::default();
        session.node_id = random_u64();
        Config {
            schema: Arc::new(schema),
            session,
            send_queue_messages: 65_536,
            send_queue_bytes: 4 << 20,
            back_pressure: BackPressure::Wait,
            recv_queue_messages: 65_536,
            recv_queue_bytes: 4 << 20,
            direct_threshold: 16 * 1024,
            peers: None,
            tls: TlsConfig::default(),
            reconnect: None,
            resume_window: None,
        }
    }

    /// A configuration for the message types `T` lists, e.g.
    /// `Config::with_types::<(Ping, Pong)>()`.
    pub fn with_types<T: Types>() -> Result<Config, ProtoError> {
        let mut schema = Schema::new();
        T::register(&mut schema)?;
        Ok(Config::new(schema))
    }

    /// The schema.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// This node's id, sent in the handshake: the server side's peer id for
    /// connections made with this configuration. Default: random.
    pub fn node_id(mut self, id: u64) -> Self {
        self.session.node_id = id;
        self
    }

    /// The node id in use.
    pub fn get_node_id(&self) -> u64 {
        self.session.node_id
    }

    /// Largest message payload accepted from the peer (and announced to it).
    /// A frame larger than one receive buffer is received into a buffer of
    /// exactly its size, so this bounds that allocation. Default: 1 MiB.
    /// Larger data travels as two-phase bulk.
    pub fn max_payload(mut self, bytes: u32) -> Self {
        self.session.max_payload = bytes;
        self
    }

    /// Largest bulk segment accepted. Default: 1 GiB.
    pub fn max_bulk_segment(mut self, bytes: u32) -> Self {
        self.session.max_bulk_segment = bytes;
        self
    }

    /// Send a heartbeat after this long without sending, and declare the
    /// connection lost after `idle_timeout` without receiving. Defaults: 1 s
    /// and 5 s.
    pub fn keepalive(mut self, heartbeat: Duration, idle_timeout: Duration) -> Self {
        self.session.heartbeat_interval = heartbeat;
        self.session.idle_timeout = idle_timeout;
        self
    }

    /// The peer's handshake must arrive within this long. Default: 5 s.
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.session.handshake_timeout = d;
        self
    }

    /// An orderly close waits this long for the peer's confirmation.
    /// Default: 5 s.
    pub fn close_timeout(mut self, d: Duration) -> Self {
        self.session.close_timeout = d;
        self
    }

    /// Calls without a reply after this long fail with
    /// [`Error::Timeout`](crate::Error::Timeout); `None` waits forever.
    /// Default: 30 s.
    pub fn call_timeout(mut self, d: Option<Duration>) -> Self {
        self.session.call_timeout = d;
        self
    }

    /// Acknowledge after this many received messages, or this long after
    /// the first unacknowledged one. Defaults: 32 and 5 ms.
    pub fn ack(mut self, every: u32, delay: Duration) -> Self {
        self.session.ack_every = every.max(1);
        self.session.ack_delay = delay;
        self
    }

    /// High-water mark of each connection's send queue: messages and bytes
    /// queued but not yet handed to the kernel (or to the peer core). Memory:
    /// up to `bytes` per connection. Defaults: 65,536 messages, 4 MiB.
    pub fn send_queue(mut self, messages: usize, bytes: usize) -> Self {
        self.send_queue_messages = messages.max(1);
        self.send_queue_bytes = bytes.max(1);
        self
    }

    /// What `send` does at the high-water mark. Default: [`BackPressure::Wait`].
    pub fn back_pressure(mut self, policy: BackPressure) -> Self {
        self.back_pressure = policy;
        self
    }

    /// Limit of each connection's receive side: messages received and not
    /// yet taken by the application, and the receive-buffer bytes they hold
    /// (a message read in place keeps its receive buffer). At the limit the
    /// connection stops reading its socket until the application catches
    /// up, so the peer is slowed by TCP's own flow control. Defaults: 65,536
    /// messages, 4 MiB.
    pub fn recv_queue(mut self, messages: usize, bytes: usize) -> Self {
        self.recv_queue_messages = messages.max(1);
        self.recv_queue_bytes = bytes.max(1);
        self
    }

    /// Registers every connection a listener with this configuration accepts
    /// in `peers`, for [`Peers::broadcast`](crate::Peers::broadcast). Give
    /// the same registry to the listeners of every core.
    pub fn peers(mut self, peers: &crate::peers::Peers) -> Self {
        self.peers = Some(peers.clone());
        self
    }

    /// TLS settings for `tls://` endpoints (certificates, trust roots, server
    /// name, cipher suites). The endpoint's own options (`cert`, `key`, `ca`,
    /// `servername`) win over the same setting here. Default: no
    /// certificate, the system's trust store, the endpoint's host name, every
    /// TLS 1.3 suite.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = tls;
        self
    }

    /// Client connections made with this configuration come back after a
    /// cut: they reconnect (with `policy`'s backoff, through the endpoint
    /// list of [`connect_any`](crate::connect_any) in order) and resume the
    /// session, so that every message is delivered exactly once and in order
    /// (the server must keep sessions too: [`Config::resume`]). Sent data is
    /// kept until acknowledged (it counts against the send queue's byte
    /// mark). Default: off.
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// Server connections made with this configuration (accepted by a
    /// listener) keep their session for `window` after a cut, so that the
    /// client can resume it on a new connection; sent data is kept until
    /// acknowledged. Default: off (a cut ends the connection).
    pub fn resume(mut self, window: Duration) -> Self {
        self.resume_window = Some(window);
        self
    }

    /// Frames (and bulk segments) with a payload of at least this many bytes
    /// that do not fit the rest of their receive buffer are received straight
    /// into a buffer of exactly their size (one kernel copy, no user-space
    /// copy); smaller ones are assembled by copying. Default: 16 KiB.
    pub fn direct_receive_threshold(mut self, bytes: usize) -> Self {
        self.direct_threshold = bytes;
        self
    }
}

/// TLS settings for `tls://` connections, given to [`Config::tls`].
///
/// Cheap to clone (the PEM bytes are shared). What the endpoint's options
/// name (`cert=`, `key=`, `ca=` files, `servername=`) wins over the same
/// setting here.
///
/// - A **listener** needs a certificate chain and its private key
///   ([`identity_pem`](TlsConfig::identity_pem) or `cert=` and `key=`).
///   Given trust roots ([`ca_pem`](TlsConfig::ca_pem) or `ca=`), it
///   requires every client to present a certificate signed by one of them
///   (mutual TLS).
/// - A **client** verifies the server's certificate against the given trust
///   roots, or the system's trust store when none are given, and checks that
///   it names the server name ([`server_name`](TlsConfig::server_name),
///   `servername=`, or the endpoint's host). Given a certificate and key, it
///   presents them when the server asks (mutual TLS).
///
/// Only TLS 1.3 is spoken.
#[derive(Clone, Default)]
pub struct TlsConfig {
    pub(crate) cert_chain_pem: Option<Arc<[u8]>>,
    pub(crate) key_pem: Option<Arc<[u8]>>,
    pub(crate) ca_pem: Option<Arc<[u8]>>,
    pub(crate) server_name: Option<String>,
    pub(crate) suites: Vec<TlsCipherSuite>,
    pub(crate) key_update_after: Option<u64>,
}

impl TlsConfig {
    /// Defaults: no certificate, the system's trust store, every TLS 1.3
    /// cipher suite.
    pub fn new() -> TlsConfig {
        TlsConfig::default()
    }

    /// This side's certificate chain (leaf first) and its private key
    /// (PKCS#8, PKCS#1 or SEC1), both PEM.
    pub fn identity_pem(mut self, cert_chain: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Self {
        self.cert_chain_pem = Some(Arc::from(cert_chain.as_ref()));
        self.key_pem = Some(Arc::from(key.as_ref()));
        self
    }

    /// Trusted certificate authorities, PEM (one or more certificates). On a
    /// client they replace the system's trust store; on a listener they turn
    /// on mutual TLS (clients must present a certificate they signed).
    pub fn ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.ca_pem = Some(Arc::from(pem.as_ref()));
        self
    }

    /// The name a client sends (SNI) and expects in the server's certificate,
    /// when it differs from the endpoint's host.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Offers (client) or accepts (listener) only these cipher suites, in
    /// this order of preference. Empty (the default): every suite.
    pub fn cipher_suites(mut self, suites: &[TlsCipherSuite]) -> Self {
        self.suites = suites.to_vec();
        self
    }

    /// Sends a TLS 1.3 key update (fresh traffic keys) after this many
    /// records sent under one key. The keys are always updated before the
    /// cipher suite's confidentiality limit (2^24 records for AES-GCM) is
    /// reached, whatever is set here. Default: only then.
    pub fn key_update_after(mut self, records: u64) -> Self {
        self.key_update_after = Some(records.max(1));
        self
    }
}

impl std::fmt::Debug for TlsConfig {
    /// Says which settings are present; never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("identity", &self.cert_chain_pem.is_some())
            .field("ca", &self.ca_pem.is_some())
            .field("server_name", &self.server_name)
            .field("suites", &self.suites)
            .field("key_update_after", &self.key_update_after)
            .finish()
    }
}

/// A TLS 1.3 cipher suite, for [`TlsConfig::cipher_suites`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsCipherSuite {
    /// `TLS13_AES_128_GCM_SHA256`.
    Aes128GcmSha256,
    /// `TLS13_AES_256_GCM_SHA384`.
    Aes256GcmSha384,
    /// `TLS13_CHACHA20_POLY1305_SHA256`.
    Chacha20Poly1305Sha256,
}

/// A list of message types, for [`Config::with_types`]: a single type or a
/// tuple of up to eight.
pub trait Types {
    /// Registers every type in `schema`.
    fn register(schema: &mut Schema) -> Result<(), ProtoError>;
}

macro_rules! tuple_types {
    ($($t:ident),+) => {
        impl<$($t: Message),+> Types for ($($t,)+) {
            fn register(schema: &mut Schema) -> Result<(), ProtoError> {
                $(schema.register::<$t>()?;)+
                Ok(())
            }
        }
    };
}

tuple_types!(A);
tuple_types!(A, B);
tuple_types!(A, B, C);
tuple_types!(A, B, C, D);
tuple_types!(A, B, C, D, E);
tuple_types!(A, B, C, D, E, F);
tuple_types!(A, B, C, D, E, F, G);
tuple_types!(A, B, C, D, E, F, G, H);

/// 64 random bits from the standard library's per-process hash keys (no
/// extra dependency; good enough for node and session ids, which only need
/// to differ).
pub(crate) fn random_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish().max(1)
}
