//! Pre-aggregation: fold records into one delta per (entity, bucket) for the
//! current batch, so a flush writes each distinct row once.

use crate::error::PipelineError;
use crate::monoid::Monoid;
use crate::pipeline::Pipeline;
use crate::record::Record;
use crate::store::{RowDelta, RowKey};
use crate::window::BucketKey;
use hashbrown::{DefaultHashBuilder, HashTable};
use std::ops::Range;
use std::sync::{Mutex, PoisonError};
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
    /// The live default: 50,000 rows or 5 seconds.
    fn default() -> Self {
        FlushPolicy {
            max_keys: 50_000,
            max_age: Duration::from_secs(5),
        }
    }
}

impl FlushPolicy {
    /// The backfill default: 250,000 rows or 30 seconds.
    ///
    /// History arrives far faster than any store takes writes, and every
    /// row of a batch is one store write (one DynamoDB update), so a
    /// backfill folds more per batch than live does. On the snapshot
    /// benchmark's Spark-shaped export (20M events, 3M entity x day rows,
    /// hourly files, two lanes), 250,000-row batches write 3.7M row deltas
    /// where the live default writes 14.3M. The cost is memory (about 100
    /// bytes per held row per lane) and the records a crashed batch
    /// re-reads.
    pub fn backfill() -> Self {
        FlushPolicy {
            max_keys: 250_000,
            max_age: Duration::from_secs(30),
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

/// One row of the batch; its key moves into the row delta when the batch
/// is taken.
struct Slot<V> {
    key: RowKey,
    value: V,
}

/// A folded-later key and input: the entity is `text[start..end]` of its
/// partition.
struct Staged<I> {
    hash: u64,
    bucket: BucketKey,
    start: usize,
    end: usize,
    input: I,
}

/// One hash partition of the batch: its rows, and what was pushed to them
/// since the last fold.
struct Part<V, I> {
    cells: HashTable<Slot<V>>,
    staged: Vec<Staged<I>>,
    text: String,
}

/// The batch: `PARTS` partitions by key hash, and how many records are
/// staged in them.
struct Parts<V, I> {
    parts: Vec<Part<V, I>>,
    rows: usize,
    staged: usize,
}

/// Partitions of a batch: enough that one partition's rows stay in a CPU's
/// own cache while its staged records fold into them (250,000 rows of
/// 40-byte slots are 625 KB a partition), and few enough that staging
/// writes to few places at once. Every record staged writes the end of
/// two buffers of its partition, and with many partitions those writes
/// miss the cache (the ends fill at the same rate, so they likely sit at
/// the same page offsets and compete for the same cache sets). On a 2-core x86 VM, staging alone cost 140 ns a record
/// at 256 partitions (512 ends) and 25 ns at 16; the snapshot benchmark's
/// Parquet scan + Aggregator went from 3.0-4.0 s to 2.0-2.4 s
/// (`cargo bench -p murmur-source-snapshot --bench snapshot`).
const PARTS: usize = 16;

/// Folds records of one pipeline into `(entity, bucket) -> value` for the
/// current batch. Works for every monoid, sketches included.
///
/// [`take`](Aggregator::take) returns one delta per row in no particular
/// order: what is deterministic is the set, so the same records always give
/// the same batch. (The stores' fences are per row, so order does not matter
/// to them; a store that benefits from key order, like the embedded B-tree,
/// sorts its own writes.)
///
/// A pushed record is staged in its key's hash partition and folded later,
/// a partition at a time, when enough are staged or when the batch is
/// looked at ([`len`](Self::len), [`should_flush`](Self::should_flush),
/// [`take`](Self::take)). A batch of history holds far more rows than a CPU
/// cache, so folding each record as it comes costs a cache miss per record;
/// folding a partition's records together finds its rows in cache. Nothing
/// of this shows: every method answers as if each record were folded on
/// arrival.
pub struct Aggregator<T, M: Monoid> {
    pipeline: Pipeline<T, M>,
    policy: FlushPolicy,
    hasher: DefaultHashBuilder,
    // Behind a mutex so the `&self` queries can fold what is staged; the
    // `&mut self` methods reach it without locking (`get_mut`).
    batch: Mutex<Parts<M::Value, M::Input>>,
    opened_at: Option<Instant>,
    stats: AggregatorStats,
    keys: Vec<String>,
    last_bucket: LastBucket,
}

/// The bucket of the last pushed record, as the event-time range it covers:
/// history arrives sorted or partitioned by time, so most records fall in
/// the previous record's bucket and skip the division.
struct LastBucket {
    times: Range<i64>,
    index: i64,
}

impl LastBucket {
    /// Covers no time.
    const NONE: LastBucket = LastBucket {
        times: 0..0,
        index: 0,
    };
}

impl<T, M: Monoid> Aggregator<T, M> {
    /// An empty aggregator for `pipeline`.
    pub fn new(pipeline: Pipeline<T, M>, policy: FlushPolicy) -> Self {
        let parts = (0..PARTS)
            .map(|_| Part {
                cells: HashTable::new(),
                staged: Vec::new(),
                text: String::new(),
            })
            .collect();
        Aggregator {
            pipeline,
            policy,
            hasher: DefaultHashBuilder::default(),
            batch: Mutex::new(Parts {
                parts,
                rows: 0,
                staged: 0,
            }),
            opened_at: None,
            stats: AggregatorStats::default(),
            keys: Vec::new(),
            last_bucket: LastBucket::NONE,
        }
    }

    /// Folds one record. `now_ms` decides retention: a record whose bucket
    /// ended more than the retention before `now_ms` is dropped and counted.
    pub fn push(&mut self, record: &Record<T>, now_ms: i64) -> Result<Pushed, PipelineError> {
        self.stats.events_in += 1;
        let bucket = match self.pipeline.window() {
            None => BucketKey::ALL_TIME,
            Some(w) => {
                let t = record.event_time_ms;
                let index = if self.last_bucket.times.contains(&t) {
                    self.last_bucket.index
                } else {
                    // One division per new bucket: the bucket key comes
                    // from the index (`bucket_of` would divide again).
                    let index = w.index_of(t)?;
                    self.last_bucket = LastBucket {
                        times: w.times_of(index),
                        index,
                    };
                    index
                };
                if w.is_expired(index, now_ms) {
                    self.stats.expired_dropped += 1;
                    return Ok(Pushed::Expired);
                }
                BucketKey::from_index(index).ok_or(PipelineError::EventTimeOutOfRange {
                    event_time_ms: record.event_time_ms,
                    granularity_ms: w.granularity_ms(),
                })?
            }
        };
        match self.pipeline.single_key(&record.value) {
            Some(entity) => {
                self.pipeline.check_key(&entity)?;
                let input = self.pipeline.input(&record.value);
                self.stage(&entity, bucket, input);
            }
            None => {
                self.keys.clear();
                self.pipeline.keys_into(&record.value, &mut self.keys);
                // Every key checked before any is staged: a refused record
                // leaves nothing behind.
                for key in &self.keys {
                    self.pipeline.check_key(key)?;
                }
                let input = self.pipeline.input(&record.value);
                let mut keys = std::mem::take(&mut self.keys);
                // Avoid cloning the input for the last (usually only) key.
                if let Some(last) = keys.pop() {
                    for entity in &keys {
                        self.stage(entity, bucket, input.clone());
                    }
                    self.stage(&last, bucket, input);
                }
                keys.clear();
                self.keys = keys;
            }
        }
        if self.opened_at.is_none() {
            self.opened_at = Some(Instant::now());
        }
        let batch = self.batch.get_mut().unwrap_or_else(PoisonError::into_inner);
        // Staging at most half a batch (and at most MAX_STAGED records)
        // keeps its memory near a folded batch's.
        if batch.staged >= (self.policy.max_keys / 2).clamp(MIN_STAGED, MAX_STAGED) {
            batch.fold(&self.hasher, self.pipeline.monoid());
        }
        Ok(Pushed::Folded)
    }

    fn stage(&mut self, entity: &str, bucket: BucketKey, input: M::Input) {
        let hash = RowKey::hash(&self.hasher, entity, bucket);
        let batch = self.batch.get_mut().unwrap_or_else(PoisonError::into_inner);
        // Bits 32 and up pick the partition: the table inside uses the low
        // bits for the slot and the top seven as the tag.
        let part = &mut batch.parts[(hash >> 32) as usize % PARTS];
        let start = part.text.len();
        part.text.push_str(entity);
        part.staged.push(Staged {
            hash,
            bucket,
            start,
            end: part.text.len(),
            input,
        });
        batch.staged += 1;
    }

    /// Whether the batch reached `max_keys` or `max_age`.
    pub fn should_flush(&self) -> bool {
        if self
            .opened_at
            .is_some_and(|t| t.elapsed() >= self.policy.max_age)
        {
            return true;
        }
        let mut batch = self.batch.lock().unwrap_or_else(PoisonError::into_inner);
        // Rows plus staged records bound the rows the batch will hold: fold
        // only when that bound reaches `max_keys`.
        if batch.rows + batch.staged < self.policy.max_keys {
            return false;
        }
        batch.fold(&self.hasher, self.pipeline.monoid());
        batch.rows >= self.policy.max_keys
    }

    /// Distinct rows held.
    pub fn len(&self) -> usize {
        let mut batch = self.batch.lock().unwrap_or_else(PoisonError::into_inner);
        batch.fold(&self.hasher, self.pipeline.monoid());
        batch.rows
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        let batch = self.batch.lock().unwrap_or_else(PoisonError::into_inner);
        batch.rows == 0 && batch.staged == 0
    }

    /// Counters so far.
    pub fn stats(&self) -> AggregatorStats {
        self.stats
    }

    /// The typed values of the batch, in no particular order; empties the
    /// batch.
    pub fn take_values(&mut self) -> Vec<(RowKey, M::Value)> {
        self.drain(|slot| (slot.key, slot.value))
    }

    /// The batch as encoded deltas with expiries, in no particular order;
    /// empties the batch.
    pub fn take(&mut self) -> Vec<RowDelta> {
        let mut rows = Vec::new();
        self.take_into(&mut rows);
        rows
    }

    /// [`take`](Self::take) into `rows` (cleared first), reusing its
    /// memory: a writer that hands back the previous batch's vector does
    /// not allocate (and fault in) a new one per batch.
    pub fn take_into(&mut self, rows: &mut Vec<RowDelta>) {
        let pipeline = self.pipeline.clone();
        let (window, monoid) = (pipeline.window(), pipeline.monoid());
        rows.clear();
        self.drain_into(rows, |slot| RowDelta {
            expires_at: match (window, slot.key.bucket.index()) {
                (Some(w), Some(index)) => w.expires_at_secs(index),
                _ => None,
            },
            delta: monoid.encode(&slot.value),
            key: slot.key,
        });
    }

    /// Folds what is staged, then empties the batch through `row` (counted
    /// in the stats).
    fn drain<R>(&mut self, row: impl FnMut(Slot<M::Value>) -> R) -> Vec<R> {
        let mut rows = Vec::new();
        self.drain_into(&mut rows, row);
        rows
    }

    /// [`drain`](Self::drain) appending to `rows`.
    fn drain_into<R>(&mut self, rows: &mut Vec<R>, row: impl FnMut(Slot<M::Value>) -> R) {
        self.opened_at = None;
        let batch = self.batch.get_mut().unwrap_or_else(PoisonError::into_inner);
        batch.fold(&self.hasher, self.pipeline.monoid());
        let n = std::mem::take(&mut batch.rows);
        self.stats.deltas_out += n as u64;
        rows.reserve(n);
        rows.extend(
            batch
                .parts
                .iter_mut()
                .flat_map(|p| p.cells.drain())
                .map(row),
        );
    }
}

/// Below this many staged records a fold would find too few records per
/// partition to pay for itself.
const MIN_STAGED: usize = 16 * PARTS;

/// The most records staged before a fold, whatever `max_keys` is.
const MAX_STAGED: usize = 1 << 20;

impl<V, I> Parts<V, I> {
    /// Folds every staged record into its partition's rows, a partition at
    /// a time.
    fn fold<M: Monoid<Value = V, Input = I>>(&mut self, hasher: &DefaultHashBuilder, monoid: &M) {
        if self.staged == 0 {
            return;
        }
        for part in &mut self.parts {
            let Part {
                cells,
                staged,
                text,
            } = part;
            if staged.is_empty() {
                continue;
            }
            if staged.len() * 4 >= cells.len() {
                // Stream the partition's rows into cache in memory order before
                // the staged records probe them at random (`black_box` keeps
                // the reads, whose result nothing uses).
                std::hint::black_box(cells.iter().fold(0u64, |a, s| a ^ s.key.bucket.0 as u64));
            }
            for s in staged.drain(..) {
                let entity = &text[s.start..s.end];
                // One probe; the key is only built for a new row.
                let acc = match cells.find_mut(s.hash, |slot| slot.key.is(entity, s.bucket)) {
                    Some(slot) => &mut slot.value,
                    None => {
                        self.rows += 1;
                        let slot = Slot {
                            key: RowKey::new(entity, s.bucket),
                            value: monoid.identity(),
                        };
                        let rehash = |s: &Slot<V>| s.key.row_hash(hasher);
                        &mut cells.insert_unique(s.hash, slot, rehash).into_mut().value
                    }
                };
                monoid.insert(acc, s.input);
            }
            text.clear();
        }
        self.staged = 0;
    }
}
