//! [`LaneWriter`]: one lane's records -> fenced batches.

use crate::error::{Error, Result};
use murmur_core::store::{RowDelta, now_ms};
use murmur_core::{
    Aggregator, ApplyReport, BatchIntent, CheckpointStore, Claim, Deduper, FlushPolicy, LaneId,
    LaneState, Monoid, Pipeline, Position, Pushed, Record, StateStore, WriteBatch,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

/// Per-event deduplication for sources that overlap each other (two exports
/// of the same history): every record with an event id is claimed for its
/// batch `(lane, seq)` after the batch's intent is stored and before its
/// rows are written; records another batch claimed first are skipped.
/// Records without an event id are always applied.
#[derive(Clone)]
pub struct Dedup {
    /// Where claims are kept.
    pub deduper: Arc<dyn Deduper>,
    /// How long a claim is kept (from the write); `None` keeps it forever.
    /// Must outlive the overlap between the sources.
    pub ttl: Option<Duration>,
}

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Where a lane resumes after [`LaneWriter::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// A batch was recorded but may be partly applied: read exactly
    /// `[intent.start, intent.end)` again and pass it to
    /// [`LaneWriter::replay`] before anything else.
    Pending(BatchIntent),
    /// Read on from this position.
    From(Position),
}

/// What one flushed batch did.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchReport {
    /// The batch's sequence number.
    pub seq: u64,
    /// Records folded into the batch.
    pub records: u64,
    /// Distinct rows the batch wrote (deltas).
    pub rows: u64,
    /// The store's report.
    pub apply: ApplyReport,
    /// The lane's position after the batch.
    pub end: Position,
    /// Records skipped because another batch claimed their event id first
    /// (only with [`Dedup`]).
    pub duplicates: u64,
    /// Records dropped because their bucket was already past the window's
    /// retention (counted, never written).
    pub expired: u64,
}

/// Turns one lane's records into fenced batches.
///
/// Feed it chunks of records with [`push_chunk`](LaneWriter::push_chunk);
/// each chunk ends at a resumable, exclusive position (a Kafka offset + 1, the
/// end of a Parquet row group). When the flush policy says so — or on
/// [`flush`](LaneWriter::flush) — the writer
///
/// 1. records the batch intent `[start, end)` with the next sequence number,
/// 2. applies the batch's rows (one delta per row) with that `(lane, seq)`,
/// 3. commits the lane to `end`.
///
/// A crash anywhere leaves either a committed batch or a pending intent; on
/// the next [`open`](LaneWriter::open) the caller re-reads exactly the
/// pending range and [`replay`](LaneWriter::replay)s it with the same
/// sequence number, which the stores' fences make exact.
///
/// After an error from [`push_chunk`](LaneWriter::push_chunk),
/// [`flush`](LaneWriter::flush) or [`replay`](LaneWriter::replay) (other
/// than a refused call, which changes nothing) the writer is poisoned:
/// records may be folded that no stored intent covers, so every later call
/// fails with [`Error::Poisoned`] and the lane must be opened again.
pub struct LaneWriter<T, M: Monoid> {
    pipeline: Pipeline<T, M>,
    store: Arc<dyn StateStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    lane: LaneId,
    state: LaneState,
    agg: Aggregator<T, M>,
    open_batch: Option<(Position, Position, u64)>,
    dedup: Option<Dedup>,
    flush_policy: FlushPolicy,
    /// With dedup, the open batch's records wait here for their claims.
    held: Vec<Record<T>>,
    /// The objects the held records were read from.
    held_from: Origins,
    /// When the open batch began: it is due at `max_age` even if nothing
    /// was folded (every record of its chunks before the cut, or past
    /// retention), so the lane's checkpoint still moves.
    opened_at: Option<Instant>,
    /// The last batch's vector of deltas, emptied, for the next batch.
    spare: Vec<RowDelta>,
    /// The first error that left the writer in an unknown state.
    failed: Option<String>,
    /// Records of the open batch dropped as past retention.
    expired: u64,
    /// Bad records of the open batch's chunks.
    bad: u64,
}

impl<T, M: Monoid> LaneWriter<T, M> {
    /// Opens `lane`, creating it at `start` if it is new; returns the writer
    /// and where to resume.
    pub async fn open(
        pipeline: Pipeline<T, M>,
        store: Arc<dyn StateStore>,
        checkpoints: Arc<dyn CheckpointStore>,
        lane: LaneId,
        start: Position,
        flush: FlushPolicy,
    ) -> Result<(Self, Resume)> {
        let state = checkpoints
            .init_lane(&lane, &start)
            .await
            .map_err(|source| Error::Store {
                lane: lane.clone(),
                source: Box::new(source),
            })?;
        let resume = match &state.pending {
            Some(intent) => Resume::Pending(intent.clone()),
            None => Resume::From(state.position.clone()),
        };
        let agg = Aggregator::new(pipeline.clone(), flush);
        Ok((
            LaneWriter {
                pipeline,
                store,
                checkpoints,
                lane,
                state,
                agg,
                open_batch: None,
                dedup: None,
                flush_policy: flush,
                held: Vec::new(),
                held_from: Origins::default(),
                opened_at: None,
                spare: Vec::new(),
                failed: None,
                expired: 0,
                bad: 0,
            },
            resume,
        ))
    }

    /// Turns on per-event deduplication (see [`Dedup`]). The open batch's
    /// records are then held until its flush, where they are claimed before
    /// being folded; `max_keys` of the flush policy bounds the held records.
    pub fn with_dedup(mut self, dedup: Option<Dedup>) -> Self {
        self.dedup = dedup;
        self
    }

    /// The lane.
    pub fn lane(&self) -> &LaneId {
        &self.lane
    }

    /// The lane's durable state as last seen.
    pub fn state(&self) -> &LaneState {
        &self.state
    }

    /// Re-applies the pending batch from exactly its records (those of
    /// `[intent.start, intent.end)`, in source order) with its original
    /// sequence number, then commits it.
    pub async fn replay<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a Record<T>>,
    ) -> Result<BatchReport>
    where
        T: 'a,
    {
        let intent = self.pending_intent()?;
        let records: Vec<&Record<T>> = records.into_iter().collect();
        let n = records.len() as u64;
        tracing::info!(lane = %self.lane, seq = intent.seq, records = n, "replaying pending batch");
        let replayed = match self
            .fold_claimed(intent.seq, &records, &Origins::default())
            .await
        {
            Ok(duplicates) => self.write(intent, n, duplicates).await,
            Err(e) => Err(e),
        };
        self.poison(replayed)
    }

    /// [`replay`](Self::replay) from the range's records in parts, in
    /// source order (the chunks as they are re-read, each with the position
    /// it starts at): each part is folded as it comes, so a long range (a
    /// batch of few keys spans many records) is never held in memory at
    /// once.
    pub async fn replay_parts<P>(&mut self, mut parts: P) -> Result<BatchReport>
    where
        P: futures::Stream<Item = Result<(Position, Vec<Record<T>>)>> + Unpin,
    {
        use futures::StreamExt as _;
        let intent = self.pending_intent()?;
        tracing::info!(lane = %self.lane, seq = intent.seq, "replaying pending batch");
        let replayed = async {
            let (mut n, mut duplicates) = (0u64, 0u64);
            // With dedup the batch is claimed in one call, as its flush
            // claimed it: an id repeated within the batch is owned once
            // (claims per part would each own it again). Such a batch is
            // bounded by `max_keys` held records.
            let (mut whole, mut whole_from) = (Vec::new(), Origins::default());
            while let Some(part) = parts.next().await {
                let (start, part) = part?;
                n += part.len() as u64;
                if self.dedup.is_some() {
                    whole_from.chunk(whole.len(), &start);
                    whole.extend(part);
                } else {
                    let from = Origins::of(&start);
                    let refs: Vec<&Record<T>> = part.iter().collect();
                    duplicates += self.fold_claimed(intent.seq, &refs, &from).await?;
                }
            }
            if self.dedup.is_some() {
                let refs: Vec<&Record<T>> = whole.iter().collect();
                duplicates = self.fold_claimed(intent.seq, &refs, &whole_from).await?;
            }
            self.write(intent, n, duplicates).await
        }
        .await;
        self.poison(replayed)
    }

    /// The pending batch a replay re-applies; refuses a poisoned writer, a
    /// lane with nothing pending and one with a new batch open.
    fn pending_intent(&self) -> Result<BatchIntent> {
        self.usable()?;
        let Some(intent) = self.state.pending.clone() else {
            return Err(self.protocol("replay called but no batch is pending"));
        };
        if self.open_batch.is_some() {
            return Err(self.protocol("replay called while a new batch is open"));
        }
        Ok(intent)
    }

    /// Folds a chunk of records read from `start` up to `end` (exclusive).
    /// Returns a report when the chunk completed a batch.
    pub async fn push_chunk(
        &mut self,
        mut records: Vec<Record<T>>,
        start: &Position,
        end: &Position,
    ) -> Result<Option<BatchReport>> {
        self.push_chunk_with_bad(&mut records, start, end, 0).await
    }

    /// [`push_chunk`](Self::push_chunk) of a chunk that also had `bad`
    /// records the source rejected (and dead-lettered). They are committed
    /// with the chunk's batch: the lane's [`LaneState::bad_records`] is the
    /// running total over its committed batches, so a limit on bad records
    /// can hold over a whole run, across restarts. (A pending batch's
    /// intent carries its total: a [`replay`](Self::replay) counts none.)
    ///
    /// The records are taken out of `records`, which is left empty with
    /// its capacity, for the caller to reuse (a backfill gives it back to
    /// its source, [`SnapshotSource::recycle`](murmur_source_snapshot::SnapshotSource::recycle)).
    pub async fn push_chunk_with_bad(
        &mut self,
        records: &mut Vec<Record<T>>,
        start: &Position,
        end: &Position,
        bad: u64,
    ) -> Result<Option<BatchReport>> {
        self.usable()?;
        if self.state.pending.is_some() {
            return Err(self.protocol("a pending batch must be replayed before new records"));
        }
        self.bad += bad;
        let n = records.len() as u64;
        self.opened_at.get_or_insert_with(Instant::now);
        if self.dedup.is_some() {
            self.held_from.chunk(self.held.len(), start);
            self.held.append(records);
        } else {
            let object = Origins::object_of(start).map(|key| &**key);
            // By value: each record is dropped right after its fold, while
            // it is still in cache, not in a second pass over the chunk.
            for r in records.drain(..) {
                let folded = self.fold(&r, || object);
                self.poison(folded)?;
            }
        }
        match &mut self.open_batch {
            Some((_, batch_end, count)) => {
                *batch_end = end.clone();
                *count += n;
            }
            None => self.open_batch = Some((start.clone(), end.clone(), n)),
        }
        if self.due() {
            self.flush().await
        } else {
            Ok(None)
        }
    }

    /// Whether the open batch should be flushed now (max keys or max age):
    /// live drivers call this on idle ticks.
    pub fn should_flush(&self) -> bool {
        self.open_batch.is_some() && self.due()
    }

    fn due(&self) -> bool {
        let aged = self
            .opened_at
            .is_some_and(|t| t.elapsed() >= self.flush_policy.max_age);
        aged || if self.dedup.is_some() {
            self.held.len() >= self.flush_policy.max_keys
        } else {
            self.agg.should_flush()
        }
    }

    /// Flushes the open batch, if any.
    pub async fn flush(&mut self) -> Result<Option<BatchReport>> {
        self.usable()?;
        let flushed = self.flush_open().await;
        self.poison(flushed)
    }

    async fn flush_open(&mut self) -> Result<Option<BatchReport>> {
        let Some((start, end, records)) = self.open_batch.take() else {
            return Ok(None);
        };
        self.opened_at = None;
        let intent = BatchIntent {
            lane: self.lane.clone(),
            seq: self.state.committed_seq + 1,
            start,
            end,
            bad_records: self.state.bad_records + std::mem::take(&mut self.bad),
        };
        let span = tracing::debug_span!("batch", lane = %self.lane, seq = intent.seq, records);
        async {
            self.checkpoints
                .begin_batch(&intent)
                .await
                .map_err(|source| self.store_err(source))?;
            self.state.pending = Some(intent.clone());
            let held = std::mem::take(&mut self.held);
            let held_from = std::mem::take(&mut self.held_from);
            let refs: Vec<&Record<T>> = held.iter().collect();
            let duplicates = self.fold_claimed(intent.seq, &refs, &held_from).await?;
            self.write(intent, records, duplicates).await.map(Some)
        }
        .instrument(span)
        .await
    }

    /// With dedup, claims the event ids of `records` for batch `seq` and
    /// folds the records it owns (and those without an id); returns the
    /// number of duplicates skipped. Without dedup every record is folded
    /// (new records were folded on arrival and are not passed here).
    /// `from` names the objects the records were read from.
    async fn fold_claimed(
        &mut self,
        seq: u64,
        records: &[&Record<T>],
        from: &Origins,
    ) -> Result<u64> {
        let Some(dedup) = self.dedup.clone() else {
            // Without dedup nothing is held: `records` is a replayed range.
            for (i, r) in records.iter().enumerate() {
                self.fold(r, || from.object(i))?;
            }
            return Ok(0);
        };
        let ids: Vec<&str> = records
            .iter()
            .filter_map(|r| r.event_id.as_deref())
            .collect();
        let claims = if ids.is_empty() {
            Vec::new()
        } else {
            let expires_at = dedup.ttl.map(|ttl| {
                let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
                now_ms().saturating_add(ttl_ms).div_euclid(1000)
            });
            dedup
                .deduper
                .claim(&self.lane, seq, &ids, expires_at)
                .await
                .map_err(|source| self.store_err(source))?
        };
        let mut claims = claims.into_iter();
        let mut duplicates = 0;
        for (i, r) in records.iter().enumerate() {
            let owned = match r.event_id {
                Some(_) => claims.next() == Some(Claim::Owned),
                None => true,
            };
            if owned {
                self.fold(r, || from.object(i))?;
            } else {
                duplicates += 1;
            }
        }
        if duplicates > 0 {
            tracing::debug!(lane = %self.lane, seq, duplicates, "duplicate events skipped");
        }
        Ok(duplicates)
    }

    /// Folds `r`, read from `object` (snapshot records, whose position is
    /// a row of it; looked up only for an error).
    fn fold<'a>(&mut self, r: &Record<T>, object: impl FnOnce() -> Option<&'a str>) -> Result<()> {
        match self.agg.push(r, now_ms()) {
            Ok(Pushed::Folded) => Ok(()),
            Ok(Pushed::Expired) => {
                self.expired += 1;
                Ok(())
            }
            Err(source) => Err(Error::Pipeline {
                lane: self.lane.clone(),
                at: match (&r.position, object()) {
                    (Position::Row { row }, Some(key)) => format!("`{key}` row {}", row + 1),
                    (Position::Row { row }, None) => format!("row {}", row + 1),
                    (position, _) => position.to_string(),
                },
                source: Box::new(source),
            }),
        }
    }

    async fn write(
        &mut self,
        intent: BatchIntent,
        records: u64,
        duplicates: u64,
    ) -> Result<BatchReport> {
        let mut rows = std::mem::take(&mut self.spare);
        self.agg.take_into(&mut rows);
        let batch = WriteBatch {
            lane: self.lane.clone(),
            seq: intent.seq,
            rows,
        };
        let apply = self
            .store
            .apply(self.pipeline.monoid(), &batch)
            .await
            .map_err(|source| self.store_err(source))?;
        self.state = self
            .checkpoints
            .commit_batch(&self.lane, intent.seq)
            .await
            .map_err(|source| self.store_err(source))?;
        let rows = batch.rows.len();
        tracing::debug!(lane = %self.lane, seq = intent.seq, rows, "batch committed");
        // The next batch reuses the vector (and its memory).
        self.spare = batch.rows;
        self.spare.clear();
        Ok(BatchReport {
            seq: intent.seq,
            records,
            rows: rows as u64,
            apply,
            end: intent.end,
            duplicates,
            expired: std::mem::take(&mut self.expired),
        })
    }

    /// Refuses work once the writer is poisoned.
    fn usable(&self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(reason) => Err(Error::Poisoned {
                lane: self.lane.clone(),
                reason: reason.clone(),
            }),
        }
    }

    /// Poisons the writer if `result` is an error (keeping the first one).
    fn poison<R>(&mut self, result: Result<R>) -> Result<R> {
        if let Err(e) = &result {
            self.failed.get_or_insert_with(|| e.to_string());
        }
        result
    }

    fn store_err(&self, source: murmur_core::StoreError) -> Error {
        Error::Store {
            lane: self.lane.clone(),
            source: Box::new(source),
        }
    }

    fn protocol(&self, reason: &str) -> Error {
        Error::Protocol {
            lane: self.lane.clone(),
            reason: reason.to_owned(),
        }
    }
}

/// The objects a run of records was read from, for errors: a record's own
/// position is only its row ([`Position::Row`]); its chunk's start names
/// the object. One entry per chunk, by the index of its first record.
#[derive(Debug, Default)]
struct Origins(Vec<(usize, Option<Arc<str>>)>);

impl Origins {
    /// The object a chunk starting at `start` was read from, if any.
    fn object_of(start: &Position) -> Option<&Arc<str>> {
        match start {
            Position::Object { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The records of one chunk, starting at `start`.
    fn of(start: &Position) -> Self {
        let mut origins = Origins::default();
        origins.chunk(0, start);
        origins
    }

    /// The records from index `first` on came from the chunk that starts
    /// at `start`.
    fn chunk(&mut self, first: usize, start: &Position) {
        self.0.push((first, Self::object_of(start).cloned()));
    }

    /// The object record `i` was read from.
    fn object(&self, i: usize) -> Option<&str> {
        let at = self.0.partition_point(|(first, _)| *first <= i);
        self.0.get(at.checked_sub(1)?)?.1.as_deref()
    }
}
