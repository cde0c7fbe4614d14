//! The backfill driver: a snapshot source's units, spread over lanes, into
//! fenced batches, under the handoff token the run began with; then the
//! run's completion record.

use crate::error::{Error, Result};
use crate::lane::{Dedup, LaneWriter, Resume};
use crate::progress::{Progress, Side, keep_counted};
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use murmur_core::{
    CheckpointStore, FlushPolicy, HandoffToken, LaneId, LaneState, Monoid, Pipeline, Position,
    Record, RunRecord, RunStatus, StateStore,
};
use murmur_source_snapshot::{LaneAssignment, LanePlan, SnapshotSource, UNITS_AHEAD, WorkUnit};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

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
    /// beside the data, a stream position captured now), else
    /// [`HandoffToken::None`]. A run keeps the token it began with: a resume
    /// with `None` uses it without asking the source again, and a resume
    /// with a different token is refused ([`Error::TokenChanged`](crate::Error::TokenChanged)).
    pub token: Option<HandoffToken>,
    /// Refuse a run that has no handoff token (none given, none from the
    /// source), before anything is read: set it when a live stage follows,
    /// which cannot know where the history ends without one
    /// ([`Error::NoToken`](crate::Error::NoToken)).
    pub require_token: bool,
    /// Per-event deduplication, for sources that overlap each other.
    pub dedup: Option<Dedup>,
    /// Counters updated as the run goes (read them for a progress bar).
    pub progress: Arc<Progress>,
    /// Cancel to stop early: every lane flushes and commits its open batch
    /// and the call returns [`BackfillOutcome::Stopped`]; a later call
    /// resumes where it stopped.
    pub stop: CancellationToken,
}

impl BackfillOptions {
    /// One process, four lanes, the backfill flush policy
    /// ([`FlushPolicy::backfill`]).
    pub fn new(run_id: impl Into<String>) -> Self {
        BackfillOptions {
            run_id: run_id.into(),
            lanes: 4,
            worker_index: 0,
            worker_count: 1,
            concurrency: 4,
            flush: FlushPolicy::backfill(),
            token: None,
            require_token: false,
            dedup: None,
            progress: Arc::new(Progress::new()),
            stop: CancellationToken::new(),
        }
    }
}

/// What a backfill call did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
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
    /// [`BackfillOptions::stop`] was cancelled: open batches were committed
    /// and the run is resumable.
    Stopped {
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
            BackfillOutcome::WaitingForOtherWorkers { .. } | BackfillOutcome::Stopped { .. } => {
                None
            }
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
    /// Records dropped because their bucket was already past the window's
    /// retention.
    pub expired: u64,
}

impl BackfillStats {
    fn since(now: crate::ProgressSnapshot, start: crate::ProgressSnapshot) -> Self {
        BackfillStats {
            records: now.records - start.records,
            after_cut: now.skipped - start.skipped,
            batches: now.batches - start.batches,
            replayed: now.replayed - start.replayed,
            rows: now.rows - start.rows,
            expired: now.expired - start.expired,
        }
    }
}

/// Runs (or resumes) a backfill of `source` through `pipeline`.
///
/// Units are spread over `options.lanes` lanes deterministically; this
/// process runs the lanes of its worker slot. Each lane resumes from its
/// checkpoint, re-applying a pending batch exactly; the flush policy alone
/// decides where a batch ends, so a batch may span small units. With an
/// [`HandoffToken::EventTimeCut`] token, only events with
/// `event_time < at_ms` are kept. The run's token is recorded when the run
/// begins and used by every resume and every worker of the run; when every
/// lane of the run is finished, the run is marked completed with it.
///
/// The source's `max_bad_records` holds over the whole run: each lane
/// commits its bad records with its batches, a worker counts those
/// committed when it starts plus those it reads, and the run is completed
/// only if the committed total of every lane is within the limit. A record
/// the pipeline refuses ([`Pipeline::check`]: an entity key no store holds,
/// an event time no window holds) counts as a bad record of the source: the
/// backfill installs the pipeline's check into it
/// ([`SnapshotSource::check_records`]).
#[tracing::instrument(name = "backfill", skip_all, fields(run = %options.run_id))]
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
    let changed = |begun: &HandoffToken, given: &HandoffToken| Error::TokenChanged {
        run_id: run_id.to_owned(),
        begun: begun.to_json(),
        given: given.to_json(),
    };
    // A run without a token cannot hand over to live.
    let usable = |token: HandoffToken| {
        if options.require_token && token == HandoffToken::None {
            return Err(Error::NoToken {
                run_id: run_id.to_owned(),
            });
        }
        Ok(token)
    };
    // A completed run is not run again; the token it completed with is the
    // run's, as for a resume.
    let already = |run: RunRecord| {
        let token = run.token.unwrap_or(HandoffToken::None);
        if let Some(given) = &options.token
            && *given != token
        {
            return Err(changed(&token, given));
        }
        let token = usable(token)?;
        tracing::info!(run = run_id, token = %token.to_json(), "backfill already completed; not re-run");
        Ok(BackfillOutcome::AlreadyCompleted { token })
    };
    let begun = checkpoints
        .run(run_id)
        .await
        .map_err(|e| Error::run(run_id, e))?;
    // A completed run is skipped without listing the source.
    if let Some(run) = begun.as_ref()
        && run.status == RunStatus::Completed
    {
        return already(run.clone());
    }
    // A resume keeps the run's token: the source is not asked again (a
    // stream position captured now would miss what changed since the run
    // began).
    let token = match (begun.and_then(|r| r.token), &options.token) {
        (Some(begun), Some(given)) if begun != *given => return Err(changed(&begun, given)),
        (Some(begun), _) => begun,
        (None, Some(given)) => given.clone(),
        (None, None) => source
            .handoff()
            .await
            .map_err(|e| Error::source(run_id, e))?
            .unwrap_or(HandoffToken::None),
    };
    let token = usable(token)?;
    let units = source
        .list_units()
        .await
        .map_err(|e| Error::source(run_id, e))?;
    let plan = LanePlan::new(run_id, units, options.lanes).map_err(|e| Error::source(run_id, e))?;
    let fingerprint = fingerprint(&plan, pipeline, &source.plan_settings());
    let run = checkpoints
        .begin_run(run_id, &fingerprint, &token)
        .await
        .map_err(|e| Error::run(run_id, e))?;
    if run.status == RunStatus::Completed {
        return already(run);
    }
    if let Some(begun) = run.plan
        && begun != fingerprint
    {
        return Err(Error::PlanChanged {
            run_id: run_id.to_owned(),
            begun,
            now: fingerprint,
        });
    }
    // Another worker may have begun the run first, with the token it took
    // from the source: adopt it (both were taken before any lane read).
    let token = match run.token {
        Some(begun) if options.token.as_ref().is_some_and(|given| *given != begun) => {
            return Err(changed(&begun, &token));
        }
        Some(begun) => usable(begun)?,
        None => token,
    };
    let cut = match token {
        HandoffToken::EventTimeCut { at_ms } => Some(at_ms),
        _ => None,
    };
    // A record the pipeline refuses is a bad record of the source, like
    // one that does not decode (dead-lettered, held to max_bad_records),
    // not an error that stops its lane there on every resume. Records the
    // cut leaves to live are live's to judge.
    source.check_records(Side::Before.record_check(pipeline, cut));
    let mine = plan
        .for_worker(options.worker_index, options.worker_count)
        .map_err(|e| Error::source(run_id, e))?;
    tracing::info!(run = run_id, lanes = mine.len(), token = %token.to_json(), "backfill starting");

    // A limit on bad records holds over the whole run: those committed by
    // earlier runs (of every worker's lanes) count toward it.
    let committed_bad = committed_bad_records(&lane_states(&plan, &*checkpoints, run_id).await?);
    if committed_bad > 0 {
        tracing::info!(
            run = run_id,
            bad_records = committed_bad,
            "bad records committed by earlier runs"
        );
    }
    source
        .bad_records()
        .carry_over(committed_bad)
        .map_err(|e| Error::source(run_id, e))?;

    let progress = options.progress.clone();
    let start = progress.snapshot();
    for a in &mine {
        progress.planned(a.units.len() as u64, a.units.iter().map(|u| u.size).sum());
    }
    let lanes = futures::stream::iter(mine.into_iter().cloned().map(|assignment| {
        let lane = LaneRun {
            pipeline: pipeline.clone(),
            source: source.clone(),
            state: state.clone(),
            checkpoints: checkpoints.clone(),
            flush: options.flush,
            dedup: options.dedup.clone(),
            cut,
            progress: progress.clone(),
            stop: options.stop.clone(),
        };
        let span = tracing::info_span!("lane", lane = %assignment.lane);
        async move { lane.run(assignment).await }.instrument(span)
    }))
    .buffer_unordered(options.concurrency.max(1));
    futures::pin_mut!(lanes);
    while let Some(done) = lanes.next().await {
        done?;
    }
    let stats = BackfillStats::since(progress.snapshot(), start);
    if options.stop.is_cancelled() {
        tracing::info!(
            run = run_id,
            records = stats.records,
            "backfill stopped; resumable"
        );
        return Ok(BackfillOutcome::Stopped { stats });
    }

    let states = lane_states(&plan, &*checkpoints, run_id).await?;
    let unfinished: Vec<LaneId> = states
        .iter()
        .filter(|(_, st)| st.as_ref().map(|s| &s.position) != Some(&Position::End))
        .map(|(lane, _)| lane.clone())
        .collect();
    if !unfinished.is_empty() {
        return Ok(BackfillOutcome::WaitingForOtherWorkers { unfinished, stats });
    }
    // Workers reading at once each saw only their own bad records (and
    // those committed when they started): the run as a whole must be
    // within the limit too.
    source
        .bad_records()
        .check_committed(committed_bad_records(&states))
        .map_err(|e| Error::source(run_id, e))?;
    let done = checkpoints
        .complete_run(run_id, &token)
        .await
        .map_err(|e| Error::run(run_id, e))?;
    tracing::info!(
        run = run_id,
        records = stats.records,
        batches = stats.batches,
        rows = stats.rows,
        token = %token.to_json(),
        "backfill completed"
    );
    Ok(BackfillOutcome::Completed {
        token: done.token.unwrap_or(token),
        stats,
    })
}

/// The checkpoint of every lane of the run's plan (`None`: never opened).
async fn lane_states(
    plan: &LanePlan,
    checkpoints: &dyn CheckpointStore,
    run_id: &str,
) -> Result<Vec<(LaneId, Option<LaneState>)>> {
    let mut states = Vec::with_capacity(plan.lanes().len());
    for lane in plan.lanes() {
        let st = checkpoints
            .lane(&lane.lane)
            .await
            .map_err(|e| Error::run(run_id, e))?;
        states.push((lane.lane.clone(), st));
    }
    Ok(states)
}

/// The bad records the lanes' committed batches covered.
fn committed_bad_records(states: &[(LaneId, Option<LaneState>)]) -> u64 {
    states
        .iter()
        .map(|(_, st)| st.as_ref().map_or(0, |s| s.bad_records))
        .sum()
}

/// One lane of a backfill and what it needs.
struct LaneRun<S: SnapshotSource, M: Monoid> {
    pipeline: Pipeline<S::Item, M>,
    source: S,
    state: Arc<dyn StateStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    flush: FlushPolicy,
    dedup: Option<Dedup>,
    cut: Option<i64>,
    progress: Arc<Progress>,
    stop: CancellationToken,
}

impl<S: SnapshotSource, M: Monoid> LaneRun<S, M> {
    /// The backfill side of an event-time cut: keep `event_time < cut`.
    fn keep(&self, records: Vec<Record<S::Item>>) -> Vec<Record<S::Item>> {
        keep_before(self.cut, records, &self.progress)
    }

    async fn run(self, assignment: LaneAssignment) -> Result<()> {
        let lane = assignment.lane.clone();
        let (writer, resume) = LaneWriter::open(
            self.pipeline.clone(),
            self.state.clone(),
            self.checkpoints.clone(),
            lane.clone(),
            Position::Beginning,
            self.flush,
        )
        .await?;
        let mut writer = writer.with_dedup(self.dedup.clone());
        let mut position = match resume {
            Resume::From(p) => p,
            Resume::Pending(intent) => {
                let parts = self.reread(&assignment, &intent.start, &intent.end)?;
                let report = writer.replay_parts(parts).await?;
                self.progress.batch(&report, true);
                intent.end
            }
        };
        if position == Position::End {
            return Ok(());
        }
        let first = unit_offset(&assignment, &position).unwrap_or(0);
        // A batch may span units: the flush policy alone decides where it
        // ends, so small objects (hourly partitions) still fold into few
        // row writes. Its range re-reads across units (`reread`).
        let units = read_plan(&assignment, first, &position);
        // One stream over the lane's units, the next one already being read
        // while this one is folded.
        let mut chunks = self.source.read_in_order(&units, UNITS_AHEAD);
        let started = |units: &[(WorkUnit, Position)], i: usize| {
            if let Some((unit, from)) = units.get(i) {
                tracing::debug!(key = %unit.key, from = %from, "unit started");
            }
        };
        started(&units, 0);
        let mut current = 0;
        while let Some((unit, _)) = units.get(current) {
            let Some(chunk) = chunks.next().await else {
                return Err(Error::Protocol {
                    lane,
                    reason: format!("the read of {} ended before its last chunk", unit.key),
                });
            };
            let chunk = chunk.map_err(|e| Error::source(lane.as_str(), e))?;
            let last = chunk.last;
            let mut records = self.keep(chunk.records);
            let pushed = writer
                .push_chunk_with_bad(&mut records, &chunk.start, &chunk.end, chunk.bad)
                .await?;
            self.source.recycle(records);
            if let Some(r) = pushed {
                self.progress.batch(&r, false);
            }
            position = chunk.end;
            if last {
                self.progress.unit_done(unit.size);
                current += 1;
                started(&units, current);
            }
            if self.stop.is_cancelled() {
                if let Some(r) = writer.flush().await? {
                    self.progress.batch(&r, false);
                }
                tracing::info!(at = %position, "lane stopped");
                return Ok(());
            }
        }
        // The lane is finished once a batch ending at `End` commits.
        writer
            .push_chunk(Vec::new(), &position, &Position::End)
            .await?;
        if let Some(r) = writer.flush().await? {
            self.progress.batch(&r, false);
        }
        Ok(())
    }

    /// Re-reads the records of the range `[start, end)` of this lane's
    /// units — a pending batch, possibly spanning units — with the same
    /// chunking and cut as the first read, as a stream of the chunks'
    /// records (folded as they come, never all held). `End` means "to the
    /// end of the lane's last unit". A chunk ending past `end`, or the
    /// units ending before it, is an error as soon as it shows.
    fn reread(
        &self,
        assignment: &LaneAssignment,
        start: &Position,
        end: &Position,
    ) -> Result<Parts<S::Item>> {
        let lane = assignment.lane.clone();
        let first = match start {
            Position::Beginning => 0,
            p => unit_offset(assignment, p).ok_or_else(|| Error::Protocol {
                lane: lane.clone(),
                reason: format!("pending batch starts at {start}, in none of the lane's units"),
            })?,
        };
        let mut units = read_plan(assignment, first, start);
        // Only the units the range lies in: none is opened, nor a bad
        // record in it reported, past the range's end.
        if let Some(last) = unit_index(end)
            && let Some(i) = units.iter().position(|(u, _)| u.index == last)
        {
            units.truncate(i + 1);
        }
        let chunks = self.source.read_in_order(&units, UNITS_AHEAD);
        let (cut, progress) = (self.cut, self.progress.clone());
        let range = format!("[{start}, {end})");
        let end = end.clone();
        let unreadable = move |lane: &LaneId, why: &str| Error::Protocol {
            lane: lane.clone(),
            reason: format!(
                "the pending batch {range} could not be re-read: {why} (did the source's objects change?)"
            ),
        };
        let parts = stream::try_unfold((chunks, false), move |(mut chunks, done)| {
            let (lane, progress, unreadable) = (lane.clone(), progress.clone(), unreadable.clone());
            let end = end.clone();
            async move {
                if done {
                    return Ok(None);
                }
                let Some(chunk) = chunks.next().await else {
                    if end == Position::End {
                        return Ok(None);
                    }
                    return Err(unreadable(
                        &lane,
                        &format!("no chunk of the lane's units ends at {end}"),
                    ));
                };
                let chunk = chunk.map_err(|e| Error::source(lane.as_str(), e))?;
                let done = chunk.end == end;
                if !done && past(&chunk.end, &end) {
                    return Err(unreadable(
                        &lane,
                        &format!("a chunk ends at {}, past the batch's end", chunk.end),
                    ));
                }
                let kept = keep_before(cut, chunk.records, &progress);
                Ok(Some(((chunk.start, kept), (chunks, done))))
            }
        });
        Ok(parts.boxed())
    }
}

/// The records of `records` before `cut` (all without one); the others are
/// counted as after it. A chunk's first read and its re-read keep the same
/// records through this one function.
fn keep_before<T>(
    cut: Option<i64>,
    records: Vec<Record<T>>,
    progress: &Progress,
) -> Vec<Record<T>> {
    keep_counted(records, |t| Side::Before.keeps(cut, t), progress).0
}

/// A pending batch's records as re-read, chunk by chunk.
type Parts<T> = BoxStream<'static, Result<(Position, Vec<Record<T>>)>>;

/// Whether lane position `p` lies past `end` (in a later unit, or later in
/// the same one); `false` when the two cannot be compared.
fn past(p: &Position, end: &Position) -> bool {
    match (p, end) {
        (_, Position::End) => false,
        (Position::End, _) => true,
        (
            Position::Object { index, unit, .. },
            Position::Object {
                index: end_index,
                unit: end_unit,
                ..
            },
        ) => (index, unit) > (end_index, end_unit),
        (
            Position::Scan { segment, .. },
            Position::Scan {
                segment: end_segment,
                ..
            },
        ) => segment > end_segment,
        _ => false,
    }
}

/// The unit a position lies in: an object's listing index or a scan
/// segment.
fn unit_index(p: &Position) -> Option<u64> {
    match p {
        Position::Object { index, .. } => Some(*index),
        Position::Scan { segment, .. } => Some(u64::from(*segment)),
        _ => None,
    }
}

/// The lane's units from its `first` on, each with where to read it from:
/// the unit holding `from` there, the others from the beginning.
fn read_plan(
    assignment: &LaneAssignment,
    first: usize,
    from: &Position,
) -> Vec<(WorkUnit, Position)> {
    assignment.units[first..]
        .iter()
        .map(|unit| match unit_index(from) {
            Some(i) if i == unit.index => (unit.clone(), from.clone()),
            _ => (unit.clone(), Position::Beginning),
        })
        .collect()
}

/// Where in the lane's unit list the unit holding `p` is.
fn unit_offset(assignment: &LaneAssignment, p: &Position) -> Option<usize> {
    let index = unit_index(p)?;
    assignment.units.iter().position(|u| u.index == index)
}

/// `units=<n> bytes=<total> lanes=<n> fold=<kind>/<window>
/// [source=[<settings>]] sha256=<16 hex digits>`: the digest covers every
/// lane's id and its units' index, key, size and ETag, in plan order, what the
/// pipeline folds into a row (the monoid's kind and parameters, through its
/// identity cell, and the window's granularity and retention) and the
/// source's [`plan_settings`](SnapshotSource::plan_settings) (where chunks
/// end, which records they keep): a resume that would read other records
/// into a pending range, or fold into other buckets or values, is another
/// plan.
fn fingerprint<T, M: Monoid>(
    plan: &LanePlan,
    pipeline: &Pipeline<T, M>,
    source_settings: &str,
) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    hash.update(source_settings.as_bytes());
    hash.update([0]);
    let kind = format!("{:?}", pipeline.monoid().kind()).to_lowercase();
    let window = match pipeline.window() {
        Some(w) => {
            hash.update(w.granularity_ms().to_le_bytes());
            hash.update(w.retention_ms().unwrap_or(-1).to_le_bytes());
            format!("{}ms", w.granularity_ms())
        }
        None => "all-time".to_owned(),
    };
    hash.update(kind.as_bytes());
    hash.update([0]);
    let monoid = pipeline.monoid();
    match monoid.encode(&monoid.identity()) {
        murmur_core::Cell::Int(v) => hash.update(v.to_le_bytes()),
        murmur_core::Cell::Bytes(b) => hash.update(&b),
    }
    let (mut units, mut bytes) = (0u64, 0u64);
    for lane in plan.lanes() {
        hash.update(lane.lane.as_str().as_bytes());
        hash.update([0]);
        for unit in &lane.units {
            units += 1;
            bytes = bytes.saturating_add(unit.size);
            hash.update(unit.index.to_le_bytes());
            hash.update(unit.key.as_bytes());
            hash.update([0]);
            hash.update(unit.size.to_le_bytes());
            // The version read: an object rewritten since the run began
            // (even to the same size) is another plan. Units without an
            // ETag (scan segments) hash as before.
            if let Some(e_tag) = &unit.e_tag {
                hash.update(e_tag.as_bytes());
                hash.update([0]);
            }
        }
        hash.update([1]);
    }
    let digest: String = hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let source = if source_settings.is_empty() {
        String::new()
    } else {
        format!(" source=[{source_settings}]")
    };
    format!(
        "units={units} bytes={bytes} lanes={} fold={kind}/{window}{source} sha256={digest}",
        plan.lanes().len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_past_a_batch_end() {
        let at = |index, unit| Position::Object {
            index,
            key: format!("o{index}").into(),
            unit,
        };
        assert!(past(&at(3, 10), &at(3, 9)));
        assert!(past(&at(4, 0), &at(3, 9)));
        assert!(!past(&at(3, 9), &at(3, 9)));
        assert!(!past(&at(2, 100), &at(3, 9)));
        assert!(past(&Position::End, &at(3, 9)));
        assert!(!past(&at(3, 9), &Position::End));
        let seg = |segment| Position::Scan {
            segment,
            last_key: None,
        };
        assert!(past(&seg(2), &seg(1)) && !past(&seg(1), &seg(1)));
        assert!(
            !past(&Position::Offset { offset: 9 }, &at(0, 0)),
            "not comparable"
        );
    }
}
