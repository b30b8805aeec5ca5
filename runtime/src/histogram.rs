//! Log-bucketed histograms of fixed size, for per-core counters.
//!
//! A [`Log2`] is a plain array of `Cell<u64>` counts owned by one core (no
//! atomics, no allocation): recording a value is a bit scan, a compare and
//! two adds. Bucket `i` counts the values `v` with `2^(e + i - 1) < v <=
//! 2^(e + i)`, where `e` is the histogram's first exponent (values up to
//! `2^e` all land in the first bucket); a last bucket counts what is above
//! the largest bound (`+Inf` in Prometheus terms). The sum of all recorded
//! values is kept too, so a snapshot ([`Histogram`]) has what the Prometheus
//! histogram type needs: cumulative `_bucket{le=..}`, `_sum` and `_count`.
//!
//! A leaf module: it imports nothing of the crate.

use std::cell::Cell;

/// A per-core histogram with `N` finite buckets (bounds `2^first_exp` ..
/// `2^(first_exp + N - 1)`) and one overflow bucket.
pub(crate) struct Log2<const N: usize> {
    first_exp: u32,
    /// `N` finite buckets, then the overflow bucket at index `N` (the array
    /// is sized for the largest `N`, so that `N + 1` needs no const
    /// arithmetic; 512 bytes).
    counts: [Cell<u64>; 64],
    sum: Cell<u64>,
}

impl<const N: usize> Log2<N> {
    /// An empty histogram whose first bucket holds values up to
    /// `2^first_exp`.
    ///
    /// # Panics
    ///
    /// When `N` is 0 or larger than 63, or the largest bound would not fit a
    /// `u64`.
    pub(crate) fn new(first_exp: u32) -> Self {
        assert!(N > 0 && N < 64 && first_exp as usize + N <= 64);
        Log2 {
            first_exp,
            counts: std::array::from_fn(|_| Cell::new(0)),
            sum: Cell::new(0),
        }
    }

    /// Index of the bucket of `v`.
    #[inline]
    fn index(&self, v: u64) -> usize {
        // ceil(log2(v)) for v >= 2; 0 for v <= 1.
        let exp = 64 - v.saturating_sub(1).leading_zeros();
        (exp.saturating_sub(self.first_exp) as usize).min(N)
    }

    /// Counts one value.
    #[inline]
    pub(crate) fn record(&self, v: u64) {
        let c = &self.counts[self.index(v)];
        c.set(c.get().wrapping_add(1));
        self.sum.set(self.sum.get().wrapping_add(v));
    }

    /// A copy of the counts.
    pub(crate) fn snapshot(&self) -> Histogram {
        Histogram {
            first_exp: self.first_exp,
            counts: self.counts[..=N].iter().map(Cell::get).collect(),
            sum: self.sum.get(),
        }
    }
}

/// A snapshot of a log-bucketed histogram: bucket `i` counts the values
/// above the previous bucket's bound and up to `2^(first_exp + i)`; the last
/// bucket counts the values above every bound.
///
/// Read it with [`Histogram::count`], [`Histogram::sum`],
/// [`Histogram::buckets`] (cumulative, the Prometheus way) and
/// [`Histogram::quantile`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    first_exp: u32,
    /// Counts per bucket, not cumulative; the last one is the overflow.
    counts: Vec<u64>,
    sum: u64,
}

impl Histogram {
    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, c| a.wrapping_add(*c))
    }

    /// Sum of the values recorded (wrapping).
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// The buckets in increasing order, as `(upper bound, values at or
    /// below it)`; the last has no bound (`None`, Prometheus' `+Inf`) and
    /// counts every value.
    pub fn buckets(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        let last = self.counts.len().saturating_sub(1);
        let mut acc = 0u64;
        // An empty snapshot (`Histogram::default()`) still has its `+Inf`
        // bucket.
        let empty = self.counts.is_empty().then_some((None, 0));
        self.counts
            .iter()
            .enumerate()
            .map(move |(i, c)| {
                acc = acc.wrapping_add(*c);
                let bound = (i < last).then(|| 1u64 << (self.first_exp + i as u32));
                (bound, acc)
            })
            .chain(empty)
    }

    /// The upper bound of the bucket that holds the `q`-quantile (`q` in
    /// 0..=1): at least `q` of the values are at or below it. `None` when
    /// nothing was recorded or the quantile lies in the overflow bucket.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        self.buckets()
            .find(|(_, cumulative)| *cumulative >= rank)
            .and_then(|(bound, _)| bound)
    }

    /// The difference `self - earlier` of two snapshots of the same
    /// histogram (what was recorded in between).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            first_exp: self.first_exp,
            counts: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, c)| c.wrapping_sub(earlier.counts.get(i).copied().unwrap_or(0)))
                .collect(),
            sum: self.sum.wrapping_sub(earlier.sum),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_bucket_of_their_power_of_two() {
        let h = Log2::<4>::new(3); // bounds 8, 16, 32, 64, then +Inf
        for v in [0, 1, 8, 9, 16, 17, 64, 65, u64::MAX] {
            h.record(v);
        }
        let s = h.snapshot();
        let b: Vec<_> = s.buckets().collect();
        assert_eq!(
            b,
            vec![
                (Some(8), 3),
                (Some(16), 5),
                (Some(32), 6),
                (Some(64), 7),
                (None, 9)
            ]
        );
        assert_eq!(s.count(), 9);
        assert_eq!(
            s.sum(),
            [0u64, 1, 8, 9, 16, 17, 64, 65]
                .iter()
                .sum::<u64>()
                .wrapping_add(u64::MAX)
        );
    }

    #[test]
    fn every_value_is_at_or_below_its_bucket_bound_and_above_the_previous() {
        let h = Log2::<20>::new(0);
        for v in 0..5000u64 {
            let i = h.index(v);
            if i < 20 {
                assert!(v <= 1 << i, "{v} in bucket {i}");
            }
            if i > 0 {
                assert!(v > 1 << (i - 1), "{v} in bucket {i}");
            }
        }
    }

    #[test]
    fn quantiles_and_differences() {
        let h = Log2::<10>::new(0);
        for _ in 0..90 {
            h.record(3); // bucket le=4
        }
        let before = h.snapshot();
        for _ in 0..10 {
            h.record(100); // bucket le=128
        }
        let s = h.snapshot();
        assert_eq!(s.quantile(0.5), Some(4));
        assert_eq!(s.quantile(0.9), Some(4));
        assert_eq!(s.quantile(0.91), Some(128));
        assert_eq!(s.quantile(1.0), Some(128));
        let d = s.since(&before);
        assert_eq!(d.count(), 10);
        assert_eq!(d.sum(), 1000);
        assert_eq!(d.quantile(0.0), Some(128));
        assert_eq!(Histogram::default().quantile(0.5), None);
        assert_eq!(
            Histogram::default().buckets().collect::<Vec<_>>(),
            vec![(None, 0)]
        );
        h.record(1 << 20); // overflow
        assert_eq!(h.snapshot().quantile(1.0), None);
    }
}
