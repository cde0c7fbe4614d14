//! Live sources for Murmur: Kafka ([`KafkaSource`], through rdkafka),
//! Kinesis ([`KinesisSource`], through aws-sdk-kinesis) and DynamoDB Streams
//! ([`DynamoDbStreamsSource`]) that start exactly at
//! a [`HandoffToken`](murmur_core::HandoffToken) or a lane's checkpoint and
//! acknowledge a position only after the runner says the batch ending there
//! is durable.
//!
//! # Lanes and positions
//!
//! A source yields [`Record`](murmur_core::Record)s grouped by *lane* in
//! [`Chunk`]s that tile each lane: a chunk covers `[start, end)`, and the
//! next chunk of the lane starts at its `end`.
//!
//! | | Kafka | Kinesis |
//! |---|---|---|
//! | lane id | `kafka:<topic>:<partition>` ([`kafka_lane`]) | `kinesis:<stream>:<shardId>` ([`kinesis_lane`]) |
//! | lane position | `Offset { offset }`: the **next** offset to read (exclusive end) | `Sequence { sequence }`: the **last** sequence number already consumed (resume `AFTER_SEQUENCE_NUMBER`) |
//! | start of the lane | — (resolved to the low watermark offset) | `Beginning` = `TRIM_HORIZON` of the shard |
//! | finished | — | `End`: the shard is closed and fully consumed |
//! | a record's own `position` | `Offset` of the message | `Sequence` of the record |
//!
//! Kinesis has one more, *lane-start-only* position:
//! `Sequence { sequence: "at_timestamp:<ms>" }` reads `AT_TIMESTAMP <ms>`. It
//! is what [`Start::Timestamp`] and [`Start::Latest`] resolve to (a `LATEST`
//! iterator has no position until a record arrives, so "latest" is
//! persisted as "at the time it was resolved": replays and restarts then
//! read exactly the same records; records that arrived within the clock
//! skew between this host and Kinesis may be included or not, as with any
//! "latest"). It is never a chunk end. Sequence numbers are compared as big
//! integers ([`SequenceNumber`]: real ones have 56 digits).
//!
//! # The runner's side
//!
//! 1. [`LiveSource::next`] yields [`SourceEvent::Assigned`] for lanes that
//!    become this process's (Kafka: explicit partitions at start, or a
//!    group assignment; Kinesis: shards whose parents are finished and whose
//!    lease this worker took).
//! 2. For each lane, the runner decides where it starts: its checkpoint if
//!    the lane exists, else [`LiveSource::resolve_start`] turns a [`Start`]
//!    (token, earliest, latest, timestamp) into a concrete position, which
//!    the runner persists (`CheckpointStore::init_lane`) **before** any
//!    record is consumed. A token whose Kafka offsets are no longer retained
//!    is refused ([`Error::OffsetExpired`]) unless [`OnExpired::Earliest`]
//!    was chosen.
//! 3. A pending batch is replayed from exactly its range with
//!    [`LiveSource::read_range`]; then the lane is started with
//!    [`LiveSource::start_lane`]. Nothing of a lane is delivered before.
//! 4. [`SourceEvent::Chunk`]s feed the lane's batches (`LaneWriter::push_chunk(records,
//!    start, end)`); before each batch write the runner calls
//!    [`LeaseGuard::check`] ([`LiveSource::guard`]); after the batch is
//!    committed, [`LiveSource::ack`] with its end commits the Kafka group
//!    offset (for lag tooling: the checkpoint is the truth) or the Kinesis
//!    lease checkpoint (`End` marks the shard finished and lets its children
//!    start).
//! 5. [`SourceEvent::Revoked`]: flush or abandon the lanes' open batches
//!    before calling `next` again (Kafka waits for that before letting the
//!    partitions go; the new owner resumes from the checkpoint).
//! 6. [`SourceEvent::Finished`]: the lanes ended (a split or merged Kinesis
//!    shard, read and checkpointed to its end); drop their writers.
//!
//! ```no_run
//! use murmur_core::{CheckpointStore, MemoryStore};
//! use murmur_source_live::{Decoder, KafkaConfig, KafkaSource, LiveSource, SourceEvent, Start};
//!
//! # async fn demo(token: murmur_core::HandoffToken) -> Result<(), Box<dyn std::error::Error>> {
//! let checkpoints = MemoryStore::new();
//! let config = KafkaConfig::subscribe("broker:9092", "events", "murmur").dead_letter_topic("events.dlq");
//! let mut source = KafkaSource::connect(config, Decoder::count_events()).await?;
//! loop {
//!     match source.next().await? {
//!         SourceEvent::Assigned(lanes) => {
//!             for lane in lanes {
//!                 let state = match checkpoints.lane(&lane).await? {
//!                     Some(state) => state,
//!                     None => {
//!                         let at = source.resolve_start(&lane, &Start::Token(token.clone())).await?;
//!                         checkpoints.init_lane(&lane, &at).await?
//!                     }
//!                 };
//!                 if let Some(intent) = &state.pending {
//!                     let records = source.read_range(&lane, &intent.start, &intent.end).await?;
//!                     // writer.replay(&records) ... then:
//!                     # let _ = records;
//!                     checkpoints.commit_batch(&lane, intent.seq).await?;
//!                 }
//!                 let position = checkpoints.lane(&lane).await?.expect("initialised").position;
//!                 source.start_lane(&lane, &position).await?;
//!             }
//!         }
//!         SourceEvent::Chunk(chunk) => {
//!             source.guard(&chunk.lane)?.check()?;
//!             // writer.push_chunk(&chunk.records, &chunk.start, &chunk.end) ...; once durable:
//!             source.ack(&chunk.lane, &chunk.end).await?;
//!         }
//!         SourceEvent::Revoked(_lanes) => { /* flush those lanes' writers */ }
//!         _ => {}
//!     }
//! }
//! # }
//! ```
//!
//! # Kafka
//!
//! * Explicit assignment ([`KafkaConfig::assign`]) or a consumer group
//!   ([`KafkaConfig::subscribe`]); rebalances surface as events, through a
//!   custom `ConsumerContext` whose callback only records them: partitions
//!   are assigned (with the runner's offsets) once the runner answered, and
//!   unassigned once it has flushed.
//! * `enable.auto.commit`, `enable.auto.offset.store` are off and
//!   `auto.offset.reset` is `error`: nothing is ever guessed.
//! * Decoding runs on the blocking pool, in order; undecodable messages go
//!   to the dead-letter topic with headers naming the source topic,
//!   partition, offset and the error, and a chunk is only delivered once its
//!   dead letters are acknowledged by the broker (a replay may send them
//!   again: dead letters are at-least-once, identified by their headers).
//!   A message the runner's check refuses
//!   ([`LiveSource::check_records`]) is a dead letter too. Without a
//!   dead-letter topic the first bad message stops the source
//!   ([`Error::BadMessage`]) unless [`KafkaConfig::skip_bad_messages`]
//!   (the same holds for Kinesis and DynamoDB Streams).
//! * Security settings pass through as librdkafka properties
//!   ([`KafkaConfig::property`]); `Debug` redacts secrets.
//!
//! # Kinesis
//!
//! * Paginated `ListShards`; a child shard is offered only once its parents
//!   are finished (their `End` acknowledged), so parent records always come
//!   first. Closed shards end with a chunk whose end is `Position::End`.
//! * Expired iterators are renewed from the last delivered position;
//!   throttling is backed off; `GetRecords` runs at most 5 times a second per
//!   shard.
//! * Several workers share a stream through leases in a DynamoDB table
//!   ([`KinesisConfig::leases`], [`ensure_lease_table`]); a lost lease fails
//!   the lane's [`LeaseGuard`] before its next write.
//!
//! # DynamoDB Streams
//!
//! The Kinesis machinery (lineage, iterators, backoff, leases) over the
//! DynamoDB Streams calls: lanes `dynamodb-streams:<table>:<shardId>`, the
//! same positions. Each `INSERT` / `MODIFY` new image is the event (as JSON,
//! for the [`Decoder`]); `REMOVE`s are passed over. It starts from a
//! [`HandoffToken::DynamoDbStreams`](murmur_core::HandoffToken::DynamoDbStreams)
//! captured before a table scan; the changes both saw come round twice, so
//! pair it with per-event dedup. Undecodable images go to a Kinesis
//! dead-letter stream ([`DynamoDbStreamsConfig::dead_letter_stream`]).
//!
//! # Errors
//!
//! One [`Error`] enum, with the topic / partition / stream / shard and the
//! offsets involved.

mod decode;
mod dynamodb_streams;
mod error;
mod kafka;
mod kinesis;
mod lease;
mod sequence;
mod source;

pub use decode::Decoder;
pub use dynamodb_streams::{DynamoDbStreamsConfig, DynamoDbStreamsSource, dynamodb_streams_lane};
// The canonical counting event lives in murmur-core (one type for backfill
// and live); re-exported for `Decoder::count_events` users.
pub use error::{Error, Result};
pub use kafka::{
    HEADER_ERROR, HEADER_PAYLOAD_CUT, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC, KafkaConfig, KafkaSource, kafka_lane,
};
pub use kinesis::{KinesisConfig, KinesisSource, kinesis_lane};
pub use lease::ensure_lease_table;
pub use murmur_core::CountEvent;
pub use sequence::SequenceNumber;
pub use source::{
    Chunk, LeaseGuard, LiveSource, Metrics, OnExpired, SourceEvent, Start, position_after,
};
