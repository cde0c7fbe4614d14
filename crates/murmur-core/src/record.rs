//! Records: what sources produce.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// One decoded source event.
///
/// Sources produce records and know nothing of keys, monoids or stores; the
/// [`Pipeline`](crate::Pipeline) turns them into keyed deltas.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<T> {
    /// The decoded event.
    pub value: T,
    /// Event time, milliseconds since the Unix epoch (negative before 1970).
    pub event_time_ms: i64,
    /// Optional unique event id, for the per-event deduper.
    pub event_id: Option<Arc<str>>,
    /// Where the event came from, for checkpoints and resume.
    pub position: Position,
}

impl<T> Record<T> {
    /// A record with no event id and an unknown position (tests, examples).
    pub fn new(value: T, event_time_ms: i64) -> Self {
        Record {
            value,
            event_time_ms,
            event_id: None,
            position: Position::Unknown,
        }
    }

    /// Sets the position.
    pub fn at(mut self, position: Position) -> Self {
        self.position = position;
        self
    }

    /// Sets the event id.
    pub fn with_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.event_id = Some(id.into());
        self
    }

    /// The record, unless `check` refuses it (its reason); a source's one
    /// step for an installed [`RecordCheck`].
    #[inline]
    pub fn checked(self, check: Option<&RecordCheck<T>>) -> Result<Self, String> {
        match check {
            Some(check) => check(&self).map(|()| self),
            None => Ok(self),
        }
    }
}

/// A check a source runs on each record it decodes: an `Err(reason)` makes
/// the record a bad record of the source — counted, dead-lettered with its
/// location (and its raw line or message where the source has one), and
/// held to the source's bad-record limits — instead of an error of the lane
/// that would fold it. The runners install their pipeline's
/// ([`Pipeline::record_check`](crate::Pipeline::record_check)) into the
/// sources that take one, so a record the pipeline refuses (an empty entity
/// key, an event time no window holds) is treated like one that did not
/// decode.
pub type RecordCheck<T> = Arc<dyn Fn(&Record<T>) -> Result<(), String> + Send + Sync>;

/// Where a source keeps the [`RecordCheck`] installed into it: the last
/// one installed holds for the reads (and live batches) that start after
/// it; a read takes it once when it starts, not per record.
pub struct InstalledCheck<T>(std::sync::RwLock<Option<RecordCheck<T>>>);

impl<T> Default for InstalledCheck<T> {
    fn default() -> Self {
        InstalledCheck(std::sync::RwLock::new(None))
    }
}

impl<T> fmt::Debug for InstalledCheck<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InstalledCheck")
            .field(&self.get().is_some())
            .finish()
    }
}

impl<T> InstalledCheck<T> {
    /// Installs `check` in place of any earlier one.
    pub fn set(&self, check: RecordCheck<T>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(check);
    }

    /// The check installed, if any.
    pub fn get(&self) -> Option<RecordCheck<T>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A position within a lane, fine enough to resume from.
///
/// Positions are *exclusive ends* when stored as checkpoints: a lane whose
/// checkpoint is `Offset { offset: 42 }` resumes by reading offset 42.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Position {
    /// Not known (records built by hand).
    Unknown,
    /// The start of the lane.
    Beginning,
    /// A numeric offset (Kafka offset).
    Offset {
        /// The offset.
        offset: i64,
    },
    /// An opaque ordered sequence token (Kinesis sequence number).
    Sequence {
        /// The sequence number, as the service gives it.
        sequence: Arc<str>,
    },
    /// A place inside a snapshot object: the object and a unit inside it (a
    /// Parquet row group, a JSON Lines line number), plus an index of the
    /// object in the lane's work list.
    Object {
        /// Index of the object in the lane's deterministic work list.
        index: u64,
        /// Object key.
        key: Arc<str>,
        /// Row group (Parquet) or line (JSON Lines) within the object.
        unit: u64,
    },
    /// A record's row (Parquet) or line (JSON Lines) within the snapshot
    /// object its chunk names, from 0: the position snapshot sources give
    /// each record. Not a place to resume from on its own (a chunk's
    /// `start` and `end` are); a copy of the object's key in each of
    /// millions of records cost a Parquet scan more than a quarter of its
    /// time.
    Row {
        /// Row or line number within the object.
        row: u64,
    },
    /// A DynamoDB scan segment and its last evaluated key (JSON).
    Scan {
        /// Segment number.
        segment: u32,
        /// Last evaluated key, encoded as JSON; `None` at the segment start.
        last_key: Option<Arc<str>>,
    },
    /// The lane is finished (a closed shard, a fully read snapshot slot).
    End,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Unknown => f.write_str("unknown"),
            Position::Beginning => f.write_str("beginning"),
            Position::Offset { offset } => write!(f, "offset {offset}"),
            Position::Sequence { sequence } => write!(f, "sequence {sequence}"),
            Position::Object { index, key, unit } => write!(f, "object #{index} {key} unit {unit}"),
            Position::Row { row } => write!(f, "row {row}"),
            Position::Scan { segment, last_key } => match last_key {
                Some(k) => write!(f, "segment {segment} after {k}"),
                None => write!(f, "segment {segment} start"),
            },
            Position::End => f.write_str("end"),
        }
    }
}

/// A lane: the unit of ordered, exactly-once progress — a Kafka partition, a
/// Kinesis shard, a snapshot worker slot.
///
/// Lane ids must be unique per source and run (e.g.
/// `kafka:events:3`, `backfill:2026-05-08:slot-0`): fences are per lane and
/// sequence numbers only ever grow within one lane.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LaneId(pub Arc<str>);

impl LaneId {
    /// A lane id from a string.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        LaneId(id.into())
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LaneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for LaneId {
    fn from(s: &str) -> Self {
        LaneId::new(s)
    }
}
