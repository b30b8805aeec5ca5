//! A hostile peer on a plain blocking socket: it does the ringwire handshake
//! with a proto session of its own (or a broken one on purpose), then puts
//! exactly the bytes a test wants on the wire (frames with chosen sequence
//! numbers, lengths and archives), and reads what the server does about it.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ringwire_proto::rkyv::util::AlignedVec;
use ringwire_proto::{
    encode_frame, encode_message, frame_len, FrameHeader, FrameKind, Hello, Instant, Message,
    Session, HEADER_LEN,
};

/// A client whose bytes the test controls.
pub struct RawPeer {
    /// The socket (blocking).
    pub sock: TcpStream,
    /// Next sequence number this peer's next data frame would carry.
    pub next_seq: u64,
}

/// What the server did to a hostile connection, as seen from the peer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ending {
    /// Frames received (kinds, in order; data frames included).
    pub kinds: Vec<FrameKind>,
    /// The reason code of the server's `Close`, if one came.
    pub close_reason: Option<u32>,
    /// The stream ended (EOF) or was reset.
    pub ended: bool,
}

impl RawPeer {
    /// Connects without saying anything.
    pub fn connect_silent(addr: SocketAddr) -> RawPeer {
        let sock = TcpStream::connect(addr).expect("connect to the listener");
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        RawPeer { sock, next_seq: 1 }
    }

    /// Connects and does a valid handshake with `schema`, as node `node_id`.
    pub fn connect(
        addr: SocketAddr,
        schema: &std::sync::Arc<ringwire_proto::Schema>,
        node_id: u64,
    ) -> RawPeer {
        let mut p = RawPeer::connect_silent(addr);
        let mut session: Session = Session::connect(
            ringwire_proto::Config::default().node_id(node_id),
            schema.clone(),
            Instant::ZERO,
            node_id,
        );
        let mut buf = vec![0u8; 1 << 16];
        while let Some(n) = session.poll_transmit(Instant::ZERO, &mut buf).unwrap() {
            p.sock.write_all(&buf[..n]).unwrap();
        }
        // Read until the server's hello has been handled; whatever follows
        // it (acks, heartbeats) is of no interest.
        let mut got: AlignedVec<16> = AlignedVec::new();
        while session.peer().is_none() {
            let n = p.sock.read(&mut buf).expect("the server's hello");
            assert!(n > 0, "server closed during the handshake");
            got.extend_from_slice(&buf[..n]);
            let input = session
                .handle_input(Instant::ZERO, &got)
                .expect("a valid server hello");
            let rest = got[input.consumed..].to_vec();
            got = AlignedVec::new();
            got.extend_from_slice(&rest);
        }
        p
    }

    /// Writes bytes (errors are the server's doing and are returned).
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sock.write_all(bytes)
    }

    /// The next data frame carrying `value` (kind `Message` or `Request`),
    /// with this peer's next sequence number.
    pub fn next_frame<T: Message>(&mut self, kind: FrameKind, value: &T) -> Vec<u8> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let correlation = if kind == FrameKind::Request { seq } else { 0 };
        data_frame(kind, seq, correlation, value)
    }

    /// Reads until the server ends the connection (or `limit` passes with
    /// nothing more arriving), noting the frames it sent and its close
    /// reason.
    pub fn read_ending(&mut self, limit: Duration) -> Ending {
        self.sock.set_read_timeout(Some(limit)).unwrap();
        let mut out = Ending::default();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => {
                    out.ended = true;
                    break;
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    out.ended = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let mut at = 0;
        while let Some(head) = got.get(at..at + HEADER_LEN) {
            let Ok(h) = FrameHeader::parse(head.try_into().unwrap()) else {
                break;
            };
            out.kinds.push(h.kind);
            if h.kind == FrameKind::Close {
                if let Some(r) = got.get(at + HEADER_LEN..at + HEADER_LEN + 4) {
                    out.close_reason = Some(u32::from_le_bytes(r.try_into().unwrap()));
                }
            }
            at += frame_len(h.payload_len as usize);
        }
        out
    }
}

/// A data frame of `kind` carrying `value`, with the given sequence number
/// and correlation.
pub fn data_frame<T: Message>(kind: FrameKind, seq: u64, correlation: u64, value: &T) -> Vec<u8> {
    let mut buf = vec![0u8; 1 << 16];
    let header = FrameHeader {
        seq,
        correlation,
        type_id: T::TYPE_ID,
        ..FrameHeader::new(kind)
    };
    let n = encode_message(&mut buf, header, value).unwrap();
    buf.truncate(n);
    buf
}

/// A frame of `header` with `payload` (its length written from `payload`).
pub fn frame(header: FrameHeader, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; frame_len(payload.len())];
    let n = encode_frame(&mut buf, header, payload).unwrap();
    buf.truncate(n);
    buf
}

/// Just a header, announcing `payload_len` bytes that never come.
pub fn bare_header(header: FrameHeader) -> Vec<u8> {
    let mut out = [0u8; HEADER_LEN];
    header.write(&mut out);
    out.to_vec()
}

/// The hello frame a client with `schema` sends; `tweak` edits the encoded
/// payload before it is framed (to break it on purpose).
pub fn hello_frame(
    schema: &ringwire_proto::Schema,
    node_id: u64,
    tweak: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let hello = Hello {
        protocol_version: ringwire_proto::hello::PROTOCOL_VERSION,
        resume: false,
        capabilities: ringwire_proto::capabilities::ALL,
        node_id,
        session_id: node_id,
        rx_seq: 0,
        max_payload: 1 << 20,
        format: schema.format(),
        type_ids: schema.type_ids().collect(),
    };
    let mut payload = vec![0u8; hello.encoded_len()];
    hello.write(&mut payload).unwrap();
    tweak(&mut payload);
    frame(FrameHeader::new(FrameKind::Hello), &payload)
}

/// Deterministic noise (xorshift64*), so that a failing run can be
/// repeated from its seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Resident set size of this process, in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}
