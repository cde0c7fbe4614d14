//! The live driver: a live source's lanes into fenced batches, acknowledged
//! only once durable.

use crate::error::{Error, Result};
use crate::lane::{BatchReport, Dedup, LaneWriter, Resume};
use crate::progress::{Progress, Side, keep_counted};
use murmur_core::{
    CheckpointStore, FlushPolicy, HandoffToken, LaneId, Monoid, Pipeline, Position, Record,
    StateStore,
};
use murmur_source_live::{LiveSource, SourceEvent, Start};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// One lane's durable writer, as the live driver ([`live`], [`live_into`])
/// drives it.
///
/// [`LaneWriter`] is the one that folds records into fenced rows of a state
/// store; an archive writing objects is another. Either way a sink keeps
/// the lane protocol of the crate docs: an intent is recorded in the
/// checkpoint store before anything is written, and every [`BatchReport`]
/// a method returns is a batch already **committed** there, in the lane's
/// order. The driver acknowledges each report's `end` to the source, in the
/// order returned, and nothing else.
#[async_trait::async_trait]
pub trait LaneSink<T>: Send {
    /// Writes the pending batch again from exactly its records (those of
    /// `[intent.start, intent.end)`) and commits it.
    async fn replay(&mut self, records: Vec<Record<T>>) -> Result<BatchReport>;

    /// Adds a chunk read from `start` up to `end` (exclusive); returns the
    /// batches that became durable meanwhile.
    async fn push_chunk(
        &mut self,
        records: Vec<Record<T>>,
        start: &Position,
        end: &Position,
    ) -> Result<Vec<BatchReport>>;

    /// Whether [`flush`](Self::flush) has something to do now (an aged open
    /// batch; a write finished in the background). Polled on idle ticks.
    fn should_flush(&self) -> bool;

    /// Cuts the open batch if it is due and returns what became durable.
    async fn flush(&mut self) -> Result<Vec<BatchReport>>;

    /// Makes everything pushed so far durable (shutdown, revocation).
    async fn drain(&mut self) -> Result<Vec<BatchReport>>;
}

/// Opens a [`LaneSink`] per lane assigned to the live driver.
#[async_trait::async_trait]
pub trait LaneSinks<T>: Send + Sync {
    /// The sink type.
    type Sink: LaneSink<T>;

    /// Where the sinks keep the lanes' checkpoints.
    fn checkpoints(&self) -> &Arc<dyn CheckpointStore>;

    /// Opens `lane`, creating its checkpoint at `start` if it is new;
    /// returns the sink and where the lane resumes.
    async fn open(&self, lane: &LaneId, start: Position) -> Result<(Self::Sink, Resume)>;
}

#[async_trait::async_trait]
impl<T: Send + Sync + 'static, M: Monoid> LaneSink<T> for LaneWriter<T, M> {
    async fn replay(&mut self, records: Vec<Record<T>>) -> Result<BatchReport> {
        LaneWriter::replay(self, &records).await
    }

    async fn push_chunk(
        &mut self,
        records: Vec<Record<T>>,
        start: &Position,
        end: &Position,
    ) -> Result<Vec<BatchReport>> {
        Ok(LaneWriter::push_chunk(self, records, start, end)
            .await?
            .into_iter()
            .collect())
    }

    fn should_flush(&self) -> bool {
        LaneWriter::should_flush(self)
    }

    async fn flush(&mut self) -> Result<Vec<BatchReport>> {
        Ok(LaneWriter::flush(self).await?.into_iter().collect())
    }

    async fn drain(&mut self) -> Result<Vec<BatchReport>> {
        LaneSink::flush(self).await
    }
}

/// The state-store sinks of [`live`]: a [`LaneWriter`] per lane.
struct StateSinks<T, M: Monoid> {
    pipeline: Pipeline<T, M>,
    state: Arc<dyn StateStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    flush: FlushPolicy,
    dedup: Option<Dedup>,
}

#[async_trait::async_trait]
impl<T: Send + Sync + 'static, M: Monoid> LaneSinks<T> for StateSinks<T, M> {
    type Sink = LaneWriter<T, M>;

    fn checkpoints(&self) -> &Arc<dyn CheckpointStore> {
        &self.checkpoints
    }

    async fn open(&self, lane: &LaneId, start: Position) -> Result<(Self::Sink, Resume)> {
        let (writer, resume) = LaneWriter::open(
            self.pipeline.clone(),
            self.state.clone(),
            self.checkpoints.clone(),
            lane.clone(),
            start,
            self.flush,
        )
        .await?;
        Ok((writer.with_dedup(self.dedup.clone()), resume))
    }
}

/// How to run the live stage.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Where lanes without a checkpoint start (usually the backfill's
    /// token). Resolved once per lane and persisted before consuming.
    pub start: Start,
    /// Batch flush policy; `max_age` bounds the latency of a stored update.
    /// (Used by [`live`]'s state-store writers; a [`LaneSinks`] given to
    /// [`live_into`] has its own.)
    pub flush: FlushPolicy,
    /// How often idle lanes are checked for an aged batch.
    pub tick: Duration,
    /// Per-event deduplication, for sources that overlap each other
    /// (used by [`live`]'s state-store writers).
    pub dedup: Option<Dedup>,
    /// Counters updated as the run goes (events in, batches, rows, lag).
    pub progress: Arc<Progress>,
}

impl LiveOptions {
    /// Starting from `token` with the default flush policy (5 s max age).
    pub fn from_token(token: HandoffToken) -> Self {
        LiveOptions {
            start: Start::Token(token),
            flush: FlushPolicy::default(),
            tick: Duration::from_millis(200),
            dedup: None,
            progress: Arc::new(Progress::new()),
        }
    }

    fn cut(&self) -> Option<i64> {
        match &self.start {
            Start::Token(HandoffToken::EventTimeCut { at_ms }) => Some(*at_ms),
            _ => None,
        }
    }
}

/// Counters of one live run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveStats {
    /// Records folded.
    pub records: u64,
    /// Records dropped because they precede the event-time cut.
    pub before_cut: u64,
    /// Batches committed.
    pub batches: u64,
    /// Pending batches replayed after a restart or a reassignment.
    pub replayed: u64,
    /// Row deltas written.
    pub rows: u64,
    /// Lanes taken on.
    pub lanes_assigned: u64,
    /// Lanes given up.
    pub lanes_revoked: u64,
    /// Lanes that reached their end (finished Kinesis shards).
    pub lanes_finished: u64,
}

/// Runs the live stage until `shutdown` resolves, then flushes every open
/// batch, acknowledges it and returns.
///
/// For every assigned lane: its checkpoint, else `options.start` resolved by
/// the source and persisted; a pending batch is re-read exactly and
/// re-applied; then records flow into fenced batches (flushed on max keys,
/// max age, revocation and shutdown), and each batch is acknowledged to the
/// source only after it is committed. The lane's guard (partition
/// ownership, Kinesis lease) is checked before every write. A record the
/// pipeline refuses ([`Pipeline::check`]) is a dead letter of the source:
/// the pipeline's check is installed into it
/// ([`LiveSource::check_records`]).
#[tracing::instrument(name = "live", skip_all, fields(source = %source.name()))]
pub async fn live<T, M, L>(
    pipeline: &Pipeline<T, M>,
    source: &mut L,
    state: Arc<dyn StateStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    options: &LiveOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<LiveStats>
where
    T: Send + Sync + 'static,
    M: Monoid,
    L: LiveSource<T>,
{
    // A record the pipeline refuses is the source's dead letter, like one
    // that does not decode, not an error that stops its lane there.
    // Records before an event-time cut were the backfill's to judge (and
    // are dropped here).
    source.check_records(Side::After.record_check(pipeline, options.cut()));
    let sinks = StateSinks {
        pipeline: pipeline.clone(),
        state,
        checkpoints,
        flush: options.flush,
        dedup: options.dedup.clone(),
    };
    live_into(&sinks, source, options, shutdown).await
}

/// The live driver over any [`LaneSinks`]: what [`live`] does, with the
/// writes of each lane going to the sink `sinks` opens for it. Uses
/// `options.start`, `tick` and `progress` (`flush` and `dedup` belong to
/// [`live`]'s state-store writers). A [`BatchReport`]'s `rows` is what the
/// sink counts as written (rows, objects).
pub async fn live_into<T, S, L>(
    sinks: &S,
    source: &mut L,
    options: &LiveOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<LiveStats>
where
    T: Send + Sync + 'static,
    S: LaneSinks<T>,
    L: LiveSource<T>,
{
    let start = match &options.start {
        Start::Latest => Start::Timestamp(murmur_core::store::now_ms()),
        other => other.clone(),
    };
    let mut run = Live {
        sinks,
        options,
        start,
        writers: HashMap::new(),
        stats: LiveStats::default(),
    };
    let mut tick = tokio::time::interval(options.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            event = source.next() => {
                let event = event.map_err(|e| Error::source(source.name(), e))?;
                run.handle(source, event).await?;
            }
            _ = tick.tick() => run.flush_aged(source).await?,
        }
    }
    let lanes: Vec<LaneId> = run.writers.keys().cloned().collect();
    for lane in lanes {
        // A lane let go just now (a lease lost, a shard finished, its event
        // still on the way) is abandoned as on `Revoked`: whoever reads it
        // next resumes from its checkpoint.
        if let Err(e) = check_guard(source, &lane) {
            tracing::info!(%lane, reason = %e, "lane no longer ours at shutdown; not drained");
            continue;
        }
        run.drain_lane(source, &lane).await?;
    }
    tracing::info!(
        records = run.stats.records,
        batches = run.stats.batches,
        rows = run.stats.rows,
        "live stage stopped"
    );
    Ok(run.stats)
}

struct Live<'a, T, S: LaneSinks<T>> {
    sinks: &'a S,
    options: &'a LiveOptions,
    /// Where a lane without a checkpoint starts: `options.start`, with
    /// [`Start::Latest`] fixed to the time this run began, so a lane that
    /// appears later (a partition added, a child shard after a split)
    /// starts there too and misses nothing written since.
    start: Start,
    writers: HashMap<LaneId, S::Sink>,
    stats: LiveStats,
}

impl<T: Send + Sync + 'static, S: LaneSinks<T>> Live<'_, T, S> {
    async fn handle<L: LiveSource<T>>(
        &mut self,
        source: &mut L,
        event: SourceEvent<T>,
    ) -> Result<()> {
        match event {
            SourceEvent::Assigned(lanes) => {
                for lane in lanes {
                    self.assign(source, lane).await?;
                }
            }
            SourceEvent::Revoked(lanes) => {
                for lane in lanes {
                    self.stats.lanes_revoked += 1;
                    // A lost guard means another owner may already write:
                    // abandon the open batch; the checkpoint is the truth.
                    if check_guard(source, &lane).is_ok() {
                        self.drain_lane(source, &lane).await?;
                    }
                    self.writers.remove(&lane);
                    self.options.progress.lane_gone(&lane);
                }
            }
            SourceEvent::Finished(lanes) => {
                // The source finished these after the ack of their last
                // batch: their writers hold nothing, and their guards are
                // gone (a final drain would fail on them).
                for lane in lanes {
                    self.stats.lanes_finished += 1;
                    self.writers.remove(&lane);
                    self.options.progress.lane_gone(&lane);
                }
            }
            SourceEvent::Chunk(chunk) => {
                let Some(writer) = self.writers.get_mut(&chunk.lane) else {
                    return Err(Error::Protocol {
                        lane: chunk.lane,
                        reason: "chunk for a lane that was never started".into(),
                    });
                };
                if let Some(newest) = chunk.records.iter().map(|r| r.event_time_ms).max() {
                    self.options
                        .progress
                        .lag(&chunk.lane, murmur_core::store::now_ms() - newest);
                }
                let records = keep_after(self.options, chunk.records, &mut self.stats);
                check_guard(source, &chunk.lane)?;
                let reports = writer.push_chunk(records, &chunk.start, &chunk.end).await?;
                for report in reports {
                    let progress = &self.options.progress;
                    committed(
                        source,
                        &chunk.lane,
                        &report,
                        false,
                        &mut self.stats,
                        progress,
                    )
                    .await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn assign<L: LiveSource<T>>(&mut self, source: &mut L, lane: LaneId) -> Result<()> {
        self.stats.lanes_assigned += 1;
        let existing = self
            .sinks
            .checkpoints()
            .lane(&lane)
            .await
            .map_err(|e| Error::Store {
                lane: lane.clone(),
                source: Box::new(e),
            })?;
        let start = match existing {
            Some(st) => st.position,
            None => source
                .resolve_start(&lane, &self.start)
                .await
                .map_err(|e| Error::source(lane.as_str(), e))?,
        };
        let (mut writer, resume) = self.sinks.open(&lane, start).await?;
        let at = match resume {
            Resume::From(p) => p,
            Resume::Pending(intent) => {
                // Said so: a bad message met here was in the batch when
                // it was first read (and dead-lettered or skipped then).
                let records = source
                    .read_range(&lane, &intent.start, &intent.end)
                    .await
                    .map_err(|e| {
                        let batch = format!(
                            "{lane}: re-reading its pending batch [{}, {})",
                            intent.start, intent.end
                        );
                        Error::source(&batch, e)
                    })?;
                let records = keep_after(self.options, records, &mut self.stats);
                check_guard(source, &lane)?;
                let report = writer.replay(records).await?;
                let progress = &self.options.progress;
                committed(source, &lane, &report, true, &mut self.stats, progress).await?;
                report.end
            }
        };
        source
            .start_lane(&lane, &at)
            .await
            .map_err(|e| Error::source(lane.as_str(), e))?;
        tracing::info!(lane = %lane, at = %at, "lane started");
        self.writers.insert(lane, writer);
        Ok(())
    }

    async fn flush_aged<L: LiveSource<T>>(&mut self, source: &mut L) -> Result<()> {
        let aged: Vec<LaneId> = self
            .writers
            .iter()
            .filter(|(_, w)| w.should_flush())
            .map(|(l, _)| l.clone())
            .collect();
        for lane in aged {
            self.flush_lane(source, &lane).await?;
        }
        Ok(())
    }

    async fn flush_lane<L: LiveSource<T>>(&mut self, source: &mut L, lane: &LaneId) -> Result<()> {
        self.write_lane(source, lane, false).await
    }

    async fn drain_lane<L: LiveSource<T>>(&mut self, source: &mut L, lane: &LaneId) -> Result<()> {
        self.write_lane(source, lane, true).await
    }

    async fn write_lane<L: LiveSource<T>>(
        &mut self,
        source: &mut L,
        lane: &LaneId,
        drain: bool,
    ) -> Result<()> {
        let Some(writer) = self.writers.get_mut(lane) else {
            return Ok(());
        };
        check_guard(source, lane)?;
        let reports = if drain {
            writer.drain().await?
        } else {
            writer.flush().await?
        };
        for report in reports {
            let progress = &self.options.progress;
            committed(source, lane, &report, false, &mut self.stats, progress).await?;
        }
        Ok(())
    }
}

fn check_guard<T: Send + 'static, L: LiveSource<T>>(source: &L, lane: &LaneId) -> Result<()> {
    source
        .guard(lane)
        .and_then(|g| g.check())
        .map_err(|e| Error::source(lane.as_str(), e))
}

/// The live side of an event-time cut: keep `event_time >= cut`.
fn keep_after<T>(
    options: &LiveOptions,
    records: Vec<Record<T>>,
    stats: &mut LiveStats,
) -> Vec<Record<T>> {
    let cut = options.cut();
    let (kept, dropped) = keep_counted(records, |t| Side::After.keeps(cut, t), &options.progress);
    stats.before_cut += dropped;
    stats.records += kept.len() as u64;
    kept
}

/// A batch of `lane` committed: counts it and acknowledges it to the
/// source (only now is it durable).
async fn committed<T: Send + 'static, L: LiveSource<T>>(
    source: &mut L,
    lane: &LaneId,
    report: &BatchReport,
    replayed: bool,
    stats: &mut LiveStats,
    progress: &Progress,
) -> Result<()> {
    stats.batches += 1;
    stats.rows += report.rows;
    stats.replayed += u64::from(replayed);
    progress.batch(report, replayed);
    // The batch is committed: the checkpoint is the truth, so an ack that
    // fails (a group commit during a rebalance, a throttled lease update)
    // is retried with backoff before the run gives up.
    let mut backoff = ACK_BACKOFF;
    let mut attempt = 1;
    loop {
        match source.ack(lane, &report.end).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < ACK_ATTEMPTS => {
                tracing::warn!(lane = %lane, attempt, error = %e, "ack failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            Err(e) => return Err(Error::source(lane.as_str(), e)),
        }
    }
}

/// Attempts at acknowledging a committed batch, and the first backoff.
const ACK_ATTEMPTS: u32 = 5;
const ACK_BACKOFF: Duration = Duration::from_millis(100);
