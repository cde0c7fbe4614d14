//! The error type of this crate and its conversion to
//! [`murmur_core::StoreError`].

use murmur_core::error::BoxError;
use murmur_core::{MonoidError, StoreError};

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error talking to DynamoDB or interpreting what it holds.
///
/// Every variant names the table and, where there is one, the item. Messages
/// never contain credentials: they are built from table names, keys and the
/// service's error code and message only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A DynamoDB request failed: a non-retryable error, or a retryable one
    /// (throttling, 5xx, timeout, connection failure) that persisted through
    /// every attempt of the [`RetryPolicy`](crate::RetryPolicy).
    #[error("table {table}: {operation}{} failed after {attempts} attempt(s): {message}", fmt_key(.key))]
    Request {
        /// The table.
        table: String,
        /// The DynamoDB operation (`UpdateItem`, `BatchGetItem`, ...).
        operation: &'static str,
        /// The item, when the request was about one item (`pk=.., sk=..`).
        key: Option<String>,
        /// Attempts made.
        attempts: u32,
        /// The service's error code and message, or the transport error.
        message: String,
        /// The SDK error.
        #[source]
        source: BoxError,
    },
    /// A stored value could not be merged with a delta: it does not decode as
    /// the pipeline's monoid, or the parameters differ.
    #[error("table {table}: item pk={entity:?}, sk={bucket}: {source}")]
    Row {
        /// The table.
        table: String,
        /// Entity (`pk`).
        entity: String,
        /// Bucket key (`sk`).
        bucket: i64,
        /// Why the value is unusable.
        #[source]
        source: Box<MonoidError>,
    },
    /// An item's attributes do not follow Murmur's item layout (a value of
    /// the wrong DynamoDB type, a number that is not a 64-bit integer, a
    /// missing attribute).
    #[error("table {table}: item {key}: {reason}")]
    BadItem {
        /// The table.
        table: String,
        /// The item (`pk=.., sk=..`).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A merged value would make the item larger than DynamoDB's 400 KB item
    /// limit. Sketches must be sized (or windowed) to fit one item.
    #[error(
        "table {table}: item pk={entity:?}, sk={bucket}: item would be about {size} bytes, above DynamoDB's limit of {limit} bytes ({reason})"
    )]
    ItemTooLarge {
        /// The table.
        table: String,
        /// Entity (`pk`).
        entity: String,
        /// Bucket key (`sk`).
        bucket: i64,
        /// Estimated item size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
        /// Who noticed (the pre-write size check, or the service's message).
        reason: String,
    },
    /// A compare-and-set write kept losing to concurrent writers.
    #[error("table {table}: item {key}: gave up after {attempts} compare-and-set conflicts")]
    Contention {
        /// The table.
        table: String,
        /// The item.
        key: String,
        /// Conflicting attempts made.
        attempts: u32,
    },
    /// The table exists with a key schema Murmur cannot use.
    #[error("table {table} has key schema {found}, expected {expected}")]
    KeySchemaMismatch {
        /// The table.
        table: String,
        /// The schema Murmur needs.
        expected: String,
        /// The schema the table has.
        found: String,
    },
    /// A table could not be set up (not ACTIVE in time, TTL enabled on a
    /// different attribute, ...).
    #[error("table {table}: {reason}")]
    TableSetup {
        /// The table.
        table: String,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint operation violated the lane protocol.
    #[error("table {table}: lane {lane}: {reason}")]
    Lane {
        /// The table.
        table: String,
        /// The lane.
        lane: String,
        /// What was violated.
        reason: String,
    },
    /// A run record does not allow the operation.
    #[error("table {table}: run {run_id}: {reason}")]
    Run {
        /// The table.
        table: String,
        /// The run.
        run_id: String,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint item could not be decoded.
    #[error("table {table}: item {key}: cannot decode checkpoint state: {reason}")]
    Corrupt {
        /// The table.
        table: String,
        /// The item key.
        key: String,
        /// Why.
        reason: String,
    },
}

fn fmt_key(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!(" of item {k}"))
        .unwrap_or_default()
}

impl Error {
    /// The table the error is about.
    pub fn table(&self) -> &str {
        match self {
            Error::Request { table, .. }
            | Error::Row { table, .. }
            | Error::BadItem { table, .. }
            | Error::ItemTooLarge { table, .. }
            | Error::Contention { table, .. }
            | Error::KeySchemaMismatch { table, .. }
            | Error::TableSetup { table, .. }
            | Error::Lane { table, .. }
            | Error::Run { table, .. }
            | Error::Corrupt { table, .. } => table,
        }
    }

    /// Converts to the store-trait error. `operation` names the trait method
    /// for [`StoreError::Backend`].
    pub(crate) fn into_store_error(self, operation: &'static str) -> StoreError {
        let store = format!("dynamodb:{}", self.table());
        match self {
            Error::Row {
                entity,
                bucket,
                source,
                ..
            } => StoreError::Row {
                store,
                entity,
                bucket,
                source: *source,
            },
            Error::Lane { lane, reason, .. } => StoreError::LaneProtocol {
                store,
                lane,
                reason,
            },
            Error::Run { run_id, reason, .. } => StoreError::Run {
                store,
                run_id,
                reason,
            },
            Error::Corrupt { key, reason, .. } => StoreError::Corrupt {
                store,
                what: format!("checkpoint item {key}"),
                reason,
            },
            other => StoreError::Backend {
                store,
                operation,
                source: Box::new(other),
            },
        }
    }
}
