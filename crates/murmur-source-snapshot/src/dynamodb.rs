//! DynamoDB parallel scan (feature `dynamodb`).
//!
//! [`DynamoDbScanSource`] scans a table with `Segment` / `TotalSegments`:
//! each segment is one [`WorkUnit`], each scan page one [`Chunk`], and the
//! position is the segment plus the page's `ExclusiveStartKey`
//! ([`Position::Scan`], the key written as DynamoDB JSON such as
//! `{"pk":{"S":"user#1"},"sk":{"N":"7"}}`; `None` at the segment's start).
//! A segment's last page ends at `last_key: Some("{}")` ([`SEGMENT_DONE`]),
//! so a lane holding several segments can tell "segment finished" from
//! "lane finished". Items are decoded into `T` with
//! `serde_dynamo`. A shared limiter keeps the consumed read capacity at or
//! below a rate, from the `ConsumedCapacity` the service reports
//! (`ReturnConsumedCapacity=TOTAL`) or from item sizes.
//!
//! **A scan is not a snapshot.** Items written while it runs may or may not
//! be seen, and a replayed page (same start key, same page size) returns
//! the items as they are at replay time. To close the gap, capture a
//! DynamoDB Streams position *before* scanning
//! ([`DynamoDbScanSource::capture_streams_handoff`], or
//! [`with_streams_capture`](DynamoDbScanSource::with_streams_capture) to
//! have the backfill driver take it when its run begins and keep it with
//! the run) and let the live stage replay the stream from there; changes
//! seen by both are the overlap the per-event deduper (or an idempotent
//! monoid) absorbs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use murmur_core::{HandoffToken, InstalledCheck, Position, Record, RecordCheck};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tracing::Instrument as _;

use crate::bad::{BadRecord, BadRecordPolicy, BadRecordSink, RecordLocation};
use crate::error::{Error, Result};
use crate::source::{
    Chunk, ChunkSender, ChunkStream, Partitions, SnapshotSource, WorkUnit, spawn_reader,
};

/// How the rate limiter learns what a page consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CapacityAccounting {
    /// The `ConsumedCapacity` of each response (`ReturnConsumedCapacity=TOTAL`);
    /// falls back to [`ItemSizes`](Self::ItemSizes) when a response has none.
    #[default]
    Reported,
    /// Computed with DynamoDB's formula from the returned items' sizes: a
    /// page's item bytes rounded up to 4 KB units, half a unit each for
    /// eventually consistent reads. Underestimates filtered scans, which are
    /// charged for the items scanned, not returned.
    ItemSizes,
}

/// Options of a [`DynamoDbScanSource`].
#[derive(Debug, Clone)]
pub struct DynamoDbScanOptions {
    /// The table.
    pub table: String,
    /// Parallel scan segments, `TotalSegments` (default 4, at most 1 000 000).
    pub segments: u32,
    /// Items per page (`Limit`); `None` lets DynamoDB fill 1 MB pages.
    pub page_size: Option<u32>,
    /// Read capacity units per second the whole scan may consume (all
    /// segments together); `None` for no limit.
    pub read_capacity_per_sec: Option<f64>,
    /// Where consumed capacity comes from.
    pub capacity_accounting: CapacityAccounting,
    /// Strongly consistent reads (twice the capacity).
    pub consistent_read: bool,
    /// Optional `FilterExpression`.
    pub filter_expression: Option<String>,
    /// Optional `ProjectionExpression`.
    pub projection_expression: Option<String>,
    /// `ExpressionAttributeNames` for the expressions.
    pub expression_attribute_names: HashMap<String, String>,
    /// `ExpressionAttributeValues` for the filter.
    pub expression_attribute_values: HashMap<String, AttributeValue>,
}

impl DynamoDbScanOptions {
    /// Scans `table` with 4 segments, full pages, no rate limit.
    pub fn new(table: impl Into<String>) -> Self {
        DynamoDbScanOptions {
            table: table.into(),
            segments: 4,
            page_size: None,
            read_capacity_per_sec: None,
            capacity_accounting: CapacityAccounting::Reported,
            consistent_read: false,
            filter_expression: None,
            projection_expression: None,
            expression_attribute_names: HashMap::new(),
            expression_attribute_values: HashMap::new(),
        }
    }
}

type EventTime<T> = Arc<dyn Fn(&T) -> i64 + Send + Sync>;
type EventId<T> = Arc<dyn Fn(&T) -> Option<Arc<str>> + Send + Sync>;

/// A parallel scan of a DynamoDB table as a [`SnapshotSource`].
///
/// ```no_run
/// use murmur_source_snapshot::dynamodb::{DynamoDbScanOptions, DynamoDbScanSource};
/// #[derive(serde::Deserialize)]
/// struct Order { id: String, amount: i64, created_ms: i64 }
///
/// # async fn example() -> murmur_source_snapshot::Result<()> {
/// let config = aws_config::load_from_env().await;
/// let options = DynamoDbScanOptions {
///     segments: 8,
///     page_size: Some(500),
///     read_capacity_per_sec: Some(200.0),
///     ..DynamoDbScanOptions::new("orders")
/// };
/// let source = DynamoDbScanSource::new(aws_sdk_dynamodb::Client::new(&config), options, |o: &Order| o.created_ms)?
///     .event_id(|o| Some(o.id.as_str().into()));
/// // Before scanning: where the live stage replays changes from.
/// let streams = aws_sdk_dynamodbstreams::Client::new(&config);
/// let handoff = source.capture_streams_handoff(&streams).await?;
/// # Ok(()) }
/// ```
pub struct DynamoDbScanSource<T> {
    client: Client,
    options: Arc<DynamoDbScanOptions>,
    event_time: EventTime<T>,
    event_id: Option<EventId<T>>,
    handoff: Option<HandoffToken>,
    streams: Option<aws_sdk_dynamodbstreams::Client>,
    sink: Arc<BadRecordSink>,
    limiter: Arc<RateLimiter>,
    key_names: Arc<OnceCell<Vec<String>>>,
    check: Arc<InstalledCheck<T>>,
}

impl<T> Clone for DynamoDbScanSource<T> {
    fn clone(&self) -> Self {
        DynamoDbScanSource {
            client: self.client.clone(),
            options: Arc::clone(&self.options),
            event_time: Arc::clone(&self.event_time),
            event_id: self.event_id.clone(),
            handoff: self.handoff.clone(),
            streams: self.streams.clone(),
            sink: Arc::clone(&self.sink),
            limiter: Arc::clone(&self.limiter),
            key_names: Arc::clone(&self.key_names),
            check: Arc::clone(&self.check),
        }
    }
}

impl<T> fmt::Debug for DynamoDbScanSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoDbScanSource")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + Send + 'static> DynamoDbScanSource<T> {
    /// A scan decoding items into `T`; `event_time` gives the event time in
    /// milliseconds since the Unix epoch. No bad record is tolerated by
    /// default (see [`with_bad_records`](Self::with_bad_records)).
    pub fn new(
        client: Client,
        options: DynamoDbScanOptions,
        event_time: impl Fn(&T) -> i64 + Send + Sync + 'static,
    ) -> Result<Self> {
        if options.segments == 0 || options.segments > 1_000_000 {
            return Err(Error::Config {
                reason: format!("segments must be in 1..=1000000, not {}", options.segments),
            });
        }
        if options.page_size == Some(0)
            || options
                .read_capacity_per_sec
                .is_some_and(|r| r.is_nan() || r <= 0.0)
        {
            return Err(Error::Config {
                reason: "page_size and read_capacity_per_sec must be positive".into(),
            });
        }
        let limiter = Arc::new(RateLimiter::new(options.read_capacity_per_sec));
        Ok(DynamoDbScanSource {
            client,
            options: Arc::new(options),
            event_time: Arc::new(event_time),
            event_id: None,
            handoff: None,
            streams: None,
            sink: Arc::new(BadRecordSink::default()),
            limiter,
            key_names: Arc::new(OnceCell::new()),
            check: Arc::default(),
        })
    }

    /// Sets the event-id extractor (for the per-event deduper).
    pub fn event_id(
        mut self,
        event_id: impl Fn(&T) -> Option<Arc<str>> + Send + Sync + 'static,
    ) -> Self {
        self.event_id = Some(Arc::new(event_id));
        self
    }

    /// Sets the bad-record policy (items that do not decode into `T`).
    pub fn with_bad_records(mut self, policy: BadRecordPolicy) -> Self {
        self.sink = Arc::new(BadRecordSink::new(policy));
        self
    }

    /// Carries an explicit handoff token (returned by
    /// [`SnapshotSource::handoff`]).
    pub fn with_handoff(mut self, token: HandoffToken) -> Self {
        self.handoff = Some(token);
        self
    }

    /// Makes [`SnapshotSource::handoff`] capture the table's DynamoDB
    /// Streams position when it is asked
    /// ([`capture_streams_handoff`](Self::capture_streams_handoff)), unless
    /// an explicit token was given. The backfill driver asks once, before
    /// the run's first read, and keeps the capture with the run: a resume
    /// after a crash hands live the same position, not a new one that would
    /// miss the changes made since the scan began.
    pub fn with_streams_capture(mut self, streams: aws_sdk_dynamodbstreams::Client) -> Self {
        self.streams = Some(streams);
        self
    }

    /// Read capacity units consumed so far by all reads of this source, as
    /// accounted by the rate limiter.
    pub fn consumed_read_capacity(&self) -> f64 {
        self.limiter.consumed()
    }

    fn ddb_error(
        &self,
        operation: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        Error::DynamoDb {
            table: self.options.table.clone(),
            operation,
            source: Box::new(e),
        }
    }

    /// The table's key attribute names (DescribeTable, once).
    async fn key_names(&self) -> Result<&Vec<String>> {
        self.key_names
            .get_or_try_init(|| async {
                let out = self
                    .client
                    .describe_table()
                    .table_name(&self.options.table)
                    .send()
                    .await
                    .map_err(|e| {
                        self.ddb_error("DescribeTable", aws_sdk_dynamodb::Error::from(e))
                    })?;
                Ok(out
                    .table()
                    .map(|t| {
                        t.key_schema()
                            .iter()
                            .map(|k| k.attribute_name().to_string())
                            .collect()
                    })
                    .unwrap_or_default())
            })
            .await
    }

    /// Captures, before the scan, where each open shard of the table's
    /// DynamoDB stream currently ends, so the live stage can replay every
    /// change made from now on (during and after the scan).
    ///
    /// Each open shard is read from `TRIM_HORIZON` (up to 24 hours of
    /// changes: this costs reads) to find its last record created before
    /// the capture began: the read stops at the first record created at or
    /// after that second's start, minus a second (creation times are
    /// rounded down to the second), or at the tip (three consecutive empty
    /// `GetRecords` responses). It never chases a busy table's tip; an
    /// earlier position only makes live replay a little more, which the
    /// per-event deduper absorbs. Closed shards are left out: all their
    /// changes precede the capture. Fails if the table has no stream.
    pub async fn capture_streams_handoff(
        &self,
        streams: &aws_sdk_dynamodbstreams::Client,
    ) -> Result<StreamsHandoff> {
        use aws_sdk_dynamodbstreams::types::ShardIteratorType;
        const EMPTY_POLLS: u32 = 3;
        let captured_at_ms = murmur_core::store::now_ms();
        // Records created from here on count as after the capture.
        let cutoff_ms = (captured_at_ms.div_euclid(1_000) - 1) * 1_000;
        let (stream_arn, listed) = self.stream_shards(streams).await?;
        let mut shards = BTreeMap::new();
        for (shard_id, closed) in listed {
            if closed {
                continue;
            }
            let iterator = streams
                .get_shard_iterator()
                .stream_arn(&stream_arn)
                .shard_id(&shard_id)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .map_err(|e| self.streams_error("GetShardIterator", e.into()))?;
            let mut iterator = iterator.shard_iterator().map(str::to_string);
            let mut last: Option<String> = None;
            let mut empty = 0;
            'read: while let Some(it) = iterator.take() {
                let out = streams
                    .get_records()
                    .shard_iterator(it)
                    .send()
                    .await
                    .map_err(|e| self.streams_error("GetRecords", e.into()))?;
                let records = out.records();
                if records.is_empty() {
                    empty += 1;
                    if empty >= EMPTY_POLLS {
                        break;
                    }
                }
                for change in records.iter().filter_map(|r| r.dynamodb()) {
                    let created = change
                        .approximate_creation_date_time()
                        .and_then(|t| t.to_millis().ok());
                    if created.is_some_and(|t| t >= cutoff_ms) {
                        break 'read;
                    }
                    if let Some(seq) = change.sequence_number() {
                        last = Some(seq.to_string());
                        empty = 0;
                    }
                }
                iterator = out.next_shard_iterator().map(str::to_string);
            }
            let start = match last {
                Some(sequence_number) => ShardStart::AfterSequenceNumber { sequence_number },
                None => ShardStart::TrimHorizon,
            };
            shards.insert(shard_id, start);
        }
        Ok(StreamsHandoff {
            table: self.options.table.clone(),
            stream_arn,
            captured_at_ms,
            shards,
        })
    }

    /// The earliest handoff there is: every shard of the table's stream,
    /// open or closed, from its trim horizon (the last 24 hours of
    /// changes). For a scan resumed after a crash, whose first capture was
    /// not kept: a capture taken now would miss the changes made since the
    /// scan began.
    pub async fn streams_trim_horizon(
        &self,
        streams: &aws_sdk_dynamodbstreams::Client,
    ) -> Result<StreamsHandoff> {
        let captured_at_ms = murmur_core::store::now_ms();
        let (stream_arn, listed) = self.stream_shards(streams).await?;
        Ok(StreamsHandoff {
            table: self.options.table.clone(),
            stream_arn,
            captured_at_ms,
            shards: listed
                .into_iter()
                .map(|(id, _)| (id, ShardStart::TrimHorizon))
                .collect(),
        })
    }

    /// The table's stream ARN and its shards, with whether each is closed.
    async fn stream_shards(
        &self,
        streams: &aws_sdk_dynamodbstreams::Client,
    ) -> Result<(String, Vec<(String, bool)>)> {
        let table = &self.options.table;
        let described = self
            .client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| self.ddb_error("DescribeTable", aws_sdk_dynamodb::Error::from(e)))?;
        let Some(stream_arn) = described
            .table()
            .and_then(|t| t.latest_stream_arn())
            .map(str::to_string)
        else {
            return Err(Error::Config {
                reason: format!("table `{table}` has no DynamoDB stream to capture a handoff from"),
            });
        };
        let mut shards = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let out = streams
                .describe_stream()
                .stream_arn(&stream_arn)
                .set_exclusive_start_shard_id(after.take())
                .send()
                .await
                .map_err(|e| self.streams_error("DescribeStream", e.into()))?;
            let Some(description) = out.stream_description() else {
                break;
            };
            for shard in description.shards() {
                let closed = shard
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .is_some();
                if let Some(id) = shard.shard_id() {
                    shards.push((id.to_string(), closed));
                }
            }
            match description.last_evaluated_shard_id() {
                Some(last) => after = Some(last.to_string()),
                None => break,
            }
        }
        Ok((stream_arn, shards))
    }

    fn streams_error(&self, operation: &'static str, e: aws_sdk_dynamodbstreams::Error) -> Error {
        Error::DynamoDb {
            table: self.options.table.clone(),
            operation,
            source: Box::new(e),
        }
    }
}

#[async_trait::async_trait]
impl<T: DeserializeOwned + Send + 'static> SnapshotSource for DynamoDbScanSource<T> {
    type Item = T;

    /// One unit per segment, `<table>#segment-<s>-of-<n>`, with `size` 0:
    /// the table's size is an estimate DynamoDB refreshes every few hours,
    /// and a unit's size is part of a run's identity (the backfill runner's
    /// plan fingerprint), so a resume hours later would see another plan.
    /// The segments weigh the same, and lanes get them by count.
    ///
    /// Fails if the table cannot be described (it does not exist, no
    /// access).
    async fn list_units(&self) -> Result<Vec<WorkUnit>> {
        self.client
            .describe_table()
            .table_name(&self.options.table)
            .send()
            .await
            .map_err(|e| self.ddb_error("DescribeTable", aws_sdk_dynamodb::Error::from(e)))?;
        let n = self.options.segments;
        Ok((0..n)
            .map(|s| WorkUnit {
                index: u64::from(s),
                key: format!("{}#segment-{s}-of-{n}", self.options.table).into(),
                size: 0,
                partitions: Partitions::default(),
                e_tag: None,
            })
            .collect())
    }

    fn read(&self, unit: &WorkUnit, from: &Position) -> ChunkStream<T> {
        let this = self.clone();
        let unit = unit.clone();
        let from = from.clone();
        let span = tracing::debug_span!("dynamodb_segment", unit = %unit.key, from = %from);
        spawn_reader(Arc::clone(&unit.key), move |tx| {
            async move { this.produce(unit, from, tx).await }.instrument(span)
        })
    }

    async fn handoff(&self) -> Result<Option<HandoffToken>> {
        match (&self.handoff, &self.streams) {
            (Some(token), _) => Ok(Some(token.clone())),
            (None, Some(streams)) => {
                let token = self.capture_streams_handoff(streams).await?.token();
                tracing::info!(
                    table = %self.options.table,
                    token = %token.to_json(),
                    "DynamoDB Streams position captured before the scan"
                );
                Ok(Some(token))
            }
            (None, None) => Ok(None),
        }
    }

    fn plan_settings(&self) -> String {
        let o = &self.options;
        let mut s = match o.page_size {
            Some(n) => format!("page_size={n}"),
            None => "page_size=full".to_owned(),
        };
        for (name, expression) in [
            ("filter", &o.filter_expression),
            ("projection", &o.projection_expression),
        ] {
            if let Some(e) = expression {
                s.push_str(&format!(" {name}={e:?}"));
            }
        }
        s
    }

    fn bad_records(&self) -> &Arc<BadRecordSink> {
        &self.sink
    }

    fn check_records(&self, check: RecordCheck<T>) {
        self.check.set(check);
    }
}

impl<T: DeserializeOwned + Send + 'static> DynamoDbScanSource<T> {
    async fn produce(&self, unit: WorkUnit, from: Position, tx: ChunkSender<T>) -> Result<()> {
        let opts = &*self.options;
        let position_error = |reason: String| Error::Position {
            unit: unit.key.to_string(),
            position: from.to_string(),
            reason,
        };
        let segment = u32::try_from(unit.index)
            .ok()
            .filter(|s| *s < opts.segments)
            .ok_or_else(|| position_error(format!("the scan has {} segments", opts.segments)))?;
        let mut start_key: Option<Arc<str>> = match &from {
            Position::Beginning => None,
            Position::Scan {
                segment: s,
                last_key,
            } if *s == segment => last_key.clone(),
            Position::End => Some(SEGMENT_DONE.into()),
            _ => {
                return Err(position_error(format!(
                    "not a position of segment {segment}"
                )));
            }
        };
        if start_key.as_deref() == Some(SEGMENT_DONE) {
            let done = segment_done(segment);
            tx.send(Chunk {
                start: done.clone(),
                end: done,
                last: true,
                records: Vec::new(),
                bad: 0,
            })
            .await;
            return Ok(());
        }
        // Key attribute names, to name undecodable items (DescribeTable once;
        // without permission for it, items are named by no attribute).
        let key_names = self.key_names().await.cloned().unwrap_or_default();
        let mut estimate = 1.0;
        loop {
            self.sink.check()?;
            let exclusive_start = match &start_key {
                Some(json) => Some(
                    key_from_json(json)
                        .map_err(|e| position_error(format!("bad last key: {e}")))?,
                ),
                None => None,
            };
            self.limiter.acquire(estimate).await;
            let out = self
                .client
                .scan()
                .table_name(&opts.table)
                .segment(segment as i32)
                .total_segments(opts.segments as i32)
                .set_limit(opts.page_size.map(|p| p.min(i32::MAX as u32) as i32))
                .set_exclusive_start_key(exclusive_start)
                .consistent_read(opts.consistent_read)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .set_filter_expression(opts.filter_expression.clone())
                .set_projection_expression(opts.projection_expression.clone())
                .set_expression_attribute_names(
                    (!opts.expression_attribute_names.is_empty())
                        .then(|| opts.expression_attribute_names.clone()),
                )
                .set_expression_attribute_values(
                    (!opts.expression_attribute_values.is_empty())
                        .then(|| opts.expression_attribute_values.clone()),
                )
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    self.limiter.settle(estimate, 0.0);
                    return Err(self.ddb_error("Scan", aws_sdk_dynamodb::Error::from(e)));
                }
            };
            let items = out.items.unwrap_or_default();
            let reported = match opts.capacity_accounting {
                CapacityAccounting::Reported => {
                    out.consumed_capacity.and_then(|c| c.capacity_units)
                }
                CapacityAccounting::ItemSizes => None,
            };
            let consumed = reported.unwrap_or_else(|| page_capacity(&items, opts.consistent_read));
            self.limiter.settle(estimate, consumed);
            estimate = consumed.max(0.5);

            let start = Position::Scan {
                segment,
                last_key: start_key.clone(),
            };
            let mut records = Vec::with_capacity(items.len());
            let mut letters = self.sink.chunk(&unit.key, page_label(start_key.as_deref()));
            let check = self.check.get();
            for item in items {
                let key: HashMap<String, AttributeValue> = key_names
                    .iter()
                    .filter_map(|n| item.get(n).map(|v| (n.clone(), v.clone())))
                    .collect();
                // The error names the attribute (`count: invalid type`).
                let item = serde_dynamo::AttributeValue::M(serde_dynamo::Item::from(item).into());
                let decoded = serde_path_to_error::deserialize::<_, T>(
                    serde_dynamo::Deserializer::from_attribute_value(item),
                )
                .map_err(|e| e.to_string())
                .and_then(|value| {
                    let time = (self.event_time)(&value);
                    let id = self.event_id.as_ref().and_then(|f| f(&value));
                    Record {
                        value,
                        event_time_ms: time,
                        event_id: id,
                        position: start.clone(),
                    }
                    .checked(check.as_ref())
                });
                match decoded {
                    Ok(record) => records.push(record),
                    Err(reason) => {
                        letters
                            .report(BadRecord {
                                object: unit.key.to_string(),
                                location: RecordLocation::Item {
                                    segment,
                                    key: key_to_json(&key).unwrap_or_else(|e| format!("<{e}>")),
                                },
                                reason,
                                raw: None,
                            })
                            .await?;
                    }
                }
            }
            let next = match &out.last_evaluated_key {
                Some(k) => Some(Arc::<str>::from(key_to_json(k).map_err(&position_error)?)),
                None => None,
            };
            let last = next.is_none();
            let bad = letters.seal().await?;
            let chunk = Chunk {
                start,
                end: match &next {
                    Some(k) => Position::Scan {
                        segment,
                        last_key: Some(Arc::clone(k)),
                    },
                    None => segment_done(segment),
                },
                last,
                records,
                bad,
            };
            if !tx.send(chunk).await || last {
                return Ok(());
            }
            start_key = next;
        }
    }
}

/// The dead-letter label of the page after `last_key` (`None`: the
/// segment's first page): the key's SHA-256, as a key can be longer than an
/// object name may be.
fn page_label(last_key: Option<&str>) -> String {
    use sha2::Digest as _;
    match last_key {
        None => "page-first".to_owned(),
        Some(key) => {
            let digest = sha2::Sha256::digest(key.as_bytes());
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            format!("page-after-{hex}")
        }
    }
}

/// The `last_key` that marks a finished segment: an empty key, which no item
/// can have.
pub const SEGMENT_DONE: &str = "{}";

/// The position after the last page of `segment`.
fn segment_done(segment: u32) -> Position {
    Position::Scan {
        segment,
        last_key: Some(SEGMENT_DONE.into()),
    }
}

/// Writes a key (S, N or B attributes) as DynamoDB JSON with sorted names.
fn key_to_json(key: &HashMap<String, AttributeValue>) -> Result<String, String> {
    let mut map = serde_json::Map::new();
    for (name, value) in key {
        let (tag, text) = match value {
            AttributeValue::S(s) => ("S", s.clone()),
            AttributeValue::N(n) => ("N", n.clone()),
            AttributeValue::B(b) => ("B", aws_smithy_types::base64::encode(b.as_ref())),
            other => {
                return Err(format!(
                    "key attribute `{name}` has unsupported type {other:?}"
                ));
            }
        };
        let mut typed = serde_json::Map::new();
        typed.insert(tag.to_string(), serde_json::Value::String(text));
        map.insert(name.clone(), serde_json::Value::Object(typed));
    }
    Ok(serde_json::Value::Object(map).to_string())
}

/// Reads a key written by [`key_to_json`].
fn key_from_json(json: &str) -> Result<HashMap<String, AttributeValue>, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let object = value.as_object().ok_or("not a JSON object")?;
    let mut key = HashMap::new();
    for (name, typed) in object {
        let typed = typed
            .as_object()
            .filter(|t| t.len() == 1)
            .ok_or_else(|| format!("attribute `{name}` is not {{\"<type>\": value}}"))?;
        let (tag, text) = typed.iter().next().expect("one entry");
        let text = text
            .as_str()
            .ok_or_else(|| format!("attribute `{name}` value is not a string"))?;
        let value = match tag.as_str() {
            "S" => AttributeValue::S(text.to_string()),
            "N" => AttributeValue::N(text.to_string()),
            "B" => AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(
                aws_smithy_types::base64::decode(text)
                    .map_err(|e| format!("attribute `{name}`: {e}"))?,
            )),
            other => return Err(format!("attribute `{name}` has unsupported type {other}")),
        };
        key.insert(name.clone(), value);
    }
    Ok(key)
}

/// Bytes DynamoDB counts for an attribute value.
fn value_size(value: &AttributeValue) -> u64 {
    fn number_size(n: &str) -> u64 {
        let digits = n
            .trim_start_matches(['-', '+'])
            .split(['e', 'E'])
            .next()
            .unwrap_or("")
            .chars()
            .filter(char::is_ascii_digit)
            .count() as u64;
        digits.div_ceil(2) + 1
    }
    match value {
        AttributeValue::S(s) => s.len() as u64,
        AttributeValue::N(n) => number_size(n),
        AttributeValue::B(b) => b.as_ref().len() as u64,
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(v) => v.iter().map(|s| s.len() as u64).sum(),
        AttributeValue::Ns(v) => v.iter().map(|n| number_size(n)).sum(),
        AttributeValue::Bs(v) => v.iter().map(|b| b.as_ref().len() as u64).sum(),
        AttributeValue::L(v) => 3 + v.iter().map(|e| 1 + value_size(e)).sum::<u64>(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, e)| 1 + k.len() as u64 + value_size(e))
                .sum::<u64>()
        }
        _ => 0,
    }
}

/// DynamoDB's size of an item: attribute names plus values.
fn item_size(item: &HashMap<String, AttributeValue>) -> u64 {
    item.iter()
        .map(|(k, v)| k.len() as u64 + value_size(v))
        .sum()
}

/// Read capacity of a scan page by DynamoDB's formula: the returned items'
/// total size rounded up to 4 KB units; half a unit each unless strongly
/// consistent. An empty page still costs one unit (half, eventually).
fn page_capacity(items: &[HashMap<String, AttributeValue>], consistent: bool) -> f64 {
    let bytes: u64 = items.iter().map(item_size).sum();
    let units = bytes.div_ceil(4096).max(1) as f64;
    if consistent { units } else { units / 2.0 }
}

/// A token bucket over read capacity units, shared by all segments: a
/// request may start while the bucket is not in debt; it reserves its
/// estimated cost and settles the actual cost when the response arrives.
/// At most one second of capacity accumulates while idle.
struct RateLimiter {
    rate: Option<f64>,
    state: std::sync::Mutex<LimiterState>,
}

struct LimiterState {
    available: f64,
    refilled: Instant,
    consumed: f64,
}

impl RateLimiter {
    fn new(rate: Option<f64>) -> Self {
        RateLimiter {
            rate,
            state: std::sync::Mutex::new(LimiterState {
                available: 0.0,
                refilled: Instant::now(),
                consumed: 0.0,
            }),
        }
    }

    async fn acquire(&self, estimate: f64) {
        let Some(rate) = self.rate else { return };
        loop {
            let wait = {
                let mut st = self.state();
                let now = Instant::now();
                let elapsed = now.duration_since(st.refilled).as_secs_f64();
                st.available = (st.available + elapsed * rate).min(rate);
                st.refilled = now;
                if st.available >= 0.0 {
                    st.available -= estimate;
                    return;
                }
                Duration::from_secs_f64(-st.available / rate)
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LimiterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settle(&self, estimate: f64, actual: f64) {
        let mut st = self.state();
        st.available += estimate - actual;
        st.consumed += actual;
    }

    fn consumed(&self) -> f64 {
        self.state().consumed
    }
}

/// Where the live stage starts reading a table's DynamoDB stream after the
/// scan: the open shards at capture time and, per shard, the position after
/// the last change that existed then.
///
/// It serializes as
/// `{"table":..,"stream_arn":..,"captured_at_ms":..,"shards":{"shardId-..":{"type":"after_sequence_number","sequence_number":"..."}}}`
/// (the export manifest keeps it so); [`token`](Self::token) is the
/// [`HandoffToken`] a live DynamoDB Streams stage starts from. Shards
/// created after the capture (children of these) are read from
/// `TRIM_HORIZON`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamsHandoff {
    /// The table.
    pub table: String,
    /// The stream (`LatestStreamArn` at capture time).
    pub stream_arn: String,
    /// When the capture started, Unix milliseconds (informational).
    pub captured_at_ms: i64,
    /// Per open shard id, where to start.
    pub shards: BTreeMap<String, ShardStart>,
}

impl StreamsHandoff {
    /// The handoff token for the live stage
    /// ([`HandoffToken::DynamoDbStreams`]).
    pub fn token(&self) -> HandoffToken {
        HandoffToken::DynamoDbStreams {
            table: self.table.clone(),
            shards: self
                .shards
                .iter()
                .map(|(id, start)| {
                    let after = match start {
                        ShardStart::TrimHorizon => None,
                        ShardStart::AfterSequenceNumber { sequence_number } => {
                            Some(sequence_number.clone())
                        }
                    };
                    (id.clone(), after)
                })
                .collect(),
        }
    }
}

/// Where to start reading one stream shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShardStart {
    /// The shard was empty: read it from its beginning.
    TrimHorizon,
    /// Read after this sequence number (`AFTER_SEQUENCE_NUMBER`).
    AfterSequenceNumber {
        /// The last sequence number in the shard at capture time.
        sequence_number: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streams_handoff_is_the_live_token() {
        let handoff = StreamsHandoff {
            table: "events".into(),
            stream_arn: "arn:aws:dynamodb:us-east-1:1:table/events/stream/x".into(),
            captured_at_ms: 1,
            shards: BTreeMap::from([
                (
                    "shardId-a".into(),
                    ShardStart::AfterSequenceNumber {
                        sequence_number: "100".into(),
                    },
                ),
                ("shardId-b".into(), ShardStart::TrimHorizon),
            ]),
        };
        assert_eq!(
            handoff.token().to_json(),
            r#"{"kind":"dynamodb_streams","table":"events","shards":{"shardId-a":"100","shardId-b":null}}"#
        );
    }

    #[test]
    fn keys_round_trip_as_dynamodb_json() {
        let key: HashMap<String, AttributeValue> = [
            ("pk".to_string(), AttributeValue::S("user#1".into())),
            ("sk".to_string(), AttributeValue::N("42".into())),
            ("b".to_string(), AttributeValue::B(vec![0u8, 255].into())),
        ]
        .into();
        let json = key_to_json(&key).unwrap();
        assert_eq!(
            json,
            r#"{"b":{"B":"AP8="},"pk":{"S":"user#1"},"sk":{"N":"42"}}"#
        );
        assert_eq!(key_from_json(&json).unwrap(), key);
        assert!(key_from_json(r#"{"pk":{"BOOL":true}}"#).is_err());
    }

    #[test]
    fn item_sizes_follow_the_dynamodb_formula() {
        let item: HashMap<String, AttributeValue> = [
            ("id".to_string(), AttributeValue::S("abcd".into())), // 2 + 4
            ("n".to_string(), AttributeValue::N("12345".into())), // 1 + 3 + 1
            ("ok".to_string(), AttributeValue::Bool(true)),       // 2 + 1
        ]
        .into();
        assert_eq!(item_size(&item), 14);
        let page = vec![item; 300]; // 4200 bytes: 2 units
        assert_eq!(page_capacity(&page, false), 1.0);
        assert_eq!(page_capacity(&page, true), 2.0);
        assert_eq!(page_capacity(&[], false), 0.5);
    }
}
