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
    /// A record could not be folded.
    #[error("lane {lane}: {source}")]
    Pipeline {
        /// The lane.
        lane: LaneId,
        /// The pipeline error.
        #[source]
        source: Box<PipelineError>,
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
