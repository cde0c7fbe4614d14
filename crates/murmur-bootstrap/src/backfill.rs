//! The backfill driver: a snapshot source's units, spread over lanes, into
//! fenced batches; then the run's completion record with its handoff token.

use crate::error::{Error, Result};
use crate::lane::{LaneWriter, Resume};
use futures::StreamExt;
use murmur_core::{
    CheckpointStore, FlushPolicy, HandoffToken, LaneId, Monoid, Pipeline, Position, Record,
    RunStatus, StateStore,
};
use murmur_source_snapshot::{LaneAssignment, LanePlan, SnapshotSource, WorkUnit};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How to run a backfill.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// The run id. Lanes are named `<run_id>:slot-<n>`; a completed run with
    /// this id is never run again.
    pub run_id: String,
    /// Number of lanes the units are spread over (fixed for the life of the
    /// run: it is part of the lanes' identity).
    pub lanes: u32,
    /// This process's index among `worker_count` processes sharing the run.
    pub worker_index: u32,
    /// Number of processes sharing the run.
    pub worker_count: u32,
    /// Lanes of this process read concurrently.
    pub concurrency: usize,
    /// Batch flush policy (a batch also ends at the end of every unit).
    pub flush: FlushPolicy,
    /// The handoff token; `None` takes the source's (a manifest object
    /// beside the data), else [`HandoffToken::None`].
    pub token: Option<HandoffToken>,
}

impl BackfillOptions {
    /// One process, four lanes, default flush policy.
    pub fn new(run_id: impl Into<String>) -> Self {
        BackfillOptions {
            run_id: run_id.into(),
            lanes: 4,
            worker_index: 0,
            worker_count: 1,
            concurrency: 4,
            flush: FlushPolicy::default(),
            token: None,
        }
    }
}

/// What a backfill call did.
#[derive(Debug, Clone, PartialEq)]
pub enum BackfillOutcome {
    /// The run was already completed; nothing was read.
    AlreadyCompleted {
        /// The stored token.
        token: HandoffToken,
    },
    /// Every lane is finished and the completion record was written with
    /// the token (by this call or, concurrently, another worker).
    Completed {
        /// The token.
        token: HandoffToken,
        /// Counters of this call.
        stats: BackfillStats,
    },
    /// This process's lanes are finished, others' are not yet.
    WaitingForOtherWorkers {
        /// Lanes not yet finished.
        unfinished: Vec<LaneId>,
        /// Counters of this call.
        stats: BackfillStats,
    },
}

impl BackfillOutcome {
    /// The token, once the run is complete.
    pub fn token(&self) -> Option<&HandoffToken> {
        match self {
            BackfillOutcome::AlreadyCompleted { token }
            | BackfillOutcome::Completed { token, .. } => Some(token),
            BackfillOutcome::WaitingForOtherWorkers { .. } => None,
        }
    }
}

/// Counters of one backfill call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackfillStats {
    /// Records read and folded (after the event-time cut).
    pub records: u64,
    /// Records dropped by the event-time cut.
    pub after_cut: u64,
    /// Batches committed (including replayed ones).
    pub batches: u64,
    /// Batches replayed from a pending intent.
    pub replayed: u64,
    /// Row deltas written.
    pub rows: u64,
}

#[derive(Default)]
struct Counters {
    records: AtomicU64,
    after_cut: AtomicU64,
    batches: AtomicU64,
    replayed: AtomicU64,
    rows: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> BackfillStats {
        BackfillStats {
            records: self.records.load(Ordering::Relaxed),
            after_cut: self.after_cut.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
        }
    }
}

/// Runs (or resumes) a backfill of `source` through `pipeline`.
///
/// Units are spread over `options.lanes` lanes deterministically; this
/// process runs the lanes of its worker slot. Each lane resumes from its
/// checkpoint, re-applying a pending batch exactly; batches never span two
/// units. With an [`HandoffToken::EventTimeCut`] token, only events with
/// `event_time < at_ms` are kept. When every lane of the run is finished,
/// the completion record and the token are written in one write.
pub async fn backfill<S, M>(
    pipeline: &Pipeline<S::Item, M>,
    source: &S,
    state: Arc<dyn StateStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    options: &BackfillOptions,
) -> Result<BackfillOutcome>
where
    S: SnapshotSource + Clone + 'static,
    M: Monoid,
    S::Item: Send + Sync,
{
    let run_id = options.run_id.as_str();
    let run = checkpoints
        .begin_run(run_id)
        .await
        .map_err(|e| Error::run(run_id, e))?;
    if run.status == RunStatus::Completed {
        let token = run.token.unwrap_or(HandoffToken::None);
        tracing::info!(run = run_id, token = %token.to_json(), "backfill already completed; not re-run");
        return Ok(BackfillOutcome::AlreadyCompleted { token });
    }
    let token = match &options.token {
        Some(t) => t.clone(),
        None => source
            .handoff()
            .await
            .map_err(|e| Error::source(run_id, e))?
            .unwrap_or(HandoffToken::None),
    };
    let cut = match token {
        HandoffToken::EventTimeCut { at_ms } => Some(at_ms),
        _ => None,
    };
    let units = source
        .list_units()
        .await
        .map_err(|e| Error::source(run_id, e))?;
    let plan = LanePlan::new(run_id, units, options.lanes).map_err(|e| Error::source(run_id, e))?;
    let mine = plan
        .for_worker(options.worker_index, options.worker_count)
        .map_err(|e| Error::source(run_id, e))?;
    tracing::info!(run = run_id, lanes = mine.len(), token = %token.to_json(), "backfill starting");

    let counters = Arc::new(Counters::default());
    let lanes = futures::stream::iter(mine.into_iter().cloned().map(|assignment| {
        let (pipeline, source, state, checkpoints, counters) = (
            pipeline.clone(),
            source.clone(),
            state.clone(),
            checkpoints.clone(),
            counters.clone(),
        );
        let flush = options.flush;
        async move {
            run_lane(
                pipeline,
                source,
                state,
                checkpoints,
                assignment,
                flush,
                cut,
                &counters,
            )
            .await
        }
    }))
    .buffer_unordered(options.concurrency.max(1));
    futures::pin_mut!(lanes);
    while let Some(done) = lanes.next().await {
        done?;
    }
    let stats = counters.snapshot();

    let mut unfinished = Vec::new();
    for lane in plan.lanes() {
        let st = checkpoints
            .lane(&lane.lane)
            .await
            .map_err(|e| Error::run(run_id, e))?;
        if st.map(|s| s.position) != Some(Position::End) {
            unfinished.push(lane.lane.clone());
        }
    }
    if !unfinished.is_empty() {
        return Ok(BackfillOutcome::WaitingForOtherWorkers { unfinished, stats });
    }
    let done = checkpoints
        .complete_run(run_id, &token)
        .await
        .map_err(|e| Error::run(run_id, e))?;
    tracing::info!(
        run = run_id,
        records = stats.records,
        batches = stats.batches,
        "backfill completed"
    );
    Ok(BackfillOutcome::Completed {
        token: done.token.unwrap_or(token),
        stats,
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_lane<S, M>(
    pipeline: Pipeline<S::Item, M>,
    source: S,
    state: Arc<dyn StateStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    assignment: LaneAssignment,
    flush: murmur_core::FlushPolicy,
    cut: Option<i64>,
    counters: &Counters,
) -> Result<()>
where
    S: SnapshotSource,
    M: Monoid,
{
    let lane = assignment.lane.clone();
    let span = tracing::info_span!("lane", lane = %lane);
    let _enter = span.enter();
    let (mut writer, resume) = LaneWriter::open(
        pipeline,
        state,
        checkpoints,
        lane.clone(),
        Position::Beginning,
        flush,
    )
    .await?;
    let keep = |records: Vec<Record<S::Item>>| -> Vec<Record<S::Item>> {
        let before = records.len();
        let kept: Vec<_> = match cut {
            Some(at) => records
                .into_iter()
                .filter(|r| r.event_time_ms < at)
                .collect(),
            None => records,
        };
        counters
            .after_cut
            .fetch_add((before - kept.len()) as u64, Ordering::Relaxed);
        counters
            .records
            .fetch_add(kept.len() as u64, Ordering::Relaxed);
        kept
    };

    let mut position = match resume {
        Resume::From(p) => p,
        Resume::Pending(intent) => {
            // Batches never span units: the pending range lies in one unit.
            let mut records = Vec::new();
            if let Some(unit) = unit_at(&assignment.units, &intent.start) {
                let mut chunks = source.read(unit, &intent.start);
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk.map_err(|e| Error::source(lane.as_str(), e))?;
                    records.extend(keep(chunk.records));
                    if chunk.end == intent.end || chunk.last {
                        break;
                    }
                }
            }
            let report = writer.replay(&records).await?;
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters.replayed.fetch_add(1, Ordering::Relaxed);
            counters.rows.fetch_add(report.rows, Ordering::Relaxed);
            intent.end
        }
    };
    if position == Position::End {
        return Ok(());
    }
    let first = match &position {
        Position::Object { index, .. } => assignment
            .units
            .iter()
            .position(|u| u.index == *index)
            .unwrap_or(0),
        _ => 0,
    };
    for unit in &assignment.units[first..] {
        let from = match &position {
            Position::Object { index, .. } if *index == unit.index => position.clone(),
            _ => Position::Beginning,
        };
        let mut chunks = source.read(unit, &from);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| Error::source(lane.as_str(), e))?;
            let last = chunk.last;
            let records = keep(chunk.records);
            if let Some(r) = writer
                .push_chunk(&records, &chunk.start, &chunk.end)
                .await?
            {
                counters.batches.fetch_add(1, Ordering::Relaxed);
                counters.rows.fetch_add(r.rows, Ordering::Relaxed);
            }
            position = chunk.end;
            if last {
                break;
            }
        }
        // End of unit: a batch never spans two units.
        if let Some(r) = writer.flush().await? {
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters.rows.fetch_add(r.rows, Ordering::Relaxed);
        }
    }
    // Mark the lane finished with an empty batch ending at `End`.
    writer.push_chunk(&[], &position, &Position::End).await?;
    writer.flush().await?;
    counters.batches.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn unit_at<'a>(units: &'a [WorkUnit], p: &Position) -> Option<&'a WorkUnit> {
    match p {
        Position::Object { index, .. } => units.iter().find(|u| u.index == *index),
        Position::Beginning => units.first(),
        _ => None,
    }
}
