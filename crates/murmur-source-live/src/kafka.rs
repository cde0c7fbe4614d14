//! The Kafka source (rdkafka / librdkafka).
//!
//! One poll thread owns a `BaseConsumer`: it copies payloads into per-
//! partition raw batches and hands each batch to the blocking pool for
//! decoding, keeping the batches in order through a bounded channel of
//! join handles (so per-partition order holds and decoding runs in
//! parallel with polling). Rebalance callbacks only *record* the change;
//! the poll thread then emits [`SourceEvent::Assigned`] and waits for the
//! runner's [`start_lane`](LiveSource::start_lane) answers before it calls
//! `assign` with those exact offsets (librdkafka allows the assign call to
//! come after the callback), and on a revoke it emits
//! [`SourceEvent::Revoked`] and waits until the runner comes back for the
//! next event (its in-flight batches are flushed by then) before it
//! unassigns.

use crate::decode::{Decoder, Outcome};
use crate::error::{Error, Result};
use crate::source::{
    Chunk, Counters, GuardState, LeaseGuard, LiveSource, Metrics, OnExpired, SourceEvent, Start,
};
use murmur_core::{HandoffToken, LaneId, Position, Record};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Dead-letter header: the topic the message was read from.
pub const HEADER_SOURCE_TOPIC: &str = "murmur.source.topic";
/// Dead-letter header: its partition (decimal).
pub const HEADER_SOURCE_PARTITION: &str = "murmur.source.partition";
/// Dead-letter header: its offset (decimal).
pub const HEADER_SOURCE_OFFSET: &str = "murmur.source.offset";
/// Dead-letter header: why it could not be decoded.
pub const HEADER_ERROR: &str = "murmur.error";
/// Dead-letter header, only on a payload that was cut to fit a message:
/// `<n> bytes, sha256 <hex>; the first <m> kept`.
pub const HEADER_PAYLOAD_CUT: &str = "murmur.payload.cut";

/// Properties Murmur sets itself: the exactly-once protocol depends on them.
const RESERVED: [&str; 6] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
];

/// The lane id of a Kafka partition: `kafka:<topic>:<partition>`.
pub fn kafka_lane(topic: &str, partition: i32) -> LaneId {
    LaneId::new(format!("kafka:{topic}:{partition}"))
}

/// librdkafka properties (security and tuning), with secrets kept out of
/// `Debug`: the value of any key containing `password`, `secret`, `token`
/// or `key` prints as `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq)]
struct Properties(BTreeMap<String, String>);

fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "key"]
        .iter()
        .any(|s| k.contains(s))
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                (
                    k,
                    if is_secret(k) {
                        "<redacted>"
                    } else {
                        v.as_str()
                    },
                )
            }))
            .finish()
    }
}

/// How partitions are owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// This process owns the listed partitions (all when `None`).
    Assign(Option<Vec<i32>>),
    /// A consumer group spreads the partitions over processes.
    Subscribe,
}

/// Configuration of a [`KafkaSource`]. `Debug` redacts secret properties.
///
/// ```
/// use murmur_source_live::KafkaConfig;
/// let c = KafkaConfig::subscribe("broker:9092", "events", "murmur-clicks")
///     .property("security.protocol", "SASL_SSL")
///     .property("sasl.password", "hunter2")
///     .dead_letter_topic("events.dlq");
/// let shown = format!("{c:?}");
/// assert!(shown.contains("SASL_SSL") && !shown.contains("hunter2"));
/// ```
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    brokers: String,
    topic: String,
    group_id: Option<String>,
    mode: Mode,
    dead_letter_topic: Option<String>,
    skip_bad_messages: bool,
    properties: Properties,
    max_chunk_records: usize,
    max_chunk_wait: Duration,
    on_expired: OnExpired,
    revoke_timeout: Duration,
    cut_skew: Duration,
    request_timeout: Duration,
}

impl KafkaConfig {
    fn new(brokers: &str, topic: &str, group_id: Option<String>, mode: Mode) -> Self {
        KafkaConfig {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            group_id,
            mode,
            dead_letter_topic: None,
            skip_bad_messages: false,
            properties: Properties::default(),
            max_chunk_records: 2_000,
            max_chunk_wait: Duration::from_millis(50),
            on_expired: OnExpired::Fail,
            revoke_timeout: Duration::from_secs(30),
            cut_skew: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// Explicit assignment: this process owns every partition of `topic`
    /// (narrow it with [`partitions`](Self::partitions)). Acks are committed
    /// to a group only if [`group_id`](Self::group_id) is set.
    pub fn assign(brokers: &str, topic: &str) -> Self {
        KafkaConfig::new(brokers, topic, None, Mode::Assign(None))
    }

    /// Consumer-group subscription: partitions move between the group's
    /// processes; each lane resumes from its checkpoint, never from group
    /// offsets (acks still commit there, for lag tooling).
    pub fn subscribe(brokers: &str, topic: &str, group_id: &str) -> Self {
        KafkaConfig::new(brokers, topic, Some(group_id.to_owned()), Mode::Subscribe)
    }

    /// Explicit assignment of these partitions only.
    pub fn partitions(mut self, partitions: impl IntoIterator<Item = i32>) -> Self {
        if let Mode::Assign(p) = &mut self.mode {
            *p = Some(partitions.into_iter().collect());
        }
        self
    }

    /// The group acks are committed to (explicit assignment).
    pub fn group_id(mut self, group_id: &str) -> Self {
        self.group_id = Some(group_id.to_owned());
        self
    }

    /// Undecodable messages go to this topic, with headers
    /// [`HEADER_SOURCE_TOPIC`], [`HEADER_SOURCE_PARTITION`],
    /// [`HEADER_SOURCE_OFFSET`] and [`HEADER_ERROR`] (and
    /// [`HEADER_PAYLOAD_CUT`] on a payload over 512 KiB, cut to that so the
    /// dead letter fits a message). Without one, a bad message stops the
    /// source with [`Error::BadMessage`](crate::Error::BadMessage) naming
    /// it (nothing past it is acknowledged), unless
    /// [`skip_bad_messages`](Self::skip_bad_messages).
    pub fn dead_letter_topic(mut self, topic: &str) -> Self {
        self.dead_letter_topic = Some(topic.to_owned());
        self
    }

    /// Without a [`dead_letter_topic`](Self::dead_letter_topic), log bad
    /// messages (undecodable, or refused by the runner's check) with their
    /// partition, offset and reason, count them and go on, instead of
    /// stopping at the first one. The message stays in the topic for as
    /// long as the topic retains it.
    pub fn skip_bad_messages(mut self) -> Self {
        self.skip_bad_messages = true;
        self
    }

    /// A librdkafka property passed through to every client (e.g.
    /// `security.protocol`, `sasl.mechanisms`, `sasl.username`,
    /// `sasl.password`, `ssl.ca.location`). The offset and group keys that
    /// the protocol depends on are refused at connect.
    pub fn property(mut self, key: &str, value: &str) -> Self {
        self.properties.0.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Several librdkafka properties at once (e.g. a security map read
    /// from the worker's configuration); see [`property`](Self::property).
    pub fn properties<K: Into<String>, V: Into<String>>(
        mut self,
        map: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.properties
            .0
            .extend(map.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// A chunk is cut at this many records (default 2,000).
    pub fn max_chunk_records(mut self, n: usize) -> Self {
        self.max_chunk_records = n.max(1);
        self
    }

    /// A chunk waits at most this long for more records (default 50 ms).
    pub fn max_chunk_wait(mut self, wait: Duration) -> Self {
        self.max_chunk_wait = wait;
        self
    }

    /// What to do with start positions below the retained log (default
    /// [`OnExpired::Fail`]).
    pub fn on_expired(mut self, policy: OnExpired) -> Self {
        self.on_expired = policy;
        self
    }

    /// How long a revoke waits for the runner to flush (default 30 s).
    pub fn revoke_timeout(mut self, timeout: Duration) -> Self {
        self.revoke_timeout = timeout;
        self
    }

    /// How far before an event-time cut a [`Start::Token`] with
    /// [`HandoffToken::EventTimeCut`] starts reading (default 5 min).
    pub fn event_time_cut_skew(mut self, skew: Duration) -> Self {
        self.cut_skew = skew;
        self
    }

    /// Timeout of metadata, watermark and offset lookups (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// A group id for consumers that only `assign` (librdkafka needs one
    /// for assign; nothing is committed under it).
    fn private_group(&self, purpose: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        format!(
            "murmur-{purpose}-{}-{}-{nanos}",
            self.topic,
            std::process::id()
        )
    }

    fn client_config(&self, group: Option<&str>) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.properties.0 {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.brokers);
        if let Some(g) = group {
            c.set("group.id", g);
        }
        c.set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "false");
        c
    }

    fn validate(&self) -> Result<()> {
        if let Some(k) = self
            .properties
            .0
            .keys()
            .find(|k| RESERVED.contains(&k.as_str()))
        {
            return Err(Error::Config {
                reason: format!(
                    "property {k} is set by murmur itself (use the KafkaConfig methods)"
                ),
            });
        }
        if self.topic.is_empty() || self.topic.contains(':') {
            return Err(Error::Config {
                reason: format!("invalid topic name {:?}", self.topic),
            });
        }
        if self.mode == Mode::Subscribe && self.group_id.is_none() {
            return Err(Error::Config {
                reason: "subscription needs a group id".into(),
            });
        }
        Ok(())
    }
}

/// What the rebalance callback saw; handled by the poll thread after the
/// callback returned (librdkafka waits for the assign / unassign call).
#[derive(Debug)]
enum RebalanceOp {
    Assign(Vec<i32>),
    Revoke(Vec<i32>),
}

/// The consumer context: records rebalances instead of acting on them.
struct Ctx {
    topic: String,
    ops: Mutex<Vec<RebalanceOp>>,
    /// Set when the consumer is being closed: rebalances are then applied
    /// at once (nobody is left to answer).
    closing: AtomicBool,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let parts: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect();
        let closing = self.closing.load(Ordering::SeqCst);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS if !closing => {
                self.ops
                    .lock()
                    .expect("ops lock")
                    .push(RebalanceOp::Assign(parts));
                Ok(())
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS if !closing => {
                self.ops
                    .lock()
                    .expect("ops lock")
                    .push(RebalanceOp::Revoke(parts));
                Ok(())
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS if cooperative => {
                consumer.incremental_assign(tpl)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => consumer.assign(tpl),
            _ if cooperative => consumer.incremental_unassign(tpl),
            _ => {
                if !matches!(err, RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
                    tracing::warn!(topic = %self.topic, error = ?err, "rebalance error; unassigning");
                }
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::warn!(topic = %self.topic, error = %e, "rebalance during close failed");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // Group offsets are for lag tooling only: the checkpoint is the truth.
            tracing::debug!(topic = %self.topic, error = %e, "group offset commit failed");
        }
    }
}

/// A message copied out of librdkafka.
struct RawMeta {
    offset: i64,
    timestamp: Option<i64>,
    range: Option<(u32, u32)>,
}

/// Messages of one partition, waiting to be decoded.
struct RawBatch {
    partition: i32,
    epoch: u64,
    start: i64,
    end: i64,
    metas: Vec<RawMeta>,
    data: Vec<u8>,
}

/// Buffers of decoded raw batches, kept for the next ones (fresh large
/// allocations cost page faults).
type Buffers = (Vec<u8>, Vec<RawMeta>);

impl RawBatch {
    fn new(partition: i32, epoch: u64, start: i64, (data, metas): Buffers) -> Self {
        RawBatch {
            partition,
            epoch,
            start,
            end: start,
            metas,
            data,
        }
    }

    fn push(&mut self, offset: i64, timestamp: Option<i64>, payload: Option<&[u8]>) {
        let range = payload.map(|p| {
            let from = self.data.len() as u32;
            self.data.extend_from_slice(p);
            (from, p.len() as u32)
        });
        self.metas.push(RawMeta {
            offset,
            timestamp,
            range,
        });
        self.end = offset + 1;
    }

    fn payload(&self, m: &RawMeta) -> Option<&[u8]> {
        m.range
            .map(|(from, len)| &self.data[from as usize..(from + len) as usize])
    }
}

/// A message that could not be decoded.
struct DeadLetter {
    partition: i32,
    offset: i64,
    reason: String,
    payload: Option<Vec<u8>>,
}

impl DeadLetter {
    /// `topic/partition@offset`, as errors name a message.
    fn origin(&self, topic: &str) -> String {
        format!("{topic}/{}@{}", self.partition, self.offset)
    }
}

/// A lane's shared state (read by the runner's calls, written by the poll
/// thread on assignment changes).
struct LaneEntry {
    guard: Arc<GuardState>,
    /// Bumped by every `start_lane`: chunks of older epochs are dropped.
    epoch: u64,
}

/// State shared between the source handle, the poll thread and decode jobs.
struct Shared<T> {
    config: KafkaConfig,
    name: String,
    decoder: Decoder<T>,
    counters: Counters,
    /// A group-less consumer for watermarks, offsets and metadata.
    meta: BaseConsumer,
    dlq: Option<FutureProducer>,
    lanes: Mutex<HashMap<i32, LaneEntry>>,
    /// Spare raw-batch buffers.
    buffers: Mutex<Vec<Buffers>>,
    /// Why the poll thread stopped, if it did.
    failure: Mutex<Option<String>>,
}

impl<T: Send + 'static> Shared<T> {
    fn lane(&self, partition: i32) -> LaneId {
        kafka_lane(&self.config.topic, partition)
    }

    fn partition_of(&self, lane: &LaneId) -> Result<i32> {
        let bad = |reason: String| Error::UnknownLane {
            lane: lane.clone(),
            reason,
        };
        let rest = lane
            .as_str()
            .strip_prefix("kafka:")
            .ok_or_else(|| bad("not a kafka lane".into()))?;
        let (topic, partition) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("expected kafka:<topic>:<partition>".into()))?;
        if topic != self.config.topic {
            return Err(bad(format!(
                "this source reads topic {}",
                self.config.topic
            )));
        }
        partition
            .parse::<i32>()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| bad(format!("invalid partition {partition:?}")))
    }

    fn kafka_err(&self, operation: &'static str) -> impl FnOnce(KafkaError) -> Error + '_ {
        move |source| Error::Kafka {
            operation,
            topic: self.config.topic.clone(),
            source,
        }
    }

    fn watermarks(&self, partition: i32) -> Result<(i64, i64)> {
        self.meta
            .fetch_watermarks(&self.config.topic, partition, self.config.request_timeout)
            .map_err(self.kafka_err("fetch watermarks"))
    }

    /// Checks `wanted` against the retained log; applies [`OnExpired`].
    fn check_retained(&self, partition: i32, wanted: i64) -> Result<i64> {
        let (earliest, latest) = self.watermarks(partition)?;
        if wanted < earliest {
            let err = Error::OffsetExpired {
                topic: self.config.topic.clone(),
                partition,
                wanted,
                earliest,
                latest,
                missing: earliest - wanted,
            };
            return match self.config.on_expired {
                OnExpired::Fail => Err(err),
                OnExpired::Earliest => {
                    tracing::warn!(%err, "starting at the earliest retained offset (OnExpired::Earliest)");
                    Ok(earliest)
                }
            };
        }
        if wanted > latest {
            return Err(Error::OffsetAhead {
                topic: self.config.topic.clone(),
                partition,
                wanted,
                latest,
            });
        }
        Ok(wanted)
    }

    /// `offset`, where a cut's time `from_ms` resolved, unless it is the
    /// first retained message, newer than `from_ms`, after deleted ones:
    /// those may have been at or after the cut ([`Error::CutExpired`], or
    /// a warning under [`OnExpired::Earliest`]).
    fn check_cut_retained(&self, partition: i32, from_ms: i64, offset: i64) -> Result<i64> {
        let (earliest, latest) = self.watermarks(partition)?;
        if earliest == 0 || offset != earliest || earliest == latest {
            return Ok(offset);
        }
        let consumer = self.reader(partition, earliest)?;
        let Some((_, Some(first_ms))) = self.probe(&consumer, partition, earliest)? else {
            return Ok(offset);
        };
        if first_ms <= from_ms {
            return Ok(offset);
        }
        let err = Error::CutExpired {
            topic: self.config.topic.clone(),
            partition,
            from_ms,
            earliest,
            first_ms,
        };
        match self.config.on_expired {
            OnExpired::Fail => Err(err),
            OnExpired::Earliest => {
                tracing::warn!(%err, "starting at the earliest retained offset (OnExpired::Earliest)");
                Ok(offset)
            }
        }
    }

    /// A private consumer reading `partition` from `offset`, reporting
    /// the end of the log.
    fn reader(&self, partition: i32, offset: i64) -> Result<BaseConsumer> {
        let mut config = self
            .config
            .client_config(Some(&self.config.private_group("read")));
        config.set("enable.partition.eof", "true");
        let consumer: BaseConsumer = config.create().map_err(self.kafka_err("create reader"))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.config.topic, partition, Offset::Offset(offset))
            .map_err(self.kafka_err("assign"))?;
        consumer.assign(&tpl).map_err(self.kafka_err("assign"))?;
        Ok(consumer)
    }

    /// The offset and timestamp of the first message at or after `offset`
    /// (`None` at the end of the log).
    fn probe(
        &self,
        consumer: &BaseConsumer,
        partition: i32,
        offset: i64,
    ) -> Result<Option<(i64, Option<i64>)>> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.config.topic, partition, Offset::Offset(offset))
            .map_err(self.kafka_err("assign"))?;
        consumer.assign(&tpl).map_err(self.kafka_err("assign"))?;
        let deadline = Instant::now() + self.config.request_timeout;
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.offset() >= offset => {
                    return Ok(Some((m.offset(), m.timestamp().to_millis())));
                }
                Some(Ok(_)) => {}
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(None),
                Some(Err(e)) => return Err(self.kafka_err("read for timestamp")(e)),
                None => {}
            }
        }
        Err(Error::Kafka {
            operation: "read for timestamp",
            topic: self.config.topic.clone(),
            source: KafkaError::MessageConsumption(RDKafkaErrorCode::RequestTimedOut),
        })
    }

    /// Finds the first offset whose message timestamp is at or after `ms`
    /// by reading (binary search; assumes non-decreasing timestamps, as
    /// Kafka's own time index does).
    fn search_time(&self, partition: i32, ms: i64, earliest: i64, latest: i64) -> Result<i64> {
        let consumer = self.reader(partition, earliest)?;
        let no_time = || Error::Kafka {
            operation: "offsets for times",
            topic: self.config.topic.clone(),
            source: KafkaError::OffsetFetch(RDKafkaErrorCode::InvalidTimestamp),
        };
        let at_or_after = |offset: i64| -> Result<bool> {
            match self.probe(&consumer, partition, offset)? {
                None => Ok(true),
                Some((_, Some(t))) => Ok(t >= ms),
                Some((_, None)) => Err(no_time()),
            }
        };
        let (mut lo, mut hi) = (earliest, latest);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if at_or_after(mid)? {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    fn offset_for_time(&self, partition: i32, ms: i64) -> Result<i64> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.config.topic, partition, Offset::Offset(ms))
            .map_err(self.kafka_err("offsets for times"))?;
        let found = self
            .meta
            .offsets_for_times(tpl, self.config.request_timeout)
            .map_err(self.kafka_err("offsets for times"))?;
        let elem = found
            .find_partition(&self.config.topic, partition)
            .ok_or_else(|| Error::Kafka {
                operation: "offsets for times",
                topic: self.config.topic.clone(),
                source: KafkaError::OffsetFetch(RDKafkaErrorCode::UnknownPartition),
            })?;
        elem.error().map_err(self.kafka_err("offsets for times"))?;
        if let Offset::Offset(o) = elem.offset() {
            return Ok(o);
        }
        // "No message at or after the time": the end of the log, unless the
        // last message says otherwise (a broker that cannot look timestamps
        // up, e.g. librdkafka's mock broker): then search by reading rather
        // than silently skip to the end.
        let (earliest, latest) = self.watermarks(partition)?;
        if latest == earliest {
            return Ok(latest);
        }
        let consumer = self.reader(partition, latest - 1)?;
        match self.probe(&consumer, partition, latest - 1)? {
            Some((_, Some(t))) if t >= ms => {
                tracing::warn!(topic = %self.config.topic, partition, at_ms = ms,
                    "the broker did not resolve the timestamp; searching by reading message timestamps");
                drop(consumer);
                self.search_time(partition, ms, earliest, latest)
            }
            _ => Ok(latest),
        }
    }

    fn resolve(&self, lane: &LaneId, partition: i32, start: &Start) -> Result<i64> {
        match start {
            Start::Earliest => Ok(self.watermarks(partition)?.0),
            Start::Latest => Ok(self.watermarks(partition)?.1),
            Start::Timestamp(ms) => self.offset_for_time(partition, *ms),
            Start::Token(HandoffToken::Kafka { topic, offsets }) => {
                if *topic != self.config.topic {
                    return Err(Error::Token {
                        lane: lane.clone(),
                        reason: format!(
                            "the token is for topic {topic}, this source reads {}",
                            self.config.topic
                        ),
                    });
                }
                let wanted = *offsets.get(&partition).ok_or_else(|| Error::Token {
                    lane: lane.clone(),
                    reason: format!(
                        "the token has no offset for partition {partition} (it covers {:?}); a partition added \
                         after the handoff needs an explicit start policy",
                        offsets.keys().collect::<Vec<_>>()
                    ),
                })?;
                self.check_retained(partition, wanted)
            }
            Start::Token(HandoffToken::EventTimeCut { at_ms }) => {
                let skew = i64::try_from(self.config.cut_skew.as_millis()).unwrap_or(i64::MAX);
                let from_ms = at_ms.saturating_sub(skew);
                let offset = self.offset_for_time(partition, from_ms)?;
                self.check_cut_retained(partition, from_ms, offset)
            }
            Start::Token(other) => Err(Error::Token {
                lane: lane.clone(),
                reason: format!("a Kafka source cannot start from token {}", other.to_json()),
            }),
        }
    }

    /// Decodes a raw batch (on the blocking pool).
    fn decode(&self, batch: &RawBatch) -> (Vec<Record<T>>, Vec<DeadLetter>, u64) {
        let mut records = Vec::with_capacity(batch.metas.len());
        let mut dead = Vec::new();
        let mut skipped = 0;
        let check = self.decoder.check();
        for m in &batch.metas {
            let payload = batch.payload(m);
            match self.decoder.decode_message(
                check.as_ref(),
                payload,
                m.timestamp,
                Position::Offset { offset: m.offset },
            ) {
                Outcome::Record(r) => records.push(r),
                Outcome::BeforeCut => skipped += 1,
                Outcome::Dead(reason) => dead.push(DeadLetter {
                    partition: batch.partition,
                    offset: m.offset,
                    reason,
                    payload: payload.map(<[u8]>::to_vec),
                }),
            }
        }
        (records, dead, skipped)
    }

    /// Delivers dead letters (and waits for the broker's acknowledgement:
    /// a batch is never handed on before its dead letters are safe).
    async fn dead_letters(&self, dead: Vec<DeadLetter>) -> Result<()> {
        if dead.is_empty() {
            return Ok(());
        }
        let topic = &self.config.topic;
        let Some(producer) = &self.dlq else {
            return crate::decode::without_destination(
                self.config.skip_bad_messages,
                "topic",
                dead.iter().map(|d| (d.origin(topic), d.reason.as_str())),
                &self.counters.dead_letters,
            );
        };
        Counters::add(&self.counters.dead_letters, dead.len() as u64);
        let dlq = self.config.dead_letter_topic.as_deref().unwrap_or_default();
        let sends = dead.iter().map(|d| {
            let partition = d.partition.to_string();
            let offset = d.offset.to_string();
            let payload = d.payload.as_deref().map(crate::decode::clip_dead_letter);
            let mut headers = OwnedHeaders::new()
                .insert(Header {
                    key: HEADER_SOURCE_TOPIC,
                    value: Some(topic.as_str()),
                })
                .insert(Header {
                    key: HEADER_SOURCE_PARTITION,
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: HEADER_SOURCE_OFFSET,
                    value: Some(offset.as_str()),
                })
                .insert(Header {
                    key: HEADER_ERROR,
                    value: Some(d.reason.as_str()),
                });
            if let Some(note) = payload.as_ref().and_then(|p| p.note.as_deref()) {
                headers = headers.insert(Header {
                    key: HEADER_PAYLOAD_CUT,
                    value: Some(note),
                });
            }
            let mut record = FutureRecord::<(), [u8]>::to(dlq).headers(headers);
            if let Some(p) = &payload {
                record = record.payload(p.bytes);
            }
            tracing::warn!(%topic, partition = d.partition, offset = d.offset, reason = %d.reason, dead_letter_topic = dlq,
                "bad message (undecodable or refused by the pipeline) sent to the dead-letter topic");
            producer.send(record, self.config.request_timeout)
        });
        let results = futures::future::join_all(sends).await;
        for (d, r) in dead.iter().zip(results) {
            if let Err((e, _)) = r {
                return Err(Error::DeadLetter {
                    origin: d.origin(topic),
                    destination: dlq.to_owned(),
                    message: e.to_string(),
                });
            }
        }
        Ok(())
    }

    fn take_buffers(&self) -> Buffers {
        self.buffers
            .lock()
            .expect("buffers lock")
            .pop()
            .unwrap_or_default()
    }

    fn give_buffers(&self, batch: RawBatch) {
        let (mut data, mut metas) = (batch.data, batch.metas);
        data.clear();
        metas.clear();
        let mut pool = self.buffers.lock().expect("buffers lock");
        if pool.len() < 32 {
            pool.push((data, metas));
        }
    }

    /// Decodes a raw batch into a chunk (on the blocking pool).
    fn decode_chunk(&self, batch: RawBatch) -> Decoded<T> {
        let (records, dead, skipped) = self.decode(&batch);
        let chunk = Chunk {
            lane: self.lane(batch.partition),
            records,
            start: Position::Offset {
                offset: batch.start,
            },
            end: Position::Offset { offset: batch.end },
        };
        self.give_buffers(batch);
        Decoded {
            chunk,
            dead,
            skipped,
        }
    }

    fn fail(&self, reason: String) {
        tracing::error!(source = %self.name, %reason, "kafka source stopped");
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
}

/// A decoded chunk and what did not make it into it.
struct Decoded<T> {
    chunk: Chunk<T>,
    dead: Vec<DeadLetter>,
    skipped: u64,
}

/// A chunk being decoded on the blocking pool.
type DecodeJob<T> = JoinHandle<Decoded<T>>;

/// A chunk being finished by [`KafkaSource::next`]: decoded, its dead
/// letters delivered. Kept across calls, so `next` is cancel-safe.
type ChunkJob<T> = Pin<Box<dyn Future<Output = Result<Chunk<T>>> + Send>>;

/// What flows from the poll thread to [`KafkaSource::next`], in order.
enum Item<T> {
    Event(SourceEvent<T>),
    Chunk {
        partition: i32,
        epoch: u64,
        job: DecodeJob<T>,
    },
}

enum Command {
    Start {
        partition: i32,
        offset: i64,
        epoch: u64,
    },
    Shutdown(Option<Arc<BaseConsumer<Ctx>>>),
}

/// A Kafka live source: see the [crate docs](crate) for the protocol.
///
/// Created with [`connect`](KafkaSource::connect) inside a Tokio runtime
/// (decoding runs on its blocking pool). Dropping it stops the poll thread
/// and leaves the group.
pub struct KafkaSource<T> {
    shared: Arc<Shared<T>>,
    consumer: Option<Arc<BaseConsumer<Ctx>>>,
    events: mpsc::Receiver<Item<T>>,
    /// Only touched through `&mut self` (`get_mut`); the mutex makes the
    /// source `Sync` although the boxed future is not.
    current: Mutex<Option<(i32, u64, ChunkJob<T>)>>,
    cmds: std_mpsc::Sender<Command>,
    revoke_done: std_mpsc::SyncSender<()>,
    revoke_pending: bool,
    failed: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<T> fmt::Debug for KafkaSource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSource")
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<T: Send + 'static> KafkaSource<T> {
    /// Connects: creates the consumer (subscribing in group mode) and the
    /// dead-letter producer, and starts the poll thread. In explicit mode
    /// the first event is [`SourceEvent::Assigned`] with every configured
    /// partition.
    pub async fn connect(config: KafkaConfig, decoder: Decoder<T>) -> Result<Self> {
        config.validate()?;
        let topic = config.topic.clone();
        let kerr = |operation: &'static str| {
            let topic = topic.clone();
            move |source| Error::Kafka {
                operation,
                topic,
                source,
            }
        };
        let meta: BaseConsumer = config
            .client_config(None)
            .create()
            .map_err(kerr("create consumer"))?;
        let ctx = Ctx {
            topic: topic.clone(),
            ops: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
        };
        let group = config
            .group_id
            .clone()
            .unwrap_or_else(|| config.private_group("assign"));
        let consumer: BaseConsumer<Ctx> = config
            .client_config(Some(&group))
            .create_with_context(ctx)
            .map_err(kerr("create consumer"))?;
        let dlq = match &config.dead_letter_topic {
            Some(_) => {
                let mut c = ClientConfig::new();
                for (k, v) in &config.properties.0 {
                    c.set(k, v);
                }
                c.set("bootstrap.servers", &config.brokers);
                Some(
                    c.create::<FutureProducer>()
                        .map_err(kerr("create dead-letter producer"))?,
                )
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            name: format!("kafka:{topic}"),
            decoder,
            counters: Counters::default(),
            meta,
            dlq,
            lanes: Mutex::new(HashMap::new()),
            buffers: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            config,
        });
        let initial = match &shared.config.mode {
            Mode::Subscribe => {
                consumer.subscribe(&[&topic]).map_err(kerr("subscribe"))?;
                None
            }
            Mode::Assign(Some(p)) => Some(p.clone()),
            Mode::Assign(None) => {
                let s = shared.clone();
                let parts = tokio::task::spawn_blocking(move || {
                    let md = s
                        .meta
                        .fetch_metadata(Some(&s.config.topic), s.config.request_timeout)
                        .map_err(s.kafka_err("fetch metadata"))?;
                    let t = md.topics().iter().find(|t| t.name() == s.config.topic);
                    match t {
                        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                            Ok(t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
                        }
                        _ => Err(Error::Kafka {
                            operation: "fetch metadata",
                            topic: s.config.topic.clone(),
                            source: KafkaError::MetadataFetch(
                                RDKafkaErrorCode::UnknownTopicOrPartition,
                            ),
                        }),
                    }
                })
                .await
                .expect("metadata task")?;
                Some(parts)
            }
        };
        let consumer = Arc::new(consumer);
        let (tx, rx) = mpsc::channel(16);
        let (cmd_tx, cmd_rx) = std_mpsc::channel();
        let (done_tx, done_rx) = std_mpsc::sync_channel(1);
        let poll = PollThread {
            shared: shared.clone(),
            consumer: Some(consumer.clone()),
            cmds: cmd_rx,
            out: tx,
            revoke_done: done_rx,
            handle: tokio::runtime::Handle::current(),
            slots: BTreeMap::new(),
            batches: BTreeMap::new(),
            oldest: None,
            buffered: 0,
        };
        let thread = std::thread::Builder::new()
            .name(format!("murmur-kafka-{topic}"))
            .spawn(move || poll.run(initial))
            .map_err(|e| Error::Config {
                reason: format!("cannot start the poll thread: {e}"),
            })?;
        Ok(KafkaSource {
            shared,
            consumer: Some(consumer),
            events: rx,
            current: Mutex::new(None),
            cmds: cmd_tx,
            revoke_done: done_tx,
            revoke_pending: false,
            failed: false,
            thread: Some(thread),
        })
    }

    /// Stops the poll thread, leaves the group and waits until that is done.
    pub async fn shutdown(mut self) {
        let consumer = self.consumer.take();
        let _ = self.cmds.send(Command::Shutdown(consumer));
        // Unblock the poll thread if it waits on us (a full channel, a revoke).
        self.events.close();
        let _ = self.revoke_done.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared<T>) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let s = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .expect("kafka lookup task")
    }
}

impl<T> Drop for KafkaSource<T> {
    fn drop(&mut self) {
        let consumer = self.consumer.take();
        let _ = self.cmds.send(Command::Shutdown(consumer));
    }
}

#[async_trait::async_trait]
impl<T: Send + 'static> LiveSource<T> for KafkaSource<T> {
    fn name(&self) -> &str {
        &self.shared.name
    }

    async fn resolve_start(&self, lane: &LaneId, start: &Start) -> Result<Position> {
        let partition = self.shared.partition_of(lane)?;
        let (lane, start) = (lane.clone(), start.clone());
        let offset = self
            .blocking(move |s| s.resolve(&lane, partition, &start))
            .await?;
        Ok(Position::Offset { offset })
    }

    async fn start_lane(&self, lane: &LaneId, at: &Position) -> Result<Position> {
        let partition = self.shared.partition_of(lane)?;
        let offset = match at {
            Position::Offset { offset } => *offset,
            other => {
                return Err(Error::BadPosition {
                    lane: lane.clone(),
                    position: other.clone(),
                    reason: "a Kafka lane starts at Offset { next offset to read }".into(),
                });
            }
        };
        if !self
            .shared
            .lanes
            .lock()
            .expect("lanes lock")
            .contains_key(&partition)
        {
            return Err(Error::UnknownLane {
                lane: lane.clone(),
                reason: "the partition is not assigned to this consumer".into(),
            });
        }
        let offset = self
            .blocking(move |s| s.check_retained(partition, offset))
            .await?;
        let epoch = {
            let mut lanes = self.shared.lanes.lock().expect("lanes lock");
            let entry = lanes
                .get_mut(&partition)
                .ok_or_else(|| Error::UnknownLane {
                    lane: lane.clone(),
                    reason: "the partition was revoked meanwhile".into(),
                })?;
            entry.epoch += 1;
            entry.epoch
        };
        self.cmds
            .send(Command::Start {
                partition,
                offset,
                epoch,
            })
            .map_err(|_| self.shared.closed())?;
        tracing::debug!(%lane, offset, "partition positioned");
        Ok(Position::Offset { offset })
    }

    async fn next(&mut self) -> Result<SourceEvent<T>> {
        if self.revoke_pending {
            // The runner is back: its batches of the revoked lanes are flushed.
            let _ = self.revoke_done.try_send(());
            self.revoke_pending = false;
        }
        if self.failed {
            return Err(self.shared.closed());
        }
        loop {
            if let Some((partition, epoch, job)) = self.current.get_mut().expect("current lock") {
                let result = job.await;
                let (partition, epoch) = (*partition, *epoch);
                *self.current.get_mut().expect("current lock") = None;
                let chunk = match result {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        self.failed = true;
                        self.shared.fail(e.to_string());
                        return Err(e);
                    }
                };
                let current = self
                    .shared
                    .lanes
                    .lock()
                    .expect("lanes lock")
                    .get(&partition)
                    .is_some_and(|l| l.epoch == epoch);
                if current {
                    Counters::add(&self.shared.counters.chunks, 1);
                    Counters::add(&self.shared.counters.records, chunk.records.len() as u64);
                    return Ok(SourceEvent::Chunk(chunk));
                }
                continue;
            }
            match self.events.recv().await {
                Some(Item::Chunk {
                    partition,
                    epoch,
                    job,
                }) => {
                    let shared = self.shared.clone();
                    let finish = async move {
                        let decoded = job.await.map_err(|e| {
                            shared.fail(format!("decode task failed: {e}"));
                            shared.closed()
                        })?;
                        Counters::add(&shared.counters.skipped_before_cut, decoded.skipped);
                        shared.dead_letters(decoded.dead).await?;
                        Ok(decoded.chunk)
                    };
                    *self.current.get_mut().expect("current lock") =
                        Some((partition, epoch, Box::pin(finish)));
                }
                Some(Item::Event(ev)) => {
                    if matches!(ev, SourceEvent::Revoked(_)) {
                        self.revoke_pending = true;
                    }
                    return Ok(ev);
                }
                None => {
                    self.failed = true;
                    return Err(self.shared.closed());
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
        let partition = self.shared.partition_of(lane)?;
        let (Position::Offset { offset: from }, Position::Offset { offset: to }) = (start, end)
        else {
            return Err(Error::BadPosition {
                lane: lane.clone(),
                position: if matches!(start, Position::Offset { .. }) {
                    end.clone()
                } else {
                    start.clone()
                },
                reason: "a Kafka range is [Offset, Offset)".into(),
            });
        };
        let (from, to) = (*from, *to);
        let lane2 = lane.clone();
        let batch = self
            .blocking(move |s| read_raw(s, &lane2, partition, from, to))
            .await?;
        let (records, dead, _) = self.shared.decode(&batch);
        self.shared.dead_letters(dead).await?;
        Counters::add(&self.shared.counters.replayed, records.len() as u64);
        Ok(records)
    }

    async fn ack(&self, lane: &LaneId, end: &Position) -> Result<()> {
        let partition = self.shared.partition_of(lane)?;
        let Position::Offset { offset } = end else {
            return Err(Error::BadPosition {
                lane: lane.clone(),
                position: end.clone(),
                reason: "a Kafka lane acknowledges an Offset".into(),
            });
        };
        Counters::add(&self.shared.counters.acks, 1);
        if self.shared.config.group_id.is_none() {
            return Ok(());
        }
        let Some(consumer) = &self.consumer else {
            return Err(self.shared.closed());
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &self.shared.config.topic,
            partition,
            Offset::Offset(*offset),
        )
        .map_err(self.shared.kafka_err("commit"))?;
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            // Lag tooling only; the checkpoint is the truth.
            tracing::debug!(%lane, offset, error = %e, "group offset commit not enqueued");
        }
        Ok(())
    }

    fn guard(&self, lane: &LaneId) -> Result<LeaseGuard> {
        let partition = self.shared.partition_of(lane)?;
        let lanes = self.shared.lanes.lock().expect("lanes lock");
        let entry = lanes.get(&partition).ok_or_else(|| Error::LeaseLost {
            lane: lane.clone(),
            reason: "the partition is not assigned to this consumer".into(),
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

/// Reads the raw messages of `[from, to)` of a partition with a private,
/// group-less consumer.
fn read_raw<T: Send + 'static>(
    s: &Shared<T>,
    lane: &LaneId,
    partition: i32,
    from: i64,
    to: i64,
) -> Result<RawBatch> {
    let replay_err = |reason: String| Error::Replay {
        lane: lane.clone(),
        start: Position::Offset { offset: from },
        end: Position::Offset { offset: to },
        reason: reason.into(),
    };
    let mut batch = RawBatch::new(partition, 0, from, Buffers::default());
    if to <= from {
        return Ok(batch);
    }
    let (earliest, latest) = s.watermarks(partition)?;
    if from < earliest {
        return Err(replay_err(format!(
            "the broker only retains offsets {earliest}..{latest} (retention expired)"
        )));
    }
    if to > latest {
        return Err(replay_err(format!("the log ends at offset {latest}")));
    }
    let consumer = s.reader(partition, from)?;
    let mut last_progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                if m.offset() >= to {
                    break;
                }
                if m.offset() >= from {
                    batch.push(m.offset(), m.timestamp().to_millis(), m.payload());
                }
                if m.offset() + 1 >= to {
                    break;
                }
            }
            // The rest of the range is transaction markers or aborted records.
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(s.kafka_err("replay poll")(e)),
            None if last_progress.elapsed() > s.config.request_timeout => {
                return Err(replay_err(format!(
                    "no progress for {:?} at offset {}",
                    s.config.request_timeout, batch.end
                )));
            }
            None => {}
        }
    }
    batch.end = to;
    Ok(batch)
}

/// Per partition: waiting for the runner's start, or reading.
enum Slot {
    Waiting,
    Ready { offset: i64, epoch: u64 },
    Running { next: i64, epoch: u64 },
}

struct PollThread<T> {
    shared: Arc<Shared<T>>,
    consumer: Option<Arc<BaseConsumer<Ctx>>>,
    cmds: std_mpsc::Receiver<Command>,
    out: mpsc::Sender<Item<T>>,
    revoke_done: std_mpsc::Receiver<()>,
    handle: tokio::runtime::Handle,
    slots: BTreeMap<i32, Slot>,
    batches: BTreeMap<i32, RawBatch>,
    oldest: Option<Instant>,
    buffered: usize,
}

/// Messages polled in a row before commands and rebalances are looked at.
const BURST: usize = 4096;

/// The poll loop stops (the reason, if it is a failure).
struct Stop(Option<String>);

impl<T: Send + 'static> PollThread<T> {
    fn run(mut self, initial: Option<Vec<i32>>) {
        let consumer = self.consumer.clone().expect("consumer");
        let outcome = (|| {
            if let Some(parts) = initial {
                self.assigned(parts)?;
            }
            loop {
                self.loop_once(&consumer)?;
            }
        })();
        let Stop(failure) = match outcome {
            Ok(()) => Stop(None),
            Err(stop) => stop,
        };
        if let Some(reason) = failure {
            self.shared.fail(reason);
        }
        consumer.context().closing.store(true, Ordering::SeqCst);
        for entry in self.shared.lanes.lock().expect("lanes lock").values() {
            entry.guard.lose("the source stopped");
        }
        // Leave the group here, on this thread, not in an async task.
        drop(self.consumer.take());
        drop(consumer);
    }

    fn loop_once(&mut self, consumer: &BaseConsumer<Ctx>) -> Result<(), Stop> {
        loop {
            match self.cmds.try_recv() {
                Ok(Command::Start {
                    partition,
                    offset,
                    epoch,
                }) => self.start(consumer, partition, offset, epoch)?,
                Ok(Command::Shutdown(handle)) => {
                    drop(handle);
                    return Err(Stop(None));
                }
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => return Err(Stop(None)),
            }
        }
        self.assign_if_answered(consumer)?;
        let mut timeout = if self.buffered > 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        // A burst of messages without looking at commands, rebalances or the
        // clock: a rebalance event makes `poll` return `None`, which ends it.
        for i in 0..BURST {
            match consumer.poll(timeout) {
                Some(Ok(m)) => {
                    self.message(&m)?;
                    timeout = Duration::ZERO;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    self.consumer_error(e)?;
                    break;
                }
                None => {
                    self.flush_all()?;
                    break;
                }
            }
            if i % 256 == 255 && self.aged() {
                self.flush_all()?;
            }
        }
        if self.aged() {
            self.flush_all()?;
        }
        let ops = std::mem::take(&mut *consumer.context().ops.lock().expect("ops lock"));
        for op in ops {
            match op {
                RebalanceOp::Assign(parts) => self.assigned(parts)?,
                RebalanceOp::Revoke(parts) => self.revoked(consumer, parts)?,
            }
        }
        Ok(())
    }

    fn aged(&self) -> bool {
        self.oldest
            .is_some_and(|t| t.elapsed() >= self.shared.config.max_chunk_wait)
    }

    /// Adds a message of a started lane to its raw batch.
    fn message(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) -> Result<(), Stop> {
        let p = m.partition();
        let Some(Slot::Running { next, epoch }) = self.slots.get_mut(&p) else {
            return Ok(());
        };
        if m.offset() < *next {
            return Ok(());
        }
        let start = *next;
        let epoch = *epoch;
        *next = m.offset() + 1;
        let batch = self
            .batches
            .entry(p)
            .or_insert_with(|| RawBatch::new(p, epoch, start, self.shared.take_buffers()));
        batch.push(m.offset(), m.timestamp().to_millis(), m.payload());
        self.buffered += 1;
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        if batch.metas.len() >= self.shared.config.max_chunk_records {
            let b = self.batches.remove(&p).expect("batch");
            self.buffered -= b.metas.len();
            self.dispatch(b)?;
        }
        Ok(())
    }

    fn consumer_error(&mut self, e: KafkaError) -> Result<(), Stop> {
        let fatal = match &e {
            KafkaError::MessageConsumptionFatal(_) => true,
            KafkaError::MessageConsumption(code) => {
                matches!(
                    code,
                    RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange
                )
            }
            _ => false,
        };
        if fatal {
            return Err(Stop(Some(format!(
                "consuming topic {} failed: {e} (an offset out of range means retention deleted records \
                 this worker had not read yet; restarting reports the exact lane)",
                self.shared.config.topic
            ))));
        }
        tracing::warn!(topic = %self.shared.config.topic, error = %e, "kafka consumer error (retrying)");
        Ok(())
    }

    fn send(&self, item: Item<T>) -> Result<(), Stop> {
        self.out.blocking_send(item).map_err(|_| Stop(None))
    }

    fn dispatch(&mut self, batch: RawBatch) -> Result<(), Stop> {
        let shared = self.shared.clone();
        let (partition, epoch) = (batch.partition, batch.epoch);
        let job = self
            .handle
            .spawn_blocking(move || shared.decode_chunk(batch));
        self.send(Item::Chunk {
            partition,
            epoch,
            job,
        })
    }

    fn flush_all(&mut self) -> Result<(), Stop> {
        self.oldest = None;
        self.buffered = 0;
        for (_, b) in std::mem::take(&mut self.batches) {
            self.dispatch(b)?;
        }
        Ok(())
    }

    fn start(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        partition: i32,
        offset: i64,
        epoch: u64,
    ) -> Result<(), Stop> {
        match self.slots.get_mut(&partition) {
            Some(slot @ (Slot::Waiting | Slot::Ready { .. })) => {
                *slot = Slot::Ready { offset, epoch }
            }
            Some(slot @ Slot::Running { .. }) => {
                // A restart: forget what was read, seek.
                if let Some(b) = self.batches.remove(&partition) {
                    self.buffered -= b.metas.len();
                }
                consumer
                    .seek(
                        &self.shared.config.topic,
                        partition,
                        Offset::Offset(offset),
                        Duration::from_secs(10),
                    )
                    .map_err(|e| {
                        Stop(Some(format!(
                            "seek of topic {} partition {partition} to offset {offset} failed: {e}",
                            self.shared.config.topic
                        )))
                    })?;
                *slot = Slot::Running {
                    next: offset,
                    epoch,
                };
            }
            None => tracing::debug!(partition, "start of a partition that is no longer assigned"),
        }
        Ok(())
    }

    /// Assigns once the runner answered for every lane of the assignment.
    fn assign_if_answered(&mut self, consumer: &BaseConsumer<Ctx>) -> Result<(), Stop> {
        let waiting = self.slots.values().any(|s| matches!(s, Slot::Waiting));
        let ready = self.slots.values().any(|s| matches!(s, Slot::Ready { .. }));
        if waiting || !ready {
            return Ok(());
        }
        let topic = self.shared.config.topic.clone();
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let mut tpl = TopicPartitionList::new();
        for (p, slot) in &mut self.slots {
            let offset = match *slot {
                Slot::Ready { offset, epoch } => {
                    *slot = Slot::Running {
                        next: offset,
                        epoch,
                    };
                    offset
                }
                Slot::Running { next, .. } if !cooperative => next,
                _ => continue,
            };
            tpl.add_partition_offset(&topic, *p, Offset::Offset(offset))
                .map_err(|e| Stop(Some(format!("assign: {e}"))))?;
        }
        let result = if cooperative {
            consumer.incremental_assign(&tpl)
        } else {
            consumer.assign(&tpl)
        };
        result.map_err(|e| {
            Stop(Some(format!(
                "assigning partitions of topic {topic} failed: {e}"
            )))
        })?;
        tracing::info!(%topic, partitions = ?tpl.elements().iter().map(|e| (e.partition(), e.offset())).collect::<Vec<_>>(), "assigned");
        Ok(())
    }

    fn assigned(&mut self, parts: Vec<i32>) -> Result<(), Stop> {
        if parts.is_empty() {
            // Nothing for us this generation; still answer librdkafka.
            if let Some(c) = &self.consumer
                && !matches!(c.rebalance_protocol(), RebalanceProtocol::Cooperative)
            {
                let _ = c.assign(&TopicPartitionList::new());
            }
            return Ok(());
        }
        {
            let mut lanes = self.shared.lanes.lock().expect("lanes lock");
            for p in &parts {
                self.slots.insert(*p, Slot::Waiting);
                lanes.insert(
                    *p,
                    LaneEntry {
                        guard: GuardState::new(None),
                        epoch: 0,
                    },
                );
            }
        }
        let lanes = parts
            .iter()
            .map(|p| self.shared.lane(*p))
            .collect::<Vec<_>>();
        tracing::info!(
            ?lanes,
            "partitions assigned; waiting for the runner's start positions"
        );
        self.send(Item::Event(SourceEvent::Assigned(lanes)))
    }

    fn revoked(&mut self, consumer: &BaseConsumer<Ctx>, parts: Vec<i32>) -> Result<(), Stop> {
        for p in &parts {
            if let Some(b) = self.batches.remove(p) {
                self.buffered -= b.metas.len();
                self.dispatch(b)?;
            }
        }
        let lanes: Vec<LaneId> = parts
            .iter()
            .filter(|p| self.slots.contains_key(p))
            .map(|p| self.shared.lane(*p))
            .collect();
        while self.revoke_done.try_recv().is_ok() {}
        if !lanes.is_empty() {
            tracing::info!(
                ?lanes,
                "partitions revoked; waiting for the runner to flush"
            );
            self.send(Item::Event(SourceEvent::Revoked(lanes.clone())))?;
            match self
                .revoke_done
                .recv_timeout(self.shared.config.revoke_timeout)
            {
                Ok(()) => {}
                Err(std_mpsc::RecvTimeoutError::Timeout) => tracing::warn!(
                    ?lanes,
                    timeout = ?self.shared.config.revoke_timeout,
                    "the runner did not come back in time; giving the partitions up anyway (the checkpoint store still \
                     refuses a stale batch)"
                ),
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return Err(Stop(None)),
            }
        }
        {
            let mut shared_lanes = self.shared.lanes.lock().expect("lanes lock");
            for p in &parts {
                self.slots.remove(p);
                if let Some(entry) = shared_lanes.remove(p) {
                    entry.guard.lose("the partition was revoked");
                }
            }
        }
        let result = if matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        ) {
            let mut tpl = TopicPartitionList::new();
            for p in &parts {
                tpl.add_partition(&self.shared.config.topic, *p);
            }
            consumer.incremental_unassign(&tpl)
        } else {
            consumer.unassign()
        };
        if let Err(e) = result {
            tracing::warn!(topic = %self.shared.config.topic, error = %e, "unassign failed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let c = KafkaConfig::assign("b:9092", "t")
            .properties([
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanisms", "PLAIN"),
            ])
            .property("sasl.password", "p4ss")
            .property("ssl.key.password", "k3y")
            .property("sasl.oauthbearer.token", "t0k")
            .property("ssl.secret", "s3c")
            .property("sasl.username", "alice");
        let shown = format!("{c:?}");
        for secret in ["p4ss", "k3y", "t0k", "s3c"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("alice") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn reserved_properties_are_refused() {
        let err = KafkaConfig::assign("b", "t")
            .property("enable.auto.commit", "true")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("enable.auto.commit"), "{err}");
        assert!(KafkaConfig::subscribe("b", "t", "g").validate().is_ok());
        assert_eq!(kafka_lane("events", 3).as_str(), "kafka:events:3");
    }
}
