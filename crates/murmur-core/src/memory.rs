//! [`MemoryStore`]: an in-process state and checkpoint store for tests and
//! examples. It follows exactly the same fencing rules as the persistent
//! stores (it calls [`merge_row`] and its in-place form [`merge_into`]).

use crate::error::StoreError;
use crate::handoff::HandoffToken;
use crate::monoid::DynMonoid;
use crate::record::{LaneId, Position};
use crate::store::{
    AliasStore, ApplyReport, BatchIntent, CheckpointStore, Claim, Deduper, LaneState, Merge,
    RowKey, RunRecord, StateStore, StoredRow, StoredValue, WriteBatch, merge_into, merge_row,
    now_ms,
};
use hashbrown::HashMap;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct Inner {
    rows: HashMap<RowKey, StoredRow>,
    lanes: BTreeMap<LaneId, LaneState>,
    runs: BTreeMap<String, RunRecord>,
    claims: HashMap<String, (LaneId, u64)>,
    aliases: HashMap<String, u64>,
}

/// An in-memory [`StateStore`] + [`CheckpointStore`]. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied row:
        // every mutation is a single insert. Recover the data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of stored rows.
    pub fn len(&self) -> usize {
        self.lock().rows.len()
    }

    /// Whether no row is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every row, sorted by key (for assertions and debugging).
    pub fn rows(&self) -> Vec<(RowKey, StoredRow)> {
        let mut rows: Vec<_> = self
            .lock()
            .rows
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }
}

fn lane_err(lane: &LaneId, reason: String) -> StoreError {
    StoreError::LaneProtocol {
        store: "memory".into(),
        lane: lane.to_string(),
        reason,
    }
}

fn run_err(run_id: &str, reason: String) -> StoreError {
    StoreError::Run {
        store: "memory".into(),
        run_id: run_id.to_owned(),
        reason,
    }
}

#[async_trait::async_trait]
impl StateStore for MemoryStore {
    fn name(&self) -> &str {
        "memory"
    }

    async fn apply(
        &self,
        monoid: &dyn DynMonoid,
        batch: &WriteBatch,
    ) -> Result<ApplyReport, StoreError> {
        let mut inner = self.lock();
        let mut report = ApplyReport::default();
        for delta in &batch.rows {
            report.requests += 1;
            let error = |source| StoreError::Row {
                store: "memory".into(),
                entity: delta.key.entity.to_string(),
                bucket: delta.key.bucket.0,
                source,
            };
            // In place for an existing row: no clone of its fences per write.
            let changed = match inner.rows.get_mut(&delta.key) {
                Some(row) => {
                    merge_into(monoid, row, delta, &batch.lane, batch.seq).map_err(error)?
                }
                None => {
                    match merge_row(monoid, None, delta, &batch.lane, batch.seq).map_err(error)? {
                        Merge::Write(row) => {
                            inner.rows.insert(delta.key.clone(), row);
                            true
                        }
                        Merge::Unchanged => false,
                    }
                }
            };
            if changed {
                report.rows_written += 1;
            } else {
                report.rows_unchanged += 1;
            }
        }
        Ok(report)
    }

    async fn get_many(&self, keys: &[RowKey]) -> Result<Vec<Option<StoredValue>>, StoreError> {
        let inner = self.lock();
        Ok(keys
            .iter()
            .map(|k| inner.rows.get(k).map(StoredRow::stored_value))
            .collect())
    }
}

#[async_trait::async_trait]
impl CheckpointStore for MemoryStore {
    fn name(&self) -> &str {
        "memory"
    }

    async fn lane(&self, lane: &LaneId) -> Result<Option<LaneState>, StoreError> {
        Ok(self.lock().lanes.get(lane).cloned())
    }

    async fn lanes(&self, prefix: &str) -> Result<Vec<LaneState>, StoreError> {
        Ok(self
            .lock()
            .lanes
            .values()
            .filter(|l| l.lane.as_str().starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn init_lane(&self, lane: &LaneId, start: &Position) -> Result<LaneState, StoreError> {
        Ok(self
            .lock()
            .lanes
            .entry(lane.clone())
            .or_insert_with(|| LaneState::new(lane.clone(), start.clone()))
            .clone())
    }

    async fn begin_batch(&self, intent: &BatchIntent) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let state = inner
            .lanes
            .get_mut(&intent.lane)
            .ok_or_else(|| lane_err(&intent.lane, "lane was never initialised".into()))?;
        state.begin(intent).map_err(|r| lane_err(&intent.lane, r))
    }

    async fn commit_batch(&self, lane: &LaneId, seq: u64) -> Result<LaneState, StoreError> {
        let mut inner = self.lock();
        let state = inner
            .lanes
            .get_mut(lane)
            .ok_or_else(|| lane_err(lane, "lane was never initialised".into()))?;
        state.commit(seq).map_err(|r| lane_err(lane, r))?;
        Ok(state.clone())
    }

    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        Ok(self.lock().runs.get(run_id).cloned())
    }

    async fn begin_run(&self, run_id: &str, plan: &str) -> Result<RunRecord, StoreError> {
        Ok(self
            .lock()
            .runs
            .entry(run_id.to_owned())
            .or_insert_with(|| RunRecord::running(run_id, plan, now_ms()))
            .clone())
    }

    async fn complete_run(
        &self,
        run_id: &str,
        token: &HandoffToken,
    ) -> Result<RunRecord, StoreError> {
        let mut inner = self.lock();
        let run = inner
            .runs
            .get_mut(run_id)
            .ok_or_else(|| run_err(run_id, "run was never begun".into()))?;
        run.complete(token, now_ms())
            .map_err(|r| run_err(run_id, r))?;
        Ok(run.clone())
    }
}

#[async_trait::async_trait]
impl Deduper for MemoryStore {
    async fn claim(
        &self,
        lane: &LaneId,
        seq: u64,
        event_ids: &[&str],
        _expires_at: Option<i64>,
    ) -> Result<Vec<Claim>, StoreError> {
        let mut inner = self.lock();
        let mut seen = std::collections::HashSet::new();
        Ok(event_ids
            .iter()
            .map(|id| {
                if !seen.insert(*id) {
                    return Claim::Duplicate;
                }
                let owner = inner
                    .claims
                    .entry((*id).to_owned())
                    .or_insert_with(|| (lane.clone(), seq));
                if owner.0 == *lane && owner.1 == seq {
                    Claim::Owned
                } else {
                    Claim::Duplicate
                }
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl AliasStore for MemoryStore {
    async fn active(&self, alias: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.lock().aliases.get(alias).copied())
    }

    async fn swap(&self, alias: &str, version: u64) -> Result<(), StoreError> {
        let mut inner = self.lock();
        match inner.aliases.get(alias) {
            Some(&active) if active >= version => Err(StoreError::StaleSwap {
                store: "memory".into(),
                alias: alias.to_owned(),
                active,
                requested: version,
            }),
            _ => {
                inner.aliases.insert(alias.to_owned(), version);
                Ok(())
            }
        }
    }
}
