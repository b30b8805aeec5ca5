//! Payloads of the small control frames: close and close-ack.
//!
//! Ack and heartbeat frames carry no payload (an ack's position is the
//! header's `seq` field); hello has its own module.

pub use crate::close_reason::CloseReason;
use crate::error::ProtoError;

/// Length of a close payload.
pub const CLOSE_LEN: usize = 16;

/// Length of a close-ack payload.
pub const CLOSE_ACK_LEN: usize = 8;

/// Encodes a close payload: reason code, then the last sequence number sent.
pub fn close_payload(reason: CloseReason, last_seq: u64) -> [u8; CLOSE_LEN] {
    let mut out = [0u8; CLOSE_LEN];
    out[..4].copy_from_slice(&reason.code().to_le_bytes());
    out[8..].copy_from_slice(&last_seq.to_le_bytes());
    out
}

/// Parses a close payload.
pub fn parse_close(payload: &[u8]) -> Result<(CloseReason, u64), ProtoError> {
    let bytes: &[u8; CLOSE_LEN] = payload.try_into().map_err(|_| ProtoError::Malformed {
        what: "close",
        detail: "wrong length",
    })?;
    let code = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[8..]);
    Ok((CloseReason::from_code(code), u64::from_le_bytes(seq)))
}

/// Parses a close-ack payload (the last sequence number received).
pub fn parse_close_ack(payload: &[u8]) -> Result<u64, ProtoError> {
    let bytes: [u8; CLOSE_ACK_LEN] = payload.try_into().map_err(|_| ProtoError::Malformed {
        what: "close-ack",
        detail: "wrong length",
    })?;
    Ok(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_round_trips() {
        let bytes = close_payload(CloseReason::Other(77), 12345);
        assert_eq!(
            parse_close(&bytes).unwrap(),
            (CloseReason::Other(77), 12345)
        );
        assert!(parse_close(&bytes[..15]).is_err());
        assert_eq!(parse_close_ack(&9u64.to_le_bytes()).unwrap(), 9);
    }
}
