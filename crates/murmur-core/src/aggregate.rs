//! Pre-aggregation: fold records into one delta per (entity, bucket) for the
//! current batch, so a flush writes each distinct row once.

use crate::error::PipelineError;
use crate::monoid::Monoid;
use crate::pipeline::Pipeline;
use crate::record::Record;
use crate::store::{RowDelta, RowKey};
use crate::window::BucketKey;
use hashbrown::{Equivalent, HashMap};
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When an [`Aggregator`] asks to be flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    /// Flush once this many distinct (entity, bucket) rows are held.
    pub max_keys: usize,
    /// Flush once the oldest unflushed event was folded this long ago (the
    /// live latency bound).
    pub max_age: Duration,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy {
            max_keys: 50_000,
            max_age: Duration::from_secs(5),
        }
    }
}

/// Counters of an [`Aggregator`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AggregatorStats {
    /// Records pushed.
    pub events_in: u64,
    /// Records dropped because their bucket was already past retention.
    pub expired_dropped: u64,
    /// Row deltas handed out by [`Aggregator::take`].
    pub deltas_out: u64,
}

/// What [`Aggregator::push`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Folded into the batch.
    Folded,
    /// Dropped (and counted): its bucket is past retention.
    Expired,
}

/// Borrowed form of [`RowKey`] for lookups without allocating.
#[derive(Hash)]
struct KeyRef<'a> {
    entity: &'a str,
    bucket: BucketKey,
}

impl Equivalent<RowKey> for KeyRef<'_> {
    fn equivalent(&self, key: &RowKey) -> bool {
        self.bucket == key.bucket && self.entity == &*key.entity
    }
}

/// Folds records of one pipeline into `(entity, bucket) -> value` for the
/// current batch. Works for every monoid, sketches included.
///
/// [`take`](Aggregator::take) returns the batch's deltas sorted by row key,
/// so the same records always give the same batch.
pub struct Aggregator<T, M: Monoid> {
    pipeline: Pipeline<T, M>,
    policy: FlushPolicy,
    cells: HashMap<RowKey, M::Value>,
    opened_at: Option<Instant>,
    stats: AggregatorStats,
    keys: Vec<String>,
}

impl<T, M: Monoid> Aggregator<T, M> {
    /// An empty aggregator for `pipeline`.
    pub fn new(pipeline: Pipeline<T, M>, policy: FlushPolicy) -> Self {
        Aggregator {
            pipeline,
            policy,
            cells: HashMap::new(),
            opened_at: None,
            stats: AggregatorStats::default(),
            keys: Vec::new(),
        }
    }

    /// Folds one record. `now_ms` decides retention: a record whose bucket
    /// ended more than the retention before `now_ms` is dropped and counted.
    pub fn push(&mut self, record: &Record<T>, now_ms: i64) -> Result<Pushed, PipelineError> {
        self.stats.events_in += 1;
        let bucket = match self.pipeline.window() {
            None => BucketKey::ALL_TIME,
            Some(w) => {
                let index = w.index_of(record.event_time_ms)?;
                if w.is_expired(index, now_ms) {
                    self.stats.expired_dropped += 1;
                    return Ok(Pushed::Expired);
                }
                w.bucket_of(record.event_time_ms)?
            }
        };
        self.keys.clear();
        self.pipeline.keys_into(&record.value, &mut self.keys);
        let input = self.pipeline.input(&record.value);
        let monoid = self.pipeline.monoid();
        let last = self.keys.len().saturating_sub(1);
        for (i, entity) in self.keys.drain(..).enumerate() {
            let probe = KeyRef {
                entity: &entity,
                bucket,
            };
            let acc = match self.cells.get_mut(&probe) {
                Some(acc) => acc,
                None => self
                    .cells
                    .entry(RowKey::new(Arc::<str>::from(entity), bucket))
                    .or_insert_with(|| monoid.identity()),
            };
            // Avoid cloning the input for the last (usually only) key.
            if i == last {
                monoid.insert(acc, input);
                break;
            }
            monoid.insert(acc, input.clone());
        }
        if self.opened_at.is_none() {
            self.opened_at = Some(Instant::now());
        }
        Ok(Pushed::Folded)
    }

    /// Whether the batch reached `max_keys` or `max_age`.
    pub fn should_flush(&self) -> bool {
        self.cells.len() >= self.policy.max_keys
            || self
                .opened_at
                .is_some_and(|t| t.elapsed() >= self.policy.max_age)
    }

    /// Distinct rows held.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Counters so far.
    pub fn stats(&self) -> AggregatorStats {
        self.stats
    }

    /// The typed values of the batch, sorted by row key; empties the batch.
    pub fn take_values(&mut self) -> Vec<(RowKey, M::Value)> {
        self.opened_at = None;
        let mut rows: Vec<_> = self.cells.drain().collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.stats.deltas_out += rows.len() as u64;
        rows
    }

    /// The batch as encoded deltas with expiries, sorted by row key; empties
    /// the batch.
    pub fn take(&mut self) -> Vec<RowDelta> {
        let window = self.pipeline.window().copied();
        let monoid = self.pipeline.monoid().clone();
        self.take_values()
            .into_iter()
            .map(|(key, value)| RowDelta {
                expires_at: match (window, key.bucket.index()) {
                    (Some(w), Some(index)) => w.expires_at_secs(index),
                    _ => None,
                },
                delta: monoid.encode(&value),
                key,
            })
            .collect()
    }
}
