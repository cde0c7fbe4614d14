//! [`TopK`]: heavy hitters with a deterministic guarantee, as a mergeable
//! Misra–Gries summary.

use super::codec::{self, Reader, decode_error};
use super::{Cell, Kind, Monoid};
use crate::error::MonoidError;
use std::collections::BTreeMap;

/// Largest supported capacity (distinct items kept per summary).
pub const TOPK_MAX_CAPACITY: u32 = 1 << 20;

/// Top-K heavy hitters: a mergeable Misra–Gries summary (Agarwal et al.,
/// "Mergeable summaries", 2012) over string items.
///
/// * Input: one item (one event).
/// * Value: a [`TopKSummary`]: counts of at most `capacity` items, the total
///   number of events `n`, and the total amount subtracted by reductions
///   (the error bound).
///
/// **Guarantee.** [`TopK::top`] returns at most `k` items, by estimated count
/// descending then name ascending, and that list contains **every item whose
/// true count exceeds `n / (k + 1)`** — for any stream, any partition into
/// partial summaries and any merge order. Each estimate is a lower bound:
/// `true - max_error <= estimate <= true`, with `max_error <= n / (capacity + 1)`.
///
/// Why: while a summary holds more than `capacity` items, the
/// `(capacity + 1)`-th largest count `d` is subtracted from every count and
/// non-positive ones are dropped; `d` is added to the error `D`. Each such
/// step removes at least `(capacity + 1) d` from the stored counts, so
/// `(capacity + 1) D <= n`, and it removes at most `d` from any one item.
/// Write `R_y = f_y - estimate_y` for what reductions took from item `y`
/// (`R_h <= D`, `sum_y R_y >= (capacity + 1) D`). If a heavy item `h`
/// (`f_h > n/(k+1)`) were pushed out of the top `k`, `k` other items `x`
/// would have `estimate_x >= estimate_h`, i.e. `f_x >= f_h - R_h + R_x`, so
/// `n >= f_h + sum_x f_x + sum_rest R_rest >= (k + 1) f_h - (k + 1) R_h +
/// (capacity + 1) D >= (k + 1) f_h + (capacity - k) D > n` — a
/// contradiction, because `capacity >= k` (enforced by [`TopK::new`]). The
/// argument holds for any merge tree, since it only counts what reductions
/// removed.
///
/// **Algebra, stated plainly.**
/// * Combine is always *commutative*, byte-exact: the merge sums counts and
///   the reduction is a deterministic function of the summed map.
/// * Combine is *exactly associative* (byte-exact) **while the number of
///   distinct items in the combined data is at most `capacity`**: then no
///   reduction ever runs and every count is exact.
/// * Beyond `capacity` distinct items, Misra–Gries merges are **not** exactly
///   associative: which items survive, and their estimates, depend on how the
///   stream was split and merged. The guarantee above holds for every merge
///   tree, but two replicas that merged the same partials in a different
///   order may hold different bytes. Choose `capacity` above the expected
///   number of distinct items per row if byte-exact results matter.
///
/// We know of no bounded design that is exactly associative *and* keeps a
/// deterministic guarantee: a result that is a function of the event
/// multiset alone, computed through bounded merges, is in effect a
/// homomorphic (linear) sketch such as Count-Min or Count-Sketch;
/// those are exactly associative but only give probabilistic heavy-hitter
/// guarantees and cannot name the items without storing candidate keys —
/// and keeping a bounded candidate set is again order-dependent. Exact
/// associativity *and* the deterministic guarantee would need unbounded
/// exact counts (a [`Map`](super::Map) of [`Count`](super::Count)).
///
/// Not idempotent (`combine(x, x)` doubles counts): rows are fenced.
///
/// Combining or decoding summaries whose `k` or `capacity` differ from this
/// monoid's is a [`MonoidError::ParameterMismatch`].
///
/// Encoding: header, `k` (`u32`), `capacity` (`u32`), `n` (`u64`), error
/// (`u64`), item count (`u32`), then `(item, count u64)` pairs by ascending
/// item; decoding checks order, bounds and the invariants
/// `sum(counts) + (capacity + 1) * error <= n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopK {
    k: u32,
    capacity: u32,
}

impl TopK {
    /// Top-`k` keeping up to `capacity` items per summary; requires
    /// `k >= 1` and `k <= capacity <=` [`TOPK_MAX_CAPACITY`]. A larger
    /// capacity tightens the estimates (`max_error <= n / (capacity + 1)`)
    /// and widens the range where combine is exactly associative.
    pub fn new(k: u32, capacity: u32) -> Result<Self, MonoidError> {
        let config = |reason: String| MonoidError::Config {
            kind: Kind::TopK,
            reason,
        };
        if k == 0 {
            return Err(config("k must be at least 1".into()));
        }
        if capacity < k {
            return Err(config(format!(
                "capacity {capacity} must be at least k = {k}"
            )));
        }
        if capacity > TOPK_MAX_CAPACITY {
            return Err(config(format!(
                "capacity {capacity} exceeds {TOPK_MAX_CAPACITY}"
            )));
        }
        Ok(TopK { k, capacity })
    }

    /// Top-`k` with the default capacity of `8k` (`max_error <= n / (8k + 1)`).
    pub fn with_k(k: u32) -> Result<Self, MonoidError> {
        let capacity = u32::try_from(u64::from(k) * 8).unwrap_or(u32::MAX);
        Self::new(k, capacity)
    }

    /// How many items [`TopK::top`] returns at most.
    pub fn k(&self) -> u32 {
        self.k
    }

    /// How many distinct items a summary keeps.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The heaviest (at most `k`) items with their estimated counts, by count
    /// descending then item ascending. Includes every item whose true count
    /// exceeds `n / (k + 1)`.
    pub fn top(&self, value: &TopKSummary) -> Vec<(String, u64)> {
        value.top()
    }

    fn check(&self, value: &TopKSummary) -> Result<(), MonoidError> {
        check_params(self.k, self.capacity, value.k, value.capacity)
    }
}

fn check_params(
    k: u32,
    capacity: u32,
    other_k: u32,
    other_capacity: u32,
) -> Result<(), MonoidError> {
    if k != other_k {
        return Err(MonoidError::ParameterMismatch {
            kind: Kind::TopK,
            parameter: "k",
            left: k.to_string(),
            right: other_k.to_string(),
        });
    }
    if capacity != other_capacity {
        return Err(MonoidError::ParameterMismatch {
            kind: Kind::TopK,
            parameter: "capacity",
            left: capacity.to_string(),
            right: other_capacity.to_string(),
        });
    }
    Ok(())
}

/// A Misra–Gries summary: see [`TopK`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopKSummary {
    k: u32,
    capacity: u32,
    counts: BTreeMap<String, u64>,
    total: u64,
    error: u64,
}

impl TopKSummary {
    /// The `k` this summary reports.
    pub fn k(&self) -> u32 {
        self.k
    }

    /// The number of distinct items this summary keeps at most.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The kept items with their estimated (lower-bound) counts.
    pub fn counts(&self) -> &BTreeMap<String, u64> {
        &self.counts
    }

    /// `n`: the number of events folded in.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The largest possible underestimate of any item's count (`<= n /
    /// (capacity + 1)`); 0 means every count is exact.
    pub fn max_error(&self) -> u64 {
        self.error
    }

    /// The estimated (lower-bound) count of `item`; 0 if not kept.
    pub fn estimate(&self, item: &str) -> u64 {
        self.counts.get(item).copied().unwrap_or(0)
    }

    /// The heaviest (at most `k`) items, by count descending then item
    /// ascending.
    pub fn top(&self) -> Vec<(String, u64)> {
        let mut items: Vec<(&String, u64)> = self.counts.iter().map(|(s, &c)| (s, c)).collect();
        items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        items.truncate(self.k as usize);
        items.into_iter().map(|(s, c)| (s.clone(), c)).collect()
    }

    /// The Misra–Gries reduction: while over capacity, subtract the
    /// `(capacity + 1)`-th largest count from all and drop non-positive ones.
    fn reduce(&mut self) {
        let capacity = self.capacity as usize;
        if self.counts.len() <= capacity {
            return;
        }
        let mut values: Vec<u64> = self.counts.values().copied().collect();
        let (_, &mut d, _) = values.select_nth_unstable_by(capacity, |a, b| b.cmp(a));
        self.counts.retain(|_, c| {
            if *c > d {
                *c -= d;
                true
            } else {
                false
            }
        });
        self.error = self.error.saturating_add(d);
    }
}

impl Monoid for TopK {
    type Input = String;
    type Value = TopKSummary;

    fn kind(&self) -> Kind {
        Kind::TopK
    }
    fn identity(&self) -> TopKSummary {
        TopKSummary {
            k: self.k,
            capacity: self.capacity,
            counts: BTreeMap::new(),
            total: 0,
            error: 0,
        }
    }
    /// Counts one event of `input` (with the accumulator's own capacity);
    /// equivalent to combining a one-event summary.
    fn insert(&self, acc: &mut TopKSummary, input: String) {
        match acc.counts.get_mut(&input) {
            Some(c) => *c = c.saturating_add(1),
            None => {
                acc.counts.insert(input, 1);
            }
        }
        acc.total = acc.total.saturating_add(1);
        acc.reduce();
    }
    fn combine_into(&self, acc: &mut TopKSummary, other: &TopKSummary) -> Result<(), MonoidError> {
        self.check(acc)?;
        self.check(other)?;
        for (item, &c) in &other.counts {
            match acc.counts.get_mut(item) {
                Some(a) => *a = a.saturating_add(c),
                None => {
                    acc.counts.insert(item.clone(), c);
                }
            }
        }
        acc.total = acc.total.saturating_add(other.total);
        acc.error = acc.error.saturating_add(other.error);
        acc.reduce();
        Ok(())
    }
    fn is_idempotent(&self) -> bool {
        false
    }
    fn encode(&self, value: &TopKSummary) -> Cell {
        let size: usize = value.counts.keys().map(|s| 12 + s.len()).sum();
        let mut out = codec::header(Kind::TopK, 28 + size);
        out.extend_from_slice(&value.k.to_le_bytes());
        out.extend_from_slice(&value.capacity.to_le_bytes());
        out.extend_from_slice(&value.total.to_le_bytes());
        out.extend_from_slice(&value.error.to_le_bytes());
        out.extend_from_slice(&(value.counts.len() as u32).to_le_bytes());
        for (item, c) in &value.counts {
            codec::put_string(&mut out, item);
            out.extend_from_slice(&c.to_le_bytes());
        }
        Cell::Bytes(out)
    }
    fn decode(&self, cell: &Cell) -> Result<TopKSummary, MonoidError> {
        let kind = Kind::TopK;
        let mut r = Reader::new(kind, codec::payload(kind, cell)?);
        let k = r.u32()?;
        let capacity = r.u32()?;
        check_params(self.k, self.capacity, k, capacity)?;
        let total = r.u64()?;
        let error = r.u64()?;
        let len = r.u32()?;
        if len > capacity {
            return Err(decode_error(
                kind,
                format!("{len} items exceed capacity {capacity}"),
            ));
        }
        let mut counts = BTreeMap::new();
        let mut sum: u128 = 0;
        for _ in 0..len {
            let item = r.string()?;
            let c = r.u64()?;
            if c == 0 {
                return Err(decode_error(kind, "zero count"));
            }
            if counts
                .last_key_value()
                .is_some_and(|(last, _): (&String, _)| *last >= item)
            {
                return Err(decode_error(kind, "items not strictly ascending"));
            }
            sum += u128::from(c);
            counts.insert(item, c);
        }
        r.finish()?;
        if sum + (u128::from(capacity) + 1) * u128::from(error) > u128::from(total) {
            return Err(decode_error(
                kind,
                format!("counts {sum} and error {error} inconsistent with total {total}"),
            ));
        }
        Ok(TopKSummary {
            k,
            capacity,
            counts,
            total,
            error,
        })
    }
}
