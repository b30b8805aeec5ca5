//! ringwire-transports: typed message connections over one endpoint syntax.
//!
//! ```text
//! tcp://host:port   unix:///path   unix://@name   mem://name
//! udp://host:port   tls://host:port   rdma://host:port      (see Scheme)
//! ```
//!
//! One entry point per side, callable from any task on any core of a running
//! [`Runtime`](ringwire_runtime::Runtime): [`listen`] and [`connect`], with a
//! [`Config`] naming the message types the connection carries. What comes
//! back is a [`Connection`] whose `send`/`recv`/`call` move rkyv archives:
//! serialized straight into registered send buffers, read in place from the
//! buffer the kernel filled (validated once on arrival), or lent between
//! cores without a copy (`mem://`).
//!
//! Layers: this crate joins `ringwire-runtime` (cores, rings, buffers,
//! mailboxes) and `ringwire-proto` (frames, sessions); neither knows the
//! other. See `docs/TRANSPORTS.md` for each scheme and operation.

mod clock;
pub mod config;
pub mod conn;
pub mod endpoint;
pub mod error;
mod framing;
mod handle;
pub mod listener;
mod mem;
pub mod peers;
pub mod pool;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod stats;
mod stream;
mod tls;
pub mod udp;

#[doc = include_str!("../../docs/TRANSPORTS.md")]
pub mod guide {}

pub use config::{BackPressure, Config, Reconnect, TlsCipherSuite, TlsConfig, Types};
pub use conn::{ConnEvent, Connection, Incoming, Msg, Receipt, StreamRef, Unacked};
pub use endpoint::{Address, Endpoint, EndpointError, Host, Interface, Options, Scheme};
pub use error::{Error, TlsFailure};
pub use handle::{ConnHandle, Owned, OwnedAny, Reply};
pub use listener::Listener;
pub use peers::Peers;
pub use pool::{Pool, PoolEvent};
pub use ringwire_proto::{type_id, Message, PeerInfo, ReplyTo, Schema};
pub use ringwire_runtime::{AlignedBuf, IoBufMut};

/// Listens on `endpoint` on the current core.
///
/// # Panics
///
/// Off a ringwire core thread.
pub async fn listen(endpoint: &Endpoint, config: &Config) -> Result<Listener, Error> {
    match (endpoint.scheme(), endpoint.address()) {
        (Scheme::Mem, Address::Mem(name)) => Ok(Listener {
            kind: listener::Kind::Mem(mem::MemListener::bind(endpoint, name, config)?),
            endpoint: endpoint.clone(),
        }),
        (Scheme::Udp, _) => Err(udp_has_no_connections()),
        (Scheme::Tcp | Scheme::Unix, _) => {
            let l = stream::bind(endpoint, config)?;
            let endpoint = l.local.clone();
            Ok(Listener {
                kind: listener::Kind::Stream(Box::new(l)),
                endpoint,
            })
        }
        (Scheme::Tls, _) => {
            let l = tls::bind(endpoint, config)?;
            let endpoint = l.local.clone();
            Ok(Listener {
                kind: listener::Kind::Stream(Box::new(l)),
                endpoint,
            })
        }
        #[cfg(feature = "rdma")]
        (Scheme::Rdma, _) => {
            let (l, endpoint) = rdma::conn::bind(endpoint, config)?;
            Ok(Listener {
                kind: listener::Kind::Rdma(l),
                endpoint,
            })
        }
        (scheme, _) => Err(not_enabled(scheme)),
    }
}

/// Connects to `endpoint` from the current core; returns once the handshake
/// succeeded.
///
/// # Panics
///
/// Off a ringwire core thread.
pub async fn connect(endpoint: &Endpoint, config: &Config) -> Result<Connection, Error> {
    match (endpoint.scheme(), endpoint.address()) {
        (Scheme::Mem, Address::Mem(name)) => mem::connect(endpoint, name, config).await,
        (Scheme::Tcp | Scheme::Unix, _) => {
            stream::connect(std::slice::from_ref(endpoint), config).await
        }
        (Scheme::Tls, _) => tls::connect(endpoint, config).await,
        (Scheme::Udp, _) => Err(udp_has_no_connections()),
        #[cfg(feature = "rdma")]
        (Scheme::Rdma, _) => rdma::conn::connect(endpoint, config).await,
        (scheme, _) => Err(not_enabled(scheme)),
    }
}

/// Connects to the first of `endpoints` that answers, in order (failover).
/// With [`Config::reconnect`], a connection cut later comes back through the
/// same list, starting with the endpoint that worked last. The endpoints
/// must share one scheme (`tcp://` or `unix://`).
///
/// # Panics
///
/// Off a ringwire core thread.
pub async fn connect_any(endpoints: &[Endpoint], config: &Config) -> Result<Connection, Error> {
    let Some(first) = endpoints.first() else {
        return Err(Error::Usage("connect_any needs at least one endpoint"));
    };
    if endpoints.iter().any(|e| e.scheme() != first.scheme()) {
        return Err(Error::Usage(
            "connect_any's endpoints must share one scheme",
        ));
    }
    match first.scheme() {
        Scheme::Tcp | Scheme::Unix => stream::connect(endpoints, config).await,
        _ if endpoints.len() == 1 => connect(first, config).await,
        scheme => Err(not_enabled(scheme)),
    }
}

/// `udp://` carries datagrams, not connections.
fn udp_has_no_connections() -> Error {
    Error::Usage(
        "udp:// carries datagrams, not connections: use udp::bind to receive and \
         udp::connect to send (a Datagrams socket with the same typed send/recv)",
    )
}

fn not_enabled(scheme: Scheme) -> Error {
    Error::NotEnabled {
        scheme: scheme.name(),
        hint: match scheme {
            Scheme::Rdma => " (build ringwire-transports with the `rdma` feature)",
            _ => "",
        },
    }
}
