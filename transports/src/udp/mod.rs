//! `udp://`: typed messages in datagrams, unicast and multicast.
//!
//! A datagram transport has no connection and no session: [`bind`] (to
//! receive on an address or a multicast group) and [`connect`] (to send to
//! a peer or a group) both return a [`Datagrams`] socket, whose typed
//! `send`/`recv` work like a [`Connection`](crate::Connection)'s:
//!
//! - **send**: [`send`](Datagrams::send) (to the connected peer or group)
//!   and [`send_to`](Datagrams::send_to) serialize the message with rkyv
//!   straight into a registered send buffer, behind a 32-byte datagram
//!   header (sender id, sequence number, type id; `docs/WIRE.md`), and
//!   return once it is queued; everything queued in one loop turn leaves in
//!   one submission (UDP GSO by default, see [`UdpConfig::send_mode`]).
//!   [`flush`](Datagrams::flush) waits until the kernel has it all. A
//!   message that does not fit one datagram ([`UdpConfig::max_datagram`])
//!   is refused with [`crate::Error::DatagramTooLarge`];
//!   nothing is fragmented.
//! - **receive**: [`recv`](Datagrams::recv) (one type) and
//!   [`recv_any`](Datagrams::recv_any) return guards that read the archive
//!   in place in the receive buffer the kernel filled (one multishot
//!   `RECVMSG` per socket), validated once on arrival, with the sender's id,
//!   the sequence number and the source address.
//! - **what the network did**: per sender, receivers count gaps, late
//!   (reordered) arrivals, duplicates (dropped) and stale datagrams
//!   ([`sender_stats`](Datagrams::sender_stats), and the per-core counters
//!   of [`crate::stats`]); each also becomes an [`Event`]
//!   ([`next_event`](Datagrams::next_event)). Bad datagrams (not ours,
//!   truncated, an unknown type, an archive that fails validation) are
//!   counted and dropped ([`Event::Rejected`]), never a panic or an error
//!   of the socket.
//!
//! ```no_run
//! # use ringwire_transports::{type_id, Config, Message};
//! # use ringwire_proto::rkyv;
//! # #[derive(rkyv::Archive, rkyv::Serialize)]
//! # #[rkyv(crate = rkyv)]
//! # pub struct Quote { pub symbol: u32, pub bid: i64, pub ask: i64 }
//! # impl Message for Quote {
//! #     const TYPE_ID: u32 = type_id("md.Quote");
//! #     const NAME: &'static str = "md.Quote";
//! # }
//! # async fn demo() -> Result<(), ringwire_transports::Error> {
//! use ringwire_transports::{udp, Endpoint};
//!
//! let config = Config::with_types::<(Quote,)>().unwrap();
//! let group: Endpoint = "udp://239.1.2.3:9000?iface=127.0.0.1&ttl=1&loop=1".parse().unwrap();
//! // A subscriber joins the group...
//! let sub = udp::bind(&group, &config)?;
//! // ...a publisher sends to it.
//! let publisher = udp::connect(&group, &config)?;
//! publisher.send(&Quote { symbol: 7, bid: 100, ask: 101 }).await?;
//! let q = sub.recv::<Quote>().await?;
//! assert_eq!(q.symbol.to_native(), 7);
//! println!("from sender {:#x}, seq {}", q.sender(), q.seq());
//! while let Some(event) = sub.next_event() {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! A `Datagrams` belongs to the core it was made on (not `Send`); clones
//! share it. One task receives at a time (a second concurrent `recv` is a
//! usage error); any number send. Dropping the last clone sends what is
//! queued, then closes the socket (leaving its groups).

mod incoming;
mod send;
pub mod seq;
pub mod wire;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use ringwire_proto::{Message, ProtoError, Schema};
use ringwire_runtime::net::{self as rnet, MulticastInterface, UdpOptions, UdpSocket};
use ringwire_runtime::spawn_local;

pub use self::incoming::{Incoming, Msg};
pub use self::send::Sent;
pub use self::seq::SenderStats;
pub use self::wire::BadDatagram;
pub use ringwire_runtime::net::SendMode;

use self::send::{SendConfig, SendState};
use self::seq::Tracker;
use crate::config::Config;
use crate::endpoint::{Address, Endpoint, Interface, Scheme};
use crate::error::Error;
use crate::stats;

/// Settings of a datagram socket beyond the connection [`Config`] (whose
/// schema, send-queue marks and back-pressure policy it also uses). Cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct UdpConfig {
    sender_id: Option<u64>,
    send_mode: SendMode,
    max_datagram: usize,
    window: u32,
    max_senders: usize,
    events: usize,
    max_destinations: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            sender_id: None,
            send_mode: SendMode::default(),
            max_datagram: 1472,
            window: 1024,
            max_senders: 1024,
            events: 4096,
            max_destinations: 65_536,
        }
    }
}

impl UdpConfig {
    /// Defaults: a random sender id, GSO sends, 1472-byte datagrams, a
    /// 1024-wide reorder window, 1024 senders, 4096 queued events.
    pub fn new() -> UdpConfig {
        UdpConfig::default()
    }

    /// The id this socket's datagrams carry (non-zero). Default: random per
    /// socket, so that sockets of one process (one per core, say) never
    /// share a sequence. Give a restarted sender a new id, or its receivers
    /// see its first numbers as duplicates until they pass the old ones
    /// (unless the old run is more than a window behind: then they see a
    /// restart).
    pub fn sender_id(mut self, id: u64) -> Self {
        self.sender_id = Some(id.max(1));
        self
    }

    /// How a batch of datagrams goes to the kernel: [`SendMode::Gso`]
    /// (default) or [`SendMode::PerDatagram`].
    pub fn send_mode(mut self, mode: SendMode) -> Self {
        self.send_mode = mode;
        self
    }

    /// Largest datagram sent (header, archive and padding), at most 65507
    /// bytes. Default: 1472, which fits an Ethernet MTU without IP
    /// fragmentation. Receivers must have receive buffers of at least this
    /// plus 64 bytes (the runtime's default is 16 KiB), or larger datagrams
    /// arrive cut and are dropped as truncated; their size must be a
    /// multiple of 16, or archives are misaligned and dropped as invalid.
    pub fn max_datagram(mut self, bytes: usize) -> Self {
        self.max_datagram = bytes.clamp(wire::HEADER_LEN + 16, rnet::MAX_UDP_PAYLOAD);
        self
    }

    /// How far behind the highest sequence number a datagram may arrive and
    /// still be told apart as late or duplicate (rounded up to a power of
    /// two, 64 to 2^20). Memory: `window / 8` bytes per sender. Default: 1024.
    pub fn reorder_window(mut self, window: u32) -> Self {
        self.window = window;
        self
    }

    /// Most senders tracked at once (about `window / 8 + 100` bytes each);
    /// a new one beyond that makes the half heard from least recently be
    /// forgotten ([`Event::SenderEvicted`] for each). Default: 1024.
    pub fn max_senders(mut self, n: usize) -> Self {
        self.max_senders = n.max(1);
        self
    }

    /// Most destinations whose sequence numbers a socket keeps (each of
    /// `send_to`'s addresses has its own sequence; about 50 bytes each).
    /// A new destination beyond that makes the least recently used half be
    /// forgotten (`transport_udp_destinations_forgotten_total`): such a
    /// destination starts over at 1 if sent to again, which its receivers
    /// see as a restart (or, within their reorder window, as duplicates).
    /// Default: 65,536.
    pub fn max_destinations(mut self, n: usize) -> Self {
        self.max_destinations = n.max(1);
        self
    }

    /// Most events kept for [`Datagrams::next_event`]; more are counted
    /// (`transport_udp_events_dropped_total`) and dropped. Default: 4096.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.events = n;
        self
    }
}

/// Something a datagram socket noticed, for the application to read with
/// [`Datagrams::next_event`]. Every event is also counted.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// The first datagram of a sender not tracked before.
    NewSender {
        /// The sender's id.
        sender: u64,
        /// Where it came from.
        source: SocketAddr,
        /// Its sequence number.
        first_seq: u64,
    },
    /// Sequence numbers `first..=last` of `sender` were skipped: a later one
    /// arrived first. They are lost unless they arrive late.
    Gap {
        /// The sender's id.
        sender: u64,
        /// First skipped number.
        first: u64,
        /// Last skipped number.
        last: u64,
    },
    /// A datagram arrived after one its sender sent later (it was
    /// delivered, and fills a gap).
    Late {
        /// The sender's id.
        sender: u64,
        /// Its sequence number.
        seq: u64,
    },
    /// A datagram arrived again; the copy was dropped.
    Duplicate {
        /// The sender's id.
        sender: u64,
        /// Its sequence number.
        seq: u64,
    },
    /// A datagram too far behind to tell new from duplicate; dropped.
    Stale {
        /// The sender's id.
        sender: u64,
        /// Its sequence number.
        seq: u64,
    },
    /// The sender started its sequence over at 1.
    SenderRestarted {
        /// The sender's id.
        sender: u64,
        /// The highest number of its previous run.
        previous_highest: u64,
    },
    /// A sender was forgotten to make room for a new one.
    SenderEvicted {
        /// The sender's id.
        sender: u64,
    },
    /// A bad datagram was dropped.
    Rejected {
        /// Where it came from.
        source: Option<SocketAddr>,
        /// What was wrong with it.
        reason: BadDatagram,
    },
    /// The kernel refused a send; its datagrams were not sent.
    SendFailed {
        /// How many datagrams.
        datagrams: usize,
        /// The error.
        error: Arc<io::Error>,
    },
    /// The receive reported an error (e.g. `ECONNREFUSED` after sending to
    /// a port nobody listens on); receiving goes on.
    ReceiveFailed {
        /// The error.
        error: Arc<io::Error>,
    },
}

/// A datagram socket carrying typed messages; see the [module docs](self).
#[derive(Clone)]
pub struct Datagrams {
    inner: Rc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    local: SocketAddr,
    peer: Option<SocketAddr>,
    /// The multicast group joined (receivers) and the interface used.
    group: Option<IpAddr>,
    iface: MulticastInterface,
    schema: Arc<Schema>,
    sock: RefCell<UdpSocket>,
    recv: RefCell<RecvState>,
    receiving: Cell<bool>,
    send: Rc<RefCell<SendState>>,
    send_cfg: SendConfig,
    event_capacity: usize,
}

struct RecvState {
    tracker: Tracker,
    events: VecDeque<Event>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.send.borrow_mut().close();
    }
}

/// Receives on `endpoint` from the current core: `udp://host:port` binds
/// that address (`reuseport=1` lets several sockets share it, the kernel
/// spreading senders across them); `udp://group:port?iface=..` binds the
/// group's port and joins the group on the interface (`SO_REUSEADDR` and
/// `SO_REUSEPORT` on, so every receiver of the host gets each datagram).
/// `sndbuf`/`rcvbuf` set the socket's buffers. A unicast socket made here
/// can answer with [`send_to`](Datagrams::send_to); a multicast one only
/// receives.
///
/// # Panics
///
/// Off a ringwire core thread.
pub fn bind(endpoint: &Endpoint, config: &Config) -> Result<Datagrams, Error> {
    bind_with(endpoint, config, &UdpConfig::default())
}

/// [`bind`] with explicit datagram settings.
///
/// # Panics
///
/// Off a ringwire core thread.
pub fn bind_with(
    endpoint: &Endpoint,
    config: &Config,
    udp: &UdpConfig,
) -> Result<Datagrams, Error> {
    let context = || format!("bind {endpoint}");
    let mut addr = resolve(endpoint).map_err(|e| Error::io(context(), e))?;
    let opts = endpoint.options();
    let multicast = addr.ip().is_multicast();
    let iface = interface(opts.iface()).map_err(|e| Error::io(context(), e))?;
    scope(&mut addr, &iface);
    let uopts = UdpOptions::default()
        .reuse_port(opts.reuseport().unwrap_or(multicast))
        .send_buffer(opts.sndbuf().map(|n| n as usize))
        .recv_buffer(opts.rcvbuf().map(|n| n as usize));
    let sock = UdpSocket::bind_with(addr, &uopts).map_err(|e| Error::io(context(), e))?;
    let group = if multicast {
        sock.join_multicast(addr.ip(), &iface)
            .map_err(|e| Error::io(context(), e))?;
        Some(addr.ip())
    } else {
        None
    };
    Ok(Datagrams::new(
        endpoint, sock, None, group, iface, config, udp,
    ))
}

/// Sends to `endpoint` from the current core: a socket on an ephemeral
/// port, connected to the peer or group (so [`send`](Datagrams::send) needs
/// no address, and only the peer's datagrams are received). For a group,
/// `iface` picks the outgoing interface, `ttl` the TTL / hop limit (default
/// 1: this network only) and `loop` whether this host's own members receive
/// it (default on).
///
/// # Panics
///
/// Off a ringwire core thread.
pub fn connect(endpoint: &Endpoint, config: &Config) -> Result<Datagrams, Error> {
    connect_with(endpoint, config, &UdpConfig::default())
}

/// [`connect`] with explicit datagram settings.
///
/// # Panics
///
/// Off a ringwire core thread.
pub fn connect_with(
    endpoint: &Endpoint,
    config: &Config,
    udp: &UdpConfig,
) -> Result<Datagrams, Error> {
    let context = || format!("connect to {endpoint}");
    let mut addr = resolve(endpoint).map_err(|e| Error::io(context(), e))?;
    let opts = endpoint.options();
    let local = match addr {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let uopts = UdpOptions::default()
        .send_buffer(opts.sndbuf().map(|n| n as usize))
        .recv_buffer(opts.rcvbuf().map(|n| n as usize));
    let sock = UdpSocket::bind_with(local, &uopts).map_err(|e| Error::io(context(), e))?;
    let iface = interface(opts.iface()).map_err(|e| Error::io(context(), e))?;
    scope(&mut addr, &iface);
    if addr.ip().is_multicast() {
        let set = || -> io::Result<()> {
            if opts.iface().is_some() {
                sock.set_multicast_interface(&iface)?;
            }
            sock.set_multicast_ttl(u32::from(opts.ttl().unwrap_or(1)))?;
            sock.set_multicast_loop(opts.multicast_loop().unwrap_or(true))?;
            Ok(())
        };
        set().map_err(|e| Error::io(context(), e))?;
    }
    sock.connect(addr).map_err(|e| Error::io(context(), e))?;
    Ok(Datagrams::new(
        endpoint,
        sock,
        Some(addr),
        None,
        iface,
        config,
        udp,
    ))
}

/// The endpoint's first socket address.
fn resolve(endpoint: &Endpoint) -> io::Result<SocketAddr> {
    if !matches!(endpoint.address(), Address::Net { .. }) || endpoint.scheme() != Scheme::Udp {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a udp:// endpoint",
        ));
    }
    endpoint
        .socket_addrs()?
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::other("no address"))
}

/// Gives an interface- or link-local IPv6 multicast group (ff01::/16,
/// ff02::/16) its interface as the scope, which binding and connecting to
/// it need.
fn scope(addr: &mut SocketAddr, iface: &MulticastInterface) {
    if let (SocketAddr::V6(a), MulticastInterface::Index(i)) = (addr, iface) {
        if matches!(a.ip().segments()[0] & 0xff0f, 0xff01 | 0xff02) {
            a.set_scope_id(*i);
        }
    }
}

/// The endpoint's `iface` option as the runtime names interfaces.
fn interface(iface: Option<&Interface>) -> io::Result<MulticastInterface> {
    Ok(match iface {
        None => MulticastInterface::Any,
        Some(Interface::Addr(a)) => MulticastInterface::Addr(*a),
        Some(Interface::Index(i)) => MulticastInterface::Index(*i),
        Some(Interface::Name(n)) => MulticastInterface::Index(rnet::interface_index(n)?),
    })
}

impl Datagrams {
    fn new(
        endpoint: &Endpoint,
        sock: UdpSocket,
        peer: Option<SocketAddr>,
        group: Option<IpAddr>,
        iface: MulticastInterface,
        config: &Config,
        udp: &UdpConfig,
    ) -> Datagrams {
        stats::register();
        let send = Rc::new(RefCell::new(SendState::new()));
        spawn_local(send::flusher(send.clone(), sock.sender(), udp.send_mode));
        let sender = udp.sender_id.unwrap_or_else(crate::config::random_u64);
        Datagrams {
            inner: Rc::new(Inner {
                endpoint: endpoint.clone(),
                local: sock.local_addr(),
                peer,
                group,
                iface,
                schema: config.schema.clone(),
                sock: RefCell::new(sock),
                recv: RefCell::new(RecvState {
                    tracker: Tracker::new(udp.window, udp.max_senders),
                    events: VecDeque::new(),
                }),
                receiving: Cell::new(false),
                send,
                send_cfg: SendConfig {
                    sender,
                    max_datagram: udp.max_datagram,
                    high_messages: config.send_queue_messages,
                    high_bytes: config.send_queue_bytes,
                    policy: config.back_pressure,
                    mode: udp.send_mode,
                    max_destinations: udp.max_destinations,
                },
                event_capacity: udp.events,
            }),
        }
    }

    /// The endpoint it was made for.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The bound address (with the real port when it was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// The connected peer or group ([`connect`]); `None` for [`bind`].
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.inner.peer
    }

    /// The id this socket's datagrams carry.
    pub fn sender_id(&self) -> u64 {
        self.inner.send_cfg.sender
    }

    /// How batches go to the kernel.
    pub fn send_mode(&self) -> SendMode {
        self.inner.send_cfg.mode
    }

    /// Queues `value` for the connected peer or group: serialized straight
    /// into a send buffer, so `value` is free when this returns; it leaves
    /// with the rest of this loop turn's datagrams. Fails with
    /// [`Error::Usage`] on a socket made by [`bind`] (use
    /// [`send_to`](Self::send_to)), with [`Error::DatagramTooLarge`] when
    /// the message does not fit one datagram, and as the configuration's
    /// back-pressure policy says when the send queue is full.
    pub async fn send<T: Message>(&self, value: &T) -> Result<Sent, Error> {
        let Some(peer) = self.inner.peer else {
            return Err(Error::Usage(
                "send needs a connected socket (udp::connect); use send_to",
            ));
        };
        send::send(&self.inner.send, &self.inner.send_cfg, peer, None, value).await
    }

    /// Queues `value` for `to` (see [`send`](Self::send)). Each destination
    /// has its own sequence.
    pub async fn send_to<T: Message>(&self, value: &T, to: SocketAddr) -> Result<Sent, Error> {
        send::send(&self.inner.send, &self.inner.send_cfg, to, Some(to), value).await
    }

    /// Waits until everything queued so far was handed to the kernel;
    /// returns the first send error since the last flush (the kernel
    /// refused some datagrams: they are also counted and reported as
    /// [`Event::SendFailed`]).
    pub async fn flush(&self) -> Result<(), Error> {
        send::flush(&self.inner.send).await
    }

    /// Receives the next message, which must be a `T`; a message of another
    /// type is consumed and reported as [`Error::WrongType`]. Fails with
    /// [`Error::Closed`] once the core shuts down.
    pub async fn recv<T: Message>(&self) -> Result<Msg<T>, Error> {
        let incoming = self.recv_any().await?;
        incoming.downcast::<T>().map_err(|m| Error::WrongType {
            expected: T::NAME,
            found: m.type_id(),
        })
    }

    /// Receives the next message, of any type of the schema. Bad
    /// datagrams, duplicates and stale ones are dropped on the way (see the
    /// events). Fails with [`Error::Closed`] once the core shuts down, and
    /// with [`Error::Usage`] while another task is receiving.
    pub async fn recv_any(&self) -> Result<Incoming, Error> {
        if self.inner.receiving.replace(true) {
            return Err(Error::Usage(
                "another task is already receiving on this datagram socket",
            ));
        }
        struct Done<'a>(&'a Cell<bool>);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let _done = Done(&self.inner.receiving);
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Takes a message that already arrived, without waiting (the first
    /// call starts the socket's receive).
    pub fn try_recv_any(&self) -> Option<Result<Incoming, Error>> {
        if self.inner.receiving.get() {
            return Some(Err(Error::Usage(
                "another task is already receiving on this datagram socket",
            )));
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_recv(&mut cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<Incoming, Error>> {
        // Bad, duplicate and stale datagrams are dropped here; after this
        // many in one poll, let other tasks run.
        let mut budget = 256;
        loop {
            let d = match self.inner.sock.borrow_mut().poll_recv_from(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(d))) => d,
                Poll::Ready(Ok(None)) => {
                    return Poll::Ready(Err(Error::closed("the socket's core is shutting down")))
                }
                Poll::Ready(Err(e)) => {
                    self.receive_failed(e);
                    continue;
                }
            };
            if let Some(m) = self.ingest(d) {
                return Poll::Ready(Ok(m));
            }
            budget -= 1;
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }

    fn receive_failed(&self, e: io::Error) {
        stats::udp_receive_error();
        self.event(Event::ReceiveFailed { error: Arc::new(e) });
    }

    /// Checks one datagram: header, schema, sequence; the message to hand
    /// out, or `None` when it was dropped (counted, with an event).
    fn ingest(&self, d: rnet::Datagram) -> Option<Incoming> {
        let source = d.source();
        if let Some(len) = d.truncated() {
            self.reject(source, BadDatagram::Truncated { len });
            return None;
        }
        let (header, range) = match wire::decode(&d) {
            Ok(x) => x,
            Err(bad) => {
                self.reject(source, bad);
                return None;
            }
        };
        let validated = match self
            .inner
            .schema
            .validate(header.type_id, &d[range.clone()])
        {
            Ok(v) => v,
            Err(ProtoError::UnknownType(type_id)) => {
                stats::message_rejected(Scheme::Udp);
                self.reject(source, BadDatagram::UnknownType { type_id });
                return None;
            }
            Err(e) => {
                stats::message_rejected(Scheme::Udp);
                self.reject(
                    source,
                    BadDatagram::Invalid {
                        type_id: header.type_id,
                        reason: e.to_string(),
                    },
                );
                return None;
            }
        };
        let from = source.unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let obs = self
            .inner
            .recv
            .borrow_mut()
            .tracker
            .observe(header.sender, header.seq, from);
        self.account(header.sender, header.seq, from, &obs);
        if !obs.deliver {
            return None;
        }
        stats::message_in(Scheme::Udp, range.len());
        Some(Incoming::new(
            d.into_buf(),
            header,
            validated,
            from,
            obs.late,
        ))
    }

    fn reject(&self, source: Option<SocketAddr>, reason: BadDatagram) {
        stats::udp_bad(&reason);
        self.event(Event::Rejected { source, reason });
    }

    /// Counts what one arrival did and queues its events.
    fn account(&self, sender: u64, seq: u64, source: SocketAddr, obs: &seq::Observation) {
        stats::udp_observed(obs);
        for &evicted in &obs.evicted {
            self.event(Event::SenderEvicted { sender: evicted });
        }
        if let Some(previous_highest) = obs.restarted {
            self.event(Event::SenderRestarted {
                sender,
                previous_highest,
            });
        }
        if let Some(first_seq) = obs.new_sender {
            self.event(Event::NewSender {
                sender,
                source,
                first_seq,
            });
        }
        if let Some((first, last)) = obs.gap {
            self.event(Event::Gap {
                sender,
                first,
                last,
            });
        }
        if obs.late {
            self.event(Event::Late { sender, seq });
        }
        if obs.duplicate {
            self.event(Event::Duplicate { sender, seq });
        }
        if obs.stale {
            self.event(Event::Stale { sender, seq });
        }
    }

    fn event(&self, e: Event) {
        let mut r = self.inner.recv.borrow_mut();
        if r.events.len() >= self.inner.event_capacity {
            stats::udp_event_dropped();
            return;
        }
        r.events.push_back(e);
    }

    /// The oldest event not read yet (send failures first).
    pub fn next_event(&self) -> Option<Event> {
        let failures = self.inner.send.borrow_mut().take_failures();
        for (datagrams, error) in failures {
            self.event(Event::SendFailed { datagrams, error });
        }
        self.inner.recv.borrow_mut().events.pop_front()
    }

    /// What this socket knows about `sender` (gaps, late, duplicates, ...).
    pub fn sender_stats(&self, sender: u64) -> Option<SenderStats> {
        self.inner.recv.borrow().tracker.get(sender)
    }

    /// Every sender this socket tracks.
    pub fn senders(&self) -> Vec<SenderStats> {
        self.inner.recv.borrow().tracker.all()
    }

    /// Joins another multicast `group` (on this port) on the endpoint's
    /// interface.
    pub fn join(&self, group: IpAddr) -> Result<(), Error> {
        self.inner
            .sock
            .borrow()
            .join_multicast(group, &self.inner.iface)
            .map_err(|e| Error::io(format!("join {group} on {}", self.inner.endpoint), e))
    }

    /// Leaves multicast `group` (the endpoint's own group included; dropping
    /// the socket leaves every group).
    pub fn leave(&self, group: IpAddr) -> Result<(), Error> {
        self.inner
            .sock
            .borrow()
            .leave_multicast(group, &self.inner.iface)
            .map_err(|e| Error::io(format!("leave {group} on {}", self.inner.endpoint), e))
    }

    /// The multicast group [`bind`] joined, if any.
    pub fn group(&self) -> Option<IpAddr> {
        self.inner.group
    }
}

impl std::fmt::Debug for Datagrams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datagrams")
            .field("endpoint", &self.inner.endpoint.to_string())
            .field("local", &self.inner.local)
            .field("peer", &self.inner.peer)
            .field(
                "sender_id",
                &format_args!("{:#018x}", self.inner.send_cfg.sender),
            )
            .finish()
    }
}
