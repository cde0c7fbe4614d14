//! Archive and export for Murmur: the two jobs that close the loop around
//! the backfill.
//!
//! * [`Archive`] — a Firehose-like ingestor: a live source (Kafka or
//!   Kinesis, from `murmur-source-live`) → the source's decoder (the user
//!   transform `bytes → T`; undecodable messages go to its dead-letter
//!   topic or stream, see the source's bad-message rules) → a batcher per
//!   lane ([`BatchLimits`]: records, bytes, age) → a Parquet encoder ([`Encoder`]: the canonical `CountEvent`
//!   columns, a serde type, or an explicit Arrow schema; Snappy or zstd) →
//!   create-only objects on any `object_store`, Hive-partitioned by event
//!   hour. A message is acknowledged only once the objects holding it are
//!   durable, and lands in exactly one object even across crashes: the
//!   archive is a sink of the same fenced-batch protocol as the state
//!   stores ([`murmur_bootstrap::LaneSink`]), driven by the same live
//!   driver. What it writes is what the Parquet snapshot source reads, so
//!   an archive can be backfilled into a pipeline.
//! * [`export_dynamodb`] — a DynamoDB table, scanned in parallel segments
//!   under a read-capacity limit, into gzipped JSON Lines or Parquet files
//!   with a manifest ([`ExportManifest`]: item count, segments, times, and
//!   the DynamoDB Streams position captured before the scan).

mod archive;
mod encode;
mod error;
mod export;
mod object;

pub use archive::{Archive, ArchiveLane, ArchiveMetrics, ArchiveOptions, BatchLimits, Compression};
pub use encode::Encoder;
pub use error::{Error, Result};
pub use export::{
    ExportFormat, ExportManifest, ExportOptions, ExportedFile, MANIFEST, export_dynamodb,
};
pub use object::UploadOptions;
