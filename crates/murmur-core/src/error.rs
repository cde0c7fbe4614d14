//! Error types of murmur-core.

use crate::monoid::Kind;

/// Boxed error used as the `source` of backend failures.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error combining, encoding or decoding monoid values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonoidError {
    /// Two values of a parameterised monoid (sketch precision, K, m/k, hash
    /// seed, ...) were combined although their parameters differ.
    #[error("cannot combine {kind:?} values with different {parameter}: {left} vs {right}")]
    ParameterMismatch {
        /// The monoid kind.
        kind: Kind,
        /// The parameter that differs.
        parameter: &'static str,
        /// The left operand's parameter value.
        left: String,
        /// The right operand's parameter value.
        right: String,
    },
    /// Stored bytes could not be decoded as a value of this monoid.
    #[error("cannot decode {kind:?} value: {reason}")]
    Decode {
        /// The monoid kind.
        kind: Kind,
        /// Why decoding failed.
        reason: String,
    },
    /// A monoid was configured with invalid parameters.
    #[error("invalid {kind:?} configuration: {reason}")]
    Config {
        /// The monoid kind.
        kind: Kind,
        /// What is wrong.
        reason: String,
    },
}

/// An error from a state or checkpoint store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend (file, service) failed an operation.
    #[error("{store}: {operation} failed: {source}")]
    Backend {
        /// The store (e.g. `embedded:/var/lib/murmur/state.redb`, `dynamodb:counters`).
        store: String,
        /// The operation that failed.
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// A stored row could not be decoded or merged.
    #[error("{store}: row {entity}/{bucket}: {source}")]
    Row {
        /// The store.
        store: String,
        /// Entity (partition key) of the row.
        entity: String,
        /// Bucket key (sort key) of the row.
        bucket: i64,
        /// Why the row is unusable.
        #[source]
        source: MonoidError,
    },
    /// A checkpoint operation violated the lane protocol (for example a batch
    /// intent that does not follow the committed sequence number).
    #[error("{store}: lane {lane}: {reason}")]
    LaneProtocol {
        /// The store.
        store: String,
        /// The lane.
        lane: String,
        /// What was violated.
        reason: String,
    },
    /// A bootstrap run record is in a state that does not allow the operation.
    #[error("{store}: run {run_id}: {reason}")]
    Run {
        /// The store.
        store: String,
        /// The run.
        run_id: String,
        /// What is wrong.
        reason: String,
    },
    /// A swap would not move the alias forward: the requested version is
    /// not newer than the active one.
    #[error(
        "{store}: alias {alias}: version {requested} is not newer than the active version {active}; a swap never goes back"
    )]
    StaleSwap {
        /// The store.
        store: String,
        /// The alias.
        alias: String,
        /// The active version.
        active: u64,
        /// The version asked for.
        requested: u64,
    },
    /// Stored checkpoint data could not be decoded.
    #[error("{store}: cannot decode {what}: {reason}")]
    Corrupt {
        /// The store.
        store: String,
        /// What was being decoded.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

/// An error building or running a pipeline in memory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The pipeline definition is incomplete or invalid.
    #[error("pipeline {pipeline}: {reason}")]
    Definition {
        /// The pipeline name.
        pipeline: String,
        /// What is missing or wrong.
        reason: String,
    },
    /// An event time cannot be mapped to a bucket.
    #[error(
        "event time {event_time_ms} ms is outside the supported range for window of {granularity_ms} ms"
    )]
    EventTimeOutOfRange {
        /// The event time in milliseconds since the Unix epoch.
        event_time_ms: i64,
        /// The window granularity in milliseconds.
        granularity_ms: i64,
    },
    /// An entity key no store can hold: empty, or longer than
    /// [`RowKey::MAX_ENTITY_BYTES`](crate::RowKey::MAX_ENTITY_BYTES).
    #[error("pipeline {pipeline}: entity key {entity:?}: {reason}")]
    InvalidKey {
        /// The pipeline name.
        pipeline: String,
        /// The key (its first 64 characters when longer).
        entity: String,
        /// What is wrong.
        reason: String,
    },
    /// Folding an event into the batch failed.
    #[error("pipeline {pipeline}: entity {entity}: {source}")]
    Monoid {
        /// The pipeline name.
        pipeline: String,
        /// The entity being updated.
        entity: String,
        /// The monoid error.
        #[source]
        source: MonoidError,
    },
}
