//! [`DynamoDbStore`]: the production [`StateStore`].

use crate::client::{CallStats, Ctx, Failed, Op};
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::item::{self, Item, MAX_ITEM_BYTES, PK, SK, TTL, VALUE, VERSION};
use crate::metrics::Metrics;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, ReturnConsumedCapacity, ReturnValuesOnConditionCheckFailure,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt, stream};
use murmur_core::monoid::WriteStrategy;
use murmur_core::store::{Merge, StoredRow, merge_row};
use murmur_core::{
    ApplyReport, DynMonoid, LaneId, RowDelta, RowKey, StateStore, StoreError, StoredValue,
    WriteBatch,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tracing::Instrument;

/// A row found by a read.
type Found = (RowKey, StoredValue);

/// Most keys in one `BatchGetItem` request (a DynamoDB limit).
const BATCH_GET_MAX: usize = 100;

/// The DynamoDB [`StateStore`]: one item per (entity, bucket), fenced batch
/// writes, strongly consistent batched reads.
///
/// See the [crate docs](crate) for the item layout and the write path per
/// monoid kind. Clones share the client and the [`Metrics`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use murmur_state_ddb::{DynamoDbStore, StoreConfig, ensure_state_table};
///
/// let sdk = aws_config::load_from_env().await; // binaries read the environment
/// let client = aws_sdk_dynamodb::Client::new(&sdk);
/// ensure_state_table(&client, "murmur-counters").await?;
/// let store = DynamoDbStore::new(&client, StoreConfig::new("murmur-counters"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DynamoDbStore {
    ctx: Ctx,
}

/// What one row write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Written,
    Unchanged,
}

/// The item state a compare-and-set write expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// No item.
    Absent,
    /// An item with this version.
    Version(u64),
    /// An item without a version attribute (written by something else).
    Unversioned,
}

impl DynamoDbStore {
    /// A store on `config.table`, sending through a copy of `client` whose
    /// SDK-level retries are off and whose attempt timeout is
    /// `config.attempt_timeout` (this store retries and counts every attempt
    /// itself; see [`RetryPolicy`](crate::RetryPolicy)). No request is sent.
    pub fn new(client: &Client, config: StoreConfig) -> Self {
        DynamoDbStore {
            ctx: Ctx::new(client, &config),
        }
    }

    /// A store built from shared AWS configuration (credentials, region,
    /// endpoint), e.g. from `aws_config::load_from_env()` in a binary.
    pub fn from_sdk_config(sdk: &aws_config::SdkConfig, config: StoreConfig) -> Self {
        Self::new(&Client::new(sdk), config)
    }

    /// Counts into `metrics` (e.g. shared with the checkpoint store) instead
    /// of this store's own counters.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.ctx.metrics = metrics;
        self
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.ctx.metrics
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.ctx.table
    }

    /// Applies `batch` (see [`StateStore::apply`]); the typed-error version.
    pub async fn apply_batch(
        &self,
        monoid: &dyn DynMonoid,
        batch: &WriteBatch,
    ) -> Result<ApplyReport> {
        let span = tracing::debug_span!("apply", table = %self.ctx.table, lane = %batch.lane, seq = batch.seq, rows = batch.rows.len());
        async {
            let stats = CallStats::default();
            let strategy = monoid.write_strategy();
            // Boxed up front: keeps the stream's type free of closures, which
            // `async_trait`'s `Send` check cannot see through.
            let writes: Vec<BoxFuture<'_, Result<Outcome>>> = batch
                .rows
                .iter()
                .map(|delta| {
                    self.apply_row(monoid, strategy, delta, &batch.lane, batch.seq, &stats)
                        .boxed()
                })
                .collect();
            let (written, unchanged) = stream::iter(writes)
                .buffer_unordered(self.ctx.max_concurrency)
                .try_fold((0u64, 0u64), |(w, u), outcome| async move {
                    Ok(match outcome {
                        Outcome::Written => (w + 1, u),
                        Outcome::Unchanged => (w, u + 1),
                    })
                })
                .await?;
            Ok(ApplyReport {
                rows_written: written,
                rows_unchanged: unchanged,
                requests: stats.requests.load(Relaxed),
                retries: stats.retries.load(Relaxed),
            })
        }
        .instrument(span)
        .await
    }

    /// Reads rows (see [`StateStore::get_many`]); the typed-error version.
    pub async fn get_rows(&self, keys: &[RowKey]) -> Result<Vec<Option<StoredValue>>> {
        // BatchGetItem rejects duplicate keys: read each distinct key once.
        let mut seen: HashSet<&RowKey> = HashSet::with_capacity(keys.len());
        let distinct: Vec<&RowKey> = keys.iter().filter(|k| seen.insert(*k)).collect();
        let stats = CallStats::default();
        let reads: Vec<BoxFuture<'_, Result<Vec<Found>>>> = distinct
            .chunks(BATCH_GET_MAX)
            .map(|chunk| self.batch_get(chunk, &stats).boxed())
            .collect();
        let chunks: Vec<Vec<Found>> = stream::iter(reads)
            .buffer_unordered(self.ctx.max_concurrency)
            .try_collect()
            .await?;
        let found: HashMap<RowKey, StoredValue> = chunks.into_iter().flatten().collect();
        Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
    }

    fn row_error(&self, key: &RowKey, source: murmur_core::MonoidError) -> Error {
        Error::Row {
            table: self.ctx.table.to_string(),
            entity: key.entity.to_string(),
            bucket: key.bucket.0,
            source: Box::new(source),
        }
    }

    /// Writes one row of batch `(lane, seq)` and counts the outcome.
    async fn apply_row(
        &self,
        monoid: &dyn DynMonoid,
        strategy: WriteStrategy,
        delta: &RowDelta,
        lane: &LaneId,
        seq: u64,
        stats: &CallStats,
    ) -> Result<Outcome> {
        let outcome = self
            .write_row(monoid, strategy, delta, lane, seq, stats)
            .await?;
        match outcome {
            Outcome::Written => self.ctx.metrics.rows(1, 0),
            Outcome::Unchanged => self.ctx.metrics.rows(0, 1),
        }
        Ok(outcome)
    }

    /// Writes one row of batch `(lane, seq)`.
    async fn write_row(
        &self,
        monoid: &dyn DynMonoid,
        strategy: WriteStrategy,
        delta: &RowDelta,
        lane: &LaneId,
        seq: u64,
        stats: &CallStats,
    ) -> Result<Outcome> {
        let existing = match strategy {
            WriteStrategy::Add | WriteStrategy::IntMin | WriteStrategy::IntMax => {
                monoid
                    .validate_cell(&delta.delta)
                    .map_err(|e| self.row_error(&delta.key, e))?;
                match self
                    .expression_write(strategy, delta, lane, seq, stats)
                    .await?
                {
                    None => return Ok(Outcome::Written),
                    // The condition failed: the fence shows the batch landed,
                    // the value would not change, the stored expiry is later
                    // or the stored value is not a number. The general merge
                    // below decides which, from the item as it was.
                    Some(old) => old,
                }
            }
            // MergeIdempotent, MergeFenced and any later strategy:
            // read-combine-compare-and-set is correct for all of them.
            _ => self.read_item(&delta.key, stats).await?,
        };
        self.merge_loop(monoid, delta, lane, seq, existing, stats)
            .await
    }

    /// The one-request path of the integer strategies: `ADD` (fenced) or a
    /// conditional `SET` (min / max). `Ok(None)` when it applied;
    /// `Ok(Some(item))` with the item as it was when the condition failed.
    async fn expression_write(
        &self,
        strategy: WriteStrategy,
        delta: &RowDelta,
        lane: &LaneId,
        seq: u64,
        stats: &CallStats,
    ) -> Result<Option<Option<Item>>> {
        let mut names = HashMap::from([
            ("#v".to_owned(), VALUE.to_owned()),
            ("#ver".to_owned(), VERSION.to_owned()),
        ]);
        let mut values = HashMap::from([
            (":d".to_owned(), item::cell_attr(&delta.delta)),
            (":one".to_owned(), AttributeValue::N("1".into())),
            (":n".to_owned(), AttributeValue::S("N".into())),
        ]);
        let mut sets: Vec<&str> = Vec::new();
        let mut adds: Vec<&str> = vec!["#ver :one"];
        let mut conditions: Vec<&str> = Vec::new();
        match strategy {
            WriteStrategy::Add => {
                names.insert("#f".into(), item::fence_attr(lane));
                values.insert(":seq".into(), AttributeValue::N(seq.to_string()));
                sets.push("#f = :seq");
                adds.insert(0, "#v :d");
                conditions.push("(attribute_not_exists(#f) OR #f < :seq)");
                conditions.push("(attribute_not_exists(#v) OR attribute_type(#v, :n))");
            }
            WriteStrategy::IntMin => {
                sets.push("#v = :d");
                conditions
                    .push("(attribute_not_exists(#v) OR (attribute_type(#v, :n) AND #v > :d))");
            }
            _ => {
                sets.push("#v = :d");
                conditions
                    .push("(attribute_not_exists(#v) OR (attribute_type(#v, :n) AND #v < :d))");
            }
        }
        if let Some(ttl) = delta.expires_at {
            // The expiry only ever grows (as in `merge_row`): a later stored
            // expiry fails the condition and the merge path keeps it.
            names.insert("#ttl".into(), TTL.into());
            values.insert(":ttl".into(), AttributeValue::N(ttl.to_string()));
            sets.push("#ttl = :ttl");
            conditions.push("(attribute_not_exists(#ttl) OR #ttl <= :ttl)");
        }
        let expression = format!("SET {} ADD {}", sets.join(", "), adds.join(", "));
        let condition = conditions.join(" AND ");
        let request = self
            .ctx
            .client
            .update_item()
            .table_name(&*self.ctx.table)
            .set_key(Some(item::key_attrs(&delta.key)))
            .update_expression(expression)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        match self
            .ctx
            .send(Op::UpdateItem, stats, || request.clone().send())
            .await
        {
            Ok(out) => {
                self.ctx.capacity(Op::UpdateItem, out.consumed_capacity());
                Ok(None)
            }
            Err(failed) => match condition_failed_item(&failed) {
                Some(Some(old)) => Ok(Some(Some(old))),
                // No item returned with the failure: read it.
                Some(None) => Ok(Some(self.read_item(&delta.key, stats).await?)),
                None => Err(self.write_error(failed, &delta.key, None)),
            },
        }
    }

    /// Read, merge with [`merge_row`], compare-and-set on the version; on a
    /// conflict, again from the item the failed write returned.
    async fn merge_loop(
        &self,
        monoid: &dyn DynMonoid,
        delta: &RowDelta,
        lane: &LaneId,
        seq: u64,
        mut item: Option<Item>,
        stats: &CallStats,
    ) -> Result<Outcome> {
        let fenced = monoid.write_strategy().is_fenced();
        let mut conflicts = 0u32;
        loop {
            // A batch the row already took (a replay, or a retry whose
            // first attempt landed) changes nothing, whatever the value
            // holds: decided before the value is decoded, so a row whose
            // value cannot be read (a Sum past i64) does not stop a replay.
            if fenced
                && let Some(it) = &item
                && item::fence_of(it, lane).is_some_and(|fence| fence >= seq)
            {
                return Ok(Outcome::Unchanged);
            }
            let current = match &item {
                None => None,
                Some(it) => Some(item::stored_row(&self.ctx.table, &delta.key, it)?),
            };
            let expect = match &current {
                None => Expect::Absent,
                Some((row, true)) => Expect::Version(row.version),
                Some((_, false)) => Expect::Unversioned,
            };
            let merged = merge_row(
                monoid,
                current.as_ref().map(|(row, _)| row),
                delta,
                lane,
                seq,
            )
            .map_err(|e| self.row_error(&delta.key, e))?;
            let row = match merged {
                Merge::Unchanged => return Ok(Outcome::Unchanged),
                Merge::Write(row) => row,
            };
            let size = item::estimated_size(&delta.key, &row);
            if size > MAX_ITEM_BYTES {
                return Err(self.too_large(&delta.key, size, "checked before writing".into()));
            }
            match self
                .cas_write(
                    &delta.key,
                    &row,
                    expect,
                    fenced.then_some((lane, seq)),
                    stats,
                )
                .await?
            {
                None => return Ok(Outcome::Written),
                Some(now) => {
                    conflicts += 1;
                    self.ctx.metrics.conflict();
                    if conflicts >= self.ctx.retry.max_conflicts {
                        return Err(Error::Contention {
                            table: self.ctx.table.to_string(),
                            key: item::describe_key(&delta.key),
                            attempts: conflicts,
                        });
                    }
                    self.ctx.count_retry(stats);
                    tokio::time::sleep(self.ctx.retry.backoff(conflicts)).await;
                    item = now;
                }
            }
        }
    }

    /// Writes `row` if the item is still as `expect`ed. `Ok(None)` when
    /// written; `Ok(Some(item))` with the current item on a conflict.
    async fn cas_write(
        &self,
        key: &RowKey,
        row: &StoredRow,
        expect: Expect,
        fence: Option<(&LaneId, u64)>,
        stats: &CallStats,
    ) -> Result<Option<Option<Item>>> {
        let mut names = HashMap::from([
            ("#v".to_owned(), VALUE.to_owned()),
            ("#ver".to_owned(), VERSION.to_owned()),
        ]);
        let mut values = HashMap::from([
            (":v".to_owned(), item::cell_attr(&row.value)),
            (
                ":ver".to_owned(),
                AttributeValue::N(row.version.to_string()),
            ),
        ]);
        let mut sets = vec!["#v = :v", "#ver = :ver"];
        if let Some(ttl) = row.expires_at {
            names.insert("#ttl".into(), TTL.into());
            values.insert(":ttl".into(), AttributeValue::N(ttl.to_string()));
            sets.push("#ttl = :ttl");
        }
        if let Some((lane, seq)) = fence {
            names.insert("#f".into(), item::fence_attr(lane));
            values.insert(":seq".into(), AttributeValue::N(seq.to_string()));
            sets.push("#f = :seq");
        }
        let condition = match expect {
            Expect::Absent => {
                names.insert("#pk".into(), PK.into());
                "attribute_not_exists(#pk)"
            }
            Expect::Version(v) => {
                values.insert(":old".into(), AttributeValue::N(v.to_string()));
                "#ver = :old"
            }
            Expect::Unversioned => {
                names.insert("#pk".into(), PK.into());
                "attribute_exists(#pk) AND attribute_not_exists(#ver)"
            }
        };
        let request = self
            .ctx
            .client
            .update_item()
            .table_name(&*self.ctx.table)
            .set_key(Some(item::key_attrs(key)))
            .update_expression(format!("SET {}", sets.join(", ")))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        match self
            .ctx
            .send(Op::UpdateItem, stats, || request.clone().send())
            .await
        {
            Ok(out) => {
                self.ctx.capacity(Op::UpdateItem, out.consumed_capacity());
                Ok(None)
            }
            Err(failed) => match condition_failed_item(&failed) {
                Some(Some(now)) => Ok(Some(Some(now))),
                Some(None) => Ok(Some(self.read_item(key, stats).await?)),
                None => Err(self.write_error(failed, key, Some(item::estimated_size(key, row)))),
            },
        }
    }

    fn too_large(&self, key: &RowKey, size: usize, reason: String) -> Error {
        Error::ItemTooLarge {
            table: self.ctx.table.to_string(),
            entity: key.entity.to_string(),
            bucket: key.bucket.0,
            size,
            limit: MAX_ITEM_BYTES,
            reason,
        }
    }

    fn write_error(
        &self,
        failed: Failed<UpdateItemError>,
        key: &RowKey,
        size: Option<usize>,
    ) -> Error {
        let oversize = failed.code() == Some("ValidationException")
            && failed
                .service_message()
                .is_some_and(|m| m.to_ascii_lowercase().contains("item size"));
        if oversize {
            let reason = format!(
                "the service refused the write: {}",
                failed.service_message().unwrap_or_default()
            );
            return self.too_large(key, size.unwrap_or(MAX_ITEM_BYTES + 1), reason);
        }
        failed.into_error(
            &self.ctx.table,
            Op::UpdateItem,
            Some(item::describe_key(key)),
        )
    }

    /// Strongly consistent read of one whole item (fences included).
    async fn read_item(&self, key: &RowKey, stats: &CallStats) -> Result<Option<Item>> {
        let request = self
            .ctx
            .client
            .get_item()
            .table_name(&*self.ctx.table)
            .set_key(Some(item::key_attrs(key)))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        let out = self
            .ctx
            .send(Op::GetItem, stats, || request.clone().send())
            .await
            .map_err(|f| {
                f.into_error(&self.ctx.table, Op::GetItem, Some(item::describe_key(key)))
            })?;
        self.ctx.capacity(Op::GetItem, out.consumed_capacity());
        Ok(out.item)
    }

    /// One `BatchGetItem` of at most 100 distinct keys, re-requesting
    /// `UnprocessedKeys` with backoff.
    async fn batch_get(&self, keys: &[&RowKey], stats: &CallStats) -> Result<Vec<Found>> {
        let table = &*self.ctx.table;
        let mut pending: Vec<Item> = keys.iter().map(|k| item::key_attrs(k)).collect();
        let mut found = Vec::with_capacity(keys.len());
        let mut stalled = 0u32;
        while !pending.is_empty() {
            let request_keys = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut pending)))
                .consistent_read(true)
                .projection_expression("#pk, #sk, #v, #ttl")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#sk", SK)
                .expression_attribute_names("#v", VALUE)
                .expression_attribute_names("#ttl", TTL)
                .build()
                .map_err(|e| Error::Request {
                    table: table.to_owned(),
                    operation: Op::BatchGetItem.name(),
                    key: None,
                    attempts: 0,
                    message: e.to_string(),
                    source: Box::new(e),
                })?;
            let requested = request_keys.keys().len();
            let request = self
                .ctx
                .client
                .batch_get_item()
                .request_items(table, request_keys)
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            let out = self
                .ctx
                .send(Op::BatchGetItem, stats, || request.clone().send())
                .await
                .map_err(|f| f.into_error(table, Op::BatchGetItem, None))?;
            for cc in out.consumed_capacity() {
                self.ctx.capacity(Op::BatchGetItem, Some(cc));
            }
            let items = out
                .responses
                .and_then(|mut r| r.remove(table))
                .unwrap_or_default();
            let got = items.len();
            for it in items {
                let key = item::row_key(table, &it)?;
                let value = item::stored_value(table, &key, &it)?;
                found.push((key, value));
            }
            pending = out
                .unprocessed_keys
                .and_then(|mut u| u.remove(table))
                .map(|k| k.keys)
                .unwrap_or_default();
            if pending.is_empty() {
                break;
            }
            self.ctx.metrics.unprocessed(pending.len() as u64);
            // Back off harder only while no progress is made.
            stalled = if got > 0 || pending.len() < requested {
                1
            } else {
                stalled + 1
            };
            if stalled >= self.ctx.retry.max_attempts {
                return Err(Error::Request {
                    table: table.to_owned(),
                    operation: Op::BatchGetItem.name(),
                    key: None,
                    attempts: stalled,
                    message: format!("{} keys stayed unprocessed", pending.len()),
                    source: "UnprocessedKeys not drained".into(),
                });
            }
            self.ctx.count_retry(stats);
            tokio::time::sleep(self.ctx.retry.backoff(stalled)).await;
        }
        Ok(found)
    }
}

/// `Some(item)` when `failed` is a `ConditionalCheckFailedException` (the
/// item as it was, when the service returned it).
fn condition_failed_item(failed: &Failed<UpdateItemError>) -> Option<Option<Item>> {
    match failed.service_error() {
        Some(UpdateItemError::ConditionalCheckFailedException(e)) => Some(e.item().cloned()),
        _ => None,
    }
}

#[async_trait::async_trait]
impl StateStore for DynamoDbStore {
    fn name(&self) -> &str {
        &self.ctx.name
    }

    async fn apply(
        &self,
        monoid: &dyn DynMonoid,
        batch: &WriteBatch,
    ) -> Result<ApplyReport, StoreError> {
        self.apply_batch(monoid, batch)
            .await
            .map_err(|e| e.into_store_error("apply"))
    }

    async fn get_many(&self, keys: &[RowKey]) -> Result<Vec<Option<StoredValue>>, StoreError> {
        self.get_rows(keys)
            .await
            .map_err(|e| e.into_store_error("get_many"))
    }
}
