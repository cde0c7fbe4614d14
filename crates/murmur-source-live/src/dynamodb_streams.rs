//! The DynamoDB Streams source: a table's change stream, read by the same
//! reader, coordinator and lease protocol as Kinesis (the services share the
//! shard / iterator / lineage model; only the calls differ).
//!
//! Each `INSERT` or `MODIFY` record's **new image** is the event: it is
//! turned into JSON (`serde_dynamo`; numbers stay numbers) and decoded by the
//! [`Decoder`], so `Decoder::count_events()` reads items such as
//! `{"event_id": S, "entity_id": S, "count": N, "occurred_at_unix_ms": N}`.
//! A `REMOVE` carries no new image: it is passed over (its position still
//! advances). The stream must carry new images (`NEW_IMAGE` or
//! `NEW_AND_OLD_IMAGES`).
//!
//! DynamoDB Streams has no `AT_TIMESTAMP` iterator: a start at a time
//! (latest, an event-time cut) reads the shard from its trim horizon and
//! passes over the records created before that time. A `MODIFY` of an item
//! already counted delivers it again: pair this source with per-event dedup
//! (`event_id`), as the overlap with a table scan needs anyway.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodbstreams::Client;
use aws_sdk_dynamodbstreams::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodbstreams::types::{OperationType, ShardIteratorType, StreamViewType};
use murmur_core::{LaneId, Position, Record};
use std::collections::BTreeMap;

use crate::decode::Decoder;
use crate::error::{Error, Result};
use crate::kinesis::{
    CallError, Cursor, DYNAMODB_STREAMS, KinesisConfig, KinesisSource, Page, RawRecord, ShardApi,
    ShardInfo, shard_lane,
};
use crate::source::{LeaseGuard, LiveSource, Metrics, SourceEvent, Start};

/// The lane id of a DynamoDB stream shard: `dynamodb-streams:<table>:<shardId>`.
pub fn dynamodb_streams_lane(table: &str, shard_id: &str) -> LaneId {
    shard_lane(DYNAMODB_STREAMS, table, shard_id)
}

/// Configuration of a [`DynamoDbStreamsSource`].
///
/// ```
/// use murmur_source_live::DynamoDbStreamsConfig;
/// use std::time::Duration;
/// let c = DynamoDbStreamsConfig::new("events").idle_wait(Duration::from_millis(500));
/// # let _ = c;
/// ```
#[derive(Debug, Clone)]
pub struct DynamoDbStreamsConfig {
    inner: KinesisConfig,
    dead_letters: Option<(aws_sdk_kinesis::Client, String)>,
}

impl DynamoDbStreamsConfig {
    /// Reads the stream of `table` (its `LatestStreamArn`); without
    /// [`leases`](Self::leases) this worker reads every shard.
    pub fn new(table: &str) -> Self {
        DynamoDbStreamsConfig {
            // GetRecords returns at most 1,000 records (and 1 MB).
            inner: KinesisConfig::new(table).get_records_limit(1_000),
            dead_letters: None,
        }
    }

    /// Undecodable new images go to this Kinesis stream (through `client`)
    /// as the same JSON envelope as [`KinesisConfig::dead_letter_stream`]:
    /// `source_stream` is the table, `shard_id` and `sequence_number` the
    /// stream record's, `error` why it was refused and `payload_base64` the
    /// image as the decoder saw it (JSON; for an image JSON cannot hold,
    /// such as one with a binary set, the reason instead: the shard and
    /// sequence number still find the record while the stream keeps it).
    /// A chunk is delivered only after
    /// its dead letters are written; a replay may write them again (they
    /// are at-least-once, identified by shard and sequence number). Without
    /// one, a bad record stops the source with
    /// [`Error::BadMessage`](crate::Error::BadMessage) naming it, unless
    /// [`skip_bad_messages`](Self::skip_bad_messages).
    pub fn dead_letter_stream(mut self, client: aws_sdk_kinesis::Client, stream: &str) -> Self {
        self.dead_letters = Some((client, stream.to_owned()));
        self
    }

    /// Without a [`dead_letter_stream`](Self::dead_letter_stream), log bad
    /// records with their shard, sequence number and reason, count them
    /// and go on, instead of stopping at the first one.
    pub fn skip_bad_messages(mut self) -> Self {
        self.inner = self.inner.skip_bad_messages();
        self
    }

    /// This worker's name in the lease table (default `worker-<pid>`).
    pub fn worker_id(mut self, id: &str) -> Self {
        self.inner = self.inner.worker_id(id);
        self
    }

    /// Shares the shards with other workers through leases in this DynamoDB
    /// table, as [`KinesisConfig::leases`].
    pub fn leases(
        mut self,
        client: aws_sdk_dynamodb::Client,
        table: &str,
        duration: Duration,
    ) -> Self {
        self.inner = self.inner.leases(client, table, duration);
        self
    }

    /// Wait after an empty `GetRecords` (default 1 s).
    pub fn idle_wait(mut self, wait: Duration) -> Self {
        self.inner = self.inner.idle_wait(wait);
        self
    }

    /// How often the shard list is refreshed (default 30 s; also after a
    /// shard finishes). DynamoDB rolls a table's shards over every few hours.
    pub fn shard_refresh(mut self, every: Duration) -> Self {
        self.inner = self.inner.shard_refresh(every);
        self
    }

    /// How far before an event-time cut a token start reads (default 5 min).
    pub fn event_time_cut_skew(mut self, skew: Duration) -> Self {
        self.inner = self.inner.event_time_cut_skew(skew);
        self
    }

    /// Longest backoff after throttling (default 5 s).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.inner = self.inner.max_backoff(max);
        self
    }
}

/// A live source over a DynamoDB table's stream (see the
/// [crate docs](crate#dynamodb-streams)): each `INSERT` / `MODIFY` new image
/// is an event, `REMOVE`s are passed over; lanes are
/// `dynamodb-streams:<table>:<shardId>`, positions as for Kinesis. The
/// stream must carry new images. DynamoDB Streams has no `AT_TIMESTAMP`: a
/// start at a time reads from the trim horizon and passes over what was
/// created before it. Starts from a
/// [`HandoffToken::DynamoDbStreams`](murmur_core::HandoffToken::DynamoDbStreams)
/// (captured before a table scan), an event-time cut, or its checkpoints.
#[derive(Debug)]
pub struct DynamoDbStreamsSource<T>(KinesisSource<T>);

impl<T: Send + 'static> DynamoDbStreamsSource<T> {
    /// Finds the table's stream (`DescribeTable`: it must exist and carry
    /// new images) and starts the coordinator.
    pub async fn connect(
        config: DynamoDbStreamsConfig,
        dynamodb: &aws_sdk_dynamodb::Client,
        streams: Client,
        decoder: Decoder<T>,
    ) -> Result<Self> {
        let table = config.inner.stream_name().to_owned();
        let described = dynamodb
            .describe_table()
            .table_name(&table)
            .send()
            .await
            .map_err(|e| Error::DynamoDbStreams {
                operation: "DescribeTable",
                table: table.clone(),
                shard: None,
                message: DisplayErrorContext(&e).to_string(),
            })?;
        let description = described.table();
        let stream_arn = description
            .and_then(|t| t.latest_stream_arn())
            .ok_or_else(|| Error::Config {
                reason: format!("table {table} has no DynamoDB stream (enable one with NEW_IMAGE or NEW_AND_OLD_IMAGES)"),
            })?
            .to_owned();
        let view = description
            .and_then(|t| t.stream_specification())
            .and_then(|s| s.stream_view_type());
        if let Some(view) = view
            && !matches!(view.as_str(), "NEW_IMAGE" | "NEW_AND_OLD_IMAGES")
        {
            return Err(Error::Config {
                reason: format!(
                    "the stream of table {table} carries {view}; new images are needed \
                     (StreamViewType {} or {})",
                    StreamViewType::NewImage.as_str(),
                    StreamViewType::NewAndOldImages.as_str()
                ),
            });
        }
        let api = Arc::new(StreamsApi {
            client: streams,
            table,
            stream_arn,
        });
        KinesisSource::connect_api(config.inner, api, config.dead_letters, decoder)
            .await
            .map(DynamoDbStreamsSource)
    }

    /// Stops reading and releases this worker's leases.
    pub async fn shutdown(self) {
        self.0.shutdown().await;
    }
}

#[async_trait::async_trait]
impl<T: Send + 'static> LiveSource<T> for DynamoDbStreamsSource<T> {
    fn name(&self) -> &str {
        self.0.name()
    }

    async fn resolve_start(&self, lane: &LaneId, start: &Start) -> Result<Position> {
        self.0.resolve_start(lane, start).await
    }

    async fn start_lane(&self, lane: &LaneId, at: &Position) -> Result<Position> {
        self.0.start_lane(lane, at).await
    }

    async fn next(&mut self) -> Result<SourceEvent<T>> {
        self.0.next().await
    }

    async fn read_range(
        &self,
        lane: &LaneId,
        start: &Position,
        end: &Position,
    ) -> Result<Vec<Record<T>>> {
        self.0.read_range(lane, start, end).await
    }

    async fn ack(&self, lane: &LaneId, end: &Position) -> Result<()> {
        self.0.ack(lane, end).await
    }

    fn guard(&self, lane: &LaneId) -> Result<LeaseGuard> {
        self.0.guard(lane)
    }

    fn metrics(&self) -> Metrics {
        self.0.metrics()
    }

    fn check_records(&self, check: murmur_core::RecordCheck<T>) {
        self.0.check_records(check);
    }
}

/// The DynamoDB Streams calls.
struct StreamsApi {
    client: Client,
    table: String,
    stream_arn: String,
}

impl StreamsApi {
    fn err<E, R>(
        &self,
        operation: &'static str,
        shard: Option<&str>,
        e: SdkError<E, R>,
    ) -> CallError
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
        R: std::fmt::Debug,
    {
        CallError::from_sdk(e, |message| Error::DynamoDbStreams {
            operation,
            table: self.table.clone(),
            shard: shard.map(str::to_owned),
            message,
        })
    }
}

#[async_trait::async_trait]
impl ShardApi for StreamsApi {
    fn kind(&self) -> &'static str {
        DYNAMODB_STREAMS
    }

    async fn list_shards(&self) -> std::result::Result<BTreeMap<String, ShardInfo>, CallError> {
        let mut shards = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let out = self
                .client
                .describe_stream()
                .stream_arn(&self.stream_arn)
                .set_exclusive_start_shard_id(after.take())
                .send()
                .await
                .map_err(|e| self.err("DescribeStream", None, e))?;
            let Some(description) = out.stream_description else {
                return Ok(shards);
            };
            for s in description.shards.unwrap_or_default() {
                let Some(id) = s.shard_id else { continue };
                let parents = s.parent_shard_id.into_iter().collect();
                shards.insert(id, ShardInfo { parents });
            }
            match description.last_evaluated_shard_id {
                Some(last) if !last.is_empty() => after = Some(last),
                _ => return Ok(shards),
            }
        }
    }

    async fn iterator(
        &self,
        shard: &str,
        cursor: &Cursor,
    ) -> std::result::Result<String, CallError> {
        let req = self
            .client
            .get_shard_iterator()
            .stream_arn(&self.stream_arn)
            .shard_id(shard);
        let req = match cursor {
            // No AT_TIMESTAMP here: the reader passes over what came before.
            Cursor::Beginning | Cursor::End | Cursor::AtTimestamp(_) => {
                req.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            Cursor::After(s) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(s.as_str()),
        };
        let out = req
            .send()
            .await
            .map_err(|e| self.err("GetShardIterator", Some(shard), e))?;
        Ok(out.shard_iterator.unwrap_or_default())
    }

    async fn get_records(
        &self,
        shard: &str,
        iterator: &str,
        limit: i32,
    ) -> std::result::Result<Page, CallError> {
        let out = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit.min(1_000))
            .send()
            .await
            .map_err(|e| self.err("GetRecords", Some(shard), e))?;
        let records: Vec<RawRecord> = out
            .records
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| {
                let change = r.dynamodb?;
                let sequence = change.sequence_number?;
                let arrival_ms = change
                    .approximate_creation_date_time
                    .and_then(|t| t.to_millis().ok());
                let data = match (&r.event_name, change.new_image) {
                    (Some(OperationType::Remove), _) | (_, None) => {
                        Err("a change without a new image (REMOVE)")
                    }
                    (_, Some(image)) => Ok(image_json(image)),
                };
                Some(RawRecord {
                    sequence,
                    arrival_ms,
                    data,
                })
            })
            .collect();
        // The service does not say how far behind the tip a page is; an
        // empty page of an open shard is taken as "at the tip".
        let millis_behind = records.is_empty().then_some(0);
        Ok(Page {
            records,
            next: out.next_shard_iterator,
            millis_behind,
        })
    }
}

/// A new image as JSON bytes (an item that cannot be turned into JSON, such
/// as one holding a binary set, becomes a payload the decoder rejects, and
/// so a dead letter naming the record).
fn image_json(
    image: std::collections::HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>,
) -> Vec<u8> {
    match serde_dynamo::aws_sdk_dynamodbstreams_1::from_item::<serde_json::Value>(image) {
        Ok(value) => serde_json::to_vec(&value).unwrap_or_default(),
        Err(e) => format!("item not representable as JSON: {e}").into_bytes(),
    }
}
