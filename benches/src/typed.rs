//! The typed request/reply benchmark's shared pieces: the message types every
//! stack carries, their verifiable payloads, and the endpoints the servers
//! and clients take.
//!
//! One definition of [`Req`] and [`Resp`] serves all three stacks of
//! `benches/typed.sh`: ringwire's typed transports (as [`Message`]s), tokio
//! with `LengthDelimitedCodec` (rkyv or bincode) and ZeroMQ (rkyv). A request
//! names the size of the reply it wants, so servers need no size setting; the
//! reply's payload is derived from the request id ([`PayloadGen`]), so a
//! client that checks every reply catches a wrong, reordered, duplicated or
//! corrupted one.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use ringwire_transports::{type_id, Message};
use rkyv::rancor;

/// Largest request or reply payload the benchmark uses (512 KiB); a request
/// asking for a larger reply is refused by every server.
pub const MAX_LEN: usize = 512 * 1024;

/// Largest frame a codec-based peer accepts: [`MAX_LEN`] plus room for the
/// fields and the archive's layout.
pub const MAX_FRAME: usize = MAX_LEN + 1024;

/// A request: its id (unique per client), when it was sent (nanoseconds on
/// the sender's clock; used for one-way latency within one process), how
/// many payload bytes the reply must carry, and a payload.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[rkyv(crate = rkyv)]
pub struct Req {
    /// Request id; the reply carries it back.
    pub id: u64,
    /// Send time in nanoseconds since the sender's epoch ([`now_ns`]).
    pub sent_ns: u64,
    /// Payload bytes the reply must carry.
    pub reply_len: u32,
    /// The request's payload ([`PayloadGen::request`]).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Message for Req {
    const TYPE_ID: u32 = type_id("ringwire.bench.Req");
    const NAME: &'static str = "ringwire.bench.Req";
}

/// A reply: the request's id and a payload ([`PayloadGen::reply`]).
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
#[rkyv(crate = rkyv)]
pub struct Resp {
    /// The id of the request answered.
    pub id: u64,
    /// The reply's payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Message for Resp {
    const TYPE_ID: u32 = type_id("ringwire.bench.Resp");
    const NAME: &'static str = "ringwire.bench.Resp";
}

/// A [`Req`] decoded by bincode without copying its payload (the same bytes
/// on the wire as `Req`).
#[derive(Debug, serde::Deserialize)]
pub struct ReqView<'a> {
    /// See [`Req::id`].
    pub id: u64,
    /// See [`Req::sent_ns`].
    pub sent_ns: u64,
    /// See [`Req::reply_len`].
    pub reply_len: u32,
    /// See [`Req::payload`].
    #[serde(borrow)]
    pub payload: &'a [u8],
}

/// A [`Resp`] decoded by bincode without copying its payload.
#[derive(Debug, serde::Deserialize)]
pub struct RespView<'a> {
    /// See [`Resp::id`].
    pub id: u64,
    /// See [`Resp::payload`].
    #[serde(borrow)]
    pub payload: &'a [u8],
}

/// The metadata of one bulk transfer: a sequence number and the length of the
/// one segment that follows it.
#[derive(Debug, Clone, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(crate = rkyv)]
pub struct BulkMeta {
    /// Sequence number of the segment on its connection.
    pub seq: u64,
    /// Its length in bytes.
    pub len: u32,
}

impl Message for BulkMeta {
    const TYPE_ID: u32 = type_id("ringwire.bench.BulkMeta");
    const NAME: &'static str = "ringwire.bench.BulkMeta";
}

/// Nanoseconds since the first call in this process (a monotonic clock
/// shared by its threads).
pub fn now_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    epoch.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64
}

/// Span of start offsets into the payload table.
const SPAN: usize = 4096;

/// Generator of verifiable payloads: the payload of a message is a slice of a
/// pseudo-random table whose start depends on the message id (and on whether
/// it is a request or a reply), so payloads of different messages differ and
/// checking one is a `memcmp`.
#[derive(Debug, Clone)]
pub struct PayloadGen {
    table: Vec<u8>,
    max_len: usize,
}

impl PayloadGen {
    /// A generator for payloads of up to `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let table = (0..SPAN + max_len)
            .map(|_| {
                // xorshift64*
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect();
        Self { table, max_len }
    }

    /// The largest payload this generator makes.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    fn slice(&self, key: u64, len: usize) -> Result<&[u8], LenError> {
        if len > self.max_len {
            return Err(LenError {
                len,
                max: self.max_len,
            });
        }
        let off = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % SPAN;
        Ok(&self.table[off..off + len])
    }

    /// The payload of request `id`, `len` bytes.
    pub fn request(&self, id: u64, len: usize) -> Result<&[u8], LenError> {
        self.slice(id, len)
    }

    /// The payload of the reply to request `id`, `len` bytes.
    pub fn reply(&self, id: u64, len: usize) -> Result<&[u8], LenError> {
        self.slice(!id, len)
    }
}

/// A payload length beyond what a [`PayloadGen`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LenError {
    /// The length asked for.
    pub len: usize,
    /// The largest one allowed.
    pub max: usize,
}

impl fmt::Display for LenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "payload of {} bytes asked for; at most {} allowed",
            self.len, self.max
        )
    }
}

impl std::error::Error for LenError {}

/// Fills `scratch` with the reply to request `id` asking for `reply_len`
/// bytes: the scratch value is reused from reply to reply, so building a
/// reply costs one copy of its payload and no allocation.
pub fn fill_reply(
    gen: &PayloadGen,
    scratch: &mut Resp,
    id: u64,
    reply_len: u32,
) -> Result<(), LenError> {
    let payload = gen.reply(id, reply_len as usize)?;
    scratch.id = id;
    scratch.payload.clear();
    scratch.payload.extend_from_slice(payload);
    Ok(())
}

/// Fills `scratch` with request `id`: `len` payload bytes, asking for a
/// `reply_len`-byte reply, stamped with [`now_ns`].
pub fn fill_request(
    gen: &PayloadGen,
    scratch: &mut Req,
    id: u64,
    len: usize,
    reply_len: u32,
) -> Result<(), LenError> {
    let payload = gen.request(id, len)?;
    scratch.id = id;
    scratch.sent_ns = now_ns();
    scratch.reply_len = reply_len;
    scratch.payload.clear();
    scratch.payload.extend_from_slice(payload);
    Ok(())
}

/// The id of the `seq`-th request of connection `conn`: unique within one
/// client run.
pub fn request_id(conn: u32, seq: u64) -> u64 {
    (u64::from(conn) << 40) | (seq & ((1 << 40) - 1))
}

/// Checks a reply: its id must be `expect_id` and its payload the one
/// [`PayloadGen::reply`] makes for it.
pub fn check_reply(
    gen: &PayloadGen,
    expect_id: u64,
    reply_len: usize,
    got_id: u64,
    payload: &[u8],
) -> Result<(), String> {
    if got_id != expect_id {
        return Err(format!(
            "reply carries id {got_id:#x}, expected {expect_id:#x} (reordered, duplicated or misrouted)"
        ));
    }
    let expect = gen.reply(expect_id, reply_len).map_err(|e| e.to_string())?;
    if payload != expect {
        let at = payload
            .iter()
            .zip(expect)
            .position(|(a, b)| a != b)
            .unwrap_or(payload.len().min(expect.len()));
        return Err(format!(
            "reply {expect_id:#x}: payload of {} bytes differs from the expected {} bytes at byte {at}",
            payload.len(),
            expect.len()
        ));
    }
    Ok(())
}

/// Serialization used by the tokio and ZeroMQ peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// rkyv: `to_bytes` on the way out, `access` (validated) on the way in.
    Rkyv,
    /// bincode 1 with serde (payloads as byte strings), borrowed on decode.
    Bincode,
}

impl Codec {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Rkyv => "rkyv",
            Codec::Bincode => "bincode",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Codec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rkyv" => Ok(Codec::Rkyv),
            "bincode" => Ok(Codec::Bincode),
            _ => Err("expected `rkyv` or `bincode`".to_owned()),
        }
    }
}

/// Scratch space for decoding rkyv archives that arrive at an address not
/// aligned for the archived type (a frame inside a codec's read buffer): the
/// bytes are copied into an aligned buffer first, as rkyv requires.
#[derive(Default)]
pub struct AlignScratch {
    buf: rkyv::util::AlignedVec<16>,
    /// How many archives had to be copied.
    pub copies: u64,
}

impl AlignScratch {
    /// `bytes` itself if it starts at a multiple of `align`, else a copy in
    /// aligned memory.
    pub fn aligned<'a>(&'a mut self, bytes: &'a [u8], align: usize) -> &'a [u8] {
        if (bytes.as_ptr() as usize) % align == 0 {
            bytes
        } else {
            self.copies += 1;
            self.buf.clear();
            self.buf.extend_from_slice(bytes);
            &self.buf
        }
    }
}

/// Validates `bytes` as an archived `T` (rkyv `access` with bytecheck),
/// copying them into `scratch` first if they are misaligned.
pub fn access_rkyv<'a, T>(
    scratch: &'a mut AlignScratch,
    bytes: &'a [u8],
) -> Result<&'a T::Archived, String>
where
    T: rkyv::Archive,
    T::Archived: rkyv::Portable
        + for<'v> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'v, rancor::Error>>,
{
    let bytes = scratch.aligned(bytes, std::mem::align_of::<T::Archived>());
    rkyv::access::<T::Archived, rancor::Error>(bytes).map_err(|e| format!("invalid archive: {e}"))
}

/// Serializes `value` with rkyv into a fresh `Vec` (the way a tokio user
/// hands bytes to a codec).
pub fn to_rkyv_vec<T>(value: &T, capacity: usize) -> Result<Vec<u8>, String>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            Vec<u8>,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >,
{
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, Vec::with_capacity(capacity))
        .map_err(|e| format!("cannot serialize: {e}"))
}

/// The server side of the codec-based peers (tokio, ZeroMQ): turns a
/// request frame into a reply frame, building the reply in a reused [`Resp`].
pub struct Answerer {
    gen: std::rc::Rc<PayloadGen>,
    codec: Codec,
    scratch: Resp,
    align: AlignScratch,
}

impl Answerer {
    /// An answerer for `codec`, with payloads from `gen`.
    pub fn new(gen: std::rc::Rc<PayloadGen>, codec: Codec) -> Self {
        Answerer {
            gen,
            codec,
            scratch: Resp::default(),
            align: AlignScratch::default(),
        }
    }

    /// Decodes (and validates) request `frame` and serializes its reply.
    pub fn answer(&mut self, frame: &[u8]) -> Result<Vec<u8>, String> {
        let (id, reply_len) = match self.codec {
            Codec::Rkyv => {
                let req = access_rkyv::<Req>(&mut self.align, frame)?;
                (req.id.to_native(), req.reply_len.to_native())
            }
            Codec::Bincode => {
                let req: ReqView<'_> =
                    bincode::deserialize(frame).map_err(|e| format!("invalid request: {e}"))?;
                (req.id, req.reply_len)
            }
        };
        fill_reply(&self.gen, &mut self.scratch, id, reply_len).map_err(|e| e.to_string())?;
        encode(self.codec, &self.scratch, reply_len as usize + 64)
    }
}

/// Serializes a [`Req`] or [`Resp`] with `codec` into a fresh `Vec`.
pub fn encode<T>(codec: Codec, value: &T, capacity: usize) -> Result<Vec<u8>, String>
where
    T: serde::Serialize
        + for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                Vec<u8>,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rancor::Error,
            >,
        >,
{
    match codec {
        Codec::Rkyv => to_rkyv_vec(value, capacity),
        Codec::Bincode => {
            let mut out = Vec::with_capacity(capacity);
            bincode::serialize_into(&mut out, value)
                .map_err(|e| format!("cannot serialize: {e}"))?;
            Ok(out)
        }
    }
}

/// The client side of the codec-based peers: builds request frames (in a
/// reused [`Req`]) and checks reply frames.
pub struct Asker {
    gen: std::rc::Rc<PayloadGen>,
    codec: Codec,
    size: usize,
    reply_size: usize,
    scratch: Req,
    align: AlignScratch,
}

impl Asker {
    /// Requests of `size` payload bytes asking for `reply_size`-byte replies.
    pub fn new(gen: std::rc::Rc<PayloadGen>, codec: Codec, size: usize, reply_size: usize) -> Self {
        Asker {
            gen,
            codec,
            size,
            reply_size,
            scratch: Req::default(),
            align: AlignScratch::default(),
        }
    }

    /// The serialized request `id`.
    pub fn request(&mut self, id: u64) -> Result<Vec<u8>, String> {
        fill_request(
            &self.gen,
            &mut self.scratch,
            id,
            self.size,
            self.reply_size as u32,
        )
        .map_err(|e| e.to_string())?;
        encode(self.codec, &self.scratch, self.size + 64)
    }

    /// Decodes (and validates) reply `frame`, returning its id.
    pub fn reply_id(&mut self, frame: &[u8]) -> Result<u64, String> {
        match self.codec {
            Codec::Rkyv => Ok(access_rkyv::<Resp>(&mut self.align, frame)?.id.to_native()),
            Codec::Bincode => {
                let resp: RespView<'_> =
                    bincode::deserialize(frame).map_err(|e| format!("invalid reply: {e}"))?;
                Ok(resp.id)
            }
        }
    }

    /// Checks reply `frame`: it must answer request `expect_id` with the
    /// expected payload.
    pub fn check(&mut self, frame: &[u8], expect_id: u64) -> Result<(), String> {
        match self.codec {
            Codec::Rkyv => {
                let resp = access_rkyv::<Resp>(&mut self.align, frame)?;
                check_reply(
                    &self.gen,
                    expect_id,
                    self.reply_size,
                    resp.id.to_native(),
                    resp.payload.as_slice(),
                )
            }
            Codec::Bincode => {
                let resp: RespView<'_> =
                    bincode::deserialize(frame).map_err(|e| format!("invalid reply: {e}"))?;
                check_reply(&self.gen, expect_id, self.reply_size, resp.id, resp.payload)
            }
        }
    }
}

/// Where a typed server listens or a client connects: `tcp://HOST:PORT` or
/// `tls://HOST:PORT` (loopback only), or `unix:///absolute/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A TCP address on this machine.
    Tcp(SocketAddr),
    /// A Unix stream socket path.
    Unix(PathBuf),
    /// TLS over TCP on this machine.
    Tls(SocketAddr),
}

impl Target {
    /// Parses an endpoint, refusing TCP addresses that are not loopback.
    pub fn parse(s: &str) -> Result<Target, String> {
        if let Some(addr) = s.strip_prefix("tls://") {
            return match Target::parse(&format!("tcp://{addr}"))? {
                Target::Tcp(a) => Ok(Target::Tls(a)),
                other => Ok(other),
            };
        }
        if let Some(addr) = s.strip_prefix("tcp://") {
            let addrs: Vec<SocketAddr> = addr
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve `{s}`: {e}"))?
                .collect();
            let first = *addrs
                .first()
                .ok_or_else(|| format!("`{s}` resolves to nothing"))?;
            if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
                return Err(format!(
                    "refusing `{s}`: {} is not a loopback address; the benchmark stays on this machine",
                    bad.ip()
                ));
            }
            Ok(Target::Tcp(first))
        } else if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "`{s}`: a unix endpoint needs an absolute path (unix:///tmp/x)"
                ));
            }
            Ok(Target::Unix(PathBuf::from(path)))
        } else {
            Err(format!(
                "`{s}`: expected tcp://127.0.0.1:PORT, tls://127.0.0.1:PORT or unix:///absolute/path"
            ))
        }
    }

    /// `tcp`, `unix` or `tls`.
    pub fn transport(&self) -> &'static str {
        match self {
            Target::Tcp(_) => "tcp",
            Target::Unix(_) => "unix",
            Target::Tls(_) => "tls",
        }
    }

    /// The same place in ZeroMQ's syntax (`tcp://...`, `ipc://...`); ZeroMQ
    /// has no TLS.
    pub fn zmq_endpoint(&self) -> Result<String, String> {
        match self {
            Target::Tcp(addr) => Ok(format!("tcp://{addr}")),
            Target::Unix(path) => Ok(format!("ipc://{}", path.display())),
            Target::Tls(_) => Err("the ZeroMQ peer has no TLS".into()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp(addr) => write!(f, "tcp://{addr}"),
            Target::Unix(path) => write!(f, "unix://{}", path.display()),
            Target::Tls(addr) => write!(f, "tls://{addr}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_differ_per_message_and_direction() {
        let gen = PayloadGen::new(2048);
        let a = gen.request(1, 1024).unwrap();
        let b = gen.request(2, 1024).unwrap();
        let r = gen.reply(1, 1024).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, r);
        assert_eq!(a, gen.request(1, 1024).unwrap());
        assert!(gen.request(1, 2049).is_err());
    }

    #[test]
    fn replies_are_checked() {
        let gen = PayloadGen::new(1024);
        let mut scratch = Resp::default();
        fill_reply(&gen, &mut scratch, 7, 100).unwrap();
        check_reply(&gen, 7, 100, scratch.id, &scratch.payload).unwrap();
        assert!(check_reply(&gen, 8, 100, scratch.id, &scratch.payload).is_err());
        scratch.payload[50] ^= 1;
        let err = check_reply(&gen, 7, 100, scratch.id, &scratch.payload).unwrap_err();
        assert!(err.contains("at byte 50"), "{err}");
        scratch.payload.pop();
        assert!(check_reply(&gen, 7, 100, scratch.id, &scratch.payload).is_err());
        assert!(fill_reply(&gen, &mut scratch, 7, 1025).is_err());
    }

    #[test]
    fn rkyv_and_bincode_round_trips() {
        let gen = PayloadGen::new(1024);
        let mut req = Req::default();
        fill_request(&gen, &mut req, request_id(3, 9), 1000, 64).unwrap();
        let bytes = to_rkyv_vec(&req, 1100).unwrap();
        // Misaligned on purpose: the scratch copy must make it readable.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        let mut scratch = AlignScratch::default();
        let archived = access_rkyv::<Req>(&mut scratch, &shifted[1..]).unwrap();
        assert_eq!(archived.id.to_native(), req.id);
        assert_eq!(archived.reply_len.to_native(), 64);
        assert_eq!(archived.payload.as_slice(), &req.payload[..]);
        assert!(access_rkyv::<Req>(&mut scratch, &bytes[..bytes.len() / 2]).is_err());

        let bin = bincode::serialize(&req).unwrap();
        let view: ReqView<'_> = bincode::deserialize(&bin).unwrap();
        assert_eq!((view.id, view.reply_len), (req.id, 64));
        assert_eq!(view.payload, &req.payload[..]);
        let mut resp = Resp::default();
        fill_reply(&gen, &mut resp, req.id, 64).unwrap();
        let bin = bincode::serialize(&resp).unwrap();
        let view: RespView<'_> = bincode::deserialize(&bin).unwrap();
        check_reply(&gen, req.id, 64, view.id, view.payload).unwrap();
    }

    #[test]
    fn answerer_and_asker_agree() {
        for codec in [Codec::Rkyv, Codec::Bincode] {
            let gen = std::rc::Rc::new(PayloadGen::new(4096));
            let mut asker = Asker::new(gen.clone(), codec, 1000, 3000);
            let mut answerer = Answerer::new(gen, codec);
            let req = asker.request(42).unwrap();
            let mut reply = answerer.answer(&req).unwrap();
            assert_eq!(asker.reply_id(&reply).unwrap(), 42);
            asker.check(&reply, 42).unwrap();
            assert!(asker.check(&reply, 43).is_err());
            let last = reply.len() - 1;
            reply[last] ^= 0xff;
            assert!(asker.check(&reply, 42).is_err(), "{codec}");
            assert!(answerer.answer(&req[..req.len() / 2]).is_err(), "{codec}");
        }
    }

    #[test]
    fn request_ids_are_unique_per_connection() {
        assert_ne!(request_id(1, 0), request_id(0, 1));
        assert_ne!(request_id(1, 5), request_id(2, 5));
    }

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("tcp://127.0.0.1:7000").unwrap(),
            Target::Tcp("127.0.0.1:7000".parse().unwrap())
        );
        let unix = Target::parse("unix:///tmp/x.sock").unwrap();
        assert_eq!(unix.zmq_endpoint().unwrap(), "ipc:///tmp/x.sock");
        assert_eq!(unix.to_string(), "unix:///tmp/x.sock");
        assert!(Target::parse("tcp://192.0.2.1:7000").is_err());
        assert!(Target::parse("unix://relative").is_err());
        assert!(Target::parse("udp://127.0.0.1:1").is_err());
        assert_eq!(
            Target::parse("tls://127.0.0.1:7000").unwrap(),
            Target::Tls("127.0.0.1:7000".parse().unwrap())
        );
        assert!(Target::parse("tls://192.0.2.1:7000").is_err());
        let tls = Target::parse("tls://127.0.0.1:7000").unwrap();
        assert!(tls.zmq_endpoint().is_err());
        assert_eq!(tls.to_string(), "tls://127.0.0.1:7000");
    }
}
