//! The live driver: a live source's lanes into fenced batches, acknowledged
//! only once durable.

use crate::error::{Error, Result};
use crate::lane::{BatchReport, Dedup, LaneWriter, Resume};
use crate::progress::{Progress, keep_counted};
use murmur_core::{
    CheckpointStore, FlushPolicy, HandoffToken, LaneId, Monoid, Pipeline, Record, StateStore,
};
use murmur_source_live::{LiveSource, SourceEvent, Start};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How to run the live stage.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Where lanes without a checkpoint start (usually the backfill's
    /// token). Resolved once per lane and persisted before consuming.
    pub start: Start,
    /// Batch flush policy; `max_age` bounds the latency of a stored update.
    pub flush: FlushPolicy,
    /// How often idle lanes are checked for an aged batch.
    pub tick: Duration,
    /// Per-event deduplication, for sources that overlap each other.
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
}

/// Runs the live stage until `shutdown` resolves, then flushes every open
/// batch, acknowledges it and returns.
///
/// For every assigned lane: its checkpoint, else `options.start` resolved by
/// the source and persisted; a pending batch is re-read exactly and
/// re-applied; then records flow into fenced batches (flushed on max keys,
/// max age, revocation and shutdown), and each batch is acknowledged to the
/// source only after it is committed. The lane's guard (partition
/// ownership, Kinesis lease) is checked before every write.
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
    T: Send + 'static,
    M: Monoid,
    L: LiveSource<T>,
{
    let mut run = Live {
        pipeline,
        state,
        checkpoints,
        options,
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
        run.flush_lane(source, &lane).await?;
    }
    tracing::info!(
        records = run.stats.records,
        batches = run.stats.batches,
        rows = run.stats.rows,
        "live stage stopped"
    );
    Ok(run.stats)
}

struct Live<'a, T, M: Monoid> {
    pipeline: &'a Pipeline<T, M>,
    state: Arc<dyn StateStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    options: &'a LiveOptions,
    writers: HashMap<LaneId, LaneWriter<T, M>>,
    stats: LiveStats,
}

impl<T: Send + 'static, M: Monoid> Live<'_, T, M> {
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
                    if source.guard(&lane).and_then(|g| g.check()).is_ok() {
                        self.flush_lane(source, &lane).await?;
                    }
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
                if let Some(report) = writer.push_chunk(records, &chunk.start, &chunk.end).await? {
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
            .checkpoints
            .lane(&lane)
            .await
            .map_err(|e| Error::Store {
                lane: lane.clone(),
                source: Box::new(e),
            })?;
        let start = match existing {
            Some(st) => st.position,
            None => source
                .resolve_start(&lane, &self.options.start)
                .await
                .map_err(|e| Error::source(lane.as_str(), e))?,
        };
        let (writer, resume) = LaneWriter::open(
            self.pipeline.clone(),
            self.state.clone(),
            self.checkpoints.clone(),
            lane.clone(),
            start,
            self.options.flush,
        )
        .await?;
        let mut writer = writer.with_dedup(self.options.dedup.clone());
        let at = match resume {
            Resume::From(p) => p,
            Resume::Pending(intent) => {
                let records = source
                    .read_range(&lane, &intent.start, &intent.end)
                    .await
                    .map_err(|e| Error::source(lane.as_str(), e))?;
                let records = keep_after(self.options, records, &mut self.stats);
                check_guard(source, &lane)?;
                let report = writer.replay(&records).await?;
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
        let Some(writer) = self.writers.get_mut(lane) else {
            return Ok(());
        };
        check_guard(source, lane)?;
        if let Some(report) = writer.flush().await? {
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
    let (kept, dropped) =
        keep_counted(records, |t| cut.is_none_or(|at| t >= at), &options.progress);
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
    source
        .ack(lane, &report.end)
        .await
        .map_err(|e| Error::source(lane.as_str(), e))
}
