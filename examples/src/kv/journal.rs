//! Batches of changes ([`Changes`]): built as a shard applies writes (the
//! store's [`Journal`]) or from what it holds ([`snapshot`]); read back,
//! checked, by a replica ([`read`], [`read_archived`]); applied to a store
//! ([`apply`]).
//!
//! A change is the state a key is left in, not the command that put it
//! there: an `INCR` is recorded as the put of the sum, a `SET` whose
//! deadline has already passed as a delete, a compare-and-set that did not
//! match as nothing. Applying a batch is therefore exact and needs no
//! knowledge of commands, and applying a change twice is harmless.
//!
//! ```
//! use ringwire_examples::kv::journal::{apply, read, Change, Journal};
//! use ringwire_examples::kv::store::Store;
//!
//! let mut journal = Journal::default();
//! journal.record(Change::Put { key: b"k", value: b"v", deadline: Some(5_000) });
//! journal.record(Change::Delete { key: b"gone" });
//! let batches = journal.take();
//! let mut replica = Store::new();
//! for batch in &batches {
//!     for change in read(batch.ops.iter().copied(), &batch.arena) {
//!         apply(&mut replica, change.unwrap(), 0);
//!     }
//! }
//! assert_eq!(replica.get(b"k", 0), Some(&b"v"[..]));
//! assert_eq!(replica.ttl(b"k", 0), Some(Some(5_000)));
//! ```

use std::fmt;

use super::messages::{ArchivedChanges, Changes, OpRec};
use super::store::Store;

/// A batch is closed once its arena reaches this many bytes (one change
/// larger than this makes a batch of its own).
pub const CHUNK_BYTES: usize = 256 * 1024;

/// One change, as recorded or as read from a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// The key now holds `value`, expiring at `deadline` (milliseconds since
    /// the Unix epoch) if any.
    Put {
        /// The key.
        key: &'a [u8],
        /// Its value.
        value: &'a [u8],
        /// Its deadline.
        deadline: Option<u64>,
    },
    /// The key is gone.
    Delete {
        /// The key.
        key: &'a [u8],
    },
    /// Every key is gone.
    Clear,
}

/// A batch that does not hold together: from a peer, so it is refused
/// whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadChanges {
    /// Change `index` has an unknown kind.
    Kind {
        /// Position in the batch.
        index: usize,
        /// The kind found.
        kind: u8,
    },
    /// Change `index`'s key or value runs past the arena.
    Arena {
        /// Position in the batch.
        index: usize,
    },
    /// Bytes are left in the arena after the last change.
    Trailing {
        /// How many.
        bytes: usize,
    },
}

impl fmt::Display for BadChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadChanges::Kind { index, kind } => {
                write!(f, "change {index} has the unknown kind {kind}")
            }
            BadChanges::Arena { index } => {
                write!(f, "change {index}'s key or value runs past the arena")
            }
            BadChanges::Trailing { bytes } => {
                write!(f, "{bytes} bytes are left after the last change")
            }
        }
    }
}

impl std::error::Error for BadChanges {}

impl Changes {
    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes the batch takes on the wire, about: its arena and its records.
    pub fn size(&self) -> usize {
        self.arena.len() + self.ops.len() * std::mem::size_of::<OpRec>()
    }

    /// Appends `change`.
    pub fn push(&mut self, change: Change<'_>) {
        // Lossless: usize is at most 64 bits wide on every target.
        let len = |b: &[u8]| b.len() as u64;
        let op = match change {
            Change::Put {
                key,
                value,
                deadline,
            } => {
                self.arena.extend_from_slice(key);
                self.arena.extend_from_slice(value);
                OpRec {
                    kind: if deadline.is_some() {
                        OpRec::PUT_EXPIRING
                    } else {
                        OpRec::PUT
                    },
                    key_len: len(key),
                    value_len: len(value),
                    deadline: deadline.unwrap_or(0),
                }
            }
            Change::Delete { key } => {
                self.arena.extend_from_slice(key);
                OpRec {
                    kind: OpRec::DELETE,
                    key_len: len(key),
                    value_len: 0,
                    deadline: 0,
                }
            }
            Change::Clear => OpRec {
                kind: OpRec::CLEAR,
                key_len: 0,
                value_len: 0,
                deadline: 0,
            },
        };
        self.ops.push(op);
    }
}

/// Reads the changes of a batch from its records and arena, checking each
/// against the arena: an error ends the batch (check the whole batch before
/// applying any of it, see [`check`]).
pub fn read<I>(ops: I, arena: &[u8]) -> Reader<'_, I::IntoIter>
where
    I: IntoIterator<Item = OpRec>,
{
    Reader {
        ops: ops.into_iter(),
        arena,
        at: 0,
        index: 0,
        failed: false,
    }
}

/// [`read`] over an archived batch, as received.
pub fn read_archived(
    changes: &ArchivedChanges,
) -> Reader<'_, impl Iterator<Item = OpRec> + Clone + '_> {
    let ops = changes.ops.iter().map(|o| OpRec {
        kind: o.kind,
        key_len: o.key_len.to_native(),
        value_len: o.value_len.to_native(),
        deadline: o.deadline.to_native(),
    });
    read(ops, changes.arena.as_slice())
}

/// Checks a whole batch: every change well formed and the arena used
/// exactly. Returns the number of changes.
pub fn check<I: Iterator<Item = OpRec>>(reader: Reader<'_, I>) -> Result<usize, BadChanges> {
    let mut reader = reader;
    let mut n = 0;
    for change in reader.by_ref() {
        change?;
        n += 1;
    }
    let left = reader.arena.len() - reader.at.min(reader.arena.len());
    if left > 0 {
        return Err(BadChanges::Trailing { bytes: left });
    }
    Ok(n)
}

/// The changes of a batch; see [`read`].
#[derive(Clone, Debug)]
pub struct Reader<'a, I> {
    ops: I,
    arena: &'a [u8],
    at: usize,
    index: usize,
    failed: bool,
}

impl<'a, I: Iterator<Item = OpRec>> Iterator for Reader<'a, I> {
    type Item = Result<Change<'a>, BadChanges>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let op = self.ops.next()?;
        let index = self.index;
        self.index += 1;
        let mut take = |len: u64| -> Option<&'a [u8]> {
            let end = self.at.checked_add(usize::try_from(len).ok()?)?;
            let bytes = self.arena.get(self.at..end)?;
            self.at = end;
            Some(bytes)
        };
        let change = match op.kind {
            OpRec::PUT | OpRec::PUT_EXPIRING => {
                take(op.key_len)
                    .zip(take(op.value_len))
                    .map(|(key, value)| Change::Put {
                        key,
                        value,
                        deadline: (op.kind == OpRec::PUT_EXPIRING).then_some(op.deadline),
                    })
            }
            OpRec::DELETE => take(op.key_len).map(|key| Change::Delete { key }),
            OpRec::CLEAR => Some(Change::Clear),
            kind => {
                self.failed = true;
                return Some(Err(BadChanges::Kind { index, kind }));
            }
        };
        match change {
            Some(c) => Some(Ok(c)),
            None => {
                self.failed = true;
                Some(Err(BadChanges::Arena { index }))
            }
        }
    }
}

/// Applies one change to `store` at time `now` (a put whose deadline has
/// passed deletes the key).
pub fn apply(store: &mut Store, change: Change<'_>, now: u64) {
    match change {
        Change::Put {
            key,
            value,
            deadline,
        } => store.put(key, value, deadline, now),
        Change::Delete { key } => {
            store.delete(key, now);
        }
        Change::Clear => store.clear(),
    }
}

/// What a store recorded since the last [`Journal::take`]: batches of
/// changes of about [`CHUNK_BYTES`] each.
#[derive(Debug, Default)]
pub struct Journal {
    done: Vec<Changes>,
    current: Changes,
    changes: usize,
}

impl Journal {
    /// Records `change`.
    pub fn record(&mut self, change: Change<'_>) {
        self.current.push(change);
        self.changes += 1;
        if self.current.arena.len() >= CHUNK_BYTES {
            self.done.push(std::mem::take(&mut self.current));
        }
    }

    /// Changes recorded and not taken.
    pub fn len(&self) -> usize {
        self.changes
    }

    /// Whether nothing was recorded since the last take.
    pub fn is_empty(&self) -> bool {
        self.changes == 0
    }

    /// Every change recorded since the last take, in order, in batches.
    pub fn take(&mut self) -> Vec<Changes> {
        let mut out = std::mem::take(&mut self.done);
        if !self.current.is_empty() {
            out.push(std::mem::take(&mut self.current));
        }
        self.changes = 0;
        out
    }
}

/// Every live key of `store` at time `now` as puts, in batches of about
/// [`CHUNK_BYTES`].
pub fn snapshot(store: &Store, now: u64) -> Vec<Changes> {
    let mut journal = Journal::default();
    for (key, value, deadline) in store.iter_live(now) {
        journal.record(Change::Put {
            key,
            value,
            deadline,
        });
    }
    journal.take()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(batch: &Changes) -> Result<Vec<Change<'_>>, BadChanges> {
        read(batch.ops.iter().copied(), &batch.arena).collect()
    }

    #[test]
    fn changes_round_trip() {
        let mut b = Changes::default();
        let list = [
            Change::Put {
                key: b"a",
                value: b"1",
                deadline: None,
            },
            Change::Put {
                key: b"",
                value: b"",
                deadline: Some(7),
            },
            Change::Delete { key: b"b" },
            Change::Clear,
            Change::Put {
                key: b"long key",
                value: &[9; 1000],
                deadline: Some(u64::MAX),
            },
        ];
        for c in list {
            b.push(c);
        }
        assert_eq!(b.len(), 5);
        assert_eq!(changes(&b).unwrap(), list);
        assert_eq!(check(read(b.ops.iter().copied(), &b.arena)), Ok(5));
    }

    #[test]
    fn archived_batches_read_the_same() {
        use ringwire::proto::rkyv;
        let mut b = Changes::default();
        b.push(Change::Put {
            key: b"k",
            value: b"v",
            deadline: Some(3),
        });
        b.push(Change::Delete { key: b"d" });
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&b).unwrap();
        let archived = rkyv::access::<ArchivedChanges, rkyv::rancor::Error>(&bytes).unwrap();
        let got: Vec<Change<'_>> = read_archived(archived).map(Result::unwrap).collect();
        assert_eq!(got, changes(&b).unwrap());
    }

    #[test]
    fn bad_batches_are_refused() {
        let rec = |kind, key_len, value_len| OpRec {
            kind,
            key_len,
            value_len,
            deadline: 0,
        };
        // Unknown kind.
        let r: Vec<_> = read([rec(0, 0, 0), rec(OpRec::CLEAR, 0, 0)], b"").collect();
        assert_eq!(r, vec![Err(BadChanges::Kind { index: 0, kind: 0 })]);
        // Key past the end; value past the end; a length near usize::MAX.
        for ops in [
            [rec(OpRec::DELETE, 4, 0)],
            [rec(OpRec::PUT, 1, 3)],
            [rec(OpRec::PUT_EXPIRING, u64::MAX, u64::MAX)],
        ] {
            let r: Vec<_> = read(ops, b"abc").collect();
            assert_eq!(r, vec![Err(BadChanges::Arena { index: 0 })], "{ops:?}");
        }
        // Bytes left over.
        assert_eq!(
            check(read([rec(OpRec::DELETE, 1, 0)], b"ab")),
            Err(BadChanges::Trailing { bytes: 1 })
        );
        assert!(check(read([rec(OpRec::DELETE, 2, 0)], b"ab")).is_ok());
        // Random records against a random arena never panic, and a batch
        // that checks reads back whole.
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let n = (next() % 6) as usize;
            let ops: Vec<OpRec> = (0..n)
                .map(|_| rec((next() % 6) as u8, next() % 9, next() % 9))
                .collect();
            let arena = vec![0u8; (next() % 40) as usize];
            if let Ok(count) = check(read(ops.iter().copied(), &arena)) {
                assert_eq!(count, n);
                assert!(read(ops.iter().copied(), &arena).all(|c| c.is_ok()));
            }
        }
    }

    #[test]
    fn journals_cut_batches() {
        let mut j = Journal::default();
        let value = vec![1u8; CHUNK_BYTES / 2];
        for i in 0..5u8 {
            j.record(Change::Put {
                key: &[i],
                value: &value,
                deadline: None,
            });
        }
        assert_eq!(j.len(), 5);
        let batches = j.take();
        assert!(j.is_empty());
        assert_eq!(
            batches.iter().map(Changes::len).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        assert!(j.take().is_empty());
    }

    #[test]
    fn snapshots_and_apply_copy_a_store() {
        let mut primary = Store::new();
        for i in 0..1000u32 {
            let key = format!("k{i}");
            let deadline = (i % 3 == 0).then_some(100 + u64::from(i));
            primary.put(key.as_bytes(), key.as_bytes(), deadline, 0);
        }
        // Expired at 600: k0, k3, ... k498.
        let batches = snapshot(&primary, 600);
        let mut replica = Store::new();
        replica.put(b"stale", b"x".to_vec(), None, 0);
        apply(&mut replica, Change::Clear, 600);
        for b in &batches {
            for c in changes(b).unwrap() {
                apply(&mut replica, c, 600);
            }
        }
        let mut live = 0;
        for i in 0..1000u32 {
            let key = format!("k{i}");
            let expected = primary.get(key.as_bytes(), 600).map(<[u8]>::to_vec);
            assert_eq!(
                replica.get(key.as_bytes(), 600).map(<[u8]>::to_vec),
                expected
            );
            assert_eq!(
                replica.ttl(key.as_bytes(), 600),
                primary.ttl(key.as_bytes(), 600)
            );
            live += usize::from(expected.is_some());
        }
        assert_eq!(replica.len(), live);
        assert_eq!(replica.get(b"stale", 600), None);
    }
}
