//! [`DynamoDbCheckpointStore`]: lanes, batch intents and bootstrap run
//! records in a DynamoDB table.

use crate::client::{CallStats, Ctx, Op};
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::item::Item;
use crate::metrics::Metrics;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use murmur_core::store::now_ms;
use murmur_core::{
    BatchIntent, CheckpointStore, HandoffToken, LaneId, LaneState, Position, RunRecord, StoreError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;

/// Partition key (S): `lane#<lane id>` or `run#<run id>`.
const PK: &str = "pk";
/// The state as JSON (S): a [`LaneState`] or a [`RunRecord`].
const STATE: &str = "state";
/// Write counter for compare-and-set (N).
const VERSION: &str = "ver";
/// When the item was last written, epoch ms (N); informational.
const UPDATED_AT: &str = "updated_at_ms";

const LANE_PREFIX: &str = "lane#";
const RUN_PREFIX: &str = "run#";

/// The DynamoDB [`CheckpointStore`].
///
/// One item per lane (`pk = "lane#<id>"`) and per bootstrap run
/// (`pk = "run#<id>"`), each holding its state as JSON in `state` and a write
/// counter `ver`. Every operation is a strongly consistent read, the pure
/// transition from murmur-core ([`LaneState::begin`], [`LaneState::commit`],
/// [`RunRecord::complete`]) and a `PutItem` conditional on `ver` — so a run's
/// completion and its handoff token land in one atomic write, and a lost
/// race is retried from a fresh read. An operation whose transition changes
/// nothing (a replayed `begin_batch`, a second `complete_run` with the same
/// token) writes nothing.
///
/// The table needs only a string partition key `pk`; create it with
/// [`ensure_checkpoint_table`](crate::ensure_checkpoint_table).
/// [`lanes`](CheckpointStore::lanes) scans the table (strongly consistent),
/// which is fine for the hundreds of lanes a deployment has.
#[derive(Debug, Clone)]
pub struct DynamoDbCheckpointStore {
    ctx: Ctx,
}

/// What a transition decided.
enum Step<T> {
    /// Nothing to write; return this.
    Done(T),
    /// Write this state, then return it.
    Write(T),
}

impl DynamoDbCheckpointStore {
    /// A checkpoint store on `config.table` (see
    /// [`DynamoDbStore::new`](crate::DynamoDbStore::new) for what happens to
    /// `client`). No request is sent.
    pub fn new(client: &Client, config: StoreConfig) -> Self {
        DynamoDbCheckpointStore {
            ctx: Ctx::new(client, &config),
        }
    }

    /// Built from shared AWS configuration (credentials, region, endpoint),
    /// e.g. from `aws_config::load_from_env()` in a binary.
    pub fn from_sdk_config(sdk: &aws_config::SdkConfig, config: StoreConfig) -> Self {
        Self::new(&Client::new(sdk), config)
    }

    /// Counts into `metrics` instead of this store's own counters.
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

    fn lane_err(&self, lane: &LaneId, reason: String) -> Error {
        Error::Lane {
            table: self.ctx.table.to_string(),
            lane: lane.to_string(),
            reason,
        }
    }

    fn run_err(&self, run_id: &str, reason: String) -> Error {
        Error::Run {
            table: self.ctx.table.to_string(),
            run_id: run_id.to_owned(),
            reason,
        }
    }

    fn corrupt(&self, key: &str, reason: String) -> Error {
        Error::Corrupt {
            table: self.ctx.table.to_string(),
            key: key.to_owned(),
            reason,
        }
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, item: &Item) -> Result<(T, Option<u64>)> {
        let json = match item.get(STATE) {
            Some(AttributeValue::S(s)) => s,
            _ => {
                return Err(
                    self.corrupt(key, format!("attribute {STATE} is missing or not a string"))
                );
            }
        };
        let state = serde_json::from_str(json).map_err(|e| self.corrupt(key, e.to_string()))?;
        let version = match item.get(VERSION) {
            None => None,
            Some(AttributeValue::N(n)) => Some(n.parse::<u64>().map_err(|_| {
                self.corrupt(key, format!("attribute {VERSION} = {n} is not an integer"))
            })?),
            Some(_) => {
                return Err(self.corrupt(key, format!("attribute {VERSION} is not a number")));
            }
        };
        Ok((state, version))
    }

    /// Strongly consistent read of one item: its state and version.
    async fn read<T: DeserializeOwned>(
        &self,
        key: &str,
        stats: &CallStats,
    ) -> Result<Option<(T, Option<u64>)>> {
        let request = self
            .ctx
            .client
            .get_item()
            .table_name(&*self.ctx.table)
            .key(PK, AttributeValue::S(key.to_owned()))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        let out = self
            .ctx
            .send(Op::GetItem, stats, || request.clone().send())
            .await
            .map_err(|f| f.into_error(&self.ctx.table, Op::GetItem, Some(key.to_owned())))?;
        self.ctx.capacity(Op::GetItem, out.consumed_capacity());
        out.item.map(|item| self.decode(key, &item)).transpose()
    }

    /// Puts `state` if the item is still as `expected`: `None` absent,
    /// `Some(None)` present without a version, `Some(Some(v))` at version
    /// `v`. `Ok(false)` on a lost race.
    async fn put<T: Serialize>(
        &self,
        key: &str,
        state: &T,
        expected: Option<Option<u64>>,
        stats: &CallStats,
    ) -> Result<bool> {
        let json = serde_json::to_string(state).map_err(|e| self.corrupt(key, e.to_string()))?;
        let next = expected.flatten().map_or(1, |v| v + 1);
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        let condition = match expected {
            None => {
                names.insert("#pk".to_owned(), PK.to_owned());
                "attribute_not_exists(#pk)"
            }
            Some(None) => {
                names.insert("#pk".to_owned(), PK.to_owned());
                names.insert("#ver".to_owned(), VERSION.to_owned());
                "attribute_exists(#pk) AND attribute_not_exists(#ver)"
            }
            Some(Some(v)) => {
                names.insert("#ver".to_owned(), VERSION.to_owned());
                values.insert(":old".to_owned(), AttributeValue::N(v.to_string()));
                "#ver = :old"
            }
        };
        let request = self
            .ctx
            .client
            .put_item()
            .table_name(&*self.ctx.table)
            .item(PK, AttributeValue::S(key.to_owned()))
            .item(STATE, AttributeValue::S(json))
            .item(VERSION, AttributeValue::N(next.to_string()))
            .item(UPDATED_AT, AttributeValue::N(now_ms().to_string()))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values((!values.is_empty()).then_some(values))
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        match self
            .ctx
            .send(Op::PutItem, stats, || request.clone().send())
            .await
        {
            Ok(out) => {
                self.ctx.capacity(Op::PutItem, out.consumed_capacity());
                Ok(true)
            }
            Err(f)
                if matches!(
                    f.service_error(),
                    Some(PutItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(false)
            }
            Err(f) => Err(f.into_error(&self.ctx.table, Op::PutItem, Some(key.to_owned()))),
        }
    }

    /// Read, transition, conditional put; again from a fresh read when a
    /// concurrent writer won.
    async fn update<T, F>(&self, key: &str, mut transition: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Result<Step<T>>,
    {
        let stats = CallStats::default();
        let mut conflicts = 0u32;
        loop {
            let (current, version) = match self.read::<T>(key, &stats).await? {
                Some((state, version)) => (Some(state), Some(version)),
                None => (None, None),
            };
            match transition(current)? {
                Step::Done(state) => return Ok(state),
                Step::Write(state) => {
                    if self.put(key, &state, version, &stats).await? {
                        return Ok(state);
                    }
                }
            }
            conflicts += 1;
            self.ctx.metrics.conflict();
            if conflicts >= self.ctx.retry.max_conflicts {
                return Err(Error::Contention {
                    table: self.ctx.table.to_string(),
                    key: key.to_owned(),
                    attempts: conflicts,
                });
            }
            self.ctx.count_retry(&stats);
            tokio::time::sleep(self.ctx.retry.backoff(conflicts)).await;
        }
    }

    async fn lane_state(&self, lane: &LaneId) -> Result<Option<LaneState>> {
        let stats = CallStats::default();
        Ok(self
            .read::<LaneState>(&format!("{LANE_PREFIX}{lane}"), &stats)
            .await?
            .map(|(s, _)| s))
    }

    async fn scan_lanes(&self, prefix: &str) -> Result<Vec<LaneState>> {
        let stats = CallStats::default();
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let request = self
                .ctx
                .client
                .scan()
                .table_name(&*self.ctx.table)
                .consistent_read(true)
                .filter_expression("begins_with(#pk, :p)")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(
                    ":p",
                    AttributeValue::S(format!("{LANE_PREFIX}{prefix}")),
                )
                .set_exclusive_start_key(start.take())
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            let page = self
                .ctx
                .send(Op::Scan, &stats, || request.clone().send())
                .await
                .map_err(|f| f.into_error(&self.ctx.table, Op::Scan, None))?;
            self.ctx.capacity(Op::Scan, page.consumed_capacity());
            for item in page.items() {
                let key = match item.get(PK) {
                    Some(AttributeValue::S(s)) => s.clone(),
                    _ => String::from("(no pk)"),
                };
                let (state, _) = self.decode::<LaneState>(&key, item)?;
                out.push(state);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.lane.cmp(&b.lane));
        Ok(out)
    }

    async fn init(&self, lane: &LaneId, start: &Position) -> Result<LaneState> {
        self.update(&format!("{LANE_PREFIX}{lane}"), |current| {
            Ok(match current {
                Some(state) => Step::Done(state),
                None => Step::Write(LaneState::new(lane.clone(), start.clone())),
            })
        })
        .await
    }

    async fn begin(&self, intent: &BatchIntent) -> Result<()> {
        self.update(
            &format!("{LANE_PREFIX}{}", intent.lane),
            |current: Option<LaneState>| {
                let mut state = current.ok_or_else(|| {
                    self.lane_err(&intent.lane, "lane was never initialised".into())
                })?;
                let before = state.clone();
                state
                    .begin(intent)
                    .map_err(|r| self.lane_err(&intent.lane, r))?;
                Ok(if state == before {
                    Step::Done(state)
                } else {
                    Step::Write(state)
                })
            },
        )
        .await
        .map(|_| ())
    }

    async fn commit(&self, lane: &LaneId, seq: u64) -> Result<LaneState> {
        self.update(
            &format!("{LANE_PREFIX}{lane}"),
            |current: Option<LaneState>| {
                let mut state = current
                    .ok_or_else(|| self.lane_err(lane, "lane was never initialised".into()))?;
                let before = state.clone();
                state.commit(seq).map_err(|r| self.lane_err(lane, r))?;
                Ok(if state == before {
                    Step::Done(state)
                } else {
                    Step::Write(state)
                })
            },
        )
        .await
    }

    async fn run_record(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let stats = CallStats::default();
        Ok(self
            .read::<RunRecord>(&format!("{RUN_PREFIX}{run_id}"), &stats)
            .await?
            .map(|(r, _)| r))
    }

    async fn start_run(&self, run_id: &str, plan: &str, token: &HandoffToken) -> Result<RunRecord> {
        self.update(&format!("{RUN_PREFIX}{run_id}"), |current| {
            Ok(match current {
                Some(run) => Step::Done(run),
                None => Step::Write(RunRecord::running(run_id, plan, token, now_ms())),
            })
        })
        .await
    }

    async fn finish_run(&self, run_id: &str, token: &HandoffToken) -> Result<RunRecord> {
        self.update(
            &format!("{RUN_PREFIX}{run_id}"),
            |current: Option<RunRecord>| {
                let mut run =
                    current.ok_or_else(|| self.run_err(run_id, "run was never begun".into()))?;
                let before = run.clone();
                run.complete(token, now_ms())
                    .map_err(|r| self.run_err(run_id, r))?;
                Ok(if run == before {
                    Step::Done(run)
                } else {
                    Step::Write(run)
                })
            },
        )
        .await
    }
}

#[async_trait::async_trait]
impl CheckpointStore for DynamoDbCheckpointStore {
    fn name(&self) -> &str {
        &self.ctx.name
    }

    async fn lane(&self, lane: &LaneId) -> Result<Option<LaneState>, StoreError> {
        self.lane_state(lane)
            .await
            .map_err(|e| e.into_store_error("lane"))
    }

    async fn lanes(&self, prefix: &str) -> Result<Vec<LaneState>, StoreError> {
        self.scan_lanes(prefix)
            .await
            .map_err(|e| e.into_store_error("lanes"))
    }

    async fn init_lane(&self, lane: &LaneId, start: &Position) -> Result<LaneState, StoreError> {
        self.init(lane, start)
            .await
            .map_err(|e| e.into_store_error("init_lane"))
    }

    async fn begin_batch(&self, intent: &BatchIntent) -> Result<(), StoreError> {
        self.begin(intent)
            .await
            .map_err(|e| e.into_store_error("begin_batch"))
    }

    async fn commit_batch(&self, lane: &LaneId, seq: u64) -> Result<LaneState, StoreError> {
        self.commit(lane, seq)
            .await
            .map_err(|e| e.into_store_error("commit_batch"))
    }

    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.run_record(run_id)
            .await
            .map_err(|e| e.into_store_error("run"))
    }

    async fn begin_run(
        &self,
        run_id: &str,
        plan: &str,
        token: &HandoffToken,
    ) -> Result<RunRecord, StoreError> {
        self.start_run(run_id, plan, token)
            .await
            .map_err(|e| e.into_store_error("begin_run"))
    }

    async fn complete_run(
        &self,
        run_id: &str,
        token: &HandoffToken,
    ) -> Result<RunRecord, StoreError> {
        self.finish_run(run_id, token)
            .await
            .map_err(|e| e.into_store_error("complete_run"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn run_records_round_trip_every_token_kind_as_json() {
        let tokens = [
            HandoffToken::Kafka {
                topic: "events".into(),
                offsets: BTreeMap::from([(0, 42), (1, 17), (-1, 0)]),
            },
            HandoffToken::Kinesis {
                stream: "s".into(),
                sequence_numbers: BTreeMap::from([(
                    "shardId-000".into(),
                    "49590338271490256608559692538361571095921575989136588898".into(),
                )]),
            },
            HandoffToken::EventTimeCut { at_ms: -5 },
            HandoffToken::None,
        ];
        for token in tokens {
            let mut run = RunRecord::running("r1", "units=3 lanes=2 sha256=00ff", &token, 7);
            run.complete(&token, 9).unwrap();
            let json = serde_json::to_string(&run).unwrap();
            let back: RunRecord = serde_json::from_str(&json).unwrap();
            assert_eq!(back, run, "{json}");
        }
    }
}
