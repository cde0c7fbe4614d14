//! The live source contract shared by Kafka and Kinesis.

use crate::error::{Error, Result};
use murmur_core::{HandoffToken, LaneId, Position, Record, RecordCheck};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Where a lane starts when it has no checkpoint yet.
///
/// [`LiveSource::resolve_start`] turns it into a *concrete* [`Position`],
/// which the runner persists (`CheckpointStore::init_lane`) before it calls
/// [`LiveSource::start_lane`]: a restart never re-resolves, so "latest" or a
/// timestamp never means two different places.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Start {
    /// The bootstrap's handoff token: the exact position per lane (Kafka,
    /// Kinesis), or an event-time cut (resolved like
    /// [`Timestamp`](Start::Timestamp) at the cut minus the source's skew
    /// allowance; pair it with [`Decoder::min_event_time`](crate::Decoder::min_event_time)).
    Token(HandoffToken),
    /// The oldest retained record.
    Earliest,
    /// Only records written from now on. The live driver
    /// (`murmur_bootstrap::live`) fixes "now" when it starts and resolves
    /// every lane as [`Timestamp`](Start::Timestamp) of that time, so a
    /// lane that appears later (a Kafka partition added, a Kinesis child
    /// shard) misses nothing written since.
    Latest,
    /// The first record at or after this time (ms since the epoch; Kafka
    /// message timestamp, Kinesis approximate arrival time).
    Timestamp(i64),
}

/// What to do when a start position is no longer retained by the broker
/// (Kafka retention deleted the token's offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnExpired {
    /// Refuse with [`Error::OffsetExpired`] (the default: a gap is data loss).
    #[default]
    Fail,
    /// Start at the oldest retained offset and log the gap.
    Earliest,
}

/// Consecutive records of one lane, from `start` up to `end` (exclusive).
///
/// Chunks of a lane tile it: each chunk's `start` is the previous chunk's
/// `end` (or the position the lane was started at), so a batch made of
/// chunks `a..=b` covers `[a.start, b.end)` and re-reading that range with
/// [`LiveSource::read_range`] yields exactly the same records. A chunk may
/// have no records (every message was a dead letter, skipped before an
/// event-time cut, or a closed shard has nothing left): it still moves the
/// lane forward and must be passed on like any other.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk<T> {
    /// The lane.
    pub lane: LaneId,
    /// The decoded records, in source order.
    pub records: Vec<Record<T>>,
    /// Where the chunk starts (the lane's position before it).
    pub start: Position,
    /// Where it ends: the lane's resume position after it.
    pub end: Position,
}

/// What [`LiveSource::next`] yields.
#[derive(Debug)]
#[non_exhaustive]
pub enum SourceEvent<T> {
    /// These lanes are now ours. For each, the runner resolves its start
    /// (checkpoint, else [`LiveSource::resolve_start`]), replays a pending
    /// batch if any, and calls [`LiveSource::start_lane`]. No record of a
    /// lane is delivered before that answer.
    Assigned(Vec<LaneId>),
    /// These lanes are being taken away. Flush (or abandon) their in-flight
    /// batches before calling [`next`](LiveSource::next) again: Kafka waits
    /// for that call (bounded by its revoke timeout) before it lets the
    /// partitions go. For Kinesis the lease is already lost: abandon.
    Revoked(Vec<LaneId>),
    /// These lanes reached their end and were let go: a closed Kinesis shard
    /// read to its last record, whose final batch was acked (the ack of
    /// [`Position::End`](murmur_core::Position::End)). Nothing of them is
    /// left to write; the runner drops their writers. (Their children were
    /// or will be [`Assigned`](SourceEvent::Assigned).)
    Finished(Vec<LaneId>),
    /// Records of a started lane.
    Chunk(Chunk<T>),
}

/// Permission to write a lane, checked before every batch write.
///
/// A Kafka lane's guard is valid while the partition is assigned to this
/// consumer; a Kinesis lane's while this worker holds the shard lease and
/// the lease is not about to expire. Once [`check`](LeaseGuard::check)
/// fails the lane must not write again: its next owner resumes from the
/// checkpoint.
#[derive(Debug, Clone)]
pub struct LeaseGuard {
    lane: LaneId,
    state: Arc<GuardState>,
}

impl LeaseGuard {
    pub(crate) fn new(lane: LaneId, state: Arc<GuardState>) -> Self {
        LeaseGuard { lane, state }
    }

    /// A guard that never fails: for a [`LiveSource`] of your own whose
    /// lanes cannot be taken away (a single reader of each lane).
    pub fn unconditional(lane: LaneId) -> Self {
        LeaseGuard::new(lane, GuardState::new(None))
    }

    /// `Ok` while the lane may still be written.
    pub fn check(&self) -> Result<()> {
        self.state.check().map_err(|reason| Error::LeaseLost {
            lane: self.lane.clone(),
            reason,
        })
    }
}

/// The shared state behind [`LeaseGuard`]s of one lane ownership.
#[derive(Debug)]
pub(crate) struct GuardState {
    inner: Mutex<GuardInner>,
}

#[derive(Debug)]
struct GuardInner {
    lost: Option<String>,
    /// Kinesis: the lease is only trusted until then.
    deadline: Option<Instant>,
}

impl GuardState {
    pub(crate) fn new(deadline: Option<Instant>) -> Arc<Self> {
        Arc::new(GuardState {
            inner: Mutex::new(GuardInner {
                lost: None,
                deadline,
            }),
        })
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        let g = self.inner.lock().expect("guard lock");
        if let Some(reason) = &g.lost {
            return Err(reason.clone());
        }
        match g.deadline {
            Some(d) if Instant::now() >= d => Err("the lease was not renewed in time".to_owned()),
            _ => Ok(()),
        }
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.inner.lock().expect("guard lock").lost.is_some()
    }

    pub(crate) fn lose(&self, reason: impl Into<String>) {
        let mut g = self.inner.lock().expect("guard lock");
        if g.lost.is_none() {
            g.lost = Some(reason.into());
        }
    }

    pub(crate) fn extend(&self, deadline: Instant) {
        self.inner.lock().expect("guard lock").deadline = Some(deadline);
    }
}

/// Counters of a source (cumulative since it was created).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Records delivered in chunks (replays not included).
    pub records: u64,
    /// Chunks delivered.
    pub chunks: u64,
    /// Bad messages (undecodable, or refused by the installed check) sent
    /// to the dead-letter destination, or logged and passed by under
    /// `skip_bad_messages`.
    pub dead_letters: u64,
    /// Records skipped because their event time was before the cut.
    pub skipped_before_cut: u64,
    /// Records re-read by [`LiveSource::read_range`].
    pub replayed: u64,
    /// Acknowledgements (group commits, lease checkpoints).
    pub acks: u64,
    /// Throttling responses that were backed off (Kinesis).
    pub throttled: u64,
    /// Expired shard iterators renewed (Kinesis).
    pub iterators_renewed: u64,
    /// Leases taken (Kinesis).
    pub leases_taken: u64,
    /// Leases lost (Kinesis).
    pub leases_lost: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub records: AtomicU64,
    pub chunks: AtomicU64,
    pub dead_letters: AtomicU64,
    pub skipped_before_cut: AtomicU64,
    pub replayed: AtomicU64,
    pub acks: AtomicU64,
    pub throttled: AtomicU64,
    pub iterators_renewed: AtomicU64,
    pub leases_taken: AtomicU64,
    pub leases_lost: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Metrics {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Metrics {
            records: g(&self.records),
            chunks: g(&self.chunks),
            dead_letters: g(&self.dead_letters),
            skipped_before_cut: g(&self.skipped_before_cut),
            replayed: g(&self.replayed),
            acks: g(&self.acks),
            throttled: g(&self.throttled),
            iterators_renewed: g(&self.iterators_renewed),
            leases_taken: g(&self.leases_taken),
            leases_lost: g(&self.leases_lost),
        }
    }
}

/// A live source: lanes with positions, started exactly where the runner
/// says, acknowledged only once durable. See the [crate docs](crate) for the
/// runner's side of the protocol and the position conventions.
#[async_trait::async_trait]
pub trait LiveSource<T: Send + 'static>: Send {
    /// `kafka:<topic>` or `kinesis:<stream>`, for logs and errors.
    fn name(&self) -> &str;

    /// Resolves a symbolic start (token, earliest, latest, timestamp) for a
    /// lane into the concrete position the runner persists before
    /// consuming.
    async fn resolve_start(&self, lane: &LaneId, start: &Start) -> Result<Position>;

    /// Starts (or restarts) an assigned lane at `at` — its checkpoint, or
    /// the end of a replayed pending batch. Returns the position reading
    /// really starts from (differs from `at` only under
    /// [`OnExpired::Earliest`]). Chunks of the lane delivered before a
    /// restart and not yet returned by [`next`](Self::next) are dropped.
    async fn start_lane(&self, lane: &LaneId, at: &Position) -> Result<Position>;

    /// The next assignment change or chunk. Cancel-safe: dropping the
    /// future (e.g. in a `select!` with a flush timer) loses nothing.
    async fn next(&mut self) -> Result<SourceEvent<T>>;

    /// Reads exactly the records of `[start, end)` of a lane again (a
    /// pending batch's range), decoded like the original chunks.
    async fn read_range(
        &self,
        lane: &LaneId,
        start: &Position,
        end: &Position,
    ) -> Result<Vec<Record<T>>>;

    /// The runner made everything up to `end` durable: commit it to the
    /// consumer group (Kafka, for lag tooling) or the lease table
    /// (Kinesis; `Position::End` marks the shard finished, which lets its
    /// children start).
    async fn ack(&self, lane: &LaneId, end: &Position) -> Result<()>;

    /// The guard to check before each batch write of `lane`.
    fn guard(&self, lane: &LaneId) -> Result<LeaseGuard>;

    /// The source's counters.
    fn metrics(&self) -> Metrics;

    /// Installs `check` for every record decoded from then on: a record it
    /// refuses is a dead letter (sent to the dead-letter topic or stream
    /// with its payload and the check's reason, counted), like a message
    /// that does not decode. The live runner installs its pipeline's check
    /// ([`Pipeline::record_check`](murmur_core::Pipeline::record_check)),
    /// so a record the pipeline would refuse (an empty entity key, an
    /// event time no window holds) cannot stop its lane at that message on
    /// every restart. The last check installed holds for the messages
    /// decoded after it. The default ignores it.
    fn check_records(&self, check: RecordCheck<T>) {
        drop(check);
    }
}

/// The lane position just after a delivered record, from the record's own
/// [`position`](Record::position): where a batch may end inside a
/// [`Chunk`] (the chunk's next records then start the following batch, and
/// [`LiveSource::read_range`] of the batch's range re-reads exactly the
/// records up to this one). Kafka: the next offset; Kinesis: the record's
/// sequence number (lane positions are the last sequence consumed). `None`
/// for positions that are not a live record's.
///
/// ```
/// use murmur_core::Position;
/// use murmur_source_live::position_after;
/// assert_eq!(position_after(&Position::Offset { offset: 41 }), Some(Position::Offset { offset: 42 }));
/// assert_eq!(position_after(&Position::Unknown), None);
/// ```
pub fn position_after(record: &Position) -> Option<Position> {
    match record {
        Position::Offset { offset } => Some(Position::Offset {
            offset: offset.checked_add(1)?,
        }),
        Position::Sequence { sequence } if !sequence.starts_with("at_timestamp:") => {
            Some(Position::Sequence {
                sequence: sequence.clone(),
            })
        }
        _ => None,
    }
}

/// A boxed source is a source: binaries pick Kafka or Kinesis at run time
/// and drive either through one code path.
#[async_trait::async_trait]
impl<T: Send + 'static> LiveSource<T> for Box<dyn LiveSource<T> + Sync> {
    fn name(&self) -> &str {
        (**self).name()
    }

    async fn resolve_start(&self, lane: &LaneId, start: &Start) -> Result<Position> {
        (**self).resolve_start(lane, start).await
    }

    async fn start_lane(&self, lane: &LaneId, at: &Position) -> Result<Position> {
        (**self).start_lane(lane, at).await
    }

    async fn next(&mut self) -> Result<SourceEvent<T>> {
        (**self).next().await
    }

    async fn read_range(
        &self,
        lane: &LaneId,
        start: &Position,
        end: &Position,
    ) -> Result<Vec<Record<T>>> {
        (**self).read_range(lane, start, end).await
    }

    async fn ack(&self, lane: &LaneId, end: &Position) -> Result<()> {
        (**self).ack(lane, end).await
    }

    fn guard(&self, lane: &LaneId) -> Result<LeaseGuard> {
        (**self).guard(lane)
    }

    fn metrics(&self) -> Metrics {
        (**self).metrics()
    }

    fn check_records(&self, check: RecordCheck<T>) {
        (**self).check_records(check);
    }
}
