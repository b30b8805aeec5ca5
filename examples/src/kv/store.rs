//! One shard's key space: byte-string keys and values with optional
//! expiry.
//!
//! A [`Store`] belongs to one core and is driven by it alone (no locks).
//! Time comes from the caller: every operation takes `now`, in milliseconds
//! of whatever clock the node uses (the Unix epoch, if `SET ... EXAT` and
//! `PXAT` are to mean what Redis means). A key whose deadline has passed is
//! gone for every operation at once (lazy expiry); its memory is reclaimed
//! when an operation touches it or when the caller runs [`Store::sweep`],
//! which removes expired keys in deadline order, a bounded number per call.
//! Like Redis's `DBSIZE`, [`Store::len`] counts expired keys that have not
//! been reclaimed yet.
//!
//! Values are taken as `impl Into<Cow<[u8]>>`: an owned `Vec<u8>` moves
//! into the store, a borrowed slice (straight from a request buffer) is
//! copied once, into the old value's memory when it fits.
//!
//! Two families of operations:
//! - the typed ones kv-node's native protocol exposes: [`Store::get`],
//!   [`Store::put`], [`Store::compare_and_set`], [`Store::increment`],
//!   [`Store::delete`];
//! - Redis's `SET` with its options ([`Store::set`]); the other Redis
//!   commands map onto the typed operations.
//!
//! For replication, a store can record every change it makes
//! ([`Store::record_changes`], then [`Store::take_changes`]): the state
//! each write left its key in (see [`super::journal`]). Expiry is not
//! recorded: a deadline travels with the key's value, and every copy
//! expires the key by it.
//!
//! ```
//! use ringwire_examples::kv::store::{Cas, Store};
//!
//! let mut store = Store::new();
//! store.put(b"k", b"1".to_vec(), Some(1_000), 0);
//! assert_eq!(store.increment(b"k", 41, 10), Ok(42));
//! assert_eq!(
//!     store.compare_and_set(b"k", Some(b"42"), b"x".to_vec(), 20),
//!     Cas::Swapped
//! );
//! assert_eq!(store.get(b"k", 999), Some(&b"x"[..]));
//! assert_eq!(store.get(b"k", 1_000), None); // expired
//! ```

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::hash::{BuildHasher, RandomState};

use hashbrown::hash_table::{self, HashTable};

use super::journal::{Change, Journal};
use super::messages::Changes;
use super::resp::parse_i64;

/// A command that failed on a value; `Display` is Redis's reply text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The value (or the increment) is not a 64-bit signed decimal integer.
    NotInteger,
    /// The increment would leave the 64-bit signed range.
    Overflow,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreError::NotInteger => "ERR value is not an integer or out of range",
            StoreError::Overflow => "ERR increment or decrement would overflow",
        })
    }
}

impl std::error::Error for StoreError {}

/// When [`Store::set`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Condition {
    /// Always.
    #[default]
    Always,
    /// Only if the key does not exist (`NX`).
    IfAbsent,
    /// Only if the key exists (`XX`).
    IfPresent,
}

/// What [`Store::set`] does to the key's time to live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Expiry {
    /// Removes any deadline (plain `SET`).
    #[default]
    Clear,
    /// Keeps the key's deadline (`KEEPTTL`).
    Keep,
    /// Expires at this time, in the store's milliseconds (`EX`, `PX`,
    /// `EXAT`, `PXAT`, converted by the caller). A time not after `now`
    /// deletes the key.
    At(u64),
}

/// The options of Redis's `SET`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// `NX` / `XX`.
    pub condition: Condition,
    /// `EX` / `PX` / `EXAT` / `PXAT` / `KEEPTTL`.
    pub expiry: Expiry,
    /// `GET`: return the old value.
    pub get: bool,
}

/// What [`Store::set`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetOutcome {
    /// Whether the value was written (the condition held).
    pub written: bool,
    /// The value before, when [`SetOptions::get`] asked for it.
    pub old: Option<Vec<u8>>,
}

/// The result of [`Store::compare_and_set`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cas {
    /// The value was as expected and has been replaced.
    Swapped,
    /// The value was not as expected; this is what it is (`None`: absent).
    Mismatch {
        /// The current value.
        current: Option<Vec<u8>>,
    },
}

/// Keys up to this many bytes are held in their table slot.
const INLINE_KEY: usize = 22;

/// A key as the table holds it: in the slot itself when short (most keys
/// are), so that comparing it costs no memory access beyond the slot, else
/// on the heap. 24 bytes either way.
#[derive(Clone, Debug)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

impl Key {
    fn new(key: &[u8]) -> Key {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE_KEY => {
                let mut bytes = [0; INLINE_KEY];
                bytes[..key.len()].copy_from_slice(key);
                Key::Inline { len, bytes }
            }
            _ => Key::Heap(key.into()),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            // `len` is at most INLINE_KEY by construction.
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(bytes) => bytes,
        }
    }
}

#[derive(Debug)]
struct Entry {
    key: Key,
    value: Vec<u8>,
    /// Deadline in milliseconds; the key is gone once `now >= deadline`.
    deadline: Option<u64>,
}

impl Entry {
    fn expired(&self, now: u64) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }
}

/// One shard's keys. See the [module docs](self).
///
/// Each operation hashes its key once (SipHash with per-process random
/// keys, as std's `HashMap`: clients cannot choose keys that pile up in one
/// bucket) and probes the table once.
#[derive(Debug, Default)]
pub struct Store {
    table: HashTable<Entry>,
    hasher: RandomState,
    /// The keys that have a deadline, in deadline order: what
    /// [`Store::sweep`] walks. Holds exactly the table's `(deadline, key)`
    /// pairs.
    deadlines: BTreeSet<(u64, Vec<u8>)>,
    /// Changes recorded since they were last taken, while recording.
    journal: Option<Journal>,
}

/// Drops `entry`'s deadline from the index.
fn forget_deadline(deadlines: &mut BTreeSet<(u64, Vec<u8>)>, entry: &Entry) {
    if let Some(deadline) = entry.deadline {
        deadlines.remove(&(deadline, entry.key.as_slice().to_vec()));
    }
}

/// Moves `key`'s deadline in the index from `old` to `new`.
fn move_deadline(
    deadlines: &mut BTreeSet<(u64, Vec<u8>)>,
    key: &[u8],
    old: Option<u64>,
    new: Option<u64>,
) {
    if old == new {
        return;
    }
    if let Some(old) = old {
        deadlines.remove(&(old, key.to_vec()));
    }
    if let Some(new) = new {
        deadlines.insert((new, key.to_vec()));
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store::default()
    }

    /// Number of keys, including expired keys not reclaimed yet (Redis's
    /// `DBSIZE` counts the same way).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the store holds no key at all.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Number of keys that have a deadline.
    pub fn expiring(&self) -> usize {
        self.deadlines.len()
    }

    /// The earliest deadline of any key: when a sweep next has work.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The table slot for `key`, occupied or vacant, for one probe.
    fn slot(&mut self, key: &[u8]) -> hash_table::Entry<'_, Entry> {
        let hash = self.hasher.hash_one(key);
        let hasher = &self.hasher;
        self.table.entry(
            hash,
            |e| e.key.as_slice() == key,
            |e| hasher.hash_one(e.key.as_slice()),
        )
    }

    /// The live entry for `key`, reclaiming it if it has expired.
    fn live(&mut self, key: &[u8], now: u64) -> Option<&mut Entry> {
        let hash = self.hash(key);
        match self.table.find_entry(hash, |e| e.key.as_slice() == key) {
            Ok(found) if found.get().expired(now) => {
                let (entry, _) = found.remove();
                forget_deadline(&mut self.deadlines, &entry);
                None
            }
            Ok(found) => Some(found.into_mut()),
            Err(_) => None,
        }
    }

    /// Removes `key` and its deadline; returns the entry.
    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let hash = self.hash(key);
        let (entry, _) = self
            .table
            .find_entry(hash, |e| e.key.as_slice() == key)
            .ok()?
            .remove();
        forget_deadline(&mut self.deadlines, &entry);
        Some(entry)
    }

    /// The value of `key`, if it exists and has not expired.
    pub fn get(&mut self, key: &[u8], now: u64) -> Option<&[u8]> {
        self.live(key, now).map(|e| &e.value[..])
    }

    /// Whether `key` exists and has not expired.
    pub fn exists(&mut self, key: &[u8], now: u64) -> bool {
        self.live(key, now).is_some()
    }

    /// Milliseconds left before `key` expires: `None` if there is no such
    /// key, `Some(None)` if it never expires.
    pub fn ttl(&mut self, key: &[u8], now: u64) -> Option<Option<u64>> {
        self.live(key, now)
            .map(|e| e.deadline.map(|d| d.saturating_sub(now)))
    }

    /// Sets `key` to `value` with the deadline `deadline` (`None`: never
    /// expires), replacing any value and deadline it had. A deadline not
    /// after `now` deletes the key.
    pub fn put<'v>(
        &mut self,
        key: &[u8],
        value: impl Into<Cow<'v, [u8]>>,
        deadline: Option<u64>,
        now: u64,
    ) {
        let options = SetOptions {
            expiry: deadline.map_or(Expiry::Clear, Expiry::At),
            ..SetOptions::default()
        };
        self.set(key, value, options, now);
    }

    /// Redis's `SET key value [NX|XX] [GET] [EX|PX|EXAT|PXAT|KEEPTTL]`: the
    /// condition is checked against the live key, the old value returned if
    /// asked for, whether or not the write happened.
    pub fn set<'v>(
        &mut self,
        key: &[u8],
        value: impl Into<Cow<'v, [u8]>>,
        options: SetOptions,
        now: u64,
    ) -> SetOutcome {
        let hash = self.hasher.hash_one(key);
        let hasher = &self.hasher;
        let slot = self.table.entry(
            hash,
            |e| e.key.as_slice() == key,
            |e| hasher.hash_one(e.key.as_slice()),
        );
        // An expired entry counts as absent.
        let current = match &slot {
            hash_table::Entry::Occupied(o) if !o.get().expired(now) => Some(o.get()),
            _ => None,
        };
        let old = if options.get {
            current.map(|e| e.value.clone())
        } else {
            None
        };
        let exists = current.is_some();
        let current_deadline = current.and_then(|e| e.deadline);
        let allowed = match options.condition {
            Condition::Always => true,
            Condition::IfAbsent => !exists,
            Condition::IfPresent => exists,
        };
        let deadline = match options.expiry {
            Expiry::Clear => None,
            Expiry::Keep => current_deadline,
            Expiry::At(at) => Some(at),
        };
        match slot {
            hash_table::Entry::Occupied(o)
                if !allowed && o.get().expired(now)
                    || allowed && deadline.is_some_and(|d| d <= now) =>
            {
                // Not written and expired: reclaimed, as a read would. Or
                // written with a deadline already past: deleted.
                let (entry, _) = o.remove();
                forget_deadline(&mut self.deadlines, &entry);
            }
            hash_table::Entry::Occupied(mut o) if allowed => {
                let entry = o.get_mut();
                assign(&mut entry.value, value.into());
                let before = std::mem::replace(&mut entry.deadline, deadline);
                move_deadline(&mut self.deadlines, key, before, deadline);
            }
            hash_table::Entry::Vacant(v) if allowed && deadline.is_none_or(|d| d > now) => {
                v.insert(Entry {
                    key: Key::new(key),
                    value: value.into().into_owned(),
                    deadline,
                });
                if let Some(deadline) = deadline {
                    self.deadlines.insert((deadline, key.to_vec()));
                }
            }
            _ => {}
        }
        if allowed {
            self.note(key, now);
        }
        SetOutcome {
            written: allowed,
            old,
        }
    }

    /// Deletes `key`; whether it existed (and had not expired).
    pub fn delete(&mut self, key: &[u8], now: u64) -> bool {
        match self.remove(key) {
            Some(entry) => {
                if let Some(journal) = &mut self.journal {
                    journal.record(Change::Delete { key });
                }
                !entry.expired(now)
            }
            None => false,
        }
    }

    /// Adds `delta` to the integer value of `key` (a missing key counts as
    /// 0) and returns the sum; the key keeps its deadline, as with Redis's
    /// `INCRBY`. The value must be a decimal integer as Redis writes them.
    pub fn increment(&mut self, key: &[u8], delta: i64, now: u64) -> Result<i64, StoreError> {
        let sum = self.add(key, delta, now)?;
        self.note(key, now);
        Ok(sum)
    }

    fn add(&mut self, key: &[u8], delta: i64, now: u64) -> Result<i64, StoreError> {
        let hash = self.hasher.hash_one(key);
        let hasher = &self.hasher;
        let slot = self.table.entry(
            hash,
            |e| e.key.as_slice() == key,
            |e| hasher.hash_one(e.key.as_slice()),
        );
        match slot {
            hash_table::Entry::Occupied(mut o) => {
                let entry = o.get_mut();
                let expired = entry.expired(now);
                let current = if expired {
                    0
                } else {
                    parse_i64(&entry.value).ok_or(StoreError::NotInteger)?
                };
                let sum = current.checked_add(delta).ok_or(StoreError::Overflow)?;
                if expired {
                    // A fresh key: no deadline.
                    let before = entry.deadline.take();
                    move_deadline(&mut self.deadlines, key, before, None);
                }
                // In place: the digits fit the old value's memory most times.
                entry.value.clear();
                super::resp::write_decimal(&mut entry.value, sum);
                Ok(sum)
            }
            hash_table::Entry::Vacant(v) => {
                let mut value = Vec::with_capacity(20);
                super::resp::write_decimal(&mut value, delta);
                v.insert(Entry {
                    key: Key::new(key),
                    value,
                    deadline: None,
                });
                Ok(delta)
            }
        }
    }

    /// Replaces the value of `key` with `new` if it is `expected` now
    /// (`None`: the key must be absent). A replaced value keeps its
    /// deadline; a created key has none.
    pub fn compare_and_set<'v>(
        &mut self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: impl Into<Cow<'v, [u8]>>,
        now: u64,
    ) -> Cas {
        let outcome = match (self.live(key, now), expected) {
            (Some(entry), Some(expected)) if entry.value == expected => {
                assign(&mut entry.value, new.into());
                Cas::Swapped
            }
            (None, None) => {
                if let hash_table::Entry::Vacant(v) = self.slot(key) {
                    v.insert(Entry {
                        key: Key::new(key),
                        value: new.into().into_owned(),
                        deadline: None,
                    });
                }
                Cas::Swapped
            }
            (current, _) => Cas::Mismatch {
                current: current.map(|e| e.value.clone()),
            },
        };
        if outcome == Cas::Swapped {
            self.note(key, now);
        }
        outcome
    }

    /// Removes every key (`FLUSHALL`).
    pub fn clear(&mut self) {
        self.table.clear();
        self.deadlines.clear();
        if let Some(journal) = &mut self.journal {
            journal.record(Change::Clear);
        }
    }

    /// Starts or stops recording changes. Stopping drops what was recorded
    /// and not taken. Memory while recording: a copy of every key and
    /// value written, until taken.
    pub fn record_changes(&mut self, on: bool) {
        match (on, self.journal.is_some()) {
            (true, false) => self.journal = Some(Journal::default()),
            (false, true) => self.journal = None,
            _ => {}
        }
    }

    /// Whether changes are being recorded.
    pub fn is_recording(&self) -> bool {
        self.journal.is_some()
    }

    /// Number of changes recorded and not yet taken.
    pub fn recorded(&self) -> usize {
        self.journal.as_ref().map_or(0, Journal::len)
    }

    /// Every change recorded since the last call, in the order they were
    /// made, in batches (empty when not recording).
    pub fn take_changes(&mut self) -> Vec<Changes> {
        self.journal.as_mut().map(Journal::take).unwrap_or_default()
    }

    /// Every key alive at `now`, with its value and deadline, in no
    /// particular order.
    pub fn iter_live(&self, now: u64) -> impl Iterator<Item = (&[u8], &[u8], Option<u64>)> {
        self.table
            .iter()
            .filter(move |e| !e.expired(now))
            .map(|e| (e.key.as_slice(), &e.value[..], e.deadline))
    }

    /// Records the state `key` is in after a write, when recording: its
    /// value and deadline, or its absence.
    fn note(&mut self, key: &[u8], now: u64) {
        let Some(journal) = &mut self.journal else {
            return;
        };
        let hash = self.hasher.hash_one(key);
        match self.table.find(hash, |e| e.key.as_slice() == key) {
            Some(e) if !e.expired(now) => journal.record(Change::Put {
                key,
                value: &e.value,
                deadline: e.deadline,
            }),
            _ => journal.record(Change::Delete { key }),
        }
    }

    /// Reclaims up to `budget` keys whose deadline is not after `now`, in
    /// deadline order; returns how many it removed. The caller runs it from
    /// its loop (for example every few milliseconds, or when
    /// [`Store::next_deadline`] has passed) so that expired keys nobody
    /// reads again do not hold memory.
    pub fn sweep(&mut self, now: u64, budget: usize) -> usize {
        let mut removed = 0;
        while removed < budget {
            match self.deadlines.first() {
                Some((deadline, _)) if *deadline <= now => {}
                _ => break,
            }
            let Some((_, key)) = self.deadlines.pop_first() else {
                break;
            };
            let hash = self.hash(&key);
            if let Ok(found) = self.table.find_entry(hash, |e| e.key.as_slice() == key) {
                found.remove();
            }
            removed += 1;
        }
        removed
    }
}

/// Stores `value` in `slot`: an owned value moves in; a borrowed one is
/// copied into the slot's memory when it fits without holding on to much
/// more than it needs, else into a fresh allocation.
fn assign(slot: &mut Vec<u8>, value: Cow<'_, [u8]>) {
    match value {
        Cow::Owned(value) => *slot = value,
        Cow::Borrowed(value) => {
            let fits = slot.capacity() >= value.len();
            let snug = slot.capacity() <= value.len().saturating_mul(2).max(64);
            if fits && snug {
                slot.clear();
                slot.extend_from_slice(value);
            } else {
                *slot = value.to_vec();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the invariant tying `deadlines` to the table, and that every
    /// entry is where its hash says.
    fn check(store: &Store) {
        let from_table: BTreeSet<(u64, Vec<u8>)> = store
            .table
            .iter()
            .filter_map(|e| e.deadline.map(|d| (d, e.key.as_slice().to_vec())))
            .collect();
        assert_eq!(from_table, store.deadlines);
        for e in store.table.iter() {
            assert!(entry(store, e.key.as_slice()).is_some());
        }
    }

    /// The table's entry for `key`, expired or not.
    fn entry<'s>(store: &'s Store, key: &[u8]) -> Option<&'s Entry> {
        store
            .table
            .find(store.hash(key), |e| e.key.as_slice() == key)
    }

    #[test]
    fn keys_short_and_long() {
        assert_eq!(std::mem::size_of::<Key>(), 24);
        let mut s = Store::new();
        let long = vec![b'L'; 200];
        for key in [&b""[..], b"a", &[b's'; 22], &[b'h'; 23], &long] {
            assert!(matches!(
                (Key::new(key), key.len() <= INLINE_KEY),
                (Key::Inline { .. }, true) | (Key::Heap(_), false)
            ));
            assert_eq!(Key::new(key).as_slice(), key);
            s.put(key, key, None, 0);
        }
        for key in [&b""[..], b"a", &[b's'; 22], &[b'h'; 23], &long] {
            assert_eq!(s.get(key, 0), Some(key));
        }
        // Prefixes and extensions of stored keys are other keys.
        assert_eq!(s.get(&[b's'; 21], 0), None);
        assert_eq!(s.get(&[b'h'; 24], 0), None);
        assert_eq!(s.len(), 5);
        check(&s);
    }

    #[test]
    fn get_put_delete() {
        let mut s = Store::new();
        assert_eq!(s.get(b"a", 0), None);
        s.put(b"a", b"1".to_vec(), None, 0);
        s.put(b"b", b"2".to_vec(), Some(100), 0);
        assert_eq!(s.get(b"a", 0), Some(&b"1"[..]));
        assert_eq!((s.len(), s.expiring()), (2, 1));
        s.put(b"b", b"3".to_vec(), None, 1);
        assert_eq!((s.ttl(b"b", 1), s.expiring()), (Some(None), 0));
        assert!(s.delete(b"a", 2));
        assert!(!s.delete(b"a", 2));
        assert_eq!(s.len(), 1);
        s.clear();
        assert!(s.is_empty());
        check(&s);
    }

    #[test]
    fn expiry_is_lazy_and_swept_in_deadline_order() {
        let mut s = Store::new();
        s.put(b"a", b"1".to_vec(), Some(10), 0);
        s.put(b"b", b"1".to_vec(), Some(20), 0);
        s.put(b"c", b"1".to_vec(), Some(30), 0);
        s.put(b"d", b"1".to_vec(), None, 0);
        assert_eq!(s.next_deadline(), Some(10));
        assert_eq!(s.ttl(b"a", 4), Some(Some(6)));
        assert!(s.exists(b"a", 9));
        // Expired keys are gone for every operation at once...
        assert!(!s.exists(b"a", 10));
        assert_eq!(s.get(b"b", 25), None);
        assert!(!s.delete(b"c", 30));
        // ...and counted until reclaimed (the reads above reclaimed a, b, c).
        assert_eq!(s.len(), 1);
        s.put(b"e", b"1".to_vec(), Some(40), 30);
        s.put(b"f", b"1".to_vec(), Some(50), 30);
        s.put(b"g", b"1".to_vec(), Some(60), 30);
        assert_eq!(s.len(), 4);
        assert_eq!(s.sweep(39, 10), 0);
        assert_eq!(s.sweep(100, 2), 2);
        assert_eq!(s.next_deadline(), Some(60));
        assert_eq!(s.sweep(100, 2), 1);
        assert_eq!((s.len(), s.expiring(), s.next_deadline()), (1, 0, None));
        check(&s);
    }

    #[test]
    fn put_with_a_past_deadline_deletes() {
        let mut s = Store::new();
        s.put(b"a", b"1".to_vec(), Some(100), 0);
        s.put(b"a", b"2".to_vec(), Some(50), 50);
        assert_eq!((s.len(), s.expiring()), (0, 0));
        check(&s);
    }

    #[test]
    fn set_conditions_ttl_and_get() {
        let mut s = Store::new();
        let nx = SetOptions {
            condition: Condition::IfAbsent,
            ..SetOptions::default()
        };
        let xx = SetOptions {
            condition: Condition::IfPresent,
            ..SetOptions::default()
        };
        let outcome = |written, old: Option<&[u8]>| SetOutcome {
            written,
            old: old.map(<[u8]>::to_vec),
        };
        assert_eq!(s.set(b"k", b"1".to_vec(), xx, 0), outcome(false, None));
        assert_eq!(s.get(b"k", 0), None);
        assert_eq!(s.set(b"k", b"1".to_vec(), nx, 0), outcome(true, None));
        assert_eq!(s.set(b"k", b"2".to_vec(), nx, 0), outcome(false, None));
        assert_eq!(
            s.set(b"k", b"3".to_vec(), SetOptions { get: true, ..nx }, 0),
            outcome(false, Some(b"1"))
        );
        let px = SetOptions {
            expiry: Expiry::At(100),
            get: true,
            ..xx
        };
        assert_eq!(s.set(b"k", b"4".to_vec(), px, 0), outcome(true, Some(b"1")));
        assert_eq!(s.ttl(b"k", 10), Some(Some(90)));
        let keep = SetOptions {
            expiry: Expiry::Keep,
            ..SetOptions::default()
        };
        s.set(b"k", b"5".to_vec(), keep, 20);
        assert_eq!(s.get(b"k", 20), Some(&b"5"[..]));
        assert_eq!(s.ttl(b"k", 20), Some(Some(80)));
        // A plain SET clears the deadline.
        s.set(b"k", b"6".to_vec(), SetOptions::default(), 30);
        assert_eq!(s.ttl(b"k", 30), Some(None));
        // An expired key is absent for NX / XX.
        s.set(
            b"e",
            b"1".to_vec(),
            SetOptions {
                expiry: Expiry::At(40),
                ..nx
            },
            30,
        );
        assert_eq!(s.set(b"e", b"2".to_vec(), xx, 40), outcome(false, None));
        assert_eq!(s.set(b"e", b"2".to_vec(), nx, 40), outcome(true, None));
        // A deadline already passed deletes, after returning the old value.
        let past = SetOptions {
            expiry: Expiry::At(50),
            get: true,
            ..SetOptions::default()
        };
        assert_eq!(
            s.set(b"e", b"3".to_vec(), past, 60),
            outcome(true, Some(b"2"))
        );
        assert_eq!(s.get(b"e", 60), None);
        check(&s);
    }

    #[test]
    fn borrowed_values_reuse_memory_that_fits() {
        let mut s = Store::new();
        s.put(b"k", &b"0123456789"[..], None, 0);
        let before = entry(&s, b"k").unwrap().value.as_ptr();
        s.set(b"k", &b"abcdefgh"[..], SetOptions::default(), 0);
        assert_eq!(s.get(b"k", 0), Some(&b"abcdefgh"[..]));
        assert_eq!(entry(&s, b"k").unwrap().value.as_ptr(), before);
        // An owned value moves in.
        let owned = b"moved".to_vec();
        let at = owned.as_ptr();
        s.put(b"k", owned, None, 0);
        assert_eq!(entry(&s, b"k").unwrap().value.as_ptr(), at);
        // A much smaller value does not keep a large allocation alive.
        s.put(b"k", vec![b'x'; 4096], None, 0);
        s.put(b"k", &b"y"[..], None, 0);
        assert!(entry(&s, b"k").unwrap().value.capacity() < 4096);
        assert_eq!(s.get(b"k", 0), Some(&b"y"[..]));
        // A larger one gets its own memory.
        s.compare_and_set(b"k", Some(b"y"), &[b'z'; 100][..], 0);
        assert_eq!(s.get(b"k", 0), Some(&[b'z'; 100][..]));
        check(&s);
    }

    #[test]
    fn increments() {
        let mut s = Store::new();
        assert_eq!(s.increment(b"n", 1, 0), Ok(1));
        assert_eq!(s.increment(b"n", -11, 0), Ok(-10));
        assert_eq!(s.get(b"n", 0), Some(&b"-10"[..]));
        s.put(b"n", b"9223372036854775806".to_vec(), Some(100), 0);
        assert_eq!(s.increment(b"n", 1, 0), Ok(i64::MAX));
        assert_eq!(s.increment(b"n", 1, 0), Err(StoreError::Overflow));
        assert_eq!(s.get(b"n", 0), Some(&b"9223372036854775807"[..]));
        // The deadline stays.
        assert_eq!(s.ttl(b"n", 0), Some(Some(100)));
        for bad in [
            &b"x"[..],
            b"",
            b" 1",
            b"01",
            b"1.0",
            b"99999999999999999999",
        ] {
            s.put(b"b", bad.to_vec(), None, 0);
            assert_eq!(
                s.increment(b"b", 1, 0),
                Err(StoreError::NotInteger),
                "{bad:?}"
            );
            assert_eq!(s.get(b"b", 0), Some(bad));
        }
        s.put(b"m", b"-9223372036854775808".to_vec(), None, 0);
        assert_eq!(s.increment(b"m", -1, 0), Err(StoreError::Overflow));
        // An expired value counts as absent.
        s.put(b"t", b"41".to_vec(), Some(5), 0);
        assert_eq!(s.increment(b"t", 1, 5), Ok(1));
        assert_eq!(s.ttl(b"t", 5), Some(None));
        assert_eq!(
            StoreError::NotInteger.to_string(),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            StoreError::Overflow.to_string(),
            "ERR increment or decrement would overflow"
        );
        check(&s);
    }

    #[test]
    fn compare_and_set() {
        let mut s = Store::new();
        assert_eq!(
            s.compare_and_set(b"k", Some(b"a"), b"b".to_vec(), 0),
            Cas::Mismatch { current: None }
        );
        assert_eq!(
            s.compare_and_set(b"k", None, b"a".to_vec(), 0),
            Cas::Swapped
        );
        assert_eq!(
            s.compare_and_set(b"k", None, b"z".to_vec(), 0),
            Cas::Mismatch {
                current: Some(b"a".to_vec())
            }
        );
        s.put(b"k", b"a".to_vec(), Some(10), 0);
        assert_eq!(
            s.compare_and_set(b"k", Some(b"a"), b"b".to_vec(), 1),
            Cas::Swapped
        );
        assert_eq!(s.get(b"k", 1), Some(&b"b"[..]));
        assert_eq!(s.ttl(b"k", 1), Some(Some(9)));
        // Expired: absent.
        assert_eq!(
            s.compare_and_set(b"k", None, b"c".to_vec(), 10),
            Cas::Swapped
        );
        check(&s);
    }
}
