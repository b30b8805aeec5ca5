//! Per-sender sequence accounting, sans-IO: gaps, late (reordered)
//! arrivals, duplicates, and what is too old to tell.
//!
//! Each sender numbers its datagrams to a destination 1, 2, 3, ... The
//! receiver keeps, per sender, the highest number seen and a window of the
//! last `window` numbers below it (a bitmap: seen or not). For an arrival
//! `q` with `h` the highest so far:
//!
//! | arrival | verdict | counted as |
//! |---------|---------|------------|
//! | `q == h + 1` | delivered | in order |
//! | `q > h + 1` | delivered | `gaps += q - h - 1` (those numbers are skipped: a gap event) |
//! | `q <= h`, in the window, not seen | delivered | `late += 1` (it fills a gap: lost = gaps - late) |
//! | `q <= h`, in the window, seen | dropped | `duplicates += 1` |
//! | `q` below the window (or below where the receiver joined) | dropped | `stale += 1` |
//!
//! The first datagram of a sender at `s <= window` counts `1..s` as a gap
//! (the receiver was there from the start and lost them; they may still
//! arrive late); at `s > window` the receiver joined a running stream and
//! nothing before `s` counts (earlier numbers are stale). A `1` that arrives
//! when `1` is outside the window means the sender restarted its sequence:
//! its state starts over (counted in `restarts`).
//!
//! At most `max_senders` senders are tracked; a new one beyond that evicts
//! the half heard from least recently (their counts are forgotten).

use std::collections::HashMap;
use std::net::SocketAddr;

/// What the receiver knows about one sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SenderStats {
    /// The sender's id.
    pub sender: u64,
    /// The address its last datagram came from.
    pub source: SocketAddr,
    /// Datagrams delivered (in order or late).
    pub delivered: u64,
    /// Sequence numbers skipped when a later one arrived.
    pub gaps: u64,
    /// Datagrams that arrived after a later one (each filled a gap).
    pub late: u64,
    /// Datagrams received again (dropped).
    pub duplicates: u64,
    /// Datagrams too far behind to tell new from duplicate (dropped).
    pub stale: u64,
    /// Times the sender started its sequence over.
    pub restarts: u64,
    /// Highest sequence number seen.
    pub highest_seq: u64,
}

impl SenderStats {
    /// Sequence numbers skipped and not (yet) arrived late: lost, as far as
    /// the receiver can tell.
    pub fn lost(&self) -> u64 {
        self.gaps.saturating_sub(self.late)
    }
}

/// What one arrival did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Observation {
    /// Hand the datagram to the application.
    pub(crate) deliver: bool,
    /// A sender not tracked before (its first sequence number).
    pub(crate) new_sender: Option<u64>,
    /// Sequence numbers `first..=last` were skipped.
    pub(crate) gap: Option<(u64, u64)>,
    /// It arrived after a later one and filled a gap.
    pub(crate) late: bool,
    /// Seen before: dropped.
    pub(crate) duplicate: bool,
    /// Too old to tell: dropped.
    pub(crate) stale: bool,
    /// The sender restarted its sequence; the highest number of the run
    /// before.
    pub(crate) restarted: Option<u64>,
    /// Senders forgotten to make room for this one.
    pub(crate) evicted: Vec<u64>,
}

struct SenderState {
    stats: SenderStats,
    /// Lowest sequence number accounted for (1, or where the receiver
    /// joined).
    floor: u64,
    /// Seen bits of `highest - window + 1 ..= highest`, indexed by
    /// `seq % window`.
    bits: Box<[u64]>,
    /// The tracker's clock at the last arrival (for eviction).
    last_heard: u64,
}

impl SenderState {
    fn new(sender: u64, source: SocketAddr, words: usize) -> SenderState {
        SenderState {
            stats: SenderStats {
                sender,
                source,
                delivered: 0,
                gaps: 0,
                late: 0,
                duplicates: 0,
                stale: 0,
                restarts: 0,
                highest_seq: 0,
            },
            floor: 1,
            bits: vec![0; words].into_boxed_slice(),
            last_heard: 0,
        }
    }

    fn window(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    fn slot(&self, seq: u64) -> (usize, u64) {
        let i = seq % self.window();
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn seen(&self, seq: u64) -> bool {
        let (w, m) = self.slot(seq);
        self.bits[w] & m != 0
    }

    fn mark(&mut self, seq: u64) {
        let (w, m) = self.slot(seq);
        self.bits[w] |= m;
    }

    fn unmark(&mut self, seq: u64) {
        let (w, m) = self.slot(seq);
        self.bits[w] &= !m;
    }

    /// Starts the sequence at `seq` (first arrival or restart).
    fn start(&mut self, seq: u64, obs: &mut Observation) {
        self.bits.fill(0);
        self.mark(seq);
        self.stats.highest_seq = seq;
        if seq <= self.window() {
            // There from the start: 1..seq were lost (or come late).
            self.floor = 1;
            if seq > 1 {
                self.stats.gaps += seq - 1;
                obs.gap = Some((1, seq - 1));
            }
        } else {
            // Joined a running stream.
            self.floor = seq;
        }
        self.stats.delivered += 1;
        obs.deliver = true;
    }

    fn observe(&mut self, seq: u64, obs: &mut Observation) {
        let h = self.stats.highest_seq;
        if seq > h {
            let skipped = seq - h - 1;
            if skipped > 0 {
                self.stats.gaps += skipped;
                obs.gap = Some((h + 1, seq - 1));
            }
            if seq - h >= self.window() {
                self.bits.fill(0);
            } else {
                for q in h + 1..seq {
                    self.unmark(q);
                }
            }
            self.mark(seq);
            self.stats.highest_seq = seq;
            self.stats.delivered += 1;
            obs.deliver = true;
            return;
        }
        let in_window = seq >= self.floor && h - seq < self.window();
        if !in_window {
            if seq == 1 {
                self.stats.restarts += 1;
                obs.restarted = Some(h);
                self.start(1, obs);
                return;
            }
            self.stats.stale += 1;
            obs.stale = true;
            return;
        }
        if self.seen(seq) {
            self.stats.duplicates += 1;
            obs.duplicate = true;
            return;
        }
        self.mark(seq);
        self.stats.late += 1;
        self.stats.delivered += 1;
        obs.late = true;
        obs.deliver = true;
    }
}

/// The senders one receiving socket hears from.
pub(crate) struct Tracker {
    senders: HashMap<u64, SenderState>,
    /// Window size in 64-bit words.
    words: usize,
    max_senders: usize,
    clock: u64,
}

impl Tracker {
    /// A tracker with a `window` of at least 64 sequence numbers (rounded up
    /// to a power of two) per sender, for at most `max_senders` senders
    /// (at least 1). Memory: `window / 8` bytes plus about 100 per sender.
    pub(crate) fn new(window: u32, max_senders: usize) -> Tracker {
        let window = window.clamp(64, 1 << 20).next_power_of_two();
        Tracker {
            senders: HashMap::new(),
            words: (window / 64) as usize,
            max_senders: max_senders.max(1),
            clock: 0,
        }
    }

    /// Accounts for datagram `seq` of `sender`, which came from `source`.
    pub(crate) fn observe(&mut self, sender: u64, seq: u64, source: SocketAddr) -> Observation {
        self.clock += 1;
        let mut obs = Observation::default();
        if let Some(s) = self.senders.get_mut(&sender) {
            s.last_heard = self.clock;
            s.stats.source = source;
            s.observe(seq, &mut obs);
            return obs;
        }
        if self.senders.len() >= self.max_senders {
            // Forget the least recently heard half (at least one) in one
            // pass, so that a stream of new senders costs O(1) each on
            // average. Clock values are unique.
            let mut heard: Vec<u64> = self.senders.values().map(|s| s.last_heard).collect();
            let last_forgotten = (heard.len() / 2).max(1) - 1;
            let (_, &mut cut, _) = heard.select_nth_unstable(last_forgotten);
            self.senders.retain(|&id, s| {
                let keep = s.last_heard > cut;
                if !keep {
                    obs.evicted.push(id);
                }
                keep
            });
        }
        let mut s = SenderState::new(sender, source, self.words);
        s.last_heard = self.clock;
        obs.new_sender = Some(seq);
        s.start(seq, &mut obs);
        self.senders.insert(sender, s);
        obs
    }

    /// One sender's counts.
    pub(crate) fn get(&self, sender: u64) -> Option<SenderStats> {
        self.senders.get(&sender).map(|s| s.stats)
    }

    /// Every tracked sender's counts (in no particular order).
    pub(crate) fn all(&self) -> Vec<SenderStats> {
        self.senders.values().map(|s| s.stats).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    /// Feeds `seqs` of sender 1; returns the delivered ones and the stats.
    fn run(t: &mut Tracker, seqs: &[u64]) -> (Vec<u64>, SenderStats) {
        let mut out = Vec::new();
        for &q in seqs {
            if t.observe(1, q, src()).deliver {
                out.push(q);
            }
        }
        (out, t.get(1).unwrap())
    }

    #[test]
    fn in_order_arrivals_count_nothing() {
        let mut t = Tracker::new(64, 8);
        let (out, s) = run(&mut t, &(1..=200).collect::<Vec<_>>());
        assert_eq!(out.len(), 200);
        assert_eq!(
            (s.gaps, s.late, s.duplicates, s.stale, s.lost()),
            (0, 0, 0, 0, 0)
        );
        assert_eq!(s.highest_seq, 200);
    }

    #[test]
    fn a_gap_is_counted_and_reported_with_its_range() {
        let mut t = Tracker::new(64, 8);
        for q in 1..=3 {
            t.observe(1, q, src());
        }
        let obs = t.observe(1, 7, src());
        assert_eq!(obs.gap, Some((4, 6)));
        assert!(obs.deliver);
        let s = t.get(1).unwrap();
        assert_eq!((s.gaps, s.lost()), (3, 3));
    }

    #[test]
    fn a_swap_is_one_gap_filled_late() {
        let mut t = Tracker::new(64, 8);
        let (out, s) = run(&mut t, &[1, 2, 4, 3, 5]);
        assert_eq!(out, [1, 2, 4, 3, 5]);
        assert_eq!((s.gaps, s.late, s.lost(), s.duplicates), (1, 1, 0, 0));
    }

    #[test]
    fn duplicates_are_dropped_wherever_they_fall() {
        let mut t = Tracker::new(64, 8);
        let (out, s) = run(&mut t, &[1, 1, 2, 3, 2, 5, 4, 4, 5]);
        assert_eq!(out, [1, 2, 3, 5, 4]);
        assert_eq!((s.duplicates, s.gaps, s.late), (4, 1, 1));
    }

    #[test]
    fn what_falls_out_of_the_window_is_stale_and_its_gap_stays_lost() {
        let mut t = Tracker::new(64, 8);
        let mut seqs: Vec<u64> = (1..=100).filter(|&q| q != 10).collect();
        seqs.push(10); // 90 behind: outside a 64-wide window
        let (out, s) = run(&mut t, &seqs);
        assert_eq!(out.len(), 99);
        assert_eq!((s.gaps, s.late, s.stale, s.lost()), (1, 0, 1, 1));
        // Inside the window it would have been late.
        let mut t = Tracker::new(64, 8);
        let mut seqs: Vec<u64> = (1..=60).filter(|&q| q != 10).collect();
        seqs.push(10);
        let (_, s) = run(&mut t, &seqs);
        assert_eq!((s.late, s.stale, s.lost()), (1, 0, 0));
    }

    #[test]
    fn a_jump_larger_than_the_window_clears_it() {
        let mut t = Tracker::new(64, 8);
        let (_, s) = run(&mut t, &[1, 2, 500, 499, 2, 450]);
        // 499 is late (filled), 2 is stale (out of window), 450 is late.
        assert_eq!((s.gaps, s.late, s.stale, s.duplicates), (497, 2, 1, 0));
    }

    #[test]
    fn an_early_first_arrival_counts_the_numbers_before_it() {
        let mut t = Tracker::new(64, 8);
        let obs = t.observe(1, 3, src());
        assert_eq!((obs.new_sender, obs.gap), (Some(3), Some((1, 2))));
        let (out, s) = run(&mut t, &[1, 2]);
        assert_eq!(out, [1, 2]);
        assert_eq!((s.gaps, s.late, s.lost()), (2, 2, 0));
    }

    #[test]
    fn a_receiver_joining_a_running_stream_counts_nothing_before_it() {
        let mut t = Tracker::new(64, 8);
        let obs = t.observe(1, 1000, src());
        assert_eq!(obs.gap, None);
        let (out, s) = run(&mut t, &[999, 1001]);
        assert_eq!(out, [1001]);
        assert_eq!((s.gaps, s.stale), (0, 1));
    }

    #[test]
    fn a_sender_that_starts_over_is_followed() {
        let mut t = Tracker::new(64, 8);
        run(&mut t, &(1..=100).collect::<Vec<_>>());
        let obs = t.observe(1, 1, src());
        assert_eq!(obs.restarted, Some(100));
        assert!(obs.deliver);
        let (out, s) = run(&mut t, &[2, 3]);
        assert_eq!(out, [2, 3]);
        assert_eq!(
            (s.restarts, s.highest_seq, s.duplicates, s.stale),
            (1, 3, 0, 0)
        );
        // Within the window a second 1 is a plain duplicate.
        let (out, s) = run(&mut t, &[1]);
        assert!(out.is_empty());
        assert_eq!((s.duplicates, s.restarts), (1, 1));
    }

    #[test]
    fn senders_are_counted_apart_and_the_quietest_is_evicted() {
        let mut t = Tracker::new(64, 2);
        t.observe(1, 1, src());
        t.observe(2, 1, src());
        t.observe(1, 3, src());
        let obs = t.observe(3, 1, src());
        assert_eq!(obs.evicted, [2]);
        assert_eq!(t.get(1).unwrap().gaps, 1);
        assert!(t.get(2).is_none());
        assert_eq!(t.all().len(), 2);
    }

    #[test]
    fn a_full_table_forgets_its_quietest_half_at_once() {
        let mut t = Tracker::new(64, 8);
        for id in 1..=8 {
            t.observe(id, 1, src());
        }
        // Senders 1 to 4 speak again: 5 to 8 are now the quietest.
        for id in 1..=4 {
            t.observe(id, 2, src());
        }
        let mut evicted = t.observe(9, 1, src()).evicted;
        evicted.sort();
        assert_eq!(evicted, [5, 6, 7, 8]);
        assert_eq!(t.all().len(), 5);
        // Room again: the next new sender evicts nobody.
        assert!(t.observe(10, 1, src()).evicted.is_empty());
    }

    #[test]
    fn the_window_is_a_power_of_two_of_at_least_64() {
        assert_eq!(Tracker::new(0, 1).words, 1);
        assert_eq!(Tracker::new(100, 1).words, 2);
        assert_eq!(Tracker::new(1024, 1).words, 16);
    }

    #[test]
    fn counts_match_a_random_schedule_exactly() {
        // A deterministic shuffle of drops, duplicates and local swaps; the
        // tracker's counts must equal what the schedule did.
        let n = 5000u64;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut stream: Vec<u64> = Vec::new();
        let mut dropped = 0u64;
        let mut dups = 0u64;
        for q in 1..=n {
            match next() % 20 {
                0 => dropped += 1,
                1 => {
                    stream.push(q);
                    stream.push(q);
                    dups += 1;
                }
                _ => stream.push(q),
            }
        }
        // Swap some neighbours (distance < window): each swap of two
        // distinct numbers makes exactly one late arrival.
        let mut swaps = 0u64;
        let mut i = 0;
        while i + 1 < stream.len() {
            // Not the second copy of a duplicate: swapping that one behind
            // the next number makes it a duplicate, not a late arrival.
            let first_copy = !stream[..i].contains(&stream[i]);
            if next() % 10 == 0 && first_copy && stream[i] + 1 == stream[i + 1] {
                stream.swap(i, i + 1);
                swaps += 1;
                i += 2;
            } else {
                i += 1;
            }
        }
        let mut t = Tracker::new(1024, 4);
        let (out, s) = run(&mut t, &stream);
        assert_eq!(s.lost(), dropped);
        assert_eq!(s.duplicates, dups);
        assert_eq!(s.late, swaps);
        assert_eq!(out.len() as u64, n - dropped);
    }

    proptest::proptest! {
        /// Any stream of numbers within one window: the counts follow from
        /// the stream alone.
        #[test]
        fn counts_follow_from_any_stream_within_the_window(
            stream in proptest::collection::vec(1u64..300, 1..400)
        ) {
            let mut t = Tracker::new(1024, 4);
            let (out, s) = run(&mut t, &stream);
            let mut seen = std::collections::HashSet::new();
            let (mut max, mut late, mut firsts) = (0, 0, Vec::new());
            for &q in &stream {
                if seen.insert(q) {
                    firsts.push(q);
                    if q < max {
                        late += 1;
                    }
                    max = max.max(q);
                }
            }
            let missing = (1..=max).filter(|q| !seen.contains(q)).count() as u64;
            proptest::prop_assert_eq!(&out, &firsts);
            proptest::prop_assert_eq!(s.duplicates, (stream.len() - firsts.len()) as u64);
            proptest::prop_assert_eq!(s.late, late);
            proptest::prop_assert_eq!(s.lost(), missing);
            proptest::prop_assert_eq!(s.gaps, missing + late);
            proptest::prop_assert_eq!((s.stale, s.restarts, s.highest_seq), (0, 0, max));
        }

        /// Any stream at all, from any number of senders: nothing panics,
        /// and every arrival is delivered or counted exactly once.
        #[test]
        fn every_arrival_is_delivered_or_counted_once(
            stream in proptest::collection::vec((0u64..6, 1u64..5000), 1..400)
        ) {
            let mut t = Tracker::new(64, 3);
            let mut delivered = 0u64;
            for &(sender, q) in &stream {
                if t.observe(sender + 1, q, src()).deliver {
                    delivered += 1;
                }
            }
            // Evictions forget counts, so compare only with no eviction.
            let senders: std::collections::HashSet<u64> = stream.iter().map(|x| x.0).collect();
            if senders.len() <= 3 {
                let all = t.all();
                let d: u64 = all.iter().map(|s| s.delivered).sum();
                let dropped: u64 = all.iter().map(|s| s.duplicates + s.stale).sum();
                proptest::prop_assert_eq!(d, delivered);
                proptest::prop_assert_eq!(d + dropped, stream.len() as u64);
            }
        }
    }
}
