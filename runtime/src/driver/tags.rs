//! The `user_data` tag space of a core's ring.
//!
//! Every SQE's `user_data` says where its completion goes:
//!
//! ```text
//! u64::MAX                 IGNORE        cancel requests; nobody waits
//! u64::MAX - 1             WAKE          the read of the core's control eventfd
//! bit 62 | token           DOORBELL_IN   a MSG_RING doorbell posted by another core
//!                                        (token 0: the core's mesh, else a channel waiter)
//! bit 61 | target core     DOORBELL_OUT  the source CQE of a MSG_RING this core sent
//!                                        (posted only on failure: SKIP_SUCCESS)
//! below 2^40               slot key      an operation in the driver's table
//! ```
//!
//! The mailboxes build doorbell SQEs with [`doorbell_in`] and
//! [`doorbell_out`]; the driver decodes every CQE with [`Tag::decode`].

/// `user_data` of completions nobody waits for (cancel requests).
pub(crate) const IGNORE: u64 = u64::MAX;
/// `user_data` of the eventfd read that wakes a parked core from other threads.
pub(crate) const WAKE: u64 = u64::MAX - 1;
/// Bit of a doorbell CQE in the target ring.
const DOORBELL_IN_BIT: u64 = 1 << 62;
/// Bit of a doorbell's source CQE in the sending ring.
const DOORBELL_OUT_BIT: u64 = 1 << 61;
/// The low bits of doorbell tags (token or core index), and the bound of slot
/// keys.
const LOW_MASK: u64 = (1 << 40) - 1;

/// Where a completion goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tag {
    /// Nobody waits for it.
    Ignore,
    /// The control eventfd fired.
    Wake,
    /// A doorbell from another core, for waiter `token` (0: the core itself).
    DoorbellIn(u64),
    /// A doorbell this core sent to core `target` failed.
    DoorbellFailed(usize),
    /// The operation in slot `key`.
    Slot(usize),
}

impl Tag {
    /// Decodes a completion's `user_data`.
    #[inline]
    pub(crate) fn decode(user_data: u64) -> Tag {
        if user_data <= LOW_MASK {
            // The common case first: an operation's slot.
            return Tag::Slot(user_data as usize);
        }
        match user_data {
            IGNORE => Tag::Ignore,
            WAKE => Tag::Wake,
            ud if ud & DOORBELL_IN_BIT != 0 => Tag::DoorbellIn(ud & LOW_MASK),
            ud if ud & DOORBELL_OUT_BIT != 0 => Tag::DoorbellFailed((ud & LOW_MASK) as usize),
            // Nothing else is ever submitted; treat it as nobody's.
            _ => Tag::Ignore,
        }
    }
}

/// `user_data` of slot `key`.
#[inline]
pub(crate) fn slot(key: usize) -> u64 {
    debug_assert!(
        (key as u64) <= LOW_MASK,
        "slot key {key} out of the tag space"
    );
    key as u64
}

/// `user_data` of a doorbell CQE posted into the target ring for `token`.
pub(crate) fn doorbell_in(token: u64) -> u64 {
    debug_assert!(token <= LOW_MASK);
    DOORBELL_IN_BIT | (token & LOW_MASK)
}

/// `user_data` of a doorbell's source CQE in the sending ring (target core).
pub(crate) fn doorbell_out(target: usize) -> u64 {
    DOORBELL_OUT_BIT | (target as u64 & LOW_MASK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tag_decodes_to_what_made_it() {
        assert_eq!(Tag::decode(IGNORE), Tag::Ignore);
        assert_eq!(Tag::decode(WAKE), Tag::Wake);
        assert_eq!(Tag::decode(doorbell_in(0)), Tag::DoorbellIn(0));
        assert_eq!(Tag::decode(doorbell_in(77)), Tag::DoorbellIn(77));
        assert_eq!(Tag::decode(doorbell_out(3)), Tag::DoorbellFailed(3));
        assert_eq!(Tag::decode(slot(0)), Tag::Slot(0));
        assert_eq!(Tag::decode(slot(123_456)), Tag::Slot(123_456));
        assert_eq!(Tag::decode(1 << 50), Tag::Ignore);
    }
}
