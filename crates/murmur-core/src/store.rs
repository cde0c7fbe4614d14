//! The store contracts: a state store that applies fenced batches exactly
//! once, and a checkpoint store holding batch intents, lane progress and
//! bootstrap run records.
//!
//! # Fenced batch writes
//!
//! Work is split into *lanes* ([`LaneId`]). Within a lane, batches get
//! consecutive sequence numbers and deterministic contents. The runner:
//!
//! 1. records the batch's [`BatchIntent`] with [`CheckpointStore::begin_batch`];
//! 2. applies its rows with [`StateStore::apply`]: each row write of batch
//!    `(lane, seq)` applies only if the row's fence for `lane` is below `seq`
//!    and sets the fence to `seq` in the same write — re-applying a batch,
//!    whole or after a crash part-way, changes nothing that already landed;
//! 3. advances the lane with [`CheckpointStore::commit_batch`].
//!
//! On restart a lane with a pending intent re-reads exactly that range and
//! re-applies it with the same `seq`. Idempotent monoids skip the fence (a
//! replay of `max` or of a HyperLogLog union is harmless).
//!
//! [`merge_row`] and the [`LaneState`] transitions are the pure core of this
//! protocol; the memory and embedded stores call them directly and the
//! DynamoDB store expresses the same rules as condition expressions.

use crate::error::{MonoidError, StoreError};
use crate::handoff::HandoffToken;
use crate::monoid::{Cell, DynMonoid, WriteStrategy};
use crate::record::{LaneId, Position};
use crate::window::BucketKey;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::sync::Arc;

/// The key of a stored row: entity (partition key) and bucket (sort key).
///
/// The entity is a [`CompactString`](compact_str::CompactString): held
/// inline up to 24 bytes, so a key is a plain value, made, moved and
/// compared without a separately allocated string. A batch has a key per
/// row delta (a backfill's, hundreds of thousands), and the
/// [`Aggregator`](crate::Aggregator) and [`MemoryStore`](crate::MemoryStore)
/// keep millions of them in hash tables.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RowKey {
    /// Entity id, e.g. `page:/home` or `hourly:user-42`.
    pub entity: compact_str::CompactString,
    /// Window bucket, or [`BucketKey::ALL_TIME`].
    pub bucket: BucketKey,
}

impl RowKey {
    /// The longest entity id, in bytes: the DynamoDB state table's partition
    /// key is the entity, and DynamoDB holds at most 2048 bytes there. The
    /// [`Aggregator`](crate::Aggregator) refuses longer (and empty) keys
    /// for every store, so a pipeline behaves the same on each.
    pub const MAX_ENTITY_BYTES: usize = 2048;

    /// A row key.
    pub fn new(entity: impl Into<compact_str::CompactString>, bucket: BucketKey) -> Self {
        RowKey {
            entity: entity.into(),
            bucket,
        }
    }

    /// The hash of the key `(entity, bucket)` under `hasher`, as the
    /// aggregator's and the memory store's tables hash their keys.
    pub(crate) fn hash(
        hasher: &impl std::hash::BuildHasher,
        entity: &str,
        bucket: BucketKey,
    ) -> u64 {
        hasher.hash_one((entity, bucket))
    }

    /// This key's own hash (for growing a table).
    pub(crate) fn row_hash(&self, hasher: &impl std::hash::BuildHasher) -> u64 {
        Self::hash(hasher, &self.entity, self.bucket)
    }

    /// Whether this is the key `(entity, bucket)`.
    pub(crate) fn is(&self, entity: &str, bucket: BucketKey) -> bool {
        self.bucket == bucket && self.entity == entity
    }
}

/// One row's delta within a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct RowDelta {
    /// The row.
    pub key: RowKey,
    /// The encoded delta, combined into the stored value.
    pub delta: Cell,
    /// Expiry in epoch seconds (bucket end + retention), if any.
    pub expires_at: Option<i64>,
}

/// A batch of deltas for one lane: at most one delta per row, in a
/// deterministic order.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteBatch {
    /// The lane.
    pub lane: LaneId,
    /// The batch's sequence number within the lane (starting at 1).
    pub seq: u64,
    /// The deltas.
    pub rows: Vec<RowDelta>,
}

/// A stored value as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredValue {
    /// The encoded value.
    pub value: Cell,
    /// Expiry in epoch seconds, if any.
    pub expires_at: Option<i64>,
}

/// What applying a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Rows whose value changed.
    pub rows_written: u64,
    /// Rows skipped because the fence shows this batch already landed there
    /// (or, for idempotent monoids, because the value would not change).
    pub rows_unchanged: u64,
    /// Store requests issued (reads and writes).
    pub requests: u64,
    /// Retried requests (throttling, conflicts, transient errors).
    pub retries: u64,
}

impl ApplyReport {
    /// Adds another report's counters to this one.
    pub fn add(&mut self, other: ApplyReport) {
        self.rows_written += other.rows_written;
        self.rows_unchanged += other.rows_unchanged;
        self.requests += other.requests;
        self.retries += other.retries;
    }
}

/// A store of monoid values keyed by [`RowKey`].
#[async_trait::async_trait]
pub trait StateStore: Send + Sync {
    /// A name for error messages and metrics (`memory`, `embedded:<path>`,
    /// `dynamodb:<table>`).
    fn name(&self) -> &str;

    /// Applies every row of `batch` exactly once (see the module docs). A
    /// replay of the same `(lane, seq)` — whole or after a partial apply — is
    /// a no-op for the rows that already landed.
    async fn apply(
        &self,
        monoid: &dyn DynMonoid,
        batch: &WriteBatch,
    ) -> Result<ApplyReport, StoreError>;

    /// Reads rows, results aligned with `keys`; missing rows are `None`.
    async fn get_many(&self, keys: &[RowKey]) -> Result<Vec<Option<StoredValue>>, StoreError>;

    /// Reads one row.
    async fn get(&self, key: &RowKey) -> Result<Option<StoredValue>, StoreError> {
        let mut rows = self.get_many(std::slice::from_ref(key)).await?;
        Ok(rows.pop().flatten())
    }
}

/// The fences of one row: the highest applied batch sequence number per
/// lane.
///
/// A row is written by few lanes (one per source partition or backfill slot
/// that ever touched its entity), so the fences are a small vector sorted by
/// lane, the first one held inline: the memory and embedded stores keep
/// millions of rows and look a fence up on every write, and most rows of a
/// backfill are written by one lane only (a second one, such as the live
/// lane after the handoff, moves them to a small allocation). It serializes
/// as a map from lane to sequence number.
///
/// ```
/// use murmur_core::LaneId;
/// use murmur_core::store::Fences;
/// let mut fences = Fences::default();
/// assert_eq!(fences.set(&LaneId::new("b"), 3), None);
/// assert_eq!(fences.set(&LaneId::new("a"), 1), None);
/// assert_eq!(fences.set(&LaneId::new("b"), 4), Some(3));
/// assert_eq!(fences.get(&LaneId::new("b")), Some(4));
/// let lanes: Vec<&str> = fences.iter().map(|(l, _)| l.as_str()).collect();
/// assert_eq!(lanes, ["a", "b"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fences(SmallVec<[(LaneId, u64); 1]>);

impl Fences {
    /// Where the lane is (or would go). The same lane handle is tried first:
    /// a writer passes the same `Arc` for every row of its batches.
    fn position(&self, lane: &LaneId) -> Result<usize, usize> {
        match self.0.iter().position(|(l, _)| Arc::ptr_eq(&l.0, &lane.0)) {
            Some(i) => Ok(i),
            None => self.0.binary_search_by(|(l, _)| l.cmp(lane)),
        }
    }

    /// The lane's fence, if the lane ever wrote the row.
    pub fn get(&self, lane: &LaneId) -> Option<u64> {
        self.position(lane).ok().map(|i| self.0[i].1)
    }

    /// Sets the lane's fence; returns the previous one.
    pub fn set(&mut self, lane: &LaneId, seq: u64) -> Option<u64> {
        match self.position(lane) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, seq)),
            Err(i) => {
                self.0.insert(i, (lane.clone(), seq));
                None
            }
        }
    }

    /// The fences, sorted by lane.
    pub fn iter(&self) -> impl Iterator<Item = (&LaneId, u64)> {
        self.0.iter().map(|(l, s)| (l, *s))
    }

    /// Number of lanes with a fence.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no lane has a fence.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(LaneId, u64)> for Fences {
    fn from_iter<I: IntoIterator<Item = (LaneId, u64)>>(iter: I) -> Self {
        let mut fences = Fences::default();
        for (lane, seq) in iter {
            fences.set(&lane, seq);
        }
        fences
    }
}

impl Serialize for Fences {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(l, s)| (l, s)))
    }
}

impl<'de> Deserialize<'de> for Fences {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Fences;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map from lane to sequence number")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Fences, A::Error> {
                let mut fences = Fences::default();
                while let Some((lane, seq)) = map.next_entry::<LaneId, u64>()? {
                    fences.set(&lane, seq);
                }
                Ok(fences)
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// A row as the memory and embedded stores keep it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRow {
    /// The encoded value.
    pub value: Cell,
    /// Expiry in epoch seconds.
    pub expires_at: Option<i64>,
    /// Highest applied batch sequence number per lane (fenced kinds only).
    pub fences: Fences,
    /// Incremented on every write (compare-and-set).
    pub version: u64,
}

impl StoredRow {
    /// The value part.
    pub fn stored_value(&self) -> StoredValue {
        StoredValue {
            value: self.value.clone(),
            expires_at: self.expires_at,
        }
    }
}

/// The outcome of merging one delta into one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Merge {
    /// Write this new row.
    Write(StoredRow),
    /// Nothing to write: the fence shows the batch already landed, or an
    /// idempotent merge would not change the value.
    Unchanged,
}

/// Merges `delta` of batch `(lane, seq)` into `existing`, following the fenced
/// write rules. Pure: stores call it inside their own transaction.
pub fn merge_row(
    monoid: &dyn DynMonoid,
    existing: Option<&StoredRow>,
    delta: &RowDelta,
    lane: &LaneId,
    seq: u64,
) -> Result<Merge, MonoidError> {
    match existing {
        Some(row) => {
            if monoid.write_strategy().is_fenced() && row.fences.get(lane).is_some_and(|f| f >= seq)
            {
                return Ok(Merge::Unchanged);
            }
            let mut row = row.clone();
            Ok(if merge_into(monoid, &mut row, delta, lane, seq)? {
                Merge::Write(row)
            } else {
                Merge::Unchanged
            })
        }
        None => {
            monoid.validate_cell(&delta.delta)?;
            let mut fences = Fences::default();
            if monoid.write_strategy().is_fenced() {
                fences.set(lane, seq);
            }
            Ok(Merge::Write(StoredRow {
                value: delta.delta.clone(),
                expires_at: delta.expires_at,
                fences,
                version: 1,
            }))
        }
    }
}

/// [`merge_row`] into an existing row, in place (for stores that hold rows
/// in memory): returns whether the row changed. Same rule: a fenced kind
/// skips a batch at or below the lane's fence and raises the fence; an
/// idempotent kind skips a merge that changes nothing; the expiry only grows.
pub fn merge_into(
    monoid: &dyn DynMonoid,
    row: &mut StoredRow,
    delta: &RowDelta,
    lane: &LaneId,
    seq: u64,
) -> Result<bool, MonoidError> {
    let fenced = monoid.write_strategy().is_fenced();
    if fenced && row.fences.get(lane).is_some_and(|f| f >= seq) {
        return Ok(false);
    }
    let value = monoid.combine_cells(&row.value, &delta.delta)?;
    let expires_at = row.expires_at.max(delta.expires_at);
    if !fenced && row.value == value && row.expires_at == expires_at {
        return Ok(false);
    }
    row.value = value;
    row.expires_at = expires_at;
    if fenced {
        row.fences.set(lane, seq);
    }
    row.version += 1;
    Ok(true)
}

/// Whether `strategy` needs the stored row before writing (read-modify-write).
pub fn needs_read(strategy: WriteStrategy) -> bool {
    matches!(
        strategy,
        WriteStrategy::MergeIdempotent | WriteStrategy::MergeFenced
    )
}

/// A batch about to be applied: its lane, sequence number and source range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchIntent {
    /// The lane.
    pub lane: LaneId,
    /// The batch's sequence number (committed + 1).
    pub seq: u64,
    /// Source position of the batch's first record (inclusive).
    pub start: Position,
    /// Source position after the batch's last record (exclusive); the lane's
    /// checkpoint once the batch is committed.
    pub end: Position,
    /// Bad records (rejected by the source, dead-lettered) the lane has
    /// read up to `end`, over all its batches: the lane's
    /// [`LaneState::bad_records`] once the batch is committed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bad_records: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Progress of one lane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneState {
    /// The lane.
    pub lane: LaneId,
    /// Sequence number of the last committed batch (0: none yet).
    pub committed_seq: u64,
    /// Where to resume after the committed batches.
    pub position: Position,
    /// A batch whose rows may have been partly applied.
    pub pending: Option<BatchIntent>,
    /// Bad records the lane's committed batches covered (see
    /// [`BatchIntent::bad_records`]), so a limit on bad records holds over
    /// a whole run, across restarts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bad_records: u64,
}

impl LaneState {
    /// A new lane starting at `position`.
    pub fn new(lane: LaneId, position: Position) -> Self {
        LaneState {
            lane,
            committed_seq: 0,
            position,
            pending: None,
            bad_records: 0,
        }
    }

    /// Records `intent` as pending. Re-recording the same pending intent is a
    /// no-op; anything else out of sequence is an error (`reason`).
    pub fn begin(&mut self, intent: &BatchIntent) -> Result<(), String> {
        if let Some(p) = &self.pending {
            if p == intent {
                return Ok(());
            }
            return Err(format!(
                "batch {} is pending; cannot begin batch {} before it is committed",
                p.seq, intent.seq
            ));
        }
        if intent.seq != self.committed_seq + 1 {
            return Err(format!(
                "batch {} does not follow committed batch {}",
                intent.seq, self.committed_seq
            ));
        }
        self.pending = Some(intent.clone());
        Ok(())
    }

    /// Commits pending batch `seq`: the lane's position becomes its end
    /// (and its bad-record count the batch's).
    /// Committing an already committed batch is a no-op.
    pub fn commit(&mut self, seq: u64) -> Result<(), String> {
        if seq <= self.committed_seq {
            return Ok(());
        }
        match self.pending.take() {
            Some(p) if p.seq == seq => {
                self.committed_seq = seq;
                self.position = p.end;
                self.bad_records = p.bad_records;
                Ok(())
            }
            other => {
                let msg = match &other {
                    Some(p) => format!("cannot commit batch {seq}: pending batch is {}", p.seq),
                    None => format!("cannot commit batch {seq}: no batch is pending"),
                };
                self.pending = other;
                Err(msg)
            }
        }
    }
}

/// Status of a bootstrap run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Started, not finished.
    Running,
    /// Finished; the run's handoff token is final.
    Completed,
}

/// The record of one bootstrap (backfill) run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run id.
    pub run_id: String,
    /// Running or completed.
    pub status: RunStatus,
    /// When the run was first begun, epoch ms.
    pub started_at_ms: i64,
    /// When it completed, epoch ms.
    pub completed_at_ms: Option<i64>,
    /// The handoff token, set when the run begins and kept for its whole
    /// life: every resume and every worker of the run uses it (the live
    /// stage must start where the backfill's history ends, and a token taken
    /// again later — a new stream capture, a rewritten manifest — may not).
    /// `None` only in a record begun by a version that kept the token from
    /// completion on.
    pub token: Option<HandoffToken>,
    /// A fingerprint of the run's work plan (its units and lanes), set when
    /// the run begins. A resume that plans differently — the export's
    /// listing changed, or another lane count — is refused, since lane
    /// checkpoints only mean something for the plan they were taken under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

impl RunRecord {
    /// A new running record for the work plan fingerprinted `plan`, with
    /// its handoff `token`.
    pub fn running(run_id: &str, plan: &str, token: &HandoffToken, now_ms: i64) -> Self {
        RunRecord {
            run_id: run_id.to_owned(),
            status: RunStatus::Running,
            started_at_ms: now_ms,
            completed_at_ms: None,
            token: Some(token.clone()),
            plan: Some(plan.to_owned()),
        }
    }

    /// Marks the run completed with `token`. Completing again with the same
    /// token is a no-op; with a token other than the one the run began or
    /// completed with it is an error (`reason`).
    pub fn complete(&mut self, token: &HandoffToken, now_ms: i64) -> Result<(), String> {
        match (&self.status, &self.token) {
            (RunStatus::Completed, Some(t)) if t == token => Ok(()),
            (RunStatus::Completed, t) => Err(format!(
                "already completed with a different handoff token ({})",
                t.as_ref().map(HandoffToken::to_json).unwrap_or_default()
            )),
            (RunStatus::Running, Some(t)) if t != token => Err(format!(
                "begun with a different handoff token ({})",
                t.to_json()
            )),
            (RunStatus::Running, _) => {
                self.status = RunStatus::Completed;
                self.completed_at_ms = Some(now_ms);
                self.token = Some(token.clone());
                Ok(())
            }
        }
    }
}

/// Durable lane progress and bootstrap run records.
#[async_trait::async_trait]
pub trait CheckpointStore: Send + Sync {
    /// A name for error messages.
    fn name(&self) -> &str;

    /// The lane's state, if it was ever initialised.
    async fn lane(&self, lane: &LaneId) -> Result<Option<LaneState>, StoreError>;

    /// Every lane whose id starts with `prefix`, sorted by id.
    async fn lanes(&self, prefix: &str) -> Result<Vec<LaneState>, StoreError>;

    /// Creates the lane at `start` unless it exists; returns its state. This
    /// is how a resolved start position is persisted before consuming.
    async fn init_lane(&self, lane: &LaneId, start: &Position) -> Result<LaneState, StoreError>;

    /// Records a batch intent before any of its rows is written
    /// (see [`LaneState::begin`]).
    async fn begin_batch(&self, intent: &BatchIntent) -> Result<(), StoreError>;

    /// Marks batch `seq` of `lane` durable and advances the lane
    /// (see [`LaneState::commit`]).
    async fn commit_batch(&self, lane: &LaneId, seq: u64) -> Result<LaneState, StoreError>;

    /// The run record, if the run was begun.
    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError>;

    /// Begins a run for the work plan fingerprinted `plan`, with its handoff
    /// `token`, unless it exists (one conditional write: the first of
    /// concurrent callers wins); returns the stored record, which may be
    /// completed — a completed bootstrap is never re-run — or carry the plan
    /// and token it began with, for the caller to compare and adopt.
    async fn begin_run(
        &self,
        run_id: &str,
        plan: &str,
        token: &HandoffToken,
    ) -> Result<RunRecord, StoreError>;

    /// Marks the run completed, in one atomic write; the token must be the
    /// one the run began with (see [`RunRecord::complete`]).
    async fn complete_run(
        &self,
        run_id: &str,
        token: &HandoffToken,
    ) -> Result<RunRecord, StoreError>;
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Outcome of claiming one event id for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This batch owns the event: first claim, or a re-claim by the same
    /// `(lane, seq)` during a replay. Apply it.
    Owned,
    /// Another batch (another lane, or an earlier batch) claimed it first:
    /// the event is a duplicate. Skip it.
    Duplicate,
}

/// Which version of a pipeline's state is active, per alias (the pipeline
/// name): readers and the live worker use the active version; a replay
/// builds a new version beside it and swaps it in.
///
/// A swap is one conditional write that only moves forward: it refuses a
/// version that is not newer than the active one
/// ([`StoreError::StaleSwap`]), so two replays racing, or a late retry of an
/// old one, can never put older state back.
#[async_trait::async_trait]
pub trait AliasStore: Send + Sync {
    /// The active version of `alias`; `None` before the first swap (the
    /// unversioned state, version 0, is in use).
    async fn active(&self, alias: &str) -> Result<Option<u64>, StoreError>;

    /// Makes `version` the active version of `alias`, if it is newer than
    /// the active one (any version is newer than none).
    async fn swap(&self, alias: &str, version: u64) -> Result<(), StoreError>;
}

/// Per-event deduplication for sources that overlap each other (two exports
/// of the same history).
///
/// Claims are written *before* the batch's rows and are owned by
/// `(lane, seq)`: a replayed batch re-claims its own events, so nothing is
/// lost or double counted. Never claim an id and then drop the write.
#[async_trait::async_trait]
pub trait Deduper: Send + Sync {
    /// Claims `event_ids` for batch `(lane, seq)`; results aligned with
    /// `event_ids`. An id repeated within `event_ids` is owned at its first
    /// occurrence and a duplicate after that. `expires_at` (epoch seconds) bounds how long claims are
    /// kept.
    async fn claim(
        &self,
        lane: &LaneId,
        seq: u64,
        event_ids: &[&str],
        expires_at: Option<i64>,
    ) -> Result<Vec<Claim>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Rows written to embedded stores before `Fences` held their fences in
    /// a `BTreeMap`: the encoding must not have changed.
    #[test]
    fn fences_encode_as_the_map_they_replaced() {
        let lanes = [("kafka:events:3", 7u64), ("backfill:slot-0", 2), ("a", 1)];
        let map: BTreeMap<LaneId, u64> = lanes.iter().map(|(l, s)| (LaneId::new(*l), *s)).collect();
        let fences: Fences = lanes.iter().map(|(l, s)| (LaneId::new(*l), *s)).collect();
        let old = postcard::to_allocvec(&map).unwrap();
        assert_eq!(postcard::to_allocvec(&fences).unwrap(), old);
        assert_eq!(postcard::from_bytes::<Fences>(&old).unwrap(), fences);
        assert_eq!(
            serde_json::to_string(&fences).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
        assert_eq!(fences.get(&LaneId::new("kafka:events:3")), Some(7));
        assert_eq!(fences.len(), 3);
    }
}
