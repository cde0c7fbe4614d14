//! Errors of the runner.

use murmur_core::{LaneId, PipelineError, StoreError};

/// Result with the runner's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error running a lane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A state, checkpoint or dedup store failed.
    #[error("lane {lane}: {source}")]
    Store {
        /// The lane.
        lane: LaneId,
        /// The store error.
        #[source]
        source: Box<StoreError>,
    },
    /// A record could not be folded (the pipeline refused its key or its
    /// event time). [`backfill`](crate::backfill) and [`live`](crate::live)
    /// have their sources refuse such records as bad records first (see
    /// the crate docs); this comes from a source that takes no check, or
    /// from records handed to a [`LaneWriter`](crate::LaneWriter) directly.
    #[error("lane {lane}: the record at {at}: {source}")]
    Pipeline {
        /// The lane.
        lane: LaneId,
        /// Where the record was read: its object and row, from 1 (a
        /// snapshot record: the row of a Parquet object, the line of a JSON
        /// Lines one) or its position (a Kafka offset, a Kinesis sequence
        /// number, a scan segment).
        at: String,
        /// The pipeline error.
        #[source]
        source: Box<PipelineError>,
    },
    /// A snapshot or live source failed.
    #[error("{context}: {source}")]
    Source {
        /// The run or lane (and what it was doing, e.g. re-reading a
        /// pending batch).
        context: String,
        /// The source error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The run's checkpoint record could not be read or written.
    #[error("run {run_id}: {source}")]
    Run {
        /// The run id.
        run_id: String,
        /// The store error.
        #[source]
        source: Box<StoreError>,
    },
    /// The run was begun with a different work plan: the source's listing
    /// changed (objects added or removed), the lane count differs, or the
    /// pipeline folds differently (another aggregate, its parameters, the
    /// window or its retention). Its lane checkpoints and rows belong to
    /// the old plan, so resuming could skip, double-count or mix buckets;
    /// restore the listing, `--lanes` and the pipeline, or start a new run
    /// id (into a fresh store).
    #[error(
        "run {run_id}: the work plan changed since the run began (then: {begun}; now: {now}); \
         restore the source's objects, the lane count and the pipeline, or use a new run id"
    )]
    PlanChanged {
        /// The run id.
        run_id: String,
        /// The plan fingerprint the run began with.
        begun: String,
        /// The plan fingerprint now.
        now: String,
    },
    /// A resume was given a handoff token other than the one the run began
    /// with. The lanes already folded their history against the first one
    /// (its event-time cut, or the stream position live starts from), so
    /// switching could skip or double-count at the seam.
    #[error(
        "run {run_id}: it began with handoff token {begun}, not {given}; \
         resume with the token it began with (or none), or use a new run id"
    )]
    TokenChanged {
        /// The run id.
        run_id: String,
        /// The token the run began with, as JSON.
        begun: String,
        /// The token given now, as JSON.
        given: String,
    },
    /// A backfill that a live stage follows has no handoff token (none
    /// given, none from the source, or the run began without one): live
    /// could not know where the history ends, and would count it twice or
    /// leave a gap.
    #[error(
        "run {run_id}: no handoff token (none given, no manifest beside the data, or the run began without one); \
         live cannot know where the history ends: pass a token (with a new run id if this one began without)"
    )]
    NoToken {
        /// The run id.
        run_id: String,
    },
    /// An earlier call on this lane's [`LaneWriter`](crate::LaneWriter)
    /// failed part-way (a record that did not fold, a store error), so the
    /// writer may hold folded records that no stored batch intent covers.
    /// It refuses further work: open the lane again, which resumes from its
    /// durable checkpoint (replaying a pending batch if there is one).
    #[error(
        "lane {lane}: the writer failed earlier ({reason}); open the lane again to resume from its checkpoint"
    )]
    Poisoned {
        /// The lane.
        lane: LaneId,
        /// The first error.
        reason: String,
    },
    /// The caller broke the lane protocol (for example pushed new records
    /// while a pending batch still had to be replayed).
    #[error("lane {lane}: {reason}")]
    Protocol {
        /// The lane.
        lane: LaneId,
        /// What went wrong.
        reason: String,
    },
}

impl Error {
    pub(crate) fn source(context: &str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Source {
            context: context.to_owned(),
            source: Box::new(e),
        }
    }

    pub(crate) fn run(run_id: &str, e: StoreError) -> Self {
        Error::Run {
            run_id: run_id.to_owned(),
            source: Box::new(e),
        }
    }
}
