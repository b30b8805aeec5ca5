//! Endpoints: the one address syntax of every ringwire transport.
//!
//! An [`Endpoint`] names a scheme, an address and typed options:
//!
//! | scheme | address | options |
//! |--------|---------|---------|
//! | `tcp://` | `host:port`: IPv4, `[IPv6]`, or a host name | `nodelay keepalive linger reuseport backlog sndbuf rcvbuf` |
//! | `unix://` | `/absolute/path` or `@abstract-name` | `backlog sndbuf rcvbuf` |
//! | `mem://` | a name (in-process, between cores) | `capacity` |
//! | `udp://` | `host:port`, or `group:port` for multicast | `reuseport sndbuf rcvbuf`, multicast: `iface ttl loop` |
//! | `tls://` | `host:port` | the `tcp://` ones, `servername ca cert key` |
//! | `rdma://` | `host:port` (the side channel) | `credits` |
//!
//! Parse with [`str::parse`] (or [`Endpoint::from_str`]); print with
//! `Display`, which writes the canonical form (lower-case scheme, options in
//! one fixed order, values in canonical units) and always parses back to an
//! equal value:
//!
//! ```
//! use std::time::Duration;
//! use ringwire_transports::{Endpoint, Scheme};
//!
//! let ep: Endpoint = "tcp://127.0.0.1:7000?sndbuf=4M&nodelay=0&keepalive=30000ms"
//!     .parse()
//!     .unwrap();
//! assert_eq!(ep.scheme(), Scheme::Tcp);
//! assert_eq!(ep.port(), Some(7000));
//! assert_eq!(ep.options().nodelay(), Some(false));
//! assert_eq!(ep.options().sndbuf(), Some(4 << 20));
//! assert_eq!(ep.options().keepalive(), Some(Duration::from_secs(30)));
//! assert_eq!(ep.to_string(), "tcp://127.0.0.1:7000?nodelay=0&keepalive=30s&sndbuf=4M");
//! assert_eq!(ep.to_string().parse::<Endpoint>().unwrap(), ep);
//! ```
//!
//! Every malformed input is an [`EndpointError`] that quotes the offending
//! part:
//!
//! ```
//! use ringwire_transports::{Endpoint, EndpointError};
//!
//! let err = "unix:///run/kv.sock?nodelay=1".parse::<Endpoint>().unwrap_err();
//! assert!(matches!(err, EndpointError::UnknownOption { .. }));
//! assert_eq!(
//!     err.to_string(),
//!     "\"nodelay\" does not apply to unix://; unix:// takes: backlog, sndbuf, rcvbuf"
//! );
//! let err = "tcp://[::1]:99999".parse::<Endpoint>().unwrap_err();
//! assert_eq!(err.to_string(), "bad port \"99999\": expected a number from 0 to 65535");
//! ```
//!
//! # Addresses
//!
//! - Host names are kept as names; [`Endpoint::socket_addrs`] resolves them
//!   (through std's resolver, so `/etc/hosts` and DNS) when a transport
//!   connects or listens, not at parse time. A name whose last label is all
//!   digits (`1.2.3`) is refused: the resolver would read it as an IPv4
//!   address in an obsolete short form.
//! - IPv6 literals go in brackets (`tcp://[::1]:7000`); zone ids are not
//!   supported (use the `iface` option for multicast).
//! - Port 0 parses (a listener then binds an ephemeral port).
//! - A `unix://` path must be absolute and at most 107 bytes; an abstract
//!   name (`unix://@name`, Linux only) is 1 to 107 bytes and may hold any
//!   byte.
//! - A `mem://` name is 1 to 255 bytes of printable characters: no `/`, no
//!   whitespace, no control characters.
//!
//! Paths, names and option values are percent-decoded (`%3F` is `?`);
//! `Display` escapes what would otherwise be read as syntax (`%`, `?`, `#`,
//! `&` in option values), whitespace, control characters and bytes that are
//! not UTF-8.
//!
//! # Options
//!
//! Options follow a `?` as `name=value` pairs joined by `&`. An option is
//! accepted only by the schemes it applies to (see [`Scheme::option_names`])
//! and at most once. Values:
//!
//! - sizes: a number of bytes with an optional binary suffix `K`, `M`, `G`
//!   (`4M` is 4 MiB); socket buffer sizes are at most 2147483647 bytes;
//! - durations: a number with the unit `ms` or `s` (`250ms`, `30s`);
//! - booleans: `0`, `1`, `false`, `true`.
//!
//! An absent option means "the transport's default"; the getters of
//! [`Options`] return `None` for it.
//!
//! # Schemes not built into every binary
//!
//! All six schemes parse in every build. Whether a build serves `udp://`,
//! `tls://` or `rdma://` is the transports' decision: they look at
//! [`Endpoint::scheme`] and refuse, naming the scheme, what they do not
//! enable.

use std::ffi::OsStr;
use std::fmt::{self, Write as _};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::num::NonZeroU32;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Longest `unix://` path or abstract name in bytes: `sun_path` is 108
/// bytes, one of which is the terminating NUL (paths) or the leading NUL
/// (abstract names).
pub const MAX_UNIX_PATH: usize = 107;

/// Longest `mem://` name in bytes.
pub const MAX_MEM_NAME: usize = 255;

/// Largest socket buffer size (`sndbuf`, `rcvbuf`) and `backlog`: the
/// kernel takes them as a C `int`.
pub const MAX_SOCKET_INT: u32 = i32::MAX as u32;

/// The transport an endpoint names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Scheme {
    /// `tcp://host:port`.
    Tcp,
    /// `unix:///path` or `unix://@abstract`: a Unix stream socket.
    Unix,
    /// `mem://name`: in-process, between the cores of one runtime.
    Mem,
    /// `udp://host:port`: unicast, or multicast when the host is a group.
    Udp,
    /// `tls://host:port`: TCP with TLS.
    Tls,
    /// `rdma://host:port`: RDMA, with its side channel at `host:port`.
    Rdma,
}

impl Scheme {
    /// Every scheme, in the order error messages list them.
    pub const ALL: [Scheme; 6] = [
        Scheme::Tcp,
        Scheme::Unix,
        Scheme::Mem,
        Scheme::Udp,
        Scheme::Tls,
        Scheme::Rdma,
    ];

    /// The scheme's name as written before `://` (`"tcp"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Unix => "unix",
            Scheme::Mem => "mem",
            Scheme::Udp => "udp",
            Scheme::Tls => "tls",
            Scheme::Rdma => "rdma",
        }
    }

    /// The scheme named `name` (ASCII case-insensitive), if there is one.
    pub fn from_name(name: &str) -> Option<Scheme> {
        Scheme::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// Whether the address is `host:port` (tcp, udp, tls, rdma).
    pub const fn has_host_port(self) -> bool {
        matches!(self, Scheme::Tcp | Scheme::Udp | Scheme::Tls | Scheme::Rdma)
    }

    /// The names of the options this scheme accepts, in canonical order.
    pub fn option_names(self) -> Vec<&'static str> {
        Opt::ALL
            .into_iter()
            .filter(|k| k.applies_to(self))
            .map(Opt::name)
            .collect()
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The host of a `host:port` address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A host name, resolved by [`Endpoint::socket_addrs`]. Letters, digits,
    /// `-` and `_` in dot-separated labels of at most 63 bytes, at most 253
    /// bytes in all; the last label is not all digits.
    Name(String),
}

impl fmt::Display for Host {
    /// IPv6 addresses are written in brackets, as in an endpoint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

impl From<IpAddr> for Host {
    fn from(ip: IpAddr) -> Host {
        Host::Ip(ip)
    }
}

/// Where an endpoint points.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// `host:port` (tcp, udp, tls, rdma).
    Net {
        /// The host: literal address or name.
        host: Host,
        /// The port; 0 lets a listener pick one.
        port: u16,
    },
    /// A Unix socket path (absolute).
    UnixPath(PathBuf),
    /// A Linux abstract Unix socket name (without the leading NUL).
    UnixAbstract(Vec<u8>),
    /// An in-process name (`mem://`).
    Mem(String),
}

/// The interface a multicast endpoint uses (`iface=`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Interface {
    /// The interface's IPv4 address (IPv4 groups only).
    Addr(Ipv4Addr),
    /// An interface index, as `ip link` shows it.
    Index(u32),
    /// An interface name (`eth0`), looked up when the socket is set up.
    Name(String),
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Interface::Addr(ip) => write!(f, "{ip}"),
            Interface::Index(index) => write!(f, "{index}"),
            Interface::Name(name) => f.write_str(name),
        }
    }
}

/// Typed per-endpoint options. `None` means "the transport's default".
///
/// Build with the `with_*` methods and attach with
/// [`Endpoint::with_options`], which checks that each option applies to the
/// endpoint's scheme and that its value is in range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Options {
    nodelay: Option<bool>,
    keepalive: Option<Duration>,
    linger: Option<Duration>,
    reuseport: Option<bool>,
    backlog: Option<u32>,
    sndbuf: Option<u32>,
    rcvbuf: Option<u32>,
    iface: Option<Interface>,
    ttl: Option<u8>,
    multicast_loop: Option<bool>,
    servername: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    credits: Option<NonZeroU32>,
    capacity: Option<NonZeroU32>,
}

impl Options {
    /// No option set.
    pub fn new() -> Options {
        Options::default()
    }

    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        *self == Options::default()
    }

    /// `nodelay` (tcp, tls): `TCP_NODELAY`, sending small writes at once.
    pub fn nodelay(&self) -> Option<bool> {
        self.nodelay
    }
    /// `keepalive` (tcp, tls): idle time before the first keep-alive probe
    /// (`SO_KEEPALIVE` + `TCP_KEEPIDLE`, whole seconds, rounded up). Above 0.
    pub fn keepalive(&self) -> Option<Duration> {
        self.keepalive
    }
    /// `linger` (tcp, tls): `SO_LINGER` on close (whole seconds, rounded
    /// up); `0s` resets the connection instead of a graceful close.
    pub fn linger(&self) -> Option<Duration> {
        self.linger
    }
    /// `reuseport` (tcp, tls, udp): `SO_REUSEPORT` on the listening socket,
    /// so that several sockets (one per core, or several multicast
    /// receivers) bind the same port.
    pub fn reuseport(&self) -> Option<bool> {
        self.reuseport
    }
    /// `backlog` (tcp, tls, unix): the `listen(2)` backlog (the kernel caps
    /// it at `net.core.somaxconn`).
    pub fn backlog(&self) -> Option<u32> {
        self.backlog
    }
    /// `sndbuf` (tcp, tls, unix, udp): `SO_SNDBUF` in bytes.
    pub fn sndbuf(&self) -> Option<u32> {
        self.sndbuf
    }
    /// `rcvbuf` (tcp, tls, unix, udp): `SO_RCVBUF` in bytes.
    pub fn rcvbuf(&self) -> Option<u32> {
        self.rcvbuf
    }
    /// `iface` (udp multicast): the interface to send on and join the group
    /// on.
    pub fn iface(&self) -> Option<&Interface> {
        self.iface.as_ref()
    }
    /// `ttl` (udp multicast): the multicast TTL / hop limit (0 to 255).
    pub fn ttl(&self) -> Option<u8> {
        self.ttl
    }
    /// `loop` (udp multicast): whether this host's own receivers see what it
    /// sends to the group (`IP_MULTICAST_LOOP`).
    pub fn multicast_loop(&self) -> Option<bool> {
        self.multicast_loop
    }
    /// `servername` (tls): the name sent as SNI and checked against the
    /// server's certificate; by default the endpoint's host name.
    pub fn servername(&self) -> Option<&str> {
        self.servername.as_deref()
    }
    /// `ca` (tls): PEM file of the certificate authorities to trust.
    pub fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
    }
    /// `cert` (tls): PEM file of this side's certificate chain.
    pub fn cert(&self) -> Option<&Path> {
        self.cert.as_deref()
    }
    /// `key` (tls): PEM file of this side's private key.
    pub fn key(&self) -> Option<&Path> {
        self.key.as_deref()
    }
    /// `credits` (rdma): receive credits, the number of receive buffers
    /// posted per connection (at least 1).
    pub fn credits(&self) -> Option<NonZeroU32> {
        self.credits
    }
    /// `capacity` (mem): messages the in-process channel holds before the
    /// sender waits (at least 1; the transport may round it up).
    pub fn capacity(&self) -> Option<NonZeroU32> {
        self.capacity
    }

    /// Sets `nodelay`.
    pub fn with_nodelay(mut self, on: bool) -> Options {
        self.nodelay = Some(on);
        self
    }
    /// Sets `keepalive` (millisecond precision; above 0).
    pub fn with_keepalive(mut self, idle: Duration) -> Options {
        self.keepalive = Some(idle);
        self
    }
    /// Sets `linger` (millisecond precision).
    pub fn with_linger(mut self, linger: Duration) -> Options {
        self.linger = Some(linger);
        self
    }
    /// Sets `reuseport`.
    pub fn with_reuseport(mut self, on: bool) -> Options {
        self.reuseport = Some(on);
        self
    }
    /// Sets `backlog` (at most [`MAX_SOCKET_INT`]).
    pub fn with_backlog(mut self, backlog: u32) -> Options {
        self.backlog = Some(backlog);
        self
    }
    /// Sets `sndbuf` in bytes (at most [`MAX_SOCKET_INT`]).
    pub fn with_sndbuf(mut self, bytes: u32) -> Options {
        self.sndbuf = Some(bytes);
        self
    }
    /// Sets `rcvbuf` in bytes (at most [`MAX_SOCKET_INT`]).
    pub fn with_rcvbuf(mut self, bytes: u32) -> Options {
        self.rcvbuf = Some(bytes);
        self
    }
    /// Sets `iface`.
    pub fn with_iface(mut self, iface: Interface) -> Options {
        self.iface = Some(iface);
        self
    }
    /// Sets `ttl`.
    pub fn with_ttl(mut self, ttl: u8) -> Options {
        self.ttl = Some(ttl);
        self
    }
    /// Sets `loop`.
    pub fn with_multicast_loop(mut self, on: bool) -> Options {
        self.multicast_loop = Some(on);
        self
    }
    /// Sets `servername` (a host name).
    pub fn with_servername(mut self, name: impl Into<String>) -> Options {
        self.servername = Some(name.into());
        self
    }
    /// Sets `ca` (a non-empty path).
    pub fn with_ca(mut self, path: impl Into<PathBuf>) -> Options {
        self.ca = Some(path.into());
        self
    }
    /// Sets `cert` (a non-empty path).
    pub fn with_cert(mut self, path: impl Into<PathBuf>) -> Options {
        self.cert = Some(path.into());
        self
    }
    /// Sets `key` (a non-empty path).
    pub fn with_key(mut self, path: impl Into<PathBuf>) -> Options {
        self.key = Some(path.into());
        self
    }
    /// Sets `credits`.
    pub fn with_credits(mut self, credits: NonZeroU32) -> Options {
        self.credits = Some(credits);
        self
    }
    /// Sets `capacity`.
    pub fn with_capacity(mut self, capacity: NonZeroU32) -> Options {
        self.capacity = Some(capacity);
        self
    }

    /// Whether `key` is set.
    fn has(&self, key: Opt) -> bool {
        match key {
            Opt::Nodelay => self.nodelay.is_some(),
            Opt::Keepalive => self.keepalive.is_some(),
            Opt::Linger => self.linger.is_some(),
            Opt::Reuseport => self.reuseport.is_some(),
            Opt::Backlog => self.backlog.is_some(),
            Opt::Sndbuf => self.sndbuf.is_some(),
            Opt::Rcvbuf => self.rcvbuf.is_some(),
            Opt::Iface => self.iface.is_some(),
            Opt::Ttl => self.ttl.is_some(),
            Opt::Loop => self.multicast_loop.is_some(),
            Opt::Servername => self.servername.is_some(),
            Opt::Ca => self.ca.is_some(),
            Opt::Cert => self.cert.is_some(),
            Opt::Key => self.key.is_some(),
            Opt::Credits => self.credits.is_some(),
            Opt::Capacity => self.capacity.is_some(),
        }
    }

    /// Parses `raw` (percent-decoded into `value`) as the value of `key`
    /// and stores it.
    fn set_parsed(&mut self, key: Opt, raw: &str, value: &[u8]) -> Result<(), EndpointError> {
        let bad = |expected| {
            move || EndpointError::BadOptionValue {
                option: key.name(),
                value: raw.to_owned(),
                expected,
            }
        };
        let text = std::str::from_utf8(value).ok();
        match key {
            Opt::Nodelay => self.nodelay = Some(text.and_then(parse_bool).ok_or_else(bad(BOOL))?),
            Opt::Reuseport => {
                self.reuseport = Some(text.and_then(parse_bool).ok_or_else(bad(BOOL))?)
            }
            Opt::Loop => {
                self.multicast_loop = Some(text.and_then(parse_bool).ok_or_else(bad(BOOL))?)
            }
            Opt::Keepalive => {
                let d = text.and_then(parse_duration).ok_or_else(bad(DURATION))?;
                if d.is_zero() {
                    return Err(bad(KEEPALIVE)());
                }
                self.keepalive = Some(d);
            }
            Opt::Linger => {
                self.linger = Some(text.and_then(parse_duration).ok_or_else(bad(DURATION))?)
            }
            Opt::Backlog => {
                let n = text
                    .and_then(parse_u64)
                    .filter(|&n| n <= u64::from(MAX_SOCKET_INT))
                    .ok_or_else(bad(BACKLOG))?;
                self.backlog = Some(n as u32);
            }
            Opt::Sndbuf => self.sndbuf = Some(text.and_then(parse_size).ok_or_else(bad(SIZE))?),
            Opt::Rcvbuf => self.rcvbuf = Some(text.and_then(parse_size).ok_or_else(bad(SIZE))?),
            Opt::Iface => self.iface = Some(text.and_then(parse_iface).ok_or_else(bad(IFACE))?),
            Opt::Ttl => {
                let n = text
                    .and_then(parse_u64)
                    .and_then(|n| u8::try_from(n).ok())
                    .ok_or_else(bad(TTL))?;
                self.ttl = Some(n);
            }
            Opt::Servername => {
                let name = text
                    .filter(|t| host_name_problem(t).is_none())
                    .ok_or_else(bad(SERVERNAME))?;
                self.servername = Some(name.to_owned());
            }
            Opt::Ca | Opt::Cert | Opt::Key => {
                if value.is_empty() || value.contains(&0) {
                    return Err(bad(PATH)());
                }
                let path = Some(PathBuf::from(OsStr::from_bytes(value)));
                match key {
                    Opt::Ca => self.ca = path,
                    Opt::Cert => self.cert = path,
                    _ => self.key = path,
                }
            }
            Opt::Credits => {
                self.credits = Some(text.and_then(parse_nonzero).ok_or_else(bad(COUNT))?);
            }
            Opt::Capacity => {
                self.capacity = Some(text.and_then(parse_nonzero).ok_or_else(bad(COUNT))?);
            }
        }
        Ok(())
    }

    /// Writes the canonical text of `key`'s value (unescaped).
    fn write_value(&self, key: Opt, out: &mut Vec<u8>) {
        let mut s = String::new();
        match key {
            Opt::Nodelay => write_bool(&mut s, self.nodelay),
            Opt::Reuseport => write_bool(&mut s, self.reuseport),
            Opt::Loop => write_bool(&mut s, self.multicast_loop),
            Opt::Keepalive => write_duration(&mut s, self.keepalive),
            Opt::Linger => write_duration(&mut s, self.linger),
            Opt::Backlog => write_opt(&mut s, self.backlog),
            Opt::Sndbuf => write_size(&mut s, self.sndbuf),
            Opt::Rcvbuf => write_size(&mut s, self.rcvbuf),
            Opt::Iface => write_opt(&mut s, self.iface.as_ref()),
            Opt::Ttl => write_opt(&mut s, self.ttl),
            Opt::Servername => write_opt(&mut s, self.servername.as_ref()),
            Opt::Credits => write_opt(&mut s, self.credits),
            Opt::Capacity => write_opt(&mut s, self.capacity),
            Opt::Ca | Opt::Cert | Opt::Key => {
                let path = match key {
                    Opt::Ca => &self.ca,
                    Opt::Cert => &self.cert,
                    _ => &self.key,
                };
                if let Some(path) = path {
                    out.extend_from_slice(path.as_os_str().as_bytes());
                }
                return;
            }
        }
        out.extend_from_slice(s.as_bytes());
    }

    /// Checks every set option against `scheme` and `address`, and every
    /// value against its range: what [`Endpoint::with_options`] accepts,
    /// parsing accepts too, and the other way round.
    fn validate(&self, scheme: Scheme, address: &Address) -> Result<(), EndpointError> {
        for key in Opt::ALL {
            if self.has(key) && !key.applies_to(scheme) {
                return Err(EndpointError::UnknownOption {
                    option: key.name().to_owned(),
                    scheme,
                });
            }
        }
        let bad = |key: Opt, expected| {
            let mut value = Vec::new();
            self.write_value(key, &mut value);
            EndpointError::BadOptionValue {
                option: key.name(),
                value: String::from_utf8_lossy(&value).into_owned(),
                expected,
            }
        };
        // Durations have millisecond precision and print as u64 milliseconds.
        let ms = |d: Option<Duration>| {
            d.is_some_and(|d| {
                d.subsec_nanos() % 1_000_000 != 0 || d.as_millis() > u128::from(u64::MAX)
            })
        };
        if ms(self.keepalive) || self.keepalive.is_some_and(|d| d.is_zero()) {
            return Err(bad(Opt::Keepalive, KEEPALIVE));
        }
        if ms(self.linger) {
            return Err(bad(Opt::Linger, DURATION));
        }
        for (key, value, expected) in [
            (Opt::Backlog, self.backlog, BACKLOG),
            (Opt::Sndbuf, self.sndbuf, SIZE),
            (Opt::Rcvbuf, self.rcvbuf, SIZE),
        ] {
            if value.is_some_and(|v| v > MAX_SOCKET_INT) {
                return Err(bad(key, expected));
            }
        }
        if let Some(Interface::Name(name)) = &self.iface {
            if parse_iface(name) != Some(Interface::Name(name.clone())) {
                return Err(bad(Opt::Iface, IFACE));
            }
        }
        if let Some(name) = &self.servername {
            if host_name_problem(name).is_some() {
                return Err(bad(Opt::Servername, SERVERNAME));
            }
        }
        for (key, path) in [
            (Opt::Ca, &self.ca),
            (Opt::Cert, &self.cert),
            (Opt::Key, &self.key),
        ] {
            if path
                .as_ref()
                .is_some_and(|p| p.as_os_str().is_empty() || p.as_os_str().as_bytes().contains(&0))
            {
                return Err(bad(key, PATH));
            }
        }
        // iface, ttl and loop configure multicast: the host must be a group.
        let group = match address {
            Address::Net {
                host: Host::Ip(ip), ..
            } if ip.is_multicast() => Some(*ip),
            _ => None,
        };
        for key in [Opt::Iface, Opt::Ttl, Opt::Loop] {
            if self.has(key) && group.is_none() {
                let host = match address {
                    Address::Net { host, .. } => host.to_string(),
                    _ => String::new(),
                };
                return Err(EndpointError::NotMulticast {
                    option: key.name(),
                    host,
                });
            }
        }
        if let (Some(IpAddr::V6(_)), Some(Interface::Addr(_))) = (group, &self.iface) {
            return Err(bad(Opt::Iface, IFACE_V6));
        }
        Ok(())
    }
}

/// The option names, in canonical (`Display`) order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    Nodelay,
    Keepalive,
    Linger,
    Reuseport,
    Backlog,
    Sndbuf,
    Rcvbuf,
    Iface,
    Ttl,
    Loop,
    Servername,
    Ca,
    Cert,
    Key,
    Credits,
    Capacity,
}

impl Opt {
    const ALL: [Opt; 16] = [
        Opt::Nodelay,
        Opt::Keepalive,
        Opt::Linger,
        Opt::Reuseport,
        Opt::Backlog,
        Opt::Sndbuf,
        Opt::Rcvbuf,
        Opt::Iface,
        Opt::Ttl,
        Opt::Loop,
        Opt::Servername,
        Opt::Ca,
        Opt::Cert,
        Opt::Key,
        Opt::Credits,
        Opt::Capacity,
    ];

    fn name(self) -> &'static str {
        match self {
            Opt::Nodelay => "nodelay",
            Opt::Keepalive => "keepalive",
            Opt::Linger => "linger",
            Opt::Reuseport => "reuseport",
            Opt::Backlog => "backlog",
            Opt::Sndbuf => "sndbuf",
            Opt::Rcvbuf => "rcvbuf",
            Opt::Iface => "iface",
            Opt::Ttl => "ttl",
            Opt::Loop => "loop",
            Opt::Servername => "servername",
            Opt::Ca => "ca",
            Opt::Cert => "cert",
            Opt::Key => "key",
            Opt::Credits => "credits",
            Opt::Capacity => "capacity",
        }
    }

    fn from_name(name: &str) -> Option<Opt> {
        Opt::ALL.into_iter().find(|k| k.name() == name)
    }

    fn applies_to(self, scheme: Scheme) -> bool {
        use Scheme::*;
        match self {
            Opt::Nodelay | Opt::Keepalive | Opt::Linger => matches!(scheme, Tcp | Tls),
            Opt::Reuseport => matches!(scheme, Tcp | Tls | Udp),
            Opt::Backlog => matches!(scheme, Tcp | Tls | Unix),
            Opt::Sndbuf | Opt::Rcvbuf => matches!(scheme, Tcp | Tls | Unix | Udp),
            Opt::Iface | Opt::Ttl | Opt::Loop => scheme == Udp,
            Opt::Servername | Opt::Ca | Opt::Cert | Opt::Key => scheme == Tls,
            Opt::Credits => scheme == Rdma,
            Opt::Capacity => scheme == Mem,
        }
    }
}

// What a malformed option value was expected to look like.
const BOOL: &str = "0, 1, false or true";
const DURATION: &str = "a duration like 250ms or 30s";
const KEEPALIVE: &str = "a duration above 0, like 30s";
const SIZE: &str = "a size like 4M (bytes, or K, M, G), at most 2147483647 bytes";
const BACKLOG: &str = "a number from 0 to 2147483647";
const TTL: &str = "a number from 0 to 255";
const COUNT: &str = "a number from 1 to 4294967295";
const IFACE: &str = "an IPv4 address, an interface index or an interface name";
const IFACE_V6: &str = "an interface index or name (an IPv6 group has no interface address)";
const SERVERNAME: &str = "a host name";
const PATH: &str = "a file path";

/// A malformed endpoint; each variant quotes the offending part.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// No `://` after the scheme.
    #[error(
        "missing \"://\" in {input:?}: an endpoint looks like tcp://host:port, \
         unix:///path or mem://name"
    )]
    MissingSeparator {
        /// The whole input.
        input: String,
    },
    /// A scheme ringwire does not know.
    #[error("unknown scheme {scheme:?} in {input:?}; known: tcp, unix, mem, udp, tls, rdma")]
    UnknownScheme {
        /// The scheme as written.
        scheme: String,
        /// The whole input.
        input: String,
    },
    /// `host:port` with nothing before the colon.
    #[error("empty host in {input:?}: expected host:port")]
    EmptyHost {
        /// The whole input.
        input: String,
    },
    /// A host that is not an IPv4 literal nor a valid host name.
    #[error("bad host {host:?}: {reason}")]
    BadHost {
        /// The host as written.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A malformed bracketed IPv6 literal, or one without brackets.
    #[error("bad IPv6 address {host:?}: {reason}")]
    BadIpv6 {
        /// The host as written.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `host` without `:port`.
    #[error("missing port in {input:?}: expected host:port")]
    MissingPort {
        /// The whole input.
        input: String,
    },
    /// A port that is not a number from 0 to 65535.
    #[error("bad port {port:?}: expected a number from 0 to 65535")]
    BadPort {
        /// The port as written.
        port: String,
    },
    /// A `unix://` path that does not start with `/`.
    #[error(
        "relative unix path {path:?}: unix:// takes an absolute path \
         (unix:///run/app.sock) or an abstract name (unix://@name)"
    )]
    RelativeUnixPath {
        /// The path as written.
        path: String,
    },
    /// A `unix://` address that is empty, too long or holds a NUL byte.
    #[error("bad unix address {address:?}: {reason}")]
    BadUnixAddress {
        /// The address as written.
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `mem://` with no name.
    #[error("empty mem:// name in {input:?}")]
    EmptyMemName {
        /// The whole input.
        input: String,
    },
    /// A `mem://` name with a character it may not hold, or too long.
    #[error("bad mem:// name {name:?}: {reason}")]
    BadMemName {
        /// The name as written.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `%` not followed by two hex digits.
    #[error("bad percent-escape in {part:?}: expected % and two hex digits (%3F)")]
    BadEscape {
        /// The part (address or option) holding it.
        part: String,
    },
    /// An option that this scheme does not take (or that does not exist).
    #[error(
        "{option:?} does not apply to {scheme}://; {scheme}:// takes: {}",
        .scheme.option_names().join(", ")
    )]
    UnknownOption {
        /// The option name as written.
        option: String,
        /// The endpoint's scheme.
        scheme: Scheme,
    },
    /// A query part that is not `name=value`.
    #[error("malformed option {part:?}: expected name=value")]
    MalformedOption {
        /// The part between `&`s.
        part: String,
    },
    /// An option value of the wrong form or out of range.
    #[error("{option}={value:?}: expected {expected}")]
    BadOptionValue {
        /// The option.
        option: &'static str,
        /// The value as written.
        value: String,
        /// What the value should look like.
        expected: &'static str,
    },
    /// The same option twice.
    #[error("duplicate option {option:?}")]
    DuplicateOption {
        /// The option.
        option: &'static str,
    },
    /// A multicast option on an endpoint whose host is not a multicast group
    /// literal.
    #[error("{option:?} needs a multicast group address; {host:?} is not one")]
    NotMulticast {
        /// The option.
        option: &'static str,
        /// The endpoint's host.
        host: String,
    },
    /// [`Endpoint::new`] with an address of another kind than the scheme
    /// takes.
    #[error("{scheme}:// takes {expected}")]
    WrongAddressKind {
        /// The scheme.
        scheme: Scheme,
        /// The kind of address it takes.
        expected: &'static str,
    },
}

/// A parsed endpoint: scheme, address and options. See the [module
/// docs](self).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    scheme: Scheme,
    address: Address,
    options: Options,
}

impl Endpoint {
    /// An endpoint without options, after the same checks as parsing: the
    /// address kind matches the scheme, host names, paths and names are
    /// well formed.
    pub fn new(scheme: Scheme, address: Address) -> Result<Endpoint, EndpointError> {
        let expected = match scheme {
            Scheme::Unix => "an absolute path or an abstract name",
            Scheme::Mem => "a name",
            _ => "host:port",
        };
        let kind_ok = match &address {
            Address::Net { .. } => scheme.has_host_port(),
            Address::UnixPath(_) | Address::UnixAbstract(_) => scheme == Scheme::Unix,
            Address::Mem(_) => scheme == Scheme::Mem,
        };
        if !kind_ok {
            return Err(EndpointError::WrongAddressKind { scheme, expected });
        }
        match &address {
            Address::Net {
                host: Host::Name(name),
                ..
            } => {
                if let Some(reason) = host_name_problem(name) {
                    return Err(EndpointError::BadHost {
                        host: name.clone(),
                        reason,
                    });
                }
            }
            Address::Net { .. } => {}
            Address::UnixPath(path) => check_unix_path(path.as_os_str().as_bytes())?,
            Address::UnixAbstract(name) => check_abstract(name)?,
            Address::Mem(name) => check_mem_name(name)?,
        }
        Ok(Endpoint {
            scheme,
            address,
            options: Options::default(),
        })
    }

    /// A `tcp://` (or other `host:port` scheme) endpoint for a socket
    /// address.
    ///
    /// ```
    /// use ringwire_transports::{Endpoint, Scheme};
    ///
    /// let ep = Endpoint::socket(Scheme::Tcp, "[::1]:7000".parse().unwrap()).unwrap();
    /// assert_eq!(ep.to_string(), "tcp://[::1]:7000");
    /// ```
    pub fn socket(scheme: Scheme, addr: SocketAddr) -> Result<Endpoint, EndpointError> {
        Endpoint::new(
            scheme,
            Address::Net {
                host: Host::Ip(addr.ip()),
                port: addr.port(),
            },
        )
    }

    /// This endpoint with `options` (replacing any it had), after checking
    /// that each applies to the scheme and is in range.
    ///
    /// ```
    /// use ringwire_transports::{Endpoint, Options};
    ///
    /// let ep: Endpoint = "unix:///run/kv.sock".parse().unwrap();
    /// let ep = ep.with_options(Options::new().with_backlog(1024)).unwrap();
    /// assert_eq!(ep.to_string(), "unix:///run/kv.sock?backlog=1024");
    /// assert!(ep.with_options(Options::new().with_nodelay(true)).is_err());
    /// ```
    pub fn with_options(self, options: Options) -> Result<Endpoint, EndpointError> {
        options.validate(self.scheme, &self.address)?;
        Ok(Endpoint { options, ..self })
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The host of a `host:port` endpoint.
    pub fn host(&self) -> Option<&Host> {
        match &self.address {
            Address::Net { host, .. } => Some(host),
            _ => None,
        }
    }

    /// The port of a `host:port` endpoint.
    pub fn port(&self) -> Option<u16> {
        match &self.address {
            Address::Net { port, .. } => Some(*port),
            _ => None,
        }
    }

    /// Whether the host is a multicast group literal.
    pub fn is_multicast(&self) -> bool {
        matches!(self.host(), Some(Host::Ip(ip)) if ip.is_multicast())
    }

    /// The socket addresses of a `host:port` endpoint. A literal gives
    /// itself; a name is resolved now, through std's resolver (which may
    /// block on DNS): call this once, when connecting or listening.
    ///
    /// Errors: `InvalidInput` for `unix://` and `mem://` endpoints, the
    /// resolver's error (naming the host) otherwise, `NotFound` when a name
    /// resolves to no address.
    ///
    /// ```
    /// use ringwire_transports::Endpoint;
    ///
    /// let ep: Endpoint = "tcp://127.0.0.1:7000".parse().unwrap();
    /// assert_eq!(ep.socket_addrs().unwrap(), ["127.0.0.1:7000".parse::<std::net::SocketAddr>().unwrap()]);
    /// let ep: Endpoint = "mem://orders".parse().unwrap();
    /// assert!(ep.socket_addrs().is_err());
    /// ```
    pub fn socket_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        match &self.address {
            Address::Net {
                host: Host::Ip(ip),
                port,
            } => Ok(vec![SocketAddr::new(*ip, *port)]),
            Address::Net {
                host: Host::Name(name),
                port,
            } => {
                let addrs: Vec<SocketAddr> = (name.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| io::Error::new(e.kind(), format!("resolving {name:?}: {e}")))?
                    .collect();
                if addrs.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("resolving {name:?}: no address"),
                    ));
                }
                Ok(addrs)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{self} has no socket address"),
            )),
        }
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(input: &str) -> Result<Endpoint, EndpointError> {
        let Some((scheme_text, rest)) = input.split_once("://") else {
            return Err(EndpointError::MissingSeparator {
                input: input.to_owned(),
            });
        };
        let scheme =
            Scheme::from_name(scheme_text).ok_or_else(|| EndpointError::UnknownScheme {
                scheme: scheme_text.to_owned(),
                input: input.to_owned(),
            })?;
        let (address_text, query) = match rest.split_once('?') {
            Some((address, query)) => (address, Some(query)),
            None => (rest, None),
        };
        let address = match scheme {
            Scheme::Unix => parse_unix(address_text)?,
            Scheme::Mem => {
                if address_text.is_empty() {
                    return Err(EndpointError::EmptyMemName {
                        input: input.to_owned(),
                    });
                }
                let bytes = decode(address_text)?;
                let name = String::from_utf8(bytes).map_err(|_| EndpointError::BadMemName {
                    name: address_text.to_owned(),
                    reason: "not valid UTF-8",
                })?;
                check_mem_name(&name).map_err(|e| match e {
                    EndpointError::BadMemName { reason, .. } => EndpointError::BadMemName {
                        name: address_text.to_owned(),
                        reason,
                    },
                    other => other,
                })?;
                Address::Mem(name)
            }
            _ => parse_host_port(address_text, input)?,
        };
        let mut options = Options::default();
        if let Some(query) = query {
            for part in query.split('&') {
                let Some((name, raw)) = part.split_once('=').filter(|(name, _)| !name.is_empty())
                else {
                    return Err(EndpointError::MalformedOption {
                        part: part.to_owned(),
                    });
                };
                let key = Opt::from_name(name)
                    .filter(|key| key.applies_to(scheme))
                    .ok_or_else(|| EndpointError::UnknownOption {
                        option: name.to_owned(),
                        scheme,
                    })?;
                if options.has(key) {
                    return Err(EndpointError::DuplicateOption { option: key.name() });
                }
                let value = decode(raw).map_err(|_| EndpointError::BadEscape {
                    part: part.to_owned(),
                })?;
                options.set_parsed(key, raw, &value)?;
            }
        }
        Endpoint::new(scheme, address)?.with_options(options)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        match &self.address {
            Address::Net { host, port } => write!(f, "{host}:{port}")?,
            Address::UnixPath(path) => encode(f, path.as_os_str().as_bytes(), false)?,
            Address::UnixAbstract(name) => {
                f.write_char('@')?;
                encode(f, name, false)?;
            }
            Address::Mem(name) => encode(f, name.as_bytes(), false)?,
        }
        let mut sep = '?';
        let mut value = Vec::new();
        for key in Opt::ALL {
            if self.options.has(key) {
                write!(f, "{sep}{}=", key.name())?;
                value.clear();
                self.options.write_value(key, &mut value);
                encode(f, &value, true)?;
                sep = '&';
            }
        }
        Ok(())
    }
}

/// Parses `host:port`, `[v6]:port`; `input` is quoted in errors.
fn parse_host_port(text: &str, input: &str) -> Result<Address, EndpointError> {
    let (host, port) = if let Some(inner) = text.strip_prefix('[') {
        let Some((v6, after)) = inner.split_once(']') else {
            return Err(EndpointError::BadIpv6 {
                host: text.to_owned(),
                reason: "missing closing bracket",
            });
        };
        let ip: Ipv6Addr = v6.parse().map_err(|_| EndpointError::BadIpv6 {
            host: v6.to_owned(),
            reason: "not an IPv6 address (zone ids are not supported)",
        })?;
        let port = match after.strip_prefix(':') {
            Some(port) => port,
            None if after.is_empty() => {
                return Err(EndpointError::MissingPort {
                    input: input.to_owned(),
                })
            }
            None => {
                return Err(EndpointError::BadIpv6 {
                    host: text.to_owned(),
                    reason: "expected :port after the closing bracket",
                })
            }
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        if text.is_empty() {
            return Err(EndpointError::EmptyHost {
                input: input.to_owned(),
            });
        }
        if text.matches(':').count() > 1 {
            return Err(EndpointError::BadIpv6 {
                host: text.to_owned(),
                reason: "an IPv6 address goes in brackets, as in tcp://[::1]:7000",
            });
        }
        let Some((host, port)) = text.split_once(':') else {
            return Err(EndpointError::MissingPort {
                input: input.to_owned(),
            });
        };
        if host.is_empty() {
            return Err(EndpointError::EmptyHost {
                input: input.to_owned(),
            });
        }
        let host = if let Ok(ip) = host.parse::<Ipv4Addr>() {
            Host::Ip(IpAddr::V4(ip))
        } else if host.contains([']', '[']) {
            return Err(EndpointError::BadIpv6 {
                host: host.to_owned(),
                reason: "misplaced bracket",
            });
        } else if let Some(reason) = host_name_problem(host) {
            return Err(EndpointError::BadHost {
                host: host.to_owned(),
                reason,
            });
        } else {
            Host::Name(host.to_owned())
        };
        (host, port)
    };
    if port.is_empty() {
        return Err(EndpointError::MissingPort {
            input: input.to_owned(),
        });
    }
    let port = parse_u64(port)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| EndpointError::BadPort {
            port: port.to_owned(),
        })?;
    Ok(Address::Net { host, port })
}

/// Parses the address of a `unix://` endpoint.
fn parse_unix(text: &str) -> Result<Address, EndpointError> {
    let with_quote = |e: EndpointError| match e {
        EndpointError::BadUnixAddress { reason, .. } => EndpointError::BadUnixAddress {
            address: text.to_owned(),
            reason,
        },
        other => other,
    };
    if let Some(name) = text.strip_prefix('@') {
        let name = decode(name)?;
        check_abstract(&name).map_err(with_quote)?;
        return Ok(Address::UnixAbstract(name));
    }
    if text.is_empty() {
        return Err(EndpointError::BadUnixAddress {
            address: String::new(),
            reason: "missing path: expected unix:///path or unix://@name",
        });
    }
    let path = decode(text)?;
    if path.first() != Some(&b'/') {
        return Err(EndpointError::RelativeUnixPath {
            path: text.to_owned(),
        });
    }
    check_unix_path(&path).map_err(with_quote)?;
    Ok(Address::UnixPath(PathBuf::from(OsStr::from_bytes(&path))))
}

fn check_unix_path(path: &[u8]) -> Result<(), EndpointError> {
    let bad = |reason| EndpointError::BadUnixAddress {
        address: String::from_utf8_lossy(path).into_owned(),
        reason,
    };
    if path.first() != Some(&b'/') {
        return Err(EndpointError::RelativeUnixPath {
            path: String::from_utf8_lossy(path).into_owned(),
        });
    }
    if path.len() > MAX_UNIX_PATH {
        return Err(bad("longer than 107 bytes"));
    }
    if path.contains(&0) {
        return Err(bad("a path cannot hold a NUL byte"));
    }
    Ok(())
}

fn check_abstract(name: &[u8]) -> Result<(), EndpointError> {
    let bad = |reason| EndpointError::BadUnixAddress {
        address: format!("@{}", String::from_utf8_lossy(name)),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty abstract name"));
    }
    if name.len() > MAX_UNIX_PATH {
        return Err(bad("abstract name longer than 107 bytes"));
    }
    Ok(())
}

fn check_mem_name(name: &str) -> Result<(), EndpointError> {
    let bad = |reason| EndpointError::BadMemName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty name"));
    }
    if name.len() > MAX_MEM_NAME {
        return Err(bad("longer than 255 bytes"));
    }
    if name.contains('/') {
        return Err(bad("a name cannot hold '/'"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("a name holds printable characters only"));
    }
    Ok(())
}

/// Why `name` is not an acceptable host name, if it is not.
fn host_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty name");
    }
    if name.len() > 253 {
        return Some("a host name is at most 253 bytes");
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Some("empty label (two dots, or a dot at an end)");
        }
        if label.len() > 63 {
            return Some("a label is at most 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Some("a host name holds letters, digits, '-', '_' and '.' only");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("a label cannot start or end with '-'");
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Some("not an IPv4 address, and a host name cannot end in a numeric label");
    }
    None
}

/// A decimal number: digits only, no sign, at most `u64::MAX`.
fn parse_u64(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_nonzero(text: &str) -> Option<NonZeroU32> {
    parse_u64(text)
        .and_then(|n| u32::try_from(n).ok())
        .and_then(NonZeroU32::new)
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// `N`, `NK`, `NM`, `NG` (binary multiples; lower case accepted), at most
/// [`MAX_SOCKET_INT`].
fn parse_size(text: &str) -> Option<u32> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 10),
        b'M' | b'm' => (&text[..text.len() - 1], 20),
        b'G' | b'g' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let n = parse_u64(digits)?.checked_mul(1 << shift)?;
    u32::try_from(n).ok().filter(|&n| n <= MAX_SOCKET_INT)
}

/// `Nms` or `Ns`.
fn parse_duration(text: &str) -> Option<Duration> {
    if let Some(ms) = text.strip_suffix("ms") {
        Some(Duration::from_millis(parse_u64(ms)?))
    } else if let Some(s) = text.strip_suffix('s') {
        Some(Duration::from_secs(parse_u64(s)?))
    } else {
        None
    }
}

fn parse_iface(text: &str) -> Option<Interface> {
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Some(Interface::Addr(ip));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return parse_u64(text)
            .and_then(|n| u32::try_from(n).ok())
            .map(Interface::Index);
    }
    // Linux's rule for interface names (dev_valid_name): 1 to 15 bytes,
    // not "." or "..", no '/', ':' or whitespace.
    let valid = !text.is_empty()
        && text.len() < 16
        && text != "."
        && text != ".."
        && !text
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    valid.then(|| Interface::Name(text.to_owned()))
}

fn write_opt(out: &mut String, value: Option<impl fmt::Display>) {
    if let Some(value) = value {
        let _ = write!(out, "{value}");
    }
}

fn write_bool(out: &mut String, value: Option<bool>) {
    if let Some(value) = value {
        out.push(if value { '1' } else { '0' });
    }
}

/// The largest binary suffix that divides the size exactly.
fn write_size(out: &mut String, value: Option<u32>) {
    if let Some(n) = value {
        let _ = match n {
            0 => write!(out, "0"),
            n if n % (1 << 30) == 0 => write!(out, "{}G", n >> 30),
            n if n % (1 << 20) == 0 => write!(out, "{}M", n >> 20),
            n if n % (1 << 10) == 0 => write!(out, "{}K", n >> 10),
            n => write!(out, "{n}"),
        };
    }
}

/// Whole seconds as `Ns`, anything else as `Nms` (values have millisecond
/// precision).
fn write_duration(out: &mut String, value: Option<Duration>) {
    if let Some(d) = value {
        let ms = d.as_millis();
        let _ = if ms % 1000 == 0 {
            write!(out, "{}s", ms / 1000)
        } else {
            write!(out, "{ms}ms")
        };
    }
}

/// Percent-decodes `text`.
fn decode(text: &str) -> Result<Vec<u8>, EndpointError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            let digits = bytes
                .get(i + 1)
                .and_then(|&h| hex(h))
                .zip(bytes.get(i + 2).and_then(|&l| hex(l)));
            let Some((high, low)) = digits else {
                return Err(EndpointError::BadEscape {
                    part: text.to_owned(),
                });
            };
            out.push((high * 16 + low) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Writes `bytes` percent-encoding what would read back as syntax (`%`,
/// `?`, `#`, and `&` in option values), whitespace, control characters and
/// bytes that are not UTF-8.
fn encode(f: &mut fmt::Formatter<'_>, bytes: &[u8], in_value: bool) -> fmt::Result {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let special = matches!(c, '%' | '?' | '#') || (in_value && c == '&');
            if special || c.is_whitespace() || c.is_control() {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    write!(f, "%{b:02X}")?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        for b in chunk.invalid() {
            write!(f, "%{b:02X}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<Endpoint, EndpointError> {
        s.parse()
    }

    fn net(scheme: Scheme, host: Host, port: u16) -> Endpoint {
        Endpoint::new(scheme, Address::Net { host, port }).unwrap()
    }

    #[test]
    fn valid_inputs() {
        let v4 = |a, b, c, d| Host::Ip(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
        let name = |n: &str| Host::Name(n.to_owned());
        let ms = Duration::from_millis;
        let nz = |n| NonZeroU32::new(n).unwrap();
        // (input, expected value, canonical Display)
        let table: Vec<(&str, Endpoint, &str)> = vec![
            (
                "tcp://127.0.0.1:7000",
                net(Scheme::Tcp, v4(127, 0, 0, 1), 7000),
                "tcp://127.0.0.1:7000",
            ),
            (
                "TCP://127.0.0.1:0",
                net(Scheme::Tcp, v4(127, 0, 0, 1), 0),
                "tcp://127.0.0.1:0",
            ),
            (
                "tcp://[::1]:7000",
                net(Scheme::Tcp, Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)), 7000),
                "tcp://[::1]:7000",
            ),
            (
                "tcp://[0:0:0:0:0:0:0:1]:65535",
                net(Scheme::Tcp, Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)), 65535),
                "tcp://[::1]:65535",
            ),
            (
                "tcp://localhost:80",
                net(Scheme::Tcp, name("localhost"), 80),
                "tcp://localhost:80",
            ),
            (
                "tcp://kv-1.rack_2.example.com:0080",
                net(Scheme::Tcp, name("kv-1.rack_2.example.com"), 80),
                "tcp://kv-1.rack_2.example.com:80",
            ),
            (
                "tcp://h:1?nodelay=0&sndbuf=4M",
                net(Scheme::Tcp, name("h"), 1)
                    .with_options(Options::new().with_nodelay(false).with_sndbuf(4 << 20))
                    .unwrap(),
                "tcp://h:1?nodelay=0&sndbuf=4M",
            ),
            (
                "tcp://h:1?rcvbuf=1536&reuseport=true&linger=0ms&backlog=4096&keepalive=1500ms&nodelay=false&sndbuf=64k",
                net(Scheme::Tcp, name("h"), 1)
                    .with_options(
                        Options::new()
                            .with_rcvbuf(1536)
                            .with_reuseport(true)
                            .with_linger(ms(0))
                            .with_backlog(4096)
                            .with_keepalive(ms(1500))
                            .with_nodelay(false)
                            .with_sndbuf(64 << 10),
                    )
                    .unwrap(),
                "tcp://h:1?nodelay=0&keepalive=1500ms&linger=0s&reuseport=1&backlog=4096&sndbuf=64K&rcvbuf=1536",
            ),
            (
                "tcp://h:1?sndbuf=2047M&rcvbuf=1G&keepalive=2s",
                net(Scheme::Tcp, name("h"), 1)
                    .with_options(
                        Options::new()
                            .with_sndbuf(2047 << 20)
                            .with_rcvbuf(1 << 30)
                            .with_keepalive(ms(2000)),
                    )
                    .unwrap(),
                "tcp://h:1?keepalive=2s&sndbuf=2047M&rcvbuf=1G",
            ),
            (
                "unix:///run/kv.sock",
                Endpoint::new(Scheme::Unix, Address::UnixPath("/run/kv.sock".into())).unwrap(),
                "unix:///run/kv.sock",
            ),
            (
                "unix:///tmp/a%3Fb%20c?backlog=8",
                Endpoint::new(Scheme::Unix, Address::UnixPath("/tmp/a?b c".into()))
                    .unwrap()
                    .with_options(Options::new().with_backlog(8))
                    .unwrap(),
                "unix:///tmp/a%3Fb%20c?backlog=8",
            ),
            (
                "unix://@ringwire-kv",
                Endpoint::new(Scheme::Unix, Address::UnixAbstract(b"ringwire-kv".to_vec()))
                    .unwrap(),
                "unix://@ringwire-kv",
            ),
            (
                "unix://@a%00b%FF",
                Endpoint::new(Scheme::Unix, Address::UnixAbstract(b"a\0b\xff".to_vec())).unwrap(),
                "unix://@a%00b%FF",
            ),
            (
                "mem://orders",
                Endpoint::new(Scheme::Mem, Address::Mem("orders".into())).unwrap(),
                "mem://orders",
            ),
            (
                "mem://données@2&x=y#1?capacity=64",
                Endpoint::new(Scheme::Mem, Address::Mem("données@2&x=y#1".into()))
                    .unwrap()
                    .with_options(Options::new().with_capacity(nz(64)))
                    .unwrap(),
                "mem://données@2&x=y%231?capacity=64",
            ),
            (
                "udp://127.0.0.1:9000?sndbuf=1M&reuseport=1",
                net(Scheme::Udp, v4(127, 0, 0, 1), 9000)
                    .with_options(Options::new().with_sndbuf(1 << 20).with_reuseport(true))
                    .unwrap(),
                "udp://127.0.0.1:9000?reuseport=1&sndbuf=1M",
            ),
            (
                "udp://239.1.2.3:9000?iface=127.0.0.1&ttl=1&loop=1",
                net(Scheme::Udp, v4(239, 1, 2, 3), 9000)
                    .with_options(
                        Options::new()
                            .with_iface(Interface::Addr(Ipv4Addr::LOCALHOST))
                            .with_ttl(1)
                            .with_multicast_loop(true),
                    )
                    .unwrap(),
                "udp://239.1.2.3:9000?iface=127.0.0.1&ttl=1&loop=1",
            ),
            (
                "udp://[ff02::1]:9000?iface=lo&loop=0",
                net(Scheme::Udp, Host::Ip("ff02::1".parse().unwrap()), 9000)
                    .with_options(
                        Options::new()
                            .with_iface(Interface::Name("lo".into()))
                            .with_multicast_loop(false),
                    )
                    .unwrap(),
                "udp://[ff02::1]:9000?iface=lo&loop=0",
            ),
            (
                "udp://[ff02::1]:9000?iface=2",
                net(Scheme::Udp, Host::Ip("ff02::1".parse().unwrap()), 9000)
                    .with_options(Options::new().with_iface(Interface::Index(2)))
                    .unwrap(),
                "udp://[ff02::1]:9000?iface=2",
            ),
            (
                "tls://example.com:443?servername=api.example.com&ca=/etc/ssl/ca%20root.pem&cert=c.pem&key=/k%26.pem&nodelay=1",
                net(Scheme::Tls, name("example.com"), 443)
                    .with_options(
                        Options::new()
                            .with_servername("api.example.com")
                            .with_ca("/etc/ssl/ca root.pem")
                            .with_cert("c.pem")
                            .with_key("/k&.pem")
                            .with_nodelay(true),
                    )
                    .unwrap(),
                "tls://example.com:443?nodelay=1&servername=api.example.com&ca=/etc/ssl/ca%20root.pem&cert=c.pem&key=/k%26.pem",
            ),
            (
                "rdma://10.0.0.2:4791?credits=128",
                net(Scheme::Rdma, v4(10, 0, 0, 2), 4791)
                    .with_options(Options::new().with_credits(nz(128)))
                    .unwrap(),
                "rdma://10.0.0.2:4791?credits=128",
            ),
        ];
        for (input, expected, canonical) in table {
            let parsed = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(parsed, expected, "{input}");
            assert_eq!(parsed.to_string(), canonical, "{input}");
            assert_eq!(parse(canonical).unwrap(), expected, "{canonical}");
        }
    }

    #[test]
    fn invalid_inputs() {
        use EndpointError as E;
        let s = |x: &str| x.to_owned();
        let table: Vec<(&str, EndpointError)> = vec![
            (
                "127.0.0.1:7000",
                E::MissingSeparator {
                    input: s("127.0.0.1:7000"),
                },
            ),
            (
                "tcp:/h:1",
                E::MissingSeparator {
                    input: s("tcp:/h:1"),
                },
            ),
            ("", E::MissingSeparator { input: s("") }),
            (
                "tpc://h:1",
                E::UnknownScheme {
                    scheme: s("tpc"),
                    input: s("tpc://h:1"),
                },
            ),
            (
                "://h:1",
                E::UnknownScheme {
                    scheme: s(""),
                    input: s("://h:1"),
                },
            ),
            ("tcp://", E::EmptyHost { input: s("tcp://") }),
            (
                "tcp://:7000",
                E::EmptyHost {
                    input: s("tcp://:7000"),
                },
            ),
            (
                "tcp://h",
                E::MissingPort {
                    input: s("tcp://h"),
                },
            ),
            (
                "tcp://h:",
                E::MissingPort {
                    input: s("tcp://h:"),
                },
            ),
            (
                "tcp://[::1]",
                E::MissingPort {
                    input: s("tcp://[::1]"),
                },
            ),
            (
                "tcp://[::1]:",
                E::MissingPort {
                    input: s("tcp://[::1]:"),
                },
            ),
            ("tcp://h:99999", E::BadPort { port: s("99999") }),
            ("tcp://h:65536", E::BadPort { port: s("65536") }),
            ("tcp://h:-1", E::BadPort { port: s("-1") }),
            ("tcp://h:+80", E::BadPort { port: s("+80") }),
            ("tcp://h:8x", E::BadPort { port: s("8x") }),
            ("tcp://h:80/path", E::BadPort { port: s("80/path") }),
            (
                "tcp://::1:7000",
                E::BadIpv6 {
                    host: s("::1:7000"),
                    reason: "an IPv6 address goes in brackets, as in tcp://[::1]:7000",
                },
            ),
            (
                "tcp://[::1:7000",
                E::BadIpv6 {
                    host: s("[::1:7000"),
                    reason: "missing closing bracket",
                },
            ),
            (
                "tcp://[::g]:7000",
                E::BadIpv6 {
                    host: s("::g"),
                    reason: "not an IPv6 address (zone ids are not supported)",
                },
            ),
            (
                "tcp://[127.0.0.1]:7000",
                E::BadIpv6 {
                    host: s("127.0.0.1"),
                    reason: "not an IPv6 address (zone ids are not supported)",
                },
            ),
            (
                "tcp://[::1]x:7000",
                E::BadIpv6 {
                    host: s("[::1]x:7000"),
                    reason: "expected :port after the closing bracket",
                },
            ),
            (
                "tcp://h]:7",
                E::BadIpv6 {
                    host: s("h]"),
                    reason: "misplaced bracket",
                },
            ),
            (
                "tcp://1.2.3:7000",
                E::BadHost {
                    host: s("1.2.3"),
                    reason: "not an IPv4 address, and a host name cannot end in a numeric label",
                },
            ),
            (
                "tcp://256.1.1.1:7000",
                E::BadHost {
                    host: s("256.1.1.1"),
                    reason: "not an IPv4 address, and a host name cannot end in a numeric label",
                },
            ),
            (
                "tcp://user@h:7000",
                E::BadHost {
                    host: s("user@h"),
                    reason: "a host name holds letters, digits, '-', '_' and '.' only",
                },
            ),
            (
                "tcp://a..b:1",
                E::BadHost {
                    host: s("a..b"),
                    reason: "empty label (two dots, or a dot at an end)",
                },
            ),
            (
                "tcp://-a:1",
                E::BadHost {
                    host: s("-a"),
                    reason: "a label cannot start or end with '-'",
                },
            ),
            (
                "unix://run/kv.sock",
                E::RelativeUnixPath {
                    path: s("run/kv.sock"),
                },
            ),
            (
                "unix://./kv.sock",
                E::RelativeUnixPath {
                    path: s("./kv.sock"),
                },
            ),
            ("unix://%40x", E::RelativeUnixPath { path: s("%40x") }),
            (
                "unix://",
                E::BadUnixAddress {
                    address: s(""),
                    reason: "missing path: expected unix:///path or unix://@name",
                },
            ),
            (
                "unix://@",
                E::BadUnixAddress {
                    address: s("@"),
                    reason: "empty abstract name",
                },
            ),
            (
                "unix:///a%00b",
                E::BadUnixAddress {
                    address: s("/a%00b"),
                    reason: "a path cannot hold a NUL byte",
                },
            ),
            ("unix:///a%zz", E::BadEscape { part: s("/a%zz") }),
            ("unix:///a%4", E::BadEscape { part: s("/a%4") }),
            ("mem://", E::EmptyMemName { input: s("mem://") }),
            (
                "mem://?capacity=1",
                E::EmptyMemName {
                    input: s("mem://?capacity=1"),
                },
            ),
            (
                "mem://a/b",
                E::BadMemName {
                    name: s("a/b"),
                    reason: "a name cannot hold '/'",
                },
            ),
            (
                "mem://a%2Fb",
                E::BadMemName {
                    name: s("a%2Fb"),
                    reason: "a name cannot hold '/'",
                },
            ),
            (
                "mem://a b",
                E::BadMemName {
                    name: s("a b"),
                    reason: "a name holds printable characters only",
                },
            ),
            (
                "mem://%FF",
                E::BadMemName {
                    name: s("%FF"),
                    reason: "not valid UTF-8",
                },
            ),
            (
                "unix:///run/kv.sock?nodelay=1",
                E::UnknownOption {
                    option: s("nodelay"),
                    scheme: Scheme::Unix,
                },
            ),
            (
                "tcp://h:1?nodelya=1",
                E::UnknownOption {
                    option: s("nodelya"),
                    scheme: Scheme::Tcp,
                },
            ),
            (
                "tcp://h:1?capacity=1",
                E::UnknownOption {
                    option: s("capacity"),
                    scheme: Scheme::Tcp,
                },
            ),
            (
                "mem://m?sndbuf=1",
                E::UnknownOption {
                    option: s("sndbuf"),
                    scheme: Scheme::Mem,
                },
            ),
            (
                "tcp://h:1?nodelay",
                E::MalformedOption { part: s("nodelay") },
            ),
            ("tcp://h:1?", E::MalformedOption { part: s("") }),
            ("tcp://h:1?nodelay=1&", E::MalformedOption { part: s("") }),
            ("tcp://h:1?=1", E::MalformedOption { part: s("=1") }),
            (
                "tcp://h:1?sndbuf=4Q",
                E::BadOptionValue {
                    option: "sndbuf",
                    value: s("4Q"),
                    expected: SIZE,
                },
            ),
            (
                "tcp://h:1?sndbuf=2G",
                E::BadOptionValue {
                    option: "sndbuf",
                    value: s("2G"),
                    expected: SIZE,
                },
            ),
            (
                "tcp://h:1?sndbuf=M",
                E::BadOptionValue {
                    option: "sndbuf",
                    value: s("M"),
                    expected: SIZE,
                },
            ),
            (
                "tcp://h:1?sndbuf=-1",
                E::BadOptionValue {
                    option: "sndbuf",
                    value: s("-1"),
                    expected: SIZE,
                },
            ),
            (
                "tcp://h:1?nodelay=yes",
                E::BadOptionValue {
                    option: "nodelay",
                    value: s("yes"),
                    expected: BOOL,
                },
            ),
            (
                "tcp://h:1?keepalive=30",
                E::BadOptionValue {
                    option: "keepalive",
                    value: s("30"),
                    expected: DURATION,
                },
            ),
            (
                "tcp://h:1?keepalive=0s",
                E::BadOptionValue {
                    option: "keepalive",
                    value: s("0s"),
                    expected: KEEPALIVE,
                },
            ),
            (
                "tcp://h:1?linger=1m",
                E::BadOptionValue {
                    option: "linger",
                    value: s("1m"),
                    expected: DURATION,
                },
            ),
            (
                "tcp://h:1?backlog=2147483648",
                E::BadOptionValue {
                    option: "backlog",
                    value: s("2147483648"),
                    expected: BACKLOG,
                },
            ),
            (
                "tcp://h:1?nodelay=%zz",
                E::BadEscape {
                    part: s("nodelay=%zz"),
                },
            ),
            (
                "udp://239.1.1.1:1?ttl=256",
                E::BadOptionValue {
                    option: "ttl",
                    value: s("256"),
                    expected: TTL,
                },
            ),
            (
                "udp://239.1.1.1:1?iface=a/b",
                E::BadOptionValue {
                    option: "iface",
                    value: s("a/b"),
                    expected: IFACE,
                },
            ),
            (
                "udp://239.1.1.1:1?iface=0123456789abcdef",
                E::BadOptionValue {
                    option: "iface",
                    value: s("0123456789abcdef"),
                    expected: IFACE,
                },
            ),
            (
                "udp://[ff02::1]:1?iface=127.0.0.1",
                E::BadOptionValue {
                    option: "iface",
                    value: s("127.0.0.1"),
                    expected: IFACE_V6,
                },
            ),
            (
                "mem://m?capacity=0",
                E::BadOptionValue {
                    option: "capacity",
                    value: s("0"),
                    expected: COUNT,
                },
            ),
            (
                "rdma://h:1?credits=4294967296",
                E::BadOptionValue {
                    option: "credits",
                    value: s("4294967296"),
                    expected: COUNT,
                },
            ),
            (
                "tls://h:1?servername=1.2.3.4",
                E::BadOptionValue {
                    option: "servername",
                    value: s("1.2.3.4"),
                    expected: SERVERNAME,
                },
            ),
            (
                "tls://h:1?ca=",
                E::BadOptionValue {
                    option: "ca",
                    value: s(""),
                    expected: PATH,
                },
            ),
            (
                "tcp://h:1?nodelay=1&nodelay=0",
                E::DuplicateOption { option: "nodelay" },
            ),
            (
                "udp://127.0.0.1:1?ttl=4",
                E::NotMulticast {
                    option: "ttl",
                    host: s("127.0.0.1"),
                },
            ),
            (
                "udp://groups.example:1?loop=1",
                E::NotMulticast {
                    option: "loop",
                    host: s("groups.example"),
                },
            ),
        ];
        for (input, expected) in table {
            assert_eq!(parse(input), Err(expected), "{input}");
        }
        let long = format!("unix:///{}", "a".repeat(107));
        assert!(matches!(
            parse(&long),
            Err(E::BadUnixAddress {
                reason: "longer than 107 bytes",
                ..
            })
        ));
        assert!(parse(&format!("unix:///{}", "a".repeat(106))).is_ok());
        assert!(parse(&format!("mem://{}", "m".repeat(255))).is_ok());
        assert!(matches!(
            parse(&format!("mem://{}", "m".repeat(256))),
            Err(E::BadMemName {
                reason: "longer than 255 bytes",
                ..
            })
        ));
    }

    #[test]
    fn error_messages_quote_the_offending_part() {
        let msg = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("tpc://h:1"),
            "unknown scheme \"tpc\" in \"tpc://h:1\"; known: tcp, unix, mem, udp, tls, rdma"
        );
        assert_eq!(
            msg("unix:///s?nodelay=1"),
            "\"nodelay\" does not apply to unix://; unix:// takes: backlog, sndbuf, rcvbuf"
        );
        assert_eq!(
            msg("tcp://h:1?sndbuf=4Q"),
            "sndbuf=\"4Q\": expected a size like 4M (bytes, or K, M, G), at most 2147483647 bytes"
        );
        assert_eq!(
            msg("tcp://h:99999"),
            "bad port \"99999\": expected a number from 0 to 65535"
        );
        assert_eq!(
            msg("unix://run/x"),
            "relative unix path \"run/x\": unix:// takes an absolute path \
             (unix:///run/app.sock) or an abstract name (unix://@name)"
        );
        assert_eq!(
            msg("tcp://h:1?ttl=1"),
            "\"ttl\" does not apply to tcp://; tcp:// takes: nodelay, keepalive, linger, \
             reuseport, backlog, sndbuf, rcvbuf"
        );
        assert_eq!(
            msg("udp://10.0.0.1:1?loop=1"),
            "\"loop\" needs a multicast group address; \"10.0.0.1\" is not one"
        );
        assert_eq!(msg("mem://"), "empty mem:// name in \"mem://\"");
        assert_eq!(
            msg("tcp://h:1?backlog=1&backlog=2"),
            "duplicate option \"backlog\""
        );
    }

    #[test]
    fn options_are_checked_when_built_in_code() {
        let tcp = parse("tcp://h:1").unwrap();
        let err = tcp
            .clone()
            .with_options(Options::new().with_capacity(NonZeroU32::MIN));
        assert_eq!(
            err,
            Err(EndpointError::UnknownOption {
                option: "capacity".into(),
                scheme: Scheme::Tcp
            })
        );
        let err = tcp
            .clone()
            .with_options(Options::new().with_sndbuf(u32::MAX));
        assert!(matches!(
            err,
            Err(EndpointError::BadOptionValue {
                option: "sndbuf",
                ..
            })
        ));
        let err = tcp
            .clone()
            .with_options(Options::new().with_keepalive(Duration::from_micros(1500)));
        assert!(matches!(
            err,
            Err(EndpointError::BadOptionValue {
                option: "keepalive",
                ..
            })
        ));
        let tls = parse("tls://h:1").unwrap();
        let err = tls
            .clone()
            .with_options(Options::new().with_servername("a b"));
        assert!(matches!(
            err,
            Err(EndpointError::BadOptionValue {
                option: "servername",
                ..
            })
        ));
        let err = tls.with_options(Options::new().with_key(""));
        assert!(matches!(
            err,
            Err(EndpointError::BadOptionValue { option: "key", .. })
        ));
        let udp = parse("udp://239.0.0.1:5").unwrap();
        let err = udp.with_options(Options::new().with_iface(Interface::Name("a:b".into())));
        assert!(matches!(
            err,
            Err(EndpointError::BadOptionValue {
                option: "iface",
                ..
            })
        ));
    }

    #[test]
    fn new_refuses_mismatched_or_malformed_addresses() {
        assert_eq!(
            Endpoint::new(Scheme::Tcp, Address::Mem("x".into())),
            Err(EndpointError::WrongAddressKind {
                scheme: Scheme::Tcp,
                expected: "host:port"
            })
        );
        assert!(Endpoint::new(
            Scheme::Mem,
            Address::Net {
                host: Host::Name("h".into()),
                port: 1
            }
        )
        .is_err());
        assert!(matches!(
            Endpoint::new(
                Scheme::Tcp,
                Address::Net {
                    host: Host::Name("a b".into()),
                    port: 1
                }
            ),
            Err(EndpointError::BadHost { .. })
        ));
        assert!(matches!(
            Endpoint::new(Scheme::Unix, Address::UnixPath("rel".into())),
            Err(EndpointError::RelativeUnixPath { .. })
        ));
        assert!(matches!(
            Endpoint::new(Scheme::Unix, Address::UnixAbstract(Vec::new())),
            Err(EndpointError::BadUnixAddress { .. })
        ));
        assert!(matches!(
            Endpoint::new(Scheme::Mem, Address::Mem(String::new())),
            Err(EndpointError::BadMemName { .. })
        ));
    }

    #[test]
    fn socket_addrs_of_literals_names_and_others() {
        let ep = parse("tcp://[::1]:7000").unwrap();
        assert_eq!(
            ep.socket_addrs().unwrap(),
            ["[::1]:7000".parse::<std::net::SocketAddr>().unwrap()]
        );
        // localhost resolves through /etc/hosts, without the network.
        let ep = parse("tcp://localhost:7000").unwrap();
        let addrs = ep.socket_addrs().unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 7000),
            "{addrs:?}"
        );
        let err = parse("unix:///run/x").unwrap().socket_addrs().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(err.to_string(), "unix:///run/x has no socket address");
    }

    #[test]
    fn accessors() {
        let ep = parse("udp://239.1.2.3:9000?ttl=3").unwrap();
        assert!(ep.is_multicast());
        assert_eq!(ep.host(), Some(&Host::Ip("239.1.2.3".parse().unwrap())));
        assert_eq!(ep.port(), Some(9000));
        assert_eq!(ep.options().ttl(), Some(3));
        assert_eq!(ep.options().nodelay(), None);
        let ep = parse("mem://m").unwrap();
        assert_eq!(
            (ep.host(), ep.port(), ep.is_multicast()),
            (None, None, false)
        );
        assert!(ep.options().is_empty());
        assert_eq!(Scheme::Tls.option_names().len(), 11);
        assert_eq!(Scheme::from_name("RdMa"), Some(Scheme::Rdma));
        assert_eq!(Scheme::from_name("quic"), None);
    }

    fn host_name() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9_-]{0,8}[a-z0-9](\\.[a-z][a-z0-9]{0,6}){0,3}"
    }

    fn host() -> impl Strategy<Value = Host> {
        prop_oneof![
            any::<Ipv4Addr>().prop_map(|ip| Host::Ip(IpAddr::V4(ip))),
            any::<Ipv6Addr>().prop_map(|ip| Host::Ip(IpAddr::V6(ip))),
            host_name().prop_map(Host::Name),
        ]
    }

    fn some<T: std::fmt::Debug + Clone>(
        s: impl Strategy<Value = T>,
    ) -> impl Strategy<Value = Option<T>> {
        proptest::option::of(s)
    }

    fn nonzero() -> impl Strategy<Value = NonZeroU32> {
        (1u32..).prop_map(|n| NonZeroU32::new(n).expect("from 1"))
    }

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0u64..100_000).prop_map(Duration::from_millis),
            (0u64..100_000).prop_map(Duration::from_secs),
        ]
    }

    fn size() -> impl Strategy<Value = u32> {
        prop_oneof![
            0..=MAX_SOCKET_INT,
            (0u32..2048).prop_map(|k| k << 10),
            (0u32..2048).prop_map(|m| m << 20),
            Just(1 << 30),
        ]
    }

    fn path_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 0..60)
    }

    /// Options that apply to `scheme` (multicast ones only for a group).
    fn options(scheme: Scheme, multicast: bool) -> impl Strategy<Value = Options> {
        let tcp = (
            some(any::<bool>()),
            some(duration().prop_filter("above 0", |d| !d.is_zero())),
            some(duration()),
            some(any::<bool>()),
            some(0..=MAX_SOCKET_INT),
            some(size()),
            some(size()),
        );
        let udp = (
            some(prop_oneof![
                any::<Ipv4Addr>().prop_map(Interface::Addr),
                any::<u32>().prop_map(Interface::Index),
                "[a-z][a-z0-9_.-]{0,14}".prop_map(Interface::Name),
            ]),
            some(any::<u8>()),
            some(any::<bool>()),
        );
        let tls = (
            some(host_name()),
            some(path_bytes().prop_filter("non-empty", |p| !p.is_empty())),
            some(path_bytes().prop_filter("non-empty", |p| !p.is_empty())),
            some(path_bytes().prop_filter("non-empty", |p| !p.is_empty())),
        );
        let counts = (some(nonzero()), some(nonzero()));
        (tcp, udp, tls, counts).prop_map(move |(tcp, udp, tls, counts)| {
            let path = |p: Option<Vec<u8>>| p.map(|p| PathBuf::from(OsStr::from_bytes(&p)));
            let mut o = Options {
                nodelay: tcp.0,
                keepalive: tcp.1,
                linger: tcp.2,
                reuseport: tcp.3,
                backlog: tcp.4,
                sndbuf: tcp.5,
                rcvbuf: tcp.6,
                iface: udp.0,
                ttl: udp.1,
                multicast_loop: udp.2,
                servername: tls.0,
                ca: path(tls.1),
                cert: path(tls.2),
                key: path(tls.3),
                credits: counts.0,
                capacity: counts.1,
            };
            for key in Opt::ALL {
                let multicast_only = matches!(key, Opt::Iface | Opt::Ttl | Opt::Loop);
                if !key.applies_to(scheme) || (multicast_only && !multicast) {
                    o.clear(key);
                }
            }
            o
        })
    }

    impl Options {
        fn clear(&mut self, key: Opt) {
            match key {
                Opt::Nodelay => self.nodelay = None,
                Opt::Keepalive => self.keepalive = None,
                Opt::Linger => self.linger = None,
                Opt::Reuseport => self.reuseport = None,
                Opt::Backlog => self.backlog = None,
                Opt::Sndbuf => self.sndbuf = None,
                Opt::Rcvbuf => self.rcvbuf = None,
                Opt::Iface => self.iface = None,
                Opt::Ttl => self.ttl = None,
                Opt::Loop => self.multicast_loop = None,
                Opt::Servername => self.servername = None,
                Opt::Ca => self.ca = None,
                Opt::Cert => self.cert = None,
                Opt::Key => self.key = None,
                Opt::Credits => self.credits = None,
                Opt::Capacity => self.capacity = None,
            }
        }
    }

    fn endpoint() -> impl Strategy<Value = Endpoint> {
        let net = (
            prop_oneof![
                Just(Scheme::Tcp),
                Just(Scheme::Udp),
                Just(Scheme::Tls),
                Just(Scheme::Rdma)
            ],
            prop_oneof![
                host(),
                (224u8..240, any::<[u8; 3]>())
                    .prop_map(|(a, [b, c, d])| Host::Ip(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))),
                any::<[u16; 7]>().prop_map(|s| {
                    Host::Ip(IpAddr::V6(Ipv6Addr::new(
                        0xff02, s[0], s[1], s[2], s[3], s[4], s[5], s[6],
                    )))
                }),
            ],
            any::<u16>(),
        )
            .prop_map(|(scheme, host, port)| (scheme, Address::Net { host, port }));
        let unix = prop_oneof![
            proptest::collection::vec(1u8..=255, 0..=106).prop_map(|mut p| {
                p.insert(0, b'/');
                Address::UnixPath(PathBuf::from(OsStr::from_bytes(&p)))
            }),
            proptest::collection::vec(any::<u8>(), 1..=107).prop_map(Address::UnixAbstract),
        ]
        .prop_map(|a| (Scheme::Unix, a));
        let mem = "[^/\\s\\p{Cc}]{1,40}"
            .prop_filter("at most 255 bytes", |n: &String| n.len() <= MAX_MEM_NAME)
            .prop_map(|n| (Scheme::Mem, Address::Mem(n)));
        prop_oneof![net, unix, mem].prop_flat_map(|(scheme, address)| {
            let ep = Endpoint::new(scheme, address).expect("generated a valid address");
            let multicast = ep.is_multicast();
            options(scheme, multicast)
                .prop_filter_map("valid options", move |o| ep.clone().with_options(o).ok())
        })
    }

    proptest! {
        #[test]
        fn display_parses_back_to_an_equal_value(ep in endpoint()) {
            let text = ep.to_string();
            let back: Endpoint = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(&back, &ep, "{}", text);
            prop_assert_eq!(back.to_string(), text);
        }

        #[test]
        fn arbitrary_text_never_panics_and_round_trips(s in "\\PC{0,40}", scheme in 0usize..6) {
            let input = format!("{}://{}", Scheme::ALL[scheme], s);
            if let Ok(ep) = input.parse::<Endpoint>() {
                let text = ep.to_string();
                prop_assert_eq!(text.parse::<Endpoint>(), Ok(ep));
            }
        }
    }
}
