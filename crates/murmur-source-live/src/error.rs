//! The crate's error type.

use murmur_core::{LaneId, Position};

/// Everything that can go wrong in a live source.
///
/// Variants name the topic / partition / stream / shard and the offsets or
/// positions involved, so the message alone tells an operator what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Kafka client call failed.
    #[error("kafka {operation} on topic {topic} failed: {source}")]
    Kafka {
        /// What was being done (`create consumer`, `fetch watermarks`, ...).
        operation: &'static str,
        /// The topic.
        topic: String,
        /// The client error.
        source: rdkafka::error::KafkaError,
    },

    /// A start position (handoff token or checkpoint) is below the oldest
    /// offset the broker still retains, and the caller did not choose
    /// [`OnExpired::Earliest`](crate::OnExpired::Earliest).
    #[error(
        "topic {topic} partition {partition}: wanted to start at offset {wanted}, but the broker only \
         retains offsets {earliest}..{latest} (retention expired {missing} offset(s)); choose \
         OnExpired::Earliest to accept the gap, or start from another token"
    )]
    OffsetExpired {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The wanted next offset.
        wanted: i64,
        /// The oldest retained offset (low watermark).
        earliest: i64,
        /// The next offset to be written (high watermark).
        latest: i64,
        /// How many offsets were lost (`earliest - wanted`).
        missing: i64,
    },

    /// An event-time cut older than what a partition retains: the cut
    /// (minus the skew allowance) resolves to the partition's first
    /// retained message, which is newer than it, and older messages were
    /// deleted, so some at or after the cut may be gone (a gap at the
    /// seam).
    #[error(
        "topic {topic} partition {partition}: the event-time cut asks for messages from {from_ms} ms, but the \
         oldest retained one (offset {earliest}) is from {first_ms} ms and the {earliest} before it were deleted \
         (retention): events between may be lost; if the partition is quiet and the cut lies within the \
         topic's retention, nothing is: choose OnExpired::Earliest to start there"
    )]
    CutExpired {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The cut minus the skew allowance, ms.
        from_ms: i64,
        /// The oldest retained offset (low watermark).
        earliest: i64,
        /// The timestamp of the message at `earliest`, ms.
        first_ms: i64,
    },

    /// A start position is beyond the end of the partition's log (a token
    /// from another cluster, or a truncated log).
    #[error(
        "topic {topic} partition {partition}: wanted to start at offset {wanted}, but the log ends at \
         offset {latest} (a token from another cluster, or a truncated log?)"
    )]
    OffsetAhead {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The wanted next offset.
        wanted: i64,
        /// The next offset to be written (high watermark).
        latest: i64,
    },

    /// A Kinesis call failed (after the retries the source makes itself).
    #[error("kinesis {operation} on stream {stream}{} failed: {message}", shard.as_deref().map(|s| format!(" shard {s}")).unwrap_or_default())]
    Kinesis {
        /// What was being done (`ListShards`, `GetRecords`, ...).
        operation: &'static str,
        /// The stream.
        stream: String,
        /// The shard, if the call was about one.
        shard: Option<String>,
        /// The service's error, with its context.
        message: String,
    },

    /// A DynamoDB Streams (or the table's `DescribeTable`) call failed,
    /// after the retries the source makes itself.
    #[error("dynamodb streams {operation} on table {table}{} failed: {message}", shard.as_deref().map(|s| format!(" shard {s}")).unwrap_or_default())]
    DynamoDbStreams {
        /// What was being done (`DescribeStream`, `GetRecords`, ...).
        operation: &'static str,
        /// The table whose stream is read.
        table: String,
        /// The shard, if the call was about one.
        shard: Option<String>,
        /// The service's error, with its context.
        message: String,
    },

    /// A lease table call failed.
    #[error("lease table {table}: {operation} failed: {message}")]
    LeaseTable {
        /// The DynamoDB table.
        table: String,
        /// What was being done.
        operation: &'static str,
        /// The service's error, with its context.
        message: String,
    },

    /// The lane's lease (Kinesis) or assignment (Kafka) was lost: the lane
    /// must not write again until it is assigned anew.
    #[error(
        "lane {lane}: {reason}; stop writing this lane (its next owner resumes from the checkpoint)"
    )]
    LeaseLost {
        /// The lane.
        lane: LaneId,
        /// Why the lease is gone.
        reason: String,
    },

    /// A lane id that this source does not serve.
    #[error("lane {lane} is not a lane of this source: {reason}")]
    UnknownLane {
        /// The lane.
        lane: LaneId,
        /// What is wrong with it.
        reason: String,
    },

    /// A position that does not fit the lane's conventions (see the crate
    /// docs), e.g. a Kinesis sequence number for a Kafka lane.
    #[error("lane {lane}: position {position} is not valid here: {reason}")]
    BadPosition {
        /// The lane.
        lane: LaneId,
        /// The position.
        position: Position,
        /// Why.
        reason: String,
    },

    /// The handoff token does not describe this source (another topic or
    /// stream, another kind of source), or does not cover a lane.
    #[error("lane {lane}: the handoff token does not apply: {reason}")]
    Token {
        /// The lane being resolved.
        lane: LaneId,
        /// Why.
        reason: String,
    },

    /// A pending range cannot be read back exactly (the log no longer holds
    /// it, or ends before it).
    #[error("lane {lane}: cannot re-read [{start}, {end}): {reason}")]
    Replay {
        /// The lane.
        lane: LaneId,
        /// Range start.
        start: Position,
        /// Range end (exclusive).
        end: Position,
        /// Why.
        reason: Box<str>,
    },

    /// An undecodable message could not be delivered to the dead-letter
    /// destination (so the batch containing it must not be acknowledged).
    #[error("dead letter for {origin} could not be delivered to {destination}: {message}")]
    DeadLetter {
        /// Where the message came from (`topic/partition@offset`, `stream/shard@sequence`).
        origin: String,
        /// The dead-letter topic or stream.
        destination: String,
        /// The delivery error.
        message: String,
    },

    /// A message that does not decode (or that the runner's check
    /// refuses) and no dead-letter destination to send it to: the source
    /// stops at it rather than pass it by, unless told to skip such
    /// messages.
    #[error(
        "bad message at {origin}: {reason}; no dead-letter {destination} is configured to take it (configure one, or skip bad messages to log and count them)"
    )]
    BadMessage {
        /// Where the message is (`topic/partition@offset`, `stream/shard@sequence`).
        origin: String,
        /// Why it is bad.
        reason: String,
        /// `topic` or `stream`.
        destination: &'static str,
    },

    /// Invalid configuration.
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },

    /// The source has stopped (shut down, or its background work failed).
    #[error("the {source_name} source has stopped: {reason}")]
    Closed {
        /// `kafka:<topic>` or `kinesis:<stream>`.
        source_name: String,
        /// Why.
        reason: String,
    },
}

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
