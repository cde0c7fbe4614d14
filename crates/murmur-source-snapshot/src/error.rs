//! The error type of this crate.

/// Boxed error used as the `source` of service failures.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error listing, opening or reading a snapshot.
///
/// Every variant names what it was working on (object key, column, table),
/// so a message alone tells an operator where to look. Undecodable *records*
/// are not errors: they go to the [`BadRecordSink`](crate::BadRecordSink),
/// and only become [`Error::TooManyBadRecords`] past the threshold.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Listing objects under a prefix failed.
    #[error("cannot list objects under `{prefix}`: {source}")]
    List {
        /// The prefix being listed.
        prefix: String,
        /// The object store error.
        #[source]
        source: object_store::Error,
    },
    /// Fetching (part of) an object failed.
    #[error("object `{object}`: read failed: {source}")]
    Read {
        /// The object key.
        object: String,
        /// The object store error.
        #[source]
        source: object_store::Error,
    },
    /// An object is not what it claims to be or is damaged: a truncated or
    /// corrupt gzip/zstd stream, a `.gz` object that is not gzip, a Parquet
    /// file whose footer or pages cannot be read.
    #[error("object `{object}`: {reason}")]
    Corrupt {
        /// The object key.
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// An object is not the size it was listed with: it was rewritten or
    /// truncated since the listing, so positions taken in it would no
    /// longer point at the same records.
    #[error(
        "object `{object}`: changed since it was listed ({listed} bytes then, {now} now); \
         restore it, or start a new run over the new objects"
    )]
    Changed {
        /// The object key.
        object: String,
        /// Its size in the listing.
        listed: u64,
        /// Its size when read.
        now: u64,
    },
    /// An object is no longer the version it was listed as (its ETag
    /// changed, whatever its size): positions taken in it would no longer
    /// point at the same records.
    #[error(
        "object `{object}`: rewritten since it was listed (it is no longer ETag {e_tag}); \
         restore it, or start a new run over the new objects"
    )]
    Rewritten {
        /// The object key.
        object: String,
        /// Its ETag in the listing.
        e_tag: String,
    },
    /// A Parquet object's schema does not fit the decoder: a missing column or
    /// a column of the wrong type.
    #[error("object `{object}`: column `{column}`: {reason}")]
    Schema {
        /// The object key.
        object: String,
        /// The column.
        column: String,
        /// What is wrong.
        reason: String,
    },
    /// More bad records than `max_bad_records` allows.
    #[error(
        "too many bad records: {count}{} > max_bad_records {max}; the last one: {last}",
        earlier_runs(*earlier)
    )]
    TooManyBadRecords {
        /// The configured threshold.
        max: u64,
        /// Bad records counted so far, `earlier` included.
        count: u64,
        /// Of `count`, those committed by earlier runs of the same scan or
        /// by other workers (see
        /// [`BadRecordSink::carry_over`](crate::BadRecordSink::carry_over)).
        earlier: u64,
        /// The bad record that crossed the threshold (object, line/row, reason).
        last: String,
    },
    /// A resume position does not belong to the work unit or lies past its end.
    #[error("unit `{unit}`: cannot read from {position}: {reason}")]
    Position {
        /// The work unit key.
        unit: String,
        /// The position asked for.
        position: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The handoff manifest (`_murmur_handoff.json`) exists but is not a
    /// valid handoff token.
    #[error("handoff manifest `{object}`: {reason}")]
    Manifest {
        /// The manifest object key.
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// Writing a dead-letter object failed.
    #[error("dead-letter object `{object}`: write failed: {source}")]
    DeadLetter {
        /// The dead-letter object key.
        object: String,
        /// The object store error.
        #[source]
        source: object_store::Error,
    },
    /// The source was configured with invalid options.
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A reader could not run: no tokio runtime, or its task ended abnormally.
    #[error("unit `{unit}`: reader failed: {reason}")]
    Reader {
        /// The work unit key.
        unit: String,
        /// What happened.
        reason: String,
    },
    /// A DynamoDB or DynamoDB Streams request failed.
    #[cfg(feature = "dynamodb")]
    #[error("dynamodb table `{table}`: {operation} failed: {source}")]
    DynamoDb {
        /// The table.
        table: String,
        /// The operation (`Scan`, `DescribeTable`, `GetRecords`, ...).
        operation: &'static str,
        /// The SDK error.
        #[source]
        source: BoxError,
    },
}

/// The error of a failed request for `object`, listed with `e_tag`: a failed
/// `If-Match` is [`Error::Rewritten`], anything else [`Error::Read`].
pub(crate) fn read_error(object: &str, e_tag: Option<&str>, source: object_store::Error) -> Error {
    match (source, e_tag) {
        (object_store::Error::Precondition { .. }, Some(e_tag)) => Error::Rewritten {
            object: object.to_string(),
            e_tag: e_tag.to_string(),
        },
        (source, _) => Error::Read {
            object: object.to_string(),
            source,
        },
    }
}

/// A request for the version of an object its listing saw (`If-Match` its
/// ETag, when it had one), of `range` or the whole object.
pub(crate) fn pinned(
    e_tag: Option<&str>,
    range: Option<std::ops::Range<u64>>,
) -> object_store::GetOptions {
    object_store::GetOptions {
        if_match: e_tag.map(str::to_owned),
        range: range.map(Into::into),
        ..Default::default()
    }
}

/// ` (N of them committed by earlier runs or other workers)`, or nothing
/// when there were none.
fn earlier_runs(earlier: u64) -> String {
    match earlier {
        0 => String::new(),
        n => format!(" ({n} of them committed by earlier runs or other workers)"),
    }
}
