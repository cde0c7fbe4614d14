//! The Kinesis source (aws-sdk-kinesis), with optional DynamoDB shard leases.
//!
//! A coordinator task lists the shards (paginated `ListShards`), takes and
//! renews leases, and offers a shard to the runner
//! ([`SourceEvent::Assigned`]) only once all its parents are finished, so a
//! child's records always come after its parents'. Each started shard has a
//! reader task: `GetShardIterator` from the lane's position, then
//! `GetRecords` at most five times a second, renewing expired iterators from
//! the last delivered position and backing off (exponentially, with jitter)
//! on `ProvisionedThroughputExceededException`, `LimitExceededException`
//! and transient failures.

use crate::decode::{Decoder, Outcome};
use crate::error::{Error, Result};
use crate::lease::LeaseTable;
use crate::sequence::SequenceNumber;
use crate::source::{
    Chunk, Counters, GuardState, LeaseGuard, LiveSource, Metrics, SourceEvent, Start,
};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::ShardIteratorType;
use murmur_core::{HandoffToken, LaneId, Position, Record};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The lane prefix of Kinesis sources.
pub(crate) const KINESIS: &str = "kinesis";
/// The lane prefix of DynamoDB Streams sources.
pub(crate) const DYNAMODB_STREAMS: &str = "dynamodb-streams";

/// The lane id of a shard: `<kind>:<stream>:<shardId>`.
pub(crate) fn shard_lane(kind: &str, stream: &str, shard_id: &str) -> LaneId {
    LaneId::new(format!("{kind}:{stream}:{shard_id}"))
}

/// Prefix of the lane-start-only position "read `AT_TIMESTAMP`" (see the
/// crate docs): `Position::Sequence { sequence: "at_timestamp:<ms>" }`.
const AT_TIMESTAMP: &str = "at_timestamp:";

/// The lane id of a Kinesis shard: `kinesis:<stream>:<shardId>`.
pub fn kinesis_lane(stream: &str, shard_id: &str) -> LaneId {
    shard_lane(KINESIS, stream, shard_id)
}

fn at_timestamp(ms: i64) -> Position {
    Position::Sequence {
        sequence: Arc::from(format!("{AT_TIMESTAMP}{ms}")),
    }
}

/// A shard lane position, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// `TRIM_HORIZON`.
    Beginning,
    /// `AT_TIMESTAMP` (ms).
    AtTimestamp(i64),
    /// `AFTER_SEQUENCE_NUMBER`.
    After(SequenceNumber),
    /// Closed and fully consumed.
    End,
}

impl Cursor {
    fn parse(lane: &LaneId, p: &Position) -> Result<Cursor> {
        let bad = |reason: &str| Error::BadPosition {
            lane: lane.clone(),
            position: p.clone(),
            reason: reason.to_owned(),
        };
        match p {
            Position::Beginning => Ok(Cursor::Beginning),
            Position::End => Ok(Cursor::End),
            Position::Sequence { sequence } => {
                if let Some(ms) = sequence.strip_prefix(AT_TIMESTAMP) {
                    return ms
                        .parse()
                        .map(Cursor::AtTimestamp)
                        .map_err(|_| bad("invalid at_timestamp milliseconds"));
                }
                SequenceNumber::parse(sequence)
                    .map(Cursor::After)
                    .ok_or_else(|| bad("a Kinesis sequence number is 1 to 128 decimal digits"))
            }
            _ => Err(bad(
                "a Kinesis lane position is Beginning, Sequence (last consumed, or at_timestamp:<ms>) or End",
            )),
        }
    }

    fn position(&self) -> Position {
        match self {
            Cursor::Beginning => Position::Beginning,
            Cursor::AtTimestamp(ms) => at_timestamp(*ms),
            Cursor::After(s) => Position::Sequence {
                sequence: s.clone().into_arc(),
            },
            Cursor::End => Position::End,
        }
    }
}

/// Shard leases shared by several workers (see [`ensure_lease_table`](crate::ensure_lease_table)).
#[derive(Debug, Clone)]
struct LeaseSettings {
    client: aws_sdk_dynamodb::Client,
    table: String,
    duration: Duration,
}

/// Configuration of a [`KinesisSource`].
///
/// ```
/// use murmur_source_live::KinesisConfig;
/// use std::time::Duration;
/// let c = KinesisConfig::new("clicks")
///     .worker_id("worker-a")
///     .dead_letter_stream("clicks-dlq")
///     .get_records_limit(1_000)
///     .idle_wait(Duration::from_millis(500));
/// # let _ = c;
/// ```
#[derive(Debug, Clone)]
pub struct KinesisConfig {
    stream: String,
    worker_id: String,
    leases: Option<LeaseSettings>,
    get_records_limit: i32,
    min_call_interval: Duration,
    idle_wait: Duration,
    shard_refresh: Duration,
    dead_letter_stream: Option<String>,
    skip_bad_messages: bool,
    cut_skew: Duration,
    max_backoff: Duration,
}

impl KinesisConfig {
    /// Reads `stream`; without [`leases`](Self::leases) this worker reads
    /// every shard.
    pub fn new(stream: &str) -> Self {
        KinesisConfig {
            stream: stream.to_owned(),
            worker_id: format!("worker-{}", std::process::id()),
            leases: None,
            get_records_limit: 10_000,
            min_call_interval: Duration::from_millis(200),
            idle_wait: Duration::from_secs(1),
            shard_refresh: Duration::from_secs(30),
            dead_letter_stream: None,
            skip_bad_messages: false,
            cut_skew: Duration::from_secs(300),
            max_backoff: Duration::from_secs(5),
        }
    }

    /// The stream read (for DynamoDB Streams: the table).
    pub(crate) fn stream_name(&self) -> &str {
        &self.stream
    }

    /// This worker's name in the lease table (default `worker-<pid>`; make
    /// it unique per process).
    pub fn worker_id(mut self, id: &str) -> Self {
        self.worker_id = id.to_owned();
        self
    }

    /// Shares the stream with other workers through shard leases in this
    /// DynamoDB table (create it with
    /// [`ensure_lease_table`](crate::ensure_lease_table)). A lease not
    /// renewed for `duration` may be taken by another worker; it is renewed
    /// every third of that, and trusted by [`LeaseGuard::check`] for two
    /// thirds of it after each renewal.
    pub fn leases(
        mut self,
        client: aws_sdk_dynamodb::Client,
        table: &str,
        duration: Duration,
    ) -> Self {
        self.leases = Some(LeaseSettings {
            client,
            table: table.to_owned(),
            duration,
        });
        self
    }

    /// `GetRecords` limit (default and maximum 10,000).
    pub fn get_records_limit(mut self, limit: i32) -> Self {
        self.get_records_limit = limit.clamp(1, 10_000);
        self
    }

    /// Wait after an empty `GetRecords` (default 1 s; at least 200 ms).
    pub fn idle_wait(mut self, wait: Duration) -> Self {
        self.idle_wait = wait;
        self
    }

    /// How often the shard list is refreshed (default 30 s; also after a
    /// shard finishes).
    pub fn shard_refresh(mut self, every: Duration) -> Self {
        self.shard_refresh = every;
        self
    }

    /// Undecodable records go to this stream as a JSON envelope
    /// (`source_stream`, `shard_id`, `sequence_number`, `error`,
    /// `payload_base64`), partition key = the source shard id. A payload
    /// over 512 KiB is cut to that, so the envelope fits a record, and
    /// `payload_cut` gives its full size and SHA-256. Without one, a bad
    /// record stops the source with
    /// [`Error::BadMessage`](crate::Error::BadMessage) naming it (nothing
    /// past it is acknowledged), unless
    /// [`skip_bad_messages`](Self::skip_bad_messages).
    pub fn dead_letter_stream(mut self, stream: &str) -> Self {
        self.dead_letter_stream = Some(stream.to_owned());
        self
    }

    /// Without a [`dead_letter_stream`](Self::dead_letter_stream), log bad
    /// records (undecodable, or refused by the runner's check) with their
    /// shard, sequence number and reason, count them and go on, instead of
    /// stopping at the first one. The record stays in the stream for as
    /// long as the stream retains it.
    pub fn skip_bad_messages(mut self) -> Self {
        self.skip_bad_messages = true;
        self
    }

    /// How far before an event-time cut a token start reads (default 5 min).
    pub fn event_time_cut_skew(mut self, skew: Duration) -> Self {
        self.cut_skew = skew;
        self
    }

    /// Longest backoff after throttling (default 5 s).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }
}

/// A shard as listed.
#[derive(Debug, Clone)]
pub(crate) struct ShardInfo {
    pub(crate) parents: Vec<String>,
}

/// What a failed call calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Expired,
    Throttled,
    Transient,
    Fatal,
}

fn classify<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Class {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Class::Transient
        }
        SdkError::ServiceError(se) => match se.err().code() {
            Some("ExpiredIteratorException") => Class::Expired,
            Some(
                "ProvisionedThroughputExceededException"
                | "LimitExceededException"
                | "RequestLimitExceeded"
                | "KMSThrottlingException"
                | "ThrottlingException",
            ) => Class::Throttled,
            Some(
                "InternalFailure"
                | "InternalFailureException"
                | "ServiceUnavailable"
                | "InternalServerError",
            ) => Class::Transient,
            _ => Class::Fatal,
        },
        _ => Class::Fatal,
    }
}

/// Exponential backoff with jitter.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);

    fn new(max: Duration) -> Self {
        Backoff {
            next: Self::FIRST,
            max,
        }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    async fn wait(&mut self) {
        use std::hash::BuildHasher;
        let noise = std::collections::hash_map::RandomState::new().hash_one(Instant::now()) % 1_000;
        // Between half and all of the current step.
        let d = self.next.mul_f64(0.5 + noise as f64 / 2_000.0);
        self.next = (self.next * 2).min(self.max);
        tokio::time::sleep(d).await;
    }
}

/// A failed call of a [`ShardApi`]: what it calls for, and the error to
/// report if it is not retried.
pub(crate) struct CallError {
    pub(crate) class: Class,
    pub(crate) error: Error,
}

impl CallError {
    /// Classifies an SDK error; `error` builds the crate error from its
    /// message with context.
    pub(crate) fn from_sdk<E, R>(e: SdkError<E, R>, error: impl FnOnce(String) -> Error) -> Self
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
        R: fmt::Debug,
    {
        CallError {
            class: classify(&e),
            error: error(DisplayErrorContext(&e).to_string()),
        }
    }
}

/// One record of a `GetRecords` page.
pub(crate) struct RawRecord {
    pub(crate) sequence: String,
    /// When the service received it (Unix ms).
    pub(crate) arrival_ms: Option<i64>,
    /// The event's bytes (JSON for DynamoDB Streams), or why the record
    /// carries no event (a DynamoDB `REMOVE`): passed over, position kept.
    pub(crate) data: std::result::Result<Vec<u8>, &'static str>,
}

/// One `GetRecords` page.
pub(crate) struct Page {
    pub(crate) records: Vec<RawRecord>,
    /// `None`: the shard is closed and this was its last page.
    pub(crate) next: Option<String>,
    /// How far behind the tip the page is, when the service says.
    pub(crate) millis_behind: Option<i64>,
}

/// The calls a shard-stream source makes, so that Kinesis and DynamoDB
/// Streams (the same shard / iterator / lineage model) share one reader,
/// one coordinator and one lease protocol.
#[async_trait::async_trait]
pub(crate) trait ShardApi: Send + Sync + 'static {
    /// The lane prefix (`kinesis`, `dynamodb-streams`).
    fn kind(&self) -> &'static str;
    /// Every shard of the stream, with its parents.
    async fn list_shards(&self) -> std::result::Result<BTreeMap<String, ShardInfo>, CallError>;
    /// A shard iterator at `cursor`.
    async fn iterator(
        &self,
        shard: &str,
        cursor: &Cursor,
    ) -> std::result::Result<String, CallError>;
    /// One page from `iterator`.
    async fn get_records(
        &self,
        shard: &str,
        iterator: &str,
        limit: i32,
    ) -> std::result::Result<Page, CallError>;
}

/// [`ShardApi`] over Kinesis.
struct KinesisApi {
    client: Client,
    stream: String,
}

impl KinesisApi {
    fn err<E, R>(
        &self,
        operation: &'static str,
        shard: Option<&str>,
        e: SdkError<E, R>,
    ) -> CallError
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
        R: fmt::Debug,
    {
        CallError::from_sdk(e, |message| Error::Kinesis {
            operation,
            stream: self.stream.clone(),
            shard: shard.map(str::to_owned),
            message,
        })
    }
}

#[async_trait::async_trait]
impl ShardApi for KinesisApi {
    fn kind(&self) -> &'static str {
        KINESIS
    }

    async fn list_shards(&self) -> std::result::Result<BTreeMap<String, ShardInfo>, CallError> {
        let mut shards = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self.client.list_shards();
            req = match &token {
                Some(t) => req.next_token(t),
                None => req.stream_name(&self.stream),
            };
            let out = req
                .send()
                .await
                .map_err(|e| self.err("ListShards", None, e))?;
            for s in out.shards() {
                let parents = [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                    .into_iter()
                    .flatten()
                    .map(str::to_owned)
                    .collect();
                shards.insert(s.shard_id().to_owned(), ShardInfo { parents });
            }
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
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
            .stream_name(&self.stream)
            .shard_id(shard);
        let req = match cursor {
            Cursor::Beginning | Cursor::End => {
                req.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            Cursor::AtTimestamp(ms) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*ms)),
            Cursor::After(s) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(s.as_str()),
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
            .limit(limit)
            .send()
            .await
            .map_err(|e| self.err("GetRecords", Some(shard), e))?;
        Ok(Page {
            records: out
                .records
                .into_iter()
                .map(|r| RawRecord {
                    arrival_ms: r
                        .approximate_arrival_timestamp
                        .and_then(|t| t.to_millis().ok()),
                    sequence: r.sequence_number,
                    data: Ok(r.data.into_inner()),
                })
                .collect(),
            next: out.next_shard_iterator,
            millis_behind: out.millis_behind_latest,
        })
    }
}

struct LaneEntry {
    guard: Arc<GuardState>,
    epoch: u64,
}

struct Shared<T> {
    config: KinesisConfig,
    name: String,
    decoder: Decoder<T>,
    counters: Counters,
    api: Arc<dyn ShardApi>,
    /// The client and stream dead letters go to
    /// ([`KinesisConfig::dead_letter_stream`]).
    dead_letters: Option<(Client, String)>,
    leases: Option<LeaseTable>,
    lanes: Mutex<HashMap<String, LaneEntry>>,
    /// The last reader epoch handed out, for all lanes: epochs only grow,
    /// so a lane owned again (its entry new) never matches chunks its
    /// previous reader left in the channel.
    epochs: AtomicU64,
    failure: Mutex<Option<String>>,
}

impl<T: Send + 'static> Shared<T> {
    fn lane(&self, shard: &str) -> LaneId {
        shard_lane(self.api.kind(), &self.config.stream, shard)
    }

    /// `<kind>:<stream>:`, what every lane id of this source starts with.
    fn lane_prefix(&self) -> String {
        format!("{}:{}:", self.api.kind(), self.config.stream)
    }

    fn shard_of(&self, lane: &LaneId) -> Result<String> {
        let prefix = self.lane_prefix();
        match lane.as_str().strip_prefix(&prefix) {
            Some(shard) if !shard.is_empty() && !shard.contains(':') => Ok(shard.to_owned()),
            _ => Err(Error::UnknownLane {
                lane: lane.clone(),
                reason: format!("this source's lanes are {prefix}<shardId>"),
            }),
        }
    }

    /// Every shard, retrying throttled and transient failures.
    async fn list_shards(&self) -> Result<BTreeMap<String, ShardInfo>> {
        let mut backoff = Backoff::new(self.config.max_backoff);
        loop {
            match self.api.list_shards().await {
                Ok(shards) => return Ok(shards),
                Err(e) if matches!(e.class, Class::Throttled | Class::Transient) => {
                    Counters::add(&self.counters.throttled, 1);
                    backoff.wait().await;
                }
                Err(e) => return Err(e.error),
            }
        }
    }

    /// Decodes one `GetRecords` page read from `from`; records at or
    /// before it (a sequence number, or arrival before an `AT_TIMESTAMP`
    /// start, which DynamoDB Streams only has this way) are dropped (never
    /// delivered twice).
    fn decode(
        &self,
        shard: &str,
        from: &Cursor,
        records: Vec<RawRecord>,
    ) -> (Vec<Record<T>>, Vec<DeadLetter>, Option<SequenceNumber>, u64) {
        let mut out = Vec::with_capacity(records.len());
        let mut dead = Vec::new();
        let mut last = None;
        let mut skipped = 0;
        let check = self.decoder.check();
        for r in records {
            let Some(seq) = SequenceNumber::parse(&r.sequence) else {
                dead.push(DeadLetter {
                    shard: shard.to_owned(),
                    sequence: r.sequence,
                    reason: "invalid sequence number".into(),
                    payload: r.data.unwrap_or_default(),
                });
                continue;
            };
            let before_start = match from {
                Cursor::After(a) => seq <= *a,
                Cursor::AtTimestamp(ms) => last.is_none() && r.arrival_ms.is_some_and(|t| t < *ms),
                _ => false,
            };
            if before_start {
                continue;
            }
            let data = match r.data {
                Ok(data) => data,
                Err(what) => {
                    tracing::debug!(%shard, sequence = %seq, what, "record without an event passed over");
                    last = Some(seq);
                    continue;
                }
            };
            let position = Position::Sequence {
                sequence: Arc::from(seq.as_str()),
            };
            match self
                .decoder
                .decode_message(check.as_ref(), Some(&data), r.arrival_ms, position)
            {
                Outcome::Record(rec) => out.push(rec),
                Outcome::BeforeCut => skipped += 1,
                Outcome::Dead(reason) => dead.push(DeadLetter {
                    shard: shard.to_owned(),
                    sequence: seq.as_str().to_owned(),
                    reason,
                    payload: data,
                }),
            }
            last = Some(seq);
        }
        (out, dead, last, skipped)
    }

    async fn dead_letters(&self, dead: Vec<DeadLetter>) -> Result<()> {
        if dead.is_empty() {
            return Ok(());
        }
        let stream = &self.config.stream;
        let Some((client, dlq)) = &self.dead_letters else {
            return crate::decode::without_destination(
                self.config.skip_bad_messages,
                "stream",
                dead.iter().map(|d| (d.origin(stream), d.reason.as_str())),
                &self.counters.dead_letters,
            );
        };
        Counters::add(&self.counters.dead_letters, dead.len() as u64);
        for d in &dead {
            let payload = crate::decode::clip_dead_letter(&d.payload);
            let mut envelope = serde_json::json!({
                "source_stream": stream,
                "shard_id": d.shard,
                "sequence_number": d.sequence,
                "error": d.reason,
                "payload_base64": aws_smithy_types::base64::encode(payload.bytes),
            });
            if let Some(note) = payload.note {
                envelope["payload_cut"] = note.into();
            }
            tracing::warn!(%stream, shard = %d.shard, sequence = %d.sequence, reason = %d.reason, dead_letter_stream = %dlq,
                "bad record (undecodable or refused by the pipeline) sent to the dead-letter stream");
            client
                .put_record()
                .stream_name(dlq)
                .partition_key(&d.shard)
                .data(Blob::new(envelope.to_string()))
                .send()
                .await
                .map_err(|e| Error::DeadLetter {
                    origin: d.origin(stream),
                    destination: dlq.clone(),
                    message: DisplayErrorContext(&e).to_string(),
                })?;
        }
        Ok(())
    }

    fn fail(&self, reason: String) {
        tracing::error!(source = %self.name, %reason, "kinesis source stopped");
        self.failure
            .lock()
            .expect("failure lock")
            .get_or_insert(reason);
    }

    fn closed(&self) -> Error {
        Error::Closed {
            source_name: self.name.clone(),
            reason: self
                .failure
                .lock()
                .expect("failure lock")
                .clone()
                .unwrap_or_else(|| "shut down".into()),
        }
    }

    /// Reads `[from, to)` of a shard again.
    async fn read_range(
        &self,
        lane: &LaneId,
        shard: &str,
        from: Cursor,
        to: Cursor,
    ) -> Result<Vec<Record<T>>> {
        let replay_err = |reason: String| Error::Replay {
            lane: lane.clone(),
            start: from.position(),
            end: to.position(),
            reason: reason.into(),
        };
        let last = match &to {
            Cursor::End => None,
            Cursor::After(s) => Some(s.clone()),
            _ => {
                return Err(replay_err(
                    "a range ends at a sequence number or End".into(),
                ));
            }
        };
        if matches!(from, Cursor::End) {
            return Ok(Vec::new());
        }
        if let (Cursor::After(a), Some(b)) = (&from, &last)
            && a >= b
        {
            return Ok(Vec::new());
        }
        let mut records = Vec::new();
        let mut at = from.clone();
        let mut iterator: Option<String> = None;
        let mut backoff = Backoff::new(self.config.max_backoff);
        let mut empty_at_tip = 0;
        let mut last_call: Option<Instant> = None;
        loop {
            let it = match iterator.take() {
                Some(it) => it,
                None => match self.api.iterator(shard, &at).await {
                    Ok(it) => it,
                    Err(e) if e.class != Class::Fatal => {
                        backoff.wait().await;
                        continue;
                    }
                    Err(e) => return Err(e.error),
                },
            };
            pace(&mut last_call, self.config.min_call_interval).await;
            let out = match self
                .api
                .get_records(shard, &it, self.config.get_records_limit)
                .await
            {
                Ok(out) => out,
                Err(e) => match e.class {
                    Class::Expired => continue,
                    Class::Throttled | Class::Transient => {
                        Counters::add(&self.counters.throttled, 1);
                        backoff.wait().await;
                        iterator = Some(it);
                        continue;
                    }
                    Class::Fatal => return Err(e.error),
                },
            };
            backoff.reset();
            let listed = out.records.len();
            let page: Vec<RawRecord> = match &last {
                Some(l) => out
                    .records
                    .into_iter()
                    .take_while(|r| SequenceNumber::parse(&r.sequence).is_some_and(|s| s <= *l))
                    .collect(),
                None => out.records,
            };
            let reached_end = last.is_some() && page.len() < listed;
            let (mut got, dead, seen, _) = self.decode(shard, &at, page);
            self.dead_letters(dead).await?;
            records.append(&mut got);
            if let Some(s) = seen {
                at = Cursor::After(s);
            }
            let done = matches!((&at, &last), (Cursor::After(a), Some(l)) if a == l);
            if done {
                return Ok(records);
            }
            // Past the range's end without reading its last record (a range
            // ends at a record it read): the shard no longer holds it,
            // trimmed past retention. An empty or short replay would lose
            // the batch's events.
            if reached_end {
                return Err(replay_err(format!(
                    "the shard no longer holds the range's records up to its end (after {} it goes on past the end; trimmed past its retention?)",
                    at.position()
                )));
            }
            match out.next {
                None if last.is_none() => return Ok(records),
                None => return Err(replay_err("the shard closed before the range end".into())),
                Some(next) => iterator = Some(next),
            }
            if listed == 0 {
                empty_at_tip += 1;
                if empty_at_tip >= 20 && out.millis_behind == Some(0) {
                    return Err(replay_err(format!(
                        "the shard holds nothing after {}",
                        at.position()
                    )));
                }
            } else {
                empty_at_tip = 0;
            }
        }
    }
}

/// Waits until at least `min` has passed since the previous call.
async fn pace(last: &mut Option<Instant>, min: Duration) {
    if let Some(t) = *last {
        let due = t + min;
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
    }
    *last = Some(Instant::now());
}

struct DeadLetter {
    shard: String,
    sequence: String,
    reason: String,
    payload: Vec<u8>,
}

impl DeadLetter {
    /// `stream/shard@sequence`, as errors name a record.
    fn origin(&self, stream: &str) -> String {
        format!("{stream}/{}@{}", self.shard, self.sequence)
    }
}

struct KChunk<T> {
    shard: String,
    epoch: u64,
    chunk: Chunk<T>,
}

enum Ctl<T> {
    Event(SourceEvent<T>),
    /// A shard reader failed: the source stops with its error.
    Failed(Error),
}

enum Cmd {
    Start {
        shard: String,
        at: Cursor,
        reply: oneshot::Sender<Result<()>>,
    },
    Finish {
        shard: String,
        reply: oneshot::Sender<Result<()>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A Kinesis live source: see the [crate docs](crate) for the protocol.
///
/// Dropping it stops reading at once *without* releasing its leases (as a
/// crash would: other workers take them over after the lease duration);
/// [`shutdown`](KinesisSource::shutdown) releases them.
pub struct KinesisSource<T> {
    shared: Arc<Shared<T>>,
    cmds: mpsc::UnboundedSender<Cmd>,
    control: mpsc::UnboundedReceiver<Ctl<T>>,
    chunks: mpsc::Receiver<KChunk<T>>,
    coordinator: JoinHandle<()>,
    failed: bool,
}

impl<T> fmt::Debug for KinesisSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KinesisSource")
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<T> Drop for KinesisSource<T> {
    fn drop(&mut self) {
        self.coordinator.abort();
    }
}

impl<T: Send + 'static> KinesisSource<T> {
    /// Starts the coordinator. Shards are offered through
    /// [`SourceEvent::Assigned`] as they become eligible (and, with leases,
    /// as their leases are taken).
    pub async fn connect(
        config: KinesisConfig,
        client: Client,
        decoder: Decoder<T>,
    ) -> Result<Self> {
        let api = Arc::new(KinesisApi {
            client: client.clone(),
            stream: config.stream.clone(),
        });
        let dead_letters = config.dead_letter_stream.clone().map(|dlq| (client, dlq));
        Self::connect_api(config, api, dead_letters, decoder).await
    }

    /// Starts the coordinator over any [`ShardApi`]; undecodable records go
    /// to `dead_letters` (a Kinesis client and stream), else to the log.
    pub(crate) async fn connect_api(
        config: KinesisConfig,
        api: Arc<dyn ShardApi>,
        dead_letters: Option<(Client, String)>,
        decoder: Decoder<T>,
    ) -> Result<Self> {
        if config.stream.is_empty() || config.stream.contains(':') {
            return Err(Error::Config {
                reason: format!("invalid stream name {:?}", config.stream),
            });
        }
        let leases = config.leases.as_ref().map(|l| LeaseTable {
            client: l.client.clone(),
            table: l.table.clone(),
            worker: config.worker_id.clone(),
            duration: l.duration,
        });
        let shared = Arc::new(Shared {
            name: format!("{}:{}", api.kind(), config.stream),
            decoder,
            counters: Counters::default(),
            api,
            dead_letters,
            leases,
            lanes: Mutex::new(HashMap::new()),
            epochs: AtomicU64::new(0),
            failure: Mutex::new(None),
            config,
        });
        // Fail early on a missing stream or bad credentials.
        let shards = shared.list_shards().await?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (chunk_tx, chunk_rx) = mpsc::channel(64);
        let coordinator = Coordinator {
            shared: shared.clone(),
            cmds: cmd_rx,
            control: ctl_tx,
            chunks: chunk_tx,
            shards,
            listed_at: Instant::now(),
            relist: false,
            owned: BTreeMap::new(),
            finished: HashSet::new(),
            observed: HashMap::new(),
        };
        let coordinator = tokio::spawn(coordinator.run());
        Ok(KinesisSource {
            shared,
            cmds: cmd_tx,
            control: ctl_rx,
            chunks: chunk_rx,
            coordinator,
            failed: false,
        })
    }

    /// Stops reading and releases this worker's leases, so others can take
    /// the shards at once.
    pub async fn shutdown(self) {
        let (reply, done) = oneshot::channel();
        if self.cmds.send(Cmd::Shutdown { reply }).is_ok() {
            let _ = done.await;
        }
    }

    /// Where `shard` starts under a token of positions per shard of
    /// `stream` (see [`resolve_token`]).
    async fn start_from_token(
        &self,
        lane: &LaneId,
        shard: &str,
        stream: &str,
        positions: &BTreeMap<String, Option<String>>,
    ) -> Result<Position> {
        if stream != self.shared.config.stream {
            return Err(Error::Token {
                lane: lane.clone(),
                reason: format!(
                    "the token is for stream {stream}, this source reads {}",
                    self.shared.config.stream
                ),
            });
        }
        let shards = self.shared.list_shards().await?;
        resolve_token(lane, shard, &shards, positions)
    }

    async fn command(&self, make: impl FnOnce(oneshot::Sender<Result<()>>) -> Cmd) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.cmds
            .send(make(reply))
            .map_err(|_| self.shared.closed())?;
        answer.await.map_err(|_| self.shared.closed())?
    }
}

#[async_trait::async_trait]
impl<T: Send + 'static> LiveSource<T> for KinesisSource<T> {
    fn name(&self) -> &str {
        &self.shared.name
    }

    async fn resolve_start(&self, lane: &LaneId, start: &Start) -> Result<Position> {
        let shard = self.shared.shard_of(lane)?;
        Ok(match start {
            Start::Earliest => Position::Beginning,
            // LATEST has no position until a record arrives; "latest as of
            // now" is AT_TIMESTAMP now, which re-reads identically.
            Start::Latest => at_timestamp(murmur_core::store::now_ms()),
            Start::Timestamp(ms) => at_timestamp(*ms),
            Start::Token(HandoffToken::EventTimeCut { at_ms }) => {
                let skew =
                    i64::try_from(self.shared.config.cut_skew.as_millis()).unwrap_or(i64::MAX);
                at_timestamp(at_ms.saturating_sub(skew))
            }
            Start::Token(HandoffToken::Kinesis {
                stream,
                sequence_numbers,
            }) if self.shared.api.kind() == KINESIS => {
                let positions = sequence_numbers
                    .iter()
                    .map(|(shard, seq)| (shard.clone(), Some(seq.clone())))
                    .collect();
                self.start_from_token(lane, &shard, stream, &positions)
                    .await?
            }
            Start::Token(HandoffToken::DynamoDbStreams { table, shards })
                if self.shared.api.kind() == DYNAMODB_STREAMS =>
            {
                self.start_from_token(lane, &shard, table, shards).await?
            }
            Start::Token(other) => {
                return Err(Error::Token {
                    lane: lane.clone(),
                    reason: format!(
                        "a {} source cannot start from token {}",
                        self.shared.api.kind(),
                        other.to_json()
                    ),
                });
            }
        })
    }

    async fn start_lane(&self, lane: &LaneId, at: &Position) -> Result<Position> {
        let shard = self.shared.shard_of(lane)?;
        let cursor = Cursor::parse(lane, at)?;
        self.command(|reply| Cmd::Start {
            shard,
            at: cursor,
            reply,
        })
        .await?;
        tracing::debug!(%lane, position = %at, "shard positioned");
        Ok(at.clone())
    }

    async fn next(&mut self) -> Result<SourceEvent<T>> {
        if self.failed {
            return Err(self.shared.closed());
        }
        loop {
            tokio::select! {
                biased;
                ctl = self.control.recv() => match ctl {
                    Some(Ctl::Event(e)) => return Ok(e),
                    Some(Ctl::Failed(error)) => {
                        // The reader's own error the first time (a bad
                        // record names itself); `Closed` with it after.
                        self.failed = true;
                        self.shared.fail(error.to_string());
                        return Err(error);
                    }
                    None => {
                        self.failed = true;
                        return Err(self.shared.closed());
                    }
                },
                item = self.chunks.recv() => {
                    let Some(item) = item else {
                        self.failed = true;
                        return Err(self.shared.closed());
                    };
                    let current = self.shared.lanes.lock().expect("lanes lock").get(&item.shard)
                        .is_some_and(|l| l.epoch == item.epoch && !l.guard.is_lost());
                    if current {
                        Counters::add(&self.shared.counters.chunks, 1);
                        Counters::add(&self.shared.counters.records, item.chunk.records.len() as u64);
                        return Ok(SourceEvent::Chunk(item.chunk));
                    }
                }
            }
        }
    }

    async fn read_range(
        &self,
        lane: &LaneId,
        start: &Position,
        end: &Position,
    ) -> Result<Vec<Record<T>>> {
        let shard = self.shared.shard_of(lane)?;
        let (from, to) = (Cursor::parse(lane, start)?, Cursor::parse(lane, end)?);
        let records = self.shared.read_range(lane, &shard, from, to).await?;
        Counters::add(&self.shared.counters.replayed, records.len() as u64);
        Ok(records)
    }

    async fn ack(&self, lane: &LaneId, end: &Position) -> Result<()> {
        let shard = self.shared.shard_of(lane)?;
        let cursor = Cursor::parse(lane, end)?;
        Counters::add(&self.shared.counters.acks, 1);
        if cursor == Cursor::End {
            return self.command(|reply| Cmd::Finish { shard, reply }).await;
        }
        if let Some(leases) = &self.shared.leases
            && !leases.checkpoint(lane.as_str(), end, false).await?
        {
            tracing::debug!(%lane, "lease checkpoint not recorded: the lease is no longer ours");
        }
        Ok(())
    }

    fn guard(&self, lane: &LaneId) -> Result<LeaseGuard> {
        let shard = self.shared.shard_of(lane)?;
        let lanes = self.shared.lanes.lock().expect("lanes lock");
        let entry = lanes.get(&shard).ok_or_else(|| Error::LeaseLost {
            lane: lane.clone(),
            reason: "this worker does not hold the shard".into(),
        })?;
        Ok(LeaseGuard::new(lane.clone(), entry.guard.clone()))
    }

    fn metrics(&self) -> Metrics {
        self.shared.counters.snapshot()
    }

    fn check_records(&self, check: murmur_core::RecordCheck<T>) {
        self.shared.decoder.install_check(check);
    }
}

/// Where a shard starts under a handoff token of positions per shard: after
/// its sequence number (its beginning for `None`); the beginning for shards
/// born after the token's shards (descendants); the end for shards the
/// token's shards descend from.
fn resolve_token(
    lane: &LaneId,
    shard: &str,
    shards: &BTreeMap<String, ShardInfo>,
    token: &BTreeMap<String, Option<String>>,
) -> Result<Position> {
    if let Some(seq) = token.get(shard) {
        let Some(seq) = seq else {
            return Ok(Position::Beginning);
        };
        let seq = SequenceNumber::parse(seq).ok_or_else(|| Error::Token {
            lane: lane.clone(),
            reason: format!("{seq:?} is not a sequence number"),
        })?;
        return Ok(Cursor::After(seq).position());
    }
    let related = |start: &str, up: bool| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start.to_owned()];
        while let Some(s) = todo.pop() {
            let next: Vec<String> = if up {
                shards
                    .get(&s)
                    .map(|i| i.parents.clone())
                    .unwrap_or_default()
            } else {
                shards
                    .iter()
                    .filter(|(_, i)| i.parents.contains(&s))
                    .map(|(k, _)| k.clone())
                    .collect()
            };
            for n in next {
                if seen.insert(n.clone()) {
                    todo.push(n);
                }
            }
        }
        seen
    };
    if related(shard, true).iter().any(|a| token.contains_key(a)) {
        return Ok(Position::Beginning);
    }
    if related(shard, false).iter().any(|d| token.contains_key(d)) {
        return Ok(Position::End);
    }
    Err(Error::Token {
        lane: lane.clone(),
        reason: format!(
            "shard {shard} is neither in the token ({:?}) nor an ancestor or descendant of a shard in it",
            token.keys().collect::<Vec<_>>()
        ),
    })
}

struct Owned {
    counter: i64,
    guard: Arc<GuardState>,
    reader: Option<JoinHandle<()>>,
}

struct Coordinator<T> {
    shared: Arc<Shared<T>>,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    control: mpsc::UnboundedSender<Ctl<T>>,
    chunks: mpsc::Sender<KChunk<T>>,
    shards: BTreeMap<String, ShardInfo>,
    listed_at: Instant,
    relist: bool,
    owned: BTreeMap<String, Owned>,
    finished: HashSet<String>,
    /// Lease counters and when this worker first saw them.
    observed: HashMap<String, (i64, Instant)>,
}

impl<T> Drop for Coordinator<T> {
    fn drop(&mut self) {
        for o in self.owned.values() {
            o.guard.lose("the source stopped");
            if let Some(r) = &o.reader {
                r.abort();
            }
        }
    }
}

impl<T: Send + 'static> Coordinator<T> {
    fn period(&self) -> Duration {
        match &self.shared.config.leases {
            Some(l) => l.duration / 3,
            None => Duration::from_secs(1),
        }
    }

    /// How long a lease is trusted after a renew was sent.
    fn trusted(&self) -> Option<Duration> {
        self.shared
            .config
            .leases
            .as_ref()
            .map(|l| l.duration * 2 / 3)
    }

    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let cmd = tokio::select! {
                c = self.cmds.recv() => match c {
                    Some(c) => Some(c),
                    None => return,
                },
                _ = tick.tick() => None,
            };
            let run_tick = match cmd {
                Some(Cmd::Shutdown { reply }) => {
                    self.release_all().await;
                    let _ = reply.send(());
                    return;
                }
                Some(Cmd::Start { shard, at, reply }) => {
                    let _ = reply.send(self.start(shard, at).await);
                    false
                }
                Some(Cmd::Finish { shard, reply }) => {
                    let _ = reply.send(self.finish(&shard).await);
                    true
                }
                None => true,
            };
            if run_tick && let Err(e) = self.tick().await {
                tracing::warn!(source = %self.shared.name, error = %e, "lease / shard maintenance failed; retrying");
            }
        }
    }

    fn eligible(&self, shard: &str) -> bool {
        !self.finished.contains(shard)
            && self.shards.get(shard).is_some_and(|i| {
                i.parents
                    .iter()
                    .all(|p| self.finished.contains(p) || !self.shards.contains_key(p))
            })
    }

    async fn tick(&mut self) -> Result<()> {
        if self.relist || self.listed_at.elapsed() >= self.shared.config.shard_refresh {
            self.shards = self.shared.list_shards().await?;
            self.listed_at = Instant::now();
            self.relist = false;
        }
        if self.shared.leases.is_some() {
            self.tick_leases().await
        } else {
            let new: Vec<String> = self
                .shards
                .keys()
                .filter(|s| self.eligible(s) && !self.owned.contains_key(*s))
                .cloned()
                .collect();
            for s in &new {
                self.own(s, 0, None);
            }
            self.announce(&new);
            Ok(())
        }
    }

    fn own(&mut self, shard: &str, counter: i64, deadline: Option<Instant>) {
        let guard = GuardState::new(deadline);
        self.shared.lanes.lock().expect("lanes lock").insert(
            shard.to_owned(),
            LaneEntry {
                guard: guard.clone(),
                epoch: 0,
            },
        );
        self.owned.insert(
            shard.to_owned(),
            Owned {
                counter,
                guard,
                reader: None,
            },
        );
    }

    fn announce(&self, shards: &[String]) {
        if !shards.is_empty() {
            let lanes = shards
                .iter()
                .map(|s| self.shared.lane(s))
                .collect::<Vec<_>>();
            tracing::info!(
                ?lanes,
                "shards assigned; waiting for the runner's start positions"
            );
            let _ = self.control.send(Ctl::Event(SourceEvent::Assigned(lanes)));
        }
    }

    fn lose(&mut self, shard: &str, reason: &str) {
        if let Some(o) = self.owned.remove(shard) {
            o.guard.lose(reason);
            if let Some(r) = o.reader {
                r.abort();
            }
            self.shared.lanes.lock().expect("lanes lock").remove(shard);
            Counters::add(&self.shared.counters.leases_lost, 1);
            let lane = self.shared.lane(shard);
            tracing::warn!(%lane, reason, "lease lost; lane stopped");
            let _ = self
                .control
                .send(Ctl::Event(SourceEvent::Revoked(vec![lane])));
        }
    }

    async fn tick_leases(&mut self) -> Result<()> {
        let table = self.shared.leases.clone().expect("lease mode");
        let prefix = self.shared.lane_prefix();
        let rows = table.scan(&prefix).await?;
        let now = Instant::now();
        let by_shard: HashMap<String, _> = rows
            .iter()
            .filter_map(|r| {
                r.key
                    .strip_prefix(&prefix)
                    .map(|s| (s.to_owned(), r.clone()))
            })
            .collect();
        for (shard, row) in &by_shard {
            if row.finished {
                self.finished.insert(shard.clone());
            }
            match self.observed.get(shard) {
                Some((c, _)) if *c == row.counter => {}
                _ => {
                    self.observed.insert(shard.clone(), (row.counter, now));
                }
            }
        }
        // Renew ours (or notice they were taken).
        let mine: Vec<(String, i64)> = self
            .owned
            .iter()
            .map(|(s, o)| (s.clone(), o.counter))
            .collect();
        for (shard, counter) in mine {
            let ours = by_shard.get(&shard).is_some_and(|r| {
                r.owner.as_deref() == Some(table.worker.as_str()) && r.counter == counter
            });
            if !ours {
                self.lose(&shard, "another worker took the lease");
                continue;
            }
            let sent = Instant::now();
            match table.renew(&self.shared.lane(&shard).0, counter).await {
                Ok(Some(c)) => {
                    let trusted = self.trusted().expect("lease mode");
                    if let Some(o) = self.owned.get_mut(&shard) {
                        o.counter = c;
                        o.guard.extend(sent + trusted);
                    }
                    self.observed.insert(shard.clone(), (c, Instant::now()));
                }
                Ok(None) => self.lose(
                    &shard,
                    "the lease renewal was refused (taken by another worker)",
                ),
                Err(e) => {
                    tracing::warn!(%shard, error = %e, "lease renewal failed; the guard expires unless the next one succeeds")
                }
            }
        }
        // Take one more if below a fair share.
        let expired = |shard: &str, counter: i64| {
            self.observed
                .get(shard)
                .is_some_and(|(c, t)| *c == counter && now.duration_since(*t) >= table.duration)
        };
        let mut workers: HashSet<&str> = by_shard
            .iter()
            .filter(|(s, r)| !r.finished && !expired(s, r.counter))
            .filter_map(|(_, r)| r.owner.as_deref())
            .collect();
        workers.insert(table.worker.as_str());
        let eligible: Vec<&String> = self.shards.keys().filter(|s| self.eligible(s)).collect();
        let share = eligible.len().div_ceil(workers.len());
        if self.owned.len() >= share {
            return Ok(());
        }
        let candidate = eligible.into_iter().find_map(|s| {
            if self.owned.contains_key(s) {
                return None;
            }
            match by_shard.get(s) {
                None => Some((s.clone(), None)),
                Some(r) if r.finished => None,
                Some(r) if r.owner.is_none() || expired(s, r.counter) => {
                    Some((s.clone(), Some(r.counter)))
                }
                Some(_) => None,
            }
        });
        if let Some((shard, seen)) = candidate {
            let sent = Instant::now();
            if let Some(c) = table.take(&self.shared.lane(&shard).0, seen).await? {
                Counters::add(&self.shared.counters.leases_taken, 1);
                tracing::info!(%shard, worker = %table.worker, previous_counter = ?seen, "lease taken");
                let trusted = self.trusted().expect("lease mode");
                self.own(&shard, c, Some(sent + trusted));
                self.observed.insert(shard.clone(), (c, Instant::now()));
                self.announce(&[shard]);
            }
        }
        Ok(())
    }

    async fn start(&mut self, shard: String, at: Cursor) -> Result<()> {
        let lane = self.shared.lane(&shard);
        let Some(owned) = self.owned.get_mut(&shard) else {
            return Err(Error::UnknownLane {
                lane,
                reason: "this worker does not hold the shard".into(),
            });
        };
        if at == Cursor::End {
            return self.finish(&shard).await;
        }
        if let Some(r) = owned.reader.take() {
            r.abort();
        }
        let epoch = {
            let mut lanes = self.shared.lanes.lock().expect("lanes lock");
            let entry = lanes.get_mut(&shard).expect("owned lanes have an entry");
            entry.epoch = self.shared.epochs.fetch_add(1, Ordering::Relaxed) + 1;
            entry.epoch
        };
        let reader = Reader {
            shared: self.shared.clone(),
            shard: shard.clone(),
            epoch,
            guard: owned.guard.clone(),
            chunks: self.chunks.clone(),
            control: self.control.clone(),
        };
        owned.reader = Some(tokio::spawn(reader.run(at)));
        Ok(())
    }

    /// The shard's end is durable: record it, let its children start.
    async fn finish(&mut self, shard: &str) -> Result<()> {
        let lane = self.shared.lane(shard);
        if let Some(table) = &self.shared.leases
            && !table
                .checkpoint(lane.as_str(), &Position::End, true)
                .await?
        {
            tracing::info!(%lane, "shard finished but its lease is no longer ours; the holder records it");
        }
        if let Some(o) = self.owned.remove(shard) {
            o.guard.lose("the shard is finished");
            if let Some(r) = o.reader {
                r.abort();
            }
        }
        self.shared.lanes.lock().expect("lanes lock").remove(shard);
        self.finished.insert(shard.to_owned());
        self.relist = true;
        tracing::info!(%lane, "shard finished");
        let _ = self
            .control
            .send(Ctl::Event(SourceEvent::Finished(vec![lane])));
        Ok(())
    }

    async fn release_all(&mut self) {
        let owned = std::mem::take(&mut self.owned);
        for (shard, o) in owned {
            o.guard.lose("the source shut down");
            if let Some(r) = o.reader {
                r.abort();
            }
            if let Some(table) = &self.shared.leases
                && let Err(e) = table.release(&self.shared.lane(&shard).0, o.counter).await
            {
                tracing::warn!(%shard, error = %e, "lease release failed (it expires on its own)");
            }
        }
        self.shared.lanes.lock().expect("lanes lock").clear();
    }
}

/// Reads one shard from a position, chunk by chunk.
struct Reader<T> {
    shared: Arc<Shared<T>>,
    shard: String,
    epoch: u64,
    guard: Arc<GuardState>,
    chunks: mpsc::Sender<KChunk<T>>,
    control: mpsc::UnboundedSender<Ctl<T>>,
}

impl<T: Send + 'static> Reader<T> {
    async fn run(self, start: Cursor) {
        if let Err(e) = self.read(start).await {
            let _ = self.control.send(Ctl::Failed(e));
        }
    }

    async fn read(&self, start: Cursor) -> Result<()> {
        let s = &self.shared;
        let shard = self.shard.as_str();
        let lane = s.lane(shard);
        let mut pos = start;
        let mut iterator: Option<String> = None;
        let mut backoff = Backoff::new(s.config.max_backoff);
        let mut last_call: Option<Instant> = None;
        loop {
            if self.guard.is_lost() {
                return Ok(());
            }
            let it = match iterator.take() {
                Some(it) => it,
                None => match s.api.iterator(shard, &pos).await {
                    Ok(it) => it,
                    Err(e) if e.class != Class::Fatal => {
                        Counters::add(&s.counters.throttled, 1);
                        backoff.wait().await;
                        continue;
                    }
                    Err(e) => return Err(e.error),
                },
            };
            pace(&mut last_call, s.config.min_call_interval).await;
            let out = match s
                .api
                .get_records(shard, &it, s.config.get_records_limit)
                .await
            {
                Ok(out) => out,
                Err(e) => match e.class {
                    Class::Expired => {
                        Counters::add(&s.counters.iterators_renewed, 1);
                        tracing::debug!(%lane, position = %pos.position(), "shard iterator expired; renewing from the last position");
                        continue;
                    }
                    Class::Throttled | Class::Transient => {
                        Counters::add(&s.counters.throttled, 1);
                        tracing::debug!(%lane, error = %e.error, "GetRecords throttled or failed; backing off");
                        backoff.wait().await;
                        iterator = Some(it);
                        continue;
                    }
                    Class::Fatal => return Err(e.error),
                },
            };
            backoff.reset();
            let next = out.next;
            let listed = out.records.len();
            if listed > 0 || next.is_none() {
                let (records, dead, last, skipped) = s.decode(shard, &pos, out.records);
                s.dead_letters(dead).await?;
                Counters::add(&s.counters.skipped_before_cut, skipped);
                let end = match (&next, last) {
                    (None, _) => Cursor::End,
                    (Some(_), Some(l)) => Cursor::After(l),
                    (Some(_), None) => pos.clone(),
                };
                if end != pos {
                    let chunk = Chunk {
                        lane: lane.clone(),
                        records,
                        start: pos.position(),
                        end: end.position(),
                    };
                    let item = KChunk {
                        shard: self.shard.clone(),
                        epoch: self.epoch,
                        chunk,
                    };
                    if self.chunks.send(item).await.is_err() {
                        return Ok(());
                    }
                    pos = end;
                }
            }
            match next {
                None => {
                    tracing::info!(%lane, "shard closed and fully read");
                    return Ok(());
                }
                Some(n) => iterator = Some(n),
            }
            if listed == 0 {
                tokio::time::sleep(
                    s.config
                        .idle_wait
                        .saturating_sub(s.config.min_call_interval),
                )
                .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(spec: &[(&str, &[&str])]) -> BTreeMap<String, ShardInfo> {
        spec.iter()
            .map(|(s, p)| {
                (
                    s.to_string(),
                    ShardInfo {
                        parents: p.iter().map(|x| x.to_string()).collect(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn token_resolution_follows_the_shard_lineage() {
        // 0 split into 1 and 2; 2 split into 3 and 4.
        let graph = shards(&[
            ("0", &[]),
            ("1", &["0"]),
            ("2", &["0"]),
            ("3", &["2"]),
            ("4", &["2"]),
        ]);
        let seq = "49590338271490256608559692538361571095921575989136588898";
        let token = BTreeMap::from([
            ("1".to_string(), Some(seq.to_string())),
            ("2".to_string(), Some(seq.to_string())),
        ]);
        let lane = LaneId::new("kinesis:s:x");
        let r = |s: &str| resolve_token(&lane, s, &graph, &token);
        assert_eq!(
            r("1").unwrap(),
            Position::Sequence {
                sequence: Arc::from(seq)
            }
        );
        // A shard captured empty starts at its beginning.
        let empty = BTreeMap::from([("1".to_string(), None)]);
        assert_eq!(
            resolve_token(&lane, "1", &graph, &empty).unwrap(),
            Position::Beginning
        );
        assert_eq!(r("0").unwrap(), Position::End);
        assert_eq!(r("3").unwrap(), Position::Beginning);
        assert_eq!(r("4").unwrap(), Position::Beginning);
        let alone = shards(&[("9", &[])]);
        let err = resolve_token(&lane, "9", &alone, &token).unwrap_err();
        assert!(err.to_string().contains("neither in the token"), "{err}");
    }

    #[test]
    fn positions_round_trip_through_cursors() {
        let lane = LaneId::new("kinesis:s:x");
        for p in [
            Position::Beginning,
            Position::End,
            at_timestamp(1_716_200_000_000),
            Position::Sequence {
                sequence: Arc::from("49590338271490256608559692538361571095921575989136588898"),
            },
        ] {
            assert_eq!(Cursor::parse(&lane, &p).unwrap().position(), p);
        }
        assert!(Cursor::parse(&lane, &Position::Offset { offset: 1 }).is_err());
        assert!(
            Cursor::parse(
                &lane,
                &Position::Sequence {
                    sequence: Arc::from("at_timestamp:x")
                }
            )
            .is_err()
        );
    }
}
