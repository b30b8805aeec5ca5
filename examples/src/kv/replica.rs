//! A replica's view of its primary's stream: where it stands in each
//! primary shard, and whether the next message fits there. Pure logic: the
//! node feeds it every replication message before applying it, and a
//! message it refuses ends the connection (the next one starts with a full
//! resync).
//!
//! The stream of one session, in order (see `kv::messages`):
//!
//! ```text
//! ReplBegin { epoch, shards }                  drop everything
//! per primary shard s, in any interleaving of shards:
//!   ReplSnapshot { s } ...                     the shard's keys
//!   ReplSnapshotDone { s, seq }                the snapshot holds writes up to seq
//!   ReplOps { s, first_seq: seq + 1 } ...      then every write, numbered on
//! ```
//!
//! How the stream survives failures (kv-node's replication):
//!
//! - **Numbering.** A primary numbers each shard's writes 1, 2, ... from
//!   the start of its process, under an epoch drawn at start. A change is
//!   the state a write left its key in (`kv::journal`), so applying one is
//!   exact whatever command made it.
//! - **Link cut, both processes alive.** The replica's connection has a
//!   reconnect policy and the primary's listener a resume window: the
//!   transport resumes the session and resends exactly what the replica
//!   lacks, so the stream goes on at the next number, exactly once, and no
//!   resync happens.
//! - **Primary restarted** (or the cut outlived the resume window). The
//!   transport reports `ConnEvent::SessionReset`; the replica sends a new
//!   `ReplHello`, and the primary answers with a full resync: `ReplBegin`
//!   (the replica drops every key), each shard's snapshot, taken on the
//!   owning core in the same step as the changes numbered up to the
//!   `ReplSnapshotDone`'s sequence number, then the stream from the next
//!   number. The replica then holds what the new primary holds, nothing
//!   older.
//! - **Replica restarted.** Its session died with it: it connects afresh
//!   and takes a full resync. (Catching up from its last applied number
//!   would need the primary to keep a backlog of writes; it keeps none.)
//! - **A message that does not fit** (a gap, a replay, a batch that does
//!   not hold together): the replica ends the connection, and the next one
//!   starts with a full resync. Each message is checked whole before any of
//!   it is applied.
//!
//! ```
//! use ringwire_examples::kv::replica::{ReplicaState, StreamError};
//!
//! let mut r = ReplicaState::default();
//! r.begin(7, 2).unwrap();
//! r.snapshot(0).unwrap();
//! r.snapshot_done(0, 10).unwrap();
//! r.ops(0, 11, 5).unwrap();
//! assert_eq!(r.ops(0, 17, 1), Err(StreamError::Gap { shard: 0, expected: 16, found: 17 }));
//! ```

use std::fmt;

/// Most shards a primary may announce (a bound on the replica's memory for
/// a hostile or broken primary).
pub const MAX_SHARDS: u32 = 4096;

/// A message that does not fit where the stream stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// A snapshot or writes before the session's `ReplBegin`.
    NotBegun,
    /// A `ReplBegin` announcing no shard, or more than [`MAX_SHARDS`].
    Shards(u32),
    /// A shard number outside the announced range.
    NoSuchShard {
        /// The shard named.
        shard: u32,
        /// Shards announced.
        shards: u32,
    },
    /// Snapshot data after the shard's snapshot was complete.
    SnapshotAfterDone {
        /// The shard.
        shard: u32,
    },
    /// Writes before the shard's snapshot was complete.
    OpsBeforeSnapshot {
        /// The shard.
        shard: u32,
    },
    /// Writes that do not continue the shard's sequence.
    Gap {
        /// The shard.
        shard: u32,
        /// The sequence number due.
        expected: u64,
        /// The one that came.
        found: u64,
    },
    /// Writes numbered past `u64::MAX`.
    SequenceOverflow {
        /// The shard.
        shard: u32,
    },
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::NotBegun => write!(f, "replication data before the resync began"),
            StreamError::Shards(n) => {
                write!(f, "the primary announced {n} shards (1 to {MAX_SHARDS})")
            }
            StreamError::NoSuchShard { shard, shards } => {
                write!(f, "shard {shard} of a primary with {shards} shards")
            }
            StreamError::SnapshotAfterDone { shard } => {
                write!(
                    f,
                    "snapshot data for shard {shard} after its snapshot was done"
                )
            }
            StreamError::OpsBeforeSnapshot { shard } => {
                write!(f, "writes for shard {shard} before its snapshot was done")
            }
            StreamError::Gap {
                shard,
                expected,
                found,
            } => write!(
                f,
                "shard {shard}'s writes jump from sequence {expected} to {found}"
            ),
            StreamError::SequenceOverflow { shard } => {
                write!(f, "shard {shard}'s sequence numbers overflow")
            }
        }
    }
}

impl std::error::Error for StreamError {}

/// Where a replica stands in its primary's stream; see the [module
/// docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaState {
    epoch: Option<u64>,
    /// Per primary shard: the last sequence number applied, once its
    /// snapshot is done.
    applied: Vec<Option<u64>>,
    full_syncs: u64,
}

impl ReplicaState {
    /// A full resync from the primary of epoch `epoch` with `shards` shards
    /// begins: every position is forgotten.
    pub fn begin(&mut self, epoch: u64, shards: u32) -> Result<(), StreamError> {
        if shards == 0 || shards > MAX_SHARDS {
            return Err(StreamError::Shards(shards));
        }
        self.epoch = Some(epoch);
        self.applied = vec![None; shards as usize];
        self.full_syncs += 1;
        Ok(())
    }

    fn slot(&mut self, shard: u32) -> Result<&mut Option<u64>, StreamError> {
        if self.epoch.is_none() {
            return Err(StreamError::NotBegun);
        }
        let shards = self.applied.len() as u32;
        self.applied
            .get_mut(shard as usize)
            .ok_or(StreamError::NoSuchShard { shard, shards })
    }

    /// Snapshot data for `shard` arrived.
    pub fn snapshot(&mut self, shard: u32) -> Result<(), StreamError> {
        match self.slot(shard)? {
            None => Ok(()),
            Some(_) => Err(StreamError::SnapshotAfterDone { shard }),
        }
    }

    /// `shard`'s snapshot is complete up to sequence `seq`.
    pub fn snapshot_done(&mut self, shard: u32, seq: u64) -> Result<(), StreamError> {
        let slot = self.slot(shard)?;
        if slot.is_some() {
            return Err(StreamError::SnapshotAfterDone { shard });
        }
        *slot = Some(seq);
        Ok(())
    }

    /// `count` writes of `shard` numbered from `first_seq` arrived; they
    /// must continue the shard's sequence.
    pub fn ops(&mut self, shard: u32, first_seq: u64, count: u64) -> Result<(), StreamError> {
        let slot = self.slot(shard)?;
        let Some(last) = *slot else {
            return Err(StreamError::OpsBeforeSnapshot { shard });
        };
        let expected = last
            .checked_add(1)
            .ok_or(StreamError::SequenceOverflow { shard })?;
        if first_seq != expected {
            return Err(StreamError::Gap {
                shard,
                expected,
                found: first_seq,
            });
        }
        *slot = Some(
            last.checked_add(count)
                .ok_or(StreamError::SequenceOverflow { shard })?,
        );
        Ok(())
    }

    /// Whether every shard's snapshot is complete (the replica holds a
    /// consistent copy, as of the primary's last write it received).
    pub fn is_synced(&self) -> bool {
        self.epoch.is_some() && self.applied.iter().all(Option::is_some)
    }

    /// The primary's epoch, once a resync began.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Per primary shard, the last sequence number applied (`None` while
    /// its snapshot is loading).
    pub fn applied(&self) -> &[Option<u64>] {
        &self.applied
    }

    /// How many full resyncs began.
    pub fn full_syncs(&self) -> u64 {
        self.full_syncs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_in_order() {
        let mut r = ReplicaState::default();
        assert!(!r.is_synced());
        assert_eq!(r.snapshot(0), Err(StreamError::NotBegun));
        assert_eq!(r.ops(0, 1, 1), Err(StreamError::NotBegun));
        r.begin(1, 2).unwrap();
        r.snapshot(1).unwrap();
        r.snapshot(0).unwrap();
        r.snapshot_done(1, 0).unwrap();
        assert!(!r.is_synced());
        assert_eq!(
            r.ops(0, 1, 1),
            Err(StreamError::OpsBeforeSnapshot { shard: 0 })
        );
        r.ops(1, 1, 3).unwrap();
        r.snapshot_done(0, 41).unwrap();
        assert!(r.is_synced());
        r.ops(0, 42, 1).unwrap();
        r.ops(1, 4, 1).unwrap();
        assert_eq!(r.applied(), &[Some(42), Some(4)]);
        assert_eq!(
            r.snapshot(0),
            Err(StreamError::SnapshotAfterDone { shard: 0 })
        );
        assert_eq!(
            r.snapshot_done(1, 9),
            Err(StreamError::SnapshotAfterDone { shard: 1 })
        );
        assert_eq!(
            r.ops(2, 1, 1),
            Err(StreamError::NoSuchShard {
                shard: 2,
                shards: 2
            })
        );
        // Replayed or skipped writes.
        assert_eq!(
            r.ops(0, 42, 1),
            Err(StreamError::Gap {
                shard: 0,
                expected: 43,
                found: 42
            })
        );
        assert_eq!(
            r.ops(0, 44, 1),
            Err(StreamError::Gap {
                shard: 0,
                expected: 43,
                found: 44
            })
        );
        // A new resync forgets every position.
        r.begin(2, 1).unwrap();
        assert_eq!(
            (r.epoch(), r.full_syncs(), r.applied()),
            (Some(2), 2, &[None][..])
        );
    }

    #[test]
    fn hostile_numbers_are_refused() {
        let mut r = ReplicaState::default();
        assert_eq!(r.begin(1, 0), Err(StreamError::Shards(0)));
        assert_eq!(r.begin(1, u32::MAX), Err(StreamError::Shards(u32::MAX)));
        r.begin(1, 1).unwrap();
        r.snapshot_done(0, u64::MAX - 1).unwrap();
        assert_eq!(
            r.ops(0, u64::MAX, 2),
            Err(StreamError::SequenceOverflow { shard: 0 })
        );
        r.ops(0, u64::MAX, 1).unwrap();
        assert_eq!(
            r.ops(0, 0, 1),
            Err(StreamError::SequenceOverflow { shard: 0 })
        );
    }
}
