//! Which shard owns a key, and how a multi-key command is split across
//! shards and its answers put back in key order.
//!
//! Placement is a stable 64-bit hash of the key ([`key_hash`]: the same in
//! every build, process and machine, since replicas and clients route by
//! it) mapped onto `0..shards` ([`shard_of`]). As in Redis Cluster, a key
//! holding a hash tag (`user:{42}:name`) is placed by the tag alone, so
//! keys sharing a tag share a shard and a multi-key command over them runs
//! on one core.
//!
//! ```
//! use ringwire_examples::kv::shard::{shard_of, Split};
//!
//! assert_eq!(shard_of(b"{42}:name", 4), shard_of(b"{42}:mail", 4));
//! let keys: [&[u8]; 3] = [b"a", b"b", b"c"];
//! let split = Split::new(keys, 4);
//! // Each shard answers for its keys in the order it was given them...
//! let answers: Vec<Vec<&str>> = split
//!     .parts()
//!     .iter()
//!     .map(|part| part.positions.iter().map(|&i| ["A", "B", "C"][i]).collect())
//!     .collect();
//! // ...and the merge restores the command's order.
//! assert_eq!(split.merge(answers), Some(vec!["A", "B", "C"]));
//! ```

/// FNV-1a's offset basis and prime (64-bit).
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The part of `key` that decides its shard: the bytes between the first
/// `{` and the next `}` if there is at least one, else the whole key
/// (Redis Cluster's hash tag rule).
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The stable 64-bit hash keys are placed by: FNV-1a over the hash tag,
/// then MurmurHash3's 64-bit finalizer so that every output bit depends on
/// every input bit. Part of kv-node's data layout: changing it moves keys.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in hash_tag(key) {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The shard (`0..shards`) that owns `key`. `shards` of 0 is taken as 1.
pub fn shard_of(key: &[u8], shards: usize) -> usize {
    // Multiply-shift maps the hash onto 0..shards without a division.
    ((u128::from(key_hash(key)) * shards as u128) >> 64) as usize
}

/// One shard's share of a multi-key command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// The shard.
    pub shard: usize,
    /// Positions, in the command's key order, of the keys this shard owns
    /// (ascending; a key given twice appears twice).
    pub positions: Vec<usize>,
}

/// The keys of a multi-key command (`MGET`, `MSET`, `DEL`, `EXISTS`)
/// grouped by owning shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    parts: Vec<Part>,
    keys: usize,
}

impl Split {
    /// Groups `keys` by shard. Parts come in ascending shard order.
    pub fn new<'k>(keys: impl IntoIterator<Item = &'k [u8]>, shards: usize) -> Split {
        let mut placed: Vec<(usize, usize)> = keys
            .into_iter()
            .enumerate()
            .map(|(position, key)| (shard_of(key, shards), position))
            .collect();
        let keys = placed.len();
        placed.sort_unstable();
        let mut parts: Vec<Part> = Vec::new();
        for (shard, position) in placed {
            match parts.last_mut() {
                Some(part) if part.shard == shard => part.positions.push(position),
                _ => parts.push(Part {
                    shard,
                    positions: vec![position],
                }),
            }
        }
        Split { parts, keys }
    }

    /// The shards involved and their keys.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Number of keys in the command.
    pub fn len(&self) -> usize {
        self.keys
    }

    /// Whether the command had no key.
    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// Puts per-shard answers back in the command's key order:
    /// `per_part[i]` answers for `parts()[i]`, one item per position. `None`
    /// if the answers do not match the split (a count differs).
    pub fn merge<T>(&self, per_part: Vec<Vec<T>>) -> Option<Vec<T>> {
        if per_part.len() != self.parts.len() {
            return None;
        }
        let mut slots: Vec<Option<T>> = std::iter::repeat_with(|| None).take(self.keys).collect();
        for (part, answers) in self.parts.iter().zip(per_part) {
            if answers.len() != part.positions.len() {
                return None;
            }
            for (&position, answer) in part.positions.iter().zip(answers) {
                *slots.get_mut(position)? = Some(answer);
            }
        }
        slots.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_stable() {
        // Pinned values (computed outside Rust from the documented
        // algorithm): they define where kv-node keeps keys.
        let pinned: [(&[u8], u64); 5] = [
            (b"", 0xefd0_1f60_ba99_2926),
            (b"a", 0x82a2_a958_a9be_ce5b),
            (b"key:000001", 0xb71b_0129_c61b_866a),
            (b"user1000", 0x29b5_5352_2efb_ea1c),
            (b"{user1000}.following", 0x29b5_5352_2efb_ea1c),
        ];
        for (key, hash) in pinned {
            assert_eq!(key_hash(key), hash, "{key:?}");
        }
        assert_eq!(shard_of(b"key:000001", 4), 2);
        assert_eq!(shard_of(b"a", 4), 2);
        assert_eq!(shard_of(b"", 4), 3);
    }

    #[test]
    fn hash_tags() {
        assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"no tag"), b"no tag");
        assert_eq!(hash_tag(b"open{only"), b"open{only");
    }

    #[test]
    fn shards_are_in_range_and_balanced() {
        for shards in [1, 2, 3, 7, 64] {
            let mut counts = vec![0usize; shards];
            let n = 20_000;
            for i in 0..n {
                let key = format!("key:{i:06}");
                let shard = shard_of(key.as_bytes(), shards);
                assert!(shard < shards);
                counts[shard] += 1;
            }
            // Each count is binomial around n / shards: within five standard
            // deviations (about the square root of the mean) of it.
            let expected = n / shards;
            let slack = 5.0 * (expected as f64).sqrt();
            for &c in &counts {
                assert!(
                    (c.abs_diff(expected) as f64) <= slack,
                    "{shards}: {counts:?}"
                );
            }
        }
        assert_eq!(shard_of(b"anything", 0), 0);
    }

    #[test]
    fn split_and_merge_preserve_key_order_and_duplicates() {
        let keys: Vec<Vec<u8>> = (0..50)
            .map(|i| format!("k{}", i % 37).into_bytes())
            .collect();
        let split = Split::new(keys.iter().map(Vec::as_slice), 5);
        assert_eq!(split.len(), 50);
        let mut seen: Vec<usize> = Vec::new();
        let mut shards: Vec<usize> = Vec::new();
        for part in split.parts() {
            assert!(part.positions.windows(2).all(|w| w[0] < w[1]));
            for &p in &part.positions {
                assert_eq!(shard_of(&keys[p], 5), part.shard);
            }
            seen.extend(&part.positions);
            shards.push(part.shard);
        }
        assert!(shards.windows(2).all(|w| w[0] < w[1]));
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        // Each shard answers with its keys; the merge gives them back in order.
        let answers = split
            .parts()
            .iter()
            .map(|part| part.positions.iter().map(|&p| keys[p].clone()).collect())
            .collect();
        assert_eq!(split.merge(answers), Some(keys.clone()));
    }

    #[test]
    fn merge_refuses_answers_that_do_not_match() {
        let keys: [&[u8]; 4] = [b"a", b"b", b"c", b"d"];
        let split = Split::new(keys, 2);
        assert_eq!(split.merge::<u8>(Vec::new()), None);
        let mut answers: Vec<Vec<u8>> = split
            .parts()
            .iter()
            .map(|p| vec![0; p.positions.len()])
            .collect();
        answers[0].push(1);
        assert_eq!(split.merge(answers), None);
        let single = Split::new(keys, 1);
        assert_eq!(single.parts().len(), 1);
        assert_eq!(single.merge(vec![vec![1, 2, 3, 4]]), Some(vec![1, 2, 3, 4]));
        let empty = Split::new(std::iter::empty(), 4);
        assert!(empty.is_empty());
        assert_eq!(empty.merge::<u8>(Vec::new()), Some(Vec::new()));
    }
}
