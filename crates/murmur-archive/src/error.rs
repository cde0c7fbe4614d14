//! Errors of the archive and the export.

use murmur_core::{LaneId, StoreError};

/// Result with the archive's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An archive or export error; each names the object, lane or table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Writing, reading or listing an object failed.
    #[error("object `{key}`: {source}")]
    Object {
        /// The object key.
        key: String,
        /// The object store's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// An object already exists at a batch's key with other content: the
    /// same source range was archived differently before (another decoder,
    /// encoder or compression). Nothing is overwritten.
    #[error(
        "object `{key}` already exists with different content (sha256 {existing}, this batch \
         encodes to {ours}); the range was archived with other settings — move the object away \
         or archive under another prefix"
    )]
    Conflict {
        /// The object key.
        key: String,
        /// SHA-256 of the existing object.
        existing: String,
        /// SHA-256 of what this batch encodes to.
        ours: String,
    },
    /// Records could not be encoded (a schema that does not fit the type).
    #[error("object `{key}`: cannot encode the records: {reason}")]
    Encode {
        /// The object key being written.
        key: String,
        /// What went wrong.
        reason: String,
    },
    /// The lane's checkpoint could not be read or written.
    #[error("lane {lane}: {source}")]
    Checkpoint {
        /// The lane.
        lane: LaneId,
        /// The checkpoint store's error.
        #[source]
        source: Box<StoreError>,
    },
    /// The caller broke the lane protocol.
    #[error("lane {lane}: {reason}")]
    Protocol {
        /// The lane.
        lane: LaneId,
        /// What went wrong.
        reason: String,
    },
    /// A DynamoDB request of the export failed.
    #[error("table `{table}`: {operation}: {source}")]
    DynamoDb {
        /// The table.
        table: String,
        /// The operation (`DescribeTable`, ...).
        operation: &'static str,
        /// The SDK error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The table scan of the export failed.
    #[error("table `{table}`: {source}")]
    Scan {
        /// The table.
        table: String,
        /// The snapshot source's error.
        #[source]
        source: Box<murmur_source_snapshot::Error>,
    },
    /// A setting is invalid.
    #[error("invalid setting: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    pub(crate) fn object(key: &object_store::path::Path, source: object_store::Error) -> Self {
        Error::Object {
            key: key.to_string(),
            source: Box::new(source),
        }
    }

    /// Whether retrying the same write may succeed (a network or service
    /// error), as opposed to a conflict, an encoding or a protocol error.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Object { source, .. } => !matches!(
                **source,
                object_store::Error::NotImplemented { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
                    | object_store::Error::InvalidPath { .. }
            ),
            Error::Checkpoint { source, .. } => matches!(**source, StoreError::Backend { .. }),
            _ => false,
        }
    }
}

impl From<Error> for murmur_bootstrap::Error {
    fn from(e: Error) -> Self {
        let context = match &e {
            Error::Checkpoint { lane, .. } | Error::Protocol { lane, .. } => {
                format!("archive lane {lane}")
            }
            _ => "archive".to_owned(),
        };
        murmur_bootstrap::Error::Source {
            context,
            source: Box::new(e),
        }
    }
}
