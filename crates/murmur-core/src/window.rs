//! Tumbling, epoch-aligned time windows.
//!
//! The bucket index of an event is `floor(event_time / granularity)` with
//! euclidean division, so events before 1970 land in negative buckets.
//! Stored bucket keys ([`BucketKey`]) shift non-negative indexes up by one so
//! that key `0` is free for the all-time bucket ([`BucketKey::ALL_TIME`]) and
//! can never collide with a real bucket; the mapping is monotonic, so stored
//! keys sort in time order.

use crate::error::PipelineError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The sort key of a stored row: a window bucket or the all-time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BucketKey(pub i64);

impl BucketKey {
    /// The all-time / unwindowed bucket.
    pub const ALL_TIME: BucketKey = BucketKey(0);

    /// The key of bucket index `index` (`index >= 0` maps to `index + 1`,
    /// negative indexes map to themselves). `None` for `i64::MAX`.
    pub fn from_index(index: i64) -> Option<BucketKey> {
        if index >= 0 {
            index.checked_add(1).map(BucketKey)
        } else {
            Some(BucketKey(index))
        }
    }

    /// The bucket index, or `None` for the all-time bucket.
    pub fn index(self) -> Option<i64> {
        match self.0 {
            0 => None,
            k if k > 0 => Some(k - 1),
            k => Some(k),
        }
    }
}

/// A tumbling window with optional retention.
///
/// Deserializing checks what [`Window::new`] checks: a granularity of at
/// least one millisecond (and a retention that is not negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WindowFields")]
pub struct Window {
    granularity_ms: i64,
    retention_ms: Option<i64>,
}

/// The serialized fields of a [`Window`], before they are checked.
#[derive(Deserialize)]
struct WindowFields {
    granularity_ms: i64,
    retention_ms: Option<i64>,
}

impl TryFrom<WindowFields> for Window {
    type Error = String;

    fn try_from(f: WindowFields) -> Result<Window, String> {
        if f.granularity_ms <= 0 {
            return Err(format!(
                "window granularity must be at least 1 ms, got {} ms",
                f.granularity_ms
            ));
        }
        if f.retention_ms.is_some_and(|r| r < 0) {
            return Err(format!(
                "window retention must not be negative, got {:?} ms",
                f.retention_ms
            ));
        }
        Ok(Window {
            granularity_ms: f.granularity_ms,
            retention_ms: f.retention_ms,
        })
    }
}

/// Largest supported |event time|: about ±292,000 years.
const MAX_ABS_TIME_MS: i64 = i64::MAX / 1_000;

impl Window {
    /// The largest |event time| in milliseconds a window accepts (about
    /// 292,000 years from 1970, so that times in seconds or microseconds
    /// convert without overflow); [`index_of`](Self::index_of) refuses
    /// times beyond it.
    pub const MAX_ABS_TIME_MS: i64 = MAX_ABS_TIME_MS;

    /// A window of `granularity` (at least one millisecond).
    pub fn new(granularity: Duration) -> Result<Window, PipelineError> {
        let ms = i64::try_from(granularity.as_millis()).unwrap_or(i64::MAX);
        if ms <= 0 {
            return Err(PipelineError::Definition {
                pipeline: String::new(),
                reason: format!("window granularity must be at least 1 ms, got {granularity:?}"),
            });
        }
        Ok(Window {
            granularity_ms: ms,
            retention_ms: None,
        })
    }

    /// One-minute buckets.
    pub fn minute() -> Window {
        Window {
            granularity_ms: 60_000,
            retention_ms: None,
        }
    }

    /// One-hour buckets.
    pub fn hour() -> Window {
        Window {
            granularity_ms: 3_600_000,
            retention_ms: None,
        }
    }

    /// One-day (UTC) buckets.
    pub fn day() -> Window {
        Window {
            granularity_ms: 86_400_000,
            retention_ms: None,
        }
    }

    /// Keeps each bucket for `retention` after the bucket's end.
    pub fn with_retention(mut self, retention: Duration) -> Window {
        self.retention_ms = Some(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        self
    }

    /// Granularity in milliseconds.
    pub fn granularity_ms(&self) -> i64 {
        self.granularity_ms
    }

    /// Retention in milliseconds, if any.
    pub fn retention_ms(&self) -> Option<i64> {
        self.retention_ms
    }

    /// The bucket index of an event time (euclidean division).
    pub fn index_of(&self, event_time_ms: i64) -> Result<i64, PipelineError> {
        self.check_time(event_time_ms)?;
        Ok(event_time_ms.div_euclid(self.granularity_ms))
    }

    /// Whether [`index_of`](Self::index_of) takes `event_time_ms`, without
    /// its division.
    pub(crate) fn check_time(&self, event_time_ms: i64) -> Result<(), PipelineError> {
        if event_time_ms.unsigned_abs() > MAX_ABS_TIME_MS as u64 {
            return Err(PipelineError::EventTimeOutOfRange {
                event_time_ms,
                granularity_ms: self.granularity_ms,
            });
        }
        Ok(())
    }

    /// The event times [`index_of`](Self::index_of) maps to `index`
    /// without an error: the bucket, clipped to the accepted times.
    pub(crate) fn times_of(&self, index: i64) -> std::ops::Range<i64> {
        self.start_ms(index).max(-MAX_ABS_TIME_MS)..self.end_ms(index).min(MAX_ABS_TIME_MS + 1)
    }

    /// The stored key of the bucket holding `event_time_ms`.
    pub fn bucket_of(&self, event_time_ms: i64) -> Result<BucketKey, PipelineError> {
        let index = self.index_of(event_time_ms)?;
        // |index| <= MAX_ABS_TIME_MS, so +1 cannot overflow.
        Ok(BucketKey::from_index(index).expect("bounded index"))
    }

    /// Start of bucket `index` (inclusive), ms.
    pub fn start_ms(&self, index: i64) -> i64 {
        index.saturating_mul(self.granularity_ms)
    }

    /// End of bucket `index` (exclusive), ms.
    pub fn end_ms(&self, index: i64) -> i64 {
        index.saturating_add(1).saturating_mul(self.granularity_ms)
    }

    /// Expiry of bucket `index` in epoch **seconds** (DynamoDB TTL):
    /// bucket end + retention, rounded up; `None` without retention.
    pub fn expires_at_secs(&self, index: i64) -> Option<i64> {
        let retention = self.retention_ms?;
        let expiry_ms = self.end_ms(index).saturating_add(retention);
        Some(expiry_ms.div_euclid(1000) + i64::from(expiry_ms.rem_euclid(1000) != 0))
    }

    /// Whether bucket `index` is already past retention at `now_ms`.
    pub fn is_expired(&self, index: i64, now_ms: i64) -> bool {
        match self.retention_ms {
            Some(r) => self.end_ms(index).saturating_add(r) <= now_ms,
            None => false,
        }
    }

    /// Keys of the last `n` buckets ending with the one holding `now_ms`,
    /// oldest first.
    pub fn last_n(&self, now_ms: i64, n: usize) -> Result<Vec<BucketKey>, PipelineError> {
        let current = self.index_of(now_ms)?;
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        Ok((0..n)
            .rev()
            .filter_map(|back| current.checked_sub(back))
            .filter_map(BucketKey::from_index)
            .collect())
    }

    /// Keys of the buckets overlapping the inclusive range `[from_ms, to_ms]`,
    /// oldest first; empty when `from_ms > to_ms`.
    pub fn range(&self, from_ms: i64, to_ms: i64) -> Result<Vec<BucketKey>, PipelineError> {
        if from_ms > to_ms {
            return Ok(Vec::new());
        }
        let (a, b) = (self.index_of(from_ms)?, self.index_of(to_ms)?);
        Ok((a..=b).filter_map(BucketKey::from_index).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_before_1970_use_euclidean_division() {
        let w = Window::hour();
        assert_eq!(w.index_of(-1).unwrap(), -1);
        assert_eq!(w.index_of(-3_600_000).unwrap(), -1);
        assert_eq!(w.index_of(-3_600_001).unwrap(), -2);
        assert_eq!(w.index_of(0).unwrap(), 0);
        assert_eq!(w.index_of(3_599_999).unwrap(), 0);
        // 1969-12-31T23:59:59.999Z is in the bucket starting 1969-12-31T23:00Z.
        assert_eq!(w.start_ms(w.index_of(-1).unwrap()), -3_600_000);
    }

    #[test]
    fn all_time_bucket_never_collides() {
        let w = Window::new(Duration::from_millis(1)).unwrap();
        for t in [-2, -1, 0, 1, 2, MAX_ABS_TIME_MS, -MAX_ABS_TIME_MS] {
            let k = w.bucket_of(t).unwrap();
            assert_ne!(k, BucketKey::ALL_TIME, "time {t}");
            assert_eq!(k.index(), Some(t));
        }
        assert_eq!(BucketKey::ALL_TIME.index(), None);
        assert!(w.bucket_of(i64::MAX).is_err());
        assert!(w.bucket_of(i64::MIN).is_err());
    }

    #[test]
    fn deserializing_checks_the_window() {
        let w = Window::hour().with_retention(Duration::from_secs(60));
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(serde_json::from_str::<Window>(&json).unwrap(), w);
        let zero = serde_json::from_str::<Window>(r#"{"granularity_ms":0,"retention_ms":null}"#)
            .unwrap_err();
        assert!(
            zero.to_string().contains("at least 1 ms, got 0 ms"),
            "{zero}"
        );
        let negative =
            serde_json::from_str::<Window>(r#"{"granularity_ms":1000,"retention_ms":-1}"#)
                .unwrap_err();
        assert!(
            negative.to_string().contains("must not be negative"),
            "{negative}"
        );
    }

    #[test]
    fn times_of_a_bucket_are_the_times_that_map_to_it() {
        let w = Window::day();
        for t in [-86_400_001, -1, 0, 86_399_999, 1_778_248_800_000] {
            let index = w.index_of(t).unwrap();
            let times = w.times_of(index);
            assert!(times.contains(&t), "time {t}");
            assert_eq!(w.index_of(times.start).unwrap(), index);
            assert_eq!(w.index_of(times.end - 1).unwrap(), index);
            assert_ne!(w.index_of(times.start - 1).unwrap(), index);
            assert_ne!(w.index_of(times.end).unwrap(), index);
        }
        // The buckets at the edges stop at the accepted times.
        let edge = w.index_of(MAX_ABS_TIME_MS).unwrap();
        assert_eq!(w.times_of(edge).end, MAX_ABS_TIME_MS + 1);
        assert!(w.index_of(MAX_ABS_TIME_MS + 1).is_err());
        let edge = w.index_of(-MAX_ABS_TIME_MS).unwrap();
        assert_eq!(w.times_of(edge).start, -MAX_ABS_TIME_MS);
        assert!(w.index_of(-MAX_ABS_TIME_MS - 1).is_err());
    }

    #[test]
    fn bucket_keys_sort_in_time_order() {
        let w = Window::day();
        let times = [
            -200_000_000_000,
            -86_400_001,
            -1,
            0,
            1,
            86_400_000,
            1_700_000_000_000,
        ];
        let keys: Vec<_> = times.iter().map(|t| w.bucket_of(*t).unwrap()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn expiry_is_bucket_end_plus_retention() {
        let w = Window::day().with_retention(Duration::from_secs(7 * 86_400));
        // 2026-05-08T14:00Z
        let t = 1_778_248_800_000;
        let idx = w.index_of(t).unwrap();
        let end = w.end_ms(idx);
        assert_eq!(end, 1_778_284_800_000); // 2026-05-09T00:00Z
        assert_eq!(w.expires_at_secs(idx), Some(end / 1000 + 7 * 86_400));
        assert!(!w.is_expired(idx, end + 7 * 86_400_000 - 1));
        assert!(w.is_expired(idx, end + 7 * 86_400_000));
        assert_eq!(Window::day().expires_at_secs(idx), None);
    }

    #[test]
    fn last_n_and_range() {
        let w = Window::hour();
        let now = 10 * 3_600_000 + 5;
        let keys = w.last_n(now, 3).unwrap();
        assert_eq!(keys, vec![BucketKey(9), BucketKey(10), BucketKey(11)]);
        let r = w.range(3_600_000, 3 * 3_600_000).unwrap();
        assert_eq!(
            r.iter().map(|k| k.index().unwrap()).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(w.range(5, 4).unwrap().is_empty());
        assert!(w.last_n(now, 0).unwrap().is_empty());
    }
}
